//! cqrs-operator: runs `CqrsApp`s on Kubernetes or on one machine.
//!
//! - [`crd`]: the `CqrsApp` resource; [`validate`]: its rules in Rust; [`manifest`]: files.
//! - [`plan`]: what an app needs (storage plan, environment contract), independent of where
//!   it runs.
//! - [`scaler`]: the pure scaling decision; [`autoscale`]: the probe loop that feeds it;
//!   [`status`]: the app's status from what the loops saw, for both drivers.
//! - [`k8s`]: the controller (reconcile, child objects, status, leader election).
//! - [`local`]: the same app on one machine, roles as child processes.
//! - [`metrics`]: Prometheus metrics and the health endpoints.

pub mod autoscale;
pub mod crd;
pub mod k8s;
pub mod local;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod poison;
pub mod scaler;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod validate;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use k8s::storage::StorageProblem;
use validate::InvalidSpec;

/// Errors of a reconciliation, named after what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CqrsApp breaks the rules (reported in its status; nothing is created).
    #[error("invalid CqrsApp: {0}")]
    InvalidSpec(InvalidSpec),
    /// The app's storage cannot be reached or provisioned.
    #[error("storage: {0}")]
    Storage(StorageProblem),
    /// Deleting the app's storage (`deletionPolicy: Delete`) failed; retried.
    #[error("cannot delete storage: {0}")]
    DeleteStorage(StorageProblem),
    /// A child object could not be applied.
    #[error("cannot apply {kind} {name}: {source}")]
    ApplyChild {
        /// Kind of the child.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A stale child could not be listed or deleted.
    #[error("cannot prune {kind} objects: {source}")]
    PruneChildren {
        /// Kind of the children.
        kind: String,
        /// The API error.
        source: kube::Error,
    },
    /// The status could not be written.
    #[error("cannot patch the status: {0}")]
    PatchStatus(kube::Error),
    /// The `cqrs.dev/redrive` annotation could not be removed after a redrive.
    #[error("cannot remove the cqrs.dev/redrive annotation: {0}")]
    RemoveAnnotation(kube::Error),
    /// The object lacks what every stored object has (namespace, uid).
    #[error("the CqrsApp lacks {0}")]
    IncompleteObject(&'static str),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Storage(p) | Error::DeleteStorage(p) => p.reason.as_str(),
            Error::ApplyChild { .. } => "ApplyChild",
            Error::PruneChildren { .. } => "PruneChildren",
            Error::PatchStatus(_) => "PatchStatus",
            Error::RemoveAnnotation(_) => "RemoveAnnotation",
            Error::IncompleteObject(_) => "IncompleteObject",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "Finalizer",
            },
        }
    }
}
