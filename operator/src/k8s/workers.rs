//! A worker role's Deployment and rate-share ConfigMap, with one writer per field.
//!
//! The reconciler applies them (field manager [`FIELD_MANAGER`]) with everything but the two
//! fields the scaler changes: `spec.replicas` and the share. Those belong to the scaler
//! ([`SCALER_MANAGER`]), as HPA users do with their Deployments. A new Deployment is created
//! with `minReplicas`, owned by the reconciler until one of two things happens first: the
//! scaler changes it (its update takes the field over), or the reconciler applies the
//! Deployment again, which hands the field over with a forced apply as the scaler first, so an
//! apply without it neither resets nor drops it. (Handing it over at creation was one more
//! write per role for every new app, most of which never scale before they are edited.)

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ObjectMeta};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource};
use serde_json::{Value, json};

use super::Context;
use super::applied::{self, Live};
use super::children::{self, Owner};
use super::scaling::SCALER_MANAGER;
use super::writes::{FIELD_MANAGER, apply_object};
use crate::Error;
use crate::crd::{CqrsAppSpec, WorkerSpec};
use crate::plan::{RATE_SHARE_KEY, StorageAccess, format_rate_share};
use crate::scaler::rate_share;

/// Applies worker role `worker`'s ConfigMap (when rate limited) and Deployment, unless both
/// already hold what the spec asks for (see [`super::applied`]).
pub async fn apply_worker(
    ctx: &Context,
    owner: &Owner,
    spec: &CqrsAppSpec,
    worker: &WorkerSpec,
    access: &StorageAccess,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = &owner.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let name = children::worker_name(&owner.name, &worker.name);
    let cached = ctx.deployments.get(&ObjectRef::new(&name).within(ns));
    let key = applied::key_of::<Deployment>(ns, &owner.name, &name);
    let digest = applied::digest(&children::worker_deployment(
        owner, spec, worker, access, None,
    ));
    // NB: the rate ConfigMap, when the role has one and it is not as last applied.
    let stale_cm = worker
        .max_messages_per_second
        .map(|_| {
            let cm = children::rate_configmap(owner, worker);
            let name = cm.metadata.name.clone().unwrap_or_default();
            let key = applied::key_of::<ConfigMap>(ns, &owner.name, &name);
            let digest = applied::digest(&cm);
            (cm, name, key, digest)
        })
        .filter(|(_, _, key, digest)| !ctx.applied.is_current(key, *digest, Live::Unwatched));
    let live = Live::Watched(cached.as_ref().map(|d| &d.metadata));
    if stale_cm.is_none() && ctx.applied.is_current(&key, digest, live) {
        return Ok(());
    }
    // NB: the cache's copy is as good as a GET for what is read here (replicas and who owns
    // them). A Deployment missing from it is read from the API server unless the cache is
    // filled and this operator never applied it: a cache still filling, or one whose watch
    // has not yet delivered our own create, can never make an existing Deployment look new
    // (which would reset its replicas).
    let existing = match cached {
        Some(d) => Some((*d).clone()),
        None if Context::filled(&ctx.deployments) && !ctx.applied.knows(&key) => None,
        None => deployments
            .get_opt(&name)
            .await
            .map_err(|source| apply_error::<Deployment>(&name, source))?,
    };
    let replicas = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(worker.scaling.min_replicas);

    if let Some((cm, cm_name, cm_key, cm_digest)) = stale_cm {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let path = ["data", RATE_SHARE_KEY];
        let share = format_rate_share(rate_share(worker.max_messages_per_second, replicas));
        let share = json!({ "data": { RATE_SHARE_KEY: share } });
        let current = configmaps
            .get_opt(&cm_name)
            .await
            .map_err(|source| apply_error::<ConfigMap>(&cm_name, source))?;
        if current
            .as_ref()
            .is_some_and(|c| owned_by(&c.metadata, FIELD_MANAGER, &path))
        {
            claim(&configmaps, &cm_name, share.clone()).await?;
        }
        let applied = apply_object(client, ns, &cm).await?;
        if !owned_by(&applied.metadata, SCALER_MANAGER, &path) {
            claim(&configmaps, &cm_name, share).await?;
        }
        ctx.applied.record(cm_key, cm_digest, None);
    }

    let create = existing.is_none();
    let deployment = children::worker_deployment(
        owner,
        spec,
        worker,
        access,
        create.then_some(worker.scaling.min_replicas),
    );
    // NB: a Deployment whose replicas the reconciler still owns (never scaled since it was
    // created) is handed over first, or the apply below would drop them.
    let reconciler_owns = existing
        .as_ref()
        .is_some_and(|d| owned_by(&d.metadata, FIELD_MANAGER, &["spec", "replicas"]));
    if reconciler_owns {
        claim(
            &deployments,
            &name,
            json!({ "spec": { "replicas": replicas } }),
        )
        .await?;
    }
    let answer = apply_object(client, ns, &deployment).await?;
    ctx.applied.record(key, digest, Some(&answer.metadata));
    Ok(())
}

