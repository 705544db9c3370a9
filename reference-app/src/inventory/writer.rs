//! Read-modify-write of partitions under their ETags: a lost race re-reads and re-applies
//! (the changes are idempotent), so any number of workers converge without locks.
//!
//! - A [`Writer`] keeps each blob as it last wrote it, with the ETag the write returned, and
//!   writes its next changes on that copy with `If-Match` without reading the blob first: a
//!   worker alone on a partition reads it once, not at every batch. When another writer has
//!   been there since, the write fails (412) and the blob is read again, as without the copy.
//! - Within one process, the batches that change the same blob take turns (one write after the
//!   other, each on the copy the previous one left) rather than racing for it.
//! - A blob that would hold more than [`MAX_ITEMS`] items is split instead of written: its two
//!   halves (by a bit of each item's hash) are created under new names, then the blob itself is
//!   replaced (`If-Match`) by a pointer to them. Whoever loses that race deletes its halves and
//!   starts again on the winner's blob; writers that meet the pointer follow it. So a write's
//!   size is bounded whatever the size of a location, and one location may span many blobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::http::Etag;
use cqrs_storage::StorageAccount;
use futures::StreamExt as _;
use time::OffsetDateTime;

use super::layout;
use super::model::{Change, Partition};
use crate::store::{self, Condition, StoreError, Written};

/// Conflicting writes tolerated before the changes are left for redelivery.
const MAX_ATTEMPTS: u32 = 20;
/// Partitions written at once by one call of [`Writer::apply_all`].
const CONCURRENT_PARTITIONS: usize = 8;
/// Most items in one blob before it is split (~150 KB of JSON).
pub const MAX_ITEMS: usize = 4_096;
/// Deepest split (2^24 blobs under one partition: never reached in practice).
const MAX_DEPTH: u32 = 24;

/// Splits `part` (stored as `name`) into two halves with new names (`<name>-<random><0|1>`);
/// `part` becomes the pointer to them.
fn halves(name: &str, part: &mut Partition) -> [(String, Partition); 2] {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let generation = uuid::Uuid::new_v4().simple().to_string();
    let names = [0, 1].map(|i| format!("{stem}-{}{i}.json", &generation[..8]));
    let [a, b] = part.split_into(names.clone());
    let [na, nb] = names;
    [(na, a), (nb, b)]
}

/// What one blob's write came to.
enum Node {
    /// Written, after this many lost races.
    Written(u32),
    /// It is split: the changes go to these two blobs, by bit `depth` of the item hash.
    Split([String; 2], u32),
}

/// One blob's last known copy and ETag, and the turn to write it.
type Slot = Arc<tokio::sync::Mutex<Option<(Partition, Etag)>>>;

/// Writes partitions of one read-model container.
#[derive(Debug)]
pub struct Writer {
    account: StorageAccount,
    container: String,
    max_items: usize,
    /// Blob name -> its slot: the blob's content as this writer last wrote (or read, for a
    /// split one) it, with that ETag. A batch holds the slot while it writes the blob, so this
    /// process's batches write a blob one after the other (each on the copy the previous one
    /// left) instead of racing each other for it. NB: at most the whole model (~10 MB at
    /// 100,000 items) per process.
    slots: Mutex<HashMap<String, Slot>>,
}

impl Writer {
    /// A writer of `container`'s partitions.
    pub fn new(account: StorageAccount, container: String) -> Self {
        Self::with_max_items(account, container, MAX_ITEMS)
    }

