//! The control plane the tests run against, and a namespace of their own for each test.
//!
//! `cargo xtask test` starts a fresh local cluster (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, a kwok node, and a real node: kubelet, containerd,
//! kube-proxy, CoreDNS, in a network namespace of its own) and passes it in
//! `CQRS_TEST_KUBECONFIG`, `CQRS_TEST_K8S_BIN` (kubectl, helm), `CQRS_TEST_CLUSTER_LOGS`,
//! `CQRS_TEST_NODE_LOGS` and `CQRS_TEST_NETNS` (`<namespace path>=<node address>`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The cluster named by the environment.
#[derive(Debug)]
pub struct TestCluster {
    kubeconfig: PathBuf,
    bin: PathBuf,
    logs: PathBuf,
    node_logs: PathBuf,
    /// The network namespace of the cluster.
    pub netns: PathBuf,
}

fn required(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{var} is not set: the cluster tests need a real Kubernetes control plane. \
             Run them with `cargo xtask test` (which builds and starts one), or start one with \
             `cargo xtask cluster up` and set CQRS_TEST_KUBECONFIG to the kubeconfig it prints, \
             CQRS_TEST_K8S_BIN to the bin/ of `cargo xtask cluster env`'s PATH and \
             CQRS_TEST_CLUSTER_LOGS to the logs/ beside the kubeconfig, CQRS_TEST_NODE_LOGS to \
             node/logs/ there and CQRS_TEST_NETNS to /run/netns/cqrs=<the node's address>"
        ),
    }
}

/// The cluster of this test run.
pub fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let netns = required("CQRS_TEST_NETNS").to_string_lossy().into_owned();
        let (netns, _node_ip) = netns
            .split_once('=')
            .unwrap_or_else(|| panic!("CQRS_TEST_NETNS is {netns:?}; it must be <path>=<address>"));
        let cluster = TestCluster {
            kubeconfig: required("CQRS_TEST_KUBECONFIG"),
            bin: required("CQRS_TEST_K8S_BIN"),
            logs: required("CQRS_TEST_CLUSTER_LOGS"),
            node_logs: required("CQRS_TEST_NODE_LOGS"),
            netns: PathBuf::from(netns),
        };
        for tool in ["kubectl", "helm"] {
            assert!(
                cluster.bin.join(tool).exists(),
                "{} is missing: `cargo xtask cluster up` builds it into the cache",
                cluster.bin.join(tool).display()
            );
        }
        cluster
    })
}

impl TestCluster {
    /// `kubectl` on the cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `helm` on the cluster, with its state kept out of the user's home.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        let home = std::env::temp_dir().join("cqrs-test-helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        // NB: kube brings ring and the Azure SDK aws-lc-rs; rustls needs one chosen.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("usable kubeconfig");
        kube::Client::try_from(config).expect("a client")
    }

    /// The last lines of a node daemon's log (`kubelet`, `containerd`, `kube-proxy`).
    pub fn node_log_tail(&self, daemon: &str, lines: usize) -> String {
        tail(&self.node_logs.join(format!("{daemon}.log")), lines)
    }

    /// The last lines of a component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail(&self.logs.join(format!("{component}.log")), lines)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pods of `ns` with their state and recent events, and the images the real node has
/// (what a pod stuck on an image it asked for can be compared with), for a failure message.
pub fn describe_pods(ns: &TestNamespace) -> String {
    let pods = run(ns.kubectl().args(["get", "pods", "-o", "wide"]));
    let events = run(ns
        .kubectl()
        .args(["get", "events", "--sort-by=.lastTimestamp"]));
    let images = run(ctr().args(["images", "ls", "-q"]));
    format!(
        "--- pods in {} ---\n{}\n--- events ---\n{}\n--- images on the node ---\n{}",
        ns.name,
        String::from_utf8_lossy(&pods.stdout),
        String::from_utf8_lossy(&events.stdout),
        String::from_utf8_lossy(&images.stdout)
            .lines()
            .filter(|l| !l.starts_with("sha256:"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// `ctr` on the real node's containerd, in the CRI's namespace.
pub fn ctr() -> Command {
    let socket = cluster()
        .node_logs
        .parent()
        .expect("node/logs has a parent")
        .join("containerd.sock");
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"]);
    cmd
}

/// Runs `work` on a thread of its own inside the cluster's network namespace (on a
/// single-threaded runtime, so every socket it opens is opened there): where Service ClusterIPs
/// go through kube-proxy's rules and pod addresses are routed, as for a client on the node.
pub async fn in_netns<T: Send + 'static>(work: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    let netns = cluster().netns.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", netns.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("cannot enter {} (root is needed): {e}", netns.display()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _ = tx.send(runtime.block_on(work()));
    });
    rx.await.expect("the work inside the namespace finished")
}

/// Runs `cmd`, returning its output; panics when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and returns its stdout; panics with its stderr when it fails.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of one test's own, deleted when the test ends; a failing test prints the
/// apiserver's and controller-manager's log tails.
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`.
    pub fn create(prefix: &str) -> Self {
        let suffix = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
                ^ std::process::id()
        );
        let name = format!("{prefix}-{suffix}");
        ok(cluster().kubectl().args(["create", "namespace", &name]));
        ok(cluster()
            .kubectl()
            .args(["label", "namespace", &name, "cqrs.dev/test=true"]));
        TestNamespace { name }
    }

    /// `kubectl` in this namespace.
    pub fn kubectl(&self) -> Command {
        let mut cmd = cluster().kubectl();
        cmd.args(["--namespace", &self.name]);
        cmd
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let c = cluster();
            eprintln!(
                "\n--- kube-apiserver log (last 40 lines) ---\n{}\n\
                 --- kube-controller-manager log (last 40 lines) ---\n{}\n\
                 --- kubelet log (last 30 lines) ---\n{}\n{}\n---",
                c.log_tail("kube-apiserver", 40),
                c.log_tail("kube-controller-manager", 40),
                c.node_log_tail("kubelet", 30),
                describe_pods(self)
            );
        }
        let _ = run(cluster().kubectl().args([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]));
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout`; panics naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls async `check` every 200 ms until it holds, for at most `timeout`; returns how long
/// it took.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate lives in the workspace")
}

/// The CRD file the chart ships (generated from the Rust types).
pub fn crd_file() -> PathBuf {
    root().join("charts/cqrs-operator/crds/cqrsapps.cqrs.dev.yaml")
}

/// Applies the CRD (server-side, idempotent; every test that needs it calls this) and waits
/// until it is Established.
pub fn ensure_crd() {
    ok(cluster()
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cqrs-tests",
            "-f",
        ])
        .arg(crd_file()));
    // NB: polled rather than `kubectl wait`, which fails at once ("<nil> is of the type
    // <nil>") when it reads the CRD before the apiserver gave it any condition.
    wait_for(
        "the CqrsApp CRD to be Established",
        Duration::from_secs(60),
        || {
            let out = run(cluster().kubectl().args([
                "get",
                "crd/cqrsapps.cqrs.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]));
            (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True")
                .then_some(())
        },
    );
}

/// Runs `cmd` with `input` on its stdin.
pub fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("the command ends")
}
