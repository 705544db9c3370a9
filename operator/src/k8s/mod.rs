//! The Kubernetes controller: `cqrs-operator run`.

mod applied;
mod apply;
pub mod children;
mod cleanup;
mod poison_counts;
mod provision;
pub mod reconcile;
pub mod redrive;
pub mod requests;
pub mod scaling;
pub mod storage;
mod triggers;
pub mod workers;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};

use crate::autoscale::Scalers;
use crate::crd::CqrsApp;
use crate::metrics::Metrics;
use scaling::ScalerKey;
use storage::{Connected, StorageConnector};

/// Default of `--provision-interval`: how often an unchanged app's storage is provisioned
/// again (catches queues or containers deleted behind the operator's back). Every pass is
/// several storage calls, and ARM ones for `storage.azure`, which ARM throttles.
pub const PROVISION_INTERVAL: Duration = Duration::from_secs(600);

/// How many apps are reconciled at once: enough to keep a thousand new apps moving, few
/// enough that their first reconciliations (storage provisioning, a dozen API writes each) do
/// not open hundreds of connections to the API server and the storage account at once.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// An app's storage as last provisioned.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The connection made then.
    pub connected: Connected,
    /// The app's `metadata.generation` then.
    pub generation: Option<i64>,
    /// The storage settings' revision then (the Secret's resourceVersion).
    pub revision: Option<String>,
    /// When.
    pub at: std::time::Instant,
}

/// Everything a reconciliation needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events about CqrsApps.
    pub recorder: Recorder,
    /// Reaches each app's storage.
    pub storage: Arc<dyn StorageConnector>,
    /// The worker roles' probe loops.
    pub scalers: Scalers<ScalerKey>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per app, for the retry backoff.
    pub failures: Mutex<HashMap<ObjectRef<CqrsApp>, u32>>,
    /// Each app's last successful provisioning: reused until the spec or the Secret changes or
    /// `provision_interval` has passed, and for cleanup after the Secret is gone.
    pub provisioned: Mutex<HashMap<ObjectRef<CqrsApp>, Provisioned>>,
    /// How often storage is provisioned again when nothing changed.
    pub provision_interval: Duration,
    /// Each storage account's CORS lock and memo (see [`cqrs_storage::CorsLock`]).
    pub account_locks: Mutex<HashMap<String, Arc<cqrs_storage::CorsLock>>>,
    /// What was last applied to each child, so unchanged children are not sent again.
    pub applied: applied::Applied,
    /// The watch cache of the apps' Deployments (template and most managed fields pruned):
    /// what the probe loops read replicas from and the reconciler compares with. Empty when
    /// nothing feeds it (unit tests): readers then ask the API server.
    pub deployments: reflector::Store<Deployment>,
    /// The watch cache of the apps' Services.
    pub services: reflector::Store<Service>,
    /// Poison-queue depths as last read for status.
    pub poison_counts: poison_counts::PoisonCounts,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("scalers", &self.scalers)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for reconciling with `client`.
    pub fn new(
        client: Client,
        storage: Arc<dyn StorageConnector>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            storage,
            scalers: Scalers::default(),
            metrics,
            failures: Mutex::default(),
            provisioned: Mutex::default(),
            provision_interval: PROVISION_INTERVAL,
            account_locks: Mutex::default(),
            applied: applied::Applied::new(PROVISION_INTERVAL),
            deployments: reflector::store().0,
            services: reflector::store().0,
            poison_counts: Default::default(),
        }
    }

    /// The same context, provisioning (and applying unchanged children) again every
    /// `interval` when nothing changed.
    pub fn with_provision_interval(mut self, interval: Duration) -> Self {
        self.provision_interval = interval;
        self.applied = applied::Applied::new(interval);
        self
    }

    /// The same context reading children from these watch caches.
    pub fn with_stores(
        mut self,
        deployments: reflector::Store<Deployment>,
        services: reflector::Store<Service>,
    ) -> Self {
        self.deployments = deployments;
        self.services = services;
        self
    }

    /// Whether `store`'s watch has delivered its first full list (a store nothing feeds never
    /// is): only then does a name missing from it mean the object is missing.
    pub fn filled<K>(store: &reflector::Store<K>) -> bool
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        use futures::FutureExt as _;
        store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|ready| ready.is_ok())
    }

    /// Stops every probe loop of app `app` in `namespace` (and forgets what was applied for
    /// it, so the next reconcile writes everything again).
    pub fn stop_app(&self, namespace: &str, app: &str) {
        self.scalers.retain(|key| !key.of_app(namespace, app));
        self.applied.forget_app(namespace, app);
    }

    /// The CORS lock of the account behind `probe_id` (see [`cqrs_storage::CorsLock`]).
    pub fn account_lock(&self, probe_id: &str) -> Arc<cqrs_storage::CorsLock> {
        let mut locks = self.account_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(probe_id.to_string()).or_default().clone()
    }
}

