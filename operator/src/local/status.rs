//! The local runtime's HTTP endpoints: `/status` (shaped like a CqrsApp's `status`, plus the
//! processes), `/metrics` and `/healthz`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::Running;
use super::process::ReplicaInfo;
use crate::crd::{CqrsAppStatus, QueueStatus, WorkerStatus, condition};
use crate::k8s::status::{Check, conditions, ready};
use crate::plan::format_rate_share;
use crate::scaler::Observation;

/// `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalStatus {
    /// The app.
    pub app: String,
    /// What a CqrsApp's status would say.
    #[serde(flatten)]
    pub status: CqrsAppStatus,
    /// Every role process.
    pub processes: Vec<ReplicaInfo>,
}

fn to_time(at: SystemTime) -> Time {
    Time(Timestamp::try_from(at).unwrap_or_else(|_| Timestamp::now()))
}

async fn build(running: &Running) -> LocalStatus {
    let spec = &running.app.spec;
    let mut processes = Vec::new();
    let mut workers = Vec::new();
    let mut problems = Vec::new();
    let mut depths = std::collections::BTreeMap::new();
    for (name, roles) in &running.workers {
        let state = running.scalers.state(name).unwrap_or_default();
        let current = i32::try_from(roles.count().await).unwrap_or(i32::MAX);
        if let Some(tick) = &state.last_tick {
            if let Observation::Unreadable(why) = &tick.observation {
                problems.push(format!(
                    "{name}: queue {} cannot be read ({why}); holding replicas",
                    tick.queue
                ));
            }
            if let Observation::Depth(depth) = &tick.observation {
                depths.insert(tick.queue.clone(), (*depth, tick.at));
            }
        }
        workers.push(WorkerStatus {
            name: name.clone(),
            current_replicas: current,
            desired_replicas: state.desired.unwrap_or(current),
            last_scale_time: state.last_scale.as_ref().map(|(at, _)| to_time(*at)),
            last_scale_reason: state.last_scale.map(|(_, reason)| reason),
            rate_share_per_replica: state
                .last_tick
                .and_then(|t| t.rate_share)
                .map(|s| format_rate_share(Some(s))),
        });
        processes.extend(roles.infos().await);
    }
    let mut queues = Vec::new();
    for queue in &spec.queues {
        let mut status = QueueStatus {
            name: queue.name.clone(),
            ..Default::default()
        };
        let observed = match depths.get(&queue.name) {
            Some((depth, at)) => Ok((*depth, *at)),
            None => running
                .account
                .queue_depth(&queue.name)
                .await
                .map(|d| (d, SystemTime::now())),
        };
        match observed {
            Ok((depth, at)) => {
                status.approximate_message_count = i64::try_from(depth.approximate).ok();
                status.visible_message_count = depth.visible.and_then(|v| i64::try_from(v).ok());
                status.last_probe_time = Some(to_time(at));
            }
            Err(e) => status.probe_error = Some(e.to_string()),
        }
        queues.push(status);
    }
    let web_check = match &running.web {
        None => Check::ok(condition::WEB_READY, "NoWebRole", "the app has no web role"),
        Some((web, port)) => {
            let infos = web.infos().await;
            let up = infos.iter().any(|i| i.pid.is_some());
            processes.extend(infos);
            if up {
                Check::ok(
                    condition::WEB_READY,
                    "Running",
                    format!("web role running on port {port}"),
                )
            } else {
                Check::failed(
                    condition::WEB_READY,
                    "NotRunning",
                    "the web process is (re)starting",
                )
            }
        }
    };
    let mut checks = vec![
        Check::ok(
            condition::STORAGE_READY,
            "Provisioned",
            "queues, poison queues and containers exist",
        ),
        web_check,
        if problems.is_empty() {
            Check::ok(
                condition::WORKERS_READY,
                "Scaling",
                format!(
                    "{} worker role(s) scaling on their queues",
                    spec.workers.len()
                ),
            )
        } else {
            Check::failed(condition::WORKERS_READY, "ScalingHeld", problems.join("; "))
        },
    ];
    checks.insert(0, ready(&checks));
    let total = queues
        .iter()
        .filter_map(|q| q.approximate_message_count)
        .sum::<i64>();
    let (current, desired) = workers.iter().fold((0, 0), |(c, d), w| {
        (c + w.current_replicas, d + w.desired_replicas)
    });
    LocalStatus {
        app: running.app.metadata.name.clone().unwrap_or_default(),
        status: CqrsAppStatus {
            observed_generation: None,
            conditions: conditions(&[], &checks, None, Timestamp::now()),
            queues,
            workers,
            web_endpoint: running
                .web
                .as_ref()
                .map(|(_, port)| format!("http://127.0.0.1:{port}")),
            total_queue_depth: Some(total),
            workers_summary: Some(format!("{current}/{desired}")),
        },
        processes,
    }
}

async fn status(State(running): State<Arc<Running>>) -> Json<LocalStatus> {
    Json(build(&running).await)
}

async fn metrics(State(running): State<Arc<Running>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        running.metrics.encode(),
    )
}

/// Serves until the task is aborted.
pub(super) async fn serve(listener: tokio::net::TcpListener, running: Arc<Running>) {
    let router = axum::Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(running);
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("[runtime] status server stopped: {e}");
    }
}
