//! Role processes on this machine: each replica is a child process that is restarted with
//! backoff when it dies, whose output lines are prefixed with its role and replica, and that is
//! stopped with SIGTERM (then SIGKILL after a grace period).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::autoscale::{ScaleTarget, TargetError};
use crate::plan::format_rate_share;

/// How to start one process of a role.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Role label for log prefixes (`web`, or the worker's name).
    pub role: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments (the role's `args` in the CqrsApp).
    pub args: Vec<String>,
    /// Its environment (the contract plus the role's `env`); nothing else is inherited but
    /// `PATH`, `HOME`, `RUST_LOG` and `TMPDIR`.
    pub env: Vec<(String, String)>,
    /// How long a replica may take to stop after SIGTERM.
    pub grace: Duration,
}

/// What one replica is doing, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    /// Role.
    pub role: String,
    /// Index within the role.
    pub replica: usize,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Port it listens on.
    pub port: u16,
    /// Times it was restarted after dying.
    pub restarts: u32,
}

struct Replica {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    info: Arc<Mutex<ReplicaInfo>>,
}

/// The replicas of one role.
pub struct RoleProcesses {
    launch: Launch,
    /// Picks the port of each new replica (`None`: a free loopback port).
    fixed_port: Option<u16>,
    replicas: tokio::sync::Mutex<BTreeMap<usize, Replica>>,
    /// Replicas told to stop that may still be finishing their work.
    stopping: Mutex<Vec<JoinHandle<()>>>,
    rate_file: Option<PathBuf>,
}

impl std::fmt::Debug for RoleProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleProcesses")
            .field("role", &self.launch.role)
            .finish_non_exhaustive()
    }
}

impl RoleProcesses {
    /// Replicas of `launch`, each on `fixed_port` or a free port, with the rate share in
    /// `rate_file` when the role is rate limited.
    pub fn new(launch: Launch, fixed_port: Option<u16>, rate_file: Option<PathBuf>) -> Self {
        Self {
            launch,
            fixed_port,
            replicas: tokio::sync::Mutex::default(),
            stopping: Mutex::default(),
            rate_file,
        }
    }

    /// Starts or stops replicas until `n` run (new ones take the lowest free indexes; the
    /// highest go first). Stopped replicas finish their in-flight work in the background.
    pub async fn scale_to(&self, n: usize) -> Result<(), TargetError> {
        let mut replicas = self.replicas.lock().await;
        while replicas.len() > n {
            let Some((_, replica)) = replicas.pop_last() else {
                break;
            };
            let _ = replica.stop.send(true);
            let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
            stopping.retain(|t| !t.is_finished());
            stopping.push(replica.task);
        }
        let mut index = 0;
        while replicas.len() < n {
            while replicas.contains_key(&index) {
                index += 1;
            }
            let port = match self.fixed_port {
                Some(port) => port,
                None => free_port().map_err(|e| TargetError::new("find a free port", e))?,
            };
            let info = Arc::new(Mutex::new(ReplicaInfo {
                role: self.launch.role.clone(),
                replica: index,
                pid: None,
                port,
                restarts: 0,
            }));
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(supervise(
                self.launch.clone(),
                index,
                port,
                info.clone(),
                stopped,
            ));
            replicas.insert(index, Replica { stop, task, info });
        }
        Ok(())
    }

    /// How many replicas run (or are being restarted).
    pub async fn count(&self) -> usize {
        self.replicas.lock().await.len()
    }

    /// Every replica's state.
    pub async fn infos(&self) -> Vec<ReplicaInfo> {
        self.replicas
            .lock()
            .await
            .values()
            .map(|r| r.info.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Stops every replica gracefully and waits for all of them (and earlier stops) to exit.
    pub async fn stop_all(&self) {
        let _ = self.scale_to(0).await;
        let stopping =
            std::mem::take(&mut *self.stopping.lock().unwrap_or_else(|p| p.into_inner()));
        for task in stopping {
            let _ = task.await;
        }
    }
}

#[async_trait]
impl ScaleTarget for RoleProcesses {
    async fn current_replicas(&self) -> Result<i32, TargetError> {
        Ok(i32::try_from(self.count().await).unwrap_or(i32::MAX))
    }

    async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError> {
        self.scale_to(usize::try_from(replicas.max(0)).unwrap_or(0))
            .await
    }

    async fn set_rate_share(&self, share: Option<f64>) -> Result<(), TargetError> {
        let Some(path) = &self.rate_file else {
            return Ok(());
        };
        // Written whole to a sibling and renamed, so a worker never reads half a number.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format_rate_share(share))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| TargetError::new(format!("write {}", path.display()), e))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Delay before restarting a replica that died: 1 s doubling to 30 s, reset once it has run
/// for 10 s.
fn restart_delay(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.min(5)).min(Duration::from_secs(30))
}

async fn supervise(
    launch: Launch,
    index: usize,
    port: u16,
    info: Arc<Mutex<ReplicaInfo>>,
    mut stop: watch::Receiver<bool>,
) {
    let label = if launch.role == "web" && index == 0 {
        "web".to_string()
    } else {
        format!("{}-{index}", launch.role)
    };
    let mut consecutive = 0;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&launch, index, port, &label) {
            Ok(child) => child,
            Err(e) => {
                eprintln!("[{label}] cannot start {}: {e}", launch.program.display());
                if wait_or_stop(restart_delay(consecutive), &mut stop).await {
                    return;
                }
                consecutive += 1;
                continue;
            }
        };
        info.lock().unwrap_or_else(|p| p.into_inner()).pid = child.id();
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            terminate(&mut child, launch.grace, &label).await;
            info.lock().unwrap_or_else(|p| p.into_inner()).pid = None;
            return;
        };
        info.lock().unwrap_or_else(|p| p.into_inner()).pid = None;
        if *stop.borrow() {
            return;
        }
        consecutive = if started.elapsed() > Duration::from_secs(10) {
            0
        } else {
            consecutive + 1
        };
        let delay = restart_delay(consecutive);
        let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        eprintln!(
            "[{label}] exited ({how}); restarting in {}s",
            delay.as_secs()
        );
        info.lock().unwrap_or_else(|p| p.into_inner()).restarts += 1;
        if wait_or_stop(delay, &mut stop).await {
            return;
        }
    }
}

/// Sleeps `delay`; true if a stop came first.
async fn wait_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

fn spawn(launch: &Launch, index: usize, port: u16, label: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args).env_clear();
    for name in ["PATH", "HOME", "RUST_LOG", "TMPDIR"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for (name, value) in &launch.env {
        cmd.env(name, value);
    }
    cmd.env(cqrs_storage::contract::PORT, port.to_string())
        .env(cqrs_storage::contract::REPLICA, index.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // NB: its own process group, so a Ctrl-C in the terminal reaches only the runtime,
        // which then stops the children in order.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        prefix_lines(out, label.to_string());
    }
    if let Some(err) = child.stderr.take() {
        prefix_lines(err, label.to_string());
    }
    Ok(child)
}

/// Copies a child's output to our stderr, line by line, prefixed with `[label]`.
fn prefix_lines(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static, label: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{label}] {line}");
        }
    });
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
async fn terminate(child: &mut Child, grace: Duration, label: &str) {
    let Some(pid) = child.id() else { return };
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    if kill(pid, Signal::SIGTERM).is_err() {
        let _ = child.kill().await;
        return;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) if !status.success() => eprintln!("[{label}] stopped ({status})"),
        Ok(_) => {}
        Err(_) => {
            eprintln!(
                "[{label}] did not stop within {}s of SIGTERM; killing it",
                grace.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}
