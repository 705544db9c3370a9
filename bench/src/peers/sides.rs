//! The two sides as cluster objects, with equivalent settings: a `CqrsApp` with one worker
//! role, and a plain Deployment with a KEDA `ScaledObject` (azure-queue trigger) beside it.
//! Both scale kwok-backed Deployments on the same Azurite, reached through the counting proxy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// Settings both sides get (the "equivalent settings").
pub const POLLING_INTERVAL: u32 = 5;
pub const TARGET_PER_REPLICA: u32 = 25;
pub const MAX_REPLICAS: i32 = 10;
pub const COOLDOWN: u32 = 60;

const MANAGER: &str = "cqrs-bench";
/// The Secret with the storage connection string, shared by both sides.
pub const STORAGE_SECRET: &str = "storage";

/// Which autoscaler drives a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Cqrs,
    Keda,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Cqrs, Side::Keda];

    /// Short prefix of its object and queue names.
    fn prefix(self) -> &'static str {
        match self {
            Side::Cqrs => "c",
            Side::Keda => "k",
        }
    }
}

/// One scaled role: its queue and the Deployment that scales.
#[derive(Clone, Debug)]
pub struct Role {
    pub side: Side,
    /// Which of its side's roles in a scenario (0, 1, ...).
    pub index: usize,
    /// The CqrsApp or ScaledObject name.
    pub name: String,
    pub queue: String,
    pub deployment: String,
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Server-side applies `object` (its `apiVersion`, `kind` and `metadata.name` say which) in
/// `namespace`, or cluster-wide.
pub async fn apply(client: &kube::Client, namespace: Option<&str>, object: Value) -> Result<()> {
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(&object, |v, key| v.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the object has no {}", path.join(".")))
    };
    let (kind, name) = (field(&["kind"])?, field(&["metadata", "name"])?);
    let r = resource(&field(&["apiVersion"])?, &kind);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &r),
        None => Api::all_with(client.clone(), &r),
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("cannot apply {kind} {name}"))?;
    Ok(())
}

/// The benchmark's namespace on the cluster.
#[derive(Clone)]
pub struct Objects {
    pub client: kube::Client,
    pub namespace: String,
}

impl Objects {
    async fn apply(&self, object: Value) -> Result<()> {
        apply(&self.client, Some(&self.namespace), object).await
    }

    fn delete_api(&self, api_version: &str, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &resource(api_version, kind),
        )
    }

    /// The namespace, the storage Secret and KEDA's TriggerAuthentication for it.
    pub async fn prepare(&self, connection_string: &str) -> Result<()> {
        apply(
            &self.client,
            None,
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": self.namespace },
            }),
        )
        .await?;
        self.apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": STORAGE_SECRET },
            "stringData": { "connectionString": connection_string },
        }))
        .await?;
        self.apply(json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": { "name": STORAGE_SECRET },
            "spec": { "secretTargetRef": [{
                "parameter": "connection", "name": STORAGE_SECRET, "key": "connectionString",
            }]},
        }))
        .await
    }

    /// Role `n` of `side` (its queue is created by the test, or by the operator for ours).
    pub fn role(side: Side, run: &str, n: usize) -> Role {
        let name = format!("{}-{run}-{n}", side.prefix());
        let deployment = match side {
            Side::Cqrs => format!("{name}-worker"),
            Side::Keda => name.clone(),
        };
        Role {
            side,
            index: n,
            queue: format!("q{name}"),
            name,
            deployment,
        }
    }

    /// Creates the role's objects: a CqrsApp, or a Deployment at 0 replicas with a
    /// ScaledObject.
    pub async fn create(&self, role: &Role) -> Result<()> {
        match role.side {
            Side::Cqrs => {
                self.apply(json!({
                    "apiVersion": "cqrs.dev/v1alpha1", "kind": "CqrsApp",
                    "metadata": { "name": role.name },
                    "spec": {
                        "storage": { "connectionSecretRef": {
                            "name": STORAGE_SECRET, "key": "connectionString" } },
                        "deletionPolicy": "Retain",
                        "queues": [{ "name": role.queue }],
                        "workers": [{
                            "name": "worker",
                            "image": "registry.invalid/worker:1",
                            "queue": role.queue,
                            "scaling": {
                                "minReplicas": 0,
                                "maxReplicas": MAX_REPLICAS,
                                "targetQueueLength": TARGET_PER_REPLICA,
                                "activationQueueLength": 0,
                                "pollingInterval": POLLING_INTERVAL,
                                "cooldownPeriod": COOLDOWN,
                            },
                        }],
                    },
                }))
                .await
            }
            Side::Keda => {
                let labels = json!({ "app": role.name });
                self.apply(json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": { "name": role.deployment },
                    "spec": {
                        "replicas": 0,
                        "selector": { "matchLabels": labels },
                        "template": {
                            "metadata": { "labels": labels },
                            "spec": { "containers": [{
                                "name": "worker", "image": "registry.invalid/worker:1",
                            }]},
                        },
                    },
                }))
                .await?;
                self.apply(json!({
                    "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                    "metadata": { "name": role.name },
                    "spec": {
                        "scaleTargetRef": { "name": role.deployment },
                        "pollingInterval": POLLING_INTERVAL,
                        "cooldownPeriod": COOLDOWN,
                        "minReplicaCount": 0,
                        "maxReplicaCount": MAX_REPLICAS,
                        "triggers": [{
                            "type": "azure-queue",
                            "metadata": {
                                "queueName": role.queue,
                                "queueLength": TARGET_PER_REPLICA.to_string(),
                                "activationQueueLength": "0",
                            },
                            "authenticationRef": { "name": STORAGE_SECRET },
                        }],
                    },
                }))
                .await
            }
        }
    }

    /// Deletes the role's objects (the Deployment goes with them, or explicitly for KEDA's).
    pub async fn delete(&self, role: &Role) -> Result<()> {
        let dp = DeleteParams::background();
        let objects: &[(&str, &str, &str)] = match role.side {
            Side::Cqrs => &[("cqrs.dev/v1alpha1", "CqrsApp", &role.name)],
            Side::Keda => &[
                ("keda.sh/v1alpha1", "ScaledObject", &role.name),
                ("apps/v1", "Deployment", &role.deployment),
            ],
        };
        for (api_version, kind, name) in objects {
            // NB: already gone is as good as deleted.
            let _ = self.delete_api(api_version, kind).delete(name, &dp).await;
        }
        Ok(())
    }
}

