//! `reconcile` and `error_policy`: the controller's two entry points.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::Context;
use super::applied;
use super::children::{self, Owner};
use super::scaling::ScalerKey;
use super::storage::Connected;
use super::writes::{FIELD_MANAGER, publish, publish_as};
use crate::Error;
use crate::crd::{CqrsApp, CqrsAppStatus, condition};
use crate::metrics::Timer;
use crate::status::{self, Check, conditions, find, ready};
use crate::validate::validate_app;

/// Finalizer that lets the operator clean up storage before a CqrsApp goes away.
pub const FINALIZER: &str = "cqrs.dev/storage";

/// How often a healthy app is reconciled anyway (refreshes queue depths in its status; its
/// storage is provisioned again only every `provision_interval`). Scaling changes reconcile at
/// once through the Deployment watch, so this only bounds how stale an idle status gets.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long a status whose only change is its queues' `lastProbeTime` stays as stored: an idle
/// app's status is written every 10 minutes, not every resync.
pub const STATUS_REFRESH: Duration = Duration::from_secs(600);

/// Reconciles one CqrsApp.
pub async fn reconcile(app: Arc<CqrsApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let _timer = Timer::start(&ctx.metrics.reconcile_duration);
    let namespace = app
        .namespace()
        .ok_or(Error::IncompleteObject("metadata.namespace"))?;
    let api: Api<CqrsApp> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = ObjectRef::from_obj(app.as_ref());
    let result = finalizer(&api, FINALIZER, app, |event| async {
        match event {
            Event::Apply(app) => apply(&app, &ctx).await,
            Event::Cleanup(app) => super::cleanup::cleanup(&app, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    result
}

/// Requeues a failed app with a delay that doubles per consecutive failure of that app
/// (5 s up to 5 min), so one broken app neither spins nor delays the others.
pub fn error_policy(app: Arc<CqrsApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(app.as_ref());
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            reason: error.reason().into(),
        })
        .inc();
    let delay = backoff(failures);
    tracing::warn!(app = %app.name_any(), namespace = ?app.namespace(), failures, retry_in = ?delay, error = %error, "reconcile failed");
    Action::requeue(delay)
}

/// Retry delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64 << exp).min(Duration::from_secs(300))
}

async fn apply(app: &CqrsApp, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(app).ok_or(Error::IncompleteObject("metadata.uid"))?;
    if let Err(invalid) = validate_app(&owner.name, &app.spec) {
        let message = invalid.to_string();
        let not = |type_, what| Check::failed(type_, "InvalidSpec", what);
        let checks = vec![
            not(
                condition::STORAGE_READY,
                "not provisioned: the spec is invalid",
            ),
            not(condition::WEB_READY, "not deployed: the spec is invalid"),
            not(
                condition::WORKERS_READY,
                "not deployed: the spec is invalid",
            ),
        ];
        let ready = Check::failed(condition::READY, "InvalidSpec", message.clone());
        report_failure(
            app,
            ctx,
            &owner,
            checks,
            Some(ready),
            "InvalidSpec",
            &message,
        )
        .await?;
        return Ok(Action::await_change());
    }

    let revision = ctx.storage.revision(app).await;
    let reused = super::provision::provisioned_and_unchanged(app, ctx, &revision);
    let provisioned = match reused {
        Some(c) => Ok(c),
        None => super::provision::connect_and_provision(app, ctx, revision).await,
    };
    let connected = match provisioned {
        Ok(c) => c,
        Err(problem) => {
            ctx.provisioned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ObjectRef::from_obj(app));
            let checks = vec![Check::failed(
                condition::STORAGE_READY,
                problem.reason.as_str(),
                problem.message.clone(),
            )];
            report_failure(
                app,
                ctx,
                &owner,
                checks,
                None,
                problem.reason.as_str(),
                &problem.message,
            )
            .await?;
            return Err(Error::Storage(problem));
        }
    };

    super::redrive::handle(app, ctx, &connected).await?;
    let web = super::apply::apply_children(app, ctx, &owner, &connected).await?;
    super::apply::run_scalers(app, ctx, &owner, &connected);
    let status = compute_status(app, ctx, &owner, &connected, web).await;
    ctx.metrics.record_poison(
        &owner.namespace,
        &owner.name,
        status
            .queues
            .iter()
            .map(|q| (q.name.as_str(), q.poison_message_count)),
    );
    warn_of_new_poison(app, ctx, &status).await;
    if find(app.status.as_ref(), condition::READY).is_some_and(|c| c.status != "True")
        && status_ready(&status)
    {
        publish(
            ctx,
            app,
            EventType::Normal,
            "Ready",
            "storage, web and workers are ready".into(),
        )
        .await;
    }
    patch_status(app, ctx, status).await?;
    Ok(Action::requeue(resync_delay()))
}

