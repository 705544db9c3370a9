//! What a CqrsApp asks for, independent of where it runs: the storage plan and the
//! environment contract each role gets. The Kubernetes builders and the local runtime both
//! start from here, so pods and local processes see the same variables.

use cqrs_storage::contract::{self, QueueTopology, Topology};
use cqrs_storage::{BlobCorsRule, StoragePlan};

use crate::crd::{CqrsAppSpec, SecretKeyRef, WorkerSpec};

/// Port a worker listens on for `/healthz` and `/metrics` in a pod.
pub const WORKER_PORT: i32 = 9090;
/// Where a worker pod finds its rate share (a ConfigMap volume).
pub const RATE_SHARE_DIR: &str = "/etc/cqrs/rate";
/// File name of the rate share in [`RATE_SHARE_DIR`] (and key in the ConfigMap).
pub const RATE_SHARE_KEY: &str = "share";

/// Where one environment variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal value.
    Value(String),
    /// A key of a Secret (Kubernetes only; never copied into a pod spec).
    Secret(SecretKeyRef),
}

/// One variable of the environment contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvEntry {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub source: EnvSource,
}

impl EnvEntry {
    fn value(name: &str, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: EnvSource::Value(value.into()),
        }
    }
}

/// How the roles reach storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageAccess {
    /// A connection string kept in a Secret (Kubernetes).
    SecretRef(SecretKeyRef),
    /// A connection string handed over directly (the local runtime).
    ConnectionString(String),
    /// An Azure account reached with Entra ID.
    Entra {
        /// Account name.
        account: String,
        /// User-assigned identity for the roles.
        client_id: Option<String>,
        /// Data-plane endpoints reported by ARM (blob, queue), when known.
        endpoints: Option<(String, String)>,
    },
}

/// Which role the variables are for.
#[derive(Clone, Copy, Debug)]
pub enum Role<'a> {
    /// The web role.
    Web,
    /// A worker role.
    Worker(&'a WorkerSpec),
}

/// The storage app `name` needs; `owner` marks its CORS rules (`<namespace>-<name>`).
pub fn storage_plan(owner: &str, name: &str, spec: &CqrsAppSpec) -> StoragePlan {
    let mut origins: Vec<String> = Vec::new();
    let mut max_age = 0;
    for cors in spec.containers.iter().filter_map(|c| c.cors.as_ref()) {
        for origin in &cors.allowed_origins {
            if !origins.contains(origin) {
                origins.push(origin.clone());
            }
        }
        max_age = max_age.max(cors.max_age_seconds);
    }
    StoragePlan {
        owner: owner.into(),
        queues: spec.queues.iter().map(|q| q.name.clone()).collect(),
        containers: containers(name, spec),
        // NB: one read-only rule for all origins: Azure allows 5 rules per account, shared
        // with other apps.
        cors: if origins.is_empty() {
            vec![]
        } else {
            vec![BlobCorsRule::read_only(origins, max_age)]
        },
    }
}

/// The app's containers: `containers[]`, then the claim-check container.
fn containers(name: &str, spec: &CqrsAppSpec) -> Vec<String> {
    spec.containers
        .iter()
        .map(|c| c.name.clone())
        .chain(spec.claim_container(name))
        .collect()
}

/// The queues and containers of app `name` as the roles see them ([`contract::TOPOLOGY`]).
pub fn topology(name: &str, spec: &CqrsAppSpec) -> Topology {
    let claim_container = spec.claim_container(name);
    Topology {
        queues: spec
            .queues
            .iter()
            .map(|q| QueueTopology {
                name: q.name.clone(),
                poison_queue: cqrs_storage::queues::poison_queue_name(&q.name),
                max_dequeue_count: q.max_dequeue_count,
                visibility_timeout_seconds: q.visibility_timeout_seconds,
                message_ttl_seconds: q.message_ttl_seconds,
            })
            .collect(),
        containers: containers(name, spec),
        claim_threshold_bytes: claim_container.as_ref().map(|_| spec.claim_threshold()),
        claim_container,
    }
}

