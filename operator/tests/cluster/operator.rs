//! `cqrs-operator run` as a host process under exactly the chart's RBAC: the chart is installed
//! with Helm (its own Deployment's pod lands on the kwok node and never runs), a token of the
//! chart's ServiceAccount is requested through the TokenRequest API, and the operator runs
//! with a kubeconfig holding only that token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{TestNamespace, cluster, ok, root, run, wait_for};

/// The operator of one test namespace.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    /// Where it serves /metrics.
    pub metrics: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Installs the chart as `<prefix>-<suffix>` in `ns`, watching only `ns`; returns the release
/// (which is also the ServiceAccount's name).
pub fn install_chart(ns: &TestNamespace) -> String {
    crate::support::ensure_crd();
    let release = format!("cqrs-operator-{}", ns.name.rsplit('-').next().unwrap());
    let watch = format!("watchNamespace={}", ns.name);
    ok(cluster()
        .helm()
        .args(["install", &release])
        .arg(root().join("charts/cqrs-operator"))
        .args([
            "--namespace",
            &ns.name,
            "--set",
            &watch,
            "--wait",
            "--timeout",
            "120s",
        ]));
    release
}

/// A kubeconfig for the apiserver of the test cluster holding only `token`.
fn token_kubeconfig(token: &str) -> String {
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(cluster().kubeconfig()).expect("admin kubeconfig"),
    )
    .expect("kubeconfig is YAML");
    let server = admin["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server");
    let ca = admin["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .expect("a CA file");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: operator\n  context:\n    cluster: test\n    user: operator\n\
         current-context: operator\n"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Operator {
    /// Starts `cqrs-operator run` with the token of `service_account` in `ns`, leader election
    /// through a Lease in `ns`, as replica `identity`; returns once `/readyz` answers.
    pub fn start(ns: &TestNamespace, service_account: &str, identity: &str) -> Self {
        let token = ok(cluster().kubectl().args([
            "create",
            "token",
            service_account,
            "--namespace",
            &ns.name,
            "--duration=2h",
        ]));
        let dir = tempfile::tempdir().expect("a temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, token_kubeconfig(token.trim())).expect("kubeconfig written");
        let log = dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_cqrs-operator"))
            .args(["run", "--log-format", "json", "--connect-timeout", "10"])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--watch-namespace", &ns.name, "--lease-namespace", &ns.name])
            .args(["--identity", identity])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,cqrs_operator=debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("cqrs-operator starts");
        let mut operator = Operator {
            child,
            metrics,
            log,
            _dir: dir,
        };
        wait_for("the operator's /readyz", Duration::from_secs(30), || {
            if let Ok(Some(status)) = operator.child.try_wait() {
                panic!("the operator exited ({status}):\n{}", operator.log_text());
            }
            operator
                .get("/readyz")
                .filter(|r| r.starts_with("HTTP/1.1 200"))
                .map(|_| ())
        });
        operator
    }

    /// `GET path` on the metrics server: the raw HTTP response.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// The sum of every sample of metric `name` (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").expect("the operator serves /metrics");
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Everything the operator logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails naming the verb and resource of every request the chart's RBAC refused.
    pub fn assert_no_forbidden(&self) {
        let forbidden: Vec<String> = self
            .log_text()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .map(str::to_owned)
            .collect();
        assert!(
            forbidden.is_empty(),
            "the chart's RBAC refused the operator:\n{}",
            forbidden.join("\n")
        );
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "\n--- operator log ({}; last 60 lines) ---\n{}\n---",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..]
                    .join("\n")
                    .replace("\"target\":", "")
            );
        }
    }
}

/// The Secret with the Azurite connection string the CqrsApp's storage names.
pub fn storage_secret(ns: &TestNamespace, name: &str, connection_string: &str) {
    let out = run(ns.kubectl().args([
        "create",
        "secret",
        "generic",
        name,
        &format!("--from-literal=connectionString={connection_string}"),
    ]));
    assert!(out.status.success(), "{out:?}");
}
