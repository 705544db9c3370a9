//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{cargo, on_path, root, step};
use crate::{crd, tools};

/// Runs the checks; extra arguments go to the test runner (e.g. a test name filter).
pub fn run(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    let azurite_bin = tools::azurite()?;
    tools::playwright()?;
    let chromium = tools::chromium()?;
    let python = tools::python()?;

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
        .env("RUST_BACKTRACE", "0");
    let result = step("all tests (against Azurite)", &mut tests);
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
struct SharedAzurite {
    child: Child,
    blob: u16,
    queue: u16,
}

impl SharedAzurite {
    fn start(bin: &std::path::Path) -> Result<Self> {
        println!("\n==> starting Azurite for the tests");
        let [blob, queue, table] = [free_port()?, free_port()?, free_port()?];
        let child = Command::new(bin)
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--inMemoryPersistence",
            ])
            .args([
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
            ])
            .args([
                "--blobPort",
                &blob.to_string(),
                "--queuePort",
                &queue.to_string(),
                "--tablePort",
                &table.to_string(),
            ])
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut azurite = SharedAzurite { child, blob, queue };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(listening(blob) && listening(queue)) {
            if let Some(status) = azurite.child.try_wait()? {
                bail!("Azurite exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("Azurite did not listen on ports {blob}/{queue} within 60s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("    listening: blob 127.0.0.1:{blob}, queue 127.0.0.1:{queue}");
        Ok(azurite)
    }

    fn connection_string(&self) -> String {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}
