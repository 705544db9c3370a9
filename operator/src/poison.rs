//! `cqrs-operator poison list|redrive`: the messages of an app's poison queues, seen and put
//! back, locally (`-f manifest.yaml`, `--connection-string`) or on a cluster (`--namespace`,
//! `--app`: the app's storage settings and Secret are read through the API with the caller's
//! own kubeconfig permissions).

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use cqrs_storage::poison::{PoisonMessage, Redriven};
use cqrs_storage::{ConnectionString, RetrySettings, StorageAccount};
use kube::Api;

use crate::crd::{CqrsApp, CqrsAppSpec};

/// Which app and queue.
#[derive(Clone, Debug)]
pub enum Source {
    /// A manifest on disk; storage through a connection string.
    Manifest {
        /// The CqrsApp manifest.
        file: PathBuf,
        /// Its storage.
        connection_string: String,
    },
    /// A CqrsApp in a cluster (current kubeconfig).
    Cluster {
        /// Its namespace.
        namespace: String,
        /// Its name.
        app: String,
    },
}

/// Why a poison command failed.
#[derive(Debug, thiserror::Error)]
pub enum PoisonError {
    /// The app could not be read.
    #[error("{0}")]
    App(String),
    /// The queue is not one of the app's.
    #[error("--queue {queue:?} is not a queue of CqrsApp {app} (its queues: {known})")]
    UnknownQueue {
        /// What was asked for.
        queue: String,
        /// The app.
        app: String,
        /// Its queues.
        known: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] cqrs_storage::Error),
}

/// The app's spec and a client for its storage.
pub async fn connect(
    source: &Source,
) -> Result<(String, CqrsAppSpec, StorageAccount), PoisonError> {
    match source {
        Source::Manifest {
            file,
            connection_string,
        } => {
            let app = crate::manifest::load(file).map_err(|e| PoisonError::App(e.to_string()))?;
            let cs = ConnectionString::parse(connection_string)
                .map_err(|e| PoisonError::App(format!("--connection-string: {e}")))?;
            let account = StorageAccount::from_connection_string(&cs, RetrySettings::INTERACTIVE)?;
            Ok((app.metadata.name.unwrap_or_default(), app.spec, account))
        }
        Source::Cluster { namespace, app } => {
            let client = crate::k8s::connect(Duration::from_secs(5))
                .await
                .map_err(|e| PoisonError::App(e.to_string()))?;
            let apps: Api<CqrsApp> = Api::namespaced(client.clone(), namespace);
            let found = apps.get(app).await.map_err(|e| {
                PoisonError::App(format!("cannot read CqrsApp {namespace}/{app}: {e}"))
            })?;
            let account = cluster_account(client, namespace, &found.spec).await?;
            Ok((app.clone(), found.spec, account))
        }
    }
}

async fn cluster_account(
    client: kube::Client,
    namespace: &str,
    spec: &CqrsAppSpec,
) -> Result<StorageAccount, PoisonError> {
    if let Some(secret_ref) = &spec.storage.connection_secret_ref {
        let text =
            crate::k8s::storage::connection_string_from_secret(&client, namespace, secret_ref)
                .await
                .map_err(|p| {
                    PoisonError::App(format!("{} (read with your kubeconfig)", p.message))
                })?;
        let cs = ConnectionString::parse(&text).map_err(|e| {
            PoisonError::App(format!("Secret {namespace}/{}: {e}", secret_ref.name))
        })?;
        return Ok(StorageAccount::from_connection_string(
            &cs,
            RetrySettings::INTERACTIVE,
        )?);
    }
    let Some(azure) = &spec.storage.azure else {
        return Err(PoisonError::App("spec.storage names no storage".into()));
    };
    // NB: your own Entra ID login (Azure CLI, workload identity...) with "Storage Queue Data
    // Contributor" on the account; public-cloud endpoints.
    let credential = cqrs_storage::credential::entra_credential(None)?;
    Ok(StorageAccount::with_token_credential(
        &azure.account_name,
        credential,
        None,
        RetrySettings::INTERACTIVE,
    )?)
}

/// Checks that `queue` is one of the app's.
pub fn check_queue(app: &str, spec: &CqrsAppSpec, queue: &str) -> Result<(), PoisonError> {
    if spec.queues.iter().any(|q| q.name == queue) {
        return Ok(());
    }
    Err(PoisonError::UnknownQueue {
        queue: queue.into(),
        app: app.into(),
        known: spec
            .queues
            .iter()
            .map(|q| q.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The listing `poison list` prints.
pub fn listing(queue: &str, messages: &[PoisonMessage]) -> String {
    let mut out = String::new();
    let poison = cqrs_storage::queues::poison_queue_name(queue);
    if messages.is_empty() {
        let _ = writeln!(out, "{poison} is empty");
        return out;
    }
    let _ = writeln!(
        out,
        "{} message(s) at the head of {poison} (oldest first):",
        messages.len()
    );
    for m in messages {
        let inserted = m
            .inserted
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "?".into());
        let why = m.record.as_ref().map_or_else(
            || "tries and reason not recorded".to_string(),
            |r| format!("tried {} time(s): {}", r.tries, r.reason),
        );
        let _ = writeln!(
            out,
            "- {}  poisoned {inserted}  {why}  (redrive attempts {})\n  {}",
            m.id,
            m.dequeue_count,
            m.preview(200)
        );
    }
    out
}

/// `poison redrive`: moves up to `max`; `dry_run` lists what would move. `records` is the
/// app's claim-check container (where the workers record why they poisoned a message).
pub async fn redrive(
    account: &StorageAccount,
    queue: &str,
    max: usize,
    dry_run: bool,
    records: Option<&str>,
) -> Result<String, PoisonError> {
    let poison = cqrs_storage::queues::poison_queue_name(queue);
    if dry_run {
        let would = account
            .peek_poison(queue, u32::try_from(max).unwrap_or(u32::MAX))
            .await?;
        let mut out = format!(
            "dry run: would move {} message(s) from {poison} back to {queue}{}\n",
            would.len(),
            if max > cqrs_storage::queues::MAX_PEEK as usize {
                " (a dry run sees at most the first 32)"
            } else {
                ""
            }
        );
        for m in &would {
            let _ = writeln!(out, "- {}  {}", m.id, m.preview(80));
        }
        return Ok(out);
    }
    let Redriven { moved, not_deleted } = account
        .redrive(
            queue,
            max,
            cqrs_storage::poison::REDRIVE_HOLD,
            records,
            |_| ControlFlow::Continue(()),
        )
        .await?;
    let mut out = format!(
        "moved {} message(s) from {poison} back to {queue}\n",
        moved.len()
    );
    for id in &moved {
        let _ = writeln!(out, "- {id}");
    }
    if !not_deleted.is_empty() {
        let _ = writeln!(
            out,
            "{} of them could not be deleted from {poison}: they will show up there again and a \
             second redrive moves them (a duplicate the workers count once, never a loss)",
            not_deleted.len()
        );
    }
    Ok(out)
}