/// The environment contract of one role (without the user's own `env`, which comes after).
///
/// `port` is where the role listens (`CQRS_PORT`); `rate_share_file` is where a rate-limited
/// worker finds its current share.
pub fn role_env(
    app: &str,
    spec: &CqrsAppSpec,
    role: Role<'_>,
    access: &StorageAccess,
    port: i32,
    rate_share_file: Option<&str>,
) -> Vec<EnvEntry> {
    let mut env = vec![
        EnvEntry::value(contract::APP_NAME, app),
        EnvEntry::value(
            contract::ROLE,
            match role {
                Role::Web => contract::ROLE_WEB,
                Role::Worker(_) => contract::ROLE_WORKER,
            },
        ),
        EnvEntry::value(contract::PORT, port.to_string()),
    ];
    match access {
        StorageAccess::SecretRef(secret) => env.push(EnvEntry {
            name: contract::STORAGE_CONNECTION_STRING.into(),
            source: EnvSource::Secret(secret.clone()),
        }),
        StorageAccess::ConnectionString(cs) => env.push(EnvEntry::value(
            contract::STORAGE_CONNECTION_STRING,
            cs.clone(),
        )),
        StorageAccess::Entra {
            account,
            client_id,
            endpoints,
        } => {
            env.push(EnvEntry::value(contract::STORAGE_ACCOUNT, account.clone()));
            if let Some(id) = client_id {
                env.push(EnvEntry::value(contract::STORAGE_CLIENT_ID, id.clone()));
            }
            if let Some((blob, queue)) = endpoints {
                env.push(EnvEntry::value(
                    contract::STORAGE_BLOB_ENDPOINT,
                    blob.clone(),
                ));
                env.push(EnvEntry::value(
                    contract::STORAGE_QUEUE_ENDPOINT,
                    queue.clone(),
                ));
            }
        }
    }
    if let Some(public) = &spec.storage.public_blob_endpoint {
        env.push(EnvEntry::value(
            contract::PUBLIC_BLOB_ENDPOINT,
            public.clone(),
        ));
    }
    let topology = topology(app, spec);
    env.push(EnvEntry::value(
        contract::QUEUES,
        spec.queues
            .iter()
            .map(|q| q.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    ));
    env.push(EnvEntry::value(
        contract::CONTAINERS,
        topology.containers.join(","),
    ));
    env.push(EnvEntry::value(
        contract::TOPOLOGY,
        serde_json::to_string(&topology).unwrap_or_default(),
    ));
    if let Role::Worker(worker) = role {
        env.push(EnvEntry::value(contract::WORKER_NAME, worker.name.clone()));
        env.push(EnvEntry::value(contract::QUEUE, worker.queue.clone()));
        if let Some(q) = topology.queue(&worker.queue) {
            env.push(EnvEntry::value(
                contract::POISON_QUEUE,
                q.poison_queue.clone(),
            ));
            env.push(EnvEntry::value(
                contract::MAX_DEQUEUE_COUNT,
                q.max_dequeue_count.to_string(),
            ));
            env.push(EnvEntry::value(
                contract::VISIBILITY_TIMEOUT,
                q.visibility_timeout_seconds.to_string(),
            ));
        }
        if let (Some(total), Some(file)) = (worker.max_messages_per_second, rate_share_file) {
            env.push(EnvEntry::value(
                contract::MAX_MESSAGES_PER_SECOND,
                total.to_string(),
            ));
            env.push(EnvEntry::value(contract::RATE_SHARE_FILE, file));
        }
    }
    env
}

/// The rate share as written for workers: a decimal number, or empty for "no limit".
pub fn format_rate_share(share: Option<f64>) -> String {
    share.map(|s| format!("{s:.3}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::app;

    fn get<'a>(env: &'a [EnvEntry], name: &str) -> Option<&'a EnvSource> {
        env.iter().find(|e| e.name == name).map(|e| &e.source)
    }

    #[test]
    fn storage_plan_merges_cors_origins_into_one_read_only_rule() {
        let mut spec = app().spec;
        spec.containers[1].cors = Some(crate::crd::CorsSpec {
            allowed_origins: vec!["https://b".into(), "http://127.0.0.1:8080".into()],
            max_age_seconds: 7200,
        });
        let plan = storage_plan("shop-pieshop", "pieshop", &spec);
        assert_eq!(
            plan.all_queues(),
            [
                "registrations",
                "registrations-poison",
                "inventory",
                "inventory-poison"
            ]
        );
        assert_eq!(plan.containers, ["results", "readmodels", "pieshop-claims"]);
        assert_eq!(plan.cors.len(), 1);
        assert_eq!(
            plan.cors[0].allowed_origins,
            ["http://127.0.0.1:8080", "https://b"]
        );
        assert_eq!(plan.cors[0].allowed_methods, ["GET", "HEAD"]);
        assert_eq!(plan.cors[0].max_age_seconds, 7200);
    }

    #[test]
    fn workers_get_their_queue_and_a_secret_reference_never_the_secret() {
        let a = app();
        let worker = &a.spec.workers[0];
        let secret = SecretKeyRef {
            name: "pieshop-storage".into(),
            key: "connectionString".into(),
        };
        let env = role_env(
            "pieshop",
            &a.spec,
            Role::Worker(worker),
            &StorageAccess::SecretRef(secret.clone()),
            WORKER_PORT,
            None,
        );
        assert_eq!(
            get(&env, "CQRS_STORAGE_CONNECTION_STRING"),
            Some(&EnvSource::Secret(secret))
        );
        assert_eq!(
            get(&env, "CQRS_QUEUE"),
            Some(&EnvSource::Value("registrations".into()))
        );
        assert_eq!(
            get(&env, "CQRS_POISON_QUEUE"),
            Some(&EnvSource::Value("registrations-poison".into()))
        );
        assert_eq!(
            get(&env, "CQRS_MAX_DEQUEUE_COUNT"),
            Some(&EnvSource::Value("5".into()))
        );
        assert_eq!(
            get(&env, "CQRS_ROLE"),
            Some(&EnvSource::Value("worker".into()))
        );
        assert_eq!(
            get(&env, "CQRS_RATE_SHARE_FILE"),
            None,
            "no limit, no share file"
        );
        let Some(EnvSource::Value(topology)) = get(&env, "CQRS_TOPOLOGY") else {
            panic!("topology")
        };
        assert!(
            topology.contains("\"poisonQueue\":\"inventory-poison\""),
            "{topology}"
        );
    }

    #[test]
    fn rate_limited_workers_are_told_where_their_share_is() {
        let mut a = app();
        a.spec.workers[1].max_messages_per_second = Some(100);
        let env = role_env(
            "pieshop",
            &a.spec,
            Role::Worker(&a.spec.workers[1]),
            &StorageAccess::ConnectionString("cs".into()),
            9090,
            Some("/etc/cqrs/rate/share"),
        );
        assert_eq!(
            get(&env, "CQRS_MAX_MESSAGES_PER_SECOND"),
            Some(&EnvSource::Value("100".into()))
        );
        assert_eq!(
            get(&env, "CQRS_RATE_SHARE_FILE"),
            Some(&EnvSource::Value("/etc/cqrs/rate/share".into()))
        );
    }

    #[test]
    fn entra_roles_get_the_account_and_endpoints() {
        let a = app();
        let access = StorageAccess::Entra {
            account: "pieshopstore".into(),
            client_id: Some("id".into()),
            endpoints: Some(("https://b/".into(), "https://q/".into())),
        };
        let env = role_env("pieshop", &a.spec, Role::Web, &access, 8080, None);
        assert_eq!(
            get(&env, "CQRS_STORAGE_ACCOUNT"),
            Some(&EnvSource::Value("pieshopstore".into()))
        );
        assert_eq!(
            get(&env, "CQRS_STORAGE_QUEUE_ENDPOINT"),
            Some(&EnvSource::Value("https://q/".into()))
        );
        assert_eq!(get(&env, "CQRS_STORAGE_CONNECTION_STRING"), None);
        assert_eq!(
            get(&env, "CQRS_PORT"),
            Some(&EnvSource::Value("8080".into()))
        );
    }

    #[test]
    fn rate_shares_are_written_with_three_decimals() {
        assert_eq!(format_rate_share(Some(100.0 / 3.0)), "33.333");
        assert_eq!(format_rate_share(None), "");
    }
}
