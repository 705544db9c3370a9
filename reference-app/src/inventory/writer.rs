//! Read-modify-write of partitions under their ETags: a lost race re-reads and re-applies
//! (the changes are idempotent), so any number of workers converge without locks.
//!
//! A [`Writer`] keeps each partition as it last wrote it, with the ETag the write returned,
//! and writes its next changes on that copy with `If-Match` without reading the blob first: a
//! worker alone on a partition reads it once, not at every batch. When another writer has been
//! there since, the write fails (412) and the partition is read again, as without the copy.

use std::collections::HashMap;
use std::sync::Mutex;
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

/// Writes partitions of one read-model container.
#[derive(Debug)]
pub struct Writer {
    account: StorageAccount,
    container: String,
    /// Partition -> its content as this writer last wrote it, and the ETag of that write.
    /// NB: at most every partition (the whole model, ~10 MB at 100,000 items) per process.
    written: Mutex<HashMap<u64, (Partition, Etag)>>,
}

impl Writer {
    /// A writer of `container`'s partitions.
    pub fn new(account: StorageAccount, container: String) -> Self {
        Self {
            account,
            container,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn take_written(&self, p: u64) -> Option<(Partition, Etag)> {
        self.written.lock().ok()?.remove(&p)
    }

    fn keep_written(&self, p: u64, partition: Partition, etag: Etag) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(p, (partition, etag));
        }
    }

    /// Applies `changes` to partition `p` in one write; returns the lost races on the way
    /// (`None`: too many, nothing written).
    pub async fn apply(&self, p: u64, changes: &[Change<'_>]) -> Result<Option<u32>, StoreError> {
        let name = layout::blob_name(p);
        let mut known = self.take_written(p);
        for attempt in 0..MAX_ATTEMPTS {
            let from_memory = known.is_some();
            let (mut partition, condition) = match known.take() {
                Some((partition, etag)) => (partition, Condition::Match(etag)),
                None => {
                    match store::read::<Partition>(&self.account, &self.container, &name).await? {
                        Some((partition, Some(etag))) => (partition, Condition::Match(etag)),
                        Some((partition, None)) => (partition, Condition::Any),
                        None => (Partition::default(), Condition::Create),
                    }
                }
            };
            partition.apply(changes, OffsetDateTime::now_utc());
            match store::write(&self.account, &self.container, &name, &partition, condition).await?
            {
                Written::Ok(etag) => {
                    if let Some(etag) = etag {
                        self.keep_written(p, partition, etag);
                    }
                    return Ok(Some(attempt));
                }
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
