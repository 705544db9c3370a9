//! `cargo xtask e2e`: the chart with its demo on a fresh cluster, end to end, as a user runs it.
//!
//! `--cluster local` (the default where no Docker engine runs): the local cluster with its real
//! node ([`crate::cluster`]), the images of `cargo xtask images` loaded onto it. `--cluster
//! kind` (the default where Docker runs): a kind cluster, the same images loaded with `kind load
//! image-archive`; needs Docker, kind, kubectl, Helm and curl, and says which are missing. Then
//! the same steps on either: `helm install` with the demo, the CqrsApp Ready, a registration and
//! a scanner command through the web Service (a port-forward) read back through the SAS URL and
//! the dashboard's API, a backlog scaling the registrar 0 -> N and back to 0, the app deleted
//! with its storage retained. Every wait polls a condition with a deadline; on failure it prints
//! the pods, the CqrsApp, the events and the operator's logs; it deletes the cluster unless
//! `--keep`. It ends with what it measured.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::azurite::free_port;
use crate::cluster::Cluster;
use crate::images;
use crate::shell::{on_path, output, root, step};

const CLUSTER: &str = "cqrs-e2e";
const NAMESPACE: &str = "cqrs-e2e";
/// The release; the chart's full name and its demo's prefix are the same.
const RELEASE: &str = "cqrs-operator";
/// The demo CqrsApp (`<release>-pieshop`); its Deployments are `<app>-web`, `<app>-<worker>`.
const APP: &str = "cqrs-operator-pieshop";
/// Registrations of the backlog.
const BACKLOG: usize = 200;

/// Whether a Docker daemon answers (the client alone is not enough).
fn docker_running() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Tools the kind flow needs: (program, what it is, how to install it).
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

/// How to reach the cluster under test.
struct Target {
    /// `kubectl` (any namespace).
    kubectl: Box<dyn Fn() -> Command>,
    /// `helm`.
    helm: Box<dyn Fn() -> Command>,
}

