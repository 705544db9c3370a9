//! `cargo xtask cluster up | down | env | status | load`: a real Kubernetes cluster on this
//! machine, without Docker.
//!
//! etcd, kube-apiserver, kube-controller-manager (every default controller: deployment,
//! replicaset, garbage collector, namespace, serviceaccount-token, node-lifecycle, ...),
//! kube-scheduler and the kwok controller with one fake node run as background processes.
//! `kwokctl create cluster --runtime binary` launches them from the cached binaries
//! ([`toolchain`]); kwokctl works offline once every binary is given as a local path, so there
//! is no launcher of our own.
//!
//! With a real node ([`node`], the default for the user's, the tests' and e2e's clusters) the
//! whole cluster lives in a network namespace of its own: the control plane listens there, the
//! kubelet, containerd and kube-proxy run real containers there, and the host reaches the
//! apiserver through a veth pair (`kubeconfig()` names the namespace's address). The kwok node
//! is tainted `kwok.x-k8s.io/node=fake:NoSchedule`, as kwok's docs do, so ordinary pods run on
//! the real node and only what tolerates the taint lands on kwok; kwok manages only the nodes
//! annotated as its own. Without a node (`--no-node`, `bench peers`) everything binds
//! 127.0.0.1 and no container ever runs.

pub mod keda;
pub mod node;
mod procs;
pub mod toolchain;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{output, root, step};

/// The cluster `cargo xtask cluster` manages for people (tests use their own, see
/// [`Cluster::for_tests`]).
const USER_CLUSTER: &str = "cqrs";

/// `cargo xtask cluster <command>`.
pub fn run(args: &[String]) -> Result<()> {
    let no_node = args.iter().any(|a| a == "--no-node");
    // The images on the node: release binaries (what users ship), or the dev profile's.
    let binaries = if args.iter().any(|a| a == "--debug") {
        crate::images::Binaries::Debug
    } else {
        crate::images::Binaries::Release
    };
    let existing = || -> Result<Cluster> {
        let mut cluster = Cluster::new(USER_CLUSTER, toolchain::cache_dir()?.join("bin"));
        cluster.with_node =
            cluster.dir().join("node").exists() || node::Netns::for_cluster(USER_CLUSTER).exists();
        Ok(cluster)
    };
    match args.first().map(String::as_str) {
        Some("up") => {
            let mut cluster = Cluster::new(USER_CLUSTER, toolchain::ensure()?);
            if !no_node {
                let built = crate::images::build(&binaries)?;
                cluster.with_node = true;
                cluster.images = built.images.iter().map(|o| o.archive.clone()).collect();
            }
            cluster.up()?;
            println!("\ncluster `{}` is ready", cluster.name);
            println!("    kubeconfig: {}", cluster.kubeconfig().display());
            println!("    logs:       {}", cluster.logs_dir().display());
            println!("    use it:     eval \"$(cargo xtask cluster env)\" && kubectl get nodes");
            Ok(())
        }
        Some("load") => {
            let cluster = existing()?;
            let node = cluster
                .node()
                .context("cluster `cqrs` has no real node: `cargo xtask cluster up` makes one")?;
            let built = crate::images::build(&binaries)?;
            node.import(
                &built
                    .images
                    .iter()
                    .map(|o| o.archive.clone())
                    .collect::<Vec<_>>(),
            )
        }
        Some("down") => existing()?.down(),
        Some("env") => {
            let cluster = existing()?;
            if !cluster.exists() {
                eprintln!(
                    "# cluster `{USER_CLUSTER}` does not exist: run `cargo xtask cluster up`"
                );
            }
            println!("export KUBECONFIG={}", cluster.kubeconfig().display());
            println!("export PATH={}:$PATH", cluster.bin.display());
            Ok(())
        }
        Some("status") => existing()?.status(),
        _ => bail!(
            "usage: cargo xtask cluster up [--no-node] [--debug] | down | env | status | load [--debug]"
        ),
    }
}

/// One kwokctl cluster under `.tools/cluster/clusters/<name>`.
#[derive(Debug)]
pub struct Cluster {
    /// kwokctl's cluster name.
    pub name: String,
    /// The cached `bin/` with every tool.
    pub bin: PathBuf,
    /// Serve aggregated APIs (an extension apiserver such as KEDA's metrics adapter),
    /// advertising this address.
    aggregation: Option<String>,
    /// Run a real node beside the kwok one.
    with_node: bool,
    /// Image archives loaded onto the real node.
    images: Vec<PathBuf>,
}

