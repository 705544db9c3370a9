//! Invalid CqrsApps: one table that drives the Rust validation tests, the client-side CEL
//! tests and the server-side parity test against a real apiserver (`tests/cluster`), so the
//! three cannot drift.

#![allow(clippy::unwrap_used)] // fixtures: the baseline app has a web role

use k8s_openapi::api::core::v1::EnvVar;

use super::{app, worker};
use crate::crd::*;

/// Turns the valid baseline app into an invalid one.
pub type Mutation = fn(&mut CqrsApp);

/// One way to break the baseline app.
#[derive(Debug, Clone, Copy)]
pub struct InvalidCase {
    /// What is wrong, in words.
    pub what: &'static str,
    /// Applied to [`app()`].
    pub mutate: Mutation,
    /// The field the Rust validation names (`spec.queues[0].name`).
    pub field: &'static str,
}

impl InvalidCase {
    /// The baseline app with this case applied.
    pub fn app(&self) -> CqrsApp {
        let mut a = app();
        (self.mutate)(&mut a);
        a
    }
}

/// Cross-field rules: the CEL rules in the CRD and the Rust validation both reject them
/// (what, mutation, field).
pub fn cross_field() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        (
            "both storage kinds",
            |a| {
                a.spec.storage.azure = Some(AzureStorageSpec {
                    subscription_id: "00000000-0000-0000-0000-000000000000".into(),
                    resource_group: "rg".into(),
                    account_name: "acct123".into(),
                    create_account: None,
                    client_id: None,
                })
            },
            "spec.storage",
        ),
        (
            "a claim-check container that is also a listed container",
            |a| {
                a.spec.claim_check = Some(ClaimCheckSpec {
                    container: Some("results".into()),
                    threshold_bytes: 4096,
                })
            },
            "spec.claimCheck.container",
        ),
        (
            "no storage kind",
            |a| a.spec.storage.connection_secret_ref = None,
            "spec.storage",
        ),
        (
            "min above max",
            |a| {
                a.spec.workers[0].scaling.min_replicas = 5;
                a.spec.workers[0].scaling.max_replicas = 2;
            },
            "spec.workers[0].scaling.minReplicas",
        ),
        (
            "worker on an unknown queue",
            |a| a.spec.workers[0].queue = "nosuchqueue".into(),
            "spec.workers[0].queue",
        ),
        (
            "two workers on one queue",
            |a| {
                let mut twin = worker("twin", "registrations");
                twin.image = "img".into();
                a.spec.workers.push(twin);
            },
            "spec.workers[2].queue",
        ),
        (
            "a queue named like a poison queue",
            |a| {
                a.spec.queues.push(QueueSpec {
                    name: "registrations-poison".into(),
                    ..a.spec.queues[0].clone()
                })
            },
            "spec.queues[2].name",
        ),
        (
            "app name too long",
            |a| a.metadata.name = Some("a".repeat(60)),
            "metadata.name",
        ),
        (
            "app plus worker name too long",
            |a| {
                a.metadata.name = Some("a".repeat(40));
                a.spec.workers[0].name = "w".repeat(30);
            },
            "spec.workers[0].name",
        ),
    ]
}

