//! Management-plane (ARM) provisioning for `storage.azure`, with `azure_mgmt_storage`.
//!
//! The generated ARM bindings still sit on the legacy `azure_core` 0.21, whose credential
//! trait differs from the 1.x one `azure_identity` implements; [`LegacyCredential`] is the
//! small adapter between the two. Account creation is never awaited in a loop: the operator
//! asks [`ArmProvisioner::ensure_account`] on each reconcile and requeues while Azure reports
//! the account as still provisioning.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core_legacy::auth::{AccessToken as LegacyToken, Secret as LegacySecret};
use azure_mgmt_storage::package_2023_05 as mgmt;
use azure_storage_blob::models::CorsRule;
use mgmt::models;
use url::Url;

use crate::provision::{CorsLock, ProvisionReport, Provisioner, StoragePlan};
use crate::queues::Ensured;
use crate::{Error, SdkError};

/// The ARM API version the bindings speak (asserted by the tests).
pub const ARM_API_VERSION: &str = "2023-05-01";

/// Adapts an `azure_identity` 1.x credential to the legacy `azure_core` 0.21 trait that
/// `azure_mgmt_storage` takes.
#[derive(Debug)]
pub struct LegacyCredential(pub Arc<dyn azure_core::credentials::TokenCredential>);

#[async_trait]
impl azure_core_legacy::auth::TokenCredential for LegacyCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core_legacy::Result<LegacyToken> {
        let token = self.0.get_token(scopes, None).await.map_err(|e| {
            azure_core_legacy::Error::new(
                azure_core_legacy::error::ErrorKind::Credential,
                SdkError(e),
            )
        })?;
        Ok(LegacyToken::new(
            LegacySecret::new(token.token.secret().to_string()),
            token.expires_on,
        ))
    }

    async fn clear_cache(&self) -> azure_core_legacy::Result<()> {
        Ok(())
    }
}

/// Settings for creating the account when it does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountCreate {
    /// Azure region, e.g. `westeurope`.
    pub location: String,
    /// SKU name, e.g. `Standard_LRS`.
    pub sku: String,
}

/// Which account ARM manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmTarget {
    /// Subscription id.
    pub subscription_id: String,
    /// Resource group.
    pub resource_group: String,
    /// Storage account name.
    pub account_name: String,
    /// Create the account if missing (`None`: it must exist).
    pub create: Option<AccountCreate>,
}

impl ArmTarget {
    /// The account's ARM resource id.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
            self.subscription_id, self.resource_group, self.account_name
        )
    }
}

/// The state of the storage account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountState {
    /// Usable, at these data-plane endpoints.
    Ready {
        /// Blob endpoint.
        blob_endpoint: Url,
        /// Queue endpoint.
        queue_endpoint: Url,
    },
    /// Azure is still creating it (the reported provisioning state).
    Provisioning(String),
}

/// Provisions queues, containers and CORS through ARM.
#[derive(Clone)]
pub struct ArmProvisioner {
    client: mgmt::Client,
    target: ArmTarget,
}

impl std::fmt::Debug for ArmProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmProvisioner")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn arm_err(
    action: &'static str,
    resource: impl Into<String>,
    e: azure_core_legacy::Error,
) -> Error {
    let message = match e.as_http_error() {
        Some(http) => format!(
            "HTTP {} {}: {}",
            u16::from(http.status()),
            http.error_code().unwrap_or("(no error code)"),
            http.error_message().unwrap_or("(no message)")
        ),
        None => e.to_string(),
    };
    Error::Arm {
        action,
        resource: resource.into(),
        message: crate::redact_signatures(&message),
    }
}

fn is_not_found(e: &azure_core_legacy::Error) -> bool {
    e.as_http_error()
        .is_some_and(|h| u16::from(h.status()) == 404)
}

impl ArmProvisioner {
    /// A provisioner for `target`, authenticating with `credential`, talking to `endpoint`
    /// (default: the Azure public cloud's `https://management.azure.com`).
    pub fn new(
        target: ArmTarget,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        endpoint: Option<Url>,
    ) -> Result<Self, Error> {
        let mut builder = mgmt::Client::builder(Arc::new(LegacyCredential(credential)));
        if let Some(endpoint) = endpoint {
            builder = builder
                .endpoint(endpoint)
                .scopes(&["https://management.azure.com/.default"]);
        }
        let client = builder.build().map_err(|e| Error::Arm {
            action: "build client",
            resource: target.resource_id(),
            message: e.to_string(),
        })?;
        Ok(Self { client, target })
    }

