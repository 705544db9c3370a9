//! Changes to a running app: spec updates, storage settings the CRD cannot check, deletion
//! with either policy, and a storage outage while deleting.

use std::time::Duration;

use cqrs_operator::crd::{CqrsApp, DeletionPolicy};
use cqrs_storage::azurite::TestAzurite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::lifecycle::{account, test_app};
use crate::operator::{Operator, install_chart, storage_secret};
use crate::support::{TestNamespace, cluster, ok, run, wait_for};

/// The operator's `StorageReady` condition of app `name`: (status, reason).
async fn storage_ready(api: &Api<CqrsApp>, name: &str) -> Option<(String, String)> {
    let app = api.get(name).await.ok()?;
    app.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "StorageReady")
        .map(|c| (c.status, c.reason))
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Warning Events about the app with `reason`, as `kubectl get events` lists them.
fn warnings(ns: &TestNamespace, reason: &str) -> usize {
    let out = ok(ns.kubectl().args([
        "get",
        "events",
        "--field-selector",
        &format!("type=Warning,reason={reason}"),
        "-o",
        "name",
    ]));
    out.lines().count()
}

#[tokio::test]
async fn spec_updates_are_applied_and_a_removed_worker_takes_its_objects_along() {
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-update");
    let release = install_chart(&ns);
    let operator = Operator::start(&ns, &release, "op-a");
    storage_secret(
        &ns,
        "pieshop-storage",
        &azurite.connection_string.to_connection_string(),
    );
    let client = cluster().client().await;
    let apps: Api<CqrsApp> = Api::namespaced(client.clone(), &ns.name);
    apps.create(&PostParams::default(), &test_app(&ns))
        .await
        .expect("created");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=120s",
    ]));

    let mut app = apps.get("shop").await.expect("the app");
    app.metadata.managed_fields = None;
    app.spec.workers[0].scaling.max_replicas = 7;
    app.spec.workers[0].env.push(EnvVar {
        name: "MODE".into(),
        value: Some("fast".into()),
        ..Default::default()
    });
    apps.patch(
        "shop",
        &PatchParams::apply("cqrs-tests").force(),
        &Patch::Apply(&app),
    )
    .await
    .expect("updated");
    let generation = apps.get("shop").await.expect("the app").metadata.generation;
    eventually("observedGeneration to follow", || async {
        apps.get("shop")
            .await
            .ok()
            .and_then(|a| a.status?.observed_generation)
            == generation
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let registrar = deployments
        .get("shop-registrar")
        .await
        .expect("the registrar");
    let env = registrar
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "MODE" && e.value.as_deref() == Some("fast")),
        "{env:?}"
    );

    // Removing the rate-limited worker deletes its Deployment and ConfigMap.
    // NB: a merge patch replaces the list (an apply would leave the creator's entry).
    let mut workers = apps.get("shop").await.expect("the app").spec.workers;
    workers.retain(|w| w.name != "stocker");
    let patch = serde_json::json!({"spec": {"workers": workers}});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("updated");
    wait_for(
        "the stocker's Deployment and ConfigMap to go",
        Duration::from_secs(60),
        || {
            let left = ok(ns.kubectl().args([
                "get",
                "deployments,configmaps",
                "-l",
                "cqrs.dev/component=stocker",
                "-o",
                "name",
            ]));
            left.trim().is_empty().then_some(())
        },
    );
    assert!(
        deployments
            .get_opt("shop-registrar")
            .await
            .expect("a read")
            .is_some()
    );
    operator.assert_no_forbidden();
}

#[tokio::test]
async fn a_missing_secret_or_key_is_reported_once_and_fixed_without_touching_the_app() {
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-secret");
    let release = install_chart(&ns);
    let operator = Operator::start(&ns, &release, "op-a");
    let apps: Api<CqrsApp> = Api::namespaced(cluster().client().await, &ns.name);
    apps.create(&PostParams::default(), &test_app(&ns))
        .await
        .expect("created");
    eventually("StorageReady=False SecretNotFound", || async {
        storage_ready(&apps, "shop").await == Some(("False".into(), "SecretNotFound".into()))
    })
    .await;
    // The wrong key: the Secret exists now, without `connectionString`.
    let cs = azurite.connection_string.to_connection_string();
    storage_secret_with_key(&ns, "wrongKey", &cs);
    eventually("StorageReady=False SecretKeyMissing", || async {
        storage_ready(&apps, "shop").await == Some(("False".into(), "SecretKeyMissing".into()))
    })
    .await;
    assert_eq!(
        warnings(&ns, "SecretNotFound"),
        1,
        "one Warning Event, however many retries"
    );
    // Fix the Secret; the CqrsApp is never touched.
    let generation = apps.get("shop").await.expect("the app").metadata.generation;
    let fixed = serde_json::json!({"stringData": {"connectionString": cs}});
    let out = run(ns.kubectl().args([
        "patch",
        "secret",
        "pieshop-storage",
        "--type=merge",
        "-p",
        &fixed.to_string(),
    ]));
    assert!(out.status.success(), "{out:?}");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=180s",
    ]));
    assert_eq!(warnings(&ns, "SecretKeyMissing"), 1);
    assert_eq!(
        apps.get("shop").await.expect("the app").metadata.generation,
        generation
    );
    operator.assert_no_forbidden();
}

