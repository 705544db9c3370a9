//! What every benchmark shares: the storage account, fresh names, the app under test run by
//! the local runtime (release binaries, as users run them), statistics and the result rows.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use azure_core::http::{Etag, RequestContent};
use azure_storage_blob::models::BlockBlobClientUploadOptions;
use azure_storage_queue::QueueClient;
use azure_storage_queue::models::QueueMessage;
use cqrs_storage::azurite::{Azurite, AzuriteOptions};
use cqrs_storage::{ConnectionString, Provisioner, RetrySettings, StorageAccount};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Where the benchmarks run.
#[derive(Clone)]
pub struct Bench {
    /// Azurite.
    pub cs: ConnectionString,
    /// A client for it.
    pub account: StorageAccount,
    /// The release binaries.
    pub bin_dir: PathBuf,
    /// Scratch space.
    pub work: PathBuf,
    /// Fewer and shorter runs (a smoke test of the harness).
    pub quick: bool,
    /// Azurite was given (`--azurite`): every measurement shares it instead of starting its own.
    pub shared: bool,
}

/// A [`Bench`] on an Azurite of its own (stopped by [`Fresh::stop`]), or on the shared one.
pub struct Fresh {
    pub bench: Bench,
    azurite: Option<Azurite>,
}

impl Fresh {
    /// Stops the Azurite this measurement started, if any.
    pub async fn stop(self) {
        if let Some(azurite) = self.azurite {
            azurite.stop().await;
        }
    }
}

impl Bench {
    /// Repetitions of each measurement (the reported figure is their median).
    pub fn runs(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }

    /// A context on a fresh in-memory Azurite, for measurements that load storage heavily:
    /// Azurite (one Node process) slows down as its in-memory state grows and can stall for
    /// seconds after an overload, which would otherwise leak into the next measurement.
    pub async fn fresh(&self) -> Result<Fresh> {
        if self.shared {
            return Ok(Fresh {
                bench: self.clone(),
                azurite: None,
            });
        }
        let azurite = Azurite::start(AzuriteOptions::default()).await?;
        let cs = azurite.connection_string();
        let bench = Bench {
            account: StorageAccount::from_connection_string(&cs, RetrySettings::BACKGROUND)?,
            cs,
            ..self.clone()
        };
        Ok(Fresh {
            bench,
            azurite: Some(azurite),
        })
    }

    /// Fresh queue and container names, provisioned.
    pub async fn provisioned(&self) -> Result<Names> {
        let names = Names::fresh();
        self.account
            .provision(&names.plan(), &Default::default())
            .await?;
        Ok(names)
    }

    /// Runs one measurement on a [fresh](Self::fresh) Azurite.
    pub async fn on_fresh<T>(&self, measure: impl AsyncFnOnce(&Bench) -> Result<T>) -> Result<T> {
        let fresh = self.fresh().await?;
        let result = measure(&fresh.bench).await;
        fresh.stop().await;
        result
    }

    /// `long` normally, `short` in quick mode.
    pub fn secs(&self, long: u64, short: u64) -> Duration {
        Duration::from_secs(if self.quick { short } else { long })
    }
}

/// Queue and container names nobody else uses.
#[derive(Clone, Debug)]
pub struct Names {
    pub reg: String,
    pub inv: String,
    pub res: String,
    pub rm: String,
}

impl Names {
    pub fn fresh() -> Self {
        use cqrs_storage::azurite::unique_name;
        Self {
            reg: unique_name("breg"),
            inv: unique_name("binv"),
            res: unique_name("bres"),
            rm: unique_name("brm"),
        }
    }

    /// The storage plan of these names.
    pub fn plan(&self) -> cqrs_storage::StoragePlan {
        cqrs_storage::StoragePlan {
            owner: format!("bench-{}", self.reg),
            queues: vec![self.reg.clone(), self.inv.clone()],
            containers: vec![self.res.clone(), self.rm.clone()],
            cors: vec![],
        }
    }
}

