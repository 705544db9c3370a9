//! Writing an app's children: every object applied with the reconciler's field manager, the
//! ones the spec no longer names deleted, and a probe loop per worker role.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use super::Context;
use super::applied::{self, Live};
use super::children::{self, APP_LABEL, Owner};
use super::scaling::{ClusterObserver, DeploymentTarget, ScalerKey};
use super::storage::Connected;
use super::writes::apply_child;
use crate::Error;
use crate::autoscale::WorkerScaling;
use crate::crd::CqrsApp;

/// Applies every child and deletes the ones the spec no longer asks for. Returns the web
/// Deployment as the API server answered (with its status), if there is a web role.
pub(super) async fn apply_children(
    app: &CqrsApp,
    ctx: &Context,
    owner: &Owner,
    connected: &Connected,
) -> Result<Option<Deployment>, Error> {
    let ns = &owner.namespace;
    let sa = children::service_account(owner, &app.spec);
    apply_child(ctx, &owner.name, ns, &sa, Live::Unwatched).await?;
    let mut keep_deployments = BTreeSet::new();
    let mut keep_configmaps = BTreeSet::new();
    for worker in &app.spec.workers {
        super::workers::apply_worker(ctx, owner, &app.spec, worker, &connected.access).await?;
        keep_deployments.insert(children::worker_name(&owner.name, &worker.name));
        if worker.max_messages_per_second.is_some() {
            keep_configmaps.insert(children::rate_configmap_name(&owner.name, &worker.name));
        }
    }
    let mut web = None;
    let mut keep_services = BTreeSet::new();
    if let (Some(deployment), Some(service)) = (
        children::web_deployment(owner, &app.spec, &connected.access),
        children::web_service(owner, &app.spec),
    ) {
        let name = children::web_name(&owner.name);
        keep_deployments.insert(name.clone());
        keep_services.insert(name.clone());
        let cached = ctx.deployments.get(&ObjectRef::new(&name).within(ns));
        let live = Live::Watched(cached.as_ref().map(|d| &d.metadata));
        web = apply_child(ctx, &owner.name, ns, &deployment, live)
            .await?
            .or_else(|| cached.map(|d| (*d).clone()));
        let cached = ctx.services.get(&ObjectRef::new(&name).within(ns));
        let live = Live::Watched(cached.as_ref().map(|s| &s.metadata));
        apply_child(ctx, &owner.name, ns, &service, live).await?;
    }
    // NB: what to keep changes only with the spec; a child made behind the operator's back is
    // deleted at the latest with the refresh of the memo.
    let key = applied::key(ns, &owner.name, "prune", "");
    let digest = applied::digest(&(&keep_deployments, &keep_services, &keep_configmaps));
    if !ctx.applied.is_current(&key, digest, Live::Unwatched) {
        prune(ctx, owner, &keep_deployments, Some(&ctx.deployments)).await?;
        prune(ctx, owner, &keep_services, Some(&ctx.services)).await?;
        // NB: ConfigMaps are not watched; a namespace holds few, so listing them is cheap.
        prune::<ConfigMap>(ctx, owner, &keep_configmaps, None).await?;
        ctx.applied.record(key, digest, None);
    }
    Ok(web)
}

/// Deletes children of `owner` of kind `K` whose names are not in `keep`, finding them in
/// `cache` when its watch has filled it (a new app's first apply then lists nothing: a LIST
/// of a namespace's thousands of Deployments is the API server's costliest read), else by a
/// LIST.
async fn prune<K>(
    ctx: &Context,
    owner: &Owner,
    keep: &BTreeSet<String>,
    cache: Option<&reflector::Store<K>>,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let children: Vec<ObjectMeta> = match cache.filter(|c| Context::filled(c)) {
        Some(cache) => cache
            .state()
            .iter()
            .map(|child| child.meta())
            .filter(|meta| {
                meta.namespace.as_deref() == Some(owner.namespace.as_str())
                    && meta.labels.as_ref().and_then(|l| l.get(APP_LABEL)) == Some(&owner.name)
            })
            .cloned()
            .collect(),
        None => api
            .list_metadata(&ListParams::default().labels(&format!("{APP_LABEL}={}", owner.name)))
            .await
            .map_err(|source| Error::PruneChildren {
                kind: K::kind(&()).to_string(),
                source,
            })?
            .items
            .into_iter()
            .map(|item| item.metadata)
            .collect(),
    };
    for meta in children {
        let name = meta.name.clone().unwrap_or_default();
        let ours = meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner.reference.uid);
        if ours && !keep.contains(&name) {
            tracing::info!(kind = %K::kind(&()), %name, namespace = %owner.namespace, "deleting a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(Error::PruneChildren {
                        kind: K::kind(&()).to_string(),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Starts or updates the probe loop of every worker role; stops loops of removed roles.
pub(super) fn run_scalers(app: &CqrsApp, ctx: &Context, owner: &Owner, connected: &Connected) {
    for worker in &app.spec.workers {
        let key = ScalerKey::new(&owner.namespace, &owner.name, &worker.name);
        let settings = WorkerScaling::from(worker);
        let client = ctx.client.clone();
        let cache = ctx.deployments.clone();
        let ns = owner.namespace.clone();
        let deployment = children::worker_name(&owner.name, &worker.name);
        let rate_cm = worker
            .max_messages_per_second
            .map(|_| children::rate_configmap_name(&owner.name, &worker.name));
        let observer = Arc::new(ClusterObserver::new(
            app,
            ctx.recorder.clone(),
            ctx.metrics.clone(),
        ));
        ctx.scalers.ensure(
            key,
            settings,
            &connected.probe_id,
            connected.probe.clone(),
            move || {
                Arc::new(DeploymentTarget::new(
                    client, cache, &ns, deployment, rate_cm,
                ))
            },
            observer,
        );
    }
    let workers: BTreeSet<&str> = app.spec.workers.iter().map(|w| w.name.as_str()).collect();
    ctx.scalers.retain(|key| {
        !key.of_app(&owner.namespace, &owner.name) || workers.contains(key.worker.as_str())
    });
}
