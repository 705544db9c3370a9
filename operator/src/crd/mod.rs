//! The `CqrsApp` custom resource (`cqrs.dev/v1alpha1`).
//!
//! Every field's `///` comment becomes its description in the CRD (`kubectl explain`).
//! Server-side checks are split the way Kubernetes allows: per-field shape rules (patterns,
//! lengths, ranges) in the OpenAPI schema, cross-field rules as CEL
//! (`x-kubernetes-validations`). The operator applies the same rules in Rust
//! ([`crate::validate`]) to every object it reads.

pub mod reference;
mod roles;
mod status;
mod storage;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use roles::*;
pub use status::*;
pub use storage::*;

/// Pattern shared by queue and container names (Azure's rules: lowercase letters, digits and
/// single dashes, starting and ending with a letter or digit).
pub const AZURE_NAME_PATTERN: &str = "^[a-z0-9]+(-[a-z0-9]+)*$";
/// Pattern of a DNS-1123 label, used for role names.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Most extra environment variables per role (a bound the CRD's CEL rules over `env` need to
/// stay within the apiserver's cost budget).
pub const MAX_ENV_VARS: usize = 128;
/// Longest app name: `<app>-web` must be a valid Service name (63 characters).
pub const MAX_APP_NAME: usize = 59;

/// A command/query application on Azure Storage: its queues and containers, a web role that
/// accepts commands and serves queries, and worker roles that each consume one queue and are
/// autoscaled on its depth.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cqrs.dev",
    version = "v1alpha1",
    kind = "CqrsApp",
    plural = "cqrsapps",
    shortname = "cqrs",
    namespaced,
    status = "CqrsAppStatus",
    derive = "PartialEq",
    doc = "A command/query application on Azure Storage queues and blobs, with autoscaled worker roles.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Queue depth", type_ = "integer", json_path = ".status.totalQueueDepth", description = "Approximate messages in all command queues"),
    printcolumn(name = "Poison", type_ = "integer", json_path = ".status.totalPoisonMessages", description = "Approximate messages in all poison queues"),
    printcolumn(name = "Workers", type_ = "string", json_path = ".status.workersSummary", description = "Worker replicas, current/desired"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 59").message("metadata.name must be at most 59 characters (the web Service is named <name>-web)"),
    validation = Rule::new("!has(self.spec.workers) || self.spec.workers.all(w, size(self.metadata.name) + size(w.name) <= 62)").message("<metadata.name>-<worker name> must be at most 63 characters (it names the worker's Deployment)").field_path(".spec.workers"),
    validation = Rule::new("!has(self.spec.queues) || size(self.spec.queues) == 0 || (has(self.spec.claimCheck) && has(self.spec.claimCheck.container)) || (size(self.metadata.name) <= 56 && !self.metadata.name.contains('--'))").message("the default claim-check container <metadata.name>-claims would not be a valid container name (at most 63 characters, no '--'): set spec.claimCheck.container").field_path(".spec.claimCheck")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.workers) || self.workers.all(w, has(self.queues) && self.queues.exists(q, q.name == w.queue))").message("every workers[].queue must name a queue in queues[]").field_path(".workers"),
    validation = Rule::new("!has(self.workers) || self.workers.all(w, self.workers.exists_one(v, v.queue == w.queue))").message("each queue can be consumed by only one worker role").field_path(".workers"),
    validation = Rule::new("!has(self.queues) || self.queues.all(q, !self.queues.exists(p, p.name + '-poison' == q.name))").message("a queue cannot be named like another queue's poison queue (<name>-poison)").field_path(".queues"),
    validation = Rule::new("!has(self.claimCheck) || !has(self.claimCheck.container) || !has(self.containers) || !self.containers.exists(c, c.name == self.claimCheck.container)").message("claimCheck.container must not be one of containers[]: claim-check blobs are deleted by the workers").field_path(".claimCheck.container")
)]
pub struct CqrsAppSpec {
    /// Where the app's queues and blobs live: exactly one of `connectionSecretRef` (Azurite or a
    /// key-based account) or `azure` (a real account reached with workload identity).
    pub storage: StorageSpec,

    /// What deleting the CqrsApp does to its queues and containers. `Retain` (default) keeps
    /// them and their data; `Delete` deletes the queues, poison queues and containers.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Command queues. Each gets a poison queue `<name>-poison` for messages that failed
    /// `maxDequeueCount` times.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub queues: Vec<QueueSpec>,

    /// Blob containers (result blobs, read models). All are private; browsers read single
    /// blobs through SAS URLs handed out by the web role.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub containers: Vec<ContainerSpec>,

    /// The web role: accepts commands over HTTP, enqueues them, and serves queries. Optional:
    /// an app may consist of workers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebSpec>,

    /// Worker roles: each consumes one queue and is scaled on its depth.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub workers: Vec<WorkerSpec>,