/// Upload options that only create the blob (`If-None-Match: *`), with the headers the web
/// role puts on a pending result.
pub fn create_only() -> BlockBlobClientUploadOptions<'static> {
    BlockBlobClientUploadOptions {
        if_none_match: Some(Etag::from("*")),
        blob_content_type: Some("application/json".into()),
        blob_cache_control: Some("no-store".into()),
        ..Default::default()
    }
}

/// Uploads `body` to `container/blob` under `options` (preconditions); the new ETag.
pub async fn put_blob(
    account: &StorageAccount,
    container: &str,
    blob: &str,
    body: impl Into<azure_core::Bytes>,
    options: BlockBlobClientUploadOptions<'_>,
) -> azure_core::Result<Option<Etag>> {
    let content: RequestContent<azure_core::Bytes, _> = body.into().into();
    Ok(account
        .blob(container, blob)
        .upload(content, Some(options))
        .await?
        .etag)
}

/// Enqueues `text`.
pub async fn enqueue(queue: &QueueClient, text: String) -> Result<()> {
    let content: RequestContent<QueueMessage, _> = QueueMessage {
        message_text: Some(text),
    }
    .try_into()?;
    queue.send_message(content, None).await?;
    Ok(())
}

/// The pending result blob of registration `id`, as the web role names it.
pub fn result_blob(id: &str) -> String {
    format!("registrations/{id}.json")
}

/// What `POST /api/registrations` does to storage, made directly: create the pending result
/// blob, enqueue `message`, sign a read-only URL for the blob (returned).
pub async fn submit_directly(
    account: &StorageAccount,
    names: &Names,
    id: &str,
    message: String,
) -> Result<String> {
    let blob = result_blob(id);
    put_blob(
        account,
        &names.res,
        &blob,
        &br#"{"registrationToken":null}"#[..],
        create_only(),
    )
    .await?;
    enqueue(&account.queue(&names.reg)?, message).await?;
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    Ok(account
        .blob_read_url(&names.res, &blob, expiry)
        .await?
        .to_string())
}

/// `POST /api/registrations` of a new, unique address starting with `tag`.
pub async fn post_registration(
    http: &reqwest::Client,
    web: &str,
    tag: &str,
) -> reqwest::Result<reqwest::Response> {
    let email = format!("{tag}-{}@example.com", uuid::Uuid::new_v4());
    let body = serde_json::json!({"firstName": "B", "lastName": "C", "email": email, "dateOfBirth": "1990-01-01"});
    http.post(format!("{web}/api/registrations"))
        .json(&body)
        .send()
        .await
}

/// Scaling that keeps a role at exactly `n` replicas.
pub fn fixed(n: u32) -> String {
    if n == 0 {
        // Never wakes: no messages exceed this activation threshold in a benchmark.
        "{minReplicas: 0, maxReplicas: 1, activationQueueLength: 1000000000}".into()
    } else {
        format!("{{minReplicas: {n}, maxReplicas: {n}}}")
    }
}