/// [`RESYNC`] ±10 %, so apps applied together do not keep resyncing together.
pub fn resync_delay() -> Duration {
    RESYNC.mul_f64(0.9 + 0.2 * crate::autoscale::random_fraction())
}

/// Stops the app's probe loops, records `checks` (and `ready`, else `Ready` derived from them)
/// in its status, and publishes a Warning Event when the failure is new.
async fn report_failure(
    app: &CqrsApp,
    ctx: &Context,
    owner: &Owner,
    checks: Vec<Check>,
    ready: Option<Check>,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    ctx.stop_app(&owner.namespace, &owner.name);
    let status = CqrsAppStatus {
        conditions: all_conditions(app, checks, ready),
        ..app.status.clone().unwrap_or_default()
    };
    warn_on_change(app, ctx, reason, message).await;
    patch_status(app, ctx, status).await
}

fn status_ready(status: &CqrsAppStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY && c.status == "True")
}

async fn compute_status(
    app: &CqrsApp,
    ctx: &Context,
    owner: &Owner,
    connected: &Connected,
    web: Option<Deployment>,
) -> CqrsAppStatus {
    let views = app
        .spec
        .workers
        .iter()
        .map(|worker| status::WorkerView {
            name: worker.name.clone(),
            queue: worker.queue.clone(),
            state: ctx
                .scalers
                .state(&ScalerKey::new(&owner.namespace, &owner.name, &worker.name))
                .unwrap_or_default(),
            running: None,
        })
        .collect();
    let workers = status::workers(views);
    let probe = ctx.poison_counts.probe(
        &connected.probe_id,
        super::poison_counts::poison_queues(app),
        connected.probe.as_ref(),
    );
    let queues = status::queues(&app.spec.queues, &workers.depths, &probe).await;
    let storage = Check::ok(
        condition::STORAGE_READY,
        "Provisioned",
        format!(
            "{} queue(s) with poison queues and {} container(s) exist",
            app.spec.queues.len(),
            app.spec.containers.len()
        ),
    );
    let web_check = web_check(app, web.as_ref());
    let workers_check = status::workers_check(&workers.problems, app.spec.workers.len());
    status::assemble(
        all_conditions(app, vec![storage, web_check, workers_check], None),
        queues,
        workers.status,
        app.spec.web.as_ref().map(|w| {
            format!(
                "http://{}.{}.svc:{}",
                children::web_name(&owner.name),
                owner.namespace,
                w.service.port
            )
        }),
        app.metadata.generation,
    )
}

/// `WebReady` from the web Deployment's available replicas.
fn web_check(app: &CqrsApp, web: Option<&Deployment>) -> Check {
    match (&app.spec.web, web) {
        (None, _) => Check::ok(condition::WEB_READY, "NoWebRole", "the app has no web role"),
        (Some(spec), Some(d)) => {
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let message = format!("{available}/{} web replica(s) available", spec.replicas);
            if available >= spec.replicas {
                Check::ok(condition::WEB_READY, "Available", message)
            } else {
                Check::failed(condition::WEB_READY, "ReplicasUnavailable", message)
            }
        }
        (Some(_), None) => Check::failed(
            condition::WEB_READY,
            "NotDeployed",
            "the web Deployment was not applied",
        ),
    }
}

/// All four conditions: `checks` for the ones given, `Unknown`-as-false placeholders for the
/// rest, and `Ready` derived from them (or `ready_override`).
fn all_conditions(
    app: &CqrsApp,
    mut checks: Vec<Check>,
    ready_override: Option<Check>,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    for type_ in [
        condition::STORAGE_READY,
        condition::WEB_READY,
        condition::WORKERS_READY,
    ] {
        if !checks.iter().any(|c| c.type_ == type_) {
            checks.push(Check::failed(type_, "Pending", "waiting for storage"));
        }
    }
    let ready = ready_override.unwrap_or_else(|| ready(&checks));
    checks.insert(0, ready);
    let previous = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    conditions(previous, &checks, app.metadata.generation, Timestamp::now())
}

