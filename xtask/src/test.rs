//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::process::{Child, Stdio};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::azurite;
use crate::shell::{cargo, on_path, step};
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

    let azurite = SharedAzurite::start(&azurite_bin)?;
    let cluster = crate::cluster::Cluster::for_tests()?;
    let mut tests = if nextest_available() {
        let mut c = cargo();
        c.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        if std::env::var_os("CI").is_some() {
            c.args(["--profile", "ci"]);
        }
        c
    } else {
        println!("(cargo-nextest not found; using cargo test)");
        let mut c = cargo();
        c.args(["test", "--workspace", "--no-fail-fast"]);
        c
    };
    tests
        .args(extra)
        .env("CQRS_TEST_AZURITE", azurite.connection_string())
        .env("CHROMIUM", &chromium)
        .env("CQRS_TEST_PYTHON", &python)
        .env("CQRS_TEST_KUBECONFIG", cluster.kubeconfig())
        .env("CQRS_TEST_CLUSTER_LOGS", cluster.logs_dir())
        .env("CQRS_TEST_K8S_BIN", &cluster.bin)
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
    blob: u16,
    queue: u16,
}

impl SharedAzurite {
    /// Starts it on ports the kernel picks (read from what it prints, so no other process can
    /// take one between our choice and its bind).
    pub fn start(bin: &std::path::Path) -> Result<Self> {
        println!("\n==> starting Azurite for the tests");
        let (mut child, listening) = azurite::spawn(bin, 0, 0, None, false)?;
        match azurite::wait_listening(&mut child, listening) {
            Ok(Ok((blob, queue))) => {
                println!("    listening: blob 127.0.0.1:{blob}, queue 127.0.0.1:{queue}");
                Ok(SharedAzurite { child, blob, queue })
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
             BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{}/devstoreaccount1",
            self.blob, self.queue
        )
    }
}

impl Drop for SharedAzurite {
    fn drop(&mut self) {
        azurite::stop(&mut self.child);
    }
}
