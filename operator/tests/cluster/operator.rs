//! The operator as users run it: the chart installed with Helm into the test's namespace with
//! the image `cargo xtask images` built (loaded onto the real node), its pod started by the
//! kubelet under the chart's ServiceAccount, RBAC and securityContext. The tests read its
//! metrics through the apiserver's pod proxy and its logs with `kubectl logs`.

use std::time::Duration;

use crate::support::{TestNamespace, cluster, ok, root, run, wait_for};

/// The chart's operator in one test namespace.
#[derive(Debug)]
pub struct Operator {
    /// The namespace of the release (and of the apps it watches).
    pub namespace: String,
    /// The release, also the Deployment's and the ServiceAccount's name.
    pub release: String,
}

/// The chart's default image tag (its appVersion), which `cargo xtask images` builds.
pub fn operator_image() -> String {
    format!(
        "ghcr.io/cqrs-operator/cqrs-operator:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The reference app's image on the node.
pub fn app_image() -> String {
    format!(
        "ghcr.io/cqrs-operator/reference-app:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Installs the chart as `cqrs-operator-<suffix>` in `ns`, watching only `ns`, with `extra`
/// `--set` values; waits until its Deployment is Available. Returns the release.
pub fn install_chart(ns: &TestNamespace, extra: &[&str]) -> String {
    crate::support::ensure_crd();
    let release = format!("cqrs-operator-{}", ns.name.rsplit('-').next().unwrap());
    let watch = format!("watchNamespace={}", ns.name);
    let mut helm = cluster().helm();
    helm.args(["install", &release])
        .arg(root().join("charts/cqrs-operator"))
        .args(["--namespace", &ns.name, "--set", &watch])
        // NB: never pull: the image is the one loaded onto the node; a missing one fails at once.
        .args(["--set", "image.pullPolicy=Never"])
        .args(["--set", "logLevel=info\\,cqrs_operator=debug"]);
    for value in extra {
        helm.args(["--set", value]);
    }
    let out = run(helm.args(["--wait", "--timeout", "180s"]));
    if !out.status.success() {
        panic!(
            "helm install {release} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            crate::support::describe_pods(ns)
        );
    }
    release
}

impl Operator {
    /// The chart's operator of `release` in `ns` (installed by [`install_chart`]); waits until
    /// a pod of it is Ready.
    pub fn of(ns: &TestNamespace, release: &str) -> Self {
        let operator = Operator {
            namespace: ns.name.clone(),
            release: release.to_owned(),
        };
        operator.ready_pod();
        operator
    }

    fn kubectl(&self) -> std::process::Command {
        let mut cmd = cluster().kubectl();
        cmd.args(["--namespace", &self.namespace]);
        cmd
    }

    /// The name of a Ready operator pod (waiting up to 120 s for one).
    pub fn ready_pod(&self) -> String {
        wait_for("a Ready operator pod", Duration::from_secs(120), || {
            self.pods()
                .into_iter()
                .find(|(_, ready, deleting)| *ready && !deleting)
                .map(|(name, _, _)| name)
        })
    }

    /// Every operator pod: `(name, ready, being deleted)`.
    pub fn pods(&self) -> Vec<(String, bool, bool)> {
        let out = ok(self.kubectl().args([
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]));
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next()?.to_owned();
                let ready = f.next() == Some("True");
                let deleting = f.next().is_some();
                Some((name, ready, deleting))
            })
            .collect()
    }

    /// `GET path` on the metrics port of `pod`, through the apiserver's pod proxy.
    fn get(&self, pod: &str, path: &str) -> Option<String> {
        let out = run(cluster().kubectl().args([
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/{}/pods/{pod}:8080/proxy{path}",
                self.namespace
            ),
        ]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The sum of every sample of metric `name` (all label sets) of the Ready pod.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, &[])
    }

    /// The sum of the samples of metric `name` of the Ready pod whose labels include every
    /// `(label, value)` of `labels`.
    pub fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let pod = self.ready_pod();
        let body = self
            .get(&pod, "/metrics")
            .unwrap_or_else(|| panic!("the operator pod {pod} serves no /metrics"));
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What every operator pod logged so far (`kubectl logs`).
    pub fn log_text(&self) -> String {
        self.pods()
            .iter()
            .map(|(pod, _, _)| {
                String::from_utf8_lossy(&run(self.kubectl().args(["logs", pod])).stdout)
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
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

    /// Deletes `pod` at once (no grace period), as a node failure would end it.
    pub fn kill(&self, pod: &str) {
        ok(self.kubectl().args([
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]));
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "\n--- operator log of {} (last 60 lines) ---\n{}\n---",
                self.release,
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
