//! Changes to a running app: spec updates, storage settings the CRD cannot check, deletion
//! with either policy, and a storage outage while deleting.

use std::time::Duration;

use cqrs_operator::crd::{CqrsApp, DeletionPolicy};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::harness::{Harness, SECRET};
use crate::support::{TestNamespace, eventually, ok, run};

/// The operator's `StorageReady` condition of app `name`: (status, reason).
async fn storage_ready(api: &Api<CqrsApp>, name: &str) -> Option<(String, String)> {
    let app = api.get(name).await.ok()?;
    app.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "StorageReady")
        .map(|c| (c.status, c.reason))
}

/// Waits until app `shop` reports `StorageReady=False` with `reason`.
async fn storage_fails_with(apps: &Api<CqrsApp>, reason: &str) {
    eventually(
        &format!("StorageReady=False {reason}"),
        Duration::from_secs(180),
        || async { storage_ready(apps, "shop").await == Some(("False".into(), reason.into())) },
    )
    .await;
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
    let (h, _) = Harness::ready("life-update", |_| {}).await;
    let (ns, apps, client) = (&h.ns, &h.apps, &h.client);

    let mut app = apps.get("shop").await.expect("the app");
    app.metadata.managed_fields = None;
    app.spec.workers[0].scaling.max_replicas = 7;
    app.spec.workers[0].env.push(EnvVar {
        name: "MODE".into(),
        value: Some("fast".into()),
        ..Default::default()
    });
    h.edit(&app).await;
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
    h.wait_none_left(
        "the stocker's Deployment and ConfigMap to go",
        "deployments,configmaps",
        "cqrs.dev/component=stocker",
    );
    assert!(
        deployments
            .get_opt("shop-registrar")
            .await
            .expect("a read")
            .is_some()
    );
    h.operator.assert_no_forbidden();
}

#[tokio::test]
async fn a_missing_secret_or_key_is_reported_once_and_fixed_without_touching_the_app() {
    let h = Harness::start("life-secret").await;
    let (ns, apps) = (&h.ns, &h.apps);
    h.create(&h.test_app()).await;
    storage_fails_with(apps, "SecretNotFound").await;
    // The wrong key: the Secret exists now, without `connectionString`.
    let cs = h.connection_string();
    storage_secret_with_key(ns, "wrongKey", &cs);
    storage_fails_with(apps, "SecretKeyMissing").await;
    assert_eq!(
        warnings(ns, "SecretNotFound"),
        1,
        "one Warning Event, however many retries"
    );
    // Fix the Secret; the CqrsApp is never touched.
    let generation = apps.get("shop").await.expect("the app").metadata.generation;
    h.set_connection_string(&cs);
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=180s",
    ]));
    assert_eq!(warnings(ns, "SecretKeyMissing"), 1);
    assert_eq!(
        apps.get("shop").await.expect("the app").metadata.generation,
        generation
    );
    h.operator.assert_no_forbidden();
}

fn storage_secret_with_key(ns: &TestNamespace, key: &str, value: &str) {
    let out = run(ns.kubectl().args([
        "create",
        "secret",
        "generic",
        SECRET,
        &format!("--from-literal={key}={value}"),
    ]));
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn deleting_retains_or_deletes_the_storage_and_an_outage_keeps_the_finalizer() {
    let h = Harness::start("life-delete").await;
    let (ns, apps) = (&h.ns, &h.apps);
    let cs = h.connection_string();
    h.create_secret();
    let storage = h.account();

    // Retain: the garbage collector removes the children; queues and containers stay.
    let retained = h.test_app();
    h.create(&retained).await;
    h.wait_ready("shop");
    ok(ns
        .kubectl()
        .args(["delete", "cqrsapp", "shop", "--timeout=120s"]));
    h.wait_none_left(
        "the garbage collector to remove the children",
        "deployments,services,configmaps",
        "cqrs.dev/app=shop",
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
    let mut doomed = h.test_app();
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
    h.create(&doomed).await;
    h.wait_ready("gone");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let dead =
        cqrs_storage::connection::ConnectionString::development_at("127.0.0.1", closed, closed)
            .to_connection_string();
    h.set_connection_string(&dead);
    apps.delete("gone", &DeleteParams::default())
        .await
        .expect("deletion requested");
    eventually(
        "a DeleteStorageFailed event",
        Duration::from_secs(180),
        || async { warnings(ns, "DeleteStorageFailed") >= 1 },
    )
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
    h.set_connection_string(&cs);
    eventually("the app to be gone", Duration::from_secs(180), || async {
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
    h.operator.assert_no_forbidden();
}
