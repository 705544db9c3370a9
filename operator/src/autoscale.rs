//! The probe loop: every `pollingInterval` it reads a worker role's queue depth, asks the
//! [`Scaler`], and applies the decision to a [`ScaleTarget`]. The same loop drives Kubernetes
//! Deployments (through their scale subresource) and local processes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use cqrs_storage::QueueProbe;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::crd::ScalingSpec;
use crate::scaler::{Decision, Direction, Observation, Scaler, rate_share};

/// What the loop needs to know about one worker role.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerScaling {
    /// Worker role name.
    pub worker: String,
    /// Queue it consumes.
    pub queue: String,
    /// Its scaling settings.
    pub scaling: ScalingSpec,
    /// Its total rate limit, shared among replicas.
    pub max_messages_per_second: Option<u32>,
}

impl From<&crate::crd::WorkerSpec> for WorkerScaling {
    fn from(worker: &crate::crd::WorkerSpec) -> Self {
        WorkerScaling {
            worker: worker.name.clone(),
            queue: worker.queue.clone(),
            scaling: worker.scaling.clone(),
            max_messages_per_second: worker.max_messages_per_second,
        }
    }
}

/// Why a scale target could not be read or changed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot {action}: {source}")]
pub struct TargetError {
    /// What was attempted (`patch the scale subresource`).
    pub action: String,
    /// Why it failed (the API's, the file system's error).
    #[source]
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl TargetError {
    /// `action` failed because of `source`.
    pub fn new(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            action: action.into(),
            source: Arc::new(source),
        }
    }
}

/// Something with a replica count the loop controls.
#[async_trait]
pub trait ScaleTarget: Send + Sync {
    /// Replicas now.
    async fn current_replicas(&self) -> Result<i32, TargetError>;
    /// Sets the replicas.
    async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError>;
    /// Hands each replica its share of the role's rate limit (`None`: no limit).
    async fn set_rate_share(&self, share: Option<f64>) -> Result<(), TargetError>;
}

/// One pass of the loop, reported to the [`ScaleObserver`].
#[derive(Clone, Debug)]
pub struct Tick {
    /// Worker role.
    pub worker: String,
    /// Its queue.
    pub queue: String,
    /// Wall-clock time of the probe.
    pub at: SystemTime,
    /// What the probe saw.
    pub observation: Observation,
    /// Replicas before the decision (`None` when they could not be read).
    pub current: Option<i32>,
    /// The decision, when one could be made.
    pub decision: Option<Decision>,
    /// The rate share each replica has after this tick.
    pub rate_share: Option<f64>,
    /// Why the target could not be read or changed, if so.
    pub error: Option<String>,
    /// How long the probe (storage calls) took.
    pub probe_duration: Duration,
    /// How much longer than `pollingInterval` it was since the loop's previous probe
    /// (`None` for its first).
    pub late: Option<Duration>,
}

impl Tick {
    /// True when the tick changed the replica count.
    pub fn scaled(&self) -> bool {
        self.error.is_none()
            && self
                .decision
                .as_ref()
                .is_some_and(|d| d.direction != Direction::Hold)
    }

    /// The replicas the target has after this tick: the decision's when it scaled, else
    /// those read before it (`None` when they could not be read).
    ///
    /// NB: the status is refreshed by the watch event of this very scale, so reporting the
    /// replicas read *before* it would leave `current` a change behind until the next resync.
    pub fn replicas_after(&self) -> Option<i32> {
        match &self.decision {
            Some(decision) if self.scaled() => Some(decision.desired),
            _ => self.current,
        }
    }
}

/// Receives every tick (for status, metrics, events and logs).
pub trait ScaleObserver: Send + Sync {
    /// Called after each probe.
    fn on_tick(&self, tick: &Tick);
}

/// Runs until the sender of `config` is dropped. Config changes take effect at the next tick
/// (the polling interval at once); the scaler keeps its history across them.
///
/// The first probe comes at a random point of the first interval, so the loops of many roles
/// started together (an operator restart, a thousand apps applied at once) spread their probes
/// over the interval instead of all probing, and reading their targets, in the same instant.
pub async fn probe_loop(
    mut config: watch::Receiver<WorkerScaling>,
    probe: Arc<dyn QueueProbe>,
    target: Arc<dyn ScaleTarget>,
    observer: Arc<dyn ScaleObserver>,
) {
    let mut scaler = Scaler::new(Instant::now());
    let mut share_set: Option<Option<f64>> = None;
    let mut settings = config.borrow_and_update().clone();
    let mut ticker = interval(&settings);
    let mut previous: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                let fresh = config.borrow_and_update().clone();
                if fresh.scaling.polling_interval != settings.scaling.polling_interval {
                    ticker = interval(&fresh);
                    previous = None;
                }
                settings = fresh;
                continue;
            }
        }
        let now = Instant::now();
        let late = previous.map(|p| now.duration_since(p).saturating_sub(period(&settings)));
        previous = Some(now);
        let mut tick = run_once(
            &settings,
            &mut scaler,
            &mut share_set,
            probe.as_ref(),
            target.as_ref(),
        )
        .await;
        tick.late = late;
        observer.on_tick(&tick);
    }
}

