//! The worker role: receive batches from the role's queue, hand them to a [`Handler`], delete
//! what succeeded, leave what failed for redelivery, and move what cannot succeed to the
//! poison queue.
//!
//! - Up to `WORKER_RECEIVERS` receive loops, each taking batches of up to 32 messages; a batch
//!   is handled concurrently by the handler.
//! - While a batch is being handled, the visibility timeout of its messages is renewed every
//!   half timeout, so long work is not redelivered to another replica.
//! - A message dequeued more than `CQRS_MAX_DEQUEUE_COUNT` times, or one that cannot be
//!   decoded, goes to `CQRS_POISON_QUEUE` (copied first, then deleted: never lost).
//! - A message that is a claim-check envelope ([`cqrs_storage::claims`]) stands for its blob:
//!   the body is downloaded and checked (size, SHA-256) and handled like a small command; the
//!   blob is deleted after the message, kept (marked) with a poisoned one, and a missing or
//!   altered blob poisons the message with the reason. Orphaned blobs (their message expired)
//!   are swept in the background.
//! - An empty queue is polled with a backoff from 100 ms doubling to 2 s, reset by work; storage
//!   errors back off the same way and never stop the worker.
//! - On SIGTERM/Ctrl-C receiving stops, batches in hand finish, and the process exits 0.

pub mod inventory;
pub mod rate;
pub mod registration;
pub mod stocktake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::RequestContent;
use azure_storage_queue::QueueClient;
use azure_storage_queue::models::{QueueClientReceiveMessagesOptions, QueueMessage};
use cqrs_storage::SdkError;
use cqrs_storage::claims::{ClaimCheck, ClaimError};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::metrics::AppMetrics;
use rate::RateLimiter;

/// One received message.
#[derive(Clone, Debug)]
pub struct Received {
    /// Message id.
    pub id: String,
    /// Its text as stored.
    pub text: String,
    /// Times it has been dequeued, this time included.
    pub dequeue_count: u32,
    /// When it was enqueued.
    pub inserted: Option<OffsetDateTime>,
}

/// What became of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: delete the message.
    Done,
    /// Failed for now: leave it to be redelivered after its visibility timeout.
    Retry(String),
    /// Can never succeed: move it to the poison queue.
    Reject(String),
}

/// The work a worker does with the commands of its queue.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The decoded command.
    type Command: Send + Sync + 'static;
    /// Decodes a message; an error sends it to the poison queue with the reason.
    fn decode(&self, text: &str) -> Result<Self::Command, String>;
    /// Handles a batch; one outcome per command, in order.
    async fn handle(&self, batch: &[Self::Command]) -> Vec<Outcome>;
    /// Called after a message went to the poison queue (with the command, if it decoded).
    async fn poisoned(&self, _command: Option<&Self::Command>, _reason: &str) {}
}

/// Consumes one queue with one handler.
pub struct Worker<H: Handler> {
    account: cqrs_storage::StorageAccount,
    queue: Arc<QueueClient>,
    poison: QueueClient,
    config: WorkerConfig,
    handler: H,
    metrics: Arc<AppMetrics>,
    limiter: Arc<RateLimiter>,
}

/// Delay after an empty receive or an error: doubles from 100 ms to 2 s, reset by work.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        now
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = shutdown.changed() => {}
    }
}

impl<H: Handler> Worker<H> {
    /// A worker for `config.queue`.
    pub fn new(
        account: &cqrs_storage::StorageAccount,
        config: WorkerConfig,
        handler: H,
        metrics: Arc<AppMetrics>,
    ) -> Result<Self, cqrs_storage::Error> {
        let limiter = Arc::new(RateLimiter::new(
            config.max_messages_per_second,
            config.rate_share_file.clone(),
        ));
        Ok(Self {
            account: account.clone(),
            queue: Arc::new(account.queue(&config.queue)?),
            poison: account.queue(&config.poison_queue)?,
            config,
            handler,
            metrics,
            limiter,
        })
    }

