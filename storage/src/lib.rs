//! Azure Storage layer shared by the cqrs operator, its local runtime and the reference app.
//!
//! - [`connection`]: connection strings (Azurite, key-based accounts).
//! - [`sas`]: account, service and user delegation SAS signing.
//! - [`account`]: [`StorageAccount`], the official SDK clients wired for shared-key or Entra ID.
//! - [`queues`], [`blobs`]: idempotent operations (ensure/delete queues and containers, CORS,
//!   queue depth).
//! - [`claims`]: the claim check, commands of any size through a blob ([`claims::CommandSender`]).
//! - [`poison`]: peek at poison queues and redrive them (copy back, then delete).
//! - [`provision`]: the [`Provisioner`] interface the operator drives, implemented on the data
//!   plane by [`StorageAccount`] and on the management plane by `arm::ArmProvisioner`.
//! - [`contract`]: the environment variables the operator hands to the roles.

pub mod account;
#[cfg(feature = "arm")]
pub mod arm;
#[cfg(feature = "test-support")]
pub mod azurite;
#[cfg(feature = "test-support")]
mod azurite_cli;
pub mod blobs;
pub mod claims;
pub mod connection;
pub mod contract;
pub mod credential;
pub mod poison;
pub mod provision;
pub mod queues;
pub mod sas;

use std::fmt;

pub use account::{RetrySettings, StorageAccount};
/// The SDK's blob-service CORS rule, as [`Provisioner`] reads and writes them.
pub use azure_storage_blob::models::CorsRule;
pub use blobs::BlobCorsRule;
pub use connection::ConnectionString;
pub use provision::{CorsLock, Provisioner, QueueProbe, StoragePlan};
pub use queues::QueueDepth;

/// An error from the Azure SDK, displayed without SAS signatures (reqwest errors print the
/// request URL, which carries one).
#[derive(Debug)]
pub struct SdkError(pub azure_core::Error);

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NB: the service's XML error body is multi-line and adds nothing to its code; one line
        // per error keeps logs readable.
        if let azure_core::error::ErrorKind::HttpResponse {
            status,
            error_code: Some(code),
            ..
        } = self.0.kind()
        {
            return write!(f, "HTTP {} {code}", u16::from(*status));
        }
        let mut text = self.0.to_string();
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = s.source();
        }
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        f.write_str(&redact_signatures(&text))
    }
}

impl std::error::Error for SdkError {}

impl SdkError {
    /// The HTTP status the service answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        self.0.http_status().map(u16::from)
    }

    /// The storage error code (`QueueNotFound`, `ConditionNotMet`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self.0.kind() {
            azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// True when the service could not be reached or answered with a server-side error, so
    /// the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        use azure_core::error::ErrorKind;
        match self.0.kind() {
            ErrorKind::Io | ErrorKind::Connection => true,
            ErrorKind::HttpResponse { status, .. } => {
                let s = u16::from(*status);
                s == 408 || s == 429 || s >= 500
            }
            _ => false,
        }
    }
}

impl From<azure_core::Error> for SdkError {
    fn from(e: azure_core::Error) -> Self {
        SdkError(e)
    }
}

