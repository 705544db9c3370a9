//! The app's configuration: the operator's environment contract, plus the app's own
//! optional names for its queues and containers (defaults match `examples/`).

use std::path::PathBuf;
use std::time::Duration;

use cqrs_storage::claims::CommandSender;
use cqrs_storage::contract::{self, ContractError, Env, Topology};
use cqrs_storage::{RetrySettings, StorageAccount};
use url::Url;

/// What both roles need.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Port to listen on.
    pub port: u16,
    /// The storage account.
    pub account: StorageAccount,
    /// Blob endpoint as browsers reach it, when it differs.
    pub public_blob_endpoint: Option<Url>,
    /// The app's queues and containers.
    pub topology: Topology,
    /// Queue of registration commands (`REGISTRATION_QUEUE`, default `registrations`).
    pub registration_queue: String,
    /// Queue of inventory adjustments (`INVENTORY_QUEUE`, default `inventory`).
    pub inventory_queue: String,
    /// Container of result blobs (`RESULTS_CONTAINER`, default `results`).
    pub results_container: String,
    /// Container of read models and indexes (`READMODEL_CONTAINER`, default `readmodels`).
    pub readmodel_container: String,
    /// Sends commands of any size (large ones through the claim-check container).
    pub sender: CommandSender,
}

/// What a worker needs on top.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The queue to consume.
    pub queue: String,
    /// Where failed messages go.
    pub poison_queue: String,
    /// Attempts before poisoning.
    pub max_dequeue_count: u32,
    /// Visibility timeout to receive with.
    pub visibility_timeout: Duration,
    /// The role's total rate limit, if any.
    pub max_messages_per_second: Option<f64>,
    /// File with this replica's current share of the limit.
    pub rate_share_file: Option<PathBuf>,
    /// Concurrent receive loops (`WORKER_RECEIVERS`, default 2).
    pub receivers: usize,
    /// Messages per receive (`WORKER_BATCH`, 1..=32, default 32).
    pub batch: u32,
    /// The app's claim-check container, where large commands wait.
    pub claim_container: Option<String>,
    /// How long messages of the queue live (`None`: forever), which bounds how long their
    /// claim-check blobs are kept.
    pub message_ttl: Option<Duration>,
}

/// Why the configuration is unusable.
pub type ConfigError = ContractError;

fn name_in(
    env: &Env,
    var: &'static str,
    default: &str,
    known: &[String],
    what: &str,
) -> Result<String, ConfigError> {
    let name = env.get(var).unwrap_or(default).to_string();
    if known.contains(&name) {
        Ok(name)
    } else {
        Err(ContractError::Invalid {
            name: var,
            reason: format!(
                "{what} {name:?} is not among the app's {what}s ({}); set {var} or add it to the CqrsApp",
                known.join(", ")
            ),
        })
    }
}

impl AppConfig {
    /// Reads the configuration; `retry` tunes storage calls (fail fast in the web role).
    pub fn from_env(env: &Env, retry: RetrySettings) -> Result<Self, ConfigError> {
        let topology = env.topology()?;
        let queues: Vec<String> = topology.queues.iter().map(|q| q.name.clone()).collect();
        let account = env.storage_account(retry)?;
        let sender = topology
            .command_sender(&account)
            .ok_or_else(|| ContractError::Invalid {
                name: contract::TOPOLOGY,
                reason: "it names no claimContainer (an operator older than the claim check wrote it); upgrade the operator".into(),
            })?;
        Ok(Self {
            port: env.parse_or(contract::PORT, 8080)?,
            account,
            sender,
            public_blob_endpoint: env.public_blob_endpoint()?,
            registration_queue: name_in(
                env,
                "REGISTRATION_QUEUE",
                "registrations",
                &queues,
                "queue",
            )?,
            inventory_queue: name_in(env, "INVENTORY_QUEUE", "inventory", &queues, "queue")?,
            results_container: name_in(
                env,
                "RESULTS_CONTAINER",
                "results",
                &topology.containers,
                "container",
            )?,
            readmodel_container: name_in(
                env,
                "READMODEL_CONTAINER",
                "readmodels",
                &topology.containers,
                "container",
            )?,
            topology,
        })
    }

    /// Message time-to-live for `queue`, in seconds (-1: never expire).
    pub fn message_ttl(&self, queue: &str) -> i64 {
        self.topology
            .queue(queue)
            .map_or(604_800, |q| q.message_ttl_seconds)
    }
}

impl WorkerConfig {
    /// Reads the worker's part of the contract.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let queue = env.require(contract::QUEUE)?.to_string();
        let batch: u32 = env.parse_or("WORKER_BATCH", 32)?;
        if !(1..=32).contains(&batch) {
            return Err(ContractError::Invalid {
                name: "WORKER_BATCH",
                reason: format!("{batch} is outside 1..=32"),
            });
        }
        let receivers: usize = env.parse_or("WORKER_RECEIVERS", 2)?;
        let topology = env.topology()?;
        let message_ttl = topology
            .queue(&queue)
            .map_or(604_800, |q| q.message_ttl_seconds);
        Ok(Self {
            claim_container: topology.claim_container.clone(),
            message_ttl: u64::try_from(message_ttl).ok().map(Duration::from_secs),
            poison_queue: env.get(contract::POISON_QUEUE).map_or_else(
                || cqrs_storage::queues::poison_queue_name(&queue),
                String::from,
            ),
            max_dequeue_count: env.parse_or(contract::MAX_DEQUEUE_COUNT, 5)?,
            visibility_timeout: Duration::from_secs(
                env.parse_or(contract::VISIBILITY_TIMEOUT, 30u64)?.max(1),
            ),
            max_messages_per_second: env
                .get(contract::MAX_MESSAGES_PER_SECOND)
                .map(str::parse)
                .transpose()
                .map_err(|e: std::num::ParseFloatError| ContractError::Invalid {
                    name: contract::MAX_MESSAGES_PER_SECOND,
                    reason: e.to_string(),
                })?,
            rate_share_file: env.get(contract::RATE_SHARE_FILE).map(PathBuf::from),
            receivers: receivers.clamp(1, 16),
            batch,
            queue,
        })
    }
}
