//! The two autoscalers as host processes on the local control plane: KEDA's operator and
//! metrics adapter (as its release manifests run them, minus the webhooks), and
//! `cqrs-operator run`. Each logs to a file in the work directory and is killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use super::PeersArgs;
use k8s_openapi::api::core::v1::Secret;

use crate::common::{wait_for, wait_until};

/// KEDA's namespace: its cluster objects (the certificate Secret) and the metrics Service.
pub const KEDA_NAMESPACE: &str = "keda";
/// The Service name the APIService points at; its endpoint is the adapter's address.
pub const ADAPTER_SERVICE: &str = "keda-metrics-apiserver";
/// The Secret KEDA's certificate rotator keeps its CA and serving certificate in.
const CERT_SECRET: &str = "kedaorg-certs";
/// The port the adapter serves `external.metrics.k8s.io` on.
pub const ADAPTER_PORT: u16 = 6443;

/// One running process.
pub struct Proc {
    /// What it is (for messages).
    pub name: String,
    child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Where it serves Prometheus metrics, when it is ours.
    metrics: Option<SocketAddr>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, work: &Path) -> Result<Self> {
        let log = work.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            metrics: None,
        })
    }

    /// Its peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        let pid = self.child.id().context("the process has exited")?;
        crate::memory::kib(pid, "VmHWM:")
            .map(|kib| kib / 1024.0)
            .with_context(|| format!("cannot read VmHWM of {} (pid {pid})", self.name))
    }

    /// Its resident memory now (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Result<f64> {
        let pid = self.child.id().context("the process has exited")?;
        crate::memory::kib(pid, "VmRSS:")
            .map(|kib| kib / 1024.0)
            .with_context(|| format!("cannot read VmRSS of {} (pid {pid})", self.name))
    }

    /// CPU seconds it has used so far (user + system).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.child.id().context("the process has exited")?;
        cpu_seconds(pid).with_context(|| format!("cannot read the CPU time of {}", self.name))
    }

    /// Its Prometheus metrics now, when it serves them.
    pub async fn metrics_text(&self) -> Option<String> {
        let addr = self.metrics?;
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Fails, with the end of its log, when it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}); its log:\n{}", self.name, self.tail());
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Saves its Prometheus metrics beside its log (probe durations, reconciles, storage
    /// calls), when it serves them.
    pub async fn save_metrics(&self) {
        let Some(addr) = self.metrics else { return };
        if let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await
            && let Ok(text) = response.text().await
        {
            let _ = std::fs::write(self.log.with_extension("metrics.txt"), text);
        }
    }

    /// Stops it (SIGKILL) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// CPU seconds process `pid` has used (user + system, from `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // NB: the command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless it says otherwise).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A KEDA process as its release manifests configure it: watching every namespace, its own
/// objects in `keda`.
fn keda_command(program: &Path, args: &PeersArgs) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("KUBECONFIG", &args.kubeconfig)
        .env("WATCH_NAMESPACE", "")
        .env("POD_NAMESPACE", KEDA_NAMESPACE)
        .env("KEDA_CLUSTER_OBJECT_NAMESPACE", KEDA_NAMESPACE)
        .env_remove("KUBERNETES_SERVICE_HOST");
    cmd
}

/// KEDA's operator: certificates generated and rotated by itself (as its release manifests
/// run it), serving its gRPC metrics service on `grpc` for the adapter.
fn operator_command(args: &PeersArgs, certs: &Path, grpc: SocketAddr) -> Result<Command> {
    let mut cmd = keda_command(&args.keda_operator, args);
    cmd.args([
        "--leader-elect=false",
        "--zap-log-level=info",
        "--zap-encoder=console",
        "--enable-cert-rotation=true",
        "--enable-webhook-patching=false",
    ])
    .arg(format!("--cert-dir={}", certs.display()))
    .arg(format!("--metrics-service-bind-address={grpc}"))
    .arg(format!("--metrics-bind-address={}", free_addr()?))
    .arg(format!("--health-probe-bind-address={}", free_addr()?));
    Ok(cmd)
}

