//! `cqrs-operator local`: one CqrsApp on this machine, no cluster.
//!
//! The same validation, storage plan, environment contract, scaler and probe loop as on
//! Kubernetes; roles are child processes instead of pods (see [`process`]).

pub mod process;
mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cqrs_storage::{ConnectionString, Provisioner, RetrySettings, StorageAccount};

use crate::autoscale::{ScaleObserver, Scalers, Tick, WorkerScaling};
use crate::crd::{CqrsApp, CqrsAppSpec};
use crate::manifest::{self, ManifestError};
use crate::metrics::Metrics;
use crate::plan::{self, EnvSource, Role, StorageAccess};
use process::{Launch, RoleProcesses};

/// Key of `--run` that applies to every worker role without its own.
pub const ANY_WORKER: &str = "worker";

/// Settings of `cqrs-operator local`.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The CqrsApp manifest.
    pub manifest: PathBuf,
    /// Executable per role: `web`, a worker's name, or `worker` for all workers.
    pub runs: BTreeMap<String, PathBuf>,
    /// The storage account (Azurite by default).
    pub connection_string: ConnectionString,
    /// Where `/status`, `/metrics` and `/healthz` are served.
    pub status_addr: SocketAddr,
    /// Port of the web role (default: `spec.web.port`).
    pub web_port: Option<u16>,
}

/// Why the local runtime could not run the app.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A role has no executable.
    #[error("no executable for role {role}: pass --run {role}=<path>{hint}")]
    MissingRun {
        /// The role.
        role: String,
        /// How else to give one.
        hint: &'static str,
    },
    /// `--run` names something that is not a role of the app.
    #[error("--run {role}=...: the app has no role {role:?} (roles: {known})")]
    UnknownRun {
        /// What was given.
        role: String,
        /// The app's roles.
        known: String,
    },
    /// An executable does not exist.
    #[error("--run {role}={path}: no such file")]
    NoSuchExecutable {
        /// The role.
        role: String,
        /// The path.
        path: String,
    },
    /// Storage could not be reached or provisioned.
    #[error("storage: {0}")]
    Storage(#[from] cqrs_storage::Error),
    /// The status port could not be bound.
    #[error(
        "cannot serve the status on {addr}: {source} (is another `cqrs-operator local` running? use --status-addr)"
    )]
    Status {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The web port is taken.
    #[error(
        "port {port} for the web role is in use: {source} (stop what uses it, or pass --web-port)"
    )]
    WebPort {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// A temporary directory could not be made.
    #[error("cannot create a working directory: {0}")]
    WorkDir(std::io::Error),
}

/// Prints what of the spec only matters on Kubernetes, once.
fn notice_ignored(spec: &CqrsAppSpec) {
    let mut ignored = Vec::new();
    if let Some(web) = &spec.web {
        ignored.push("web.image".to_string());
        if web.resources.is_some() {
            ignored.push("web.resources".into());
        }
        ignored.push("web.service".into());
        if web.replicas > 1 {
            ignored.push(format!(
                "web.replicas ({}; one web process runs locally)",
                web.replicas
            ));
        }
    }
    for w in &spec.workers {
        ignored.push(format!("workers[{}].image", w.name));
        if w.resources.is_some() {
            ignored.push(format!("workers[{}].resources", w.name));
        }
    }
    if spec.storage.azure.is_some() || spec.storage.connection_secret_ref.is_some() {
        ignored.push("storage (the --connection-string account is used)".into());
    }
    eprintln!(
        "[runtime] notice: ignoring Kubernetes-only settings: {}",
        ignored.join(", ")
    );
}

fn executable(options: &LocalOptions, role: &str, is_worker: bool) -> Result<PathBuf, LocalError> {
    let path = options
        .runs
        .get(role)
        .or_else(|| is_worker.then(|| options.runs.get(ANY_WORKER)).flatten())
        .ok_or_else(|| LocalError::MissingRun {
            role: role.into(),
            hint: if is_worker {
                " or --run worker=<path>"
            } else {
                ""
            },
        })?;
    if !path.is_file() {
        return Err(LocalError::NoSuchExecutable {
            role: role.into(),
            path: path.display().to_string(),
        });
    }
    Ok(path.clone())
}

