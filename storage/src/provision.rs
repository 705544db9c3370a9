//! The provisioning interface the operator and the local runtime drive.
//!
//! Implemented on the data plane by [`StorageAccount`] (Azurite, key-based accounts, Entra ID
//! data-plane roles) and on the management plane by `arm::ArmProvisioner` (real Azure
//! subscriptions, where the operator may also create the account).

use async_trait::async_trait;

use crate::blobs::BlobCorsRule;
use crate::queues::{Ensured, QueueDepth, poison_queue_name};
use crate::{Error, StorageAccount};

/// Everything one app needs in its storage account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoragePlan {
    /// Marks this app's blob-service CORS rules (see [`crate::blobs`]); unique per app, e.g.
    /// `<namespace>-<name>`.
    pub owner: String,
    /// Command queues; each also gets its poison queue.
    pub queues: Vec<String>,
    /// Blob containers.
    pub containers: Vec<String>,
    /// Blob-service CORS rules for browsers reading result blobs.
    pub cors: Vec<BlobCorsRule>,
}

impl StoragePlan {
    /// Every queue name the plan implies: each command queue and its poison queue.
    pub fn all_queues(&self) -> Vec<String> {
        self.queues
            .iter()
            .flat_map(|q| [q.clone(), poison_queue_name(q)])
            .collect()
    }
}

/// What [`Provisioner::provision`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Resources this call created, as `queue/<name>`, `container/<name>`, `account/<name>`.
    pub created: Vec<String>,
    /// Whether the CORS rules were written.
    pub cors_updated: bool,
}

/// Idempotent storage provisioning.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Creates a queue unless it exists.
    async fn ensure_queue(&self, name: &str) -> Result<Ensured, Error>;
    /// Creates a container unless it exists.
    async fn ensure_container(&self, name: &str) -> Result<Ensured, Error>;
    /// Makes `owner`'s blob-service CORS rules equal to `rules`; true when it wrote.
    async fn ensure_blob_cors(&self, owner: &str, rules: &[BlobCorsRule]) -> Result<bool, Error>;
    /// Deletes a queue; true when it existed.
    async fn delete_queue(&self, name: &str) -> Result<bool, Error>;
    /// Deletes a container and its blobs; true when it existed.
    async fn delete_container(&self, name: &str) -> Result<bool, Error>;

    /// Creates whatever of `plan` is missing.
    async fn provision(&self, plan: &StoragePlan) -> Result<ProvisionReport, Error> {
        provision_steps(self, plan).await
    }

    /// Deletes everything of `plan` (for `deletionPolicy: Delete`): queues, poison queues,
    /// containers with their blobs, and this app's CORS rules.
    async fn deprovision(&self, plan: &StoragePlan) -> Result<(), Error> {
        for queue in plan.all_queues() {
            self.delete_queue(&queue).await?;
        }
        for container in &plan.containers {
            self.delete_container(container).await?;
        }
        self.ensure_blob_cors(&plan.owner, &[]).await?;
        Ok(())
    }
}

/// The provisioning steps for queues, containers and CORS, shared by every implementation
/// (ARM runs them after making sure the account exists).
pub(crate) async fn provision_steps<P: Provisioner + ?Sized>(
    p: &P,
    plan: &StoragePlan,
) -> Result<ProvisionReport, Error> {
    let mut report = ProvisionReport::default();
    for queue in plan.all_queues() {
        if p.ensure_queue(&queue).await? == Ensured::Created {
            report.created.push(format!("queue/{queue}"));
        }
    }
    for container in &plan.containers {
        if p.ensure_container(container).await? == Ensured::Created {
            report.created.push(format!("container/{container}"));
        }
    }
    report.cors_updated = p.ensure_blob_cors(&plan.owner, &plan.cors).await?;
    Ok(report)
}

#[async_trait]
impl Provisioner for StorageAccount {
    async fn ensure_queue(&self, name: &str) -> Result<Ensured, Error> {
        StorageAccount::ensure_queue(self, name).await
    }
    async fn ensure_container(&self, name: &str) -> Result<Ensured, Error> {
        StorageAccount::ensure_container(self, name).await
    }
    async fn ensure_blob_cors(&self, owner: &str, rules: &[BlobCorsRule]) -> Result<bool, Error> {
        StorageAccount::ensure_blob_cors(self, owner, rules).await
    }
    async fn delete_queue(&self, name: &str) -> Result<bool, Error> {
        StorageAccount::delete_queue(self, name).await
    }
    async fn delete_container(&self, name: &str) -> Result<bool, Error> {
        StorageAccount::delete_container(self, name).await
    }
}

/// Reads queue depths (data plane only: ARM cannot see messages).
#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// The current depth of `queue`.
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth, Error>;

    /// Moves up to `max` messages of `queue`'s poison queue back onto it
    /// ([`StorageAccount::redrive`]; `records`: the claim-check container).
    async fn redrive(
        &self,
        queue: &str,
        max: usize,
        records: Option<&str>,
    ) -> Result<crate::poison::Redriven, Error> {
        let _ = (max, records);
        Err(Error::Unsupported(format!(
            "this storage cannot redrive the poison queue of {queue}"
        )))
    }
}

#[async_trait]
impl QueueProbe for StorageAccount {
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        StorageAccount::queue_depth(self, queue).await
    }

    async fn redrive(
        &self,
        queue: &str,
        max: usize,
        records: Option<&str>,
    ) -> Result<crate::poison::Redriven, Error> {
        StorageAccount::redrive(
            self,
            queue,
            max,
            crate::poison::REDRIVE_HOLD,
            records,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .await
    }
}
