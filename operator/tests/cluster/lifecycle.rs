//! The operator's lifecycle on the real control plane, under the chart's RBAC, with the
//! storage on the real Azurite.

use std::time::Duration;

use cqrs_operator::crd::{CqrsApp, condition};
use cqrs_operator::testing::app;
use cqrs_storage::account::{RetrySettings, StorageAccount};
use cqrs_storage::azurite::TestAzurite;
use cqrs_storage::connection::ConnectionString;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::operator::{Operator, install_chart, storage_secret};
use crate::support::{TestNamespace, cluster, ok};

/// The baseline app with storage names of this test's own (the Azurite is shared).
pub fn test_app(ns: &TestNamespace) -> CqrsApp {
    let suffix = ns.name.rsplit('-').next().unwrap().to_owned();
    let mut a = app();
    a.metadata = ObjectMeta {
        name: Some("shop".into()),
        namespace: Some(ns.name.clone()),
        ..Default::default()
    };
    a.status = None;
    let names = [("registrations", "reg"), ("inventory", "inv")];
    for (queue, short) in names {
        let name = format!("{short}-{suffix}");
        a.spec
            .queues
            .iter_mut()
            .filter(|q| q.name == queue)
            .for_each(|q| q.name = name.clone());
        a.spec
            .workers
            .iter_mut()
            .filter(|w| w.queue == queue)
            .for_each(|w| w.queue = name.clone());
    }
    a.spec.containers[0].name = format!("res-{suffix}");
    a.spec.containers[1].name = format!("rm-{suffix}");
    a.spec.workers[1].max_messages_per_second = Some(10);
    a
}

pub fn account(cs: &ConnectionString) -> StorageAccount {
    StorageAccount::from_connection_string(cs, RetrySettings::default()).expect("an account")
}

#[tokio::test]
async fn an_applied_app_gets_its_storage_children_and_becomes_ready() {
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-apply");
    let release = install_chart(&ns);
    let operator = Operator::start(&ns, &release, "op-a");
    storage_secret(
        &ns,
        "pieshop-storage",
        &azurite.connection_string.to_connection_string(),
    );
    let api: Api<CqrsApp> = Api::namespaced(cluster().client().await, &ns.name);
    let app = test_app(&ns);
    api.create(&PostParams::default(), &app)
        .await
        .expect("the app is created");

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
    let storage = account(&azurite.connection_string);
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
    crate::support::wait_for(
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
    operator.assert_no_forbidden();
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
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-idle");
    let release = install_chart(&ns);
    let operator = Operator::start(&ns, &release, "op-a");
    storage_secret(
        &ns,
        "pieshop-storage",
        &azurite.connection_string.to_connection_string(),
    );
    let api: Api<CqrsApp> = Api::namespaced(cluster().client().await, &ns.name);
    api.create(&PostParams::default(), &test_app(&ns))
        .await
        .expect("the app is created");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=120s",
    ]));
    // Let the creation's own events (pods becoming ready, first probes) pass.
    std::thread::sleep(Duration::from_secs(10));

    let [reconciles, status_writes, provisionings, storage] =
        idle_rates(&operator, Duration::from_secs(120));
    eprintln!(
        "measured (idle, 2 workers polling every 5 s): {reconciles:.1} reconciles/min, \
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
    operator.assert_no_forbidden();
}
