//! Runs the reference app's binary as web and worker processes against Azurite, with the
//! environment the operator would give them (`cqrs_operator::plan::role_env`), on queue and
//! container names no other test uses.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a failed step should fail the test loudly

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use cqrs_operator::crd::{
    ClaimCheckSpec, ContainerSpec, CorsSpec, CqrsAppSpec, DeletionPolicy, QueueSpec, StorageSpec,
    WebServiceSpec, WebSpec, WorkerSpec,
};
use cqrs_operator::plan::{EnvSource, Role, StorageAccess, role_env, storage_plan};
use cqrs_storage::azurite::{TestAzurite, unique_name};
use cqrs_storage::{Provisioner, StorageAccount};
use tokio::process::{Child, Command};

pub const SCANNER_KEY: &str = "test-scanner-key";

/// The app's names in this test.
#[derive(Clone, Debug)]
pub struct Names {
    pub registrations: String,
    pub inventory: String,
    pub results: String,
    pub readmodels: String,
    pub claims: String,
}

impl Names {
    /// Names no other test uses.
    pub fn fresh() -> Self {
        Self {
            registrations: unique_name("reg"),
            inventory: unique_name("inv"),
            results: unique_name("res"),
            readmodels: unique_name("rm"),
            claims: unique_name("claims"),
        }
    }
}

/// A running app: web and workers as child processes, killed on drop.
pub struct App {
    pub azurite: TestAzurite,
    pub account: StorageAccount,
    pub names: Names,
    pub spec: CqrsAppSpec,
    pub web: String,
    web_child: Option<Child>,
    pub workers: Vec<(String, Child, u16)>,
    extra_env: BTreeMap<String, String>,
    log_dir: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn queue(name: &str, options: &Options) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        max_dequeue_count: options.max_dequeue,
        visibility_timeout_seconds: options.visibility,
        message_ttl_seconds: options.message_ttl,
    }
}

/// Options for [`App::start`].
#[derive(Clone, Debug)]
pub struct Options {
    pub max_dequeue: u32,
    pub visibility: u32,
    /// Let the web role's own origin read result blobs (for browsers).
    pub cors_for_web: bool,
    pub extra_env: BTreeMap<String, String>,
    /// Write each process's output to `<dir>/<role>-<n>.log`.
    pub log_dir: Option<std::path::PathBuf>,
    /// `queues[].messageTtlSeconds` of both queues.
    pub message_ttl: i64,
    /// `claimCheck.thresholdBytes`.
    pub claim_threshold: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_dequeue: 5,
            visibility: 30,
            cors_for_web: false,
            extra_env: BTreeMap::new(),
            log_dir: None,
            message_ttl: 3600,
            claim_threshold: cqrs_storage::claims::DEFAULT_THRESHOLD_BYTES,
        }
    }
}

impl App {
    /// Provisions fresh queues and containers and starts the web role.
    pub async fn start(options: Options) -> App {
        Self::start_on(TestAzurite::start().await, options).await
    }