/// Per-field rules (the schema's patterns, lengths and ranges), mirrored in Rust
/// (mutation, field, words the Rust message contains).
pub fn field_rules() -> Vec<(Mutation, &'static str, &'static str)> {
    vec![
        (
            |a| a.spec.queues[0].name = "Orders".into(),
            "spec.queues[0].name",
            "lowercase",
        ),
        (
            |a| a.spec.queues[0].name = "ab".into(),
            "spec.queues[0].name",
            "3-56",
        ),
        (
            |a| a.spec.queues[0].name = "a--b".into(),
            "spec.queues[0].name",
            "single dashes",
        ),
        (
            |a| a.spec.queues[0].name = "-abc".into(),
            "spec.queues[0].name",
            "starting and ending",
        ),
        (
            |a| a.spec.queues[0].name = "q".repeat(57),
            "spec.queues[0].name",
            "3-56",
        ),
        (
            |a| a.spec.queues[0].max_dequeue_count = 0,
            "spec.queues[0].maxDequeueCount",
            "1..=1000",
        ),
        (
            |a| a.spec.queues[0].visibility_timeout_seconds = 0,
            "spec.queues[0].visibilityTimeoutSeconds",
            "7 days",
        ),
        (
            |a| a.spec.queues[0].message_ttl_seconds = 0,
            "spec.queues[0].messageTtlSeconds",
            "-1",
        ),
        (
            |a| a.spec.queues.push(a.spec.queues[0].clone()),
            "spec.queues[2].name",
            "listed twice",
        ),
        (
            |a| {
                a.spec.claim_check = Some(ClaimCheckSpec {
                    container: None,
                    threshold_bytes: 100,
                })
            },
            "spec.claimCheck.thresholdBytes",
            "between 1024",
        ),
        (
            |a| {
                a.spec.claim_check = Some(ClaimCheckSpec {
                    container: Some("Claims_Here".into()),
                    threshold_bytes: 4096,
                })
            },
            "spec.claimCheck.container",
            "3-63",
        ),
        (
            |a| a.spec.containers[0].name = "re_sults".into(),
            "spec.containers[0].name",
            "3-63",
        ),
        (
            |a| a.spec.containers[0].name = "c".repeat(64),
            "spec.containers[0].name",
            "3-63",
        ),
        (
            |a| {
                a.spec.containers[0].cors = Some(CorsSpec {
                    allowed_origins: vec!["http://x/path".into()],
                    max_age_seconds: 1,
                })
            },
            "spec.containers[0].cors.allowedOrigins[0]",
            "no path",
        ),
        (
            |a| {
                a.spec.containers[0].cors = Some(CorsSpec {
                    allowed_origins: vec![],
                    max_age_seconds: 1,
                })
            },
            "spec.containers[0].cors.allowedOrigins",
            "1 to 16",
        ),
        (
            |a| {
                a.spec.storage.connection_secret_ref = Some(SecretKeyRef {
                    name: "Bad_Name".into(),
                    key: "k".into(),
                })
            },
            "spec.storage.connectionSecretRef.name",
            "Secret name",
        ),
        (
            |a| a.spec.storage.public_blob_endpoint = Some("ftp://x".into()),
            "spec.storage.publicBlobEndpoint",
            "http(s)",
        ),
        (
            |a| {
                a.spec.storage.connection_secret_ref = None;
                a.spec.storage.azure = Some(AzureStorageSpec {
                    subscription_id: "not-a-guid".into(),
                    resource_group: "rg".into(),
                    account_name: "Bad-Account".into(),
                    create_account: Some(CreateAccountSpec {
                        location: " ".into(),
                        sku: Default::default(),
                    }),
                    client_id: Some("x".into()),
                });
            },
            "spec.storage.azure.subscriptionId",
            "GUID",
        ),
        (
            |a| a.spec.web.as_mut().unwrap().image = " ".into(),
            "spec.web.image",
            "container image",
        ),
        (
            |a| a.spec.web.as_mut().unwrap().port = 70000,
            "spec.web.port",
            "not a port",
        ),
        (
            |a| {
                a.spec.web.as_mut().unwrap().env.push(EnvVar {
                    name: "CQRS_QUEUE".into(),
                    ..Default::default()
                })
            },
            "spec.web.env[1].name",
            "set by the operator",
        ),
        (
            |a| a.spec.workers[0].name = "Registrar".into(),
            "spec.workers[0].name",
            "DNS label",
        ),
        (
            |a| a.spec.workers[0].max_messages_per_second = Some(0),
            "spec.workers[0].maxMessagesPerSecond",
            "at least 1",
        ),
        (
            |a| a.spec.workers[0].scaling.polling_interval = 0,
            "spec.workers[0].scaling.pollingInterval",
            "1..=3600",
        ),
        (
            |a| a.spec.workers[0].scaling.target_queue_length = 0,
            "spec.workers[0].scaling.targetQueueLength",
            "at least 1",
        ),
        (
            |a| a.spec.workers[0].scaling.scale_down.max_step_percent = Some(0),
            "spec.workers[0].scaling.scaleDown.maxStepPercent",
            "1..=1000",
        ),
        (
            |a| {
                a.spec.workers.push(WorkerSpec {
                    queue: "inventory".into(),
                    ..a.spec.workers[0].clone()
                })
            },
            "spec.workers[2].name",
            "listed twice",
        ),
    ]
}

/// Every invalid case of both tables.
pub fn all() -> Vec<InvalidCase> {
    let cross = cross_field()
        .into_iter()
        .map(|(what, mutate, field)| InvalidCase {
            what,
            mutate,
            field,
        });
    let fields = field_rules()
        .into_iter()
        .map(|(mutate, field, hint)| InvalidCase {
            what: hint,
            mutate,
            field,
        });
    cross.chain(fields).collect()
}
