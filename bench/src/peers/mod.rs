//! `cqrs-bench peers` (run by `cargo xtask bench peers`): cqrs-operator and KEDA + the HPA
//! side by side on one local control plane, scaling kwok-backed Deployments on the same
//! Azurite with equivalent settings; every scenario runs on several roles of each side at the
//! same time and is reported as the median with its spread.
//!
//! Runs inside the network namespace `cargo xtask bench peers` creates, where the cluster
//! (with the aggregation layer on) already runs: KEDA's metrics adapter listens on a
//! non-loopback address of that namespace, which the apiserver reaches through the
//! APIService's endpoint.

mod fleet;
mod procs;
mod proxy;
mod scenarios;
mod sides;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cqrs_storage::azurite::{Azurite, AzuriteOptions};
use cqrs_storage::{RetrySettings, StorageAccount};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::Api;

use crate::arg;
use crate::common::median;
use procs::{ADAPTER_PORT, ADAPTER_SERVICE, KEDA_NAMESPACE, Keda, Proc};
use scenarios::{Lab, Outcome, Trial};
use sides::{
    COOLDOWN, MAX_REPLICAS, Objects, POLLING_INTERVAL, Replicas, Side, TARGET_PER_REPLICA,
};

/// What `cargo xtask bench peers` hands over.
pub struct PeersArgs {
    pub kubeconfig: PathBuf,
    pub keda_operator: PathBuf,
    pub keda_adapter: PathBuf,
    pub keda_version: String,
    pub kubernetes_version: String,
    pub bin_dir: PathBuf,
    /// The non-loopback address of the network namespace the adapter listens on.
    pub adapter_ip: String,
    pub out: PathBuf,
    /// Where the processes' logs and the roles' histories are kept.
    pub logs: PathBuf,
    /// Roles per side and scenario (the issue asks for at least 3).
    pub runs: usize,
}

impl PeersArgs {
    pub fn parse(args: &[String]) -> Result<Self> {
        let path = |name: &str| {
            arg(args, name)
                .map(PathBuf::from)
                .with_context(|| name.to_owned())
        };
        Ok(Self {
            kubeconfig: path("--kubeconfig")?,
            keda_operator: path("--keda-operator")?,
            keda_adapter: path("--keda-adapter")?,
            keda_version: arg(args, "--keda-version").context("--keda-version")?,
            kubernetes_version: arg(args, "--kubernetes-version")
                .context("--kubernetes-version")?,
            bin_dir: path("--bin-dir")?,
            adapter_ip: arg(args, "--adapter-ip").context("--adapter-ip")?,
            out: path("--out")?,
            logs: path("--logs")?,
            runs: match arg(args, "--runs") {
                None => 3,
                Some(r) => match r.parse::<usize>() {
                    Ok(n) if (1..=10).contains(&n) => n,
                    _ => bail!(
                        "--runs {r}: expected a whole number of roles per side from 1 to 10 \
                         (3 or more for a median worth quoting)"
                    ),
                },
            },
        })
    }
}

const NAMESPACE: &str = "peers";

pub use fleet::run as run_fleet;

pub async fn run(args: &[String]) -> Result<()> {
    let args = PeersArgs::parse(args)?;
    // NB: kept after the run (and replaced by the next): the processes' logs and each role's
    // replica history are how a figure is checked.
    let work = args.logs.clone();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let azurite = Azurite::start(AzuriteOptions::default()).await?;
    let direct = azurite.connection_string();
    let (proxy, proxied) =
        proxy::CountingProxy::in_front_of(&direct, Some(&work.join("proxy.log"))).await?;
    let client = client(&args.kubeconfig).await?;
    let objects = Objects {
        client: client.clone(),
        namespace: NAMESPACE.into(),
    };
    point_the_api_service_at(&client, &args.adapter_ip).await?;
    objects.prepare(&proxied.to_connection_string()).await?;
    let lab = Lab {
        replicas: Replicas::watch(&objects),
        objects,
        account: StorageAccount::from_connection_string(&direct, RetrySettings::BACKGROUND)?,
        proxy,
    };
    let report = measure(&args, &lab, &client, &work).await;
    lab.proxy.flush_log();
    azurite.stop().await;
    let report = report.with_context(|| format!("process logs in {}", work.display()))?;
    println!("\n{report}");
    std::fs::write(&args.out, &report)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "processes' logs and each role's replica history: {}",
        work.display()
    );
    Ok(())
}

