//! The probe loop's Kubernetes ends: a worker Deployment's scale subresource (and its rate
//! share ConfigMap) as the [`ScaleTarget`], and an observer that records metrics, publishes
//! Events when replicas change, and asks for a status refresh.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::json;

use crate::autoscale::{ScaleObserver, ScaleTarget, TargetError, Tick};
use crate::crd::CqrsApp;
use crate::metrics::Metrics;
use crate::plan::{RATE_SHARE_KEY, format_rate_share};
use crate::scaler::{Direction, Observation};

/// Field manager of the scaler's writes (replicas, rate shares).
pub const SCALER_MANAGER: &str = "cqrs-operator-scaler";

/// Key of one worker role's probe loop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScalerKey {
    /// The app's namespace.
    pub namespace: String,
    /// The app's name.
    pub app: String,
    /// The worker role's name.
    pub worker: String,
}

impl ScalerKey {
    /// The loop of worker `worker` of app `app` in `namespace`.
    pub fn new(namespace: &str, app: &str, worker: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            app: app.to_owned(),
            worker: worker.to_owned(),
        }
    }

    /// Whether the loop belongs to app `app` in `namespace`.
    pub fn of_app(&self, namespace: &str, app: &str) -> bool {
        self.namespace == namespace && self.app == app
    }
}

/// A worker Deployment, scaled through its scale subresource; its replicas are read from the
/// controller's watch cache, so a probe tick asks the API server nothing.
pub struct DeploymentTarget {
    cache: Store<Deployment>,
    namespace: String,
    deployments: Api<Deployment>,
    configmaps: Api<ConfigMap>,
    deployment: String,
    rate_configmap: Option<String>,
}

impl DeploymentTarget {
    /// The target for Deployment `deployment` in `namespace`, with its rate share in
    /// ConfigMap `rate_configmap` when the role is rate limited.
    pub fn new(
        client: Client,
        cache: Store<Deployment>,
        namespace: &str,
        deployment: String,
        rate_configmap: Option<String>,
    ) -> Self {
        Self {
            cache,
            namespace: namespace.to_owned(),
            deployments: Api::namespaced(client.clone(), namespace),
            configmaps: Api::namespaced(client, namespace),
            deployment,
            rate_configmap,
        }
    }
}

impl std::fmt::Debug for DeploymentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentTarget")
            .field("namespace", &self.namespace)
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

fn target_err(action: &str, e: kube::Error) -> TargetError {
    TargetError::new(action, e)
}

#[async_trait]
impl ScaleTarget for DeploymentTarget {
    async fn current_replicas(&self) -> Result<i32, TargetError> {
        let key = ObjectRef::new(&self.deployment).within(&self.namespace);
        if let Some(cached) = self.cache.get(&key) {
            // NB: the API server defaults an absent `spec.replicas` to 1.
            return Ok(cached.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
        }
        // NB: not in the cache (it is still filling, or nothing feeds it): ask the API.
        let scale = self
            .deployments
            .get_scale(&self.deployment)
            .await
            .map_err(|e| target_err("read the scale subresource", e))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments
            .patch_scale(
                &self.deployment,
                &PatchParams {
                    field_manager: Some(SCALER_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| target_err("patch the scale subresource", e))?;
        Ok(())
    }

    async fn set_rate_share(&self, share: Option<f64>) -> Result<(), TargetError> {
        let Some(name) = &self.rate_configmap else {
            return Ok(());
        };
        let patch = json!({ "data": { RATE_SHARE_KEY: format_rate_share(share) } });
        self.configmaps
            .patch(
                name,
                &PatchParams {
                    field_manager: Some(SCALER_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| target_err("update the rate share ConfigMap", e))?;
        Ok(())
    }
}

/// Turns ticks into metrics, logs and Events. (Status follows: a replica change patches the
/// Deployment, whose watch event reconciles the app.)
pub struct ClusterObserver {
    namespace: String,
    app: String,
    reference: ObjectReference,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    unreadable: Mutex<bool>,
}

impl std::fmt::Debug for ClusterObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterObserver")
            .field("namespace", &self.namespace)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl ClusterObserver {
    /// An observer for the loops of `app`.
    pub fn new(app: &CqrsApp, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        use kube::Resource as _;
        Self {
            namespace: app.metadata.namespace.clone().unwrap_or_default(),
            app: app.metadata.name.clone().unwrap_or_default(),
            reference: app.object_ref(&()),
            recorder,
            metrics,
            unreadable: Mutex::new(false),
        }
    }

    fn publish(&self, type_: EventType, reason: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = self.reference.clone();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "cannot publish event");
            }
        });
    }
}

impl ScaleObserver for ClusterObserver {
    fn on_tick(&self, tick: &Tick) {
        self.metrics.record_tick(&self.namespace, &self.app, tick);
        if tick.scaled()
            && let Some(d) = &tick.decision
        {
            tracing::info!(namespace = %self.namespace, app = %self.app, worker = %tick.worker, desired = d.desired, reason = %d.reason, "scaled");
            let reason = if d.direction == Direction::Up {
                "ScaledUp"
            } else {
                "ScaledDown"
            };
            self.publish(
                EventType::Normal,
                reason,
                format!("worker {}: {}", tick.worker, d.reason),
            );
        }
        let unreadable =
            matches!(tick.observation, Observation::Unreadable(_)) || tick.error.is_some();
        let was = std::mem::replace(
            &mut *self.unreadable.lock().unwrap_or_else(|p| p.into_inner()),
            unreadable,
        );
        // NB: one Warning when a loop starts holding, not one per tick.
        if unreadable && !was {
            let why = match (&tick.observation, &tick.error) {
                (Observation::Unreadable(why), _) => {
                    format!("queue {} cannot be read: {why}", tick.queue)
                }
                (_, Some(e)) => e.clone(),
                _ => String::new(),
            };
            tracing::warn!(namespace = %self.namespace, app = %self.app, worker = %tick.worker, "{why}");
            self.publish(
                EventType::Warning,
                "ScalingHeld",
                format!("worker {}: holding replicas: {why}", tick.worker),
            );
        }
    }
}
