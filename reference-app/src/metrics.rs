//! Prometheus metrics of the reference app (`/metrics` on both roles).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: the queue a metric is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Queue name.
    pub queue: String,
}

/// Labels: an HTTP route and its status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route (`/api/registrations`).
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Every metric of the app.
#[derive(Debug)]
pub struct AppMetrics {
    registry: Registry,
    /// Messages handled and deleted.
    pub processed: Family<QueueLabel, Counter>,
    /// Messages left for redelivery after a failure.
    pub failed: Family<QueueLabel, Counter>,
    /// Messages moved to the poison queue.
    pub poisoned: Family<QueueLabel, Counter>,
    /// Receive calls that failed (storage unreachable).
    pub receive_errors: Family<QueueLabel, Counter>,
    /// Time from receive to delete.
    pub handling_seconds: Histogram,
    /// Time from enqueue to delete.
    pub age_seconds: Histogram,
    /// HTTP responses by route and status.
    pub responses: Family<RouteLabels, Counter>,
    /// Commands waiting on storage in the web role (set when scraped).
    pub commands_in_flight: Gauge,
    /// Commands refused at once because too many were waiting on storage.
    pub commands_shed: Counter,
    /// Inventory read-model partitions written.
    pub readmodel_writes: Counter,
    /// Partition writes that lost an ETag race to another writer and were re-applied.
    pub readmodel_conflicts: Counter,
}

impl Default for AppMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pieshop");
        let m = Self {
            processed: Family::default(),
            failed: Family::default(),
            poisoned: Family::default(),
            receive_errors: Family::default(),
            handling_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            age_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            responses: Family::default(),
            commands_in_flight: Gauge::default(),
            commands_shed: Counter::default(),
            readmodel_writes: Counter::default(),
            readmodel_conflicts: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_processed",
            "Messages handled and deleted",
            m.processed.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages left for redelivery after a failure",
            m.failed.clone(),
        );
        registry.register(
            "messages_poisoned",
            "Messages moved to the poison queue",
            m.poisoned.clone(),
        );
        registry.register(
            "receive_errors",
            "Failed receive calls",
            m.receive_errors.clone(),
        );
        registry.register(
            "message_handling_seconds",
            "Time from receive to delete",
            m.handling_seconds.clone(),
        );
        registry.register(
            "message_age_seconds",
            "Time from enqueue to delete",
            m.age_seconds.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by route and status",
            m.responses.clone(),
        );
        registry.register(
            "commands_in_flight",
            "Commands waiting on storage in the web role",
            m.commands_in_flight.clone(),
        );
        registry.register(
            "commands_shed",
            "Commands answered 503 at once because WEB_MAX_IN_FLIGHT were waiting on storage",
            m.commands_shed.clone(),
        );
        registry.register(
            "readmodel_writes",
            "Inventory read-model partitions written",
            m.readmodel_writes.clone(),
        );
        registry.register(
            "readmodel_conflicts",
            "Read-model partition writes that lost an ETag race and were re-applied",
            m.readmodel_conflicts.clone(),
        );
        Self { registry, ..m }
    }
}

impl AppMetrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The label for `queue`.
    pub fn queue(queue: &str) -> QueueLabel {
        QueueLabel {
            queue: queue.into(),
        }
    }
}
