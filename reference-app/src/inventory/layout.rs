//! Where the inventory lives: `<readmodels>/inventory/partitions/p<NNN>.json`, one blob per
//! partition of locations. A location's partition is a hash of its name into [`PARTITIONS`]
//! buckets, so:
//!
//! - every write touches only the partitions of the locations it changes (an adjustment: one);
//! - one location's items are one blob (its page is one read for the web role);
//! - the web role follows the whole model with one listing of at most [`PARTITIONS`] blobs.
//!
//! NB: the hash (the first 8 bytes of SHA-256, mod [`PARTITIONS`]) is part of the stored
//! format: changing it or [`PARTITIONS`] moves locations, and needs a migration.

use sha2::{Digest, Sha256};

/// Number of partitions.
pub const PARTITIONS: u64 = 256;
/// The common prefix of the partition blobs (for listing).
pub const PREFIX: &str = "inventory/partitions/";

/// The partition of `location`.
pub fn partition_of(location: &str) -> u64 {
    let digest = Sha256::digest(location.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % PARTITIONS
}

/// The blob name of partition `p`.
pub fn blob_name(p: u64) -> String {
    format!("{PREFIX}p{p:03}.json")
}

/// The root blob of the partition a blob belongs to (a root, or a half of one of its splits,
/// named `<root stem>-…`); `None` for a blob that is not a partition's.
pub fn root_of(name: &str) -> Option<String> {
    let stem = name.strip_prefix(PREFIX)?.get(..4)?;
    let digits = stem.strip_prefix('p')?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("{PREFIX}{stem}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where "downtown" has always been.
    const PINNED_DOWNTOWN: u64 = 40;

    #[test]
    fn partitions_are_stable_and_spread() {
        // NB: the stored format: these must never change.
        assert_eq!(partition_of("downtown"), PINNED_DOWNTOWN);
        let used: std::collections::BTreeSet<u64> = (0..1000)
            .map(|i| partition_of(&format!("shop-{i}")))
            .collect();
        assert!(
            used.len() > 240,
            "1,000 locations fill most of the 256 partitions: {}",
            used.len()
        );
        assert!(blob_name(7).starts_with(PREFIX));
        assert_eq!(blob_name(7), "inventory/partitions/p007.json");
        assert_eq!(root_of(&blob_name(7)), Some(blob_name(7)));
        assert_eq!(
            root_of("inventory/partitions/p007-1a2b3c4d0-5e6f7a8b1.json"),
            Some(blob_name(7))
        );
        assert_eq!(root_of("inventory/legacy-carried.json"), None);
    }
}
