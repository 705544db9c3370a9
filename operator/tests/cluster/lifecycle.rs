//! The operator's lifecycle on the real control plane, under the chart's RBAC, with the
//! storage on the real Azurite: an app applied, and an idle app.

use std::time::Duration;

use cqrs_operator::crd::{CorsSpec, condition};

use crate::harness::Harness;
use crate::operator::Operator;
use crate::support::{ok, wait_for};

#[tokio::test]
async fn an_applied_app_gets_its_storage_children_and_becomes_ready() {
    // A CORS rule is account-wide: this test has an Azurite of its own.
    let h = Harness::start_private("life-apply").await;
    h.create_secret();
    let mut app = h.test_app();
    app.spec.containers[0].cors = Some(CorsSpec {
        allowed_origins: vec!["http://127.0.0.1:8080".into()],
        max_age_seconds: 3600,
    });
    h.create(&app).await;
    let (ns, api) = (&h.ns, &h.apps);

    ok(ns.kubectl().args([
        "wait",
        &format!("--for=condition={}", condition::READY),
        "cqrsapp/shop",
        "--timeout=120s",
    ]));
    let stored = api.get("shop").await.expect("the app");
    let status = stored.status.as_ref().expect("a status");
    let is_true = |kind: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == kind && c.status == "True")
    };
    assert!(is_true(condition::STORAGE_READY), "{status:?}");
    assert_eq!(status.observed_generation, stored.metadata.generation);

    // Storage in Azurite: queues with their poison queues, containers, the CORS rule.
    let storage = h.account();
    for queue in &app.spec.queues {
        for name in [queue.name.clone(), format!("{}-poison", queue.name)] {
            storage
                .queue_depth(&name)
                .await
                .unwrap_or_else(|e| panic!("queue {name} in Azurite: {e}"));
        }
    }
    for container in &app.spec.containers {
        storage
            .container(&container.name)
            .get_properties(None)
            .await
            .unwrap_or_else(|e| panic!("container {} in Azurite: {e}", container.name));
    }
    let cors = storage.blob_cors_rules().await.expect("CORS rules");
    assert!(
        cors.iter().any(|r| r
            .allowed_origins
            .as_deref()
            .is_some_and(|o| o.contains("http://127.0.0.1:8080"))),
        "{cors:?}"
    );

    // Children, each with the app as controller owner.
    let uid = stored.metadata.uid.clone().expect("a uid");
    let owned = ok(ns.kubectl().args([
        "get",
        "deployments,services,serviceaccounts,configmaps",
        "-l",
        "cqrs.dev/app=shop",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name} {.metadata.ownerReferences[0].uid} {.metadata.ownerReferences[0].controller}{\"\\n\"}{end}",
    ]));
    for child in [
        "Deployment/shop-web",
        "Deployment/shop-registrar",
        "Deployment/shop-stocker",
        "Service/shop-web",
        "ServiceAccount/shop",
        "ConfigMap/shop-stocker-rate",
    ] {
        let line = owned
            .lines()
            .find(|l| l.starts_with(&format!("{child} ")))
            .unwrap_or_else(|| panic!("{child} missing:\n{owned}"));
        assert!(
            line.ends_with(&format!(" {uid} true")),
            "{child} is not owned by the app: {line}"
        );
    }
    // The web role's pod is scheduled and Running on the kwok node.
    wait_for(
        "the web pod to run on the kwok node",
        Duration::from_secs(60),
        || {
            let pods = ok(ns.kubectl().args([
                "get",
                "pods",
                "-l",
                "cqrs.dev/component=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
            ]));
            pods.lines()
                .any(|l| l.starts_with("node-") && l.ends_with(" Running"))
                .then_some(())
        },
    );
    let table = ok(ns.kubectl().args(["get", "cqrsapps"]));
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("shop ") && row.contains("True"), "{table}");
    assert!(
        row.contains("0/0"),
        "workers summary current/desired: {table}"
    );
    h.operator.assert_no_forbidden();
}

/// Reconciles, status writes, provisioning passes and storage requests per minute of an idle,
/// Ready app, from the operator's own metrics over `window`.
pub fn idle_rates(operator: &Operator, window: Duration) -> [f64; 4] {
    let names = [
        "cqrs_reconciliations_total",
        "cqrs_status_writes_total",
        "cqrs_provisionings_total",
        "cqrs_storage_requests_total",
    ];
    let before = names.map(|n| operator.metric(n));
    std::thread::sleep(window);
    let after = names.map(|n| operator.metric(n));
    let minutes = window.as_secs_f64() / 60.0;
    [0, 1, 2, 3].map(|i| (after[i] - before[i]) / minutes)
}

#[tokio::test]
async fn an_idle_ready_app_is_quiet() {
    let (h, _) = Harness::ready("life-idle", |_| {}).await;
    // Let the creation's own events (pods becoming ready, first probes) pass.
    std::thread::sleep(Duration::from_secs(10));

    let [reconciles, status_writes, provisionings, storage] =
        idle_rates(&h.operator, Duration::from_secs(120));
    eprintln!(
        "measured: idle app, 2 workers polling every 5 s: {reconciles:.1} reconciles/min, \
         {status_writes:.1} status writes/min, {provisionings:.1} provisioning passes/min, \
         {storage:.1} storage requests/min"
    );
    // The resync (every 60 s) and nothing else: at most 2 of each per minute.
    assert!(reconciles <= 2.0, "{reconciles} reconciles per idle minute");
    assert!(
        status_writes <= 2.0,
        "{status_writes} status writes per idle minute"
    );
    assert_eq!(
        provisionings, 0.0,
        "nothing changed, so nothing is provisioned again"
    );
    h.operator.assert_no_forbidden();
}
