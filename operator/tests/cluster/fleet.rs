//! Many apps on one operator: at idle a probe tick reads replicas from the watch cache and a
//! resync sends nothing, so the API server hears almost nothing from the operator (counted by
//! the operator's own `cqrs_kube_requests_total`), while every app's status stays right.

use std::time::Duration;

use cqrs_operator::crd::{CqrsApp, ScalingSpec};
use cqrs_operator::testing::{app, queue, worker};
use kube::api::{ListParams, ObjectMeta};

use crate::harness::{Harness, SECRET, on_kwok};
use crate::support::eventually;

const APPS: usize = 50;
const POLLING: u32 = 2;

fn small_app(h: &Harness, i: usize) -> CqrsApp {
    let mut a = app();
    let name = format!("fleet-{i}");
    a.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(h.ns.name.clone()),
        ..Default::default()
    };
    a.spec.storage.connection_secret_ref.as_mut().unwrap().name = SECRET.into();
    a.spec.web = None;
    a.spec.containers.clear();
    // NB: queue names are account-wide: the namespace's suffix keeps them this test's own.
    let suffix = h.ns.name.rsplit('-').next().unwrap().to_owned();
    let (selector, tolerations) = on_kwok();
    a.spec.queues = vec![
        queue(&format!("a{i}-{suffix}")),
        queue(&format!("b{i}-{suffix}")),
    ];
    a.spec.workers = ["a", "b"]
        .iter()
        .map(|w| {
            let mut role = worker(w, &format!("{w}{i}-{suffix}"));
            role.node_selector = selector.clone();
            role.tolerations = tolerations.clone();
            role.scaling = ScalingSpec {
                min_replicas: 0,
                polling_interval: POLLING,
                ..ScalingSpec::default()
            };
            role
        })
        .collect();
    a
}

#[tokio::test]
async fn fifty_idle_apps_cost_no_api_request_per_probe_tick() {
    let h = Harness::start("fleet").await;
    h.create_secret();
    for i in 0..APPS {
        h.create(&small_app(&h, i)).await;
    }
    eventually("every app is Ready", Duration::from_secs(180), || async {
        let Ok(apps) = h.apps.list(&ListParams::default()).await else {
            return false;
        };
        let ready = apps
            .items
            .iter()
            .filter(|a| {
                cqrs_operator::status::find(a.status.as_ref(), "Ready")
                    .is_some_and(|c| c.status == "True")
            })
            .count();
        ready == APPS
    })
    .await;
    // NB: past the loops' first ticks, which may come before the watch cache has their
    // Deployment and then read the scale subresource once.
    tokio::time::sleep(Duration::from_secs(u64::from(POLLING) * 2)).await;

    let op = &h.operator;
    let requests = |verb: &str, resource: &str| {
        let mut labels = vec![("verb", verb)];
        if !resource.is_empty() {
            labels.push(("resource", resource));
        }
        op.metric_with("cqrs_kube_requests_total", &labels)
    };
    let counts = || {
        [
            requests("get", "deployments/scale"),
            requests("get", ""),
            requests("list", ""),
            requests("patch", "deployments"),
            requests("patch", "serviceaccounts"),
            op.metric("cqrs_queue_probe_duration_seconds_count"),
        ]
    };
    let before = counts();
    tokio::time::sleep(Duration::from_secs(u64::from(POLLING) * 4)).await;
    let after = counts();
    let [scale_gets, gets, lists, applies, sa_applies, probes] =
        std::array::from_fn(|i| after[i] - before[i]);
    eprintln!(
        "{APPS} idle apps, {} s: {probes} probes; requests: {scale_gets} scale GETs, {gets} GETs, \
         {lists} LISTs, {} applies",
        POLLING * 4,
        applies + sa_applies
    );

    assert!(
        probes >= (APPS * 2 * 2) as f64,
        "the {} probe loops ticked only {probes} times in {} s",
        APPS * 2,
        POLLING * 4
    );
    assert_eq!(
        scale_gets, 0.0,
        "scale subresource GETs during {probes} idle probe ticks"
    );
    // NB: the resyncs in the window find every child as applied and their Secret read
    // recently (one read per Secret per 30 s between all apps).
    assert!(gets <= 2.0, "{gets} GETs from {APPS} idle apps");
    assert_eq!(
        lists, 0.0,
        "LISTs while idle (a resync must not prune again)"
    );
    assert_eq!(
        applies + sa_applies,
        0.0,
        "applies of unchanged children while idle"
    );

    for a in h.apps.list(&ListParams::default()).await.unwrap().items {
        let name = a.metadata.name.clone().unwrap();
        let status = a.status.unwrap_or_default();
        assert_eq!(status.workers.len(), 2, "{name}: {status:?}");
        assert!(
            status
                .workers
                .iter()
                .all(|w| w.current_replicas == 0 && w.desired_replicas == 0),
            "{name}: {status:?}"
        );
        assert_eq!(status.queues.len(), 2, "{name}: {status:?}");
        assert!(
            status
                .queues
                .iter()
                .all(|q| q.approximate_message_count == Some(0)),
            "{name}: {status:?}"
        );
        assert_eq!(status.workers_summary.as_deref(), Some("0/0"), "{name}");
        assert_eq!(status.observed_generation, a.metadata.generation, "{name}");
    }
}
