//! `status`: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

/// Condition types the operator sets.
pub mod condition {
    /// Everything below is true.
    pub const READY: &str = "Ready";
    /// Queues, poison queues, containers and CORS exist as specified.
    pub const STORAGE_READY: &str = "StorageReady";
    /// The web Deployment has its replicas available.
    pub const WEB_READY: &str = "WebReady";
    /// Every worker Deployment exists and its queue can be probed.
    pub const WORKERS_READY: &str = "WorkersReady";
}

/// Observed state of a CqrsApp.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CqrsAppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `StorageReady`, `WebReady` and `WorkersReady`, each with a reason and message.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Last probe of each command queue.
    #[serde(default)]
    pub queues: Vec<QueueStatus>,
    /// Replicas of each worker role.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// Where the web role is reachable inside the cluster (`http://<service>.<namespace>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_endpoint: Option<String>,
    /// Sum of the approximate depths of all command queues (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_queue_depth: Option<i64>,
    /// Sum of the approximate counts of all poison queues (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_poison_messages: Option<i64>,
    /// Worker replicas over all roles as `current/desired` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_summary: Option<String>,
}

/// Last probe of one queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Approximate messages, visible and in flight, at the last probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_message_count: Option<i64>,
    /// Exact visible messages at the last probe, when the queue was small enough to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_message_count: Option<i64>,
    /// When the queue was last probed with the counts shown. A status in which nothing but
    /// this changed is written at most every 10 minutes, so on an idle app it lags by up to
    /// that (the counts themselves are written when they change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Approximate messages in its poison queue (`<name>-poison`): commands that failed
    /// `maxDequeueCount` times or could not be decoded. Read on the resync cadence, never on
    /// the scaling path; absent when it could not be read. `cqrs-operator poison list|redrive`
    /// shows and recovers them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison_message_count: Option<i64>,
    /// Why the last probe failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
}

/// Replicas of one worker role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Worker role name.
    pub name: String,
    /// Replicas running now.
    pub current_replicas: i32,
    /// Replicas the scaler wants.
    pub desired_replicas: i32,
    /// When the scaler last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Messages per second each replica may process (its share of `maxMessagesPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_share_per_replica: Option<String>,
}
