//! Starting Azurite for `cargo xtask test`, `bench` and `up`: one command line, one wait.

// NB: the command line is the storage crate's own (`cqrs_storage::azurite` starts the tests'
// private instances with it), included by path so this crate stays free of its dependencies.
#[path = "../../storage/src/azurite_args.rs"]
mod azurite_args;

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Whether something accepts connections on a loopback port.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// A loopback port free right now (another process may still take it before we use it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts Azurite on loopback `blob`/`queue` ports, with its data in `data` (or in memory).
/// With `own_group` it gets its own process group, so a Ctrl-C in the terminal does not reach
/// it (the caller stops it, after the app); without, it dies with us on Ctrl-C.
pub fn spawn(
    bin: &Path,
    blob: u16,
    queue: u16,
    data: Option<&Path>,
    own_group: bool,
) -> Result<Child> {
    let table = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(azurite_args::azurite_args(blob, queue, table, data))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits (up to 60 s) until `child` listens on both ports; `Err(status)` when it exited first.
pub fn wait_listening(
    child: &mut Child,
    blob: u16,
    queue: u16,
) -> Result<std::result::Result<(), ExitStatus>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(listening(blob) && listening(queue)) {
        if let Some(status) = child.try_wait()? {
            return Ok(Err(status));
        }
        if Instant::now() > deadline {
            bail!("Azurite did not listen on ports {blob}/{queue} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Ok(()))
}

/// Stops `child` and reaps it.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
