//! Scale reaction: the real probe loop and scaler on an Azurite queue, with a recording scale
//! target; and the storage calls the probing costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use cqrs_operator::autoscale::{
    ScaleObserver, ScaleTarget, TargetError, Tick, WorkerScaling, probe_loop,
};
use cqrs_operator::crd::ScalingSpec;
use cqrs_storage::{QueueDepth, QueueProbe, StorageAccount};

use crate::common::{Bench, Row, enqueue, median, wait_for};

struct Recording {
    replicas: Mutex<i32>,
    changes: Mutex<Vec<(Instant, i32)>>,
}

impl Recording {
    /// When the replicas were first set to a count for which `pick` holds; waits up to `limit`.
    async fn first_change(
        &self,
        what: &str,
        limit: Duration,
        pick: impl Fn(i32) -> bool,
    ) -> Result<Instant> {
        wait_for(what, limit, || async {
            self.changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(_, r)| pick(*r))
                .map(|(t, _)| *t)
        })
        .await
    }
}

#[async_trait]
impl ScaleTarget for Recording {
    async fn current_replicas(&self) -> Result<i32, TargetError> {
        Ok(*self.replicas.lock().unwrap_or_else(|p| p.into_inner()))
    }
    async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError> {
        *self.replicas.lock().unwrap_or_else(|p| p.into_inner()) = replicas;
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), replicas));
        Ok(())
    }
    async fn set_rate_share(&self, _: Option<f64>) -> Result<(), TargetError> {
        Ok(())
    }
}

/// Counts the storage calls behind each probe: the metadata call, plus the peek when 1 to 32
/// messages are there.
struct Counting {
    inner: StorageAccount,
    calls: AtomicU64,
}

#[async_trait]
impl QueueProbe for Counting {
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth, cqrs_storage::Error> {
        let depth = self.inner.queue_depth(queue).await?;
        let calls = if (1..=32).contains(&depth.approximate) {
            2
        } else {
            1
        };
        self.calls.fetch_add(calls, Ordering::Relaxed);
        Ok(depth)
    }
}

struct Quiet;
impl ScaleObserver for Quiet {
    fn on_tick(&self, _: &Tick) {}
}

async fn send(account: &StorageAccount, queue: &str, n: usize) -> Result<()> {
    let client = account.queue(queue)?;
    let sends = (0..n).map(|i| enqueue(&client, format!("m{i}")));
    futures::future::join_all(sends).await.into_iter().collect()
}

