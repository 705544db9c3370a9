//! The single-blob read model of earlier versions (`<readmodels>/inventory.json`), carried
//! into the partitions so that no stock is lost by an upgrade.
//!
//! Workers carry it over when they start and web roles every [`CHECK_EVERY`] (workers may be
//! scaled to zero); the legacy blob is left in place, because workers of the old version may
//! still be writing it during a rolling update: each new version of it is carried over as the
//! differences from the last one carried. The marker blob [`MARKER`] holds the stock last
//! carried, and is claimed (`If-Match`) before the partitions are changed, so two processes
//! never carry the same differences twice; the partitions remember the key `legacy:<etag>` like
//! a command id, so a carry interrupted by a crash is completed by the next one without
//! counting twice.
//!
//! NB: differences are additive. A stock take applied by an old-version worker to a pair that
//! new-version workers changed meanwhile is carried as its difference, not as its count.

use std::collections::BTreeMap;
use std::time::Duration;

use azure_core::http::Etag;
use cqrs_storage::StorageAccount;
use serde::{Deserialize, Serialize};

use super::layout;
use super::model::{Change, Partition, Stock};
use super::writer;
use crate::store::{self, Condition, StoreError, Written};

/// The legacy read-model blob.
pub const LEGACY: &str = "inventory.json";
/// What was carried over last.
pub const MARKER: &str = "inventory/legacy-carried.json";
/// How often a web role looks at the legacy blob again.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Lost races on the marker tolerated before giving up until the next check.
const MAX_ATTEMPTS: u32 = 10;

/// The marker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Carried {
    /// ETag of the legacy version carried (or being carried).
    etag: String,
    /// Its stock.
    stock: Stock,
    /// The stock carried before it (the differences are `stock - base`), while incomplete.
    #[serde(default)]
    base: Stock,
    /// Whether every partition has the differences.
    complete: bool,
}

/// `after - before`, per (location, item): without zeros, but with every pair new in `after`
/// (a pair counted at 0 is still a pair the shop has).
fn differences(before: &Stock, after: &Stock) -> Vec<(String, String, i64)> {
    let mut out = BTreeMap::new();
    for (location, items) in after {
        for (item, qty) in items {
            *out.entry((location.clone(), item.clone())).or_insert(0) += qty;
        }
    }
    for (location, items) in before {
        for (item, qty) in items {
            *out.entry((location.clone(), item.clone())).or_insert(0) -= qty;
        }
    }
    let known = |l: &str, i: &str| before.get(l).is_some_and(|items| items.contains_key(i));
    out.into_iter()
        .filter(|((l, i), d)| *d != 0 || !known(l, i))
        .map(|((l, i), d)| (l, i, d))
        .collect()
}

/// Carries the legacy blob over if it changed since `known` (its ETag when last carried);
/// returns the ETag carried now (`None`: there is no legacy blob).
pub async fn carry_over(
    account: &StorageAccount,
    container: &str,
    known: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let known = known.map(|e| Etag::from(e.to_string()));
    for _ in 0..MAX_ATTEMPTS {
        let (legacy, etag) =
            match store::read_if_changed::<Partition>(account, container, LEGACY, known.as_ref())
                .await?
            {
                store::Read::Missing => return Ok(None),
                store::Read::Unchanged => return Ok(known.map(|e| e.to_string())),
                store::Read::Found(legacy, etag) => (legacy, etag),
            };
        let etag = etag.map(|e| e.to_string()).unwrap_or_default();
        let (marker, condition) = match store::read::<Carried>(account, container, MARKER).await? {
            Some((marker, Some(e))) => (Some(marker), Condition::Match(e)),
            Some((marker, None)) => (Some(marker), Condition::Any),
            None => (None, Condition::Create),
        };
        match marker {
            // A carry in progress (or interrupted by a crash): finish it first, whoever
            // claimed it (the partitions that have it skip it).
            Some(marker) if !marker.complete => {
                let pairs = carry(account, container, &marker).await?;
                let done = Carried {
                    base: Stock::new(),
                    complete: true,
                    ..marker
                };
                if let Written::Ok(_) =
                    store::write(account, container, MARKER, &done, condition).await?
                {
                    tracing::info!(
                        legacy = %done.etag,
                        pairs,
                        "carried the legacy inventory read model over to the partitions"
                    );
                }
            }
            Some(marker) if marker.etag == etag => return Ok(Some(etag)),
            previous => {
                let claim = Carried {
                    etag: etag.clone(),
                    stock: legacy.stock,
                    base: previous.map(|m| m.stock).unwrap_or_default(),
                    complete: false,
                };
                // Won or lost, the next turn finishes the claim that won.
                store::write(account, container, MARKER, &claim, condition).await?;
            }
        }
    }
    Err(StoreError::Contended {
        blob: format!("{container}/{MARKER}"),
    })
}

