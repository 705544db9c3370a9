//! The scenarios, each run on several roles of both sides at once (own queue, own
//! Deployment), so both meet the same machine load at the same moments.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use cqrs_storage::StorageAccount;

use super::proxy::CountingProxy;
use super::sides::{COOLDOWN, MAX_REPLICAS, Objects, Replicas, Role, TARGET_PER_REPLICA};
use crate::common::enqueue;

/// How long after the backlog the busy window opens: both sides are at the maximum by then
/// (KEDA + HPA took about 45 s), or are reported as never having got there.
const BUSY_FROM: Duration = Duration::from_secs(90);

/// What a scenario needs.
#[derive(Clone)]
pub struct Lab {
    pub objects: Objects,
    pub replicas: Replicas,
    pub account: StorageAccount,
    pub proxy: CountingProxy,
}

/// Backlog, busy and drain of one role.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Storage calls per minute while idle at 0 replicas, and while busy at the maximum.
    pub idle_calls: f64,
    pub busy_calls: f64,
    /// Seconds from the backlog to the first replica, and to `MAX_REPLICAS`.
    pub first: Option<f64>,
    pub full: Option<f64>,
    /// Seconds from the queue emptying to 0 replicas.
    pub zero: Option<f64>,
}

/// How a role's replicas went in an observation window.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Replicas when the window opened.
    pub before: i32,
    /// Each change: seconds into the window, replicas.
    pub changes: Vec<(f64, i32)>,
}

impl Outcome {
    /// "held at 2", or the replica counts in order: "2 → 1 → 0".
    pub fn shape(&self) -> String {
        if self.changes.is_empty() {
            return format!("held at {}", self.before);
        }
        let mut s = self.before.to_string();
        for (_, replicas) in &self.changes {
            s.push_str(&format!(" → {replicas}"));
        }
        s
    }
}

impl Lab {
    /// `n` small messages onto `queue`, concurrently.
    pub async fn send(&self, queue: &str, n: usize) -> Result<()> {
        let client = self.account.queue(queue)?;
        let sends = (0..n).map(|i| enqueue(&client, format!("m{i}")));
        futures::future::join_all(sends)
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    /// Creates the role and its queue, and waits until its Deployment exists.
    pub async fn start(&self, role: &Role) -> Result<()> {
        self.account.ensure_queue(&role.queue).await?;
        self.objects.create(role).await?;
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.objects.client.clone(), &self.objects.namespace);
        crate::common::wait_until(
            &format!("Deployment {}", role.deployment),
            Duration::from_secs(60),
            || async {
                deployments
                    .get_opt(&role.deployment)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            },
        )
        .await
    }

    /// Calls per minute for the role's queue over `window`.
    async fn calls_per_minute(&self, role: &Role, window: Duration) -> f64 {
        let before = self.proxy.calls(&role.queue);
        tokio::time::sleep(window).await;
        (self.proxy.calls(&role.queue) - before) as f64 / (window.as_secs_f64() / 60.0)
    }

    /// Idle → backlog of 300 → busy → emptied → back to zero. The backlog comes `phase`
    /// after the idle window, so runs started together still meet the probes (and the HPA's
    /// syncs) at different moments; the queue is emptied a fixed time after the backlog, so
    /// run `i` of both sides is emptied at the same moment and meets the same storage
    /// hiccups on its way to zero (Azurite sweeps deleted messages every 60 s, which stalls
    /// it for seconds).
    pub async fn trial(&self, role: &Role, window: Duration, phase: Duration) -> Result<Trial> {
        self.start(role).await?;
        // NB: one polling interval or two to settle (the first probe, KEDA's HPA creation).
        tokio::time::sleep(Duration::from_secs(15)).await;
        let idle_calls = self.calls_per_minute(role, window).await;
        tokio::time::sleep(phase).await;
        let t0 = Instant::now();
        self.send(&role.queue, 300).await?;
        let wait = Duration::from_secs(300);
        let first = self
            .replicas
            .first(&role.deployment, t0, wait, |r| r >= 1)
            .await;
        let full = self
            .replicas
            .first(&role.deployment, t0, BUSY_FROM, |r| r >= MAX_REPLICAS)
            .await;
        tokio::time::sleep_until((t0 + BUSY_FROM).into()).await;
        let busy_calls = self.calls_per_minute(role, window).await;
        let emptied = Instant::now();
        self.account.queue(&role.queue)?.clear(None).await?;
        let zero = self
            .replicas
            .first(
                &role.deployment,
                emptied,
                Duration::from_secs(u64::from(COOLDOWN) * 6),
                |r| r == 0,
            )
            .await;
        self.objects.delete(role).await?;
        Ok(Trial {
            idle_calls,
            busy_calls,
            first,
            full,
            zero,
        })
    }

    /// `n` messages, waits for `ceil(n / target)` replicas, then `disturb`s the role and
    /// watches its replicas for `window`.
    async fn observe(
        &self,
        role: &Role,
        n: usize,
        window: Duration,
        disturb: impl AsyncFnOnce() -> Result<()>,
    ) -> Result<Outcome> {
        self.start(role).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t0 = Instant::now();
        self.send(&role.queue, n).await?;
        let want = i32::try_from(n.div_ceil(TARGET_PER_REPLICA as usize)).unwrap_or(i32::MAX);
        self.replicas
            .first(&role.deployment, t0, Duration::from_secs(180), |r| {
                r >= want
            })
            .await
            .with_context(|| format!("{} never reached {want} replicas", role.deployment))?;
        disturb().await?;
        let opened = Instant::now();
        let before = self.replicas.now(&role.deployment);
        tokio::time::sleep(window).await;
        let changes = self.replicas.since(&role.deployment, opened);
        self.objects.delete(role).await?;
        Ok(Outcome { before, changes })
    }

    /// 40 messages received by a slow worker and held invisible, none visible: does the role
    /// scale to zero while they are in flight?
    pub async fn in_flight(&self, role: &Role, window: Duration) -> Result<Outcome> {
        self.observe(role, 40, window, async || {
            let queue = self.account.queue(&role.queue)?;
            let mut held = 0;
            while held < 40 {
                let options = QueueClientReceiveMessagesOptions {
                    number_of_messages: Some(32),
                    visibility_timeout: Some(600),
                    ..Default::default()
                };
                let got = queue
                    .receive_messages(Some(options))
                    .await?
                    .into_model()?
                    .items
                    .unwrap_or_default()
                    .len();
                anyhow::ensure!(got > 0, "only {held} of 40 messages could be received");
                held += got;
            }
            Ok(())
        })
        .await
    }

    /// The queue deleted under a scaled role.
    pub async fn queue_deleted(&self, role: &Role, window: Duration) -> Result<Outcome> {
        self.observe(role, 40, window, async || {
            self.account.delete_queue(&role.queue).await?;
            Ok(())
        })
        .await
    }

    /// The queue unreachable (requests time out) under a scaled role.
    pub async fn queue_unreachable(&self, role: &Role, window: Duration) -> Result<Outcome> {
        self.observe(role, 40, window, async || {
            self.proxy.make_unreachable(&role.queue);
            Ok(())
        })
        .await
    }
}