fn manifest(names: &Names, registrar: &str, stocker: &str) -> String {
    let Names { reg, inv, res, rm } = names;
    let env = format!(
        "[{{name: REGISTRATION_QUEUE, value: {reg}}}, {{name: INVENTORY_QUEUE, value: {inv}}}, \
         {{name: RESULTS_CONTAINER, value: {res}}}, {{name: READMODEL_CONTAINER, value: {rm}}}, \
         {{name: SCANNER_KEY, value: bench-key}}, {{name: RUST_LOG, value: warn}}]"
    );
    format!(
        "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {{name: bench}}\nspec:\n  storage: {{connectionSecretRef: {{name: unused}}}}\n  \
         queues: [{{name: {reg}}}, {{name: {inv}}}]\n  containers: [{{name: {res}}}, {{name: {rm}}}]\n  \
         web: {{image: unused, args: [web], env: {env}}}\n  workers:\n    \
         - {{name: registrar, image: unused, args: [worker], queue: {reg}, env: {env}, scaling: {registrar}}}\n    \
         - {{name: stocker, image: unused, args: [worker], queue: {inv}, env: {env}, scaling: {stocker}}}\n"
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The reference app run by `cqrs-operator local`.
pub struct Runtime {
    child: Child,
    /// `127.0.0.1:<port>` of /status and /metrics.
    pub status: String,
    /// `http://127.0.0.1:<port>` of the web role.
    pub web: String,
    http: reqwest::Client,
}

impl Runtime {
    /// Starts the app with `registrar` and `stocker` scaling (YAML flow) and waits until the
    /// web role answers.
    pub async fn start(
        bench: &Bench,
        names: &Names,
        registrar: &str,
        stocker: &str,
    ) -> Result<Self> {
        let file = bench.work.join(format!("{}.yaml", names.reg));
        std::fs::write(&file, manifest(names, registrar, stocker))?;
        let (status_port, web_port) = (free_port()?, free_port()?);
        let app = bench.bin_dir.join("reference-app");
        // Kept in the work folder (removed after a successful run) for when a run goes wrong.
        let log = std::fs::File::create(bench.work.join(format!("{}.log", names.reg)))?;
        let child = Command::new(bench.bin_dir.join("cqrs-operator"))
            .arg("local")
            .arg("-f")
            .arg(&file)
            .arg(format!("--run=web={}", app.display()))
            .arg(format!("--run=worker={}", app.display()))
            .arg(format!("--status-addr=127.0.0.1:{status_port}"))
            .arg(format!("--web-port={web_port}"))
            .env(
                "CQRS_STORAGE_CONNECTION_STRING",
                bench.cs.to_connection_string(),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start cqrs-operator local")?;
        let runtime = Runtime {
            child,
            status: format!("127.0.0.1:{status_port}"),
            web: format!("http://127.0.0.1:{web_port}"),
            http: reqwest::Client::new(),
        };
        let url = format!("{}/healthz", runtime.web);
        wait_until("the web role", Duration::from_secs(60), || async {
            runtime.http.get(&url).send().await.is_ok()
        })
        .await?;
        Ok(runtime)
    }

    /// The runtime's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `processes` from /status.
    pub async fn processes(&self) -> Result<Vec<Value>> {
        let status: Value = self
            .http
            .get(format!("http://{}/status", self.status))
            .send()
            .await?
            .json()
            .await?;
        Ok(status["processes"].as_array().cloned().unwrap_or_default())
    }

    /// The metrics port of the first running replica of `role`, once there is one.
    pub async fn worker_port(&self, role: &str) -> Result<u16> {
        wait_for(
            &format!("a running {role}"),
            Duration::from_secs(60),
            || async {
                self.processes()
                    .await
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p["role"] == role && p["pid"].is_i64())
                    .and_then(|p| u16::try_from(p["port"].as_u64()?).ok())
            },
        )
        .await
    }

    /// Stops it (SIGTERM) and waits.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

/// Waits until the web role at `web` serves a read model of `items` (location, item) pairs.
pub async fn wait_for_items(http: &reqwest::Client, web: &str, items: usize) -> Result<()> {
    let url = format!("{web}/api/inventory");
    wait_until(
        "the web role's cache to load the read model",
        Duration::from_secs(60),
        || async {
            let Ok(response) = http.get(&url).send().await else {
                return false;
            };
            response
                .json::<Value>()
                .await
                .is_ok_and(|model| model["totals"]["items"] == items)
        },
    )
    .await
}

/// Reads a counter (summed over labels) from a worker's /metrics.
pub async fn counter(http: &reqwest::Client, port: u16, name: &str) -> f64 {
    let Ok(response) = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `found` every 20 ms until it yields a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, found: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = found().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, condition: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, limit, || async { condition().await.then_some(()) }).await
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0..=100) of `values`, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub result: String,
    pub baseline: String,
    pub ratio: String,
    pub goal: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(
        name: &str,
        result: String,
        baseline: String,
        ratio: String,
        goal: &str,
        met: Option<bool>,
    ) -> Self {
        Self {
            name: name.into(),
            result,
            baseline,
            ratio,
            goal: goal.into(),
            met,
        }
    }
}

/// The table in Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Benchmark | Result | Baseline (same run) | Ratio | Goal | Met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {met} |\n",
            r.name, r.result, r.baseline, r.ratio, r.goal
        ));
    }
    out
}
