//! Starting a real Azurite for tests and for `cqrs-operator local --azurite`.
//!
//! Azurite is the npm package `azurite`; `cargo xtask test` / `cargo xtask up` install it into
//! `.tools/azurite/` of the workspace. [`Azurite::start`] runs it on free loopback ports and
//! stops it when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::azurite_cli::{Listening, Ready};
use crate::connection::ConnectionString;

/// Overrides where the Azurite executable is.
pub const AZURITE_BIN_ENV: &str = "CQRS_AZURITE_BIN";
/// Where the project's tooling installs Azurite, relative to the workspace root.
pub const AZURITE_LOCAL_BIN: &str = ".tools/azurite/node_modules/.bin/azurite";

/// Why Azurite could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AzuriteError {
    /// No executable found.
    #[error(
        "Azurite is not installed: looked for ${AZURITE_BIN_ENV}, {AZURITE_LOCAL_BIN} above {searched} \
         and `azurite` on PATH. Run `cargo xtask test` or `cargo xtask up` once (they install it \
         with npm into .tools/), or `npm install --prefix .tools/azurite azurite`"
    )]
    NotInstalled {
        /// Where the search started.
        searched: String,
    },
    /// The process could not be started or died early.
    #[error("Azurite ({bin}) failed to start: {reason}")]
    Start {
        /// The executable.
        bin: String,
        /// What happened (with its output when it exited).
        reason: String,
    },
}

/// Options for [`Azurite::start`].
#[derive(Clone, Debug, Default)]
pub struct AzuriteOptions {
    /// Blob port (0: one the kernel picks).
    pub blob_port: u16,
    /// Queue port (0: one the kernel picks).
    pub queue_port: u16,
    /// Keep data on disk here; `None` keeps it in memory (faster; lost on stop).
    pub location: Option<PathBuf>,
    /// A custom account `(name, base64 key)` instead of the well-known development one.
    pub account: Option<(String, String)>,
    /// Run inside this network namespace (`/run/netns/<name>`) on every address, reached at
    /// `address` (the namespace's own); `None`: on 127.0.0.1 here.
    pub netns: Option<(PathBuf, String)>,
}

/// Set by `cargo xtask test` to `<netns path>=<address>` of the test cluster's network
/// namespace: every private Azurite of the tests then runs inside it, where the cluster's pods
/// reach it too.
pub const TEST_NETNS_ENV: &str = "CQRS_TEST_NETNS";

/// A running Azurite, stopped on drop.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    bin: PathBuf,
    /// How it was started, with the ports it bound.
    options: AzuriteOptions,
}

impl Azurite {
    /// Finds the Azurite executable: `$CQRS_AZURITE_BIN`, then `.tools/azurite` in this
    /// directory or any parent (or the workspace this crate was built in), then `PATH`.
    pub fn find() -> Result<PathBuf, AzuriteError> {
        let cwd = std::env::current_dir().unwrap_or_default();
        find_in(
            std::env::var_os(AZURITE_BIN_ENV).map(PathBuf::from),
            &[cwd.as_path(), Path::new(env!("CARGO_MANIFEST_DIR"))],
            std::env::var_os("PATH"),
        )
    }

    /// Starts Azurite and waits until its services listen. Ports left at 0 are bound by
    /// Azurite on ports the kernel picks (read from what it prints), so no other process can
    /// take one in between.
    pub async fn start(options: AzuriteOptions) -> Result<Self, AzuriteError> {
        let bin = Self::find()?;
        let (child, listening, stderr) = spawn(&bin, &options)?;
        let mut azurite = Azurite {
            child,
            bin,
            options,
        };
        // From here on `options` holds the ports it bound, so a restart binds the same ones
        // (its clients keep their endpoints).
        azurite.wait_ready(listening, stderr).await?;
        Ok(azurite)
    }