fn period(settings: &WorkerScaling) -> Duration {
    Duration::from_secs(u64::from(settings.scaling.polling_interval.max(1)))
}

/// Ticks every polling interval from a random phase within the first.
fn interval(settings: &WorkerScaling) -> tokio::time::Interval {
    let period = period(settings);
    let phase = period.mul_f64(random_fraction());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// A number in [0, 1) from the standard library's per-instance random hasher keys (no random
/// crate for one number per loop start).
pub(crate) fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// One probe, decision and actuation.
async fn run_once(
    settings: &WorkerScaling,
    scaler: &mut Scaler,
    share_set: &mut Option<Option<f64>>,
    probe: &dyn QueueProbe,
    target: &dyn ScaleTarget,
) -> Tick {
    let started = Instant::now();
    let observation = match probe.queue_depth(&settings.queue).await {
        Ok(depth) => Observation::Depth(depth),
        Err(e) => Observation::Unreadable(e.to_string()),
    };
    let mut tick = Tick {
        worker: settings.worker.clone(),
        queue: settings.queue.clone(),
        at: SystemTime::now(),
        probe_duration: started.elapsed(),
        observation,
        current: None,
        decision: None,
        rate_share: share_set.flatten(),
        error: None,
        late: None,
    };
    let current = match target.current_replicas().await {
        Ok(current) => current,
        Err(e) => {
            tick.error = Some(format!("cannot read replicas: {e}"));
            return tick;
        }
    };
    tick.current = Some(current);
    let decision = scaler.decide(
        &settings.scaling,
        current,
        &tick.observation,
        Instant::now(),
    );
    let share = rate_share(settings.max_messages_per_second, decision.desired);

    // NB: lower each replica's share before adding replicas, and only after removing them
    // raise it, so the role never exceeds its total while the change rolls out.
    let result = async {
        match decision.direction {
            Direction::Up => {
                apply_share(target, share_set, share).await?;
                target.set_replicas(decision.desired).await
            }
            Direction::Down => {
                target.set_replicas(decision.desired).await?;
                apply_share(target, share_set, share).await
            }
            Direction::Hold => apply_share(target, share_set, share).await,
        }
    }
    .await;
    if let Err(e) = result {
        tick.error = Some(e.to_string());
    }
    tick.rate_share = share_set.flatten();
    tick.decision = Some(decision);
    tick
}

async fn apply_share(
    target: &dyn ScaleTarget,
    share_set: &mut Option<Option<f64>>,
    share: Option<f64>,
) -> Result<(), TargetError> {
    if *share_set != Some(share) {
        target.set_rate_share(share).await?;
        *share_set = Some(share);
    }
    Ok(())
}

/// What the registry remembers of one worker role's loop.
#[derive(Clone, Debug, Default)]
pub struct WorkerState {
    /// The latest tick.
    pub last_tick: Option<Tick>,
    /// When and why the loop last changed the replicas.
    pub last_scale: Option<(SystemTime, String)>,
    /// The replicas the scaler last asked for.
    pub desired: Option<i32>,
}

struct RecordingObserver {
    state: Arc<Mutex<WorkerState>>,
    inner: Arc<dyn ScaleObserver>,
}

impl ScaleObserver for RecordingObserver {
    fn on_tick(&self, tick: &Tick) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(decision) = &tick.decision {
                if tick.error.is_none() {
                    state.desired = Some(decision.desired);
                }
                if tick.scaled() {
                    state.last_scale = Some((tick.at, decision.reason.clone()));
                }
            }
            state.last_tick = Some(tick.clone());
        }
        self.inner.on_tick(tick);
    }
}

struct LoopHandle {
    config: watch::Sender<WorkerScaling>,
    probe_id: String,
    task: JoinHandle<()>,
    state: Arc<Mutex<WorkerState>>,
}

/// The running probe loops, one per worker role, keyed by `K`.
pub struct Scalers<K: Ord> {
    loops: Mutex<BTreeMap<K, LoopHandle>>,
}

