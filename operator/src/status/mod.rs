//! The status of an app, assembled the same way by both drivers (the controller and the local
//! runtime) from what the probe loops saw: conditions, worker and queue status, totals. No
//! Kubernetes client and no HTTP here; each driver adds only what is its own (the web check: a
//! Deployment's availability or a child process's health).

mod conditions;

use std::collections::BTreeMap;
use std::time::SystemTime;

use cqrs_storage::{QueueDepth, QueueProbe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub use conditions::{Check, conditions, find, ready};

use crate::autoscale::{Tick, WorkerState};
use crate::crd::{CqrsAppStatus, QueueSpec, QueueStatus, WorkerStatus, condition};
use crate::plan::format_rate_share;
use crate::scaler::Observation;

/// A time for the status.
pub fn to_time(at: SystemTime) -> Time {
    Time(Timestamp::try_from(at).unwrap_or_else(|_| Timestamp::now()))
}

/// One worker role as its driver sees it.
#[derive(Debug)]
pub struct WorkerView {
    /// The role's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Its probe loop's state.
    pub state: WorkerState,
    /// Replicas running now when the driver counts them itself (the local runtime's
    /// processes); otherwise the last tick's.
    pub running: Option<i32>,
}

/// What the probe loops' state says about the worker roles.
#[derive(Debug, Default)]
pub struct Workers {
    /// Each role's replicas and last scaling change.
    pub status: Vec<WorkerStatus>,
    /// Why scaling is held, per role.
    pub problems: Vec<String>,
    /// The depth each tick saw, by queue, and when.
    pub depths: BTreeMap<String, (QueueDepth, SystemTime)>,
}

/// The workers' status, problems and seen depths.
pub fn workers(views: Vec<WorkerView>) -> Workers {
    let mut out = Workers::default();
    for view in views {
        let tick = view.state.last_tick.as_ref();
        if let Some(tick) = tick {
            match (&tick.observation, &tick.error) {
                (Observation::Unreadable(why), _) => out.problems.push(format!(
                    "{}: queue {} cannot be read ({why}); holding replicas",
                    view.name, view.queue
                )),
                (_, Some(e)) => out.problems.push(format!("{}: {e}", view.name)),
                _ => {}
            }
            if let Observation::Depth(depth) = &tick.observation {
                out.depths.insert(view.queue.clone(), (*depth, tick.at));
            }
        }
        let current = view
            .running
            .or_else(|| tick.and_then(Tick::replicas_after))
            .unwrap_or(0);
        out.status.push(WorkerStatus {
            name: view.name,
            current_replicas: current,
            desired_replicas: view.state.desired.unwrap_or(current),
            last_scale_time: view.state.last_scale.as_ref().map(|(at, _)| to_time(*at)),
            last_scale_reason: view.state.last_scale.as_ref().map(|(_, r)| r.clone()),
            rate_share_per_replica: tick
                .and_then(|t| t.rate_share)
                .map(|s| format_rate_share(Some(s))),
        });
    }
    out
}

/// Each queue's status: the depth a probe loop saw, else probed now through `probe`.
pub async fn queues(
    spec: &[QueueSpec],
    seen: &BTreeMap<String, (QueueDepth, SystemTime)>,
    probe: &dyn QueueProbe,
) -> Vec<QueueStatus> {
    // NB: every queue and poison queue is read at once: a reconcile waits for one storage
    // round trip, not one per queue.
    futures::future::join_all(spec.iter().map(|queue| async move {
        let mut status = QueueStatus {
            name: queue.name.clone(),
            ..Default::default()
        };
        let poison = cqrs_storage::queues::poison_queue_name(&queue.name);
        let ((depth, at), poisoned) = futures::future::join(
            async {
                match seen.get(&queue.name) {
                    Some((depth, at)) => (Ok(*depth), *at),
                    None => (probe.queue_depth(&queue.name).await, SystemTime::now()),
                }
            },
            probe.queue_depth(&poison),
        )
        .await;
        match depth {
            Ok(depth) => {
                status.approximate_message_count = i64::try_from(depth.approximate).ok();
                status.visible_message_count = depth.visible.and_then(|v| i64::try_from(v).ok());
            }
            Err(e) => status.probe_error = Some(e.to_string()),
        }
        // NB: a missing or unreadable poison queue is reported as unknown, nothing more.
        status.poison_message_count = match poisoned {
            Ok(depth) => i64::try_from(depth.approximate).ok(),
            Err(e) => {
                tracing::debug!(queue = %poison, "cannot count the poison queue: {e}");
                None
            }
        };
        status.last_probe_time = Some(to_time(at));
        status
    }))
    .await
}

/// `WorkersReady`: scaling, or held with the problems.
pub fn workers_check(problems: &[String], roles: usize) -> Check {
    if problems.is_empty() {
        Check::ok(
            condition::WORKERS_READY,
            "Scaling",
            format!("{roles} worker role(s) deployed and scaling on their queues"),
        )
    } else {
        Check::failed(condition::WORKERS_READY, "ScalingHeld", problems.join("; "))
    }
}

/// The status with its totals (`totalQueueDepth`, `totalPoisonMessages`, `workersSummary` as
/// `current/desired`).
pub fn assemble(
    conditions: Vec<Condition>,
    queues: Vec<QueueStatus>,
    workers: Vec<WorkerStatus>,
    web_endpoint: Option<String>,
    observed_generation: Option<i64>,
) -> CqrsAppStatus {
    let total = queues
        .iter()
        .filter_map(|q| q.approximate_message_count)
        .sum::<i64>();
    let poisoned = queues
        .iter()
        .filter_map(|q| q.poison_message_count)
        .sum::<i64>();
    let (current, desired) = workers.iter().fold((0, 0), |(c, d), w| {
        (c + w.current_replicas, d + w.desired_replicas)
    });
    CqrsAppStatus {
        observed_generation,
        conditions,
        queues,
        workers,
        web_endpoint,
        total_queue_depth: Some(total),
        total_poison_messages: Some(poisoned),
        workers_summary: Some(format!("{current}/{desired}")),
    }
}
