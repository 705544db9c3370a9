//! The reconciler's writes that every part of it shares: server-side apply under its field
//! manager, and Events about an app. Below every other module of the controller, so their
//! imports run one way (reconcile → apply/cleanup/provision/redrive/workers → writes).

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::applied::{self, Live};
use crate::Error;
use crate::crd::CqrsApp;

/// Field manager of everything the reconciler applies.
pub const FIELD_MANAGER: &str = "cqrs-operator";

/// What the reconciler applies: a namespaced Kubernetes object.
pub(super) trait Child:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// Applies `object` server-side as the reconciler (forced: it is the only writer of what it
/// applies).
pub(super) async fn apply_object<K: Child>(
    client: &kube::Client,
    namespace: &str,
    object: &K,
) -> Result<K, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::ApplyChild {
        kind: K::kind(&()).to_string(),
        name,
        source,
    })
}

/// Applies child `object` of app `app` as [`apply_object`] does, unless what it asks for was
/// already applied to the object as `live` still is ([`applied::Applied`]). Returns the API
/// server's answer, or `None` when nothing was sent.
pub(super) async fn apply_child<K: Child>(
    ctx: &Context,
    app: &str,
    namespace: &str,
    object: &K,
    live: Live<'_>,
) -> Result<Option<K>, Error> {
    let name = object.meta().name.clone().unwrap_or_default();
    let key = applied::key_of::<K>(namespace, app, &name);
    let digest = applied::digest(object);
    if ctx.applied.is_current(&key, digest, live) {
        return Ok(None);
    }
    let answer = apply_object(&ctx.client, namespace, object).await?;
    ctx.applied.record(key, digest, Some(answer.meta()));
    Ok(Some(answer))
}

/// Publishes an Event about `app` (its note cut to 1000 bytes).
pub(super) async fn publish(
    ctx: &Context,
    app: &CqrsApp,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_as(ctx, app, type_, reason, "Reconcile", note).await;
}

/// The same with its own `action`: the recorder folds repeats of one (type, reason, action)
/// into a series, so Events about different queues need different actions.
pub(super) async fn publish_as(
    ctx: &Context,
    app: &CqrsApp,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate(note)),
        action: action.chars().take(128).collect(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &app.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}