    /// A writer splitting blobs past `max_items` (tests use small ones).
    pub fn with_max_items(account: StorageAccount, container: String, max_items: usize) -> Self {
        Self {
            account,
            container,
            max_items,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, name: &str) -> Slot {
        match self.slots.lock() {
            Ok(mut slots) => slots.entry(name.to_string()).or_default().clone(),
            // NB: a poisoned map only costs the ordering and the copy (ETags keep the writes
            // correct).
            Err(_) => Slot::default(),
        }
    }

    /// Applies `changes` to partition `p` (following its splits) in one write per blob;
    /// returns the lost races on the way (`None`: too many somewhere; what was not written is
    /// left for the redelivery, which skips what was).
    pub async fn apply(&self, p: u64, changes: &[Change<'_>]) -> Result<Option<u32>, StoreError> {
        let mut work = vec![(layout::blob_name(p), 0, changes.to_vec())];
        let mut conflicts = 0;
        while let Some((name, depth, changes)) = work.pop() {
            match self.apply_blob(&name, depth, &changes).await? {
                None => return Ok(None),
                Some(Node::Written(lost)) => conflicts += lost,
                Some(Node::Split(children, depth)) => {
                    let mut sides: [Vec<Change<'_>>; 2] = [Vec::new(), Vec::new()];
                    for change in &changes {
                        for (i, part) in change.route(depth).into_iter().enumerate() {
                            sides[i].extend(part);
                        }
                    }
                    for (child, changes) in children.into_iter().zip(sides) {
                        if !changes.is_empty() {
                            work.push((child, depth + 1, changes));
                        }
                    }
                }
            }
        }
        Ok(Some(conflicts))
    }

    /// One blob's read-modify-write (or split); `None`: too many lost races.
    async fn apply_blob(
        &self,
        name: &str,
        depth: u32,
        changes: &[Change<'_>],
    ) -> Result<Option<Node>, StoreError> {
        let slot = self.slot(name);
        let mut kept = slot.lock().await;
        let mut known = kept.take();
        for attempt in 0..MAX_ATTEMPTS {
            let from_memory = known.is_some();
            let (mut partition, condition) = match known.take() {
                Some((partition, etag)) => (partition, Condition::Match(etag)),
                None => match store::read::<Partition>(&self.account, &self.container, name).await?
                {
                    Some((partition, Some(etag))) => (partition, Condition::Match(etag)),
                    Some((partition, None)) => (partition, Condition::Any),
                    None => (
                        Partition {
                            depth,
                            ..Partition::default()
                        },
                        Condition::Create,
                    ),
                },
            };
            if let Some(children) = partition.split.clone() {
                let depth = partition.depth;
                if let Condition::Match(etag) = condition {
                    *kept = Some((partition, etag));
                }
                return Ok(Some(Node::Split(children, depth)));
            }
            partition.apply(changes, OffsetDateTime::now_utc());
            let written = if partition.items() > self.max_items && partition.depth < MAX_DEPTH {
                self.split(name, partition, condition).await?
            } else {
                let written =
                    store::write(&self.account, &self.container, name, &partition, condition)
                        .await?;
                if let Written::Ok(Some(etag)) = &written {
                    *kept = Some((partition, etag.clone()));
                }
                written
            };
            match written {
                Written::Ok(_) => return Ok(Some(Node::Written(attempt))),
                // Another writer was there since this one's last write: read it now.
                Written::Conflict if from_memory => {}
                Written::Conflict => {
                    // Another worker wrote first; back off a little (more each time) and retry.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1) + jitter))
                        .await;
                }
            }
        }
        Ok(None)
    }

    /// Splits `partition` (changes applied) into new blobs of at most `max_items` each (as
    /// many levels as it takes) and points `name` at them.
    async fn split(
        &self,
        name: &str,
        mut partition: Partition,
        condition: Condition,
    ) -> Result<Written, StoreError> {
        let items = partition.items();
        let mut new_blobs: Vec<(String, Partition)> = halves(name, &mut partition).into();
        // Halves still past the limit are split in turn before anything is written.
        let mut i = 0;
        while i < new_blobs.len() {
            let (blob, part) = &mut new_blobs[i];
            if part.items() > self.max_items && part.depth < MAX_DEPTH {
                let more = halves(&blob.clone(), part);
                new_blobs.extend(more);
            }
            i += 1;
        }
        let mut created = Vec::new();
        // NB: new names: nobody else writes them until the pointer below is in place.
        for (child, half) in &new_blobs {
            store::write(
                &self.account,
                &self.container,
                child,
                half,
                Condition::Create,
            )
            .await?;
            created.push(child.clone());
        }
        let written =
            store::write(&self.account, &self.container, name, &partition, condition).await?;
        match &written {
            Written::Ok(_) => {
                tracing::info!(
                    blob = name,
                    items,
                    blobs = created.len(),
                    "split a read-model partition past {} items a blob",
                    self.max_items
                );
            }
            Written::Conflict => {
                // Lost the race: these blobs are nobody's (readers only follow pointers).
                for child in &created {
                    let _ = self.account.blob(&self.container, child).delete(None).await;
                }
            }
        }
        Ok(written)
    }

    /// Applies each partition's changes (a few partitions at once); one outcome per partition.
    pub async fn apply_all<'a>(
        &self,
        groups: Vec<(u64, Vec<Change<'a>>)>,
    ) -> Vec<(u64, Result<Option<u32>, StoreError>)> {
        // NB: the futures are built before the stream (not in a `map` on it): a closure there
        // makes the caller's future not `Send` for every lifetime (rust-lang/rust#102211).
        let writes: Vec<_> = groups
            .into_iter()
            .map(|(p, changes)| async move { (p, self.apply(p, &changes).await) })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(CONCURRENT_PARTITIONS)
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cqrs_storage::azurite::{TestAzurite, unique_name};

    use super::*;
    use crate::messages::{InventoryAdjustment, StockLine};

    /// Every blob reachable from partition `p`'s root: (name, content).
    async fn tree(account: &StorageAccount, container: &str, p: u64) -> Vec<(String, Partition)> {
        let mut out = Vec::new();
        let mut todo = vec![layout::blob_name(p)];
        while let Some(name) = todo.pop() {
            let (part, _) = store::read::<Partition>(account, container, &name)
                .await
                .unwrap()
                .unwrap();
            todo.extend(part.split.iter().flatten().cloned());
            out.push((name, part));
        }
        out
    }

    fn merged(blobs: &[(String, Partition)]) -> BTreeMap<(String, String), i64> {
        let mut out = BTreeMap::new();
        for (_, part) in blobs {
            for (l, items) in &part.stock {
                for (i, q) in items {
                    assert!(
                        out.insert((l.clone(), i.clone()), *q).is_none(),
                        "{l}/{i} twice"
                    );
                }
            }
        }
        out
    }

    /// An account on `azurite` with a new container for the read model.
    async fn fresh_container(azurite: &TestAzurite) -> (StorageAccount, String) {
        let account = azurite.account();
        let container = unique_name("rm");
        account.ensure_container(&container).await.unwrap();
        (account, container)
    }

    /// `n` adjustments of +1 at "downtown", command `c<i>` to item `pie-<i % items>`.
    fn downtown_adjustments(n: usize, items: usize) -> Vec<InventoryAdjustment> {
        (0..n)
            .map(|i| InventoryAdjustment {
                command_id: format!("c{i}"),
                location: "downtown".into(),
                item: format!("pie-{}", i % items),
                delta: 1,
            })
            .collect()
    }

    /// `adjustments` as batches of `size` changes.
    fn batches_of(adjustments: &[InventoryAdjustment], size: usize) -> Vec<Vec<Change<'_>>> {
        adjustments
            .chunks(size)
            .map(|chunk| chunk.iter().map(Change::Adjust).collect())
            .collect()
    }

    #[tokio::test]
    async fn one_writers_batches_on_one_blob_take_turns_instead_of_losing_races() {
        let azurite = TestAzurite::start().await;
        let (account, container) = fresh_container(&azurite).await;
        let p = layout::partition_of("downtown");
        let writer = Writer::new(account.clone(), container.clone());
        let adjustments = downtown_adjustments(80, 4);
        let batches = batches_of(&adjustments, 8);
        let outcomes = futures::future::join_all(batches.iter().map(|b| writer.apply(p, b))).await;
        let conflicts: Vec<u32> = outcomes.into_iter().map(|o| o.unwrap().unwrap()).collect();
        assert_eq!(conflicts, vec![0; batches.len()]);
        let stock = merged(&tree(&account, &container, p).await);
        assert_eq!(stock.values().sum::<i64>(), 80);
    }

    #[tokio::test]
    async fn a_partition_past_its_limit_splits_and_keeps_every_guarantee() {
        let azurite = TestAzurite::start().await;
        let (account, container) = fresh_container(&azurite).await;
        let p = layout::partition_of("downtown");
        let max = 16;

        // A stock take of 500 items at one location: split, several levels deep, at once.
        let lines: Vec<StockLine> = (0..500)
            .map(|i| StockLine {
                location: "downtown".into(),
                item: format!("pie-{i}"),
                quantity: 2,
            })
            .collect();
        let count = Change::Count {
            id: "st-1",
            lines: lines.iter().collect(),
        };
        let writer = Writer::with_max_items(account.clone(), container.clone(), max);
        writer
            .apply(p, std::slice::from_ref(&count))
            .await
            .unwrap()
            .unwrap();
        let blobs = tree(&account, &container, p).await;
        assert!(blobs.len() > 500 / max, "{} blobs", blobs.len());
        assert!(blobs.iter().all(|(_, b)| b.items() <= max));
        let mut expected: BTreeMap<(String, String), i64> = (0..500)
            .map(|i| (("downtown".to_string(), format!("pie-{i}")), 2))
            .collect();
        assert_eq!(merged(&blobs), expected);

        // Two writers (one without the other's copies) adjust at once; then everything is
        // delivered again, the stock take too: each counts once.
        let adjustments = downtown_adjustments(300, 600);
        for a in &adjustments {
            *expected
                .entry((a.location.clone(), a.item.clone()))
                .or_default() += a.delta;
        }
        let other = Writer::with_max_items(account.clone(), container.clone(), max);
        let batches = batches_of(&adjustments, 30);
        for round in 0..2 {
            let runs = batches.iter().enumerate().map(|(i, batch)| {
                let w = if i % 2 == 0 { &writer } else { &other };
                w.apply(p, batch)
            });
            for outcome in futures::future::join_all(runs).await {
                assert!(outcome.unwrap().is_some(), "round {round}");
            }
        }
        writer.apply(p, &[count]).await.unwrap().unwrap();
        let blobs = tree(&account, &container, p).await;
        assert_eq!(merged(&blobs), expected);
        assert!(blobs.iter().all(|(_, b)| b.items() <= max));
    }
}