/// A client with the credentials of `kubeconfig`.
pub(super) async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The Service the APIService names gets the adapter's address as its only endpoint (no
/// selector: the adapter is a host process, not a pod).
pub(super) async fn point_the_api_service_at(client: &kube::Client, ip: &str) -> Result<()> {
    sides::apply(
        client,
        Some(KEDA_NAMESPACE),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": ADAPTER_SERVICE },
            "spec": { "ports": [{ "name": "https", "port": 443, "targetPort": ADAPTER_PORT }] },
        }),
    )
    .await?;
    sides::apply(
        client,
        Some(KEDA_NAMESPACE),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": { "name": ADAPTER_SERVICE },
            "subsets": [{
                "addresses": [{ "ip": ip }],
                "ports": [{ "name": "https", "port": ADAPTER_PORT }],
            }],
        }),
    )
    .await
}

/// The APIService KEDA's metrics adapter serves.
const METRICS_API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// KEDA's APIService, registered only while its adapter runs (`bench scale`): an APIService
/// whose backend is down fails API discovery, and a namespace being deleted then stays
/// Terminating while kube-controller-manager retries, which the next phase's request counts
/// would show.
pub(super) struct MetricsApiService {
    api: Api<APIService>,
    registered: APIService,
}

impl MetricsApiService {
    /// Takes the APIService `cargo xtask` registered away, keeping it to register again.
    pub(super) async fn take(client: &kube::Client) -> Result<Self> {
        let api: Api<APIService> = Api::all(client.clone());
        let mut registered = api
            .get(METRICS_API_SERVICE)
            .await
            .with_context(|| format!("cannot read APIService {METRICS_API_SERVICE}"))?;
        registered.status = None;
        registered.metadata = kube::api::ObjectMeta {
            name: registered.metadata.name,
            labels: registered.metadata.labels,
            annotations: registered.metadata.annotations,
            ..Default::default()
        };
        let taken = Self { api, registered };
        taken.unregister().await?;
        Ok(taken)
    }

    /// Registers it (before the adapter starts).
    pub(super) async fn register(&self) -> Result<()> {
        match self.api.create(&Default::default(), &self.registered).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot register {METRICS_API_SERVICE}")),
        }
    }

    /// Takes it away (once the adapter stopped).
    pub(super) async fn unregister(&self) -> Result<()> {
        match self
            .api
            .delete(METRICS_API_SERVICE, &Default::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {METRICS_API_SERVICE}")),
        }
    }
}

