//! `cargo xtask e2e --cluster kwok`: the operator's lifecycle on the local control plane, as a
//! user runs it: the chart installed with Helm, the operator under the chart's ServiceAccount,
//! CqrsApps applied with kubectl, storage on a real Azurite, the roles' pod templates run on
//! the host. The scenarios are the cluster tests (`operator/tests/cluster/`); this runs them
//! on a cluster of its own and prints what they measured.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;
use crate::shell::cargo;
use crate::test::SharedAzurite;

/// Runs the lifecycle scenarios; `keep` leaves the cluster running afterwards.
pub fn run(keep: bool) -> Result<()> {
    let started = Instant::now();
    let azurite_bin = crate::tools::azurite()?;
    crate::up::build_roles()?;
    let azurite = SharedAzurite::start(&azurite_bin)?;
    let cluster = Cluster::fresh("cqrs-e2e")?;
    println!(
        "\n==> the lifecycle on the local control plane (kubeconfig {})",
        cluster.kubeconfig().display()
    );
    let mut tests = cargo();
    tests
        .args([
            "test",
            "--package",
            "cqrs-operator",
            "--test",
            "cluster",
            "--",
            "--nocapture",
        ])
        .env("CQRS_TEST_AZURITE", azurite.connection_string())
        .env("CQRS_TEST_KUBECONFIG", cluster.kubeconfig())
        .env("CQRS_TEST_CLUSTER_LOGS", cluster.logs_dir())
        .env("CQRS_TEST_K8S_BIN", &cluster.bin)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tests.spawn().context("cannot start cargo test")?;
    let measured = Arc::new(Mutex::new(Vec::new()));
    let forward = |stream: Box<dyn std::io::Read + Send>, measured: Arc<Mutex<Vec<String>>>| {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // The control plane's own log lines (klog) stay in its logs.
                if line.starts_with(['I', 'W', 'E'])
                    && line
                        .get(1..5)
                        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
                {
                    continue;
                }
                if let Some(figure) = line.strip_prefix("measured: ") {
                    measured
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(figure.to_owned());
                }
                println!("{line}");
            }
        })
    };
    let out = forward(
        Box::new(child.stdout.take().context("piped stdout")?),
        measured.clone(),
    );
    let err = forward(
        Box::new(child.stderr.take().context("piped stderr")?),
        measured.clone(),
    );
    let status = child.wait()?;
    let _ = (out.join(), err.join());
    println!("\n==> measured on the local control plane");
    for figure in measured.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("    {figure}");
    }
    if keep {
        println!(
            "\nkeeping cluster `{}`: KUBECONFIG={}",
            cluster.name,
            cluster.kubeconfig().display()
        );
        std::mem::forget(cluster);
    }
    drop(azurite);
    if !status.success() {
        bail!(
            "the lifecycle scenarios failed ({status}); the cluster's logs were in .tools/cluster/"
        );
    }
    println!(
        "\ne2e on the local control plane passed in {:.0}s",
        started.elapsed().as_secs_f32()
    );
    Ok(())
}
