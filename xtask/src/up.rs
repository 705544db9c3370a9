//! `cargo xtask up`: the reference app on this machine, on Azurite, with autoscaling workers.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::azurite::{self, listening};
use crate::shell::{cargo, root, step};
use crate::tools;

const MANIFEST: &str = "examples/pieshop-azurite.yaml";
const WEB_PORT: u16 = 8080;
const STATUS_PORT: u16 = 9090;
const BLOB_PORT: u16 = 10000;
const QUEUE_PORT: u16 = 10001;

fn free(port: u16) -> Result<()> {
    TcpListener::bind(("0.0.0.0", port)).map(drop).with_context(|| {
        format!("port {port} is in use (another `cargo xtask up`?); stop what uses it (`ss -ltnp 'sport = :{port}'` shows it) and try again")
    })
}

/// Azurite we started (stopped on drop), or `None` when one was already listening.
struct OwnAzurite(Option<Child>);

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            azurite::stop(child);
            println!("stopped Azurite");
        }
    }
}

fn azurite() -> Result<OwnAzurite> {
    match (listening(BLOB_PORT), listening(QUEUE_PORT)) {
        (true, true) => {
            println!(
                "\n==> using the Azurite already listening on 127.0.0.1:{BLOB_PORT} (blob) and :{QUEUE_PORT} (queue)"
            );
            return Ok(OwnAzurite(None));
        }
        (true, false) | (false, true) => {
            bail!(
                "only one of ports {BLOB_PORT} and {QUEUE_PORT} is in use; `cargo xtask up` needs both free (for Azurite) or both served by one Azurite"
            )
        }
        (false, false) => {}
    }
    let bin = tools::azurite()?;
    let data = root().join(".tools/azurite-data");
    std::fs::create_dir_all(&data)?;
    println!("\n==> starting Azurite (data in .tools/azurite-data)");
    let (child, listening) =
        azurite::spawn_in(None, &bin, BLOB_PORT, QUEUE_PORT, Some(&data), true)?;
    let mut own = OwnAzurite(Some(child));
    if let Some(child) = &mut own.0
        && let Err(status) = azurite::wait_listening(child, listening)?
    {
        own.0 = None;
        bail!(
            "Azurite exited during start-up ({status}); run {} by hand to see why",
            bin.display()
        );
    }
    println!("    listening: blob 127.0.0.1:{BLOB_PORT}, queue 127.0.0.1:{QUEUE_PORT}");
    Ok(own)
}

fn banner() {
    println!(
        "
================================================================================
 The pie shop is up (reference app, run by `cqrs-operator local` on Azurite)

   Registration form   http://127.0.0.1:{WEB_PORT}/
   Inventory dashboard http://127.0.0.1:{WEB_PORT}/inventory
   Runtime status      http://127.0.0.1:{STATUS_PORT}/status   (metrics: /metrics)
   Azurite             http://127.0.0.1:{BLOB_PORT}/devstoreaccount1 (blob), :{QUEUE_PORT} (queue)

 Try:
   - register in the browser, and watch the token arrive from blob storage;
   - scan some pies (the scanner key of examples/pieshop-azurite.yaml):
       curl -X POST http://127.0.0.1:{WEB_PORT}/api/inventory/adjustments \\
         -H 'Authorization: Bearer dev-scanner-key' -H 'content-type: application/json' \\
         -d '{{\"commandId\":\"scan-1\",\"location\":\"downtown\",\"item\":\"apple-pie\",\"delta\":12}}'
   - upload a 10,000-line stock take (~150 KiB: it travels through the claim check), or use
     the dashboard's upload form, and poll the resultUrl it answers:
       (echo location,item,quantity; for i in $(seq 10000); do echo \"shop-$((i % 4)),pie-$((i % 50)),$((i % 7))\"; done) |
         curl -X POST http://127.0.0.1:{WEB_PORT}/api/inventory/stocktakes \\
           -H 'Authorization: Bearer dev-scanner-key' -H 'content-type: text/csv' --data-binary @-
   - poison registrations and recover them: restart with EMAIL_SERVICE_DOWN=true in the
     registrar's env, register, then (after switching it off)
       target/debug/cqrs-operator poison list -f examples/pieshop-azurite.yaml --queue registrations
       target/debug/cqrs-operator poison redrive -f examples/pieshop-azurite.yaml --queue registrations
   - make a backlog and watch the registrar scale from 0 and back after 20 s:
       for i in $(seq 300); do curl -s -o /dev/null -X POST http://127.0.0.1:{WEB_PORT}/api/registrations \\
         -H 'content-type: application/json' \\
         -d \"{{\\\"firstName\\\":\\\"A\\\",\\\"lastName\\\":\\\"B\\\",\\\"email\\\":\\\"u$i-$RANDOM@example.com\\\",\\\"dateOfBirth\\\":\\\"1990-01-01\\\"}}\"; done
       curl -s http://127.0.0.1:{STATUS_PORT}/status | python3 -m json.tool

 Ctrl-C stops everything (workers finish their in-flight messages).
================================================================================
"
    );
}

/// Runs until Ctrl-C.
pub fn run() -> Result<()> {
    free(WEB_PORT)?;
    free(STATUS_PORT)?;
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        // NB: Ctrl-C reaches the runtime too (same process group); xtask only waits for it to
        // finish, then stops Azurite.
        ctrlc::set_handler(move || stopping.store(true, Ordering::SeqCst))
            .context("cannot handle Ctrl-C")?;
    }
    let azurite = azurite()?;
    build_roles()?;
    let target = crate::shell::target_dir();
    let bin = |name: &str| target.join("debug").join(name);
    let app = bin("reference-app");
    println!("\n==> starting the app: cqrs-operator local -f {MANIFEST}");
    let mut runtime = Command::new(bin("cqrs-operator"))
        .arg("local")
        .args(["-f", MANIFEST])
        .arg(format!("--run=web={}", app.display()))
        .arg(format!("--run=worker={}", app.display()))
        .args(["--connection-string", "UseDevelopmentStorage=true"])
        .arg(format!("--status-addr=127.0.0.1:{STATUS_PORT}"))
        .current_dir(root())
        .spawn()
        .context("cannot start cqrs-operator local")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut announced = false;
    loop {
        if let Some(status) = runtime.try_wait()? {
            drop(azurite);
            if stopping.load(Ordering::SeqCst) {
                println!("\nstopped");
                return Ok(());
            }
            bail!("cqrs-operator local exited ({status}); see its messages above");
        }
        if !announced && listening(STATUS_PORT) && listening(WEB_PORT) {
            banner();
            announced = true;
        }
        if !announced && Instant::now() > deadline {
            let _ = runtime.kill();
            bail!("the app did not come up within 60 s; see the messages above");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds the operator and the reference app (debug), as `up` and `e2e --cluster kwok` run them.
pub fn build_roles() -> Result<()> {
    step(
        "building cqrs-operator and reference-app (the first build takes a few minutes)",
        cargo().args([
            "build",
            "--package",
            "cqrs-operator",
            "--package",
            "reference-app",
        ]),
    )
}