/// Settings of `cqrs-operator run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Take part in leader election (needed when more than one replica runs).
    pub leader_election: bool,
    /// Namespace of the Lease (default: the client's namespace).
    pub lease_namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Watch one namespace only (default: all).
    pub watch_namespace: Option<String>,
    /// ARM endpoint override.
    pub arm_endpoint: Option<url::Url>,
    /// How often an unchanged app's storage is provisioned again.
    pub provision_interval: Duration,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable cluster configuration.
    #[error("no Kubernetes cluster configuration found (tried {tried}): {source}")]
    NoConfig {
        /// Where it looked.
        tried: String,
        /// Why none was usable.
        source: kube::config::InferConfigError,
    },
    /// The configuration did not make a client.
    #[error("cannot build a client for {server} (from {tried}): {source}")]
    Client {
        /// The API server.
        server: String,
        /// Where the configuration came from.
        tried: String,
        /// Why.
        source: kube::Error,
    },
    /// The API server refused or failed the first request.
    #[error("cannot reach the Kubernetes API at {server} (from {tried}): {source}")]
    Unreachable {
        /// The API server.
        server: String,
        /// Where the configuration came from.
        tried: String,
        /// Why.
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("the Kubernetes API at {server} (from {tried}) did not answer within {seconds}s")]
    Timeout {
        /// The API server.
        server: String,
        /// Where the configuration came from.
        tried: String,
        /// The limit.
        seconds: u64,
    },
    /// The metrics port could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Lease could not be used.
    #[error("leader election: cannot use Lease {namespace}/{name}: {source}")]
    Lease {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Leadership ended (lost, or the lease manager stopped).
    #[error("leader election: {0}")]
    Leadership(&'static str),
}

/// Connects to the cluster, checking that the API server answers; the error names the
/// kubeconfig and server it tried.
pub async fn connect(timeout: Duration) -> Result<Client, RunError> {
    let source = match std::env::var("KUBECONFIG") {
        Ok(path) if !path.is_empty() => format!("kubeconfig {path} (from $KUBECONFIG)"),
        _ if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            "the in-cluster service account".to_string()
        }
        _ => "kubeconfig ~/.kube/config".to_string(),
    };
    let config = kube::Config::infer()
        .await
        .map_err(|e| RunError::NoConfig {
            tried: source.clone(),
            source: e,
        })?;
    let server = config.cluster_url.to_string();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| RunError::Client {
            server: server.clone(),
            tried: source.clone(),
            source: e,
        })?
        .with_layer(&tower::util::MapRequestLayer::new(requests::count))
        .build();
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(%server, version = %version.git_version, "connected to the Kubernetes API");
            Ok(client)
        }
        Ok(Err(e)) => Err(RunError::Unreachable {
            server,
            tried: source,
            source: e,
        }),
        Err(_) => Err(RunError::Timeout {
            server,
            tried: source,
            seconds: timeout.as_secs(),
        }),
    }
}

