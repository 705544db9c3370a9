//! The provisioning interface the operator and the local runtime drive.
//!
//! Implemented on the data plane by [`StorageAccount`] (Azurite, key-based accounts, Entra ID
//! data-plane roles) and on the management plane by `arm::ArmProvisioner` (real Azure
//! subscriptions, where the operator may also create the account).

use async_trait::async_trait;

use std::time::{Duration, Instant};

use azure_storage_blob::models::CorsRule;

use crate::blobs::{BlobCorsRule, merge_cors_rules};
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

/// How long the CORS rules an account was last seen with are trusted for a provisioning that
/// would not change them.
pub const CORS_MEMO: Duration = Duration::from_secs(60);

/// One account's blob-service CORS rules as this process last read or wrote them, and when.
/// Held while they are read-modified-written: apps sharing the account take turns. Only that
/// step needs it (creating a queue or a container is idempotent per name, so apps provision
/// those side by side), and a provisioning whose rules are already as wanted according to a
/// memo younger than [`CORS_MEMO`] neither reads nor writes them: a thousand new apps on one
/// account read the rules about once a minute, not once each, one after the other. A write
/// always reads first, so rules others added meanwhile are kept.
#[derive(Debug, Default)]
pub struct CorsLock(tokio::sync::Mutex<Option<(Vec<CorsRule>, Instant)>>);

impl CorsLock {
    /// Makes `owner`'s rules on `p`'s account equal to `rules`; true when it wrote.
    async fn ensure<P: Provisioner + ?Sized>(
        &self,
        p: &P,
        owner: &str,
        rules: &[BlobCorsRule],
    ) -> Result<bool, Error> {
        let mut memo = self.0.lock().await;
        if let Some((known, at)) = memo.as_ref()
            && at.elapsed() < CORS_MEMO
            && merge_cors_rules(known, owner, rules)?.is_none()
        {
            return Ok(false);
        }
        let existing = p.read_blob_cors().await?;
        *memo = Some((existing.clone(), Instant::now()));
        let Some(merged) = merge_cors_rules(&existing, owner, rules)? else {
            return Ok(false);
        };
        // NB: forgotten until written, so a failed write is not taken for a done one.
        *memo = None;
        p.write_blob_cors(merged.clone()).await?;
        *memo = Some((merged, Instant::now()));
        Ok(true)
    }
}

/// Idempotent storage provisioning.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Creates a queue unless it exists.
    async fn ensure_queue(&self, name: &str) -> Result<Ensured, Error>;
    /// Creates a container unless it exists.
    async fn ensure_container(&self, name: &str) -> Result<Ensured, Error>;
    /// The account's blob-service CORS rules as they are now.
    async fn read_blob_cors(&self) -> Result<Vec<CorsRule>, Error>;
    /// Replaces the account's blob-service CORS rules with `rules`.
    async fn write_blob_cors(&self, rules: Vec<CorsRule>) -> Result<(), Error>;
    /// Deletes a queue; true when it existed.
    async fn delete_queue(&self, name: &str) -> Result<bool, Error>;
    /// Deletes a container and its blobs; true when it existed.
    async fn delete_container(&self, name: &str) -> Result<bool, Error>;

    /// Creates whatever of `plan` is missing, holding `cors` (the account's lock, shared by
    /// every app provisioned on it; a fresh one for a caller alone on its account) only while
    /// it writes the CORS rules.
    async fn provision(
        &self,
        plan: &StoragePlan,
        cors: &CorsLock,
    ) -> Result<ProvisionReport, Error> {
        provision_steps(self, plan, cors).await
    }

    /// Deletes everything of `plan` (for `deletionPolicy: Delete`): queues, poison queues,
    /// containers with their blobs, and this app's CORS rules (holding `cors` for those).
    async fn deprovision(&self, plan: &StoragePlan, cors: &CorsLock) -> Result<(), Error> {
        for queue in plan.all_queues() {
            self.delete_queue(&queue).await?;
        }
        for container in &plan.containers {
            self.delete_container(container).await?;
        }
        cors.ensure(self, &plan.owner, &[]).await?;
        Ok(())
    }
}

