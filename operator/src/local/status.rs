//! The local runtime's HTTP endpoints: `/status` (shaped like a CqrsApp's `status`, plus the
//! processes), `/metrics` and `/healthz`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::Running;
use super::process::ReplicaInfo;
use crate::crd::{CqrsAppStatus, condition};
use crate::status::{self, Check, conditions, ready};

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

async fn build(running: &Running) -> LocalStatus {
    let spec = &running.app.spec;
    let mut processes = Vec::new();
    let mut views = Vec::new();
    for (name, roles) in &running.workers {
        let queue = spec
            .workers
            .iter()
            .find(|w| &w.name == name)
            .map(|w| w.queue.clone())
            .unwrap_or_default();
        views.push(status::WorkerView {
            name: name.clone(),
            queue,
            state: running.scalers.state(name).unwrap_or_default(),
            running: Some(i32::try_from(roles.count().await).unwrap_or(i32::MAX)),
        });
        processes.extend(roles.infos().await);
    }
    let workers = status::workers(views);
    let queues = status::queues(&spec.queues, &workers.depths, &running.account).await;
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
        status::workers_check(&workers.problems, spec.workers.len()),
    ];
    checks.insert(0, ready(&checks));
    LocalStatus {
        app: running.app.metadata.name.clone().unwrap_or_default(),
        status: status::assemble(
            conditions(&[], &checks, None, Timestamp::now()),
            queues,
            workers.status,
            running
                .web
                .as_ref()
                .map(|(_, port)| format!("http://127.0.0.1:{port}")),
            None,
        ),
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
