//! Entra ID credentials for real Azure accounts.
//!
//! The choice is deterministic, so a pod never silently falls back to a developer login:
//! 1. `AZURE_FEDERATED_TOKEN_FILE` is set (the AKS workload identity webhook sets it, together
//!    with `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`): workload identity.
//! 2. `IDENTITY_ENDPOINT` or `MSI_ENDPOINT` is set, or `AZURE_USE_MANAGED_IDENTITY=true`:
//!    managed identity (user-assigned when a client id is given).
//! 3. Otherwise: developer tools (Azure CLI, then Azure Developer CLI), for running on a
//!    workstation.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use crate::{Error, SdkError};

/// Which kind of credential [`entra_credential`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// Kubernetes workload identity (federated token file).
    WorkloadIdentity,
    /// Azure managed identity.
    ManagedIdentity,
    /// Azure CLI / Azure Developer CLI login.
    DeveloperTools,
}

/// Picks the credential kind from the environment (see the module docs).
pub fn credential_kind(env: impl Fn(&str) -> Option<String>) -> CredentialKind {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("AZURE_FEDERATED_TOKEN_FILE") {
        CredentialKind::WorkloadIdentity
    } else if set("IDENTITY_ENDPOINT")
        || set("MSI_ENDPOINT")
        || env("AZURE_USE_MANAGED_IDENTITY").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        CredentialKind::ManagedIdentity
    } else {
        CredentialKind::DeveloperTools
    }
}

/// Creates the Entra ID credential this process should use; `client_id` selects a
/// user-assigned identity (it overrides `AZURE_CLIENT_ID`).
pub fn entra_credential(client_id: Option<&str>) -> Result<Arc<dyn TokenCredential>, Error> {
    let kind = credential_kind(|name| std::env::var(name).ok());
    let credential: Arc<dyn TokenCredential> = match kind {
        CredentialKind::WorkloadIdentity => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                client_id: client_id.map(str::to_string),
                ..Default::default()
            }))
            .map_err(|e| Error::Credential(SdkError(e)))?
        }
        CredentialKind::ManagedIdentity => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_string())),
                ..Default::default()
            }))
            .map_err(|e| Error::Credential(SdkError(e)))?
        }
        CredentialKind::DeveloperTools => {
            DeveloperToolsCredential::new(None).map_err(|e| Error::Credential(SdkError(e)))?
        }
    };
    tracing::info!(?kind, "using Entra ID credential");
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn workload_identity_wins_when_the_webhook_injected_a_token_file() {
        let e = [
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("IDENTITY_ENDPOINT", "x"),
        ];
        assert_eq!(credential_kind(env(&e)), CredentialKind::WorkloadIdentity);
    }

    #[test]
    fn managed_identity_when_the_platform_provides_an_endpoint() {
        assert_eq!(
            credential_kind(env(&[("IDENTITY_ENDPOINT", "http://x")])),
            CredentialKind::ManagedIdentity
        );
        assert_eq!(
            credential_kind(env(&[("AZURE_USE_MANAGED_IDENTITY", "TRUE")])),
            CredentialKind::ManagedIdentity
        );
    }

    #[test]
    fn developer_tools_otherwise() {
        assert_eq!(
            credential_kind(env(&[("AZURE_FEDERATED_TOKEN_FILE", "")])),
            CredentialKind::DeveloperTools
        );
    }
}