/// The role's `env` from the CqrsApp, as this machine can provide it: literal values, and
/// for Secret/ConfigMap references the variable of the same name in our own environment.
fn user_env(role: &str, vars: &[k8s_openapi::api::core::v1::EnvVar]) -> Vec<(String, String)> {
    vars.iter()
        .filter_map(|var| match (&var.value, &var.value_from) {
            (Some(value), _) => Some((var.name.clone(), value.clone())),
            (None, Some(_)) => match std::env::var(&var.name) {
                Ok(value) => Some((var.name.clone(), value)),
                Err(_) => {
                    eprintln!("[runtime] notice: {role} env {} comes from a Secret or ConfigMap on Kubernetes; set {} in this environment to pass it", var.name, var.name);
                    None
                }
            },
            (None, None) => Some((var.name.clone(), String::new())),
        })
        .collect()
}

fn contract_env(
    app: &str,
    spec: &CqrsAppSpec,
    role: Role<'_>,
    access: &StorageAccess,
    port: i32,
    rate_file: Option<&str>,
) -> Vec<(String, String)> {
    plan::role_env(app, spec, role, access, port, rate_file)
        .into_iter()
        .filter_map(|e| match e.source {
            EnvSource::Value(v) => Some((e.name, v)),
            EnvSource::Secret(_) => None,
        })
        .collect()
}

struct LocalObserver {
    app: String,
    metrics: Arc<Metrics>,
}

impl ScaleObserver for LocalObserver {
    fn on_tick(&self, tick: &Tick) {
        self.metrics.record_tick("local", &self.app, tick);
        if tick.scaled()
            && let Some(d) = &tick.decision
        {
            eprintln!("[runtime] {}: {}", tick.worker, d.reason);
        }
        if let Some(e) = &tick.error {
            eprintln!("[runtime] {}: {e}", tick.worker);
        }
    }
}

/// Everything `/status` reports from.
pub(crate) struct Running {
    app: CqrsApp,
    web: Option<(Arc<RoleProcesses>, u16)>,
    workers: Vec<(String, Arc<RoleProcesses>)>,
    scalers: Scalers<String>,
    metrics: Arc<Metrics>,
    account: StorageAccount,
}

/// How often the local runtime counts the poison queues (the operator's resync cadence).
const POISON_CHECK: Duration = Duration::from_secs(60);

/// Counts each poison queue every [`POISON_CHECK`]; logs growth with the commands to look at
/// and redrive the messages, and keeps `cqrs_poison_queue_depth` current.
async fn watch_poison(running: Arc<Running>, manifest: String) {
    let name = running.app.metadata.name.clone().unwrap_or_default();
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    loop {
        for queue in &running.app.spec.queues {
            let poison = cqrs_storage::queues::poison_queue_name(&queue.name);
            let count = running
                .account
                .queue_depth(&poison)
                .await
                .ok()
                .map(|d| d.approximate);
            running.metrics.record_poison(
                "local",
                &name,
                [(
                    queue.name.as_str(),
                    count.and_then(|c| i64::try_from(c).ok()),
                )],
            );
            let Some(count) = count else { continue };
            let before = seen.insert(queue.name.clone(), count).unwrap_or(0);
            if count > before {
                eprintln!(
                    "[runtime] {}: {} new message(s) in {poison} ({count} in all); see them: cqrs-operator poison list -f {manifest} --queue {}; put them back: cqrs-operator poison redrive -f {manifest} --queue {}",
                    queue.name,
                    count - before,
                    queue.name,
                    queue.name
                );
            }
        }
        tokio::time::sleep(POISON_CHECK).await;
    }
}

