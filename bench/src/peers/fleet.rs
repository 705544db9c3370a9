//! `cqrs-bench fleet` (run by `cargo xtask bench scale`): N apps with K worker roles each on
//! one cqrs-operator, then the same N×K roles as KEDA ScaledObjects (+ the HPAs KEDA makes) on
//! the same cluster and the same queues, one side after the other so neither slows the other;
//! for each N of `--apps`.
//!
//! Figures per side: seconds from the apply until all are Ready; the autoscaler's peak and
//! settled memory and its CPU per idle minute; the API server's requests per idle minute (its
//! own `apiserver_request_total`, less an idle minute with neither side, by verb and resource)
//! and 429s; for cqrs-operator also its own count of what it sent (`cqrs_kube_requests_total`,
//! as a check), its probes' lateness and a spec edit until the Deployment shows it; storage
//! calls per idle minute and how they bunch; a backlog on one role while the rest idle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cqrs_storage::{RetrySettings, StorageAccount};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::procs::{self, Keda, Proc};
use super::proxy::CountingProxy;
use super::sides::{Objects, Replicas, STORAGE_SECRET, apply};
use super::{MetricsApiService, PeersArgs, api_service_available, point_the_api_service_at};
use crate::arg;
use crate::common::{enqueue, median, percentile};

/// Both sides' settings (the issue's: 5 s polling, min 0).
const POLLING: u32 = 5;
const TARGET: u32 = 25;
const MAX: i32 = 10;
const COOLDOWN: u32 = 60;
/// Writes in flight while applying (the harness's, not the autoscalers').
const APPLY_CONCURRENCY: usize = 16;
/// Stop a phase when the machine has less memory available than this.
const MEMORY_FLOOR_MIB: f64 = 3072.0;
const IDLE: Duration = Duration::from_secs(60);
const EDITS: usize = 20;
const BACKLOG: usize = 300;
const IMAGE: &str = "registry.invalid/worker:1";

pub struct FleetArgs {
    peers: PeersArgs,
    apps: Vec<usize>,
    workers: usize,
    /// Each N's pollingInterval (`--polling`, default 5 s): a larger N can be run at a longer
    /// interval so one storage emulator serves the same probe rate.
    polling: Vec<u32>,
    /// The largest N KEDA is measured at (its side takes far longer to apply).
    keda_up_to: usize,
}

impl FleetArgs {
    fn parse(args: &[String]) -> Result<Self> {
        let apps = arg(args, "--apps").unwrap_or_else(|| "1000".into());
        let apps = apps
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if (1..=20_000).contains(&n) => Ok(n),
                _ => bail!(
                    "--apps {apps}: expected app counts from 1 to 20000, comma separated (100,1000)"
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let workers = match arg(args, "--workers").map(|w| w.parse::<usize>()) {
            None => 2,
            Some(Ok(w)) if (1..=10).contains(&w) => w,
            Some(_) => bail!("--workers: expected worker roles per app from 1 to 10"),
        };
        let keda_up_to = match arg(args, "--keda-up-to").map(|w| w.parse::<usize>()) {
            None => usize::MAX,
            Some(Ok(n)) => n,
            Some(Err(_)) => bail!("--keda-up-to: expected the largest app count to run KEDA at"),
        };
        let polling = polling_per_n(arg(args, "--polling").as_deref(), apps.len())?;
        Ok(Self {
            peers: PeersArgs::parse(args)?,
            apps,
            workers,
            polling,
            keda_up_to,
        })
    }

    /// The pollingInterval of app count `n`.
    fn polling(&self, n: usize) -> u32 {
        let i = self.apps.iter().position(|&a| a == n).unwrap_or(0);
        self.polling[i]
    }
}

/// `--polling`: one interval (seconds, 1 to 300) for every N, or one per N of `--apps`.
fn polling_per_n(given: Option<&str>, ns: usize) -> Result<Vec<u32>> {
    let Some(given) = given else {
        return Ok(vec![POLLING; ns]);
    };
    let each = given
        .split(',')
        .map(|p| match p.trim().parse::<u32>() {
            Ok(p) if (1..=300).contains(&p) => Ok(p),
            _ => bail!("--polling {given}: expected seconds from 1 to 300, comma separated"),
        })
        .collect::<Result<Vec<_>>>()?;
    match each.len() {
        1 => Ok(vec![each[0]; ns]),
        n if n == ns => Ok(each),
        n => bail!(
            "--polling {given}: {n} intervals for {ns} app counts; give one, or one per app count"
        ),
    }
}

/// What one side did at one N.
#[derive(Default, Debug)]
struct Figures {
    /// The roles' pollingInterval, seconds.
    polling: u32,
    ready: Option<f64>,
    ready_count: usize,
    expected: usize,
    peak_rss: f64,
    /// KEDA's peak RSS as (operator, adapter).
    peak_parts: Option<(f64, f64)>,
    settled_rss: f64,
    cpu_per_idle_minute: f64,
    /// API server requests per idle minute, by "VERB resource", baseline removed.
    api: BTreeMap<String, f64>,
    /// What the operator counted itself sending in the same minute (ours only).
    client_count: Option<f64>,
    throttled: f64,
    /// p50 and p99 of probe lateness: bucket upper bounds, seconds (ours only).
    lateness: Option<(f64, f64)>,
    storage_per_minute: f64,
    /// Largest and mean storage calls per 100 ms during the idle minute.
    bunching: (u64, f64),
    edits: Option<(f64, f64)>,
    first: Option<f64>,
    ten: Option<f64>,
    /// etcd and kube-apiserver resident memory after the idle minute, MiB.
    control_plane_rss: (f64, f64),
    note: Option<String>,
    /// How the autoscaler ended when it exited during the phase.
    crashed: Option<String>,
}

impl Figures {
    fn api_total(&self) -> f64 {
        self.api.values().sum()
    }
}

/// The run's fixtures.
struct Fleet<'a> {
    args: &'a FleetArgs,
    client: kube::Client,
    account: StorageAccount,
    proxy: CountingProxy,
    proxied: String,
    work: std::path::PathBuf,
    metrics_api: MetricsApiService,
}