impl Cluster {
    fn new(name: &str, bin: PathBuf) -> Self {
        Cluster {
            name: name.to_owned(),
            bin,
            aggregation: None,
            with_node: false,
            images: Vec::new(),
        }
    }

    /// A fresh cluster with a real node for one `cargo xtask test` run, `images` loaded onto
    /// it (any earlier one of that name is deleted first); deleted again when dropped.
    pub fn for_tests(images: Vec<PathBuf>) -> Result<TestCluster> {
        Self::fresh_with_node("cqrs-test", images)
    }

    /// A fresh cluster `name` with a real node and `images` loaded onto it, deleted when
    /// dropped.
    pub fn fresh_with_node(name: &str, images: Vec<PathBuf>) -> Result<TestCluster> {
        let mut cluster = Cluster::new(name, toolchain::ensure()?);
        cluster.with_node = true;
        cluster.images = images;
        Self::fresh_cluster(cluster)
    }

    /// Its real node, if it has one.
    pub fn node(&self) -> Option<node::Node> {
        self.with_node
            .then(|| node::Node::new(&self.name, &self.dir(), &self.bin))
    }

    /// A fresh cluster `name` whose apiserver also serves aggregated APIs: the request-header
    /// client CA (kwokctl already hands the apiserver a proxy client certificate signed by the
    /// cluster CA) and routing to an APIService's endpoints rather than its ClusterIP (there
    /// is no kube-proxy). The extension server's endpoint cannot be a loopback address, so
    /// this is for a cluster inside a network namespace of its own (`cargo xtask bench peers`),
    /// whose non-loopback `address` the apiserver advertises (a namespace without a default
    /// route leaves it nothing to pick).
    pub fn fresh_with_aggregation(name: &str, address: &str) -> Result<TestCluster> {
        let mut cluster = Cluster::new(name, toolchain::ensure()?);
        cluster.aggregation = Some(address.to_owned());
        Self::fresh_cluster(cluster)
    }

    fn fresh_cluster(cluster: Cluster) -> Result<TestCluster> {
        cluster.down_quietly();
        cluster.up()?;
        Ok(TestCluster(cluster))
    }

    fn workdir() -> PathBuf {
        root().join(".tools/cluster")
    }

    fn dir(&self) -> PathBuf {
        Self::workdir().join("clusters").join(&self.name)
    }

    /// The admin kubeconfig (client certificate) of the cluster, for this host: with a real
    /// node it names the apiserver at the namespace's address.
    pub fn kubeconfig(&self) -> PathBuf {
        if self.with_node {
            self.dir().join("kubeconfig.host.yaml")
        } else {
            self.kwokctl_kubeconfig()
        }
    }

