//! Project tasks: `cargo xtask <task>`.
//!
//! Each task lives in its own module; all shell out to `cargo`, `npm` and friends with
//! `std::process`, so this crate stays small and builds in seconds.

mod azurite;
mod bench;
mod chart;
mod cluster;
mod crd;
mod e2e;
mod images;
mod peers;
mod shell;
mod test;
mod tools;
mod up;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  up      run the reference app locally on Azurite with autoscaling workers (Ctrl-C stops)
  test    everything CI checks: installs test tools if missing, fmt, clippy, CRD in sync,
          all tests against a real Azurite
  e2e     the chart with its demo on a fresh cluster, as a user runs it: --cluster local (the
          default without Docker: the local cluster with its real node) or --cluster kind
          (needs Docker, kind, kubectl, Helm, curl); images built and loaded, a registration
          and a scan through the web Service, a backlog scaling the workers 0 -> N -> 0; prints
          what it measured; --keep leaves the cluster
  bench   benchmarks on release builds, each against a baseline measured in the same run;
          writes bench/results.md and the table in docs/benchmarks.md (--quick: short runs;
          --only <name>: one benchmark; both write target/bench-partial.md instead);
          `bench peers`: cqrs-operator beside KEDA + HPA on the local control plane (builds
          KEDA from the Go module proxy; needs root for its network namespace; [--runs N]);
          `bench scale [--apps 100,1000] [--workers 2]`: N apps on one cqrs-operator, then
          N x K ScaledObjects on KEDA, on the same cluster and queues (needs root)
  cluster up [--no-node] [--debug] | down | env | status | load [--debug]
          a local Kubernetes 1.33 cluster from binaries built from the Go module proxy and
          cached in ~/.cache/cqrs-operator: etcd, apiserver, controller-manager, scheduler, a
          tainted kwok node, and a real node (kubelet, kube-proxy, containerd, runc, CoreDNS)
          in a network namespace of its own, with the images of `cargo xtask images` loaded
          (needs root); `eval \"$(cargo xtask cluster env)\"` points kubectl at it; `load`
          rebuilds the images and loads them again
  images  build the container images without Docker: the operator, the reference app, Azurite
          (for the chart's demo) and the local node's pause image, each a distroless-style
          base from locked Debian packages plus its own layer; reproducible, with an SPDX SBOM;
          into target/images/ (OCI layout + archive). [--debug] binaries of the dev profile;
          [--push <registry> [--insecure]] with skopeo; [--update-lock] re-lock the packages
  crd     regenerate charts/cqrs-operator/crds/ from the Rust types
  tools   install the test tools (Azurite, playwright-core, Chromium, Python chart tools, the
          control plane binaries) without running anything
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up::run(),
        Some("e2e") => e2e::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("images") => images::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("crd") => crd::write(),
        Some("cluster") => cluster::run(&args[1..]),
        Some("tools") => tools::azurite()
            .and_then(|_| tools::playwright())
            .and_then(|_| tools::chromium())
            .and_then(|_| tools::python())
            .and_then(|_| cluster::toolchain::ensure())
            .map(|_| ()),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("unknown task `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