fn storage_secret_with_key(ns: &TestNamespace, key: &str, value: &str) {
    let out = run(ns.kubectl().args([
        "create",
        "secret",
        "generic",
        "pieshop-storage",
        &format!("--from-literal={key}={value}"),
    ]));
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn deleting_retains_or_deletes_the_storage_and_an_outage_keeps_the_finalizer() {
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-delete");
    let release = install_chart(&ns);
    let operator = Operator::start(&ns, &release, "op-a");
    let cs = azurite.connection_string.to_connection_string();
    storage_secret(&ns, "pieshop-storage", &cs);
    let client = cluster().client().await;
    let apps: Api<CqrsApp> = Api::namespaced(client.clone(), &ns.name);
    let storage = account(&azurite.connection_string);

    // Retain: the garbage collector removes the children; queues and containers stay.
    let retained = test_app(&ns);
    apps.create(&PostParams::default(), &retained)
        .await
        .expect("created");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=120s",
    ]));
    ok(ns
        .kubectl()
        .args(["delete", "cqrsapp", "shop", "--timeout=120s"]));
    wait_for(
        "the garbage collector to remove the children",
        Duration::from_secs(60),
        || {
            let left = ok(ns.kubectl().args([
                "get",
                "deployments,services,configmaps",
                "-l",
                "cqrs.dev/app=shop",
                "-o",
                "name",
            ]));
            left.trim().is_empty().then_some(())
        },
    );
    for queue in &retained.spec.queues {
        storage
            .queue_depth(&queue.name)
            .await
            .expect("a retained queue");
    }
    for container in &retained.spec.containers {
        storage
            .container(&container.name)
            .get_properties(None)
            .await
            .expect("a retained container");
    }

    // Delete, with storage out while deleting: the finalizer stays until storage is back.
    let mut doomed = test_app(&ns);
    doomed.metadata.name = Some("gone".into());
    doomed.spec.deletion_policy = DeletionPolicy::Delete;
    for q in &mut doomed.spec.queues {
        q.name = format!("{}-d", q.name);
    }
    for w in &mut doomed.spec.workers {
        w.queue = format!("{}-d", w.queue);
    }
    for c in &mut doomed.spec.containers {
        c.name = format!("{}-d", c.name);
    }
    apps.create(&PostParams::default(), &doomed)
        .await
        .expect("created");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/gone",
        "--timeout=120s",
    ]));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let dead =
        cqrs_storage::connection::ConnectionString::development_at("127.0.0.1", closed, closed)
            .to_connection_string();
    let outage = serde_json::json!({"stringData": {"connectionString": dead}});
    ok(ns.kubectl().args([
        "patch",
        "secret",
        "pieshop-storage",
        "--type=merge",
        "-p",
        &outage.to_string(),
    ]));
    apps.delete("gone", &DeleteParams::default())
        .await
        .expect("deletion requested");
    eventually("a DeleteStorageFailed event", || async {
        warnings(&ns, "DeleteStorageFailed") >= 1
    })
    .await;
    let held = apps
        .get_opt("gone")
        .await
        .expect("a read")
        .expect("the finalizer keeps the app");
    assert!(held.metadata.deletion_timestamp.is_some());
    for queue in &doomed.spec.queues {
        storage
            .queue_depth(&queue.name)
            .await
            .expect("not deleted during the outage");
    }
    let back = serde_json::json!({"stringData": {"connectionString": cs}});
    ok(ns.kubectl().args([
        "patch",
        "secret",
        "pieshop-storage",
        "--type=merge",
        "-p",
        &back.to_string(),
    ]));
    eventually("the app to be gone", || async {
        apps.get_opt("gone").await.is_ok_and(|a| a.is_none())
    })
    .await;
    for queue in &doomed.spec.queues {
        for name in [queue.name.clone(), format!("{}-poison", queue.name)] {
            assert!(
                storage.queue_depth(&name).await.is_err(),
                "{name} should be deleted"
            );
        }
    }
    for container in &doomed.spec.containers {
        assert!(
            storage
                .container(&container.name)
                .get_properties(None)
                .await
                .is_err()
        );
    }
    operator.assert_no_forbidden();
}