    /// Runs until `shutdown` turns true, then finishes the batches in hand.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        match self.limiter.rate() {
            Some(rate) => {
                tracing::info!(queue = %self.config.queue, rate, "receiving at most {rate} messages/s (this replica's share)")
            }
            None => tracing::info!(queue = %self.config.queue, "receiving without a rate limit"),
        }
        let reload = {
            let limiter = self.limiter.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                while !*shutdown.borrow() {
                    sleep_or_shutdown(rate::REREAD, &mut shutdown).await;
                    limiter.reload();
                }
            })
        };
        let sweeper = self.config.claim_container.clone().map(|container| {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker.sweep_claims(container, shutdown).await })
        });
        let loops: Vec<_> = (0..self.config.receivers)
            .map(|_| {
                let worker = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { worker.receive_loop(shutdown).await })
            })
            .collect();
        for task in loops {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a receive loop ended abnormally");
            }
        }
        reload.abort();
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
    }

    /// Deletes the claim-check blobs of this queue whose message can no longer exist, every
    /// half message time-to-live (between 1 s and 10 min).
    async fn sweep_claims(&self, container: String, mut shutdown: watch::Receiver<bool>) {
        let ttl = self.config.message_ttl;
        let period = ttl.map_or(Duration::from_secs(600), |t| {
            (t / 2).clamp(Duration::from_secs(1), Duration::from_secs(600))
        });
        while !*shutdown.borrow() {
            sleep_or_shutdown(period, &mut shutdown).await;
            match self
                .account
                .sweep_claims(&container, &self.config.queue, ttl)
                .await
            {
                Ok(swept) if swept.deleted > 0 => {
                    tracing::info!(queue = %self.config.queue, deleted = swept.deleted, kept = swept.kept, "deleted orphaned claim-check blobs (their message expired)")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(queue = %self.config.queue, "cannot sweep claim-check blobs: {e}")
                }
            }
        }
    }

    async fn receive_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff(Backoff::MIN);
        let queue = AppMetrics::queue(&self.config.queue);
        loop {
            let want = self.limiter.acquire(self.config.batch, &mut shutdown).await;
            if want == 0 || *shutdown.borrow() {
                return;
            }
            let batch = match self.receive(want).await {
                Ok(batch) => batch,
                Err(e) => {
                    self.limiter.refund(want);
                    self.metrics.receive_errors.get_or_create(&queue).inc();
                    let delay = backoff.next();
                    tracing::warn!(queue = %self.config.queue, retry_in = ?delay, "cannot receive: {e}");
                    sleep_or_shutdown(delay, &mut shutdown).await;
                    continue;
                }
            };
            self.limiter.refund(want.saturating_sub(batch.len() as u32));
            if batch.is_empty() {
                sleep_or_shutdown(backoff.next(), &mut shutdown).await;
                continue;
            }
            backoff.reset();
            // NB: not raced against shutdown: a batch in hand is always finished.
            self.process(batch).await;
        }
    }

    async fn receive(&self, n: u32) -> Result<Vec<(Received, String)>, SdkError> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(n.min(32) as i32),
            visibility_timeout: Some(self.config.visibility_timeout.as_secs() as i32),
            ..Default::default()
        };
        let messages = self
            .queue
            .receive_messages(Some(options))
            .await?
            .into_model()?;
        Ok(messages
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let received = Received {
                    id: m.message_id?,
                    text: m.message_text.unwrap_or_default(),
                    dequeue_count: u32::try_from(m.dequeue_count.unwrap_or(1)).unwrap_or(u32::MAX),
                    inserted: m.insertion_time,
                };
                Some((received, m.pop_receipt?))
            })
            .collect())
    }

    async fn process(&self, batch: Vec<(Received, String)>) {
        let started = std::time::Instant::now();
        // Pop receipts change with each visibility renewal; the renewer and the deleter share them.
        let receipts: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let mut pending = Vec::new();
        for (message, pop) in batch {
            let claim = match ClaimCheck::parse(&message.text) {
                None => None,
                Some(Ok(claim)) => Some(claim),
                Some(Err(reason)) => {
                    let reason = format!("malformed message: {reason}");
                    self.poison(&message, &pop, None, None, &reason).await;
                    continue;
                }
            };
            if message.dequeue_count > self.config.max_dequeue_count {
                let reason = format!(
                    "dequeued {} times (maxDequeueCount {})",
                    message.dequeue_count, self.config.max_dequeue_count
                );
                // NB: decoded (best effort) so the handler can tell whoever waits on it.
                let command = match &claim {
                    Some(claim) => self
                        .fetch_claim(claim)
                        .await
                        .ok()
                        .and_then(|text| self.handler.decode(&text).ok()),
                    None => self.handler.decode(&message.text).ok(),
                };
                self.poison(&message, &pop, command.as_ref(), claim.as_ref(), &reason)
                    .await;
                continue;
            }
            pending.push((message, pop, claim));
        }
        // Large commands wait in their claim-check blobs: fetched concurrently.
        let bodies = futures::future::join_all(pending.iter().map(|(_, _, claim)| async move {
            match claim {
                None => Ok(None),
                Some(claim) => self.fetch_claim(claim).await.map(Some),
            }
        }))
        .await;
        let mut work = Vec::new();
        let mut claims = Vec::new();
        let mut commands = Vec::new();
        for ((message, pop, claim), body) in pending.into_iter().zip(bodies) {
            let decoded = match &body {
                Ok(Some(text)) => self.handler.decode(text),
                Ok(None) => self.handler.decode(&message.text),
                Err(ClaimError::Invalid(reason)) => {
                    self.poison(&message, &pop, None, claim.as_ref(), reason)
                        .await;
                    continue;
                }
                Err(e @ ClaimError::Unavailable { .. }) => {
                    // Left invisible: it comes back after its visibility timeout.
                    let queue = AppMetrics::queue(&self.config.queue);
                    self.metrics.failed.get_or_create(&queue).inc();
                    tracing::warn!(queue = %self.config.queue, message = %message.id, "will be retried: {e}");
                    continue;
                }
            };
            drop(body);
            match decoded {
                Ok(command) => {
                    receipts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(message.id.clone(), pop);
                    commands.push(command);
                    claims.push(claim);
                    work.push(message);
                }
                Err(reason) => {
                    self.poison(
                        &message,
                        &pop,
                        None,
                        claim.as_ref(),
                        &format!("malformed message: {reason}"),
                    )
                    .await
                }
            }
        }
        if work.is_empty() {
            return;
        }
        let (stop_renewing, stop) = tokio::sync::oneshot::channel();
        let renewer = tokio::spawn(renew_visibility(
            self.queue.clone(),
            receipts.clone(),
            self.config.visibility_timeout,
            stop,
        ));
        let outcomes = self.handler.handle(&commands).await;
        let _ = stop_renewing.send(());
        if let Err(e) = renewer.await {
            tracing::error!(error = %e, "the visibility renewer ended abnormally");
        }
        // Settled concurrently: one round trip for the batch, not one per message.
        let settled = work.iter().zip(&claims).zip(&commands).zip(outcomes).map(
            |(((message, claim), command), outcome)| {
                let pop = receipts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&message.id)
                    .cloned()
                    .unwrap_or_default();
                self.settle(message, pop, claim.as_ref(), command, outcome, started)
            },
        );
        futures::future::join_all(settled).await;
    }

    /// The body a claim-check envelope stands for (the app's container only).
    async fn fetch_claim(&self, claim: &ClaimCheck) -> Result<String, ClaimError> {
        let Some(container) = &self.config.claim_container else {
            return Err(ClaimError::Invalid(format!(
                "a claim-check envelope for {}, but this app has no claim-check container",
                claim.location()
            )));
        };
        self.account.fetch_claim(claim, container).await
    }

    /// Deletes a handled message (then its claim-check blob), leaves a failed one for
    /// redelivery, poisons a rejected one.
    async fn settle(
        &self,
        message: &Received,
        pop: String,
        claim: Option<&ClaimCheck>,
        command: &H::Command,
        outcome: Outcome,
        started: std::time::Instant,
    ) {
        let queue = AppMetrics::queue(&self.config.queue);
        match outcome {
            Outcome::Done => match self.queue.delete_message(&message.id, &pop, None).await {
                Ok(_) => {
                    // NB: only now: a redelivered reference must still find its blob. A blob
                    // left behind by a failure here is swept once the message has expired.
                    if let Some(claim) = claim
                        && let Err(e) = self.account.delete_claim(claim).await
                    {
                        tracing::warn!(message = %message.id, "handled, but the claim-check blob stays until the sweep: {e}");
                    }
                    self.metrics.processed.get_or_create(&queue).inc();
                    self.metrics
                        .handling_seconds
                        .observe(started.elapsed().as_secs_f64());
                    if let Some(inserted) = message.inserted {
                        self.metrics.age_seconds.observe(
                            (OffsetDateTime::now_utc() - inserted)
                                .as_seconds_f64()
                                .max(0.0),
                        );
                    }
                }
                // NB: handled but not deleted: it will be redelivered, and the handlers are
                // idempotent, so it will count once.
                Err(e) => {
                    tracing::warn!(message = %message.id, "handled, but cannot delete: {}", SdkError(e))
                }
            },
            Outcome::Retry(reason) => {
                self.metrics.failed.get_or_create(&queue).inc();
                tracing::warn!(queue = %self.config.queue, message = %message.id, attempt = message.dequeue_count, "will be retried: {reason}");
            }
            Outcome::Reject(reason) => {
                self.poison(message, &pop, Some(command), claim, &reason)
                    .await
            }
        }
    }

    /// Copies the message to the poison queue, then deletes it; its claim-check blob, if any,
    /// is marked first so the sweep keeps it as long as the poison copy.
    async fn poison(
        &self,
        message: &Received,
        pop: &str,
        command: Option<&H::Command>,
        claim: Option<&ClaimCheck>,
        reason: &str,
    ) {
        let queue = AppMetrics::queue(&self.config.queue);
        if let Some(claim) = claim
            && let Err(e) = self.account.mark_claim_poisoned(claim).await
        {
            // Left in the queue: it will come back and be poisoned then.
            tracing::warn!(message = %message.id, "cannot keep the claim-check blob with the poisoned message: {e}");
            return;
        }
        let copy = QueueMessage {
            message_text: Some(message.text.clone()),
        };
        let sent = match RequestContent::try_from(copy) {
            Ok(content) => match self.poison.send_message(content, None).await {
                Ok(rsp) => Ok(rsp
                    .into_model()
                    .ok()
                    .and_then(|m| m.items?.into_iter().next()?.message_id)),
                Err(e) => Err(SdkError(e)),
            },
            Err(e) => Err(SdkError(e)),
        };
        let copy_id = match sent {
            Ok(id) => id,
            Err(e) => {
                // Left in the queue: it will come back and be poisoned then.
                tracing::warn!(message = %message.id, "cannot move to {}: {e}", self.config.poison_queue);
                return;
            }
        };
        // NB: why and after how many tries, for `cqrs-operator poison list` (best effort).
        if let (Some(container), Some(id)) = (&self.config.claim_container, copy_id) {
            let record = cqrs_storage::poison::PoisonRecord {
                tries: message.dequeue_count,
                reason: reason.to_string(),
            };
            if let Err(e) = self
                .account
                .record_poisoned(container, &self.config.queue, &id, &record)
                .await
            {
                tracing::warn!(message = %message.id, "cannot record why it was poisoned: {e}");
            }
        }
        if let Err(e) = self.queue.delete_message(&message.id, pop, None).await {
            tracing::warn!(message = %message.id, "copied to the poison queue but cannot delete: {}", SdkError(e));
        }
        self.metrics.poisoned.get_or_create(&queue).inc();
        tracing::warn!(queue = %self.config.queue, poison_queue = %self.config.poison_queue, message = %message.id, attempts = message.dequeue_count, "moved to the poison queue: {reason}");
        self.handler.poisoned(command, reason).await;
    }
}

