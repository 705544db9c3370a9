//! Prometheus metrics of the operator and of the local runtime, and the small HTTP server
//! that serves them with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::autoscale::Tick;
use crate::scaler::{Direction, Observation};

/// `cqrs_storage_requests_total`: every request this process sent to Azure Storage, counted
/// by the storage layer's HTTP pipeline.
#[derive(Debug)]
struct StorageRequests;

impl Collector for StorageRequests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(cqrs_storage::account::requests_sent());
        let metric = encoder.encode_descriptor(
            "storage_requests",
            "Requests sent to Azure Storage (queues and blobs; every attempt)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Labels of per-app metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// Namespace (`local` for the local runtime).
    pub namespace: String,
    /// App name.
    pub app: String,
}

/// Labels of per-queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Namespace.
    pub namespace: String,
    /// App name.
    pub app: String,
    /// Queue name.
    pub queue: String,
}

/// Labels of per-worker metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// Namespace.
    pub namespace: String,
    /// App name.
    pub app: String,
    /// Worker role.
    pub worker: String,
}

/// Labels of scaling decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Namespace.
    pub namespace: String,
    /// App name.
    pub app: String,
    /// Worker role.
    pub worker: String,
    /// `up` or `down`.
    pub direction: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed (`InvalidSpec`, `Storage`, `Kubernetes`, ...).
    pub reason: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciliations started.
    pub reconciliations: Counter,
    /// Status writes (patches that changed what is stored).
    pub status_writes: Counter,
    /// Storage provisioning passes (ensure queues, containers, CORS).
    pub provisionings: Counter,
    /// Reconciliations that failed, by reason.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// How long reconciliations took.
    pub reconcile_duration: Histogram,
    /// Approximate depth of each command queue at its last probe.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Approximate messages in each poison queue, at the last resync (`cqrs_poison_queue_depth`).
    pub poison_queue_depth: Family<QueueLabels, Gauge>,
    /// Failed queue probes.
    pub probe_errors: Family<QueueLabels, Counter>,
    /// How long queue probes took.
    pub probe_duration: Histogram,
    /// How much later than its polling interval each probe came after the loop's previous one.
    pub probe_lateness: Histogram,
    /// Replicas the scaler asked for.
    pub desired_replicas: Family<WorkerLabels, Gauge>,
    /// Replicas observed before the last decision.
    pub current_replicas: Family<WorkerLabels, Gauge>,
    /// Scaling changes made.
    pub scaling_decisions: Family<DecisionLabels, Counter>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `cqrs` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cqrs");
        let reconciliations = Counter::default();
        let status_writes = Counter::default();
        let provisionings = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let poison_queue_depth = Family::<QueueLabels, Gauge>::default();
        let probe_errors = Family::<QueueLabels, Counter>::default();
        let probe_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let probe_lateness = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let desired_replicas = Family::<WorkerLabels, Gauge>::default();
        let current_replicas = Family::<WorkerLabels, Gauge>::default();
        let scaling_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "CqrsApp reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "status_writes",
            "CqrsApp status patches sent (unchanged statuses are not written)",
            status_writes.clone(),
        );
        registry.register(
            "provisionings",
            "Storage provisioning passes (on a spec or Secret change, or the provisioning resync)",
            provisionings.clone(),
        );
        registry.register_collector(Box::new(StorageRequests));
        registry.register(
            "kube_requests",
            "Requests sent to the Kubernetes API server, by verb and resource (as the API server's apiserver_request_total names them)",
            crate::k8s::requests::requests(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Approximate messages (visible and in flight) at the last probe",
            queue_depth.clone(),
        );
        registry.register(
            "poison_queue_depth",
            "Approximate messages in the queue's poison queue at the last resync",
            poison_queue_depth.clone(),
        );
        registry.register(
            "queue_probe_errors",
            "Queue probes that failed",
            probe_errors.clone(),
        );
        registry.register(
            "queue_probe_duration_seconds",
            "Duration of queue probes",
            probe_duration.clone(),
        );
        registry.register(
            "queue_probe_lateness_seconds",
            "How much longer than pollingInterval passed between a loop's probe and its previous one",
            probe_lateness.clone(),
        );
        registry.register(
            "worker_desired_replicas",
            "Replicas the scaler asked for",
            desired_replicas.clone(),
        );
        registry.register(
            "worker_current_replicas",
            "Replicas before the last scaling decision",
            current_replicas.clone(),
        );
        registry.register(
            "scaling_decisions",
            "Replica changes made by the scaler",
            scaling_decisions.clone(),
        );
        Self {
            registry,
            reconciliations,
            status_writes,
            provisionings,
            reconcile_errors,
            reconcile_duration,
            queue_depth,
            poison_queue_depth,
            probe_errors,
            probe_duration,
            probe_lateness,
            desired_replicas,
            current_replicas,
            scaling_decisions,
            ready: AtomicBool::new(false),
        }
    }

    /// Records one probe-loop tick of `app` in `namespace`.
    pub fn record_tick(&self, namespace: &str, app: &str, tick: &Tick) {
        let queue = QueueLabels {
            namespace: namespace.into(),
            app: app.into(),
            queue: tick.queue.clone(),
        };
        self.probe_duration
            .observe(tick.probe_duration.as_secs_f64());
        if let Some(late) = tick.late {
            self.probe_lateness.observe(late.as_secs_f64());
        }
        match &tick.observation {
            Observation::Depth(depth) => {
                self.queue_depth
                    .get_or_create(&queue)
                    .set(i64::try_from(depth.approximate).unwrap_or(i64::MAX));
            }
            Observation::Unreadable(_) => {
                self.probe_errors.get_or_create(&queue).inc();
            }
        }
        let worker = WorkerLabels {
            namespace: namespace.into(),
            app: app.into(),
            worker: tick.worker.clone(),
        };
        if let Some(current) = tick.replicas_after() {
            self.current_replicas
                .get_or_create(&worker)
                .set(i64::from(current));
        }
        if let Some(decision) = &tick.decision {
            self.desired_replicas
                .get_or_create(&worker)
                .set(i64::from(decision.desired));
            if tick.scaled() {
                let direction = if decision.direction == Direction::Up {
                    "up"
                } else {
                    "down"
                };
                self.scaling_decisions
                    .get_or_create(&DecisionLabels {
                        namespace: namespace.into(),
                        app: app.into(),
                        worker: tick.worker.clone(),
                        direction: direction.into(),
                    })
                    .inc();
            }
        }
    }

    /// Records the poison-queue count of each `(queue, count)` of `app` (`None`: unknown).
    pub fn record_poison<'a>(
        &self,
        namespace: &str,
        app: &str,
        counts: impl IntoIterator<Item = (&'a str, Option<i64>)>,
    ) {
        for (queue, count) in counts {
            let labels = QueueLabels {
                namespace: namespace.into(),
                app: app.into(),
                queue: queue.into(),
            };
            match count {
                Some(count) => {
                    self.poison_queue_depth.get_or_create(&labels).set(count);
                }
                None => {
                    self.poison_queue_depth.remove(&labels);
                }
            }
        }
    }

    /// Drops the series of an app's queues and workers (the app is gone, or they are).
    pub fn forget(&self, namespace: &str, app: &str, queues: &[String], workers: &[String]) {
        for queue in queues {
            let labels = QueueLabels {
                namespace: namespace.into(),
                app: app.into(),
                queue: queue.clone(),
            };
            self.queue_depth.remove(&labels);
            self.poison_queue_depth.remove(&labels);
            self.probe_errors.remove(&labels);
        }
        for worker in workers {
            let labels = WorkerLabels {
                namespace: namespace.into(),
                app: app.into(),
                worker: worker.clone(),
            };
            self.desired_replicas.remove(&labels);
            self.current_replicas.remove(&labels);
            for direction in ["up", "down"] {
                self.scaling_decisions.remove(&DecisionLabels {
                    namespace: namespace.into(),
                    app: app.into(),
                    worker: worker.clone(),
                    direction: direction.into(),
                });
            }
        }
    }

    /// Marks the process ready (`/readyz` answers 200).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A timer that records into a histogram when dropped.
