//! The network namespace a cluster with a real node lives in: the control plane, the node's
//! daemons and its pods' bridge. A veth pair joins it to this host: `<host ip>/30` on the host
//! end, `<node ip>/30` on `eth0` inside. Traffic may only go to loopback or into namespaces
//! of our own, so the namespace sends nothing out of `eth0` but answers to the host end
//! (filter rules inside it), and the host routes nothing into it but that /30.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{output, step};

/// A cluster's network namespace and its addresses.
#[derive(Debug, Clone)]
pub struct Netns {
    /// `ip netns` name.
    pub name: String,
    /// The third octet of `10.251.<n>.0/30`.
    subnet: u8,
}

/// The pod network on the node's bridge.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The Service ClusterIP range (the `kubernetes` Service is its first address).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

impl Netns {
    /// The namespace of cluster `cluster`: a fixed /30 for the clusters the tooling knows, so
    /// the user's, the tests' and e2e's can run at once; a hashed one otherwise.
    pub fn for_cluster(cluster: &str) -> Self {
        let subnet = match cluster {
            "cqrs" => 1,
            "cqrs-test" => 2,
            "cqrs-e2e" => 3,
            other => {
                10 + (other
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31) + b as u32)
                    % 200) as u8
            }
        };
        let name = if cluster.starts_with("cqrs") {
            cluster.to_owned()
        } else {
            format!("cqrs-{cluster}")
        };
        Netns { name, subnet }
    }

    /// The node's address (on `eth0` inside): where the apiserver, the kubelet, the cluster DNS
    /// and anything the tests start inside listen.
    pub fn node_ip(&self) -> String {
        format!("10.251.{}.2", self.subnet)
    }

    /// The host end's address.
    pub fn host_ip(&self) -> String {
        format!("10.251.{}.1", self.subnet)
    }

    /// The host end's link name (at most 15 characters).
    fn host_link(&self) -> String {
        format!("cqrs{}h", self.subnet)
    }

    /// `/run/netns/<name>`, what `nsenter --net=` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Whether this process runs in it.
    fn is_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let id = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        id(&self.path()).is_some_and(|ns| Some(ns) == id(std::path::Path::new("/proc/self/ns/net")))
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// `program` run inside the namespace (`nsenter --net`, which, unlike `ip netns exec`,
    /// leaves /sys and its cgroup hierarchies as they are).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        output(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// Creates the namespace (deleting a stale one of that name first), the veth pair, the
    /// routes, the sysctls pods need and the rules that keep traffic inside.
    pub fn create(&self) -> Result<()> {
        self.delete();
        let (host, node) = (self.host_ip(), self.node_ip());
        step(
            &format!(
                "network namespace {} (node {node}, host end {host} on {})",
                self.name,
                self.host_link()
            ),
            Command::new("ip").args(["netns", "add", &self.name]),
        )?;
        let link = self.host_link();
        output(Command::new("ip").args([
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &self.name,
        ]))
        .with_context(|| format!("cannot create the veth pair {link} <-> {}:eth0", self.name))?;
        output(Command::new("ip").args(["addr", "add", &format!("{host}/30"), "dev", &link]))?;
        output(Command::new("ip").args(["link", "set", &link, "up"]))?;
        self.ip(&["link", "set", "lo", "up"])?;
        self.ip(&["addr", "add", &format!("{node}/30"), "dev", "eth0"])?;
        self.ip(&["link", "set", "eth0", "up"])?;
        // A default route, so that the node's own connections to a ClusterIP are routed at all
        // (kube-proxy rewrites them on the way out); the rules below drop whatever it did not
        // rewrite.
        self.ip(&["route", "add", "default", "via", &host, "dev", "eth0"])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.route_localnet", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
        ] {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            output(
                self.command("sh")
                    .args(["-c", &format!("echo {value} > {path}")]),
            )
            .with_context(|| {
                format!(
                    "cannot set {key} in {} (is br_netfilter loaded?)",
                    self.name
                )
            })?;
        }
        // NB: in mangle POSTROUTING, where the route is final: a node-local connection to a
        // ClusterIP was first routed to eth0 and only then rewritten by kube-proxy's DNAT, and
        // a filter OUTPUT rule on eth0 dropped it.
        output(self.command("iptables").args([
            "-w",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "!",
            "-d",
            &host,
            "-j",
            "DROP",
            "-m",
            "comment",
            "--comment",
            "cqrs: nothing leaves the node's namespace",
        ]))
        .with_context(|| format!("cannot add the POSTROUTING rule in {}", self.name))?;
        Ok(())
    }

    /// Kills what still runs in the namespace and deletes it (its veth pair goes with it).
    pub fn delete(&self) {
        if !self.exists() {
            return;
        }
        // NB: never the namespace this process runs in (killing its processes kills us).
        if self.is_ours() {
            return;
        }
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", &self.name])) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Fails naming what is missing to make the namespace (iptables is one of the node's
    /// [`super::PACKAGES`], installed after this check).
    pub fn check_host() -> Result<()> {
        if output(Command::new("id").arg("-u"))?.trim() != "0" {
            bail!(
                "a cluster with a real node needs root (network and mount namespaces, \
                 containerd, cgroups): run it as root (sudo -E cargo xtask …), or \
                 `cargo xtask cluster up --no-node` for the control plane alone"
            );
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
        ] {
            if !crate::shell::on_path(tool) {
                bail!("`{tool}` is not on PATH: apt-get install {package}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_clusters_get_their_own_subnet_and_short_link_names() {
        let test = Netns::for_cluster("cqrs-test");
        assert_eq!(
            (test.name.as_str(), test.node_ip(), test.host_ip()),
            (
                "cqrs-test",
                "10.251.2.2".to_owned(),
                "10.251.2.1".to_owned()
            )
        );
        assert_eq!(Netns::for_cluster("cqrs").name, "cqrs");
        assert_eq!(Netns::for_cluster("mine").name, "cqrs-mine");
        let other = Netns::for_cluster("my-cluster");
        assert!(other.subnet >= 10 && other.host_link().len() <= 15);
    }
}
