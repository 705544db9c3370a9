//! Reaching an app's storage from the cluster: the connection string from its Secret, or the
//! Azure account through ARM with the operator's own Entra ID identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cqrs_storage::arm::{AccountCreate, AccountState, ArmProvisioner, ArmTarget};
use cqrs_storage::{ConnectionString, Provisioner, QueueProbe, RetrySettings, StorageAccount};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use url::Url;

use crate::crd::{AzureStorageSpec, CqrsApp, SecretKeyRef};
use crate::plan::StorageAccess;

/// An app's storage, ready to use.
#[derive(Clone)]
pub struct Connected {
    /// Creates and deletes queues, containers and CORS rules.
    pub provisioner: Arc<dyn Provisioner>,
    /// Reads queue depths.
    pub probe: Arc<dyn QueueProbe>,
    /// Identifies the storage behind `probe` (probe loops restart when it changes).
    pub probe_id: String,
    /// How the roles reach the storage.
    pub access: StorageAccess,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("probe_id", &self.probe_id)
            .finish_non_exhaustive()
    }
}

/// What went wrong with an app's storage: the `StorageReady` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFailure {
    /// The connection Secret does not exist.
    SecretNotFound,
    /// The connection Secret could not be read.
    SecretUnreadable,
    /// The Secret lacks the named key.
    SecretKeyMissing,
    /// The connection string cannot be used.
    InvalidConnectionString,
    /// `spec.storage` names no storage.
    InvalidSpec,
    /// No Entra ID credential for `storage.azure`.
    CredentialUnavailable,
    /// Azure Resource Manager refused or failed.
    ArmError,
    /// Azure is still creating the account.
    AccountProvisioning,
    /// Creating queues, containers or CORS failed.
    ProvisionFailed,
    /// Deleting the storage (`deletionPolicy: Delete`) failed.
    DeleteStorageFailed,
}

impl StorageFailure {
    /// The reason as conditions, Events and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretUnreadable => "SecretUnreadable",
            Self::SecretKeyMissing => "SecretKeyMissing",
            Self::InvalidConnectionString => "InvalidConnectionString",
            Self::InvalidSpec => "InvalidSpec",
            Self::CredentialUnavailable => "CredentialUnavailable",
            Self::ArmError => "ArmError",
            Self::AccountProvisioning => "AccountProvisioning",
            Self::ProvisionFailed => "ProvisionFailed",
            Self::DeleteStorageFailed => "DeleteStorageFailed",
        }
    }
}

/// Why an app's storage cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StorageProblem {
    /// What kind of failure (the condition reason).
    pub reason: StorageFailure,
    /// What is wrong and what to do, with Azure's error where there is one.
    pub message: String,
}

impl StorageProblem {
    /// A problem of kind `reason`.
    pub fn new(reason: StorageFailure, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Gives the reconciler an app's storage.
#[async_trait]
pub trait StorageConnector: Send + Sync {
    /// Connects to `app`'s storage.
    async fn connect(&self, app: &CqrsApp) -> Result<Connected, StorageProblem>;

    /// The revision of what `app`'s storage settings come from besides its spec (the
    /// connection Secret's resourceVersion), so a change provisions again; `None` when there is
    /// nothing to track or it cannot be read.
    async fn revision(&self, _app: &CqrsApp) -> Option<String> {
        None
    }
}

/// A Secret by namespace and name.
type SecretKey = (String, String);

/// How long a Secret's resourceVersion is trusted: a changed Secret is noticed by the next
/// reconcile after this (the operator does not watch Secrets: it is only allowed to get them).
pub const REVISION_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The connector used in a cluster.
pub struct ClusterStorage {
    client: Client,
    /// ARM endpoint override (sovereign clouds, tests).
    arm_endpoint: Option<Url>,
    accounts: Mutex<HashMap<String, StorageAccount>>,
    /// Each Secret's resourceVersion as last read, and when: the apps sharing one Secret read
    /// it once per [`REVISION_TTL`] between them.
    revisions: Mutex<HashMap<SecretKey, (Option<String>, std::time::Instant)>>,
    credential: Mutex<Option<Arc<dyn azure_core::credentials::TokenCredential>>>,
}

impl std::fmt::Debug for ClusterStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStorage")
            .field("arm_endpoint", &self.arm_endpoint)
            .finish_non_exhaustive()
    }
}

impl ClusterStorage {
    /// A connector reading Secrets with `client`.
    pub fn new(client: Client, arm_endpoint: Option<Url>) -> Self {
        Self {
            client,
            arm_endpoint,
            accounts: Mutex::default(),
            revisions: Mutex::default(),
            credential: Mutex::default(),
        }
    }

    async fn connect_secret(
        &self,
        namespace: &str,
        secret_ref: &SecretKeyRef,
    ) -> Result<Connected, StorageProblem> {
        // NB: read at every connection, not cached with the Secret's resourceVersion: that is
        // trusted for 30 s, and a cleanup must use the Secret as it is now.
        let text = connection_string_from_secret(&self.client, namespace, secret_ref).await?;
        let account = self.account_for(&text, namespace, secret_ref)?;
        let shared: Arc<StorageAccount> = Arc::new(account.clone());
        Ok(Connected {
            provisioner: shared.clone(),
            probe: shared,
            probe_id: format!("key:{}:{}", account.name(), account.queue_service().url()),
            access: StorageAccess::SecretRef(secret_ref.clone()),
        })
    }