/// Runs the operator until SIGTERM/Ctrl-C (returns `Ok`) or a fatal error.
pub async fn run(client: Client, options: RunOptions) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let (addr, server) = crate::metrics::spawn_server(
        options.metrics_addr,
        crate::metrics::routes(metrics.clone()),
    )
    .await
    .map_err(|source| RunError::Metrics {
        addr: options.metrics_addr,
        source,
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    metrics.set_ready(true);

    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);

    let mut leadership = None;
    if options.leader_election {
        let namespace = options
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &options.lease_name)
                .with_namespace(&namespace)
                .with_identity(&options.identity)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .map_err(|e| RunError::Lease {
                    namespace: namespace.clone(),
                    name: options.lease_name.clone(),
                    source: e,
                })?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(lease = %options.lease_name, %namespace, identity = %options.identity, "waiting to become the leader");
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => if changed.is_err() {
                    return Err(RunError::Leadership("the lease manager stopped"));
                },
                () = &mut shutdown => {
                    drop(leader);
                    let _ = task.await;
                    server.abort();
                    return Ok(());
                }
            }
        }
        tracing::info!(identity = %options.identity, "became the leader");
        leadership = Some((leader, task));
    }

    let reporter = Reporter {
        controller: "cqrs-operator".into(),
        instance: Some(options.identity.clone()),
    };
    let storage = Arc::new(storage::ClusterStorage::new(
        client.clone(),
        options.arm_endpoint.clone(),
    ));
    let (deployment_cache, deployment_writer) = reflector::store();
    let (service_cache, service_writer) = reflector::store();
    let ctx = Arc::new(
        Context::new(client.clone(), storage, metrics.clone(), reporter)
            .with_provision_interval(options.provision_interval)
            .with_stores(deployment_cache, service_cache),
    );
    let (apps, deployments, services): (Api<CqrsApp>, Api<Deployment>, Api<Service>) =
        match &options.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=cqrs-operator");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // NB: react to intent, not to our own writes: a status patch changes neither the
    // generation nor the finalizers, so it does not reconcile the app again (the resync and
    // owned objects' changes do). Graceful deletion bumps the generation; a redrive request is
    // an annotation, so it is watched for on its own.
    let (reader, writer) = reflector::store();
    let app_events = watcher(apps, watcher::Config::default().any_semantic())
        .default_backoff()
        // NB: nothing reads an app's managed fields; a thousand apps' are megabytes.
        .modify(|app: &mut CqrsApp| app.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers::<CqrsApp>)
                .combine(redrive::requested),
            Default::default(),
        );
    // NB: the children's watches feed caches the reconciler and the probe loops read, so a
    // resync or a probe tick asks the API server nothing; the cached copies drop what nobody
    // reads (pod templates, managed fields but the one asked about).
    let deployment_events = triggers::changed(
        watcher(deployments, children.clone())
            .default_backoff()
            .modify(workers::compact_for_cache)
            .reflect(deployment_writer),
        triggers::deployment_signature,
    );
    let service_events = watcher(services, children)
        .default_backoff()
        .modify(|s: &mut Service| s.metadata.managed_fields = None)
        .reflect(service_writer)
        .touched_objects();
    let controller = Controller::for_stream(app_events, reader)
        // NB: a scaling change patches a worker Deployment, whose watch event reconciles the
        // app and refreshes its status; the periodic resync catches the rest.
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    tokio::pin!(controller);

    let outcome = match &mut leadership {
        Some((leader, _)) => tokio::select! {
            () = &mut controller => Ok(()),
            () = &mut shutdown => Ok(()),
            _ = lost(leader) => Err(RunError::Leadership("lost the lease; exiting so a standby takes over")),
        },
        None => tokio::select! {
            () = &mut controller => Ok(()),
            () = &mut shutdown => Ok(()),
        },
    };
    tracing::info!("stopping: finishing running reconciliations");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), &mut controller).await;
    ctx.scalers.retain(|_| false);
    if let Some((leader, task)) = leadership {
        drop(leader); // releases the Lease
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    server.abort();
    outcome
}

async fn lost(leader: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if leader.changed().await.is_err() || !*leader.borrow() {
            return;
        }
    }
}
