//! `cargo xtask e2e`: the chart with its demo on a kind cluster, end to end.
//!
//! Needs Docker (a running engine), kind, kubectl, Helm and curl; says which are missing and
//! how to get them otherwise. Waits for conditions with deadlines, never for fixed times;
//! dumps operator logs and events when a step fails; deletes the cluster unless `--keep`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::azurite::free_port;
use crate::images;
use crate::shell::{on_path, output, root, step};

const CLUSTER: &str = "cqrs-e2e";
const NAMESPACE: &str = "cqrs-e2e";
/// The release; the chart's full name and its demo's prefix are the same.
const RELEASE: &str = "cqrs-operator";
/// The demo CqrsApp (`<release>-pieshop`); its Deployments are `<app>-web`, `<app>-<worker>`.
const APP: &str = "cqrs-operator-pieshop";
const AZURITE_IMAGE: &str = "mcr.microsoft.com/azure-storage/azurite:3.35.0";

/// Tools e2e needs: (program, what it is, how to install it).
const TOOLS: &[(&str, &str, &str)] = &[
    (
        "docker",
        "a container engine",
        "https://docs.docker.com/engine/install/ (and start it: `docker info` must work)",
    ),
    (
        "kind",
        "Kubernetes in Docker",
        "`go install sigs.k8s.io/kind@latest` or https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    ),
    (
        "kubectl",
        "the Kubernetes CLI",
        "https://kubernetes.io/docs/tasks/tools/",
    ),
    ("helm", "Helm 3.8+", "https://helm.sh/docs/intro/install/"),
    ("curl", "an HTTP client", "`apt-get install curl`"),
];

/// The missing tools, each with how to get it.
pub fn missing_tools(present: impl Fn(&str) -> bool, docker_running: bool) -> Vec<String> {
    let mut missing = Vec::new();
    for (program, what, how) in TOOLS {
        if !present(program) {
            missing.push(format!("{program} ({what}) is not on PATH: {how}"));
        } else if *program == "docker" && !docker_running {
            missing.push(format!("docker is installed but no engine answers (`docker info` fails): start it, or install one: {how}"));
        }
    }
    missing
}

fn kubectl() -> Command {
    let mut c = Command::new("kubectl");
    c.args([
        "--context",
        &format!("kind-{CLUSTER}"),
        "--namespace",
        NAMESPACE,
    ]);
    c
}

/// Polls `check` every second until it returns `Some`, or fails after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    println!("    waiting for {what} (up to {}s)", limit.as_secs());
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct PortForward(Child);

impl PortForward {
    fn start(service: &str, local: u16, remote: u16) -> Result<Self> {
        let child = kubectl()
            .args([
                "port-forward",
                &format!("svc/{service}"),
                &format!("{local}:{remote}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start kubectl port-forward")?;
        let forward = PortForward(child);
        wait_for(
            &format!("the port-forward to {service}"),
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", local)).ok(),
        )?;
        Ok(forward)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> Option<String> {
    output(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(args),
    )
    .ok()
}

fn json_field(body: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get(field)?.as_str().map(String::from)
}

fn deployment_replicas(name: &str) -> Option<i64> {
    output(kubectl().args(["get", "deployment", name, "-o", "jsonpath={.spec.replicas}"]))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn register(web: u16, email: &str) -> Result<String> {
    let body = format!(
        r#"{{"firstName":"E","lastName":"Two","email":"{email}","dateOfBirth":"1990-01-01"}}"#
    );
    let answer = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &format!("http://127.0.0.1:{web}/api/registrations"),
    ])
    .context("POST /api/registrations failed")?;
    json_field(&answer, "resultUrl").with_context(|| format!("no resultUrl in {answer}"))
}

fn scenario(blob_port: u16) -> Result<()> {
    step(
        "installing the chart with the demo (helm upgrade --install --wait)",
        Command::new("helm")
            .args(["upgrade", "--install", RELEASE])
            .arg(root().join("charts/cqrs-operator"))
            .args([
                "--kube-context",
                &format!("kind-{CLUSTER}"),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
            ])
            .args([
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "demo.enabled=true",
                "--set",
                "demo.app.pullPolicy=Never",
            ])
            .args(["--set", "demo.app.cooldownPeriod=15"])
            .args([
                "--set",
                &format!(
                    "demo.app.publicBlobEndpoint=http://127.0.0.1:{blob_port}/devstoreaccount1"
                ),
            ])
            .args(["--wait", "--timeout", "5m"]),
    )?;
    step(
        "waiting for the CqrsApp to be Ready",
        kubectl().args([
            "wait",
            &format!("cqrsapp/{APP}"),
            "--for=condition=Ready",
            "--timeout=300s",
        ]),
    )?;

    let web_port = free_port()?;
    let _web = PortForward::start(&format!("{APP}-web"), web_port, 80)?;
    let _blob = PortForward::start(&format!("{RELEASE}-azurite"), blob_port, 10000)?;

    println!("\n==> a registration, read back through its SAS URL");
    let url = register(web_port, "e2e@example.com")?;
    let token = wait_for(
        "the registration token in the result blob",
        Duration::from_secs(180),
        || {
            let body = curl(&[&url])?;
            json_field(&body, "registrationToken")
        },
    )?;
    println!("    token {token}");

    println!("\n==> a backlog: the registrar scales up, then back to zero");
    for i in 0..200 {
        register(web_port, &format!("load-{i}@example.com"))?;
    }
    let most = wait_for(
        "the registrar to scale above 1 replica",
        Duration::from_secs(180),
        || deployment_replicas(&format!("{APP}-registrar")).filter(|n| *n > 1),
    )?;
    println!("    scaled to {most} replicas");
    wait_for(
        "the registrar to scale back to 0 after the cooldown",
        Duration::from_secs(300),
        || deployment_replicas(&format!("{APP}-registrar")).filter(|n| *n == 0),
    )?;
    step(
        &format!("kubectl get cqrsapp {APP}"),
        kubectl().args(["get", "cqrsapp", APP, "-o", "wide"]),
    )?;

    println!("\n==> deleting the app (deletionPolicy Retain): its storage survives");
    step(
        &format!("kubectl delete cqrsapp {APP}"),
        kubectl().args(["delete", "cqrsapp", APP, "--wait", "--timeout=120s"]),
    )?;
    wait_for(
        "the web Deployment to be garbage-collected",
        Duration::from_secs(120),
        || {
            deployment_replicas(&format!("{APP}-web"))
                .is_none()
                .then_some(())
        },
    )?;
    let body = curl(&[&url]).context("the result blob is gone")?;
    if json_field(&body, "registrationToken").as_deref() != Some(token.as_str()) {
        bail!("after deleting the Retain app, the result blob reads {body}");
    }
    println!("    the result blob still holds {token}");
    Ok(())
}

fn dump_diagnostics() {
    println!("\n==> diagnostics");
    let commands: [&[&str]; 4] = [
        &["get", "pods", "-o", "wide"],
        &["describe", "cqrsapp", APP],
        &["get", "events", "--sort-by=.lastTimestamp"],
        &["logs", &format!("deployment/{RELEASE}"), "--tail=200"],
    ];
    for args in commands {
        println!("\n$ kubectl {}", args.join(" "));
        let _ = kubectl().args(args).status();
    }
}

/// Runs the scenario; `--keep` leaves the cluster.
pub fn run(args: &[String]) -> Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    let cluster = args
        .iter()
        .position(|a| a == "--cluster")
        .map(|i| args.get(i + 1).map(String::as_str).unwrap_or_default());
    let docker = on_path("docker") && images::docker_running();
    match cluster {
        Some("kwok") => crate::e2e_kwok::run(keep),
        Some("kind") => run_kind(keep),
        None if docker => run_kind(keep),
        None => {
            println!(
                "==> no container engine here: using the local control plane (--cluster kwok)"
            );
            crate::e2e_kwok::run(keep)
        }
        Some(other) => bail!("--cluster takes `kind` or `kwok`, not {other:?}"),
    }
}

/// The chart with its demo on kind, with real containers.
fn run_kind(keep: bool) -> Result<()> {
    let missing = missing_tools(on_path, on_path("docker") && images::docker_running());
    if !missing.is_empty() {
        bail!(
            "cargo xtask e2e cannot run here; missing:\n  - {}",
            missing.join("\n  - ")
        );
    }
    let clusters = output(Command::new("kind").args(["get", "clusters"]))?;
    if clusters.lines().any(|c| c.trim() == CLUSTER) {
        println!("==> reusing kind cluster {CLUSTER}");
    } else {
        step(
            &format!("kind create cluster --name {CLUSTER}"),
            Command::new("kind").args(["create", "cluster", "--name", CLUSTER, "--wait", "120s"]),
        )?;
    }
    images::build()?;
    step(
        &format!("docker pull {AZURITE_IMAGE}"),
        Command::new("docker").args(["pull", AZURITE_IMAGE]),
    )?;
    for image in [
        images::operator_image(),
        images::app_image(),
        AZURITE_IMAGE.to_string(),
    ] {
        step(
            &format!("kind load docker-image {image}"),
            Command::new("kind").args(["load", "docker-image", &image, "--name", CLUSTER]),
        )?;
    }
    let result = free_port().and_then(scenario);
    if result.is_err() {
        dump_diagnostics();
    }
    if keep {
        println!("\nkept the cluster: kubectl --context kind-{CLUSTER} -n {NAMESPACE} get all");
    } else {
        step(
            &format!("kind delete cluster --name {CLUSTER}"),
            Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]),
        )?;
    }
    result?;
    println!("\ne2e passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_tool_is_named_with_how_to_get_it() {
        let missing = missing_tools(|p| p == "kubectl", false);
        assert_eq!(missing.len(), 4);
        assert!(
            missing[0]
                .starts_with("docker (a container engine) is not on PATH: https://docs.docker.com")
        );
        assert!(
            missing
                .iter()
                .any(|m| m.starts_with("kind ") && m.contains("kind.sigs.k8s.io"))
        );
        assert!(missing.iter().any(|m| m.starts_with("helm ")));
    }

    #[test]
    fn a_docker_client_without_an_engine_counts_as_missing() {
        let missing = missing_tools(|_| true, false);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("no engine answers"));
        assert!(missing_tools(|_| true, true).is_empty());
    }
}