/// Runs the app until `shutdown` resolves, then stops every process gracefully.
pub async fn run(
    options: LocalOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), LocalError> {
    let app = manifest::load(&options.manifest)?;
    let name = app.metadata.name.clone().unwrap_or_default();
    let spec = app.spec.clone();
    // Every role needs an executable before anything starts.
    let known: Vec<String> = spec
        .web
        .iter()
        .map(|_| "web".to_string())
        .chain(spec.workers.iter().map(|w| w.name.clone()))
        .collect();
    for role in options.runs.keys() {
        if role != ANY_WORKER && !known.contains(role) {
            return Err(LocalError::UnknownRun {
                role: role.clone(),
                known: known.join(", "),
            });
        }
    }
    let web_exe = spec
        .web
        .as_ref()
        .map(|_| executable(&options, "web", false))
        .transpose()?;
    let worker_exes = spec
        .workers
        .iter()
        .map(|w| executable(&options, &w.name, true))
        .collect::<Result<Vec<_>, _>>()?;
    notice_ignored(&spec);

    let account = StorageAccount::from_connection_string(
        &options.connection_string,
        RetrySettings::BACKGROUND,
    )?;
    let plan = plan::storage_plan(&format!("local-{name}"), &name, &spec);
    let report = account.provision(&plan, &Default::default()).await?;
    eprintln!(
        "[runtime] storage ready: {} queue(s), {} container(s){}",
        plan.all_queues().len(),
        plan.containers.len(),
        if report.created.is_empty() {
            String::new()
        } else {
            format!(" (created {})", report.created.join(", "))
        }
    );

    let metrics = Arc::new(Metrics::new());
    let status_listener = tokio::net::TcpListener::bind(options.status_addr)
        .await
        .map_err(|source| LocalError::Status {
            addr: options.status_addr,
            source,
        })?;
    let workdir = tempfile::Builder::new()
        .prefix(&format!("cqrs-local-{name}-"))
        .tempdir()
        .map_err(LocalError::WorkDir)?;
    let access = StorageAccess::ConnectionString(options.connection_string.to_connection_string());

    let web = match (&spec.web, web_exe) {
        (Some(web), Some(program)) => {
            let port = options
                .web_port
                .unwrap_or(u16::try_from(web.port).unwrap_or(8080));
            // Fail early with a clear message rather than a crash-looping web role.
            drop(
                std::net::TcpListener::bind(("0.0.0.0", port))
                    .map_err(|source| LocalError::WebPort { port, source })?,
            );
            let mut env = contract_env(&name, &spec, Role::Web, &access, i32::from(port), None);
            env.extend(user_env("web", &web.env));
            let launch = Launch {
                role: "web".into(),
                program,
                args: web.args.clone(),
                env,
                grace: Duration::from_secs(10),
            };
            let processes = Arc::new(RoleProcesses::new(launch, Some(port), None));
            processes.scale_to(1).await.ok();
            Some((processes, port))
        }
        _ => None,
    };

    let scalers = Scalers::<String>::default();
    let observer: Arc<dyn ScaleObserver> = Arc::new(LocalObserver {
        app: name.clone(),
        metrics: metrics.clone(),
    });
    let probe: Arc<dyn cqrs_storage::QueueProbe> = Arc::new(account.clone());
    let mut workers = Vec::new();
    for (worker, program) in spec.workers.iter().zip(worker_exes) {
        let rate_file = worker
            .max_messages_per_second
            .map(|_| workdir.path().join(format!("{}.rate", worker.name)));
        let rate_path = rate_file.as_ref().map(|p| p.display().to_string());
        let mut env = contract_env(
            &name,
            &spec,
            Role::Worker(worker),
            &access,
            0,
            rate_path.as_deref(),
        );
        env.retain(|(k, _)| k != cqrs_storage::contract::PORT);
        env.extend(user_env(&worker.name, &worker.env));
        let visibility = spec.visibility_timeout_of(worker);
        let launch = Launch {
            role: worker.name.clone(),
            program,
            args: worker.args.clone(),
            env,
            grace: Duration::from_secs(u64::from(visibility) + 10),
        };
        let processes = Arc::new(RoleProcesses::new(launch, None, rate_file));
        let settings = WorkerScaling::from(worker);
        let target = processes.clone();
        scalers.ensure(
            worker.name.clone(),
            settings,
            "local",
            probe.clone(),
            move || target,
            observer.clone(),
        );
        workers.push((worker.name.clone(), processes));
    }

    let running = Arc::new(Running {
        app,
        web,
        workers,
        scalers,
        metrics: metrics.clone(),
        account,
    });
    let server = tokio::spawn(status::serve(status_listener, running.clone()));
    if let Some((_, port)) = &running.web {
        eprintln!("[runtime] web role: http://127.0.0.1:{port}");
    }
    eprintln!(
        "[runtime] status: http://{}/status (metrics: /metrics)",
        options.status_addr
    );
    eprintln!(
        "[runtime] poison messages: cqrs-operator poison list -f {0} --queue <queue>; put them back: cqrs-operator poison redrive -f {0} --queue <queue>",
        options.manifest.display()
    );

    let poison = tokio::spawn(watch_poison(
        running.clone(),
        options.manifest.display().to_string(),
    ));
    shutdown.await;
    poison.abort();
    eprintln!("[runtime] stopping: workers finish their in-flight messages");
    running.scalers.retain(|_| false);
    let stops = running.workers.iter().map(|(_, p)| p.stop_all());
    futures::future::join_all(stops).await;
    if let Some((web, _)) = &running.web {
        web.stop_all().await;
    }
    server.abort();
    eprintln!("[runtime] stopped");
    Ok(())
}
