//! The reference app: `reference-app web` or `reference-app worker` (or `CQRS_ROLE`),
//! configured only by the operator's environment contract.

mod config;
mod inventory;
mod messages;
mod metrics;
mod store;
mod web;
mod worker;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use cqrs_storage::RetrySettings;
use cqrs_storage::contract::{self, Env};
use tokio::sync::watch;

use config::{AppConfig, WorkerConfig};
use metrics::AppMetrics;
use web::{Admission, AppState, InventoryCache};
use worker::Worker;
use worker::inventory::Inventory;
use worker::registration::Registrations;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let env = Env::from_process();
    let role = std::env::args()
        .nth(1)
        .or_else(|| env.get(contract::ROLE).map(String::from))
        .unwrap_or_default();
    let result = match role.as_str() {
        "web" => run_web(&env).await,
        "worker" => run_worker(&env).await,
        other => Err(format!(
            "unknown role {other:?}: run `reference-app web` or `reference-app worker` (or set {})",
            contract::ROLE
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Flips to `true` on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// Disables Nagle's algorithm on accepted connections: small responses go out at once.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

async fn listener(port: u16) -> Result<tokio::net::TcpListener, String> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

async fn run_web(env: &Env) -> Result<(), String> {
    let max_in_flight = env
        .parse_or("WEB_MAX_IN_FLIGHT", Admission::DEFAULT_LIMIT)
        .map_err(|e| format!("{e} (the commands the web role lets wait on storage at once: a whole number, at least 1)"))?;
    let config = AppConfig::from_env(env, RetrySettings::INTERACTIVE).map_err(|e| e.to_string())?;
    let scanner_key = env.get("SCANNER_KEY").map(String::from);
    if scanner_key.is_none() {
        tracing::warn!("SCANNER_KEY is not set: inventory commands will be refused (401)");
    }
    let inventory = Arc::new(InventoryCache::default());
    let refresher =
        inventory.spawn_refresher(config.account.clone(), config.readmodel_container.clone());
    let carrier = tokio::spawn(inventory::legacy::follow(
        config.account.clone(),
        config.readmodel_container.clone(),
    ));
    let listener = listener(config.port).await?;
    tracing::info!(port = config.port, "web role listening");
    let metrics = Arc::new(AppMetrics::default());
    let state = Arc::new(AppState {
        config,
        scanner_key,
        inventory: inventory.clone(),
        admission: Admission::new(max_in_flight, metrics.commands_shed.clone()),
        metrics,
    });
    let mut shutdown = shutdown_signal();
    let closing = inventory.clone();
    axum::serve(nodelay(listener), web::router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            // NB: end the event streams, or the graceful shutdown waits for browsers forever.
            closing.close();
        })
        .await
        .map_err(|e| format!("web server failed: {e}"))?;
    refresher.abort();
    carrier.abort();
    Ok(())
}

async fn run_worker(env: &Env) -> Result<(), String> {
    let config = AppConfig::from_env(env, RetrySettings::BACKGROUND).map_err(|e| e.to_string())?;
    let worker_config = WorkerConfig::from_env(env).map_err(|e| e.to_string())?;
    let metrics = Arc::new(AppMetrics::default());
    let listener = listener(config.port).await?;
    let health_metrics = metrics.clone();
    let health = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || async move { health_metrics.encode() }),
        );
    let server = tokio::spawn(async move { axum::serve(nodelay(listener), health).await });
    let shutdown = shutdown_signal();
    let queue = worker_config.queue.clone();
    tracing::info!(%queue, port = config.port, "worker role started");
    let account = config.account.clone();
    if queue == config.registration_queue {
        let email_down = env
            .parse_or(worker::registration::EMAIL_SERVICE_DOWN, false)
            .map_err(|e| format!("{e} (true or false)"))?;
        if email_down {
            tracing::warn!(
                "{}=true: every registration fails and ends in the poison queue",
                worker::registration::EMAIL_SERVICE_DOWN
            );
        }
        let handler = Arc::new(
            Registrations::new(
                account.clone(),
                config.results_container.clone(),
                config.readmodel_container.clone(),
            )
            .with_email_down(email_down),
        );
        let worker =
            Worker::new(&account, worker_config, handler, metrics).map_err(|e| e.to_string())?;
        Arc::new(worker).run(shutdown).await;
    } else if queue == config.inventory_queue {
        let handler = Arc::new(Inventory::new(
            account.clone(),
            config.readmodel_container.clone(),
            config.results_container.clone(),
            metrics.clone(),
        ));
        let worker =
            Worker::new(&account, worker_config, handler, metrics).map_err(|e| e.to_string())?;
        let carrier = tokio::spawn(inventory::legacy::follow(
            account.clone(),
            config.readmodel_container.clone(),
        ));
        Arc::new(worker).run(shutdown).await;
        carrier.abort();
    } else {
        return Err(format!(
            "{}={queue:?} is neither the registration queue ({}) nor the inventory queue ({})",
            contract::QUEUE,
            config.registration_queue,
            config.inventory_queue
        ));
    }
    server.abort();
    tracing::info!("worker role stopped: in-flight messages finished");
    Ok(())
}
