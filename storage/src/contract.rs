//! The environment contract between the operator (or the local runtime) and the app's roles.
//!
//! Pods and local processes get exactly these variables (plus the `env` of their role in the
//! CqrsApp). The README's "Environment contract" table documents each one; this module is the
//! single source of their names and of how a role turns them into a [`StorageAccount`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::connection::ConnectionString;
use crate::{Error, RetrySettings, StorageAccount};

/// Name of the CqrsApp.
pub const APP_NAME: &str = "CQRS_APP_NAME";
/// `web` or `worker`.
pub const ROLE: &str = "CQRS_ROLE";
/// Port the role listens on: the HTTP app for `web`, `/healthz` and `/metrics` for `worker`.
pub const PORT: &str = "CQRS_PORT";
/// Shared-key accounts: the connection string (from the Secret named in the CqrsApp).
pub const STORAGE_CONNECTION_STRING: &str = "CQRS_STORAGE_CONNECTION_STRING";
/// Entra ID accounts: the storage account name.
pub const STORAGE_ACCOUNT: &str = "CQRS_STORAGE_ACCOUNT";
/// Entra ID accounts: blob endpoint (defaults to the public cloud's).
pub const STORAGE_BLOB_ENDPOINT: &str = "CQRS_STORAGE_BLOB_ENDPOINT";
/// Entra ID accounts: queue endpoint (defaults to the public cloud's).
pub const STORAGE_QUEUE_ENDPOINT: &str = "CQRS_STORAGE_QUEUE_ENDPOINT";
/// Entra ID accounts: client id of the user-assigned identity (also `AZURE_CLIENT_ID`).
pub const STORAGE_CLIENT_ID: &str = "CQRS_STORAGE_CLIENT_ID";
/// Blob endpoint as browsers reach it, when it differs from the one the roles use (Azurite
/// inside a cluster behind a port-forward or ingress). Used only in URLs handed to browsers.
pub const PUBLIC_BLOB_ENDPOINT: &str = "CQRS_PUBLIC_BLOB_ENDPOINT";
/// Comma-separated command queue names of the app.
pub const QUEUES: &str = "CQRS_QUEUES";
/// Comma-separated container names of the app.
pub const CONTAINERS: &str = "CQRS_CONTAINERS";
/// JSON [`Topology`]: every queue with its settings, and the containers.
pub const TOPOLOGY: &str = "CQRS_TOPOLOGY";
/// Workers: the worker role's name.
pub const WORKER_NAME: &str = "CQRS_WORKER_NAME";
/// Workers: the queue this role consumes.
pub const QUEUE: &str = "CQRS_QUEUE";
/// Workers: where messages go after `CQRS_MAX_DEQUEUE_COUNT` attempts.
pub const POISON_QUEUE: &str = "CQRS_POISON_QUEUE";
/// Workers: attempts before a message is poisoned.
pub const MAX_DEQUEUE_COUNT: &str = "CQRS_MAX_DEQUEUE_COUNT";
/// Workers: visibility timeout to use when receiving, in seconds.
pub const VISIBILITY_TIMEOUT: &str = "CQRS_VISIBILITY_TIMEOUT_SECONDS";
/// Workers: this replica's share of `maxMessagesPerSecond` when the process started
/// (absent: no limit).
pub const MAX_MESSAGES_PER_SECOND: &str = "CQRS_MAX_MESSAGES_PER_SECOND";
/// Workers: a file holding this replica's current share (a decimal number, or empty for no
/// limit). The operator keeps it up to date as the replica count changes, so workers re-read
/// it instead of restarting.
pub const RATE_SHARE_FILE: &str = "CQRS_RATE_SHARE_FILE";
/// Local runtime: index of this replica within its role (Kubernetes pods use `HOSTNAME`).
pub const REPLICA: &str = "CQRS_REPLICA";

/// Role values of [`ROLE`].
pub const ROLE_WEB: &str = "web";
/// Role values of [`ROLE`].
pub const ROLE_WORKER: &str = "worker";

/// One queue as the roles see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueTopology {
    /// Queue name.
    pub name: String,
    /// Its poison queue.
    pub poison_queue: String,
    /// Attempts before poisoning.
    pub max_dequeue_count: u32,
    /// Visibility timeout for receivers, in seconds.
    pub visibility_timeout_seconds: u32,
    /// Time-to-live senders give messages, in seconds (-1: never expire).
    pub message_ttl_seconds: i64,
}

/// The app's queues and containers, as [`TOPOLOGY`] carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Command queues.
    pub queues: Vec<QueueTopology>,
    /// Containers (the claim-check container among them).
    pub containers: Vec<String>,
    /// The claim-check container: commands over the threshold travel as blobs in it
    /// ([`crate::claims`]). Absent in apps without queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_container: Option<String>,
    /// Command bodies over this many bytes go through the claim-check container (default
    /// [`crate::claims::DEFAULT_THRESHOLD_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_threshold_bytes: Option<u32>,
}

impl Topology {
    /// The settings of queue `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueTopology> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The claim-check threshold in bytes.
    pub fn claim_threshold(&self) -> u32 {
        self.claim_threshold_bytes
            .unwrap_or(crate::claims::DEFAULT_THRESHOLD_BYTES)
    }