    /// The target account.
    pub fn target(&self) -> &ArmTarget {
        &self.target
    }

    /// Makes sure the account exists: reads it, and creates it when missing and `create` is
    /// set. Never waits for creation to finish.
    pub async fn ensure_account(&self) -> Result<AccountState, Error> {
        let t = &self.target;
        let accounts = self.client.storage_accounts_client();
        match accounts
            .get_properties(&t.resource_group, &t.account_name, &t.subscription_id)
            .await
        {
            Ok(account) => account_state(&account, t),
            Err(e) if is_not_found(&e) => {
                let Some(create) = &t.create else {
                    return Err(Error::Arm {
                        action: "read storage account",
                        resource: t.resource_id(),
                        message: "the account does not exist; create it, or set \
                                  spec.storage.azure.createAccount so the operator creates it"
                            .into(),
                    });
                };
                let sku = models::SkuName::from_str(&create.sku).map_err(|_| Error::Arm {
                    action: "create storage account",
                    resource: t.resource_id(),
                    message: format!("unknown SKU {:?}", create.sku),
                })?;
                let mut params = models::StorageAccountCreateParameters::new(
                    models::Sku::new(sku),
                    models::storage_account_create_parameters::Kind::StorageV2,
                    create.location.clone(),
                );
                let mut props = models::StorageAccountPropertiesCreateParameters::new();
                props.supports_https_traffic_only = Some(true);
                props.minimum_tls_version = Some(
                    models::storage_account_properties_create_parameters::MinimumTlsVersion::Tls12,
                );
                props.allow_blob_public_access = Some(false);
                params.properties = Some(props);
                // NB: `send()`, not `.await`: the builder's own LRO loop re-sends the PUT until
                // done; the operator polls across reconciles instead.
                accounts
                    .create(
                        &t.resource_group,
                        &t.account_name,
                        params,
                        &t.subscription_id,
                    )
                    .send()
                    .await
                    .map_err(|e| arm_err("create storage account", t.resource_id(), e))?;
                Ok(AccountState::Provisioning("Creating".into()))
            }
            Err(e) => Err(arm_err("read storage account", t.resource_id(), e)),
        }
    }

    async fn blob_cors(&self) -> Result<Vec<models::CorsRule>, Error> {
        let t = &self.target;
        let props = self
            .client
            .blob_services_client()
            .get_service_properties(
                &t.resource_group,
                &t.account_name,
                &t.subscription_id,
                "default",
            )
            .await
            .map_err(|e| arm_err("read blob service properties", t.resource_id(), e))?;
        Ok(props
            .properties
            .and_then(|p| p.cors)
            .map(|c| c.cors_rules)
            .unwrap_or_default())
    }
}

fn account_state(account: &models::StorageAccount, t: &ArmTarget) -> Result<AccountState, Error> {
    use models::storage_account_properties::ProvisioningState;
    let props = account.properties.as_ref();
    match props.and_then(|p| p.provisioning_state.as_ref()) {
        Some(ProvisioningState::Succeeded) => {}
        other => {
            let state = other.map_or("Unknown".to_string(), |s| format!("{s:?}"));
            return Ok(AccountState::Provisioning(state));
        }
    }
    let endpoints = props.and_then(|p| p.primary_endpoints.as_ref());
    let endpoint = |which: Option<&String>, service: &str| -> Result<Url, Error> {
        let default = format!("https://{}.{service}.core.windows.net/", t.account_name);
        let raw = which.cloned().unwrap_or(default);
        Url::parse(&raw).map_err(|e| Error::InvalidEndpoint(format!("{raw}: {e}")))
    };
    Ok(AccountState::Ready {
        blob_endpoint: endpoint(endpoints.and_then(|e| e.blob.as_ref()), "blob")?,
        queue_endpoint: endpoint(endpoints.and_then(|e| e.queue.as_ref()), "queue")?,
    })
}

fn to_data_plane(rule: &models::CorsRule) -> azure_storage_blob::models::CorsRule {
    azure_storage_blob::models::CorsRule {
        allowed_origins: Some(rule.allowed_origins.join(",")),
        allowed_methods: Some(rule.allowed_methods.join(",")),
        allowed_headers: Some(rule.allowed_headers.join(",")),
        exposed_headers: Some(rule.exposed_headers.join(",")),
        max_age_in_seconds: i32::try_from(rule.max_age_in_seconds).ok(),
    }
}

