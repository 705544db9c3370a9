//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::process::{Child, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::azurite;
use crate::shell::{cargo, on_path, step, target_dir};
use crate::{crd, tools};

/// Runs the checks; extra arguments go to the test runner (e.g. a test name filter).
pub fn run(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    let azurite_bin = tools::azurite()?;
    tools::playwright()?;
    let chromium = tools::chromium()?;
    let python = tools::python()?;
    crate::cluster::toolchain::ensure()?;

    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy (all targets, warnings are errors)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    println!("\n==> CRD in sync with the Rust types");
    crd::check()?;
    crate::chart::check(&python)?;

    let nextest = nextest_available();
    let runner = || {
        let mut c = cargo();
        if nextest {
            c.args(["nextest", "run", "--workspace"]);
        } else {
            c.args(["test", "--workspace"]);
        }
        c
    };
    step(
        "building the tests and the binaries they run",
        runner().arg("--no-run"),
    )?;
    // NB: the images hold the binaries the tests just built (the dev profile), so CI compiles
    // them once; users ship `cargo xtask images` (release).
    let images = crate::images::build(&crate::images::Binaries::In(target_dir().join("debug")))?;
    crate::images::validate_sboms(&images, &python)?;

    let cluster = crate::cluster::Cluster::for_tests(
        images.images.iter().map(|o| o.archive.clone()).collect(),
    )?;
    let node = cluster.node().context("the test cluster has a real node")?;
    // Every Azurite of the tests runs inside the cluster's namespace, where pods reach it.
    let netns = (node.netns.path(), node.netns.node_ip());
    let azurite = SharedAzurite::start(&azurite_bin, Some((&netns.0, &netns.1)))?;
    let mut tests = runner();
    tests.arg("--no-fail-fast");
    if nextest && std::env::var_os("CI").is_some() {
        tests.args(["--profile", "ci"]);
    }
    if !nextest {
        println!("(cargo-nextest not found; using cargo test)");
    }
    tests
        .args(extra)
        .env("CQRS_TEST_AZURITE", azurite.connection_string())
        .env("CHROMIUM", &chromium)
        .env("CQRS_TEST_PYTHON", &python)
        .env("CQRS_TEST_KUBECONFIG", cluster.kubeconfig())
        .env("CQRS_TEST_CLUSTER_LOGS", cluster.logs_dir())
        .env("CQRS_TEST_K8S_BIN", &cluster.bin)
        .env(
            "CQRS_TEST_NETNS",
            format!("{}={}", netns.0.display(), netns.1),
        )
        .env("CQRS_TEST_NODE_LOGS", node.logs_dir())
        .env("RUST_BACKTRACE", "0");
    let result = step(
        "all tests (against Azurite and the local control plane)",
        &mut tests,
    );
    drop(cluster);
    drop(azurite);
    result?;

    println!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f32()
    );
    Ok(())
}

fn nextest_available() -> bool {
    on_path("cargo-nextest")
        || cargo()
            .args(["nextest", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// One Azurite for the whole test run (tests each use their own queue and container names),
/// in memory, on free loopback ports, stopped when dropped.
pub struct SharedAzurite {
    child: Child,
    /// Where clients reach it.
    host: String,
    blob: u16,
    queue: u16,
}

impl SharedAzurite {
    /// Starts it on ports the kernel picks (read from what it prints, so no other process can
    /// take one between our choice and its bind): on 127.0.0.1, or inside `netns` (its path and
    /// address), where a cluster's pods reach it too.
    pub fn start(bin: &std::path::Path, netns: Option<(&std::path::Path, &str)>) -> Result<Self> {
        println!("\n==> starting Azurite for the tests");
        let (mut child, listening) =
            azurite::spawn_in(netns.map(|(path, _)| path), bin, 0, 0, None, false)?;
        let host = netns.map_or("127.0.0.1", |(_, address)| address).to_owned();
        match azurite::wait_listening(&mut child, listening) {
            Ok(Ok((blob, queue))) => {
                println!("    listening: blob {host}:{blob}, queue {host}:{queue}");
                Ok(SharedAzurite {
                    child,
                    host,
                    blob,
                    queue,
                })
            }
            Ok(Err(status)) => bail!(
                "Azurite exited during start-up ({status}); run {} by hand to see why",
                bin.display()
            ),
            Err(e) => {
                azurite::stop(&mut child);
                Err(e)
            }
        }
    }

    /// Its connection string.
    pub fn connection_string(&self) -> String {
        // The well-known Azurite development account (documented by Microsoft; not a secret).
        format!(
            "AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
             BlobEndpoint=http://{host}:{}/devstoreaccount1;QueueEndpoint=http://{host}:{}/devstoreaccount1",
            self.blob,
            self.queue,
            host = self.host
        )
    }
}

impl Drop for SharedAzurite {
    fn drop(&mut self) {
        azurite::stop(&mut self.child);
    }
}