/// When `spec.replicas` of one Deployment was seen to change, and to what.
type History = Vec<(Instant, i32)>;

/// Every change of `spec.replicas` of the namespace's Deployments, with when it was seen.
#[derive(Clone)]
pub struct Replicas {
    changes: Arc<Mutex<BTreeMap<String, History>>>,
    origin: Instant,
}

impl Replicas {
    /// Watches the namespace's Deployments from now on.
    pub fn watch(objects: &Objects) -> Self {
        let me = Self {
            changes: Arc::default(),
            origin: Instant::now(),
        };
        let deployments: Api<Deployment> =
            Api::namespaced(objects.client.clone(), &objects.namespace);
        let changes = me.changes.clone();
        tokio::spawn(async move {
            let mut events = watcher(deployments, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(d) = event else { continue };
                let name = d.metadata.name.clone().unwrap_or_default();
                let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(0);
                let mut all = changes.lock().unwrap_or_else(|p| p.into_inner());
                let seen = all.entry(name).or_default();
                if seen.last().is_none_or(|(_, r)| *r != replicas) {
                    seen.push((Instant::now(), replicas));
                }
            }
        });
        me
    }

    fn of(&self, deployment: &str) -> History {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment)
            .cloned()
            .unwrap_or_default()
    }

    /// The replicas last seen (0 before the Deployment appears).
    pub fn now(&self, deployment: &str) -> i32 {
        self.of(deployment).last().map_or(0, |(_, r)| *r)
    }

    /// Seconds from `since` to the first change at or after it for which `pick` holds,
    /// waiting up to `limit`; `None` when none came.
    pub async fn first(
        &self,
        deployment: &str,
        since: Instant,
        limit: Duration,
        pick: impl Fn(i32) -> bool,
    ) -> Option<f64> {
        let deadline = since + limit;
        loop {
            let found = self
                .of(deployment)
                .into_iter()
                .find(|(at, r)| *at >= since && pick(*r));
            if let Some((at, _)) = found {
                return Some(at.duration_since(since).as_secs_f64());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every Deployment's history, one line each: `name: replicas@seconds ...` (seconds since
    /// the watch started).
    pub fn histories(&self) -> String {
        let all = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, history) in all.iter() {
            let changes: Vec<String> = history
                .iter()
                .map(|(at, r)| format!("{r}@{:.1}s", at.duration_since(self.origin).as_secs_f64()))
                .collect();
            out.push_str(&format!("{name}: {}\n", changes.join(" ")));
        }
        out
    }

    /// The changes since `since`: (seconds after it, replicas).
    pub fn since(&self, deployment: &str, since: Instant) -> Vec<(f64, i32)> {
        self.of(deployment)
            .into_iter()
            .filter(|(at, _)| *at >= since)
            .map(|(at, r)| (at.duration_since(since).as_secs_f64(), r))
            .collect()
    }
}
