//! `spec.storage`: which storage account the app uses and how the operator reaches it.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Where the app's queues and blobs live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.connectionSecretRef) != has(self.azure)").message("set exactly one of storage.connectionSecretRef or storage.azure"))]
pub struct StorageSpec {
    /// A Secret in the CqrsApp's namespace holding a storage connection string with an account
    /// key (`AccountName=..;AccountKey=..`), or `UseDevelopmentStorage=true` style settings for
    /// Azurite (`AccountName=devstoreaccount1;AccountKey=..;BlobEndpoint=..;QueueEndpoint=..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<SecretKeyRef>,

    /// A real Azure storage account, managed through Azure Resource Manager and reached with
    /// Entra ID (workload identity). The operator's identity needs "Storage Account
    /// Contributor" on the account (or resource group); the roles' identity needs "Storage
    /// Queue Data Contributor" and "Storage Blob Data Contributor".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorageSpec>,

    /// The blob endpoint as browsers reach it, when it differs from the one the roles use (for
    /// example Azurite inside the cluster, exposed through an ingress or a port-forward). Used
    /// only in SAS URLs handed to browsers. Example: `http://localhost:10000/devstoreaccount1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^https?://"))]
    pub public_blob_endpoint: Option<String>,
}

/// A key in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the CqrsApp's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "connectionString".into()
}

/// A real Azure storage account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorageSpec {
    /// Azure subscription id (a GUID).
    #[schemars(pattern(
        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub subscription_id: String,
    /// Resource group of the account.
    #[schemars(length(min = 1, max = 90))]
    pub resource_group: String,
    /// Storage account name: 3-24 lowercase letters and digits.
    #[schemars(pattern("^[a-z0-9]{3,24}$"))]
    pub account_name: String,
    /// Create the account if it does not exist. Without it, a missing account is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_account: Option<CreateAccountSpec>,
    /// Client id of the user-assigned managed identity the roles use (workload identity). The
    /// operator puts it on the roles' ServiceAccount (`azure.workload.identity/client-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(
        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub client_id: Option<String>,
}

/// How to create a missing storage account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateAccountSpec {
    /// Azure region, e.g. `westeurope`.
    #[schemars(length(min = 1, max = 64))]
    pub location: String,
    /// Replication SKU.
    #[serde(default)]
    pub sku: StorageSku,
}

/// Storage account replication SKUs.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum StorageSku {
    /// Locally redundant (default).
    #[default]
    #[serde(rename = "Standard_LRS")]
    StandardLrs,
    /// Zone redundant.
    #[serde(rename = "Standard_ZRS")]
    StandardZrs,
    /// Geo redundant.
    #[serde(rename = "Standard_GRS")]
    StandardGrs,
    /// Geo redundant with read access to the secondary.
    #[serde(rename = "Standard_RAGRS")]
    StandardRagrs,
    /// Geo-zone redundant.
    #[serde(rename = "Standard_GZRS")]
    StandardGzrs,
}

impl StorageSku {
    /// The ARM name of the SKU.
    pub fn as_arm(self) -> &'static str {
        match self {
            StorageSku::StandardLrs => "Standard_LRS",
            StorageSku::StandardZrs => "Standard_ZRS",
            StorageSku::StandardGrs => "Standard_GRS",
            StorageSku::StandardRagrs => "Standard_RAGRS",
            StorageSku::StandardGzrs => "Standard_GZRS",
        }
    }
}