fn start(
    account: &StorageAccount,
    queue: &str,
    spec: &ScalingSpec,
    replicas: i32,
) -> (
    Arc<Recording>,
    Arc<Counting>,
    tokio::sync::watch::Sender<WorkerScaling>,
    tokio::task::JoinHandle<()>,
) {
    let target = Arc::new(Recording {
        replicas: Mutex::new(replicas),
        changes: Mutex::default(),
    });
    let probe = Arc::new(Counting {
        inner: account.clone(),
        calls: AtomicU64::new(0),
    });
    let settings = WorkerScaling {
        worker: "w".into(),
        queue: queue.into(),
        scaling: spec.clone(),
        max_messages_per_second: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(settings);
    let task = tokio::spawn(probe_loop(
        rx,
        probe.clone(),
        target.clone(),
        Arc::new(Quiet),
    ));
    (target, probe, tx, task)
}

/// Seconds from 100 messages appearing to the first scale-up decision.
async fn up_trial(account: StorageAccount, spec: ScalingSpec) -> Result<f64> {
    let queue = cqrs_storage::azurite::unique_name("up");
    account.ensure_queue(&queue).await?;
    let (target, _, config, task) = start(&account, &queue, &spec, 0);
    // A random phase relative to the probe ticks, as a real backlog would have.
    let phase =
        f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0 * f64::from(spec.polling_interval);
    tokio::time::sleep(Duration::from_secs_f64(phase + 0.2)).await;
    let t0 = Instant::now();
    send(&account, &queue, 100).await?;
    let at = target
        .first_change("a scale-up decision", Duration::from_secs(120), |r| r > 0)
        .await?;
    drop(config);
    let _ = task.await;
    Ok(at.duration_since(t0).as_secs_f64())
}

/// Seconds from the queue emptying to the first scale-down decision, and storage calls per
/// minute of probing meanwhile.
async fn down_trial(account: StorageAccount, spec: ScalingSpec) -> Result<(f64, f64)> {
    let queue = cqrs_storage::azurite::unique_name("down");
    account.ensure_queue(&queue).await?;
    send(&account, &queue, 100).await?;
    let replicas = spec.max_replicas;
    let (target, probe, config, task) = start(&account, &queue, &spec, replicas);
    // Steady at maxReplicas with a backlog for two intervals, then the queue empties.
    tokio::time::sleep(Duration::from_secs(
        u64::from(spec.polling_interval) * 2 + 1,
    ))
    .await;
    let calls_before = probe.calls.load(Ordering::Relaxed);
    let t0 = Instant::now();
    account.queue(&queue)?.clear(None).await?;
    let at = target
        .first_change("a scale-down decision", Duration::from_secs(600), |r| {
            r < replicas
        })
        .await?;
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let calls = (probe.calls.load(Ordering::Relaxed) - calls_before) as f64 / minutes;
    drop(config);
    let _ = task.await;
    Ok((at.duration_since(t0).as_secs_f64(), calls))
}

/// Scale reaction rows, with the default spec and with a 1 s polling interval. Trials run
/// concurrently (each on its own queue) since they mostly wait.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let default = ScalingSpec::default();
    let fast = ScalingSpec {
        polling_interval: 1,
        ..ScalingSpec::default()
    };
    let trials = if bench.quick { 1 } else { 5 };
    let mut rows = Vec::new();
    for (label, spec) in [("default (5 s polling)", default), ("1 s polling", fast)] {
        let ups = (0..trials).map(|_| up_trial(bench.account.clone(), spec.clone()));
        let downs = (0..trials.min(3)).map(|_| down_trial(bench.account.clone(), spec.clone()));
        let (ups, downs) = tokio::join!(
            futures::future::join_all(ups),
            futures::future::join_all(downs)
        );
        let up = median(ups.into_iter().collect::<Result<Vec<_>>>()?);
        let downs = downs.into_iter().collect::<Result<Vec<_>>>()?;
        let down = median(downs.iter().map(|(d, _)| *d).collect());
        let calls = median(downs.iter().map(|(_, c)| *c).collect());
        let interval = f64::from(spec.polling_interval);
        let window = f64::from(spec.down().stabilization_window_seconds);
        rows.push(Row::new(
            &format!("Scale-up reaction, {label}: backlog → first scale-up"),
            format!("{up:.1} s"),
            format!("{interval:.0} s polling interval"),
            format!("{:.2}× interval", up / interval),
            "≤ 1 interval",
            Some(up <= interval + 0.5),
        ));
        rows.push(Row::new(
            &format!("Scale-down reaction, {label}: queue empty → first scale-down"),
            format!("{down:.1} s"),
            format!("{window:.0} s scale-down stabilization window"),
            format!("{:.2}× window", down / window),
            // NB: the window counts from the last probe that saw the backlog, up to one
            // interval before the queue emptied, so a decision may come that much early.
            "window ± 1 interval",
            Some((down - window).abs() <= interval + 1.0),
        ));
        rows.push(Row::new(
            &format!("Probe cost, {label}, per worker role"),
            format!("{calls:.0} storage calls/min"),
            format!("{:.0} probes/min", 60.0 / interval),
            format!("{:.2} calls/probe", calls / (60.0 / interval)),
            "",
            None,
        ));
    }
    Ok(rows)
}
