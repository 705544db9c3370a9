//! Storage provisioning of an app: when it is due (the spec or the Secret changed, or the
//! provisioning resync), and the pass itself.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::storage::{Connected, StorageFailure, StorageProblem};
use super::writes::publish;
use crate::crd::CqrsApp;
use crate::plan;

/// The connection of the app's last provisioning, if neither its spec nor its storage
/// settings changed since and the provisioning resync is not due.
pub(super) fn provisioned_and_unchanged(
    app: &CqrsApp,
    ctx: &Context,
    revision: &Option<String>,
) -> Option<Connected> {
    let provisioned = ctx.provisioned.lock().unwrap_or_else(|p| p.into_inner());
    let last = provisioned.get(&ObjectRef::from_obj(app))?;
    (last.generation == app.metadata.generation
        && &last.revision == revision
        && last.at.elapsed() < ctx.provision_interval)
        .then(|| last.connected.clone())
}

/// Connects to the app's storage and creates what is missing.
pub(super) async fn connect_and_provision(
    app: &CqrsApp,
    ctx: &Context,
    revision: Option<String>,
) -> Result<Connected, StorageProblem> {
    ctx.metrics.provisionings.inc();
    let connected = ctx.storage.connect(app).await?;
    let owner_id = format!("{}-{}", app.namespace().unwrap_or_default(), app.name_any());
    let plan = plan::storage_plan(&owner_id, &app.name_any(), &app.spec);
    let lock = ctx.account_lock(&connected.probe_id);
    let report = connected
        .provisioner
        .provision(&plan, &lock)
        .await
        .map_err(|e| {
            let reason = if matches!(e, cqrs_storage::Error::AccountProvisioning { .. }) {
                StorageFailure::AccountProvisioning
            } else {
                StorageFailure::ProvisionFailed
            };
            StorageProblem {
                reason,
                message: e.to_string(),
            }
        })?;
    if !report.created.is_empty() || report.cors_updated {
        let mut what = report.created.clone();
        if report.cors_updated {
            what.push("blob-service CORS rule".into());
        }
        publish(
            ctx,
            app,
            EventType::Normal,
            "Provisioned",
            format!("created or updated: {}", what.join(", ")),
        )
        .await;
    }
    ctx.provisioned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            ObjectRef::from_obj(app),
            super::Provisioned {
                connected: connected.clone(),
                generation: app.metadata.generation,
                revision,
                at: std::time::Instant::now(),
            },
        );
    Ok(connected)
}