/// Replaces the value of every `sig=` query parameter in `text` with `REDACTED`.
pub fn redact_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("sig=") {
        let (before, after) = rest.split_at(pos + 4);
        out.push_str(before);
        out.push_str("REDACTED");
        let end = after
            .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Errors of the storage layer, named after the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string could not be used.
    #[error("invalid storage connection string: {0}")]
    ConnectionString(#[from] connection::ConnectionStringError),
    /// An endpoint URL is unusable.
    #[error("invalid storage endpoint {0}")]
    InvalidEndpoint(String),
    /// An SDK client could not be constructed.
    #[error("cannot build the {service} service client: {source}")]
    BuildClient {
        /// `blob` or `queue`.
        service: &'static str,
        /// The SDK's reason.
        source: SdkError,
    },
    /// No Entra ID credential could be created.
    #[error("cannot create an Entra ID credential: {0}")]
    Credential(SdkError),
    /// Creating a queue failed.
    #[error("cannot create queue `{name}`: {source}")]
    CreateQueue {
        /// Queue name.
        name: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// Deleting a queue failed.
    #[error("cannot delete queue `{name}`: {source}")]
    DeleteQueue {
        /// Queue name.
        name: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// Reading a queue's depth failed.
    #[error("cannot read the depth of queue `{name}`: {source}")]
    ProbeQueue {
        /// Queue name.
        name: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// The operation is not available on this storage.
    #[error("{0}")]
    Unsupported(String),
    /// Sending a message failed.
    #[error("cannot send a message to queue `{queue}`: {source}")]
    SendMessage {
        /// Queue name.
        queue: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// A claim-check blob could not be written, listed, marked or deleted.
    #[error("cannot {action} claim-check blob {blob}: {source}")]
    Claim {
        /// What was attempted.
        action: claims::ClaimAction,
        /// `container/blob` (or `container/prefix/` for a listing).
        blob: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// Creating a container failed.
    #[error("cannot create container `{name}`: {source}")]
    CreateContainer {
        /// Container name.
        name: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// Deleting a container failed.
    #[error("cannot delete container `{name}`: {source}")]
    DeleteContainer {
        /// Container name.
        name: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// Reading or writing blob-service CORS rules failed.
    #[error("cannot {action} blob-service CORS rules: {source}")]
    BlobCors {
        /// `read` or `write`.
        action: &'static str,
        /// The SDK's reason.
        source: SdkError,
    },
    /// More CORS rules than Azure allows on one blob service.
    #[error(
        "the blob service would need {needed} CORS rules; Azure allows {max} (use fewer distinct \
         cors settings across containers, or remove unused rules from the account)",
        max = blobs::MAX_CORS_RULES
    )]
    TooManyCorsRules {
        /// How many rules the merge produced.
        needed: usize,
    },
    /// The storage account is still being created by Azure.
    #[error("storage account `{account}` is still being provisioned by Azure (state {state})")]
    AccountProvisioning {
        /// Account name.
        account: String,
        /// Provisioning state reported by ARM.
        state: String,
    },
    /// Getting a user delegation key (Entra ID accounts) failed.
    #[error("cannot get a user delegation key to sign blob SAS URLs: {source}")]
    GetDelegationKey {
        /// The SDK's reason.
        source: SdkError,
    },
    /// A SAS could not be signed.
    #[error("cannot sign a SAS: {0}")]
    SignSas(String),
    /// A management-plane (ARM) call failed.
    #[error("ARM {action} of {resource} failed: {message}")]
    Arm {
        /// What was attempted (`create storage account`, `create queue`, ...).
        action: &'static str,
        /// The Azure resource id or name.
        resource: String,
        /// Azure's reason, from the response body when there is one.
        message: String,
    },
}

impl Error {
    /// True when retrying later may succeed (the service was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::CreateQueue { source, .. }
            | Error::DeleteQueue { source, .. }
            | Error::ProbeQueue { source, .. }
            | Error::CreateContainer { source, .. }
            | Error::DeleteContainer { source, .. }
            | Error::BlobCors { source, .. }
            | Error::SendMessage { source, .. }
            | Error::Claim { source, .. } => source.is_transient(),
            Error::Arm { .. }
            | Error::AccountProvisioning { .. }
            | Error::GetDelegationKey { .. }
            | Error::Credential(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_redacted_wherever_they_appear() {
        let text = "error sending request for url (http://127.0.0.1:1/a/q?se=x&sig=abc%2Bdef&sp=r): refused; sig=zzz";
        let red = redact_signatures(text);
        assert_eq!(
            red,
            "error sending request for url (http://127.0.0.1:1/a/q?se=x&sig=REDACTED&sp=r): refused; sig=REDACTED"
        );
    }
}
