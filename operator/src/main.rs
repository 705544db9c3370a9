//! `cqrs-operator`: the Kubernetes operator, its local runtime, and CRD tooling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use kube::CustomResourceExt;

use cqrs_operator::crd::CqrsApp;
use cqrs_operator::k8s::{self, RunOptions};
use cqrs_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    version,
    about = "Runs CqrsApps (queues, blobs, web and autoscaled worker roles) on Kubernetes or on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster).
    Run(Box<RunArgs>),
    /// Run one CqrsApp on this machine: storage in Azurite (or any account), roles as child
    /// processes scaled like pods.
    Local(LocalArgs),
    /// Print the CqrsApp CustomResourceDefinition (the same YAML the Helm chart ships).
    Crd {
        /// Print the field reference as a Markdown table instead (used for the README).
        #[arg(long)]
        markdown: bool,
    },
    /// See the messages of a queue's poison queue, or move them back onto the queue.
    Poison {
        #[command(subcommand)]
        action: PoisonAction,
    },
    /// Check a CqrsApp manifest the way the operator does, without a cluster.
    Validate {
        /// The manifest file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PoisonAction {
    /// Show the first messages of `<queue>-poison` without changing them.
    List {
        #[command(flatten)]
        target: PoisonTarget,
        /// How many to show (1-32).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=32))]
        max: u32,
    },
    /// Move messages of `<queue>-poison` back onto `<queue>`, oldest first, text byte for
    /// byte: each is copied, then deleted (an interrupted redrive duplicates, never loses; run
    /// it again to finish).
    Redrive {
        #[command(flatten)]
        target: PoisonTarget,
        /// Move at most this many.
        #[arg(long, default_value_t = 1000)]
        max: usize,
        /// Only list what would be moved.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct PoisonTarget {
    /// The queue (its poison queue is `<queue>-poison`).
    #[arg(long)]
    queue: String,
    /// Local: the CqrsApp manifest (storage through --connection-string).
    #[arg(
        short = 'f',
        long = "file",
        conflicts_with = "app",
        required_unless_present = "app"
    )]
    file: Option<PathBuf>,
    /// Local: where the app's storage is.
    #[command(flatten)]
    storage: StorageArgs,
    /// Cluster: the CqrsApp's name; its storage settings and Secret are read with your
    /// kubeconfig's permissions.
    #[arg(long)]
    app: Option<String>,
    /// Cluster: the CqrsApp's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

/// The storage of a local app.
#[derive(clap::Args)]
struct StorageArgs {
    /// Storage connection string (default: Azurite on its default ports).
    #[arg(
        long,
        env = "CQRS_STORAGE_CONNECTION_STRING",
        hide_env_values = true,
        default_value = "UseDevelopmentStorage=true"
    )]
    connection_string: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "CQRS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so several replicas can run (only the leader acts).
    #[arg(long, env = "CQRS_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (default: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "cqrs-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Azure Resource Manager endpoint (sovereign clouds).
    #[arg(long, env = "CQRS_ARM_ENDPOINT")]
    arm_endpoint: Option<url::Url>,
    /// Log line format.
    #[arg(long, value_enum, env = "CQRS_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Seconds between provisioning passes of an app whose spec and Secret did not change
    /// (a changed spec or Secret is provisioned at once).
    #[arg(long, env = "CQRS_PROVISION_INTERVAL", default_value = "600")]
    provision_interval: u64,
    /// Give up if the Kubernetes API does not answer within this many seconds at start-up.
    #[arg(long, default_value = "5")]
    connect_timeout: u64,
}

#[derive(clap::Args)]
struct LocalArgs {
    /// The CqrsApp manifest.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Executable of a role: `web=<path>`, `<worker>=<path>`, or `worker=<path>` for every
    /// worker role without its own.
    #[arg(long = "run", value_name = "ROLE=PATH", value_parser = parse_run, required = true)]
    runs: Vec<(String, PathBuf)>,
    #[command(flatten)]
    storage: StorageArgs,
    /// Where /status, /metrics and /healthz are served.
    #[arg(long, default_value = "127.0.0.1:9090")]
    status_addr: SocketAddr,
    /// Port of the web role (default: spec.web.port).
    #[arg(long)]
    web_port: Option<u16>,
}

