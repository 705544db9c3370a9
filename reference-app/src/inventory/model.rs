//! One partition of the read model and how commands change it.
//!
//! Each applied command's key is remembered in the partitions it changed for
//! [`DEDUP_WINDOW`] (a stock take as `stocktake:<id>`, in every partition it touches): a
//! redelivered or resubmitted command counts once, and a stock take interrupted after some
//! partitions is completed by its redelivery without counting twice where it was applied.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::messages::{InventoryAdjustment, StockLine};

/// How long applied command keys are remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Stock per location, per item.
pub type Stock = BTreeMap<String, BTreeMap<String, i64>>;

/// A stored partition (the legacy single blob had the same shape, with every location).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// Incremented by every write.
    pub version: u64,
    /// When it was last written (RFC 3339).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Stock per location, per item (the locations whose name hashes to this partition).
    #[serde(default)]
    pub stock: Stock,
    /// Applied command keys and when (Unix seconds), for deduplication.
    #[serde(default)]
    pub applied: BTreeMap<String, i64>,
    /// How many splits above it (0: a partition's root blob).
    #[serde(default)]
    pub depth: u32,
    /// Set once it grew past its limit and was split: its items (and its applied keys) went to
    /// these two blobs, by bit `depth` of each item's hash; it holds nothing else any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<[String; 2]>,
}

/// What one command does to one partition.
#[derive(Clone, Debug)]
pub enum Change<'a> {
    /// Add a scanner's delta.
    Adjust(&'a InventoryAdjustment),
    /// Set the counted quantities of a stock take (its lines in this partition).
    Count {
        /// The stock take's id.
        id: &'a str,
        /// Its good lines whose location is in this partition.
        lines: Vec<&'a StockLine>,
    },
    /// Add differences carried over from the legacy single blob (see `legacy`).
    Carry {
        /// Remembered like a command's id: `legacy:<etag>`.
        key: &'a str,
        /// (location, item, difference) in this partition.
        delta: Vec<(&'a str, &'a str, i64)>,
    },
}