    /// The same, on a given Azurite.
    pub async fn start_on(azurite: TestAzurite, options: Options) -> App {
        let account = azurite.account();
        let web_port = free_port();
        let cors_origin = options
            .cors_for_web
            .then(|| format!("http://127.0.0.1:{web_port}"));
        let names = Names::fresh();
        let spec = CqrsAppSpec {
            storage: StorageSpec {
                connection_secret_ref: None,
                azure: None,
                public_blob_endpoint: None,
            },
            deletion_policy: DeletionPolicy::Retain,
            queues: vec![
                queue(&names.registrations, &options),
                queue(&names.inventory, &options),
            ],
            containers: vec![
                ContainerSpec {
                    name: names.results.clone(),
                    cors: cors_origin.map(|o| CorsSpec {
                        allowed_origins: vec![o],
                        max_age_seconds: 60,
                    }),
                },
                ContainerSpec {
                    name: names.readmodels.clone(),
                    cors: None,
                },
            ],
            web: Some(WebSpec {
                image: "unused".into(),
                args: vec![],
                replicas: 1,
                port: 8080,
                env: vec![],
                resources: None,
                node_selector: Default::default(),
                tolerations: Vec::new(),
                service: WebServiceSpec::default(),
            }),
            workers: vec![
                worker("registrar", &names.registrations),
                worker("stocker", &names.inventory),
            ],
            claim_check: Some(ClaimCheckSpec {
                container: Some(names.claims.clone()),
                threshold_bytes: options.claim_threshold,
            }),
        };
        let plan = storage_plan(&unique_name("owner"), "pieshop", &spec);
        account.provision(&plan, &Default::default()).await.unwrap();
        let mut extra_env = BTreeMap::from([
            (
                "REGISTRATION_QUEUE".to_string(),
                names.registrations.clone(),
            ),
            ("INVENTORY_QUEUE".to_string(), names.inventory.clone()),
            ("RESULTS_CONTAINER".to_string(), names.results.clone()),
            ("READMODEL_CONTAINER".to_string(), names.readmodels.clone()),
            ("SCANNER_KEY".to_string(), SCANNER_KEY.to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        extra_env.extend(options.extra_env.clone());
        let mut app = App {
            azurite,
            account,
            names,
            spec,
            web: String::new(),
            web_child: None,
            workers: vec![],
            extra_env,
            log_dir: options.log_dir.clone(),
        };
        let child = app.spawn(Role::Web, web_port, &[], "web-0");
        app.web = format!("http://127.0.0.1:{web_port}");
        app.web_child = Some(child);
        wait_healthy(web_port).await;
        app
    }

    fn env(&self, role: Role<'_>, port: u16) -> Vec<(String, String)> {
        let access =
            StorageAccess::ConnectionString(self.azurite.connection_string.to_connection_string());
        let mut env: Vec<(String, String)> =
            role_env("pieshop", &self.spec, role, &access, i32::from(port), None)
                .into_iter()
                .map(|e| match e.source {
                    EnvSource::Value(v) => (e.name, v),
                    EnvSource::Secret(_) => unreachable!("local access has no secrets"),
                })
                .collect();
        env.extend(self.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    fn spawn(&self, role: Role<'_>, port: u16, extra: &[(&str, &str)], label: &str) -> Child {
        let arg = match role {
            Role::Web => "web",
            Role::Worker(_) => "worker",
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reference-app"));
        cmd.arg(arg)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in self.env(role, port) {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let output = match &self.log_dir {
            Some(dir) => {
                Stdio::from(std::fs::File::create(dir.join(format!("{label}.log"))).unwrap())
            }
            None if std::env::var_os("TEST_APP_LOGS").is_some() => Stdio::inherit(),
            None => Stdio::null(),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(output);
        cmd.kill_on_drop(true).spawn().unwrap()
    }

    /// Starts a worker process for `worker` (`registrar` or `stocker`).
    pub async fn start_worker(&mut self, worker: &str, extra: &[(&str, &str)]) -> usize {
        let spec = self
            .spec
            .workers
            .iter()
            .find(|w| w.name == worker)
            .cloned()
            .unwrap();
        let port = free_port();
        let label = format!("{worker}-{}", self.workers.len());
        let child = self.spawn(Role::Worker(&spec), port, extra, &label);
        wait_healthy(port).await;
        self.workers.push((worker.to_string(), child, port));
        self.workers.len() - 1
    }

    /// Kills worker `i` at once (SIGKILL).
    pub async fn kill_worker(&mut self, i: usize) {
        self.workers[i].1.kill().await.unwrap();
    }

    /// Sends SIGTERM to worker `i` and returns its exit status.
    pub async fn terminate_worker(&mut self, i: usize) -> std::process::ExitStatus {
        let pid = self.workers[i].1.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.workers[i].1.wait())
            .await
            .unwrap()
            .unwrap()
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Puts `text` straight on `queue`, as a scanner using an Azure SDK would.
    pub async fn enqueue_raw(&self, queue: &str, text: &str) {
        let message = azure_storage_queue::models::QueueMessage {
            message_text: Some(text.to_string()),
        };
        self.account
            .queue(queue)
            .unwrap()
            .send_message(message.try_into().unwrap(), None)
            .await
            .unwrap();
    }

    /// Texts of the messages in `queue` (peeked, up to 32).
    pub async fn peek(&self, queue: &str) -> Vec<String> {
        let options = azure_storage_queue::models::QueueClientPeekMessagesOptions {
            number_of_messages: Some(32),
            ..Default::default()
        };
        let peeked = self
            .account
            .queue(queue)
            .unwrap()
            .peek_messages(Some(options))
            .await
            .unwrap()
            .into_model()
            .unwrap();
        peeked
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.message_text)
            .collect()
    }
}

fn worker(name: &str, queue: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        image: "unused".into(),
        args: vec![],
        queue: queue.into(),
        env: vec![],
        resources: None,
        node_selector: Default::default(),
        tolerations: Vec::new(),
        max_messages_per_second: None,
        scaling: Default::default(),
    }
}

async fn wait_healthy(port: u16) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_until("the process to answer /healthz", || async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Polls `condition` every 100 ms until it holds; fails after 60 s naming `what`.
pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a result URL until the blob holds a token or an error (up to 2 minutes: under
/// chaos a message may wait out several visibility timeouts).
pub async fn wait_for_result(url: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        // NB: an answer that is not the JSON document (a storage error, a read racing the
        // blob's rewrite) is polled again; the deadline reports the last one.
        if let Ok(response) = reqwest::get(url).await {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(body) if !body["registrationToken"].is_null() || body.get("error").is_some() => {
                    return body;
                }
                _ => last = format!("{status}: {text}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result in {url}; last answer {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl App {
    /// Whether every process is still running (none exited or crashed).
    pub fn all_alive(&mut self) -> bool {
        let web = self
            .web_child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        web && self
            .workers
            .iter_mut()
            .all(|(_, c, _)| c.try_wait().ok().flatten().is_none())
    }

    /// The private Azurite of this app (panics for a shared one).
    pub fn own_azurite(&mut self) -> &mut cqrs_storage::azurite::Azurite {
        self.azurite
            .own_instance()
            .expect("this test needs a private Azurite")
    }
}

/// Everything the processes and the test wrote to `dir`.
pub fn read_logs(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    all
}

/// A CqrsApp manifest for the local runtime with the reference app's roles on `names`;
/// `scaling` is both workers' `scaling` (YAML flow).
pub fn local_manifest(app: &str, names: &Names, scaling: &str) -> String {
    let Names {
        registrations: reg,
        inventory: inv,
        results: res,
        readmodels: rm,
        claims,
    } = names;
    let env = format!(
        "[{{name: REGISTRATION_QUEUE, value: {reg}}}, {{name: INVENTORY_QUEUE, value: {inv}}}, \
         {{name: RESULTS_CONTAINER, value: {res}}}, {{name: READMODEL_CONTAINER, value: {rm}}}, {{name: SCANNER_KEY, value: {SCANNER_KEY}}}]"
    );
    format!(
        r#"apiVersion: cqrs.dev/v1alpha1
kind: CqrsApp
metadata: {{name: {app}}}
spec:
  storage: {{connectionSecretRef: {{name: unused}}}}
  queues:
    - {{name: {reg}, visibilityTimeoutSeconds: 10}}
    - {{name: {inv}, visibilityTimeoutSeconds: 10}}
  containers: [{{name: {res}}}, {{name: {rm}}}]
  claimCheck: {{container: {claims}}}
  web: {{image: unused, args: [web], env: {env}}}
  workers:
    - {{name: registrar, image: unused, args: [worker], queue: {reg}, env: {env}, scaling: {scaling}}}
    - {{name: stocker, image: unused, args: [worker], queue: {inv}, env: {env}, scaling: {scaling}}}
"#
    )
}

/// A local runtime running in this test process.
pub struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    runtime: tokio::task::JoinHandle<Result<(), cqrs_operator::local::LocalError>>,
}

impl InProcess {
    /// Waits (as [`wait_until`]) until `url` answers with any HTTP response; fails at once
    /// with the runtime's error when it ended instead (say, storage could not be provisioned),
    /// rather than waiting out the 60 s.
    pub async fn wait_serving(&mut self, what: &str, url: &str) {
        let runtime = &self.runtime;
        wait_until(what, || async move {
            runtime.is_finished() || reqwest::get(url).await.is_ok()
        })
        .await;
        if self.runtime.is_finished() {
            match (&mut self.runtime).await {
                Ok(Ok(())) => panic!("the local runtime stopped before {what} answered"),
                Ok(Err(e)) => panic!("the local runtime failed before {what} answered: {e}"),
                Err(e) => panic!("the local runtime panicked before {what} answered: {e}"),
            }
        }
    }

    /// Shuts it down as Ctrl-C would and waits (at most 60 s) for a clean exit.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(60), self.runtime)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A local-runtime setup on fresh names: the manifest written to `dir/app.yaml` and free
/// ports for the web role and the status endpoint.
pub struct LocalSetup {
    pub names: Names,
    pub manifest: std::path::PathBuf,
    pub web_port: u16,
    pub status_addr: String,
}

impl LocalSetup {
    pub fn new(dir: &std::path::Path, app: &str, scaling: &str) -> Self {
        let names = Names::fresh();
        let manifest = dir.join("app.yaml");
        std::fs::write(&manifest, local_manifest(app, &names, scaling)).unwrap();
        Self {
            names,
            manifest,
            web_port: free_port(),
            status_addr: format!("127.0.0.1:{}", free_port()),
        }
    }

    pub fn web(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// Runs it in process (`cqrs-operator local`'s code) until [`InProcess::stop`].
    pub fn start(&self, azurite: &TestAzurite) -> InProcess {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::spawn(cqrs_operator::local::run(
            self.options(azurite),
            async move {
                let _ = stopped.await;
            },
        ));
        InProcess { stop, runtime }
    }

    /// Options for running it in process, with the reference app's binary as every role.
    pub fn options(&self, azurite: &TestAzurite) -> cqrs_operator::local::LocalOptions {
        let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_reference-app"));
        cqrs_operator::local::LocalOptions {
            manifest: self.manifest.clone(),
            runs: [
                ("web".to_string(), exe.clone()),
                ("worker".to_string(), exe),
            ]
            .into_iter()
            .collect(),
            connection_string: azurite.connection_string.clone(),
            status_addr: self.status_addr.parse().unwrap(),
            web_port: Some(self.web_port),
        }
    }
}

/// `{web}/api/inventory/locations/{location}` (the location as one path segment).
fn location_url(web: &str, location: &str) -> reqwest::Url {
    let mut url = reqwest::Url::parse(&format!("{web}/api/inventory/locations/")).unwrap();
    url.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .push(location);
    url
}

/// Every page of a paged inventory answer at `url` (`rows` names its list), 200 rows a page.
async fn all_pages(url: reqwest::Url, rows: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let mut url = url.clone();
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("pageSize", "200");
        let response = reqwest::get(url).await.unwrap();
        if response.status() == 404 {
            break;
        }
        let body: serde_json::Value = response.error_for_status().unwrap().json().await.unwrap();
        let list = body[rows].as_array().unwrap().clone();
        let done = list.len() < 200;
        out.extend(list);
        if done {
            break;
        }
    }
    out
}

/// The whole stock the web role serves, read through its paged API.
pub async fn stock(web: &str) -> BTreeMap<(String, String), i64> {
    let locations = all_pages(
        reqwest::Url::parse(&format!("{web}/api/inventory")).unwrap(),
        "locations",
    )
    .await;
    let mut out = BTreeMap::new();
    for location in locations {
        let name = location["location"].as_str().unwrap().to_string();
        for row in all_pages(location_url(web, &name), "stock").await {
            out.insert(
                (name.clone(), row["item"].as_str().unwrap().to_string()),
                row["quantity"].as_i64().unwrap(),
            );
        }
    }
    out
}

/// One pair's stock as the web role serves it (`None`: not recorded).
pub async fn stock_of(web: &str, location: &str, item: &str) -> Option<i64> {
    let mut url = location_url(web, location);
    url.query_pairs_mut()
        .append_pair("q", item)
        .append_pair("pageSize", "200");
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["stock"]
        .as_array()?
        .iter()
        .find(|row| row["item"] == item)
        .and_then(|row| row["quantity"].as_i64())
}

/// `GET {web}/api/inventory` (the shop's totals and the first page of locations).
pub async fn inventory_summary(web: &str) -> serde_json::Value {
    reqwest::get(format!("{web}/api/inventory"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Locations of the big shop.
pub const LOCATIONS: usize = 50;
/// Items at each.
pub const PER_LOCATION: usize = 2_000;

/// Stock per (location, item).
pub type Stock = BTreeMap<(String, String), i64>;

/// A stock take of every item of a shop of 100,000 items across 50 locations
/// (`shop-<l>,pie-<i>`), and the stock it sets.
pub fn big_stocktake() -> (String, Stock) {
    let mut csv = String::from("location,item,quantity\n");
    let mut stock = Stock::new();
    for i in 0..LOCATIONS * PER_LOCATION {
        let (location, item, quantity) = (
            format!("shop-{}", i % LOCATIONS),
            format!("pie-{}", i / LOCATIONS),
            1 + (i % 9) as i64,
        );
        csv.push_str(&format!("{location},{item},{quantity}\n"));
        stock.insert((location, item), quantity);
    }
    (csv, stock)
}

/// Posts a CSV stock take with id `id`; its result URL.
pub async fn upload_stocktake(app: &App, csv: &str, id: &str) -> String {
    let response = App::client()
        .post(format!(
            "{}/api/inventory/stocktakes?stocktakeId={id}",
            app.web
        ))
        .bearer_auth(SCANNER_KEY)
        .header("content-type", "text/csv")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    accepted["resultUrl"].as_str().unwrap().to_string()
}

/// Polls a stock-take result URL until it is no longer pending.
pub async fn wait_for_stocktake(url: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        if body["status"] != "pending" {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "no result in {url}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