/// The provisioning steps for queues, containers and CORS, shared by every implementation
/// (ARM runs them after making sure the account exists).
pub(crate) async fn provision_steps<P: Provisioner + ?Sized>(
    p: &P,
    plan: &StoragePlan,
    cors: &CorsLock,
) -> Result<ProvisionReport, Error> {
    let queues = plan.all_queues();
    // NB: an app's few queues and containers are created at once, not one round trip after
    // the other; the CORS step waits for them so a failure leaves the rules untouched.
    let (queues_ensured, containers_ensured) = futures::future::try_join(
        futures::future::try_join_all(queues.iter().map(|q| p.ensure_queue(q))),
        futures::future::try_join_all(plan.containers.iter().map(|c| p.ensure_container(c))),
    )
    .await?;
    let created = |kind: &str, names: &[String], ensured: Vec<Ensured>| {
        names
            .iter()
            .zip(ensured)
            .filter(|(_, e)| *e == Ensured::Created)
            .map(|(name, _)| format!("{kind}/{name}"))
            .collect::<Vec<_>>()
    };
    let mut report = ProvisionReport {
        created: created("queue", &queues, queues_ensured),
        cors_updated: false,
    };
    report
        .created
        .extend(created("container", &plan.containers, containers_ensured));
    report.cors_updated = cors.ensure(p, &plan.owner, &plan.cors).await?;
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
    async fn read_blob_cors(&self) -> Result<Vec<CorsRule>, Error> {
        StorageAccount::blob_cors_rules(self).await
    }
    async fn write_blob_cors(&self, rules: Vec<CorsRule>) -> Result<(), Error> {
        StorageAccount::write_blob_cors(self, rules).await
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An account in memory that counts CORS reads and writes.
    #[derive(Default)]
    struct Account {
        rules: Mutex<Vec<CorsRule>>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Provisioner for Account {
        async fn ensure_queue(&self, _: &str) -> Result<Ensured, Error> {
            Ok(Ensured::Existed)
        }
        async fn ensure_container(&self, _: &str) -> Result<Ensured, Error> {
            Ok(Ensured::Existed)
        }
        async fn read_blob_cors(&self) -> Result<Vec<CorsRule>, Error> {
            self.calls.lock().unwrap().push("read".into());
            Ok(self.rules.lock().unwrap().clone())
        }
        async fn write_blob_cors(&self, rules: Vec<CorsRule>) -> Result<(), Error> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("write {}", rules.len()));
            *self.rules.lock().unwrap() = rules;
            Ok(())
        }
        async fn delete_queue(&self, _: &str) -> Result<bool, Error> {
            Ok(true)
        }
        async fn delete_container(&self, _: &str) -> Result<bool, Error> {
            Ok(true)
        }
    }

    fn plan(owner: &str, cors: usize) -> StoragePlan {
        StoragePlan {
            owner: owner.into(),
            queues: vec![format!("{owner}-q")],
            containers: vec![],
            cors: (0..cors)
                .map(|i| BlobCorsRule {
                    allowed_origins: vec![format!("https://{owner}{i}.example")],
                    allowed_methods: vec!["GET".into()],
                    allowed_headers: vec![],
                    exposed_headers: vec![],
                    max_age_seconds: 60,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn apps_sharing_an_account_read_its_cors_rules_once_and_write_only_changes() {
        let account = Account::default();
        let lock = CorsLock::default();
        for owner in ["a", "b", "c"] {
            account.provision(&plan(owner, 0), &lock).await.unwrap();
        }
        assert_eq!(*account.calls.lock().unwrap(), ["read"]);
        // A change is written after a fresh read, and keeps the others' rules.
        account.calls.lock().unwrap().clear();
        account.rules.lock().unwrap().push(CorsRule {
            allowed_origins: Some("https://someone.else".into()),
            ..Default::default()
        });
        let report = account.provision(&plan("d", 1), &lock).await.unwrap();
        assert!(report.cors_updated);
        assert_eq!(*account.calls.lock().unwrap(), ["read", "write 2"]);
        // As wanted now, by the memo of that write: nothing read or written.
        account.calls.lock().unwrap().clear();
        let report = account.provision(&plan("d", 1), &lock).await.unwrap();
        assert!(!report.cors_updated);
        assert!(account.calls.lock().unwrap().is_empty());
        // Deprovisioning removes d's rule alone.
        account.deprovision(&plan("d", 1), &lock).await.unwrap();
        assert_eq!(*account.calls.lock().unwrap(), ["read", "write 1"]);
    }
}
