// Command k8s-tools is one multi-call binary holding the local cluster that
// `cargo xtask cluster` runs: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kubectl, kwok and kwokctl, and the real node's kubelet and
// kube-proxy. It picks the tool by the name it was called as (symlinks in the
// cache's bin/), so the nine programs share one link step and one copy of the
// Kubernetes libraries on disk (hyperkube did the same).
//
// The go.mod beside this file is written by xtask (src/cluster/toolchain.rs): it pins
// the versions and replaces every Kubernetes staging module with its published
// release, a list derived from the .mod file the Go module proxy serves.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	kwokconfig "sigs.k8s.io/kwok/pkg/config"
	kwok "sigs.k8s.io/kwok/pkg/kwok/cmd"
	kwokctl "sigs.k8s.io/kwok/pkg/kwokctl/cmd"
	_ "sigs.k8s.io/kwok/pkg/kwokctl/runtime/binary"
	kwoklog "sigs.k8s.io/kwok/pkg/log"
	"sigs.k8s.io/kwok/pkg/utils/signals"
	_ "time/tzdata"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

// tools maps each program name to its entry point, which returns the exit code.
var tools = map[string]func() int{
	"etcd": func() int {
		etcdmain.Main(os.Args)
		return 0
	},
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":                 func() int { return cli.Run(kubelet.NewKubeletCommand()) },
	"kube-proxy":              func() int { return cli.Run(proxy.NewProxyCommand()) },
	"kubectl": func() int {
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"kwok":    func() int { return runKwok(false) },
	"kwokctl": func() int { return runKwok(true) },
	// kwokctl links the kwok binary into a cluster's bin/ under this name.
	"kwok-controller": func() int { return runKwok(false) },
}

// runKwok mirrors kwok's own cmd/kwok and cmd/kwokctl mains.
func runKwok(ctl bool) int {
	// NB: the Kubernetes libraries register a global --version flag (component-base's
	// verflag) at init; kwok's cobra commands define their own, so they get a clean set.
	pflag.CommandLine = pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	flagset := pflag.NewFlagSet("global", pflag.ContinueOnError)
	flagset.ParseErrorsWhitelist.UnknownFlags = true
	flagset.Usage = func() {}
	ctx := signals.SetupSignalContext()
	ctx, logger := kwoklog.InitFlags(ctx, flagset)
	ctx, err := kwokconfig.InitFlags(ctx, flagset)
	if err != nil {
		_, _ = os.Stderr.Write([]byte(flagset.FlagUsages()))
		logger.Error("Init config flags", err)
		return 1
	}
	command := kwok.NewCommand(ctx)
	if ctl {
		command = kwokctl.NewCommand(ctx)
	}
	command.PersistentFlags().AddFlagSet(flagset)
	if err := command.ExecuteContext(ctx); err != nil {
		logger.Error("Execute exit", err)
		return 1
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := tools[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "k8s-tools: called as %q; link it as one of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, kwok (kwok-controller), kwokctl\n", name)
		os.Exit(2)
	}
	os.Exit(run())
}