impl<K: Ord> Default for Scalers<K> {
    fn default() -> Self {
        Self {
            loops: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord> std::fmt::Debug for Scalers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.loops.lock().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("Scalers").field("loops", &n).finish()
    }
}

impl<K: Ord + Clone> Scalers<K> {
    /// Makes sure a loop runs for `key` with `settings`: starts one, updates a running one's
    /// settings in place, or restarts it when the storage behind `probe_id` changed.
    pub fn ensure(
        &self,
        key: K,
        settings: WorkerScaling,
        probe_id: &str,
        probe: Arc<dyn QueueProbe>,
        target: impl FnOnce() -> Arc<dyn ScaleTarget>,
        observer: Arc<dyn ScaleObserver>,
    ) {
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = loops.get(&key)
            && running.probe_id == probe_id
            && !running.task.is_finished()
        {
            running.config.send_if_modified(|current| {
                let changed = *current != settings;
                *current = settings;
                changed
            });
            return;
        }
        let state = loops.get(&key).map(|l| l.state.clone()).unwrap_or_default();
        if let Some(old) = loops.remove(&key) {
            old.task.abort();
        }
        let (config, receiver) = watch::channel(settings);
        let observer = Arc::new(RecordingObserver {
            state: state.clone(),
            inner: observer,
        });
        let task = tokio::spawn(probe_loop(receiver, probe, target(), observer));
        loops.insert(
            key,
            LoopHandle {
                config,
                probe_id: probe_id.to_string(),
                task,
                state,
            },
        );
    }

    /// Stops the loops whose key `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops.retain(|key, handle| {
            let keep = keep(key);
            if !keep {
                handle.task.abort();
            }
            keep
        });
    }

    /// What the loop for `key` last did.
    pub fn state(&self, key: &K) -> Option<WorkerState> {
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .get(key)
            .map(|l| l.state.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Keys of the running loops.
    pub fn keys(&self) -> Vec<K> {
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use cqrs_storage::QueueDepth;

    use super::*;

    struct FakeQueue(Mutex<Vec<u64>>);

    #[async_trait]
    impl QueueProbe for FakeQueue {
        async fn queue_depth(&self, _: &str) -> Result<QueueDepth, cqrs_storage::Error> {
            let mut depths = self.0.lock().unwrap();
            let n = if depths.len() > 1 {
                depths.remove(0)
            } else {
                depths[0]
            };
            Ok(QueueDepth {
                approximate: n,
                visible: Some(n),
            })
        }
    }

    #[derive(Default)]
    struct FakeTarget {
        replicas: Mutex<i32>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl ScaleTarget for FakeTarget {
        async fn current_replicas(&self) -> Result<i32, TargetError> {
            Ok(*self.replicas.lock().unwrap())
        }
        async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError> {
            *self.replicas.lock().unwrap() = replicas;
            self.calls
                .lock()
                .unwrap()
                .push(format!("replicas={replicas}"));
            Ok(())
        }
        async fn set_rate_share(&self, share: Option<f64>) -> Result<(), TargetError> {
            self.calls.lock().unwrap().push(format!("share={share:?}"));
            Ok(())
        }
    }

    struct Ticks(Mutex<Vec<Tick>>);

    impl ScaleObserver for Ticks {
        fn on_tick(&self, tick: &Tick) {
            self.0.lock().unwrap().push(tick.clone());
        }
    }

    fn settings(rate: Option<u32>) -> WorkerScaling {
        WorkerScaling {
            worker: "stocker".into(),
            queue: "inventory".into(),
            scaling: ScalingSpec {
                polling_interval: 1,
                cooldown_period: 0,
                ..ScalingSpec::default()
            },
            max_messages_per_second: rate,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lowers_the_share_before_scaling_up_and_raises_it_after_scaling_down() {
        let target = Arc::new(FakeTarget::default());
        let ticks = Arc::new(Ticks(Mutex::new(vec![])));
        let queue = Arc::new(FakeQueue(Mutex::new(vec![12, 0])));
        let (tx, rx) = watch::channel(settings(Some(90)));
        let task = tokio::spawn(probe_loop(rx, queue, target.clone(), ticks.clone()));
        // Two ticks: up to 3 (5 per replica), then an empty queue with no cooldown: to 0.
        while ticks.0.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(
            *target.calls.lock().unwrap(),
            [
                "share=Some(30.0)",
                "replicas=3",
                "replicas=0",
                "share=Some(90.0)"
            ]
        );
        let ticks = ticks.0.lock().unwrap();
        assert!(ticks[0].scaled() && ticks[1].scaled());
        assert_eq!(ticks[0].rate_share, Some(30.0));
        // What the status reports: the replicas after each tick, not those read before it.
        let around: Vec<_> = ticks
            .iter()
            .map(|t| (t.current, t.replicas_after()))
            .collect();
        assert_eq!(around, [(Some(0), Some(3)), (Some(3), Some(0))]);
    }

    #[tokio::test(start_paused = true)]
    async fn config_changes_apply_without_restarting_the_loop() {
        let target = Arc::new(FakeTarget::default());
        let ticks = Arc::new(Ticks(Mutex::new(vec![])));
        let queue = Arc::new(FakeQueue(Mutex::new(vec![100])));
        let (tx, rx) = watch::channel(settings(None));
        let task = tokio::spawn(probe_loop(rx, queue, target.clone(), ticks.clone()));
        while ticks.0.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut capped = settings(None);
        capped.scaling.max_replicas = 2;
        tx.send(capped).unwrap();
        while *target.replicas.lock().unwrap() != 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(target.calls.lock().unwrap()[0], "share=None");
    }
}