    /// Stops Azurite gracefully (SIGTERM, so on-disk data is flushed) and waits for it.
    pub async fn shut_down(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Starts it again on the same ports and data after [`Azurite::shut_down`].
    pub async fn restart(&mut self) -> Result<(), AzuriteError> {
        let (child, listening, stderr) = spawn(&self.bin, &self.options)?;
        self.child = child;
        self.wait_ready(listening, stderr).await
    }

    /// Waits (up to 60 s) until Azurite says all its services listen, and takes the ports it
    /// names; when it exits first, the error carries what it wrote to stderr.
    async fn wait_ready(
        &mut self,
        listening: Listening,
        stderr: StderrTail,
    ) -> Result<(), AzuriteError> {
        let limit = Duration::from_secs(60);
        let ready = tokio::task::spawn_blocking(move || listening.wait(limit))
            .await
            .map_err(|e| start_err(&self.bin, e))?;
        match ready {
            Ready::Ports { blob, queue } => {
                (self.options.blob_port, self.options.queue_port) = (blob, queue);
                Ok(())
            }
            Ready::Exited => {
                let status = self
                    .child
                    .wait()
                    .await
                    .map_err(|e| start_err(&self.bin, e))?;
                // Its stderr has ended with it.
                let output = tokio::task::spawn_blocking(move || stderr.join())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                Err(start_err(
                    &self.bin,
                    format!("exited with {status}: {}", output.trim()),
                ))
            }
            Ready::TimedOut => Err(start_err(
                &self.bin,
                format!("not listening after {limit:?}"),
            )),
        }
    }

    /// The connection string for this instance.
    pub fn connection_string(&self) -> ConnectionString {
        let (blob, queue) = (self.options.blob_port, self.options.queue_port);
        let host = self
            .options
            .netns
            .as_ref()
            .map_or("127.0.0.1", |(_, address)| address.as_str());
        let mut cs = ConnectionString::development_at(host, blob, queue);
        if let Some((name, key)) = &self.options.account {
            let endpoint = |port: u16| {
                url::Url::parse(&format!("http://{host}:{port}/{name}")).expect("an Azurite URL")
            };
            cs.account_name = name.clone();
            cs.account_key =
                crate::connection::AccountKey::from_base64(key).expect("a base64 test key");
            cs.blob_endpoint = endpoint(blob);
            cs.queue_endpoint = endpoint(queue);
        }
        cs
    }

    /// Blob service port.
    pub fn blob_port(&self) -> u16 {
        self.options.blob_port
    }

    /// Queue service port.
    pub fn queue_port(&self) -> u16 {
        self.options.queue_port
    }

    /// Stops Azurite and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn find_in(
    explicit: Option<PathBuf>,
    starts: &[&Path],
    path_var: Option<std::ffi::OsString>,
) -> Result<PathBuf, AzuriteError> {
    let searched = starts
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(bin) = explicit {
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(AzuriteError::NotInstalled {
                searched: format!(
                    "{searched} (${AZURITE_BIN_ENV}={} is not a file)",
                    bin.display()
                ),
            })
        };
    }
    for start in starts {
        for dir in start.ancestors() {
            let candidate = dir.join(AZURITE_LOCAL_BIN);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = path_var {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("azurite");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(AzuriteError::NotInstalled { searched })
}

/// Azurite's standard error, read to the end on a thread of its own (so the pipe never fills);
/// joined, it gives the last 8 to 16 KiB, enough to say why it stopped.
type StderrTail = std::thread::JoinHandle<String>;

fn spawn(
    bin: &Path,
    options: &AzuriteOptions,
) -> Result<(Child, Listening, StderrTail), AzuriteError> {
    if let Some(dir) = &options.location {
        std::fs::create_dir_all(dir).map_err(|e| start_err(bin, e))?;
    }
    let (cmd, host) =
        crate::azurite_cli::command_in(options.netns.as_ref().map(|(p, _)| p.as_path()), bin);
    let mut cmd = Command::from(cmd);
    cmd.args(crate::azurite_cli::azurite_args(
        host,
        options.blob_port,
        options.queue_port,
        options.location.as_deref(),
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some((name, key)) = &options.account {
        cmd.env("AZURITE_ACCOUNTS", format!("{name}:{key}"));
    }
    let mut child = cmd.spawn().map_err(|e| start_err(bin, e))?;
    // Both pipes are read on threads, not tasks: the instance outlives the async runtime that
    // started it when tests share it.
    let stdout = child.stdout.take().expect("stdout is piped");
    let stdout = std::fs::File::from(stdout.into_owned_fd().map_err(|e| start_err(bin, e))?);
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut stderr = std::fs::File::from(stderr.into_owned_fd().map_err(|e| start_err(bin, e))?);
    let tail = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut kept, mut chunk) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = stderr.read(&mut chunk) {
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > 16 * 1024 {
                kept.drain(..kept.len() - 8 * 1024);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    Ok((child, Listening::watch(stdout), tail))
}

fn start_err(bin: &Path, reason: impl ToString) -> AzuriteError {
    AzuriteError::Start {
        bin: bin.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Set by `cargo xtask test` to the connection string of one Azurite it started for the whole
/// run; without it each [`TestAzurite`] starts its own.
pub const SHARED_AZURITE_ENV: &str = "CQRS_TEST_AZURITE";

/// Azurite for one test: the run's shared instance, or a private one stopped with this value.
#[derive(Debug)]
pub struct TestAzurite {
    /// Connection string of the instance.
    pub connection_string: ConnectionString,
    own: Option<Azurite>,
}

impl TestAzurite {
    /// Connects to the shared Azurite or starts a private one.
    ///
    /// # Panics
    /// When Azurite is not installed or does not start: the message says how to install it.
    pub async fn start() -> Self {
        if let Ok(cs) = std::env::var(SHARED_AZURITE_ENV) {
            let connection_string = ConnectionString::parse(&cs).unwrap_or_else(|e| {
                panic!("{SHARED_AZURITE_ENV} is not a usable connection string: {e}")
            });
            return Self {
                connection_string,
                own: None,
            };
        }
        Self::private().await
    }

    /// Starts a private Azurite even when a shared one is available (for tests that change
    /// account-wide settings such as CORS).
    ///
    /// # Panics
    /// When Azurite is not installed or does not start.
    pub async fn private() -> Self {
        Self::private_with(AzuriteOptions::default()).await
    }

    /// A private Azurite with `options` (on-disk data, a custom account).
    ///
    /// # Panics
    /// When Azurite is not installed or does not start.
    pub async fn private_with(mut options: AzuriteOptions) -> Self {
        if options.netns.is_none()
            && let Ok(spec) = std::env::var(TEST_NETNS_ENV)
        {
            let (path, address) = spec.split_once('=').unwrap_or_else(|| {
                panic!("{TEST_NETNS_ENV} is {spec:?}; it must be <netns path>=<address>")
            });
            options.netns = Some((PathBuf::from(path), address.to_owned()));
        }
        match Azurite::start(options).await {
            Ok(azurite) => Self {
                connection_string: azurite.connection_string(),
                own: Some(azurite),
            },
            Err(e) => panic!("this test needs Azurite: {e}"),
        }
    }

    /// A storage account client for the instance.
    pub fn account(&self) -> crate::StorageAccount {
        // NB: patient retries: tests share Azurite (and two CPU cores) with each other.
        crate::StorageAccount::from_connection_string(
            &self.connection_string,
            crate::RetrySettings::BACKGROUND,
        )
        .expect("Azurite connection string gives an account")
    }

    /// The private instance, when this test started one (to stop or restart it).
    pub fn own_instance(&mut self) -> Option<&mut Azurite> {
        self.own.as_mut()
    }
}

/// A queue/container name no other test uses: `prefix` plus 12 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_azurite_says_how_to_install_it() {
        let empty = std::env::temp_dir().join(unique_name("no-azurite"));
        std::fs::create_dir_all(&empty).unwrap();
        let err = find_in(None, &[&empty], Some(empty.clone().into_os_string()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo xtask test") && err.contains("npm install"),
            "{err}"
        );
        let err = find_in(Some(empty.join("nope")), &[&empty], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CQRS_AZURITE_BIN") && err.contains("is not a file"),
            "{err}"
        );
    }

    #[test]
    fn the_project_local_install_is_found_from_any_subdirectory() {
        let root = std::env::temp_dir().join(unique_name("ws"));
        let bin = root.join(AZURITE_LOCAL_BIN);
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "").unwrap();
        let deep = root.join("operator/src");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_in(None, &[&deep], None).unwrap(), bin);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
