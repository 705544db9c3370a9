//! The Kubernetes objects a CqrsApp owns, built as typed `k8s-openapi` structs from the plan.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{CqrsApp, CqrsAppSpec, WorkerSpec};
use crate::plan::{
    self, EnvEntry, EnvSource, RATE_SHARE_DIR, RATE_SHARE_KEY, Role, StorageAccess, WORKER_PORT,
};

/// Label with the app's name on every child (and the pods' selector).
pub const APP_LABEL: &str = "cqrs.dev/app";
/// Label with the component (`web` or the worker's name) on every child.
pub const COMPONENT_LABEL: &str = "cqrs.dev/component";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "cqrs-operator";
/// Component name of the web role.
pub const WEB: &str = "web";
/// Unprivileged user the roles run as (the distroless `nonroot` user).
pub const RUN_AS_USER: i64 = 65532;

/// Names of an app's children.
pub fn web_name(app: &str) -> String {
    format!("{app}-web")
}

/// Name of a worker role's Deployment.
pub fn worker_name(app: &str, worker: &str) -> String {
    format!("{app}-{worker}")
}

/// Name of a rate-limited worker role's ConfigMap.
pub fn rate_configmap_name(app: &str, worker: &str) -> String {
    format!("{app}-{worker}-rate")
}

/// Standard labels of a child object.
pub fn labels(app: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), app.into()),
        ("app.kubernetes.io/instance".into(), app.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (APP_LABEL.into(), app.into()),
        (COMPONENT_LABEL.into(), component.into()),
    ])
}

fn selector(app: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.into(), app.into()),
        (COMPONENT_LABEL.into(), component.into()),
    ])
}

/// What every builder needs about the app.
#[derive(Clone, Debug)]
pub struct Owner {
    /// App name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Controller owner reference to the CqrsApp.
    pub reference: OwnerReference,
}

impl Owner {
    /// The owner of `app`'s children; `None` if the object has no name, namespace or uid yet.
    pub fn of(app: &CqrsApp) -> Option<Self> {
        use kube::Resource as _;
        Some(Self {
            name: app.metadata.name.clone()?,
            namespace: app.metadata.namespace.clone()?,
            reference: app.controller_owner_ref(&())?,
        })
    }

    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(&self.name, component)),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// The ServiceAccount the roles run as; on Azure it carries the workload identity client id.
