//! Test fixtures: a valid baseline app, builders for its parts, and the table of invalid apps.
//! Compiled for this crate's tests and, with the `test-support` feature, for integration tests.

pub mod invalid;

use k8s_openapi::api::core::v1::EnvVar;
use kube::api::ObjectMeta;

use crate::crd::*;

/// A worker role on `queue` with default scaling.
pub fn worker(name: &str, queue: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        image: "ghcr.io/cqrs-operator/reference-app:test".into(),
        args: vec!["worker".into()],
        queue: queue.into(),
        env: vec![],
        resources: None,
        node_selector: Default::default(),
        tolerations: Vec::new(),
        max_messages_per_second: None,
        scaling: ScalingSpec::default(),
    }
}

/// A queue with default settings.
pub fn queue(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        max_dequeue_count: defaults::max_dequeue_count(),
        visibility_timeout_seconds: defaults::visibility_timeout(),
        message_ttl_seconds: defaults::message_ttl(),
    }
}

/// A valid app `pieshop` in namespace `shop`: two queues, two containers, a web role and a
/// worker per queue, on a connection-string Secret.
pub fn app() -> CqrsApp {
    let spec = CqrsAppSpec {
        storage: StorageSpec {
            connection_secret_ref: Some(SecretKeyRef {
                name: "pieshop-storage".into(),
                key: "connectionString".into(),
            }),
            azure: None,
            public_blob_endpoint: None,
        },
        deletion_policy: DeletionPolicy::Retain,
        queues: vec![queue("registrations"), queue("inventory")],
        containers: vec![
            ContainerSpec {
                name: "results".into(),
                cors: Some(CorsSpec {
                    allowed_origins: vec!["http://127.0.0.1:8080".into()],
                    max_age_seconds: 3600,
                }),
            },
            ContainerSpec {
                name: "readmodels".into(),
                cors: None,
            },
        ],
        web: Some(WebSpec {
            image: "ghcr.io/cqrs-operator/reference-app:test".into(),
            args: vec!["web".into()],
            replicas: 1,
            port: 8080,
            env: vec![EnvVar {
                name: "SCANNER_KEY".into(),
                value: Some("k".into()),
                ..Default::default()
            }],
            resources: None,
            node_selector: Default::default(),
            tolerations: Vec::new(),
            service: WebServiceSpec::default(),
        }),
        workers: vec![
            worker("registrar", "registrations"),
            worker("stocker", "inventory"),
        ],
        claim_check: None,
    };
    CqrsApp {
        metadata: ObjectMeta {
            name: Some("pieshop".into()),
            namespace: Some("shop".into()),
            uid: Some("4f1c2a8e-0000-4000-8000-000000000001".into()),
            generation: Some(1),
            ..Default::default()
        },
        ..CqrsApp::new("pieshop", spec)
    }
}
