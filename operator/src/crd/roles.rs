//! `spec.web` and `spec.workers`: the app's roles and how workers scale.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The web role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(e, !e.name.startsWith('CQRS_'))").message("env names starting with CQRS_ are set by the operator (see the environment contract)").field_path(".env"))]
pub struct WebSpec {
    /// Container image of the web role.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub image: String,
    /// Arguments passed to the image's entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
    /// Number of web replicas.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Port the web role listens on (given to it as `CQRS_PORT`).
    #[serde(default = "web_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra environment variables. Names starting with `CQRS_` are reserved for the
    /// operator's environment contract.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Compute resources of each web pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a pod of this role must match (the pods' `nodeSelector`). Ignored by the
    /// local runtime.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods of this role tolerate (the pods' `tolerations`), e.g. to run on
    /// dedicated nodes. Ignored by the local runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// The Service in front of the web pods.
    #[serde(default)]
    pub service: WebServiceSpec,
}

/// The web role's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service exposes.
    #[serde(default = "service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for WebServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: service_port(),
        }
    }
}

/// Kubernetes Service types.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ServiceType {
    /// Reachable inside the cluster (default).
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A worker role: consumes one queue, scaled on its depth.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(e, !e.name.startsWith('CQRS_'))").message("env names starting with CQRS_ are set by the operator (see the environment contract)").field_path(".env"))]
pub struct WorkerSpec {
    /// Name of the role (a DNS label); its Deployment is `<app>-<name>`.
    #[schemars(length(min = 1, max = 40), pattern("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Container image of the worker.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub image: String,
    /// Arguments passed to the image's entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
    /// The queue this role consumes; must be one of `queues[].name`.
    // NB: the length bound keeps the CEL rules that compare queue names within the
    // apiserver's cost budget (unbounded strings are costed at the request size).
    #[schemars(length(max = 56))]
    pub queue: String,
    /// Extra environment variables. Names starting with `CQRS_` are reserved.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Compute resources of each worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a pod of this role must match (the pods' `nodeSelector`). Ignored by the
    /// local runtime.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods of this role tolerate (the pods' `tolerations`), e.g. to run on
    /// dedicated nodes. Ignored by the local runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Total messages per second all replicas of this role may process together (a
    /// downstream service's limit). Each replica gets an equal share, updated as the role
    /// scales. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages_per_second: Option<u32>,
    /// How the role scales on its queue's depth.
    #[serde(default)]
    pub scaling: ScalingSpec,
}

/// Queue-depth autoscaling of one worker role (field meanings follow KEDA's).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"))]
pub struct ScalingSpec {
    /// Fewest replicas; 0 lets the role scale to zero when its queue is idle.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[serde(default = "max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Messages per replica the role aims for: desired = ceil(queue length / this).
    #[serde(default = "target_queue_length")]
    #[schemars(range(min = 1))]
    pub target_queue_length: u32,
    /// Queue length that must be exceeded to wake a role that is at zero replicas.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_queue_length: u32,
    /// Seconds between queue-depth probes (and scaling decisions).
    #[serde(default = "polling_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval: u32,
    /// Seconds the queue must be empty, with nothing in flight, before scaling to zero.
    #[serde(default = "cooldown_period")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_period: u32,
    /// Limits on scaling up. Unset fields default to: no stabilization window, and at most 4
    /// replicas or +100% per decision (whichever is more).
    #[serde(default)]
    pub scale_up: ScalingBehavior,
    /// Limits on scaling down. Unset fields default to: a 60 s stabilization window, no step
    /// limit.
    #[serde(default)]
    pub scale_down: ScalingBehavior,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: max_replicas(),
            target_queue_length: target_queue_length(),
            activation_queue_length: 0,
            polling_interval: polling_interval(),
            cooldown_period: cooldown_period(),
            scale_up: ScalingBehavior::default(),
            scale_down: ScalingBehavior::default(),
        }
    }
}

impl ScalingSpec {
    /// `scaleUp` with its defaults filled in.
    pub fn up(&self) -> Behavior {
        let b = &self.scale_up;
        let steps_unset = b.max_step_replicas.is_none() && b.max_step_percent.is_none();
        Behavior {
            stabilization_window_seconds: b.stabilization_window_seconds.unwrap_or(0),
            max_step_replicas: if steps_unset {
                Some(4)
            } else {
                b.max_step_replicas
            },
            max_step_percent: if steps_unset {
                Some(100)
            } else {
                b.max_step_percent
            },
        }
    }

    /// `scaleDown` with its defaults filled in.
    pub fn down(&self) -> Behavior {
        let b = &self.scale_down;
        Behavior {
            stabilization_window_seconds: b.stabilization_window_seconds.unwrap_or(60),
            max_step_replicas: b.max_step_replicas,
            max_step_percent: b.max_step_percent,
        }
    }
}

/// Stabilization and step limits for one scaling direction; unset fields take the
/// direction's defaults (see `scaleUp` and `scaleDown`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Seconds of recommendations to consider: scaling up uses the lowest recommendation in
    /// the window, scaling down the highest, so a brief spike or dip does not flap replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<u32>,
    /// Most replicas added or removed in one decision (one polling interval). With
    /// `maxStepPercent` too, the larger step allowed wins; with neither, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step_replicas: Option<u32>,
    /// Most replicas added or removed in one decision, as a percentage of the current count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step_percent: Option<u32>,
}

/// A [`ScalingBehavior`] with every default applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behavior {
    /// Stabilization window in seconds.
    pub stabilization_window_seconds: u32,
    /// Step limit in replicas.
    pub max_step_replicas: Option<u32>,
    /// Step limit in percent of the current replicas.
    pub max_step_percent: Option<u32>,
}

fn one() -> i32 {
    1
}
fn web_port() -> i32 {
    8080
}
fn service_port() -> i32 {
    80
}
fn max_replicas() -> i32 {
    10
}
fn target_queue_length() -> u32 {
    5
}
fn polling_interval() -> u32 {
    5
}
fn cooldown_period() -> u32 {
    300
}