fn to_arm(rule: &azure_storage_blob::models::CorsRule) -> models::CorsRule {
    let split = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    models::CorsRule::new(
        split(&rule.allowed_origins),
        split(&rule.allowed_methods),
        i64::from(rule.max_age_in_seconds.unwrap_or(0)),
        split(&rule.exposed_headers),
        split(&rule.allowed_headers),
    )
}

#[async_trait]
impl Provisioner for ArmProvisioner {
    async fn ensure_queue(&self, name: &str) -> Result<Ensured, Error> {
        let t = &self.target;
        let queues = self.client.queue_client();
        let resource = format!("{}/queueServices/default/queues/{name}", t.resource_id());
        match queues
            .get(&t.resource_group, &t.account_name, &t.subscription_id, name)
            .await
        {
            Ok(_) => return Ok(Ensured::Existed),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(arm_err("read queue", resource, e)),
        }
        queues
            .create(
                &t.resource_group,
                &t.account_name,
                &t.subscription_id,
                name,
                models::StorageQueue::new(),
            )
            .await
            .map_err(|e| arm_err("create queue", resource, e))?;
        Ok(Ensured::Created)
    }

    async fn ensure_container(&self, name: &str) -> Result<Ensured, Error> {
        let t = &self.target;
        let containers = self.client.blob_containers_client();
        let resource = format!("{}/blobServices/default/containers/{name}", t.resource_id());
        match containers
            .get(&t.resource_group, &t.account_name, name, &t.subscription_id)
            .await
        {
            Ok(_) => return Ok(Ensured::Existed),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(arm_err("read container", resource, e)),
        }
        let mut container = models::BlobContainer::new();
        let mut props = models::ContainerProperties::new();
        props.public_access = Some(models::container_properties::PublicAccess::None);
        container.properties = Some(props);
        containers
            .create(
                &t.resource_group,
                &t.account_name,
                name,
                container,
                &t.subscription_id,
            )
            .await
            .map_err(|e| arm_err("create container", resource, e))?;
        Ok(Ensured::Created)
    }

    async fn read_blob_cors(&self) -> Result<Vec<CorsRule>, Error> {
        Ok(self.blob_cors().await?.iter().map(to_data_plane).collect())
    }

    async fn write_blob_cors(&self, merged: Vec<CorsRule>) -> Result<(), Error> {
        let t = &self.target;
        let mut props = models::BlobServiceProperties::new();
        props.properties = Some(models::blob_service_properties::Properties {
            cors: Some(models::CorsRules {
                cors_rules: merged.iter().map(to_arm).collect(),
            }),
            ..Default::default()
        });
        self.client
            .blob_services_client()
            .set_service_properties(
                &t.resource_group,
                &t.account_name,
                &t.subscription_id,
                "default",
                props,
            )
            .await
            .map_err(|e| arm_err("write blob service CORS", t.resource_id(), e))?;
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<bool, Error> {
        let t = &self.target;
        let resource = format!("{}/queueServices/default/queues/{name}", t.resource_id());
        let rsp = self
            .client
            .queue_client()
            .delete(&t.resource_group, &t.account_name, &t.subscription_id, name)
            .send()
            .await;
        deleted(
            rsp.map(|r| u16::from(r.as_raw_response().status())),
            "delete queue",
            resource,
        )
    }

    async fn delete_container(&self, name: &str) -> Result<bool, Error> {
        let t = &self.target;
        let resource = format!("{}/blobServices/default/containers/{name}", t.resource_id());
        let rsp = self
            .client
            .blob_containers_client()
            .delete(&t.resource_group, &t.account_name, name, &t.subscription_id)
            .send()
            .await;
        deleted(
            rsp.map(|r| u16::from(r.as_raw_response().status())),
            "delete container",
            resource,
        )
    }

    async fn provision(
        &self,
        plan: &StoragePlan,
        cors: &CorsLock,
    ) -> Result<ProvisionReport, Error> {
        if let AccountState::Provisioning(state) = self.ensure_account().await? {
            return Err(Error::AccountProvisioning {
                account: self.target.account_name.clone(),
                state,
            });
        }
        crate::provision::provision_steps(self, plan, cors).await
    }
}

fn deleted(
    status: azure_core_legacy::Result<u16>,
    action: &'static str,
    resource: String,
) -> Result<bool, Error> {
    match status {
        // ARM answers 204 when there was nothing to delete.
        Ok(204) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(arm_err(action, resource, e)),
    }
}