/// What the Deployment cache keeps of a Deployment: everything but its pod template (nobody
/// reads it from the cache; it is most of the object) and managed fields other than
/// `spec.replicas` (all [`owned_by`] is asked about).
pub fn compact_for_cache(deployment: &mut Deployment) {
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template = Default::default();
    }
    if let Some(entries) = deployment.metadata.managed_fields.as_mut() {
        entries.retain_mut(|entry| {
            let replicas = entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec")?.get("f:replicas").cloned());
            entry.fields_v1 = replicas.map(|r| FieldsV1(json!({ "f:spec": { "f:replicas": r } })));
            entry.fields_v1.is_some()
        });
    }
}

/// Takes the fields of `fields` over for the scaler (forced server-side apply).
async fn claim<K>(api: &Api<K>, name: &str, fields: Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut object = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
    });
    if let (Some(object), Some(fields)) = (object.as_object_mut(), fields.as_object()) {
        object.extend(fields.clone());
    }
    api.patch(
        name,
        &PatchParams::apply(SCALER_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(|source| apply_error::<K>(name, source))?;
    Ok(())
}

fn apply_error<K: Resource<DynamicType = ()>>(name: &str, source: kube::Error) -> Error {
    Error::ApplyChild {
        kind: K::kind(&()).to_string(),
        name: name.to_owned(),
        source,
    }
}

/// Whether `manager` owns the field at `path` (`["spec", "replicas"]`) according to
/// `metadata.managedFields`.
pub fn owned_by(meta: &ObjectMeta, manager: &str, path: &[&str]) -> bool {
    meta.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.fields_v1.as_ref().is_some_and(|fields| {
                path.iter()
                    .try_fold(&fields.0, |node, key| node.get(format!("f:{key}")))
                    .is_some()
            })
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    fn meta(entries: &[(&str, Value)]) -> ObjectMeta {
        ObjectMeta {
            managed_fields: Some(
                entries
                    .iter()
                    .map(|(manager, fields)| ManagedFieldsEntry {
                        manager: Some((*manager).into()),
                        fields_v1: Some(FieldsV1(fields.clone())),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_cached_copy_keeps_who_owns_replicas_and_drops_the_template() {
        let mut d = Deployment {
            metadata: meta(&[
                ("cqrs-operator", json!({"f:spec": {"f:template": {}}})),
                (
                    "cqrs-operator-scaler",
                    json!({"f:spec": {"f:replicas": {}}}),
                ),
            ]),
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(3),
                template: k8s_openapi::api::core::v1::PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        name: Some("big".into()),
                        ..Default::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        compact_for_cache(&mut d);
        assert!(owned_by(
            &d.metadata,
            "cqrs-operator-scaler",
            &["spec", "replicas"]
        ));
        assert_eq!(d.metadata.managed_fields.as_ref().map(Vec::len), Some(1));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert!(spec.template.metadata.is_none());
    }

    #[test]
    fn field_ownership_is_read_from_managed_fields() {
        let m = meta(&[
            ("cqrs-operator", json!({"f:spec": {"f:template": {}}})),
            (
                "cqrs-operator-scaler",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
        ]);
        assert!(owned_by(&m, "cqrs-operator-scaler", &["spec", "replicas"]));
        assert!(!owned_by(&m, "cqrs-operator", &["spec", "replicas"]));
        assert!(!owned_by(&m, "someone-else", &["spec", "replicas"]));
        assert!(!owned_by(
            &ObjectMeta::default(),
            "cqrs-operator",
            &["spec"]
        ));
    }
}