/// Carries the legacy blob over now and whenever it changes (checked every [`CHECK_EVERY`]);
/// runs until aborted (a carry cut short is finished by the next one).
pub async fn follow(account: StorageAccount, container: String) {
    let mut known: Option<String> = None;
    let mut failing = false;
    loop {
        match carry_over(&account, &container, known.as_deref()).await {
            Ok(etag) => {
                known = etag;
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(
                    "cannot carry the legacy inventory read model over (will retry): {e}"
                );
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Applies a claimed carry to every partition it changes; returns the pairs changed.
async fn carry(
    account: &StorageAccount,
    container: &str,
    carrying: &Carried,
) -> Result<usize, StoreError> {
    let diffs = differences(&carrying.base, &carrying.stock);
    let key = format!("legacy:{}", carrying.etag);
    let mut groups: BTreeMap<u64, Vec<(&str, &str, i64)>> = BTreeMap::new();
    for (location, item, d) in &diffs {
        groups
            .entry(layout::partition_of(location))
            .or_default()
            .push((location, item, *d));
    }
    let changes = groups
        .into_iter()
        .map(|(p, delta)| (p, vec![Change::Carry { key: &key, delta }]));
    let writer = writer::Writer::new(account.clone(), container.to_string());
    for (p, outcome) in writer.apply_all(changes.collect()).await {
        if outcome?.is_none() {
            return Err(StoreError::Contended {
                blob: format!("{container}/{}", layout::blob_name(p)),
            });
        }
    }
    Ok(diffs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(pairs: &[(&str, &str, i64)]) -> Stock {
        let mut s = Stock::new();
        for (l, i, q) in pairs {
            s.entry(l.to_string())
                .or_default()
                .insert(i.to_string(), *q);
        }
        s
    }

    #[test]
    fn differences_cover_new_changed_and_gone_pairs() {
        let before = stock(&[("a", "x", 5), ("a", "y", 2), ("b", "z", 1)]);
        let after = stock(&[("a", "x", 7), ("a", "y", 2), ("c", "w", 3), ("c", "v", 0)]);
        assert_eq!(
            differences(&before, &after),
            vec![
                ("a".into(), "x".into(), 2),
                ("b".into(), "z".into(), -1),
                ("c".into(), "v".into(), 0),
                ("c".into(), "w".into(), 3)
            ]
        );
    }
}

#[cfg(test)]
mod azurite_tests {
    use super::*;
    use crate::inventory::model::Partition;
    use cqrs_storage::azurite::{TestAzurite, unique_name};

    /// The stock of every partition, merged.
    async fn partitions(account: &StorageAccount, container: &str) -> Stock {
        let mut all = Stock::new();
        for p in 0..layout::PARTITIONS {
            if let Some((part, _)) =
                store::read::<Partition>(account, container, &layout::blob_name(p))
                    .await
                    .unwrap()
            {
                for (l, items) in part.stock {
                    assert_eq!(layout::partition_of(&l), p, "{l} is in its own partition");
                    all.entry(l).or_default().extend(items);
                }
            }
        }
        all
    }

    fn legacy(version: u64, pairs: &[(&str, &str, i64)]) -> Partition {
        let mut model = Partition {
            version,
            ..Partition::default()
        };
        for (l, i, q) in pairs {
            model
                .stock
                .entry(l.to_string())
                .or_default()
                .insert(i.to_string(), *q);
        }
        model
    }

    #[tokio::test]
    async fn a_legacy_model_is_carried_once_and_its_later_changes_as_differences() {
        let azurite = TestAzurite::start().await;
        let account = azurite.account();
        let container = unique_name("rm");
        account.ensure_container(&container).await.unwrap();
        assert_eq!(carry_over(&account, &container, None).await.unwrap(), None);

        let v1 = legacy(1, &[("downtown", "apple", 5), ("harbour", "plum", 2)]);
        store::write(&account, &container, LEGACY, &v1, Condition::Any)
            .await
            .unwrap();
        // Two processes at once (a web role and a worker starting together) count it once.
        let (a, b) = tokio::join!(
            carry_over(&account, &container, None),
            carry_over(&account, &container, None)
        );
        let etag = a.unwrap().unwrap();
        assert_eq!(b.unwrap().unwrap(), etag);
        assert_eq!(partitions(&account, &container).await, v1.stock);
        assert_eq!(
            carry_over(&account, &container, Some(&etag)).await.unwrap(),
            Some(etag.clone()),
            "unchanged: nothing to do"
        );

        // A new-version worker adjusts; an old-version worker still writes the legacy blob.
        let adjustment = crate::messages::InventoryAdjustment {
            command_id: "new-1".into(),
            location: "downtown".into(),
            item: "apple".into(),
            delta: 10,
        };
        let p = layout::partition_of("downtown");
        assert!(
            super::writer::Writer::new(account.clone(), container.clone())
                .apply(p, &[Change::Adjust(&adjustment)])
                .await
                .unwrap()
                .is_some()
        );
        let v2 = legacy(2, &[("downtown", "apple", 4), ("downtown", "cherry", 3)]);
        store::write(&account, &container, LEGACY, &v2, Condition::Any)
            .await
            .unwrap();
        carry_over(&account, &container, Some(&etag)).await.unwrap();
        let now = partitions(&account, &container).await;
        assert_eq!(now["downtown"]["apple"], 14, "5 + 10 - 1");
        assert_eq!(now["downtown"]["cherry"], 3);
        assert_eq!(
            now["harbour"]["plum"], 0,
            "gone from the legacy blob: 2 - 2"
        );
    }

    #[tokio::test]
    async fn an_interrupted_carry_is_finished_without_counting_twice() {
        let azurite = TestAzurite::start().await;
        let account = azurite.account();
        let container = unique_name("rm");
        account.ensure_container(&container).await.unwrap();
        let pairs: Vec<(String, String, i64)> = (0..2_000)
            .map(|i| {
                (
                    format!("shop-{}", i % 50),
                    format!("pie-{i}"),
                    1 + i as i64 % 7,
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str, i64)> = pairs
            .iter()
            .map(|(l, i, q)| (l.as_str(), i.as_str(), *q))
            .collect();
        let model = legacy(1, &borrowed);
        let Written::Ok(Some(etag)) =
            store::write(&account, &container, LEGACY, &model, Condition::Any)
                .await
                .unwrap()
        else {
            panic!("no ETag");
        };
        // A process claimed the carry and changed some partitions, then died.
        let claim = Carried {
            etag: etag.to_string(),
            stock: model.stock.clone(),
            base: Stock::new(),
            complete: false,
        };
        store::write(&account, &container, MARKER, &claim, Condition::Create)
            .await
            .unwrap();
        let key = format!("legacy:{etag}");
        let first = &pairs[0];
        let some = Change::Carry {
            key: &key,
            delta: pairs
                .iter()
                .filter(|(l, ..)| l == &first.0)
                .map(|(l, i, q)| (l.as_str(), i.as_str(), *q))
                .collect(),
        };
        super::writer::Writer::new(account.clone(), container.clone())
            .apply(layout::partition_of(&first.0), &[some])
            .await
            .unwrap();

        carry_over(&account, &container, None).await.unwrap();
        assert_eq!(partitions(&account, &container).await, model.stock);
        let (marker, _) = store::read::<Carried>(&account, &container, MARKER)
            .await
            .unwrap()
            .unwrap();
        assert!(marker.complete);
    }
}