/// Waits until the APIService is Available; the condition's message when it does not get
/// there within `limit`.
pub(super) async fn api_service_available(
    client: &kube::Client,
    limit: Duration,
) -> Result<(), String> {
    let api: Api<APIService> = Api::all(client.clone());
    let deadline = Instant::now() + limit;
    let mut last = String::from("the APIService was never read");
    while Instant::now() < deadline {
        if let Ok(service) = api.get(METRICS_API_SERVICE).await {
            let available = service
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available");
            match available {
                Some(c) if c.status == "True" => return Ok(()),
                Some(c) => {
                    last = format!(
                        "{}: {}",
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default()
                    )
                }
                None => last = "no Available condition yet".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Peak RSS (MiB) of each side with `n` busy roles.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    ours: f64,
    keda_operator: f64,
    keda_adapter: f64,
}

impl Memory {
    fn keda(&self) -> f64 {
        self.keda_operator + self.keda_adapter
    }
}

async fn memory_with(lab: &Lab, roles: &[sides::Role], procs: (&Proc, &Keda)) -> Result<Memory> {
    let started = futures::future::join_all(roles.iter().map(|r| async move {
        lab.start(r).await?;
        lab.send(&r.queue, 100).await
    }))
    .await;
    started.into_iter().collect::<Result<Vec<_>>>()?;
    // NB: long enough for every role to scale up and for the HPAs to sync several times.
    tokio::time::sleep(Duration::from_secs(75)).await;
    let (ours, keda) = procs;
    Ok(Memory {
        ours: ours.peak_rss_mib()?,
        keda_operator: keda.operator.peak_rss_mib()?,
        keda_adapter: keda.adapter.peak_rss_mib()?,
    })
}

/// Each role's side beside its result, failing with the first failed run.
fn by_side<T>(roles: &[sides::Role], results: Vec<Result<T>>) -> Result<Vec<(Side, T)>> {
    roles
        .iter()
        .zip(results)
        .map(|(r, result)| Ok((r.side, result?)))
        .collect()
}

async fn measure(
    args: &PeersArgs,
    lab: &Lab,
    client: &kube::Client,
    work: &std::path::Path,
) -> Result<String> {
    let mut keda = Keda::start(args, client, work).await?;
    let mut ours = procs::cqrs_operator(args, NAMESPACE, work).await?;
    let hpa_path = api_service_available(client, Duration::from_secs(120)).await;
    match &hpa_path {
        Ok(()) => eprintln!("    external.metrics.k8s.io is served by KEDA's adapter"),
        Err(why) => eprintln!(
            "    external.metrics.k8s.io is NOT available ({why}); the HPA cannot scale KEDA's roles past 1"
        ),
    }

    eprintln!("==> peak memory with 1 and with 20 busy roles per side");
    let roles = |side, run: &str, n| -> Vec<sides::Role> {
        (0..n).map(|i| Objects::role(side, run, i)).collect()
    };
    let both = |run: &str, n| -> Vec<sides::Role> {
        Side::BOTH.iter().flat_map(|s| roles(*s, run, n)).collect()
    };
    let one = memory_with(lab, &both("m", 1), (&ours, &keda)).await?;
    let more: Vec<_> = both("m", 20)
        .into_iter()
        .filter(|r| !r.name.ends_with("-0"))
        .collect();
    let twenty = memory_with(lab, &more, (&ours, &keda)).await?;
    // NB: their queues go too, so Azurite's sweeps of deleted messages stay small.
    for r in both("m", 20) {
        lab.objects.delete(&r).await?;
        for queue in [r.queue.clone(), format!("{}-poison", r.queue)] {
            lab.account.delete_queue(&queue).await?;
        }
    }
    keda.check_alive()?;
    ours.check_alive()?;

    let window = Duration::from_secs(60);
    eprintln!(
        "==> backlog → scale up → busy → emptied → zero ({} roles per side)",
        args.runs
    );
    let trial_roles = both("t", args.runs);
    // NB: role i of each side meets the backlog i/runs of a polling interval later.
    let phase = |r: &sides::Role| {
        Duration::from_secs(u64::from(POLLING_INTERVAL)).mul_f64(r.index as f64 / args.runs as f64)
    };
    let trials =
        futures::future::join_all(trial_roles.iter().map(|r| lab.trial(r, window, phase(r)))).await;
    let trials = by_side(&trial_roles, trials)?;
    keda.check_alive()?;
    ours.check_alive()?;

    eprintln!(
        "==> in flight, queue deleted, queue unreachable ({} roles per side each)",
        args.runs
    );
    let observe = Duration::from_secs(u64::from(COOLDOWN) * 2);
    let (flight, deleted, unreachable) = (
        both("f", args.runs),
        both("d", args.runs),
        both("u", args.runs),
    );
    let (f, d, u) = tokio::join!(
        futures::future::join_all(flight.iter().map(|r| lab.in_flight(r, observe))),
        futures::future::join_all(deleted.iter().map(|r| lab.queue_deleted(r, observe))),
        futures::future::join_all(
            unreachable
                .iter()
                .map(|r| lab.queue_unreachable(r, observe))
        ),
    );
    let (f, d, u) = (
        by_side(&flight, f)?,
        by_side(&deleted, d)?,
        by_side(&unreachable, u)?,
    );
    keda.check_alive()?;
    ours.check_alive()?;
    ours.save_metrics().await;
    keda.stop().await;
    ours.stop().await;
    std::fs::write(work.join("replicas.txt"), lab.replicas.histories())?;

    let slowest = lab.proxy.slowest();
    Ok(report(
        args,
        &hpa_path,
        &trials,
        [&f, &d, &u],
        (one, twenty),
        slowest,
    ))
}

/// "12.3 s (11.8–13.0)", or how many runs never got there.
fn seconds(values: &[Option<f64>]) -> String {
    let got: Vec<f64> = values.iter().flatten().copied().collect();
    if got.is_empty() {
        return format!("never ({} of {} runs)", values.len(), values.len());
    }
    let (lo, hi) = got
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let missing = values.len() - got.len();
    let mut s = format!("{:.1} s ({lo:.1}–{hi:.1})", median(got.clone()));
    if missing > 0 {
        let _ = write!(s, "; never in {missing} of {} runs", values.len());
    }
    s
}

fn per_minute(values: Vec<f64>) -> String {
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    format!("{:.0}/min ({lo:.0}–{hi:.0})", median(values))
}

/// The runs' outcomes, identical ones counted: "held at 2 (3 of 3)".
fn outcomes(all: &[(Side, Outcome)], side: Side) -> String {
    let mine: Vec<&Outcome> = all
        .iter()
        .filter(|(s, _)| *s == side)
        .map(|(_, o)| o)
        .collect();
    // NB: times differ run to run; the shape (which replica counts, in order) is what counts,
    // with the time of each run's last change.
    let mut shapes: Vec<(String, usize, Vec<String>)> = Vec::new();
    for o in &mine {
        let shape = o.shape();
        let at = o.changes.last().map(|(t, _)| format!("{t:.0}"));
        match shapes.iter_mut().find(|(s, _, _)| *s == shape) {
            Some((_, count, times)) => {
                *count += 1;
                times.extend(at);
            }
            None => shapes.push((shape, 1, at.into_iter().collect())),
        }
    }
    shapes
        .into_iter()
        .map(|(shape, count, times)| {
            let when = if times.is_empty() {
                String::new()
            } else {
                format!(" (last change after {} s)", times.join("/"))
            };
            format!("{shape}{when}, {count} of {}", mine.len())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn report(
    args: &PeersArgs,
    hpa_path: &Result<(), String>,
    trials: &[(Side, Trial)],
    [flight, deleted, unreachable]: [&[(Side, Outcome)]; 3],
    (one, twenty): (Memory, Memory),
    slowest: Duration,
) -> String {
    let of = |side: Side| -> Vec<&Trial> {
        trials
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, t)| t)
            .collect()
    };
    let (c, k) = (of(Side::Cqrs), of(Side::Keda));
    let col = |f: &dyn Fn(&[&Trial]) -> String| (f(&c), f(&k));
    let mut rows: Vec<(String, (String, String))> = vec![
        (
            "Backlog of 300 → first replica (0→1)".into(),
            col(&|t| seconds(&t.iter().map(|t| t.first).collect::<Vec<_>>())),
        ),
        (
            format!("Backlog of 300 → {MAX_REPLICAS} replicas"),
            col(&|t| seconds(&t.iter().map(|t| t.full).collect::<Vec<_>>())),
        ),
        (
            format!("Queue emptied → 0 replicas (cooldown {COOLDOWN} s)"),
            col(&|t| seconds(&t.iter().map(|t| t.zero).collect::<Vec<_>>())),
        ),
        (
            format!(
                "40 messages in flight, 0 visible, {} s watched",
                COOLDOWN * 2
            ),
            (outcomes(flight, Side::Cqrs), outcomes(flight, Side::Keda)),
        ),
        (
            format!("Scaled queue deleted, {} s watched", COOLDOWN * 2),
            (outcomes(deleted, Side::Cqrs), outcomes(deleted, Side::Keda)),
        ),
        (
            format!(
                "Scaled queue unreachable (requests time out), {} s watched",
                COOLDOWN * 2
            ),
            (
                outcomes(unreachable, Side::Cqrs),
                outcomes(unreachable, Side::Keda),
            ),
        ),
        (
            "Storage calls per role, idle at 0 replicas".into(),
            col(&|t| per_minute(t.iter().map(|t| t.idle_calls).collect())),
        ),
        (
            format!("Storage calls per role, busy at {MAX_REPLICAS} replicas"),
            col(&|t| per_minute(t.iter().map(|t| t.busy_calls).collect())),
        ),
    ];
    for (n, m) in [(1, one), (20, twenty)] {
        rows.push((
            format!("Peak RSS with {n} busy role(s)"),
            (
                format!("{:.1} MiB", m.ours),
                format!(
                    "{:.1} MiB (operator {:.1} + adapter {:.1})",
                    m.keda(),
                    m.keda_operator,
                    m.keda_adapter
                ),
            ),
        ));
    }
    let date = time::OffsetDateTime::now_utc().date();
    let mut s = format!(
        "Measured {date} on {}, on the local control plane (Kubernetes {}, kwok nodes, HPA \
         controller at its default 15 s sync) and one Azurite; {} roles per side and scenario, \
         all running at once; median (min–max). Both sides: pollingInterval {POLLING_INTERVAL} s, \
         {TARGET_PER_REPLICA} messages per replica, min 0, max {MAX_REPLICAS}, cooldown {COOLDOWN} s; \
         KEDA's ScaledObject has queueLength {TARGET_PER_REPLICA}, activationQueueLength 0, \
         default HPA behaviour; cqrs-operator its default behaviour.\n\n",
        crate::machine(),
        args.kubernetes_version,
        args.runs,
    );
    if let Err(why) = hpa_path {
        let _ = write!(
            s,
            "**The HPA path did not work in this run**: the APIService \
             v1beta1.external.metrics.k8s.io never became Available ({why}), so KEDA's figures \
             past one replica are those of its operator alone.\n\n"
        );
    }
    let _ = writeln!(
        s,
        "| Scenario | cqrs-operator | KEDA {} + HPA |",
        args.keda_version
    );
    let _ = writeln!(s, "|---|---|---|");
    for (label, (ours, theirs)) in rows {
        let _ = writeln!(s, "| {label} | {ours} | {theirs} |");
    }
    let _ = writeln!(
        s,
        "\nThe slowest storage call of the run took {:.1} s (Azurite, one Node process, sweeps \
         deleted messages every 60 s and answers nothing meanwhile; the queues of run i of both \
         sides are emptied at the same moment, so both meet the same stalls).",
        slowest.as_secs_f64()
    );
    s
}