async fn patch_status(
    app: &CqrsApp,
    ctx: &Context,
    mut status: CqrsAppStatus,
) -> Result<(), Error> {
    status.observed_generation = app.metadata.generation;
    // Compare what would be stored: times are stored in whole seconds.
    let stored_form = serde_json::to_value(&status)
        .ok()
        .and_then(|v| serde_json::from_value::<CqrsAppStatus>(v).ok());
    if stored_form.is_some() && app.status == stored_form {
        return Ok(());
    }
    if let (Some(stored), Some(new)) = (&app.status, &stored_form)
        && only_recent_probe_times_differ(stored, new, Timestamp::now())
    {
        return Ok(());
    }
    // NB: the app in the cache can be older than this operator's last status write (a child's
    // watch event reconciles it before the write's own event arrives): what was written within
    // the last resync period is not written again (probe times aside, as above).
    let namespace = app.namespace().unwrap_or_default();
    let key = applied::key(&namespace, &app.name_any(), "status", "");
    let digest = applied::digest(&(
        &app.metadata.uid,
        stored_form.as_ref().map(without_probe_times),
    ));
    if stored_form.is_some() && ctx.applied.recorded_within(&key, digest, RESYNC) {
        return Ok(());
    }
    ctx.metrics.status_writes.inc();
    let api: Api<CqrsApp> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({ "apiVersion": "cqrs.dev/v1alpha1", "kind": "CqrsApp", "status": status });
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::PatchStatus)?;
    ctx.applied.record(key, digest, None);
    Ok(())
}

/// `status` without its queues' `lastProbeTime`.
fn without_probe_times(status: &CqrsAppStatus) -> CqrsAppStatus {
    let mut status = status.clone();
    for queue in &mut status.queues {
        queue.last_probe_time = None;
    }
    status
}

/// Whether `new` differs from `stored` only in its queues' `lastProbeTime`, all of them stored
/// less than [`STATUS_REFRESH`] before `now`.
fn only_recent_probe_times_differ(
    stored: &CqrsAppStatus,
    new: &CqrsAppStatus,
    now: Timestamp,
) -> bool {
    let refresh = STATUS_REFRESH.as_secs() as i64;
    without_probe_times(stored) == without_probe_times(new)
        && stored.queues.iter().all(|q| {
            q.last_probe_time
                .as_ref()
                .is_some_and(|t| now.as_second() - t.0.as_second() < refresh)
        })
}

/// Publishes a Warning event when `Ready` changes to (or within) a failure with a new reason
/// or message: events only when something changes.
async fn warn_on_change(app: &CqrsApp, ctx: &Context, reason: &str, message: &str) {
    let previous = find(app.status.as_ref(), condition::READY);
    let same = previous
        .is_some_and(|c| c.status == "False" && c.reason == reason && c.message.contains(message));
    if !same {
        publish(ctx, app, EventType::Warning, reason, message.to_string()).await;
    }
}

/// A Warning Event `MessagesPoisoned` for each queue whose poison queue grew since the stored
/// status (at most one per queue per reconcile, so per resync when nothing else changes).
async fn warn_of_new_poison(app: &CqrsApp, ctx: &Context, status: &CqrsAppStatus) {
    for queue in &status.queues {
        let Some(now) = queue.poison_message_count else {
            continue;
        };
        let before = app
            .status
            .as_ref()
            .and_then(|s| s.queues.iter().find(|q| q.name == queue.name))
            .and_then(|q| q.poison_message_count)
            .unwrap_or(0);
        if now > before {
            let poison = cqrs_storage::queues::poison_queue_name(&queue.name);
            publish_as(
                ctx,
                app,
                EventType::Warning,
                "MessagesPoisoned",
                &format!("Count {poison}"),
                format!(
                    "{} new message(s) in {poison} ({now} in all): see them with `cqrs-operator poison list --app {} -n {} --queue {}`, put them back with `poison redrive`",
                    now - before,
                    app.name_any(),
                    app.namespace().unwrap_or_default(),
                    queue.name
                ),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::QueueStatus;

    fn status(depth: i64, probed: i64) -> CqrsAppStatus {
        CqrsAppStatus {
            queues: vec![QueueStatus {
                name: "orders".into(),
                approximate_message_count: Some(depth),
                last_probe_time: Some(Time(Timestamp::from_second(probed).unwrap())),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn resyncs_are_spread_around_the_period() {
        let delays: Vec<Duration> = (0..200).map(|_| resync_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= RESYNC.mul_f64(0.9) && *d <= RESYNC.mul_f64(1.1))
        );
        assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
    }

    #[test]
    fn an_idle_status_is_rewritten_only_when_its_probe_times_grow_old() {
        let now = Timestamp::from_second(10_000).unwrap();
        let stored = status(0, 10_000 - 120);
        assert!(only_recent_probe_times_differ(
            &stored,
            &status(0, 10_000),
            now
        ));
        assert!(!only_recent_probe_times_differ(
            &stored,
            &status(3, 10_000),
            now
        ));
        let old = status(0, 10_000 - 601);
        assert!(!only_recent_probe_times_differ(
            &old,
            &status(0, 10_000),
            now
        ));
    }
}