    /// A sender of commands of any size on `account`, when the app has a claim-check
    /// container; without one, every command is sent inline.
    pub fn command_sender(&self, account: &StorageAccount) -> Option<crate::claims::CommandSender> {
        self.claim_container.as_ref().map(|container| {
            crate::claims::CommandSender::new(
                account.clone(),
                container.clone(),
                self.claim_threshold(),
            )
        })
    }
}

/// Why a role could not read its environment.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A required variable is missing.
    #[error("environment variable {0} is not set (the operator or `cqrs-operator local` sets it)")]
    Missing(&'static str),
    /// A variable has a value that cannot be used.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// Variable name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The storage account could not be set up from the variables.
    #[error(transparent)]
    Storage(#[from] Error),
}

/// Typed access to the contract variables of one process.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An explicit set of variables (tests, the local runtime).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable, if set and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required variable.
    pub fn require(&self, name: &'static str) -> Result<&str, ContractError> {
        self.get(name).ok_or(ContractError::Missing(name))
    }

    /// A variable parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ContractError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e: T::Err| ContractError::Invalid {
                    name,
                    reason: format!("{v:?}: {e}"),
                }),
        }
    }

    /// The app's topology ([`TOPOLOGY`]).
    pub fn topology(&self) -> Result<Topology, ContractError> {
        let raw = self.require(TOPOLOGY)?;
        serde_json::from_str(raw).map_err(|e| ContractError::Invalid {
            name: TOPOLOGY,
            reason: e.to_string(),
        })
    }

    /// The blob endpoint browsers use, if it differs from the roles' endpoint.
    pub fn public_blob_endpoint(&self) -> Result<Option<Url>, ContractError> {
        self.get(PUBLIC_BLOB_ENDPOINT)
            .map(|v| {
                Url::parse(v).map_err(|e| ContractError::Invalid {
                    name: PUBLIC_BLOB_ENDPOINT,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// The storage account described by the variables: a connection string, or an account
    /// name reached with Entra ID.
    pub fn storage_account(&self, retry: RetrySettings) -> Result<StorageAccount, ContractError> {
        if let Some(cs) = self.get(STORAGE_CONNECTION_STRING) {
            let cs = ConnectionString::parse(cs).map_err(Error::from)?;
            return Ok(StorageAccount::from_connection_string(&cs, retry)?);
        }
        let Some(account) = self.get(STORAGE_ACCOUNT) else {
            return Err(ContractError::Missing(STORAGE_CONNECTION_STRING));
        };
        let endpoint = |name: &'static str| -> Result<Option<Url>, ContractError> {
            self.get(name)
                .map(|v| {
                    Url::parse(v).map_err(|e| ContractError::Invalid {
                        name,
                        reason: e.to_string(),
                    })
                })
                .transpose()
        };
        let endpoints = match (
            endpoint(STORAGE_BLOB_ENDPOINT)?,
            endpoint(STORAGE_QUEUE_ENDPOINT)?,
        ) {
            (Some(b), Some(q)) => Some((b, q)),
            (None, None) => None,
            _ => {
                return Err(ContractError::Invalid {
                    name: STORAGE_BLOB_ENDPOINT,
                    reason: format!(
                        "set both {STORAGE_BLOB_ENDPOINT} and {STORAGE_QUEUE_ENDPOINT}, or neither"
                    ),
                });
            }
        };
        let client_id = self.get(STORAGE_CLIENT_ID).or(self.get("AZURE_CLIENT_ID"));
        let credential = crate::credential::entra_credential(client_id)?;
        Ok(StorageAccount::with_token_credential(
            account, credential, endpoints, retry,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_round_trips_as_json() {
        let topo = Topology {
            queues: vec![QueueTopology {
                name: "registrations".into(),
                poison_queue: "registrations-poison".into(),
                max_dequeue_count: 5,
                visibility_timeout_seconds: 30,
                message_ttl_seconds: -1,
            }],
            containers: vec!["results".into(), "shop-claims".into()],
            claim_container: Some("shop-claims".into()),
            claim_threshold_bytes: None,
        };
        let json = serde_json::to_string(&topo).unwrap();
        assert!(json.contains("\"poisonQueue\":\"registrations-poison\""));
        let env = Env::from_pairs([(TOPOLOGY, json)]);
        assert_eq!(env.topology().unwrap(), topo);
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let env = Env::from_pairs([(MAX_DEQUEUE_COUNT, "five")]);
        let err = env
            .parse_or(MAX_DEQUEUE_COUNT, 5u32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CQRS_MAX_DEQUEUE_COUNT") && err.contains("five"),
            "{err}"
        );
        let err = env
            .storage_account(RetrySettings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(STORAGE_CONNECTION_STRING), "{err}");
    }

    #[test]
    fn a_connection_string_gives_a_shared_key_account() {
        let env = Env::from_pairs([(STORAGE_CONNECTION_STRING, "UseDevelopmentStorage=true")]);
        let account = env.storage_account(RetrySettings::default()).unwrap();
        assert_eq!(account.name(), "devstoreaccount1");
    }
}