pub async fn run(args: &[String]) -> Result<()> {
    let args = FleetArgs::parse(args)?;
    let work = args.peers.logs.clone();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // NB: one Azurite: the autoscalers' storage load at idle is one metadata call per role
    // per polling interval (400 calls/s at 2,000 roles), which one Azurite serves; several
    // would spread what the benchmark is meant to show in one place.
    let azurite =
        cqrs_storage::azurite::Azurite::start(cqrs_storage::azurite::AzuriteOptions::default())
            .await?;
    let direct = azurite.connection_string();
    let (proxy, proxied) = CountingProxy::in_front_of(&direct, None).await?;
    let client = super::client(&args.peers.kubeconfig).await?;
    point_the_api_service_at(&client, &args.peers.adapter_ip).await?;
    let fleet = Fleet {
        args: &args,
        client: client.clone(),
        account: StorageAccount::from_connection_string(&direct, RetrySettings::BACKGROUND)?,
        proxy,
        proxied: proxied.to_connection_string(),
        work: work.clone(),
        metrics_api: MetricsApiService::take(&client).await?,
    };
    eprintln!("==> an idle minute with neither autoscaler (the baseline)");
    let before = apiserver_counts(&client).await?;
    tokio::time::sleep(IDLE).await;
    let baseline = minus(&apiserver_counts(&client).await?.0, &before.0);
    let mut results = Vec::new();
    for &n in &args.apps {
        // NB: a failure at one N ends the run but keeps the table of the Ns before it.
        let ours = match fleet.ours(n, &baseline).await {
            Ok(ours) => ours,
            Err(e) => {
                eprintln!("cqrs-operator at {n} apps failed: {e:#}; stopping here");
                break;
            }
        };
        eprintln!("    {ours:?}");
        let keda = if n <= args.keda_up_to {
            match fleet.keda(n, &baseline).await {
                Ok(keda) => Some(keda),
                Err(e) => {
                    eprintln!("KEDA at {n} apps failed: {e:#}; stopping here");
                    break;
                }
            }
        } else {
            None
        };
        eprintln!("    {keda:?}");
        results.push((n, ours, keda));
        // NB: written after every N, so a run stopped during a large N keeps the smaller ones.
        std::fs::write(&args.peers.out, report(&args, &results))
            .with_context(|| format!("cannot write {}", args.peers.out.display()))?;
    }
    azurite.stop().await;
    if results.is_empty() {
        bail!("no N was measured");
    }
    let report = report(&args, &results);
    println!("\n{report}");
    std::fs::write(&args.peers.out, &report)
        .with_context(|| format!("cannot write {}", args.peers.out.display()))?;
    Ok(())
}