    /// Commands larger than a queue message: a body over `thresholdBytes` is written to a blob
    /// in the claim-check container and a small reference is enqueued instead; the worker
    /// reads it, checks its SHA-256, and deletes it once the command is handled. Every app
    /// with queues gets the container (default `<metadata.name>-claims`), provisioned and
    /// deleted like `containers[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_check: Option<ClaimCheckSpec>,
}

/// Where large commands travel (`spec.claimCheck`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCheckSpec {
    /// The claim-check container: 3-63 lowercase letters, digits and single dashes; not one of
    /// `containers[]`. Default `<metadata.name>-claims`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63), pattern("^[a-z0-9]+(-[a-z0-9]+)*$"))]
    pub container: Option<String>,

    /// Command bodies over this many bytes travel as blobs (1024 to 49152; 48 KiB of text is
    /// 64 KiB once base64-encoded, Azure's message limit).
    #[serde(default = "defaults::claim_threshold")]
    #[schemars(range(min = 1024, max = 49152))]
    pub threshold_bytes: u32,
}

impl CqrsAppSpec {
    /// The claim-check container of app `name`: `claimCheck.container`, else `<name>-claims`;
    /// `None` for an app without queues (nothing to send).
    pub fn claim_container(&self, name: &str) -> Option<String> {
        if self.queues.is_empty() {
            return None;
        }
        Some(
            self.claim_check
                .as_ref()
                .and_then(|c| c.container.clone())
                .unwrap_or_else(|| format!("{name}-claims")),
        )
    }

    /// The claim-check threshold in bytes.
    pub fn claim_threshold(&self) -> u32 {
        self.claim_check
            .as_ref()
            .map_or_else(defaults::claim_threshold, |c| c.threshold_bytes)
    }

    /// The visibility timeout of `worker`'s queue (how long a worker may take over one
    /// message before it is delivered again).
    pub fn visibility_timeout_of(&self, worker: &WorkerSpec) -> u32 {
        self.queues
            .iter()
            .find(|q| q.name == worker.queue)
            .map_or_else(defaults::visibility_timeout, |q| {
                q.visibility_timeout_seconds
            })
    }
}

/// What deleting a CqrsApp does to its storage.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep queues, containers and their data (default).
    #[default]
    Retain,
    /// Delete queues, poison queues and containers with all their data.
    Delete,
}

/// One command queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.messageTtlSeconds == -1 || self.messageTtlSeconds >= 1").message("messageTtlSeconds must be -1 (never expire) or a positive number of seconds").field_path(".messageTtlSeconds"))]
pub struct QueueSpec {
    /// Queue name: 3-56 lowercase letters, digits and single dashes (56, so that
    /// `<name>-poison` fits Azure's 63-character limit).
    #[schemars(length(min = 3, max = 56), pattern("^[a-z0-9]+(-[a-z0-9]+)*$"))]
    pub name: String,

    /// Delivery attempts before a message is moved to `<name>-poison`.
    #[serde(default = "defaults::max_dequeue_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_dequeue_count: u32,

    /// Seconds a received message stays invisible to other consumers before it is delivered
    /// again (workers renew it while they work).
    #[serde(default = "defaults::visibility_timeout")]
    #[schemars(range(min = 1, max = 604800))]
    pub visibility_timeout_seconds: u32,

    /// Seconds a message lives in the queue before Azure discards it; -1 means never.
    #[serde(default = "defaults::message_ttl")]
    #[schemars(range(min = -1))]
    pub message_ttl_seconds: i64,
}

/// One blob container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Container name: 3-63 lowercase letters, digits and single dashes.
    #[schemars(length(min = 3, max = 63), pattern("^[a-z0-9]+(-[a-z0-9]+)*$"))]
    pub name: String,

    /// Let browsers on these origins read blobs of this container directly (with a SAS URL).
    /// Sets a read-only (GET, HEAD) blob-service CORS rule; CORS is account-wide in Azure, so
    /// the rule covers the account's blob service, and rules of other apps are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
}

/// Browser access to blobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// Origins allowed to read, e.g. `https://shop.example.com`, or `*` for any.
    #[schemars(
        length(min = 1, max = 16),
        inner(pattern(r"^(\*|https?://[^/?#\s]+)$"))
    )]
    pub allowed_origins: Vec<String>,

    /// Seconds browsers may cache the preflight answer.
    #[serde(default = "defaults::cors_max_age")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_age_seconds: u32,
}

/// Default values, shared by serde and the documentation.
pub mod defaults {
    /// `queues[].maxDequeueCount`.
    pub fn max_dequeue_count() -> u32 {
        5
    }
    /// `queues[].visibilityTimeoutSeconds`.
    pub fn visibility_timeout() -> u32 {
        30
    }
    /// `queues[].messageTtlSeconds`: 7 days, Azure's default.
    pub fn message_ttl() -> i64 {
        604_800
    }
    /// `claimCheck.thresholdBytes`: 48 KiB.
    pub fn claim_threshold() -> u32 {
        cqrs_storage::claims::DEFAULT_THRESHOLD_BYTES
    }
    /// `containers[].cors.maxAgeSeconds`.
    pub fn cors_max_age() -> u32 {
        3600
    }
}