pub fn service_account(owner: &Owner, spec: &CqrsAppSpec) -> ServiceAccount {
    let mut meta = owner.meta(owner.name.clone(), "app");
    if let Some(client_id) = spec
        .storage
        .azure
        .as_ref()
        .and_then(|a| a.client_id.clone())
    {
        meta.annotations = Some(BTreeMap::from([(
            "azure.workload.identity/client-id".into(),
            client_id,
        )]));
    }
    ServiceAccount {
        metadata: meta,
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn env_vars(contract: Vec<EnvEntry>, user: &[EnvVar]) -> Vec<EnvVar> {
    let mut vars: Vec<EnvVar> = contract
        .into_iter()
        .map(|entry| match entry.source {
            EnvSource::Value(value) => EnvVar {
                name: entry.name,
                value: Some(value),
                value_from: None,
            },
            EnvSource::Secret(secret) => EnvVar {
                name: entry.name,
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name,
                        key: secret.key,
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        })
        .collect();
    vars.extend(user.iter().cloned());
    vars
}

fn http_probe(port: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct PodParts {
    component: String,
    image: String,
    args: Vec<String>,
    env: Vec<EnvVar>,
    port_name: &'static str,
    port: i32,
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    extra_volume: Option<(Volume, VolumeMount)>,
    grace_seconds: i64,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
}

fn pod_template(owner: &Owner, spec: &CqrsAppSpec, parts: PodParts) -> PodTemplateSpec {
    let mut labels = labels(&owner.name, &parts.component);
    if spec.storage.azure.is_some() {
        labels.insert("azure.workload.identity/use".into(), "true".into());
    }
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if let Some((volume, mount)) = parts.extra_volume {
        volumes.push(volume);
        mounts.push(mount);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(owner.name.clone()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(parts.grace_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: parts.component.clone(),
                image: Some(parts.image),
                args: (!parts.args.is_empty()).then_some(parts.args),
                env: Some(parts.env),
                ports: Some(vec![ContainerPort {
                    name: Some(parts.port_name.into()),
                    container_port: parts.port,
                    ..Default::default()
                }]),
                readiness_probe: Some(http_probe(parts.port_name, 5, 3)),
                liveness_probe: Some(http_probe(parts.port_name, 10, 6)),
                resources: parts.resources,
                security_context: Some(container_security()),
                volume_mounts: Some(mounts),
                ..Default::default()
            }],
            volumes: Some(volumes),
            node_selector: (!parts.node_selector.is_empty()).then_some(parts.node_selector),
            tolerations: (!parts.tolerations.is_empty()).then_some(parts.tolerations),
            ..Default::default()
        }),
    }
}

/// The web role's Deployment.
pub fn web_deployment(
    owner: &Owner,
    spec: &CqrsAppSpec,
    access: &StorageAccess,
) -> Option<Deployment> {
    let web = spec.web.as_ref()?;
    let env = env_vars(
        plan::role_env(&owner.name, spec, Role::Web, access, web.port, None),
        &web.env,
    );
    let template = pod_template(
        owner,
        spec,
        PodParts {
            component: WEB.into(),
            image: web.image.clone(),
            args: web.args.clone(),
            env,
            port_name: "http",
            port: web.port,
            resources: web.resources.clone(),
            extra_volume: None,
            grace_seconds: 30,
            node_selector: web.node_selector.clone(),
            tolerations: web.tolerations.clone(),
        },
    );
    Some(Deployment {
        metadata: owner.meta(web_name(&owner.name), WEB),
        spec: Some(DeploymentSpec {
            replicas: Some(web.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&owner.name, WEB)),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Service in front of the web role.
pub fn web_service(owner: &Owner, spec: &CqrsAppSpec) -> Option<Service> {
    let web = spec.web.as_ref()?;
    Some(Service {
        metadata: owner.meta(web_name(&owner.name), WEB),
        spec: Some(ServiceSpec {
            type_: Some(web.service.type_.as_str().into()),
            selector: Some(selector(&owner.name, WEB)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: web.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A worker role's Deployment. `replicas` is set only when creating it: from then on the
/// scaler owns the field (see [`super::workers`]).
pub fn worker_deployment(
    owner: &Owner,
    spec: &CqrsAppSpec,
    worker: &WorkerSpec,
    access: &StorageAccess,
    replicas: Option<i32>,
) -> Deployment {
    let rate_file = worker
        .max_messages_per_second
        .map(|_| format!("{RATE_SHARE_DIR}/{RATE_SHARE_KEY}"));
    let env = env_vars(
        plan::role_env(
            &owner.name,
            spec,
            Role::Worker(worker),
            access,
            WORKER_PORT,
            rate_file.as_deref(),
        ),
        &worker.env,
    );
    let extra_volume = worker.max_messages_per_second.map(|_| {
        (
            Volume {
                name: "rate".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: rate_configmap_name(&owner.name, &worker.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            VolumeMount {
                name: "rate".into(),
                mount_path: RATE_SHARE_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        )
    });
    let visibility = spec.visibility_timeout_of(worker);
    let template = pod_template(
        owner,
        spec,
        PodParts {
            component: worker.name.clone(),
            image: worker.image.clone(),
            args: worker.args.clone(),
            env,
            port_name: "metrics",
            port: WORKER_PORT,
            resources: worker.resources.clone(),
            extra_volume,
            // NB: time to finish in-flight messages on SIGTERM: one visibility timeout, plus slack.
            grace_seconds: i64::from(visibility) + 10,
            node_selector: worker.node_selector.clone(),
            tolerations: worker.tolerations.clone(),
        },
    );
    Deployment {
        metadata: owner.meta(worker_name(&owner.name, &worker.name), &worker.name),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector(&owner.name, &worker.name)),
                ..Default::default()
            },
            template,
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ConfigMap holding a rate-limited worker role's per-replica share, as the reconciler
/// applies it: without the share, which only the scaler writes (see [`super::workers`]).
pub fn rate_configmap(owner: &Owner, worker: &WorkerSpec) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(rate_configmap_name(&owner.name, &worker.name), &worker.name),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
