// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses: the
// kubernetes plugin answers for Services and Pods of cluster.local, nothing is forwarded
// (no name outside the cluster resolves, so no query leaves the node's network
// namespace). CoreDNS's own main imports every plugin (AWS, Azure, Google Cloud, etcd, ...);
// importing only these keeps the build small. `cargo xtask cluster` builds it from the
// Go module proxy beside the Kubernetes binaries (xtask/src/cluster/toolchain.rs).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
