//! The node's configuration files: containerd (CRI, runc, the CNI bridge), the kubelet,
//! kube-proxy and CoreDNS. Paths under `/var/lib`, `/var/log` and `/run` are the node's own:
//! its daemons run in a private mount namespace where those are its directories.

use std::path::Path;

use super::netns::{Netns, POD_CIDR};

/// containerd 1.6 with the CRI plugin. NB: `restrict_oom_score_adj`, because this VM has no
/// CAP_SYS_RESOURCE to lower a score (runc fails with "can't get final child's PID from
/// pipe" otherwise); `netns_mounts_under_state_dir`, so pod network namespaces are mounted in
/// the node's own /run; the sandbox image is the locally built pause image, which nothing can
/// pull again, so image garbage collection is off in the kubelet.
pub fn containerd(node: &Path, pause_image: &str) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"#,
        socket = node.join("containerd.sock").display(),
        cni_conf = node.join("cni-conf").display(),
    )
}

/// The pods' network: a bridge with masquerading, addresses from `POD_CIDR`.
pub fn cni() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cqrs",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet: cgroup v1 with the cgroupfs driver under `cgroup_root`, webhook
/// authorization, the cluster CA for client certificates, the cluster DNS on the node's
/// address, no image garbage collection, no eviction of its own on a full disk.
pub fn kubelet(netns: &Netns, node: &Path, pki: &Path, cgroup_root: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
clusterDNS:
- {ip}
clusterDomain: cluster.local
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
protectKernelDefaults: true
serializeImagePulls: false
shutdownGracePeriod: 0s
maxPods: 110
registerNode: true
"#,
        ip = netns.node_ip(),
        ca = pki.join("ca.crt").display(),
        socket = node.join("containerd.sock").display(),
    )
}

/// kube-proxy in iptables mode; it leaves the conntrack sysctls (some are global) alone.
pub fn kube_proxy(kubeconfig: &Path, node_name: &str) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: {node_name}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// CoreDNS answering for the cluster's Services and Pods on the node's address; nothing is
/// forwarded, so no query leaves the namespace.
pub fn corefile(netns: &Netns, kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 10
    loadbalance
}}
"#,
        ip = netns.node_ip(),
        kubeconfig = kubeconfig.display(),
    )
}