impl Target {
    fn kubectl(&self) -> Command {
        let mut cmd = (self.kubectl)();
        cmd.args(["--namespace", NAMESPACE]);
        cmd
    }
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
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct PortForward(Child);

impl PortForward {
    fn start(target: &Target, service: &str, local: u16, remote: u16) -> Result<Self> {
        let child = target
            .kubectl()
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

/// `(Running pods, spec.replicas)` of a role.
fn role(target: &Target, component: &str) -> (usize, i64) {
    let running = output(target.kubectl().args([
        "get",
        "pods",
        "-l",
        &format!("cqrs.dev/component={component}"),
        "--field-selector=status.phase=Running",
        "-o",
        "name",
    ]))
    .map(|o| o.lines().count())
    .unwrap_or(0);
    let replicas = output(target.kubectl().args([
        "get",
        "deployment",
        &format!("{APP}-{component}"),
        "-o",
        "jsonpath={.spec.replicas}",
    ]))
    .ok()
    .and_then(|r| r.trim().parse().ok())
    .unwrap_or(-1);
    (running, replicas)
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

fn token(url: &str, limit: Duration) -> Result<String> {
    wait_for("the registration token in the result blob", limit, || {
        json_field(&curl(&[url])?, "registrationToken")
    })
}

fn scenario(target: &Target, blob_port: u16) -> Result<Vec<String>> {
    let mut measured = Vec::new();
    let installed = Instant::now();
    step(
        "installing the chart with the demo (helm upgrade --install --wait)",
        (target.helm)()
            .args(["upgrade", "--install", RELEASE])
            .arg(root().join("charts/cqrs-operator"))
            .args(["--namespace", NAMESPACE, "--create-namespace"])
            .args([
                "--set",
                "demo.enabled=true",
                "--set",
                "demo.app.cooldownPeriod=15",
            ])
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
        target.kubectl().args([
            "wait",
            &format!("cqrsapp/{APP}"),
            "--for=condition=Ready",
            "--timeout=300s",
        ]),
    )?;
    step(
        "waiting for the web role to be Available",
        target.kubectl().args([
            "wait",
            &format!("deployment/{APP}-web"),
            "--for=condition=Available",
            "--timeout=300s",
        ]),
    )?;
    measured.push(format!(
        "helm install to the app Ready and its web role Available: {:.1} s",
        installed.elapsed().as_secs_f64()
    ));

    let web_port = free_port()?;
    let _web = PortForward::start(target, &format!("{APP}-web"), web_port, 80)?;
    let _blob = PortForward::start(target, &format!("{RELEASE}-azurite"), blob_port, 10000)?;

    println!("\n==> a registration through the web Service, read back through its SAS URL");
    let asked = Instant::now();
    let url = register(web_port, "e2e@example.com")?;
    let first = token(&url, Duration::from_secs(180))?;
    println!("    token {first}");
    measured.push(format!(
        "a registration to its token, the registrar starting from 0 pods: {:.1} s",
        asked.elapsed().as_secs_f64()
    ));

    println!("\n==> a scanner command through the web Service, seen on the dashboard's API");
    let scan = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer dev-scanner-key",
        "-d",
        r#"{"commandId":"e2e-scan-1","location":"shop","item":"pork pie","delta":7}"#,
        &format!("http://127.0.0.1:{web_port}/api/inventory/adjustments"),
    ])
    .context("POST /api/inventory/adjustments failed")?;
    println!("    {scan}");
    wait_for(
        "the adjustment on /api/inventory",
        Duration::from_secs(180),
        || {
            curl(&[&format!(
                "http://127.0.0.1:{web_port}/api/inventory/locations/shop"
            )])
            .filter(|model| model.contains("pork pie"))
        },
    )?;

    println!(
        "\n==> a backlog of {BACKLOG}: the registrar scales up, drains it, and goes back to 0"
    );
    wait_for("the registrar at 0 pods", Duration::from_secs(180), || {
        (role(target, "registrar") == (0, 0)).then_some(())
    })?;
    // The registrar's Running pods are sampled while the backlog is posted and drained: the
    // pod-seconds they add up to give the drain rate per pod.
    let started = Instant::now();
    let (mut most, mut first_running, mut pod_seconds, mut last) = (0, None, 0.0, Instant::now());
    let mut sample = || {
        let (running, replicas) = role(target, "registrar");
        pod_seconds += running as f64 * last.elapsed().as_secs_f64();
        last = Instant::now();
        most = most.max(replicas);
        if running > 0 && first_running.is_none() {
            first_running = Some(started.elapsed());
        }
    };
    // Posted by 8 clients at once, so the queue grows faster than one pod drains it.
    let posting = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                scope.spawn(move || {
                    (c..BACKLOG)
                        .step_by(8)
                        .map(|i| register(web_port, &format!("load-{i}@example.com")))
                        .collect::<Result<Vec<String>>>()
                })
            })
            .collect();
        while clients.iter().any(|c| !c.is_finished()) {
            sample();
            std::thread::sleep(Duration::from_millis(250));
        }
        clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| bail!("a posting client panicked"))
            })
            .collect::<Result<Vec<Vec<String>>>>()
    })?;
    let urls: Vec<String> = posting.into_iter().flatten().collect();
    let posted = started.elapsed();
    let mut pending = urls.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        sample();
        pending.retain(|url| {
            curl(&[url])
                .and_then(|b| json_field(&b, "registrationToken"))
                .is_none()
        });
        if Instant::now() > deadline {
            bail!(
                "{} of {BACKLOG} registrations got no token in 300 s",
                pending.len()
            );
        }
    }
    let drained = started.elapsed();
    measured.push(format!(
        "first of {BACKLOG} registrations posted to the first registrar pod Running: {:.1} s (posting all took {:.1} s)",
        first_running.unwrap_or_default().as_secs_f64(),
        posted.as_secs_f64()
    ));
    measured.push(format!(
        "backlog drained (every token written) in {:.1} s by up to {most} pods: {:.1} registrations/s per pod",
        drained.as_secs_f64(),
        BACKLOG as f64 / pod_seconds.max(0.001)
    ));
    let empty = Instant::now();
    wait_for(
        "the registrar back at 0 after the cooldown",
        Duration::from_secs(300),
        || (role(target, "registrar") == (0, 0)).then_some(()),
    )?;
    measured.push(format!(
        "drained to 0 registrar pods in {:.1} s (cooldown 15 s, scale-down window 10 s)",
        empty.elapsed().as_secs_f64()
    ));
    step(
        &format!("kubectl get cqrsapp {APP}"),
        target.kubectl().args(["get", "cqrsapp", APP, "-o", "wide"]),
    )?;

    println!("\n==> deleting the app (deletionPolicy Retain): its storage survives");
    step(
        &format!("kubectl delete cqrsapp {APP}"),
        target
            .kubectl()
            .args(["delete", "cqrsapp", APP, "--wait", "--timeout=120s"]),
    )?;
    wait_for(
        "the web Deployment to be garbage-collected",
        Duration::from_secs(120),
        || (role(target, "web").1 == -1).then_some(()),
    )?;
    let body = curl(&[&url]).context("the result blob is gone")?;
    if json_field(&body, "registrationToken").as_deref() != Some(first.as_str()) {
        bail!("after deleting the Retain app, the result blob reads {body}");
    }
    println!("    the result blob still holds {first}");
    Ok(measured)
}

fn dump_diagnostics(target: &Target) {
    println!("\n==> diagnostics");
    let commands: [&[&str]; 4] = [
        &["get", "pods", "-o", "wide"],
        &["describe", "cqrsapp", APP],
        &["get", "events", "--sort-by=.lastTimestamp"],
        &["logs", &format!("deployment/{RELEASE}"), "--tail=200"],
    ];
    for args in commands {
        println!("\n$ kubectl {}", args.join(" "));
        let _ = target.kubectl().args(args).status();
    }
}