impl Fleet<'_> {
    fn queue(n: usize, app: usize, worker: usize) -> String {
        format!("f{n}-{app}-w{worker}")
    }

    fn placement() -> (Value, Value) {
        (
            json!({ "type": "kwok" }),
            json!([{ "key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule" }]),
        )
    }

    fn app(&self, n: usize, i: usize, image: &str) -> Value {
        let (selector, tolerations) = Self::placement();
        let workers: Vec<Value> = (0..self.args.workers)
            .map(|w| {
                json!({
                    "name": format!("w{w}"),
                    "image": if w == 0 { image } else { IMAGE },
                    "queue": Self::queue(n, i, w),
                    "nodeSelector": selector,
                    "tolerations": tolerations,
                    "scaling": {
                        "minReplicas": 0, "maxReplicas": MAX, "targetQueueLength": TARGET,
                        "activationQueueLength": 0,
                        "pollingInterval": self.args.polling(n),
                        "cooldownPeriod": COOLDOWN,
                    },
                })
            })
            .collect();
        let queues: Vec<Value> = (0..self.args.workers)
            .map(|w| json!({ "name": Self::queue(n, i, w) }))
            .collect();
        json!({
            "apiVersion": "cqrs.dev/v1alpha1", "kind": "CqrsApp",
            "metadata": { "name": format!("app-{i}") },
            "spec": {
                "storage": { "connectionSecretRef": {
                    "name": STORAGE_SECRET, "key": "connectionString" } },
                "deletionPolicy": "Retain",
                "queues": queues,
                "workers": workers,
            },
        })
    }

    fn keda_objects(n: usize, i: usize, w: usize, polling: u32) -> [Value; 2] {
        let name = format!("k-{i}-w{w}");
        let labels = json!({ "app": name });
        let (selector, tolerations) = Self::placement();
        [
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": name },
                "spec": {
                    "replicas": 0,
                    "selector": { "matchLabels": labels },
                    "template": {
                        "metadata": { "labels": labels },
                        "spec": {
                            "nodeSelector": selector, "tolerations": tolerations,
                            "containers": [{ "name": "worker", "image": IMAGE }],
                        },
                    },
                },
            }),
            json!({
                "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                "metadata": { "name": name },
                "spec": {
                    "scaleTargetRef": { "name": name },
                    "pollingInterval": polling,
                    "cooldownPeriod": COOLDOWN,
                    "minReplicaCount": 0,
                    "maxReplicaCount": MAX,
                    "triggers": [{
                        "type": "azure-queue",
                        "metadata": {
                            "queueName": Self::queue(n, i, w),
                            "queueLength": TARGET.to_string(),
                            "activationQueueLength": "0",
                        },
                        "authenticationRef": { "name": STORAGE_SECRET },
                    }],
                },
            }),
        ]
    }

    async fn objects(&self, namespace: &str) -> Result<Objects> {
        let objects = Objects {
            client: self.client.clone(),
            namespace: namespace.to_owned(),
        };
        objects.prepare(&self.proxied).await?;
        Ok(objects)
    }

    async fn apply_all(&self, namespace: &str, objects: Vec<Value>) -> Result<()> {
        futures::stream::iter(objects)
            .map(|o| apply(&self.client, Some(namespace), o))
            .buffer_unordered(APPLY_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// cqrs-operator with `n` apps.
    async fn ours(&self, n: usize, baseline: &Counts) -> Result<Figures> {
        eprintln!(
            "==> cqrs-operator: {n} apps × {} worker roles",
            self.args.workers
        );
        let ns = format!("fleet-c-{n}");
        let objects = self.objects(&ns).await?;
        let mut op = procs::cqrs_operator(&self.args.peers, &ns, &self.work).await?;
        let mut f = Figures {
            polling: self.args.polling(n),
            expected: n,
            ..Figures::default()
        };
        let throttled0 = apiserver_counts(&self.client).await?.1;
        let apps: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk("cqrs.dev", "v1alpha1", "CqrsApp")),
        );
        let ready = ReadySet::watch(apps);
        let started = Instant::now();
        self.apply_all(
            &ns,
            (0..n).map(|i| self.app(n, i, IMAGE)).collect::<Vec<_>>(),
        )
        .await?;
        f.ready_count = ready.wait(n, started, &mut f.note).await;
        f.ready = (f.ready_count == n).then(|| started.elapsed().as_secs_f64());
        drop(ready);
        op.check_alive()?;
        // NB: past the first probes and status writes of the last apps.
        tokio::time::sleep(Duration::from_secs(15)).await;
        self.settled(&ns).await;

        let sent = |text: &str| -> f64 {
            metric_lines(text, "cqrs_kube_requests_total")
                .filter(|(labels, _)| !labels.contains("verb=\"watch\""))
                .map(|(_, v)| v)
                .sum()
        };
        let text0 = op.metrics_text().await.unwrap_or_default();
        self.idle_minute(&op, None, baseline, &mut f).await?;
        let text1 = op.metrics_text().await.unwrap_or_default();
        f.client_count = Some(sent(&text1) - sent(&text0));
        f.lateness = lateness(&text0, &text1);

        eprintln!("    {EDITS} spec edits (an image change) until the Deployment shows it");
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let mut edits = Vec::new();
        for e in 0..EDITS {
            let i = (e * 7919) % n;
            let image = format!("registry.invalid/worker:e{e}");
            let at = Instant::now();
            apply(&self.client, Some(&ns), self.app(n, i, &image)).await?;
            let name = format!("app-{i}-w0");
            let shown = crate::common::wait_until(
                &format!("Deployment {name} with image {image}"),
                Duration::from_secs(30),
                || {
                    let (deployments, name, image) = (&deployments, &name, &image);
                    async move {
                        deployments.get(name).await.ok().is_some_and(|d| {
                            d.spec.and_then(|s| s.template.spec).is_some_and(|s| {
                                s.containers.first().and_then(|c| c.image.as_deref())
                                    == Some(image.as_str())
                            })
                        })
                    }
                },
            )
            .await;
            if shown.is_ok() {
                edits.push(at.elapsed().as_secs_f64());
            }
        }
        if !edits.is_empty() {
            f.edits = Some((median(edits.clone()), percentile(&edits, 99.0)));
        }
        self.backlog(&objects, "app-0-w0", &Self::queue(n, 0, 0), &mut f)
            .await?;
        f.throttled = apiserver_counts(&self.client).await?.1 - throttled0;
        op.check_alive()?;
        op.save_metrics().await;
        op.stop().await;
        self.remove(&ns, &["cqrs.dev/v1alpha1/CqrsApp"]).await?;
        Ok(f)
    }

    /// KEDA with `n`×K ScaledObjects on the queues cqrs-operator's apps had.
    async fn keda(&self, n: usize, baseline: &Counts) -> Result<Figures> {
        let k = self.args.workers;
        let polling = self.args.polling(n);
        eprintln!("==> KEDA: {} ScaledObjects ({n} × {k})", n * k);
        let ns = format!("fleet-k-{n}");
        let objects = self.objects(&ns).await?;
        // NB: the same queues, made sure of (cqrs-operator's apps created them and kept them).
        futures::stream::iter((0..n).flat_map(|i| (0..k).map(move |w| Self::queue(n, i, w))))
            .map(|q| {
                let account = &self.account;
                async move { account.ensure_queue(&q).await.map(|_| ()) }
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.metrics_api.register().await?;
        let mut keda = Keda::start(&self.args.peers, &self.client, &self.work).await?;
        if let Err(why) = api_service_available(&self.client, Duration::from_secs(120)).await {
            eprintln!("    external.metrics.k8s.io is NOT available ({why})");
        }
        let mut f = Figures {
            polling: self.args.polling(n),
            expected: n * k,
            ..Figures::default()
        };
        let throttled0 = apiserver_counts(&self.client).await?.1;
        let scaled: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk(
                "keda.sh",
                "v1alpha1",
                "ScaledObject",
            )),
        );
        let ready = ReadySet::watch(scaled);
        let started = Instant::now();
        let all: Vec<Value> = (0..n)
            .flat_map(|i| (0..k).flat_map(move |w| Self::keda_objects(n, i, w, polling)))
            .collect();
        self.apply_all(&ns, all).await?;
        f.ready_count = ready.wait(n * k, started, &mut f.note).await;
        f.ready = (f.ready_count == n * k).then(|| started.elapsed().as_secs_f64());
        drop(ready);
        keda.check_alive()?;
        // NB: long enough for the HPA controller to have synced every HPA once.
        tokio::time::sleep(Duration::from_secs(20)).await;
        self.settled(&ns).await;
        self.idle_minute(&keda.operator, Some(&keda.adapter), baseline, &mut f)
            .await?;
        // NB: the same queue as cqrs-operator's backlog, emptied since.
        self.backlog(&objects, "k-0-w0", &Self::queue(n, 0, 0), &mut f)
            .await?;
        f.throttled = apiserver_counts(&self.client).await?.1 - throttled0;
        // NB: a peer that crashes under the load is a finding, not the harness's failure: what
        // was measured stays, with how it ended.
        if let Err(e) = keda.check_alive() {
            let crash = crash_summary(&format!("{e:#}"));
            eprintln!("    KEDA exited during the phase: {crash}");
            f.crashed = Some(crash);
        }
        keda.stop().await;
        self.metrics_api.unregister().await?;
        // NB: KEDA puts its finalizer on the TriggerAuthentication too.
        self.remove(
            &ns,
            &[
                "keda.sh/v1alpha1/ScaledObject",
                "keda.sh/v1alpha1/TriggerAuthentication",
            ],
        )
        .await?;
        Ok(f)
    }

    /// Waits (up to 5 minutes) until kube-controller-manager has caught up with every
    /// Deployment of `ns` (its ReplicaSet made, its status observed), so the idle minute
    /// counts the autoscaler, not the Deployment controller working through a backlog at its
    /// own client rate limit.
    async fn settled(&self, ns: &str) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        // NB: a list of thousands of Deployments is not something to poll every 20 ms.
        wait_slowly(
            &format!("the Deployment controller to catch up in {ns}"),
            Duration::from_secs(300),
            Duration::from_secs(2),
            || async {
                deployments
                    .list(&Default::default())
                    .await
                    .is_ok_and(|list| {
                        list.items.iter().all(|d| {
                            d.status.as_ref().and_then(|s| s.observed_generation)
                                >= d.metadata.generation
                        })
                    })
            },
        )
        .await;
    }

    /// One idle minute: the API server's and the storage's traffic, CPU and memory of `main`
    /// (plus `extra`, KEDA's adapter).
    async fn idle_minute(
        &self,
        main: &Proc,
        extra: Option<&Proc>,
        baseline: &Counts,
        f: &mut Figures,
    ) -> Result<()> {
        eprintln!("    an idle minute");
        let cpu = |p: &Proc| p.cpu_seconds().unwrap_or(0.0);
        let cpu0 = cpu(main) + extra.map_or(0.0, cpu);
        let api0 = apiserver_counts(&self.client).await?.0;
        let storage0 = self.proxy.total();
        let t0 = self.proxy.now();
        tokio::time::sleep(IDLE).await;
        let t1 = self.proxy.now();
        let storage1 = self.proxy.total();
        let api1 = apiserver_counts(&self.client).await?.0;
        f.cpu_per_idle_minute = cpu(main) + extra.map_or(0.0, cpu) - cpu0;
        let minutes = (t1 - t0).as_secs_f64() / 60.0;
        f.api = minus(&minus(&api1, &api0), baseline)
            .into_iter()
            .map(|(k, v)| (k, v / minutes))
            .filter(|(_, v)| *v >= 0.5)
            .collect();
        f.storage_per_minute = (storage1 - storage0) as f64 / minutes;
        let slots = self.proxy.per_slot(t0, t1, Duration::from_millis(100));
        let peak = slots.iter().copied().max().unwrap_or(0);
        f.bunching = (peak, slots.iter().sum::<u64>() as f64 / slots.len() as f64);
        let rss = |p: &Proc| p.rss_mib().unwrap_or(0.0);
        let peak_rss = |p: &Proc| p.peak_rss_mib().unwrap_or(0.0);
        f.settled_rss = rss(main) + extra.map_or(0.0, rss);
        f.peak_rss = peak_rss(main) + extra.map_or(0.0, peak_rss);
        f.peak_parts = extra.map(|e| (peak_rss(main), peak_rss(e)));
        f.control_plane_rss = (process_rss("etcd"), process_rss("kube-apiserver"));
        Ok(())
    }

    /// A backlog of [`BACKLOG`] on `queue`, which `deployment` scales on; then the queue is
    /// emptied again.
    async fn backlog(
        &self,
        objects: &Objects,
        deployment: &str,
        queue: &str,
        f: &mut Figures,
    ) -> Result<()> {
        eprintln!("    a backlog of {BACKLOG} on one role while the others idle");
        let replicas = Replicas::watch(objects);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = self.account.queue(queue)?;
        futures::stream::iter(0..BACKLOG)
            .map(|i| enqueue(&client, format!("m{i}")))
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        let since = Instant::now();
        f.first = replicas
            .first(deployment, since, Duration::from_secs(60), |r| r >= 1)
            .await;
        f.ten = replicas
            .first(deployment, since, Duration::from_secs(120), |r| r >= MAX)
            .await;
        // NB: Azurite, serving thousands of probes, has let a call wait past its 30 s once;
        // the next side's backlog needs this queue empty, so the clear is tried again.
        let mut tries = 0;
        loop {
            tries += 1;
            match client.clear(None).await {
                Ok(_) => return Ok(()),
                Err(e) if tries < 4 => eprintln!("    emptying {queue} failed ({e}); again"),
                Err(e) => return Err(e).context("cannot empty the queue"),
            }
        }
    }

    /// Deletes namespace `ns`, first taking the finalizers off the objects of each kind of
    /// `finalized` (`group/version/Kind`) so no autoscaler is needed to let them go, and waits
    /// until it is gone (up to 10 minutes), so neither its garbage collection nor the namespace
    /// controller's retries land in the next phase.
    async fn remove(&self, ns: &str, finalized: &[&str]) -> Result<()> {
        for gvk in finalized {
            let (gv, kind) = gvk.rsplit_once('/').context("group/version/Kind")?;
            let (group, version) = gv.rsplit_once('/').unwrap_or(("", gv));
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                ns,
                &ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
            );
            let names: Vec<String> = api
                .list_metadata(&Default::default())
                .await?
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            let patch = json!({ "metadata": { "finalizers": null } });
            futures::stream::iter(names)
                .map(|name| {
                    let (api, patch) = (&api, &patch);
                    async move {
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(APPLY_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        namespaces.delete(ns, &Default::default()).await?;
        // NB: until the namespace is gone (KEDA's APIService is away by now, so API
        // discovery does not hold its deletion up), so the next phase's counts are its own.
        wait_slowly(
            &format!("namespace {ns} to be deleted"),
            Duration::from_secs(600),
            Duration::from_secs(1),
            || async { namespaces.get_opt(ns).await.is_ok_and(|n| n.is_none()) },
        )
        .await;
        Ok(())
    }
}

/// The names of the objects of a watch whose `Ready` condition is `True`.
struct ReadySet {
    ready: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadySet {
    fn watch(api: Api<DynamicObject>) -> Self {
        let ready: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let set = ready.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(o)) = events.next().await {
                let name = o.metadata.name.clone().unwrap_or_default();
                let is_ready = o.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
                if is_ready {
                    set.insert(name);
                } else {
                    set.remove(&name);
                }
            }
        });
        Self { ready, task }
    }

    fn count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until `n` are Ready (or 15 minutes, or the machine runs low on memory);
    /// returns how many were.
    async fn wait(&self, n: usize, started: Instant, note: &mut Option<String>) -> usize {
        let limit = Duration::from_secs(900);
        let mut last_report = Instant::now();
        loop {
            let count = self.count();
            if count >= n {
                return count;
            }
            if started.elapsed() > limit {
                *note = Some(format!("{count} of {n} Ready after {} s", limit.as_secs()));
                return count;
            }
            let available = available_mib();
            if available < MEMORY_FLOOR_MIB {
                *note = Some(format!(
                    "stopped with {count} of {n} Ready after {:.0} s: {available:.0} MiB of memory left",
                    started.elapsed().as_secs_f64()
                ));
                return count;
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "    {count} of {n} Ready after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ReadySet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every `every` until it holds or `limit` passes (then says so and goes on).
async fn wait_slowly<F, Fut>(what: &str, limit: Duration, every: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            eprintln!("    timed out after {limit:?} waiting for {what}; going on");
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// The machine's available memory, MiB.
fn available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::MAX, |kib| kib / 1024.0)
}

/// Resident memory (MiB) of the processes named `comm`.
fn process_rss(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| crate::memory::kib(pid, "VmRSS:"))
        .sum::<f64>()
        / 1024.0
}

/// `apiserver_request_total` by "VERB resource[/subresource]" (watches left out: they are
/// counted when they end), and the 429s among them.
type Counts = BTreeMap<String, f64>;

async fn apiserver_counts(client: &kube::Client) -> Result<(Counts, f64)> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("cannot read the API server's /metrics")?;
    let mut counts = Counts::new();
    let mut throttled = 0.0;
    for (labels, value) in metric_lines(&text, "apiserver_request_total") {
        let label = |name: &str| -> &str {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map_or("", |v| v.trim_end_matches('"'))
        };
        if label("code") == "429" {
            throttled += value;
        }
        let verb = label("verb");
        if verb == "WATCH" {
            continue;
        }
        let resource = match (label("resource"), label("subresource")) {
            ("", _) => "(non-resource)".to_owned(),
            (r, "") => r.to_owned(),
            (r, s) => format!("{r}/{s}"),
        };
        *counts.entry(format!("{verb} {resource}")).or_default() += value;
    }
    Ok((counts, throttled))
}

/// The (labels, value) of each sample of metric `name` in a Prometheus text page.
fn metric_lines<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

fn minus(a: &Counts, b: &Counts) -> Counts {
    a.iter()
        .map(|(k, v)| (k.clone(), (v - b.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect()
}

/// p50 and p99 of `cqrs_queue_probe_lateness_seconds` between two pages, as the upper bounds
/// of the buckets they fall in.
fn lateness(before: &str, after: &str) -> Option<(f64, f64)> {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        metric_lines(text, "cqrs_queue_probe_lateness_seconds_bucket")
            .filter_map(|(labels, v)| {
                let le = labels.strip_prefix("le=\"")?.trim_end_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect()
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let counts: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, v)| {
            let was = b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, v)| *v);
            (*le, v - was)
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = |q: f64| {
        counts
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Some((at(0.5), at(0.99)))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("—".into(), |s| format!("{s:.1} s"))
}

fn top(api: &BTreeMap<String, f64>) -> String {
    let mut all: Vec<(&String, &f64)> = api.iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(a.1));
    all.iter()
        .take(4)
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(args: &FleetArgs, results: &[(usize, Figures, Option<Figures>)]) -> String {
    let date = time::OffsetDateTime::now_utc().date();
    let mut s = format!(
        "Measured {date} on {}, on the local control plane (Kubernetes {}, kwok nodes, HPA \
         controller at its default 15 s sync) with one Azurite; release builds. Each app has {} \
         worker roles (no web role), min 0, max {MAX}, \
         {TARGET} messages per replica; KEDA gets one ScaledObject per role on the same queue. \
         The sides run one after the other on the same cluster. API requests per idle minute \
         are the API server's own `apiserver_request_total` (watches left out) less an idle \
         minute with neither side; \"p99\" of 20 edits is their slowest.\n\n",
        crate::machine(),
        args.peers.kubernetes_version,
        args.workers,
    );
    let _ = write!(s, "| Apps × roles |");
    for (n, _, _) in results {
        let _ = write!(
            s,
            " {n} × {}: cqrs-operator | KEDA {} + HPA |",
            args.workers, args.peers.keda_version
        );
    }
    s.push_str("\n|---|");
    for _ in results {
        s.push_str("---|---|");
    }
    s.push('\n');
    type Cell = fn(&Figures, bool) -> String;
    let rows: [(&str, Cell); 14] = [
        ("pollingInterval", |f, _| format!("{} s", f.polling)),
        ("All Ready after the apply", |f, _| match f.ready {
            Some(r) => format!("{r:.1} s"),
            None => f
                .note
                .clone()
                .unwrap_or_else(|| format!("{} of {} Ready", f.ready_count, f.expected)),
        }),
        ("Autoscaler peak RSS", |f, _| {
            format!("{:.0} MiB", f.peak_rss)
        }),
        ("Autoscaler RSS after the idle minute", |f, _| {
            format!("{:.0} MiB", f.settled_rss)
        }),
        ("Autoscaler CPU per idle minute", |f, _| {
            format!("{:.1} s", f.cpu_per_idle_minute)
        }),
        ("API requests per idle minute", |f, _| {
            format!("{:.0} ({})", f.api_total(), top(&f.api))
        }),
        ("… as counted by cqrs-operator itself", |f, _| {
            f.client_count.map_or("—".into(), |c| format!("{c:.0}"))
        }),
        ("429s seen by the API server", |f, _| {
            format!("{:.0}", f.throttled)
        }),
        ("Probe lateness p50 / p99 (bucket bounds)", |f, _| {
            f.lateness
                .map_or("—".into(), |(a, b)| format!("≤ {a} s / ≤ {b} s"))
        }),
        ("Storage calls per idle minute", |f, _| {
            format!("{:.0}", f.storage_per_minute)
        }),
        ("Storage calls per 100 ms: busiest / mean", |f, _| {
            format!("{} / {:.1}", f.bunching.0, f.bunching.1)
        }),
        ("Spec edit → Deployment shows it, p50 / p99", |f, _| {
            f.edits
                .map_or("—".into(), |(a, b)| format!("{a:.2} s / {b:.2} s"))
        }),
        ("Backlog of 300 on one role → 0→1 / →10", |f, _| {
            format!("{} / {}", secs(f.first), secs(f.ten))
        }),
        ("etcd / kube-apiserver RSS after the idle minute", |f, _| {
            format!(
                "{:.0} / {:.0} MiB",
                f.control_plane_rss.0, f.control_plane_rss.1
            )
        }),
    ];
    for (label, cell) in rows {
        let _ = write!(s, "| {label} |");
        for (_, ours, keda) in results {
            let theirs = keda.as_ref().map_or_else(
                || format!("not run (`--keda-up-to {}`)", args.keda_up_to),
                |k| cell(k, false),
            );
            let _ = write!(s, " {} | {theirs} |", cell(ours, true));
        }
        s.push('\n');
    }
    for (n, ours, keda) in results {
        for (side, f) in [("cqrs-operator", Some(ours)), ("KEDA", keda.as_ref())] {
            if let Some(crash) = f.and_then(|f| f.crashed.as_ref()) {
                let _ = write!(s, "\n{side} at {n} apps exited during the phase: {crash}\n");
            }
        }
    }
    s
}

/// The panic (or the first line) of a process's exit report, with where it happened.
fn crash_summary(report: &str) -> String {
    let mut from_panic = report
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("panic:"));
    let Some(panic) = from_panic.next() else {
        return report.lines().next().unwrap_or_default().trim().to_owned();
    };
    match from_panic.find(|l| l.contains(".go:")) {
        Some(at) => format!("{panic} at {}", at.split(" +0x").next().unwrap_or(at)),
        None => panic.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_summed_up_by_its_panic_and_where() {
        let report = "keda-operator exited (exit status: 2); its log:\nINFO x\npanic: runtime error: nil pointer dereference\n[signal SIGSEGV]\n\ngoroutine 1 [running]:\ngithub.com/kedacore/keda/v2/pkg/scaling/resolver.GetCurrentReplicas(...)\n\tgithub.com/kedacore/keda/v2@v2.18.3/pkg/scaling/resolver/scale_resolvers.go:683 +0x93\n";
        assert_eq!(
            crash_summary(report),
            "panic: runtime error: nil pointer dereference at github.com/kedacore/keda/v2@v2.18.3/pkg/scaling/resolver/scale_resolvers.go:683"
        );
        assert_eq!(crash_summary("it exited\nmore"), "it exited");
    }

    #[test]
    fn polling_is_one_interval_for_all_or_one_per_app_count() {
        assert_eq!(polling_per_n(None, 3).unwrap(), vec![POLLING; 3]);
        assert_eq!(polling_per_n(Some("25"), 2).unwrap(), vec![25, 25]);
        assert_eq!(polling_per_n(Some("5,5,25"), 3).unwrap(), vec![5, 5, 25]);
        let err = polling_per_n(Some("5,25"), 3).unwrap_err().to_string();
        assert!(err.contains("2 intervals for 3 app counts"), "{err}");
        assert!(polling_per_n(Some("0"), 1).is_err());
        assert!(polling_per_n(Some("five"), 1).is_err());
    }

    #[test]
    fn lateness_quantiles_come_from_the_bucket_deltas() {
        let page = |a: f64, b: f64, c: f64| {
            format!(
                "cqrs_queue_probe_lateness_seconds_bucket{{le=\"0.01\"}} {a}\n\
                 cqrs_queue_probe_lateness_seconds_bucket{{le=\"0.1\"}} {b}\n\
                 cqrs_queue_probe_lateness_seconds_bucket{{le=\"+Inf\"}} {c}\n"
            )
        };
        // 100 new probes: 90 within 10 ms, 9 more within 100 ms, 1 later.
        let got = lateness(&page(10.0, 10.0, 10.0), &page(100.0, 109.0, 110.0));
        assert_eq!(got, Some((0.01, 0.1)));
        assert_eq!(lateness(&page(1.0, 1.0, 1.0), &page(1.0, 1.0, 1.0)), None);
    }

    #[test]
    fn api_server_samples_are_read_by_verb_and_resource() {
        let page = "apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"scale\",verb=\"GET\",version=\"v1\"} 7\n";
        let (labels, v) = metric_lines(page, "apiserver_request_total")
            .next()
            .unwrap();
        assert_eq!(v, 7.0);
        assert!(labels.contains("subresource=\"scale\""));
    }
}