fn parse_run(value: &str) -> Result<(String, PathBuf), String> {
    let (role, path) = value.split_once('=').ok_or_else(|| {
        format!("{value:?} is not ROLE=PATH (e.g. web=target/debug/reference-app)")
    })?;
    if role.is_empty() || path.is_empty() {
        return Err(format!("{value:?} is not ROLE=PATH"));
    }
    Ok((role.to_string(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> ExitCode {
    // NB: two TLS crypto providers are linked (kube brings ring, the Azure SDK aws-lc-rs);
    // rustls needs one chosen explicitly. Fails only if one is already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Local(args) => local(args).await,
        Command::Crd { markdown: true } => {
            print!("{}", cqrs_operator::crd::reference::markdown());
            ExitCode::SUCCESS
        }
        Command::Crd { markdown: false } => match serde_yaml::to_string(&CqrsApp::crd()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Poison { action } => poison(action).await,
        Command::Validate { file } => match cqrs_operator::manifest::load(&file) {
            Ok(app) => {
                println!(
                    "{}: CqrsApp {} is valid",
                    file.display(),
                    app.metadata.name.unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format);
    let client = match k8s::connect(Duration::from_secs(args.connect_timeout)).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let identity = args.identity.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("cqrs-operator-{}", std::process::id()))
    });
    let options = RunOptions {
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        watch_namespace: args.watch_namespace,
        arm_endpoint: args.arm_endpoint,
        provision_interval: Duration::from_secs(args.provision_interval),
    };
    match k8s::run(client, options).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn local(args: LocalArgs) -> ExitCode {
    telemetry::init(LogFormat::Text);
    let connection_string =
        match cqrs_storage::ConnectionString::parse(&args.storage.connection_string) {
            Ok(cs) => cs,
            Err(e) => {
                eprintln!("error: --connection-string: {e}");
                return ExitCode::FAILURE;
            }
        };
    let options = cqrs_operator::local::LocalOptions {
        manifest: args.file,
        runs: args.runs.into_iter().collect(),
        connection_string,
        status_addr: args.status_addr,
        web_port: args.web_port,
    };
    match cqrs_operator::local::run(options, cqrs_operator::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn poison(action: PoisonAction) -> ExitCode {
    use cqrs_operator::poison::{self, Source};
    let target = match &action {
        PoisonAction::List { target, .. } | PoisonAction::Redrive { target, .. } => target,
    };
    let source = match (&target.file, &target.app) {
        (Some(file), _) => Source::Manifest {
            file: file.clone(),
            connection_string: target.storage.connection_string.clone(),
        },
        (None, Some(app)) => Source::Cluster {
            namespace: target.namespace.clone(),
            app: app.clone(),
        },
        (None, None) => {
            eprintln!("error: name the app: -f <manifest> (local) or --app <name> (cluster)");
            return ExitCode::from(2);
        }
    };
    let queue = &target.queue;
    let result = async {
        let (name, spec, account) = poison::connect(&source).await?;
        poison::check_queue(&name, &spec, queue)?;
        match &action {
            PoisonAction::List { max, .. } => {
                let mut messages = account.peek_poison(queue, *max).await?;
                if let Some(container) = spec.claim_container(&name) {
                    account
                        .read_poison_records(&container, queue, &mut messages)
                        .await;
                }
                Ok(poison::listing(queue, &messages))
            }
            PoisonAction::Redrive { max, dry_run, .. } => {
                let records = spec.claim_container(&name);
                poison::redrive(&account, queue, *max, *dry_run, records.as_deref()).await
            }
        }
    }
    .await;
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