    /// The kubeconfig kwokctl wrote (`https://127.0.0.1:<port>`, valid inside the namespace).
    fn kwokctl_kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig.yaml")
    }

    /// The apiserver's port.
    fn apiserver_port(&self) -> Result<u16> {
        let text = std::fs::read_to_string(self.kwokctl_kubeconfig())?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{} names no https://127.0.0.1:<port> server",
                    self.kwokctl_kubeconfig().display()
                )
            })
    }

    /// Writes [`Cluster::kubeconfig`] for a cluster with a real node.
    fn write_host_kubeconfig(&self, node: &node::Node) -> Result<()> {
        let text = std::fs::read_to_string(self.kwokctl_kubeconfig())?;
        let host = text.replace(
            "server: https://127.0.0.1:",
            &format!("server: https://{}:", node.netns.node_ip()),
        );
        std::fs::write(self.kubeconfig(), host)?;
        Ok(())
    }

    /// Where the components write their logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    fn exists(&self) -> bool {
        self.dir().join("kwok.yaml").is_file()
    }

    fn kwokctl(&self) -> Command {
        // NB: with a real node, kwokctl runs inside the namespace, and so do the components it
        // starts.
        let mut cmd = match self.node() {
            Some(node) => node.netns.command(self.bin.join("kwokctl")),
            None => Command::new(self.bin.join("kwokctl")),
        };
        // NB: kwokctl runs `kubectl` from PATH for some of its waits; make it ours.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.bin.clone()).chain(std::env::split_paths(&path)),
        )
        .unwrap_or(path);
        cmd.env("KWOK_WORKDIR", Self::workdir())
            .env("PATH", path)
            .args(["--name", &self.name]);
        cmd
    }

    /// kwokctl with its (JSON, verbose) log appended to `.tools/cluster/<name>-kwokctl.log`.
    fn kwokctl_logged(&self) -> Result<Command> {
        std::fs::create_dir_all(Self::workdir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.kwokctl_log())?;
        let mut cmd = self.kwokctl();
        cmd.stdout(log.try_clone()?).stderr(log);
        Ok(cmd)
    }

    fn kwokctl_log(&self) -> PathBuf {
        Self::workdir().join(format!("{}-kwokctl.log", self.name))
    }

    /// `kubectl` on this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// Starts the cluster (creating it when it does not exist); returns once `/readyz` answers
    /// ok and the nodes are Ready. Safe to run again: a running cluster is left as it is (its
    /// real node gets the images again).
    pub fn up(&self) -> Result<()> {
        if self.exists() && self.running() {
            println!("\n==> cluster `{}` is already running", self.name);
            if let Some(node) = self.node() {
                node.import(&self.images)?;
            }
            return Ok(());
        }
        // NB: a stopped cluster with a real node is made again (its node's namespaces and
        // mounts did not survive whatever stopped it); one without is restarted.
        if self.exists() && !self.with_node && self.restart().is_ok() {
            println!("    restarted cluster `{}`", self.name);
        } else {
            self.down_quietly();
            self.create()?;
        }
        self.wait_ready()?;
        if let Some(node) = self.node() {
            node.start(self.apiserver_port()?, &self.images, || self.kubectl())?;
        }
        Ok(())
    }

    fn running(&self) -> bool {
        let components = procs::components(&self.dir());
        !components.is_empty()
            && components.iter().all(|c| c.alive())
            && self.readyz()
            && self.node().is_none_or(|n| n.running())
    }

    /// Restarts a cluster whose processes stopped (a reboot, a kill). NB: kwokctl checks
    /// its pid files with signal 0, which a zombie still answers, so `stop` first.
    fn restart(&self) -> Result<()> {
        step(
            &format!("restarting the stopped cluster `{}`", self.name),
            self.kwokctl_logged()?.args(["stop", "cluster"]),
        )?;
        step(
            "starting its components",
            self.kwokctl_logged()?
                .args(["start", "cluster", "--wait", "1m"]),
        )?;
        if !self.readyz() {
            bail!("cluster `{}` did not come back; recreating it", self.name);
        }
        Ok(())
    }

    fn create(&self) -> Result<()> {
        if let Some(node) = self.node() {
            node::netns::Netns::check_host()?;
            node::ensure_packages()?;
            node.netns.create()?;
        }
        std::fs::create_dir_all(Self::workdir())?;
        let config = Self::workdir().join(format!("{}-kwokctl.yaml", self.name));
        std::fs::write(&config, self.kwokctl_config())?;
        step(
            &format!(
                "creating cluster `{}`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (logs in {})",
                self.name,
                self.logs_dir().display()
            ),
            // NB: an empty --kubeconfig keeps kwokctl from adding a context to ~/.kube/config.
            self.kwokctl_logged()?
                .args(["create", "cluster", "--kubeconfig=", "--wait", "2m", "--config"])
                .arg(&config),
        )
        .with_context(|| format!("kwokctl's log: {}", self.kwokctl_log().display()))?;
        if let Some(node) = self.node() {
            self.write_host_kubeconfig(&node)?;
        }
        Ok(())
    }

    /// The kwokctl configuration: binary runtime, RBAC and admission on, every binary from the
    /// cache (so nothing is downloaded); loopback only, or every address of the cluster's own
    /// namespace with a real node.
    fn kwokctl_config(&self) -> String {
        let bin = |tool: &str| self.bin.join(tool).display().to_string();
        let bind = if self.with_node {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        format!(
            "kind: KwokctlConfiguration\napiVersion: config.kwok.x-k8s.io/v1alpha1\noptions:\n\
             \x20 runtime: binary\n  bindAddress: {bind}\n  kubeAuthorization: true\n  kubeAdmission: true\n\
             \x20 kubeVersion: {k8s}\n  etcdBinary: {etcd}\n  kubeApiserverBinary: {apiserver}\n\
             \x20 kubeControllerManagerBinary: {kcm}\n  kubeSchedulerBinary: {scheduler}\n\
             \x20 kwokControllerBinary: {kwok}\n  kubectlBinary: {kubectl}\n",
            k8s = toolchain::KUBERNETES,
            etcd = bin("etcd"),
            apiserver = bin("kube-apiserver"),
            kcm = bin("kube-controller-manager"),
            scheduler = bin("kube-scheduler"),
            kwok = bin("kwok"),
            kubectl = bin("kubectl"),
        ) + &self.node_options()
            + &self.aggregation_patch()
    }

    /// With a real node: the apiserver's certificate also names the namespace's address and the
    /// `kubernetes` Service, which it advertises; it reaches the kubelet (logs, exec,
    /// port-forward) at its InternalIP with the admin pair; kwok manages only its own nodes.
    fn node_options(&self) -> String {
        let Some(node) = self.node() else {
            return String::new();
        };
        let ip = node.netns.node_ip();
        let pki = self.dir().join("pki");
        let apiserver = [
            ("advertise-address", ip.clone()),
            (
                "service-cluster-ip-range",
                node::netns::SERVICE_CIDR.to_owned(),
            ),
            (
                "kubelet-client-certificate",
                pki.join("admin.crt").display().to_string(),
            ),
            (
                "kubelet-client-key",
                pki.join("admin.key").display().to_string(),
            ),
            ("kubelet-preferred-address-types", "InternalIP".to_owned()),
        ];
        let kwok = [
            ("manage-all-nodes", "false".to_owned()),
            (
                "manage-nodes-with-annotation-selector",
                "kwok.x-k8s.io/node=fake".to_owned(),
            ),
        ];
        format!(
            "  kubeApiserverCertSANs:\n  - \"{ip}\"\n  - \"{}\"\n",
            node::netns::KUBERNETES_SERVICE_IP
        ) + &components_patches(&[("kube-apiserver", &apiserver), ("kwok-controller", &kwok)])
    }

    /// kwokctl's patch of the apiserver's and kube-controller-manager's flags for
    /// [`Cluster::fresh_with_aggregation`].
    fn aggregation_patch(&self) -> String {
        let Some(address) = &self.aggregation else {
            return String::new();
        };
        let ca = self.dir().join("pki/ca.crt").display().to_string();
        let args = [
            ("advertise-address", address.clone()),
            ("enable-aggregator-routing", "true".to_owned()),
            ("requestheader-client-ca-file", ca),
            ("requestheader-username-headers", "X-Remote-User".to_owned()),
            ("requestheader-group-headers", "X-Remote-Group".to_owned()),
            (
                "requestheader-extra-headers-prefix",
                "X-Remote-Extra-".to_owned(),
            ),
        ];
        // NB: kube-controller-manager's client limit (20 requests a second, bursts of 30, by
        // default) paces thousands of new Deployments' ReplicaSets, their status updates and
        // Events over minutes, and the HPA controller shares it; the benchmarks' thousands of
        // roles get a limit a large cluster would set instead.
        let kcm = [
            ("kube-api-qps", "200".to_owned()),
            ("kube-api-burst", "400".to_owned()),
        ];
        components_patches(&[("kube-apiserver", &args), ("kube-controller-manager", &kcm)])
    }

    fn readyz(&self) -> bool {
        self.kubectl()
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        while !self.readyz() {
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver of `{}` did not answer /readyz within 120 s; see {}",
                    self.name,
                    self.logs_dir().join("kube-apiserver.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let nodes = output(
            self.kubectl()
                .args(["get", "nodes", "-l", "type=kwok", "-o", "name"]),
        )?;
        if nodes.trim().is_empty() {
            step(
                "adding one kwok node",
                self.kwokctl_logged()?
                    .args(["scale", "node", "--replicas", "1"]),
            )
            .with_context(|| format!("kwokctl's log: {}", self.kwokctl_log().display()))?;
        }
        if self.with_node {
            step(
                "tainting the kwok node (only what tolerates kwok.x-k8s.io/node=fake lands there)",
                self.kubectl().args([
                    "taint",
                    "nodes",
                    "-l",
                    "type=kwok",
                    "kwok.x-k8s.io/node=fake:NoSchedule",
                    "--overwrite",
                ]),
            )?;
        }
        step(
            "waiting for /readyz and the kwok node to be Ready",
            self.kubectl().args([
                "wait",
                "--for=condition=Ready",
                "node",
                "-l",
                "type=kwok",
                "--timeout=120s",
            ]),
        )
    }

    /// Stops every component (by pid) and removes the cluster's data.
    pub fn down(&self) -> Result<()> {
        if !self.exists() {
            println!("cluster `{}` does not exist; nothing to stop", self.name);
            return Ok(());
        }
        if let Some(node) = self.node() {
            println!(
                "\n==> stopping the node {} (containers, daemons, cgroups, namespaces)",
                node.name
            );
            node.stop();
        }
        let deleted = step(
            &format!("stopping cluster `{}` and deleting its data", self.name),
            &mut self.delete_command(),
        );
        let _ = std::fs::remove_file(self.kwokctl_log());
        self.kill_leftovers();
        if let Some(node) = self.node() {
            node.netns.delete();
        }
        let _ = std::fs::remove_dir_all(self.dir());
        deleted
    }

    fn down_quietly(&self) {
        let node = node::Node::new(&self.name, &self.dir(), &self.bin);
        if self.dir().join("node").exists() {
            node.stop();
        }
        if self.dir().exists() {
            let _ = self.delete_command().status();
            self.kill_leftovers();
            let _ = std::fs::remove_dir_all(self.dir());
        }
        // NB: also a namespace whose cluster directory is gone already; only for a cluster
        // with a node (a cluster without one may run inside a namespace of that very name,
        // as `bench peers` does).
        if self.with_node {
            node.netns.delete();
        }
        let _ = std::fs::remove_file(self.kwokctl_log());
    }

    fn delete_command(&self) -> Command {
        // NB: not inside the namespace: deleting only kills processes and removes files, and
        // works after the namespace is gone.
        let mut cmd = Command::new(self.bin.join("kwokctl"));
        cmd.env("KWOK_WORKDIR", Self::workdir())
            .args(["--name", &self.name]);
        // NB: kwokctl removes the cluster's context from this kubeconfig; pointing it at the
        // cluster's own (deleted with it) leaves ~/.kube/config alone.
        cmd.args(["delete", "cluster", "--kubeconfig"])
            .arg(self.kubeconfig())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Kills components kwokctl could not stop (a pid file of a crashed delete, say).
    fn kill_leftovers(&self) {
        for component in procs::components(&self.dir()) {
            if component.alive() {
                let _ = Command::new("kill")
                    .args(["-9", &component.pid.to_string()])
                    .status();
            }
        }
    }

    /// What runs, on which ports, since when.
    pub fn status(&self) -> Result<()> {
        if !self.exists() {
            println!(
                "cluster `{}` does not exist: `cargo xtask cluster up` creates it",
                self.name
            );
            return Ok(());
        }
        println!("cluster `{}` ({})", self.name, self.dir().display());
        println!(
            "{:<24} {:>8}  {:<8} {:<32} since",
            "component", "pid", "state", "listening"
        );
        for c in procs::components(&self.dir()) {
            println!("{}", c.row());
        }
        if let Some(node) = self.node() {
            println!(
                "\nnode {} (in network namespace {}, {})",
                node.name,
                node.netns.name,
                node.netns.node_ip()
            );
            for c in node.components() {
                println!("{}", c.row());
            }
            if let Ok(images) = node.images() {
                println!("images on the node:\n    {}", images.join("\n    "));
            }
        }
        let ready = self.readyz();
        println!("\n/readyz: {}", if ready { "ok" } else { "not answering" });
        if ready {
            let nodes = output(self.kubectl().args(["get", "nodes", "--no-headers"]))?;
            println!("nodes:\n{nodes}");
        }
        println!("kubeconfig: {}", self.kubeconfig().display());
        Ok(())
    }
}

/// A cluster that is deleted when dropped.
#[derive(Debug)]
pub struct TestCluster(Cluster);

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var_os("CQRS_KEEP_TEST_CLUSTER").is_some() {
            println!(
                "keeping cluster `{}` (CQRS_KEEP_TEST_CLUSTER): KUBECONFIG={}",
                self.0.name,
                self.0.kubeconfig().display()
            );
            return;
        }
        self.0.down_quietly();
    }
}

/// kwokctl's `componentsPatches`: extra flags per component.
fn components_patches(components: &[(&str, &[(&str, String)])]) -> String {
    let mut text = String::from("componentsPatches:\n");
    for (component, args) in components {
        text.push_str(&format!("- name: {component}\n  extraArgs:\n"));
        for (key, value) in *args {
            text.push_str(&format!("  - key: {key}\n    value: \"{value}\"\n"));
        }
    }
    text
}
