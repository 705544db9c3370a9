//! Starting Azurite for `cargo xtask test`, `bench` and `up`: one command line, one wait.

// NB: the command line and the reading of its output are the storage crate's own
// (`cqrs_storage::azurite` starts the tests' private instances with them), included by path so
// this crate stays free of its dependencies.
#[path = "../../storage/src/azurite_cli.rs"]
mod azurite_cli;

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use azurite_cli::Listening;
use azurite_cli::Ready;

/// Whether something accepts connections on a loopback port.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// A loopback port free right now (another process may still take it before we use it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts Azurite on `blob`/`queue` ports (0: ports the kernel picks), on loopback or, with
/// `netns` (`/run/netns/<name>`), on every address inside that network namespace, with its data
/// in `data` (or in memory), and watches what it says about its ports. With `own_group` it gets
/// its own process group, so a Ctrl-C in the terminal does not reach it (the caller stops it,
/// after the app); without, it dies with us on Ctrl-C.
pub fn spawn_in(
    netns: Option<&Path>,
    bin: &Path,
    blob: u16,
    queue: u16,
    data: Option<&Path>,
    own_group: bool,
) -> Result<(Child, Listening)> {
    let (mut cmd, host) = azurite_cli::command_in(netns, bin);
    cmd.args(azurite_cli::azurite_args(host, blob, queue, data))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("Azurite's stdout")?;
    Ok((child, Listening::watch(stdout)))
}

/// Waits (up to 60 s) until all its services listen: `Ok((blob, queue))` with the ports it
/// bound, `Err(status)` when it exited first.
pub fn wait_listening(
    child: &mut Child,
    listening: Listening,
) -> Result<std::result::Result<(u16, u16), ExitStatus>> {
    match listening.wait(Duration::from_secs(60)) {
        Ready::Ports { blob, queue } => Ok(Ok((blob, queue))),
        Ready::Exited => Ok(Err(child.wait()?)),
        Ready::TimedOut => bail!("Azurite did not say it listens within 60 s"),
    }
}

/// Stops `child` and reaps it.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
