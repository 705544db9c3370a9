//! `kubectl annotate cqrsapp/<app> cqrs.dev/redrive=<queue>`: the operator moves that queue's
//! poison messages back onto it once (copy, then delete, like `cqrs-operator poison
//! redrive`), records the outcome in an Event, and removes the annotation.

use std::hash::{Hash, Hasher};

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::Context;
use super::storage::Connected;
use super::writes::publish_as;
use crate::Error;
use crate::crd::CqrsApp;

/// The annotation naming the queue to redrive.
pub const ANNOTATION: &str = "cqrs.dev/redrive";
/// Most messages one request moves (the Event says when some are left).
pub const MAX_MESSAGES: usize = 1000;

/// Watch predicate: the app is reconciled when the annotation appears or changes (metadata
/// changes do not bump the generation).
pub fn requested(app: &CqrsApp) -> Option<u64> {
    app.annotations().get(ANNOTATION).map(|queue| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        queue.hash(&mut hasher);
        hasher.finish()
    })
}

/// Handles a pending request, if there is one.
pub(super) async fn handle(
    app: &CqrsApp,
    ctx: &Context,
    connected: &Connected,
) -> Result<(), Error> {
    let Some(queue) = app
        .annotations()
        .get(ANNOTATION)
        .map(|q| q.trim().to_string())
    else {
        return Ok(());
    };
    let poison = cqrs_storage::queues::poison_queue_name(&queue);
    let action = format!("Redrive {poison}");
    if !app.spec.queues.iter().any(|q| q.name == queue) {
        let known: Vec<&str> = app.spec.queues.iter().map(|q| q.name.as_str()).collect();
        let note = format!(
            "{ANNOTATION}={queue:?} names no queue of this app (its queues: {}); nothing was moved",
            known.join(", ")
        );
        publish_as(ctx, app, EventType::Warning, "RedriveFailed", &action, note).await;
    } else {
        let records = app.spec.claim_container(&app.name_any());
        match connected
            .probe
            .redrive(&queue, MAX_MESSAGES, records.as_deref())
            .await
        {
            Ok(done) => {
                let mut note = format!(
                    "moved {} message(s) from {poison} back to {queue}",
                    done.moved.len()
                );
                if done.moved.len() == MAX_MESSAGES {
                    note.push_str(&format!(
                        " (at most {MAX_MESSAGES} per request: annotate again for the rest)"
                    ));
                }
                if !done.not_deleted.is_empty() {
                    note.push_str(&format!(
                        "; {} could not be deleted from {poison} and will be moved again by the next redrive",
                        done.not_deleted.len()
                    ));
                }
                publish_as(ctx, app, EventType::Normal, "Redriven", &action, note).await;
            }
            Err(e) => {
                let note = format!("cannot redrive {poison}: {e}");
                publish_as(ctx, app, EventType::Warning, "RedriveFailed", &action, note).await;
            }
        }
    }
    // NB: the status that follows shows the poison queues as they are now.
    ctx.poison_counts.forget(
        &connected.probe_id,
        super::poison_counts::poison_queues(app),
    );
    // NB: removed whatever the outcome, so the request runs once; annotate again to retry.
    let api: Api<CqrsApp> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION: null } } });
    api.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::RemoveAnnotation)?;
    Ok(())
}
