//! A real node beside the control plane: containerd (CRI) + runc + the CNI bridge from
//! Debian, the kubelet and kube-proxy from the cached multi-call binary, CoreDNS as the
//! cluster DNS, and the images of `cargo xtask images` imported the way `kind load` leaves them.
//!
//! Everything runs inside the cluster's network namespace ([`Netns`]), and the daemons inside
//! one private mount namespace (`unshare --mount --propagation slave`, held by a `sleep`): in
//! it the node's own directories are bind-mounted over `/run`, `/var/lib` and `/var/log`, and
//! files holding the values the kubelet insists on over three `/proc/sys` entries (it would
//! otherwise change them for the whole VM). When the daemons and the holder are gone, so are
//! their mounts; the pods' cgroups live in one subtree (`cgroupRoot`), removed by `stop`.
//! `../shared/REAL-NODE.md` has the facts of this VM this is built on.

pub mod config;
pub mod netns;
mod pki;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use netns::Netns;

use super::procs;
use crate::shell::{output, step};

/// The daemons, in start order.
const DAEMONS: &[&str] = &["containerd", "coredns", "kubelet", "kube-proxy"];

/// Debian packages the node needs: `(program, package)`.
pub const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/bin/catatonit", "catatonit"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/conntrack", "conntrack"),
    ("/usr/bin/openssl", "openssl"),
];

/// One cluster's node.
#[derive(Debug)]
pub struct Node {
    /// The namespace it lives in.
    pub netns: Netns,
    /// The Node's name.
    pub name: String,
    /// `<cluster dir>/node`: configuration, state, logs, pid files.
    dir: PathBuf,
    /// `<cluster dir>/pki`, kwokctl's CA and admin pair.
    pki: PathBuf,
    /// The cached binaries.
    bin: PathBuf,
}

impl Node {
    /// The node of the cluster `cluster` whose files are in `cluster_dir`.
    pub fn new(cluster: &str, cluster_dir: &Path, bin: &Path) -> Self {
        Node {
            netns: Netns::for_cluster(cluster),
            name: format!("{cluster}-node"),
            dir: cluster_dir.join("node"),
            pki: cluster_dir.join("pki"),
            bin: bin.to_path_buf(),
        }
    }

    /// Its daemons' logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// containerd's socket (`ctr --address`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn holder_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pids/holder.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether every daemon runs.
    pub fn running(&self) -> bool {
        let components = procs::components(&self.dir);
        DAEMONS
            .iter()
            .all(|d| components.iter().any(|c| c.name == *d && c.alive()))
    }

    /// The daemons and the holder, for `cargo xtask cluster status`.
    pub fn components(&self) -> Vec<procs::Component> {
        procs::components(&self.dir)
    }