#[derive(Debug)]
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: std::time::Instant,
}

impl<'a> Timer<'a> {
    /// Starts timing.
    pub fn start(histogram: &'a Histogram) -> Self {
        Self {
            histogram,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The routes `/metrics`, `/healthz` and `/readyz` (merged into other routers by callers
/// that serve more, such as the local runtime's `/status`).
pub fn routes(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` now (so a port clash is reported at start-up) and serves in the background.
pub async fn spawn_server(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, task))
}

/// How long to wait for in-flight HTTP requests on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaler::Decision;
    use cqrs_storage::QueueDepth;

    #[test]
    fn ticks_become_queue_and_replica_series() {
        let m = Metrics::new();
        let tick = Tick {
            worker: "registrar".into(),
            queue: "registrations".into(),
            at: std::time::SystemTime::now(),
            observation: Observation::Depth(QueueDepth {
                approximate: 42,
                visible: None,
            }),
            current: Some(1),
            decision: Some(Decision {
                desired: 3,
                direction: Direction::Up,
                reason: "r".into(),
            }),
            rate_share: None,
            error: None,
            probe_duration: Duration::from_millis(3),
            late: Some(Duration::from_millis(20)),
        };
        m.record_tick("shop", "pieshop", &tick);
        m.reconciliations.inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"cqrs_queue_depth{namespace="shop",app="pieshop",queue="registrations"} 42"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"cqrs_worker_desired_replicas{namespace="shop",app="pieshop",worker="registrar"} 3"#), "{text}");
        assert!(text.contains(r#"cqrs_scaling_decisions_total{namespace="shop",app="pieshop",worker="registrar",direction="up"} 1"#), "{text}");
        assert!(text.contains("cqrs_reconciliations_total 1"), "{text}");
        m.forget(
            "shop",
            "pieshop",
            &["registrations".into()],
            &["registrar".into()],
        );
        assert!(!m.encode().contains("pieshop"));
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = spawn_server("127.0.0.1:0".parse().unwrap(), routes(metrics.clone()))
            .await
            .unwrap();
        let base = format!("http://{addr}");
        let get = |path: &str| reqwest::get(format!("{base}{path}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        metrics.set_ready(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            body.contains("# TYPE cqrs_reconciliations counter"),
            "{body}"
        );
        task.abort();
    }
}