    fn account_for(
        &self,
        connection_string: &str,
        namespace: &str,
        secret_ref: &SecretKeyRef,
    ) -> Result<StorageAccount, StorageProblem> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(account) = accounts.get(connection_string) {
            return Ok(account.clone());
        }
        let invalid = |e: &dyn std::fmt::Display| {
            StorageProblem::new(
                StorageFailure::InvalidConnectionString,
                format!(
                    "key {:?} of Secret {namespace}/{}: {e}",
                    secret_ref.key, secret_ref.name
                ),
            )
        };
        let parsed = ConnectionString::parse(connection_string).map_err(|e| invalid(&e))?;
        let account = StorageAccount::from_connection_string(&parsed, RetrySettings::BACKGROUND)
            .map_err(|e| invalid(&e))?;
        accounts.insert(connection_string.to_string(), account.clone());
        Ok(account)
    }

    async fn connect_azure(&self, azure: &AzureStorageSpec) -> Result<Connected, StorageProblem> {
        let credential = self.credential()?;
        let target = ArmTarget {
            subscription_id: azure.subscription_id.clone(),
            resource_group: azure.resource_group.clone(),
            account_name: azure.account_name.clone(),
            create: azure.create_account.as_ref().map(|c| AccountCreate {
                location: c.location.clone(),
                sku: c.sku.as_arm().into(),
            }),
        };
        let arm = ArmProvisioner::new(target, credential.clone(), self.arm_endpoint.clone())
            .map_err(|e| StorageProblem::new(StorageFailure::ArmError, e.to_string()))?;
        let (blob, queue) = match arm.ensure_account().await {
            Ok(AccountState::Ready {
                blob_endpoint,
                queue_endpoint,
            }) => (blob_endpoint, queue_endpoint),
            Ok(AccountState::Provisioning(state)) => {
                return Err(StorageProblem::new(
                    StorageFailure::AccountProvisioning,
                    format!(
                        "storage account {} is being created by Azure (state {state}); checking again shortly",
                        azure.account_name
                    ),
                ));
            }
            Err(e) => return Err(StorageProblem::new(StorageFailure::ArmError, e.to_string())),
        };
        let data_plane = StorageAccount::with_token_credential(
            &azure.account_name,
            credential,
            Some((blob.clone(), queue.clone())),
            RetrySettings::BACKGROUND,
        )
        .map_err(|e| StorageProblem::new(StorageFailure::ArmError, e.to_string()))?;
        Ok(Connected {
            provisioner: Arc::new(arm),
            probe: Arc::new(data_plane),
            probe_id: format!("entra:{}:{queue}", azure.account_name),
            access: StorageAccess::Entra {
                account: azure.account_name.clone(),
                client_id: azure.client_id.clone(),
                endpoints: Some((blob.to_string(), queue.to_string())),
            },
        })
    }

    fn credential(
        &self,
    ) -> Result<Arc<dyn azure_core::credentials::TokenCredential>, StorageProblem> {
        let mut slot = self.credential.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(credential) = slot.as_ref() {
            return Ok(credential.clone());
        }
        let credential = cqrs_storage::credential::entra_credential(None).map_err(|e| {
            StorageProblem::new(
                StorageFailure::CredentialUnavailable,
                format!("the operator has no Entra ID credential for ARM: {e}"),
            )
        })?;
        *slot = Some(credential.clone());
        Ok(credential)
    }
}

/// The connection string in the app's Secret (`spec.storage.connectionSecretRef`), read with
/// `client`'s permissions (the operator's, or a user's for `cqrs-operator poison`).
pub async fn connection_string_from_secret(
    client: &Client,
    namespace: &str,
    secret_ref: &SecretKeyRef,
) -> Result<String, StorageProblem> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(&secret_ref.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(StorageProblem::new(
                StorageFailure::SecretNotFound,
                format!(
                    "Secret {namespace}/{} (spec.storage.connectionSecretRef) does not exist; create it with the \
                         storage connection string under key {:?}",
                    secret_ref.name, secret_ref.key
                ),
            ));
        }
        Err(e) => {
            return Err(StorageProblem::new(
                StorageFailure::SecretUnreadable,
                format!("cannot read Secret {namespace}/{}: {e}", secret_ref.name),
            ));
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .ok_or_else(|| {
            StorageProblem::new(
                StorageFailure::SecretKeyMissing,
                format!(
                    "Secret {namespace}/{} has no key {:?} (spec.storage.connectionSecretRef.key)",
                    secret_ref.name, secret_ref.key
                ),
            )
        })?;
    let text = String::from_utf8(value.0.clone()).map_err(|_| {
        StorageProblem::new(
            StorageFailure::InvalidConnectionString,
            format!(
                "key {:?} of Secret {namespace}/{} is not UTF-8 text",
                secret_ref.key, secret_ref.name
            ),
        )
    })?;
    Ok(text.trim().to_string())
}

#[async_trait]
impl StorageConnector for ClusterStorage {
    async fn connect(&self, app: &CqrsApp) -> Result<Connected, StorageProblem> {
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
        match (
            &app.spec.storage.connection_secret_ref,
            &app.spec.storage.azure,
        ) {
            (Some(secret), _) => self.connect_secret(namespace, secret).await,
            (None, Some(azure)) => self.connect_azure(azure).await,
            (None, None) => Err(StorageProblem::new(
                StorageFailure::InvalidSpec,
                "spec.storage names no storage",
            )),
        }
    }

    async fn revision(&self, app: &CqrsApp) -> Option<String> {
        let secret = app.spec.storage.connection_secret_ref.as_ref()?;
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
        let key = (namespace.to_owned(), secret.name.clone());
        if let Some((revision, at)) = self
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < REVISION_TTL
        {
            return revision.clone();
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        // NB: a failed read is not remembered: the next reconcile asks again.
        let meta = secrets.get_metadata_opt(&secret.name).await.ok()?;
        let revision = meta.and_then(|m| m.metadata.resource_version);
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (revision.clone(), std::time::Instant::now()));
        revision
    }
}