/// The hash of an item that decides its side at each split (the first 8 bytes of SHA-256).
/// NB: part of the stored format, like the partition hash.
pub fn item_hash(item: &str) -> u64 {
    let digest = Sha256::digest(item.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The side (0 or 1) of `item` at a split of depth `depth`.
pub fn side(item: &str, depth: u32) -> usize {
    ((item_hash(item) >> (depth % 64)) & 1) as usize
}

impl<'a> Change<'a> {
    /// This change's parts for the two children of a split at `depth` (empty sides: `None`).
    pub fn route(&self, depth: u32) -> [Option<Change<'a>>; 2] {
        match self {
            Change::Adjust(adj) => {
                let mut out = [None, None];
                out[side(&adj.item, depth)] = Some(Change::Adjust(adj));
                out
            }
            Change::Count { id, lines } => {
                let mut sides: [Vec<&'a StockLine>; 2] = [Vec::new(), Vec::new()];
                for line in lines {
                    sides[side(&line.item, depth)].push(line);
                }
                sides.map(|lines| (!lines.is_empty()).then_some(Change::Count { id, lines }))
            }
            Change::Carry { key, delta } => {
                let mut sides: [Vec<(&'a str, &'a str, i64)>; 2] = [Vec::new(), Vec::new()];
                for d in delta {
                    sides[side(d.1, depth)].push(*d);
                }
                sides.map(|delta| (!delta.is_empty()).then_some(Change::Carry { key, delta }))
            }
        }
    }
}

impl Change<'_> {
    /// The key remembered in `applied`, so a command counts once.
    pub fn key(&self) -> String {
        match self {
            Change::Adjust(adj) => adj.command_id.clone(),
            Change::Count { id, .. } => format!("stocktake:{id}"),
            Change::Carry { key, .. } => (*key).to_string(),
        }
    }
}

/// RFC 3339 to the second.
pub fn timestamp(now: OffsetDateTime) -> Option<String> {
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl Partition {
    /// Applies the changes not applied before; returns how many were new.
    pub fn apply(&mut self, changes: &[Change<'_>], now: OffsetDateTime) -> usize {
        let now_s = now.unix_timestamp();
        let horizon = now_s - DEDUP_WINDOW.as_secs() as i64;
        self.applied.retain(|_, at| *at >= horizon);
        let mut new = 0;
        for change in changes {
            let key = change.key();
            if self.applied.contains_key(&key) {
                continue;
            }
            match change {
                Change::Adjust(adj) => self.add(&adj.location, &adj.item, adj.delta),
                Change::Count { lines, .. } => {
                    // NB: an item counted on several lines (several shelves) is their sum.
                    let mut counted: BTreeMap<(&str, &str), i64> = BTreeMap::new();
                    for line in lines {
                        *counted.entry((&line.location, &line.item)).or_default() += line.quantity;
                    }
                    for ((location, item), quantity) in counted {
                        self.stock
                            .entry(location.to_string())
                            .or_default()
                            .insert(item.to_string(), quantity);
                    }
                }
                Change::Carry { delta, .. } => {
                    for (location, item, difference) in delta {
                        self.add(location, item, *difference);
                    }
                }
            }
            self.applied.insert(key, now_s);
            new += 1;
        }
        self.version += 1;
        self.updated_at = timestamp(now);
        new
    }

    /// (location, item) pairs held.
    pub fn items(&self) -> usize {
        self.stock.values().map(BTreeMap::len).sum()
    }

    /// The two halves of this partition at its depth (each remembering every applied key, so
    /// a command applied before the split still counts once after it), and itself emptied to
    /// point at `names`.
    pub fn split_into(&mut self, names: [String; 2]) -> [Partition; 2] {
        let mut halves = [(); 2].map(|()| Partition {
            version: 1,
            updated_at: self.updated_at.clone(),
            applied: self.applied.clone(),
            depth: self.depth + 1,
            ..Partition::default()
        });
        for (location, items) in std::mem::take(&mut self.stock) {
            for (item, quantity) in items {
                halves[side(&item, self.depth)]
                    .stock
                    .entry(location.clone())
                    .or_default()
                    .insert(item, quantity);
            }
        }
        self.applied.clear();
        self.split = Some(names);
        halves
    }

    fn add(&mut self, location: &str, item: &str, delta: i64) {
        *self
            .stock
            .entry(location.to_string())
            .or_default()
            .entry(item.to_string())
            .or_default() += delta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn adj(id: &str, location: &str, item: &str, delta: i64) -> InventoryAdjustment {
        InventoryAdjustment {
            command_id: id.into(),
            location: location.into(),
            item: item.into(),
            delta,
        }
    }

    fn adjust<'a>(adjustments: &[&'a InventoryAdjustment]) -> Vec<Change<'a>> {
        adjustments.iter().map(|a| Change::Adjust(a)).collect()
    }

    fn line(location: &str, item: &str, quantity: i64) -> StockLine {
        StockLine {
            location: location.into(),
            item: item.into(),
            quantity,
        }
    }

    #[test]
    fn a_stock_take_sets_the_counted_pairs_once_and_sums_repeated_lines() {
        let mut model = Partition::default();
        let now = OffsetDateTime::now_utc();
        let before = adj("c1", "downtown", "apple", 5);
        let plum = adj("c2", "harbour", "plum", 2);
        model.apply(&adjust(&[&before, &plum]), now);
        let lines = [
            line("downtown", "apple", 3),
            line("downtown", "apple", 4),
            line("downtown", "cherry", 1),
        ];
        let count = Change::Count {
            id: "st-1",
            lines: lines.iter().collect(),
        };
        assert_eq!(model.apply(std::slice::from_ref(&count), now), 1);
        assert_eq!(model.stock["downtown"]["apple"], 7);
        assert_eq!(model.stock["downtown"]["cherry"], 1);
        assert_eq!(
            model.stock["harbour"]["plum"], 2,
            "pairs not counted are left alone"
        );
        let after = adj("c3", "downtown", "apple", -1);
        model.apply(&adjust(&[&after]), now);
        // A redelivered stock take must not undo the adjustment made since.
        assert_eq!(model.apply(&[count], now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 6);
        assert!(model.applied.contains_key("stocktake:st-1"));
    }

    #[test]
    fn a_command_applied_twice_counts_once() {
        let mut model = Partition::default();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (
            adj("c1", "downtown", "apple", 5),
            adj("c2", "downtown", "apple", -2),
        );
        assert_eq!(model.apply(&adjust(&[&a, &b, &a]), now), 2);
        assert_eq!(model.apply(&adjust(&[&a]), now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 3);
        assert_eq!(model.version, 2);
    }

    #[test]
    fn carried_differences_add_once() {
        let mut model = Partition::default();
        let now = OffsetDateTime::now_utc();
        model.apply(&adjust(&[&adj("c1", "downtown", "apple", 1)]), now);
        let carry = Change::Carry {
            key: "legacy:e1",
            delta: vec![("downtown", "apple", 10), ("downtown", "plum", -2)],
        };
        assert_eq!(model.apply(std::slice::from_ref(&carry), now), 1);
        assert_eq!(model.apply(&[carry], now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 11);
        assert_eq!(model.stock["downtown"]["plum"], -2);
    }

    #[test]
    fn a_split_sends_each_item_and_each_change_to_one_side_and_keeps_the_applied_keys() {
        let mut model = Partition::default();
        let now = OffsetDateTime::now_utc();
        let adjustments: Vec<InventoryAdjustment> = (0..64)
            .map(|i| adj(&format!("c{i}"), "downtown", &format!("pie-{i}"), 1))
            .collect();
        model.apply(&adjust(&adjustments.iter().collect::<Vec<_>>()), now);
        let halves = model.split_into(["a".into(), "b".into()]);
        assert!(model.stock.is_empty() && model.applied.is_empty());
        assert_eq!(model.split, Some(["a".to_string(), "b".to_string()]));
        assert_eq!(halves[0].items() + halves[1].items(), 64);
        assert!(
            halves[0].items() > 10 && halves[1].items() > 10,
            "both sides used"
        );
        for (i, half) in halves.iter().enumerate() {
            assert_eq!(half.depth, 1);
            assert_eq!(half.applied.len(), 64, "every key on both sides");
            for item in half.stock["downtown"].keys() {
                assert_eq!(side(item, 0), i);
            }
        }
        // A redelivered adjustment, routed to its side, still counts once.
        let again = Change::Adjust(&adjustments[5]);
        let side_of = side(&adjustments[5].item, 0);
        let [a, b] = again.route(0);
        assert_eq!([a.is_some(), b.is_some()], [side_of == 0, side_of == 1]);
        let mut half = halves[side_of].clone();
        assert_eq!(half.apply(&[again], now), 0);
        // A stock take's lines go to the side of their item.
        let lines: Vec<StockLine> = (0..20)
            .map(|i| line("downtown", &format!("pie-{i}"), 3))
            .collect();
        let count = Change::Count {
            id: "st",
            lines: lines.iter().collect(),
        };
        let routed = count.route(0);
        let n = |c: &Option<Change<'_>>| match c {
            Some(Change::Count { lines, .. }) => lines.len(),
            _ => 0,
        };
        assert_eq!(n(&routed[0]) + n(&routed[1]), 20);
    }

    #[test]
    fn old_command_ids_are_forgotten_after_the_window() {
        let mut model = Partition::default();
        let then = OffsetDateTime::now_utc() - time::Duration::hours(25);
        model.apply(&adjust(&[&adj("old", "a", "b", 1)]), then);
        model.apply(
            &adjust(&[&adj("new", "a", "b", 1)]),
            OffsetDateTime::now_utc(),
        );
        assert!(!model.applied.contains_key("old"));
        assert!(model.applied.contains_key("new"));
    }
}
