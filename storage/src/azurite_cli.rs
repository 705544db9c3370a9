//! Azurite's command line and what it prints when it listens, one definition for the test
//! harness (`cqrs_storage::azurite`) and for xtask (`cargo xtask up` and `cargo xtask test`).
//! xtask includes this file by path (`#[path]`), so it shares them without building the
//! storage crate's dependencies: std only.
//!
//! NB: ports are best left at 0. Azurite then binds ports the kernel picks and prints them;
//! a port picked by us beforehand can be taken by another process before Azurite binds it
//! (tests start many at once), and the table service, which starts last, would then make
//! Azurite exit after the blob and queue services already answered.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Arguments that run Azurite quietly on `host` (127.0.0.1; 0.0.0.0 inside a network namespace
/// of the harness's own, where pods reach it too) with the given blob and queue ports (0: the
/// kernel picks), its table service (unused) on a port the kernel picks, and its data under
/// `location` or in memory.
pub fn azurite_args(host: &str, blob: u16, queue: u16, location: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    for (service, port) in [("blob", blob), ("queue", queue), ("table", 0)] {
        args.push(format!("--{service}Host").into());
        args.push(host.into());
        args.push(format!("--{service}Port").into());
        args.push(port.to_string().into());
    }
    match location {
        Some(dir) => {
            args.push("--location".into());
            args.push(dir.as_os_str().to_owned());
        }
        None => args.push("--inMemoryPersistence".into()),
    }
    args
}

/// The command that runs Azurite `bin`, and the host it should listen on: on 127.0.0.1 here, or
/// on every address inside network namespace `netns` (`/run/netns/<name>`, entered with
/// `nsenter`, which execs Azurite, so the child is Azurite itself), where a cluster's pods
/// reach it too.
pub fn command_in(netns: Option<&Path>, bin: &Path) -> (std::process::Command, &'static str) {
    match netns {
        Some(netns) => {
            let mut cmd = std::process::Command::new("nsenter");
            cmd.arg(format!("--net={}", netns.display()))
                .arg("--")
                .arg(bin);
            (cmd, "0.0.0.0")
        }
        None => (std::process::Command::new(bin), "127.0.0.1"),
    }
}

/// The port in a line such as `Azurite Queue service is successfully listening at
/// http://127.0.0.1:40123`, with the service's name (`Blob`, `Queue`, `Table`).
pub fn listening_line(line: &str) -> Option<(&str, u16)> {
    let rest = line.trim().strip_prefix("Azurite ")?;
    let (service, address) = rest.split_once(" service is successfully listening at ")?;
    let port = address
        .rsplit_once(':')?
        .1
        .trim_end_matches('/')
        .parse()
        .ok()?;
    Some((service, port))
}

/// Where Azurite's services listen, as it announces them on its standard output.
#[derive(Debug)]
pub struct Listening {
    ports: mpsc::Receiver<(String, u16)>,
}

/// What [`Listening::wait`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// All three services listen: the blob and queue ports.
    Ports { blob: u16, queue: u16 },
    /// Its output ended first: it exited.
    Exited,
    /// Neither within the time given.
    TimedOut,
}

impl Listening {
    /// Reads `stdout` on a thread of its own until it ends (so Azurite never blocks on a full
    /// pipe), passing on the ports it announces.
    pub fn watch(stdout: impl Read + Send + 'static) -> Self {
        let (tx, ports) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((service, port)) = listening_line(&line) {
                    // Once nobody waits any more this fails; it goes on draining.
                    let _ = tx.send((service.to_string(), port));
                }
            }
        });
        Self { ports }
    }

    /// Blocks until all three services said they listen, Azurite's output ended (it exited:
    /// its stdout closes with it), or `limit` passed.
    pub fn wait(self, limit: Duration) -> Ready {
        let deadline = Instant::now() + limit;
        let (mut blob, mut queue, mut table) = (None, None, false);
        loop {
            if let (Some(blob), Some(queue), true) = (blob, queue, table) {
                return Ready::Ports { blob, queue };
            }
            match self
                .ports
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((service, port)) => match service.as_str() {
                    "Blob" => blob = Some(port),
                    "Queue" => queue = Some(port),
                    "Table" => table = true,
                    _ => {}
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ready::Exited,
                Err(mpsc::RecvTimeoutError::Timeout) => return Ready::TimedOut,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_what_azurite_prints_and_only_all_three_count() {
        // As Azurite 3.35 prints them.
        let out = "In-memory extent storage is enabled with a limit of 12052.53 MB\n\
                   Azurite Blob service is starting at http://127.0.0.1:0\n\
                   Azurite Blob service is successfully listening at http://127.0.0.1:35143\n\
                   Azurite Queue service is starting at http://127.0.0.1:0\n\
                   Azurite Queue service is successfully listening at http://127.0.0.1:39323\n";
        // Output ended before the table service listened: it exited.
        let listening = Listening::watch(std::io::Cursor::new(out.to_string()));
        assert_eq!(listening.wait(Duration::from_secs(10)), Ready::Exited);

        let out = format!(
            "{out}Azurite Table service is successfully listening at http://127.0.0.1:43491\n"
        );
        let listening = Listening::watch(std::io::Cursor::new(out));
        assert_eq!(
            listening.wait(Duration::from_secs(10)),
            Ready::Ports {
                blob: 35143,
                queue: 39323
            }
        );
        // Nothing printed and nothing ended: it times out.
        let (silent, _keep_open) = std::io::pipe().unwrap();
        let listening = Listening::watch(silent);
        assert_eq!(listening.wait(Duration::from_millis(50)), Ready::TimedOut);
        assert_eq!(
            listening_line("Azurite Blob service is starting at http://127.0.0.1:0"),
            None
        );
    }
}