/// Waits for KEDA's certificate Secret to hold its four keys and writes them as files into
/// `dir`, as a Secret volume would.
async fn mount_certificates(client: &kube::Client, dir: &Path) -> Result<()> {
    const KEYS: [&str; 4] = ["ca.crt", "ca.key", "tls.crt", "tls.key"];
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), KEDA_NAMESPACE);
    let data = wait_for(
        "KEDA's operator to store its certificates in Secret keda/kedaorg-certs",
        Duration::from_secs(90),
        || async {
            let data = secrets.get_opt(CERT_SECRET).await.ok().flatten()?.data?;
            KEYS.iter()
                .all(|k| data.get(*k).is_some_and(|v| !v.0.is_empty()))
                .then_some(data)
        },
    )
    .await?;
    for key in KEYS {
        std::fs::write(dir.join(key), &data[key].0)?;
    }
    Ok(())
}

/// KEDA's operator and metrics adapter.
pub struct Keda {
    pub operator: Proc,
    pub adapter: Proc,
}

impl Keda {
    /// Starts the operator, which generates its certificates into the Secret
    /// `keda/kedaorg-certs` and points the APIService's caBundle at their CA; writes the
    /// Secret's keys into `<work>/keda-certs` as the kubelet mounts it into both pods; then
    /// starts the adapter.
    pub async fn start(args: &PeersArgs, client: &kube::Client, work: &Path) -> Result<Self> {
        let certs = work.join("keda-certs");
        std::fs::create_dir_all(&certs)?;
        let grpc = free_addr()?;
        let mut operator =
            Proc::spawn("keda-operator", operator_command(args, &certs, grpc)?, work)?;
        let files = mount_certificates(client, &certs).await;
        if let Err(e) = files {
            operator.check_alive()?;
            bail!("{e:#}; keda-operator's log:\n{}", operator.tail());
        }
        // NB: on its first start KEDA's certificate rotator stores new certificates in the
        // Secret and exits so that its pod is restarted (`RestartOnSecretRefresh`); restart it
        // as the kubelet would.
        let exited = tokio::time::timeout(Duration::from_secs(10), operator.child.wait()).await;
        if let Ok(status) = exited {
            let status = status?;
            if !status.success() {
                bail!(
                    "keda-operator exited ({status}); its log:\n{}",
                    operator.tail()
                );
            }
            operator = Proc::spawn(
                "keda-operator-restarted",
                operator_command(args, &certs, grpc)?,
                work,
            )?;
        }
        let kubeconfig = args.kubeconfig.display().to_string();
        let cert_dir = certs.display().to_string();
        let mut cmd = keda_command(&args.keda_adapter, args);
        cmd.args([
            format!("--secure-port={ADAPTER_PORT}"),
            format!("--bind-address={}", args.adapter_ip),
            format!("--cert-dir={cert_dir}"),
            format!("--client-ca-file={cert_dir}/ca.crt"),
            format!("--tls-cert-file={cert_dir}/tls.crt"),
            format!("--tls-private-key-file={cert_dir}/tls.key"),
            format!("--lister-kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--metrics-service-address={grpc}"),
            format!(
                "--metrics-service-grpc-authority=keda-operator.{KEDA_NAMESPACE}.svc.cluster.local"
            ),
            format!("--port={}", free_addr()?.port()),
            "--zap-log-level=info".to_owned(),
        ]);
        let adapter = Proc::spawn("keda-adapter", cmd, work)?;
        Ok(Self { operator, adapter })
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.operator.check_alive()?;
        self.adapter.check_alive()
    }

    pub async fn stop(self) {
        self.operator.stop().await;
        self.adapter.stop().await;
    }
}

/// `cqrs-operator run`, watching the benchmark's namespace.
pub async fn cqrs_operator(args: &PeersArgs, namespace: &str, work: &Path) -> Result<Proc> {
    let metrics = free_addr()?;
    let mut cmd = Command::new(args.bin_dir.join("cqrs-operator"));
    cmd.args(["run", "--log-format", "json", "--leader-election", "false"])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--watch-namespace", namespace])
        .env("KUBECONFIG", &args.kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let mut proc = Proc::spawn("cqrs-operator", cmd, work)?;
    proc.metrics = Some(metrics);
    let http = reqwest::Client::new();
    let url = format!("http://{metrics}/readyz");
    let ready = wait_until("cqrs-operator's /readyz", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    if let Err(e) = ready {
        proc.check_alive()?;
        bail!("{e}; its log:\n{}", proc.tail());
    }
    Ok(proc)
}
