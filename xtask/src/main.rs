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
mod e2e_kwok;
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
  e2e     end to end on a cluster: --cluster kwok (the default without Docker) runs the
          operator's lifecycle on the local control plane and prints what it measured;
          --cluster kind the chart with its demo on kind (needs Docker, kind, kubectl, Helm,
          curl); --keep leaves the cluster
  bench   benchmarks on release builds, each against a baseline measured in the same run;
          writes bench/results.md and the table in docs/benchmarks.md (--quick: short runs;
          --only <name>: one benchmark; both write target/bench-partial.md instead);
          `bench peers`: cqrs-operator beside KEDA + HPA on the local control plane (builds
          KEDA from the Go module proxy; needs root for its network namespace; [--runs N])
  cluster up | down | env | status
          a local Kubernetes 1.33 control plane (etcd, apiserver, controller-manager,
          scheduler, kwok fake node) from binaries built from the Go module proxy and cached
          in ~/.cache/cqrs-operator; `eval \"$(cargo xtask cluster env)\"` points kubectl at it
  images  build the operator and reference app container images (needs Docker)
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
        Some("images") => images::build(),
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