/// Renews the visibility of every message in `receipts` every third of the timeout, until
/// `stop` fires. Renewals run concurrently, so a slow storage service cannot make the last
/// messages of a batch miss their deadline.
///
/// NB: stopped, not aborted: a renewal in flight may already have changed the pop receipt on
/// the service, and only finishing it records the new one; the deletes that follow would
/// otherwise fail with `PopReceiptMismatch` and the work be redone.
async fn renew_visibility(
    queue: Arc<QueueClient>,
    receipts: Arc<Mutex<HashMap<String, String>>>,
    timeout: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let period = (timeout / 3).max(Duration::from_millis(500));
    let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
    let popreceipt = azure_core::http::headers::HeaderName::from_static("x-ms-popreceipt");
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = &mut stop => return,
        }
        let current: Vec<(String, String)> = receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let renewals = current.into_iter().map(|(id, pop)| {
            let (queue, receipts, popreceipt) = (&queue, &receipts, &popreceipt);
            async move {
                match queue.update_message(&id, &pop, seconds, None).await {
                    Ok(rsp) => {
                        if let Some(fresh) = rsp.headers().get_optional_str(popreceipt) {
                            receipts
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id, fresh.to_string());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(message = %id, "cannot renew visibility: {}", SdkError(e))
                    }
                }
            }
        });
        futures::future::join_all(renewals).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_storage::azurite::{TestAzurite, unique_name};

    #[tokio::test]
    async fn renewal_keeps_a_message_invisible_and_its_new_pop_receipt_deletes_it() {
        let azurite = TestAzurite::start().await;
        let account = azurite.account();
        let name = unique_name("renew");
        account.ensure_queue(&name).await.unwrap();
        let queue = Arc::new(account.queue(&name).unwrap());
        let message = QueueMessage {
            message_text: Some("work".into()),
        };
        queue
            .send_message(RequestContent::try_from(message).unwrap(), None)
            .await
            .unwrap();
        let options = QueueClientReceiveMessagesOptions {
            visibility_timeout: Some(2),
            ..Default::default()
        };
        let received = queue
            .receive_messages(Some(options))
            .await
            .unwrap()
            .into_model()
            .unwrap()
            .items
            .unwrap()
            .remove(0);
        let (id, pop) = (received.message_id.unwrap(), received.pop_receipt.unwrap());
        let receipts: Arc<Mutex<HashMap<String, String>>> =
            Arc::new(Mutex::new(HashMap::from([(id.clone(), pop.clone())])));

        let (stop_renewing, stop) = tokio::sync::oneshot::channel();
        let renewer = tokio::spawn(renew_visibility(
            queue.clone(),
            receipts.clone(),
            Duration::from_secs(2),
            stop,
        ));
        // Well past the original 2 s timeout: still invisible thanks to the renewals.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let visible = account.queue_depth(&name).await.unwrap().visible;
        stop_renewing.send(()).unwrap();
        renewer.await.unwrap();
        assert_eq!(
            visible,
            Some(0),
            "the message became visible despite renewals"
        );
        let fresh = receipts.lock().unwrap().get(&id).cloned().unwrap();
        assert_ne!(fresh, pop, "renewal hands out a new pop receipt");
        queue.delete_message(&id, &fresh, None).await.unwrap();
        assert_eq!(account.queue_depth(&name).await.unwrap().approximate, 0);
    }
}
