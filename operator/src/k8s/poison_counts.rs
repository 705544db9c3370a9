//! Poison-queue depths for status, read at most once per [`POISON_FRESH`] per queue.
//!
//! Every reconciliation shows each poison queue's depth, and a new app is reconciled several
//! times in its first seconds (its creation, its finalizer, each Deployment's first sight), so
//! a thousand new apps made thousands of storage reads of queues that are almost always empty.
//! A resync (every minute) always reads them again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_storage::{QueueDepth, QueueProbe};

use crate::crd::CqrsApp;

/// The poison queues of `app`'s queues.
pub fn poison_queues(app: &CqrsApp) -> BTreeSet<String> {
    app.spec
        .queues
        .iter()
        .map(|q| cqrs_storage::queues::poison_queue_name(&q.name))
        .collect()
}

/// How long a poison queue's depth is shown without reading it again.
pub const POISON_FRESH: Duration = Duration::from_secs(30);

/// The depths last read, by storage account (`Connected::probe_id`) and queue.
#[derive(Debug, Default)]
pub struct PoisonCounts(Mutex<HashMap<(String, String), (QueueDepth, Instant)>>);

impl PoisonCounts {
    /// `probe` for the queues of one account, answering for `poison` queues from readings
    /// younger than [`POISON_FRESH`].
    pub fn probe<'a>(
        &'a self,
        account: &'a str,
        poison: BTreeSet<String>,
        probe: &'a dyn QueueProbe,
    ) -> RecentPoison<'a> {
        RecentPoison {
            counts: self,
            account,
            poison,
            probe,
        }
    }

    /// Forgets the readings of `queues` of `account` (after a redrive changed them).
    pub fn forget(&self, account: &str, queues: impl IntoIterator<Item = String>) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for queue in queues {
            counts.remove(&(account.to_owned(), queue));
        }
    }
}

/// See [`PoisonCounts::probe`].
pub struct RecentPoison<'a> {
    counts: &'a PoisonCounts,
    account: &'a str,
    poison: BTreeSet<String>,
    probe: &'a dyn QueueProbe,
}

impl std::fmt::Debug for RecentPoison<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentPoison")
            .field("account", &self.account)
            .field("poison", &self.poison)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl QueueProbe for RecentPoison<'_> {
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth, cqrs_storage::Error> {
        if !self.poison.contains(queue) {
            return self.probe.queue_depth(queue).await;
        }
        let key = (self.account.to_owned(), queue.to_owned());
        let recent = self
            .counts
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(_, at)| at.elapsed() < POISON_FRESH)
            .map(|(depth, _)| *depth);
        if let Some(depth) = recent {
            return Ok(depth);
        }
        let depth = self.probe.queue_depth(queue).await?;
        self.counts
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (depth, Instant::now()));
        Ok(depth)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counting(AtomicU64);

    #[async_trait]
    impl QueueProbe for Counting {
        async fn queue_depth(&self, _: &str) -> Result<QueueDepth, cqrs_storage::Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(QueueDepth {
                approximate: n,
                visible: Some(n),
            })
        }
    }

    #[tokio::test]
    async fn a_poison_queue_is_read_once_while_fresh_and_other_queues_every_time() {
        let storage = Counting::default();
        let counts = PoisonCounts::default();
        let poison: BTreeSet<String> = ["orders-poison".to_string()].into();
        let probe = counts.probe("acct", poison.clone(), &storage);
        let first = probe.queue_depth("orders-poison").await.unwrap();
        let again = probe.queue_depth("orders-poison").await.unwrap();
        assert_eq!(first, again, "answered from the fresh reading");
        probe.queue_depth("orders").await.unwrap();
        probe.queue_depth("orders").await.unwrap();
        assert_eq!(
            storage.0.load(Ordering::SeqCst),
            3,
            "1 poison read + 2 queue reads"
        );
        // Another account's queue of the same name is its own.
        counts
            .probe("other", poison.clone(), &storage)
            .queue_depth("orders-poison")
            .await
            .unwrap();
        assert_eq!(storage.0.load(Ordering::SeqCst), 4);
        // Forgotten, it is read again.
        counts.forget("acct", ["orders-poison".to_string()]);
        probe.queue_depth("orders-poison").await.unwrap();
        assert_eq!(storage.0.load(Ordering::SeqCst), 5);
    }
}