/// Runs the scenario; `--keep` leaves the cluster.
pub fn run(args: &[String]) -> Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    let cluster = args
        .iter()
        .position(|a| a == "--cluster")
        .map(|i| args.get(i + 1).map(String::as_str).unwrap_or_default());
    let docker = on_path("docker") && docker_running();
    match cluster {
        Some("local") => run_local(keep),
        Some("kind") => run_kind(keep),
        None if docker => run_kind(keep),
        None => {
            println!(
                "==> no container engine here: the local cluster with its real node (--cluster local)"
            );
            run_local(keep)
        }
        Some(other) => bail!("--cluster takes `local` or `kind`, not {other:?}"),
    }
}

/// Runs the scenario on `target`, then prints what it measured.
fn scenario_reported(target: &Target, started: Instant) -> Result<()> {
    let result = free_port().and_then(|port| scenario(target, port));
    match result {
        Ok(measured) => {
            println!("\n==> measured");
            for line in measured {
                println!("    {line}");
            }
            println!("\ne2e passed in {:.0}s", started.elapsed().as_secs_f32());
            Ok(())
        }
        Err(e) => {
            dump_diagnostics(target);
            Err(e)
        }
    }
}

/// On a fresh local cluster with a real node, the images built here.
fn run_local(keep: bool) -> Result<()> {
    let started = Instant::now();
    let built = images::build(&images::Binaries::Release)?;
    let cluster = Cluster::fresh_with_node(
        CLUSTER,
        built.images.iter().map(|o| o.archive.clone()).collect(),
    )?;
    println!(
        "\n==> cluster `{CLUSTER}` up in {:.0}s since the start (kubeconfig {})",
        started.elapsed().as_secs_f32(),
        cluster.kubeconfig().display()
    );
    let (kubeconfig, bin) = (cluster.kubeconfig(), cluster.bin.clone());
    let helm_home = crate::shell::target_dir().join("e2e-helm");
    let target = Target {
        kubectl: Box::new({
            let (kubeconfig, bin) = (kubeconfig.clone(), bin.clone());
            move || {
                let mut cmd = Command::new(bin.join("kubectl"));
                cmd.env("KUBECONFIG", &kubeconfig);
                cmd
            }
        }),
        helm: Box::new(move || {
            let mut cmd = Command::new(bin.join("helm"));
            cmd.env("KUBECONFIG", &kubeconfig)
                .env("HELM_CACHE_HOME", helm_home.join("cache"))
                .env("HELM_CONFIG_HOME", helm_home.join("config"))
                .env("HELM_DATA_HOME", helm_home.join("data"));
            cmd
        }),
    };
    let result = scenario_reported(&target, started);
    if result.is_err()
        && let Some(node) = cluster.node()
    {
        println!(
            "\nimages on the node (a pod waiting for another name will not get it): {}",
            node.images().unwrap_or_default().join(", ")
        );
    }
    if keep {
        println!(
            "\nkeeping cluster `{CLUSTER}`: KUBECONFIG={} (cargo xtask cluster down removes only `cqrs`; \
             this one goes with the next e2e run)",
            cluster.kubeconfig().display()
        );
        std::mem::forget(cluster);
    }
    result
}

/// The chart with its demo on kind, with the images built here loaded into it.
fn run_kind(keep: bool) -> Result<()> {
    let started = Instant::now();
    let missing = missing_tools(on_path, on_path("docker") && docker_running());
    if !missing.is_empty() {
        bail!(
            "cargo xtask e2e --cluster kind cannot run here; missing:\n  - {}",
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
    let built = images::build(&images::Binaries::Release)?;
    for image in [
        images::operator_image(),
        images::app_image(),
        images::azurite_image(),
    ] {
        let archive = &built
            .get(&image)
            .with_context(|| format!("{image} was not built"))?
            .archive;
        step(
            &format!("kind load image-archive {} ({image})", archive.display()),
            Command::new("kind")
                .args(["load", "image-archive"])
                .arg(archive)
                .args(["--name", CLUSTER]),
        )?;
    }
    let context = format!("kind-{CLUSTER}");
    let target = Target {
        kubectl: Box::new({
            let context = context.clone();
            move || {
                let mut cmd = Command::new("kubectl");
                cmd.args(["--context", &context]);
                cmd
            }
        }),
        helm: Box::new(move || {
            let mut cmd = Command::new("helm");
            cmd.args(["--kube-context", &context]);
            cmd
        }),
    };
    let result = scenario_reported(&target, started);
    if keep {
        println!("\nkept the cluster: kubectl --context kind-{CLUSTER} -n {NAMESPACE} get all");
    } else {
        step(
            &format!("kind delete cluster --name {CLUSTER}"),
            Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]),
        )?;
    }
    result
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
