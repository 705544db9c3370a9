//! The finalizer's side: what deleting a CqrsApp does to its storage.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::storage::{StorageFailure, StorageProblem};
use super::writes::publish;
use crate::Error;
use crate::crd::{CqrsApp, DeletionPolicy};
use crate::plan;
use crate::validate::validate_app;

/// Removes the app's storage when its policy says so, and stops its loops.
pub(super) async fn cleanup(app: &CqrsApp, ctx: &Context) -> Result<Action, Error> {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    ctx.stop_app(&namespace, &name);
    let queues: Vec<String> = app.spec.queues.iter().map(|q| q.name.clone()).collect();
    let workers: Vec<String> = app.spec.workers.iter().map(|w| w.name.clone()).collect();
    ctx.metrics.forget(&namespace, &name, &queues, &workers);
    let key = ObjectRef::from_obj(app);
    if app.spec.deletion_policy == DeletionPolicy::Retain {
        publish(
            ctx,
            app,
            EventType::Normal,
            "StorageRetained",
            "deletionPolicy Retain: queues and containers are kept".into(),
        )
        .await;
        ctx.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    }
    if validate_app(&name, &app.spec).is_err() {
        publish(
            ctx,
            app,
            EventType::Warning,
            "StorageNotDeleted",
            "the spec is invalid, so the storage it names is left in place".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    // NB: if the connection Secret is already gone (namespace deletion removes it too), use
    // the connection this operator last made for the app.
    let connected = match ctx.storage.connect(app).await {
        Ok(c) => c,
        Err(problem) => {
            let cached = ctx
                .provisioned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .map(|p| p.connected.clone());
            match cached {
                Some(c) => c,
                None if problem.reason == StorageFailure::SecretNotFound => {
                    publish(
                        ctx,
                        app,
                        EventType::Warning,
                        "StorageNotDeleted",
                        format!(
                            "{}; the queues and containers are left in place",
                            problem.message
                        ),
                    )
                    .await;
                    return Ok(Action::await_change());
                }
                None => return Err(Error::DeleteStorage(problem)),
            }
        }
    };
    let plan = plan::storage_plan(&format!("{namespace}-{name}"), &name, &app.spec);
    let lock = ctx.account_lock(&connected.probe_id);
    let result = connected.provisioner.deprovision(&plan, &lock).await;
    if let Err(e) = result {
        publish(
            ctx,
            app,
            EventType::Warning,
            "DeleteStorageFailed",
            e.to_string(),
        )
        .await;
        return Err(Error::DeleteStorage(StorageProblem {
            reason: StorageFailure::DeleteStorageFailed,
            message: e.to_string(),
        }));
    }
    publish(
        ctx,
        app,
        EventType::Normal,
        "StorageDeleted",
        format!(
            "deletionPolicy Delete: deleted queues {:?} (with poison queues) and containers {:?}",
            plan.queues, plan.containers
        ),
    )
    .await;
    ctx.provisioned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    Ok(Action::await_change())
}