    /// Starts the node against the apiserver on `apiserver_port` (inside the namespace), imports
    /// `images` (archives), and waits until the Node is Ready.
    pub fn start(
        &self,
        apiserver_port: u16,
        images: &[PathBuf],
        kubectl: impl Fn() -> Command,
    ) -> Result<()> {
        let started = Instant::now();
        for sub in [
            "run", "var-lib", "var-log", "sysctl", "certs", "cni-conf", "logs", "pids",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        self.write_config(apiserver_port)?;
        let cgroup_root = self.make_cgroups()?;
        std::fs::write(
            self.dir.join("kubelet.yaml"),
            config::kubelet(&self.netns, &self.dir, &self.pki, &cgroup_root),
        )?;
        self.start_holder()?;
        self.spawn(
            "containerd",
            &[
                "containerd".into(),
                "--config".into(),
                self.dir.join("containerd.toml").display().to_string(),
            ],
        )?;
        self.wait(
            "containerd to answer",
            Duration::from_secs(30),
            "containerd",
            || {
                self.ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        )?;
        self.import(images)?;
        self.spawn(
            "coredns",
            &[
                self.bin.join("coredns").display().to_string(),
                "-conf".into(),
                self.dir.join("Corefile").display().to_string(),
            ],
        )?;
        self.spawn(
            "kubelet",
            &[
                self.bin.join("kubelet").display().to_string(),
                format!("--config={}", self.dir.join("kubelet.yaml").display()),
                format!(
                    "--kubeconfig={}",
                    self.dir.join("kubelet.kubeconfig").display()
                ),
                format!("--hostname-override={}", self.name),
                format!("--node-ip={}", self.netns.node_ip()),
                "--node-labels=cqrs.dev/node=real".into(),
                "--v=1".into(),
            ],
        )?;
        self.spawn(
            "kube-proxy",
            &[
                self.bin.join("kube-proxy").display().to_string(),
                format!("--config={}", self.dir.join("kube-proxy.yaml").display()),
                "--v=1".into(),
            ],
        )?;
        self.wait(
            &format!("node {} to be Ready", self.name),
            Duration::from_secs(180),
            "kubelet",
            || {
                kubectl()
                    .args([
                        "get",
                        "node",
                        &self.name,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
            },
        )?;
        println!(
            "    node {} Ready in {:.1}s (kubelet {}, {})",
            self.name,
            started.elapsed().as_secs_f32(),
            super::toolchain::KUBERNETES,
            output(kubectl().args([
                "get",
                "node",
                &self.name,
                "-o",
                "jsonpath={.status.nodeInfo.containerRuntimeVersion}"
            ]))
            .unwrap_or_default()
        );
        Ok(())
    }

    fn write_config(&self, apiserver_port: u16) -> Result<()> {
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let ca = self.pki.join("ca.crt");
        let certs = self.dir.join("certs");
        let kubelet = pki::client(
            &self.pki,
            &certs,
            "kubelet",
            &format!("system:node:{}", self.name),
            Some("system:nodes"),
        )?;
        let proxy = pki::client(&self.pki, &certs, "kube-proxy", "system:kube-proxy", None)?;
        // CoreDNS lists and watches Services, EndpointSlices, Namespaces and Pods: the admin pair
        // kwokctl made (a kubeadm cluster binds a `system:coredns` role instead).
        let admin = pki::Pair {
            cert: self.pki.join("admin.crt"),
            key: self.pki.join("admin.key"),
        };
        let write = |name: &str, text: String| -> Result<()> {
            std::fs::write(self.dir.join(name), text)
                .with_context(|| format!("cannot write {name}"))
        };
        write(
            "kubelet.kubeconfig",
            pki::kubeconfig(&server, &ca, &kubelet),
        )?;
        write(
            "kube-proxy.kubeconfig",
            pki::kubeconfig(&server, &ca, &proxy),
        )?;
        write("coredns.kubeconfig", pki::kubeconfig(&server, &ca, &admin))?;
        write(
            "kube-proxy.yaml",
            config::kube_proxy(&self.dir.join("kube-proxy.kubeconfig"), &self.name),
        )?;
        write(
            "Corefile",
            config::corefile(&self.netns, &self.dir.join("coredns.kubeconfig")),
        )?;
        write(
            "containerd.toml",
            config::containerd(&self.dir, &crate::images::pause_image()),
        )?;
        write("cni-conf/10-cqrs.conflist", config::cni())?;
        for (file, value) in [
            ("overcommit_memory", "1"),
            ("panic", "10"),
            ("panic_on_oops", "1"),
        ] {
            write(&format!("sysctl/{file}"), format!("{value}\n"))?;
        }
        Ok(())
    }

    /// The pods' cgroup subtree, under this process's memory cgroup (so the node counts against
    /// whatever contains us), in every hierarchy; records what it made for `stop`.
    fn make_cgroups(&self) -> Result<String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let base = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .unwrap_or_default();
        let root = format!("{}/{}", base.trim_end_matches('/'), self.name);
        let mut made = Vec::new();
        for hierarchy in cgroup_hierarchies()? {
            let mut current = hierarchy.clone();
            for part in root.split('/').filter(|p| !p.is_empty()) {
                let next = current.join(part);
                if !next.exists() {
                    std::fs::create_dir(&next)
                        .with_context(|| format!("cannot make cgroup {}", next.display()))?;
                    // NB: a new cpuset cgroup has no CPUs and no memory nodes until given its
                    // parent's.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        if let Ok(value) = std::fs::read_to_string(current.join(file)) {
                            std::fs::write(next.join(file), value.trim())?;
                        }
                    }
                    made.push(next.display().to_string());
                }
                current = next;
            }
        }
        std::fs::write(self.dir.join("cgroups"), made.join("\n"))?;
        Ok(root)
    }

    fn start_holder(&self) -> Result<()> {
        let log = std::fs::File::create(self.logs_dir().join("holder.log"))?;
        let child = self
            .netns
            .command("unshare")
            .args(["--mount", "--propagation", "slave", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start the node's mount namespace holder")?;
        let pid = child.id();
        std::fs::write(self.dir.join("pids/holder.pid"), pid.to_string())?;
        let ours = std::fs::read_link("/proc/self/ns/mnt")?;
        self.wait(
            "the node's mount namespace",
            Duration::from_secs(10),
            "holder",
            || {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns != ours)
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
            },
        )?;
        let binds = [
            (self.dir.join("run"), "/run"),
            (self.dir.join("var-lib"), "/var/lib"),
            (self.dir.join("var-log"), "/var/log"),
            (
                self.dir.join("sysctl/overcommit_memory"),
                "/proc/sys/vm/overcommit_memory",
            ),
            (self.dir.join("sysctl/panic"), "/proc/sys/kernel/panic"),
            (
                self.dir.join("sysctl/panic_on_oops"),
                "/proc/sys/kernel/panic_on_oops",
            ),
        ];
        for (from, to) in binds {
            output(
                Command::new("nsenter")
                    .args(["-t", &pid.to_string(), "-m", "--", "mount", "--bind"])
                    .arg(&from)
                    .arg(to),
            )
            .with_context(|| {
                format!(
                    "cannot bind {} over {to} in the node's mount namespace",
                    from.display()
                )
            })?;
        }
        Ok(())
    }

    /// Starts `args` inside the node's namespaces, detached, logging to `logs/<name>.log`.
    fn spawn(&self, name: &str, args: &[String]) -> Result<()> {
        let pid = self
            .holder_pid()
            .context("the node's mount namespace holder is not running")?;
        let log = std::fs::File::create(self.logs_dir().join(format!("{name}.log")))?;
        let child = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n", "--"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        std::fs::write(
            self.dir.join(format!("pids/{name}.pid")),
            child.id().to_string(),
        )?;
        Ok(())
    }

    /// `ctr` on the node's containerd, in the namespace the CRI uses.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// Imports image archives (`ctr images import`, as `kind load image-archive` does).
    pub fn import(&self, images: &[PathBuf]) -> Result<()> {
        for archive in images {
            step(
                &format!(
                    "loading {} onto the node",
                    archive.file_name().unwrap_or_default().to_string_lossy()
                ),
                self.ctr()
                    .args(["images", "import"])
                    .arg(archive)
                    .stdout(Stdio::null()),
            )?;
        }
        Ok(())
    }

    /// The images on the node (`ctr images ls -q`).
    pub fn images(&self) -> Result<Vec<String>> {
        Ok(output(self.ctr().args(["images", "ls", "-q"]))?
            .lines()
            .filter(|l| !l.starts_with("sha256:"))
            .map(str::to_owned)
            .collect())
    }

    /// Polls `check` every 250 ms; after `limit`, fails with the last lines of `daemon`'s log
    /// (and says so if it exited).
    fn wait(
        &self,
        what: &str,
        limit: Duration,
        daemon: &str,
        mut check: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if check() {
                return Ok(());
            }
            let exited = procs::components(&self.dir)
                .iter()
                .find(|c| c.name == daemon)
                .is_some_and(|c| !c.alive());
            if exited || Instant::now() > deadline {
                bail!(
                    "{what}: {} {daemon}; its last log lines ({}):\n{}",
                    if exited {
                        "it failed, since"
                    } else {
                        "gave up waiting after"
                    },
                    self.logs_dir().join(format!("{daemon}.log")).display(),
                    tail(&self.logs_dir().join(format!("{daemon}.log")), 25)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops everything the node started and removes its cgroups; its directory goes with the
    /// cluster's, its network namespace with the control plane ([`Netns::delete`]).
    pub fn stop(&self) {
        let components = procs::components(&self.dir);
        let kill = |pid: u32| {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        };
        for daemon in ["kubelet", "kube-proxy", "coredns"] {
            components
                .iter()
                .filter(|c| c.name == daemon && c.alive())
                .for_each(|c| kill(c.pid));
        }
        let made: Vec<PathBuf> = std::fs::read_to_string(self.dir.join("cgroups"))
            .unwrap_or_default()
            .lines()
            .map(PathBuf::from)
            .collect();
        // The containers: every process in the pods' cgroups.
        for cgroup in &made {
            for pid in cgroup_procs(cgroup) {
                kill(pid);
            }
        }
        // containerd's shims name its socket on their command line.
        let socket = self.containerd_socket().display().to_string();
        for pid in procs::matching(|cmdline| {
            cmdline.contains("containerd-shim") && cmdline.contains(&socket)
        }) {
            kill(pid);
        }
        for name in ["containerd", "holder"] {
            components
                .iter()
                .filter(|c| c.name == name && c.alive())
                .for_each(|c| kill(c.pid));
        }
        // rmdir works once a cgroup holds no process; the kills above take a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        for cgroup in made.iter().rev() {
            while cgroup.exists() && !remove_cgroup_tree(cgroup) && Instant::now() < deadline {
                for pid in cgroup_procs(cgroup) {
                    kill(pid);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The mounted cgroup v1 hierarchies (and the unified one), e.g. `/sys/fs/cgroup/memory`.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut out: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, kind) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "cgroup" | "cgroup2").then(|| PathBuf::from(target))
        })
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        bail!("no cgroup hierarchy is mounted (/proc/self/mounts lists none)");
    }
    Ok(out)
}

/// Every pid in `cgroup` and below.
fn cgroup_procs(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
    }
    pids
}

/// Removes a cgroup and its children, deepest first; whether it is gone.
fn remove_cgroup_tree(cgroup: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for child in entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
        {
            remove_cgroup_tree(&child);
        }
    }
    std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists()
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read it: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes sure the node's Debian packages are installed (apt-get as root); fails naming them
/// otherwise.
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !Path::new(program).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root_user = output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0");
    if !(root_user && crate::shell::on_path("apt-get")) {
        bail!(
            "the real node needs these Debian packages, which are not installed: {}. \
             Install them (`sudo apt-get install {}`) and run this again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let install = |update: bool| -> Result<()> {
        if update {
            step(
                "apt-get update",
                Command::new("apt-get").args(["update", "-q"]),
            )?;
        }
        step(
            &format!(
                "installing the node's packages from Debian: {}",
                missing.join(" ")
            ),
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "-q"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    install(false).or_else(|_| install(true))
}
