//! Scaling on a real Azurite queue through the real scale subresource, with the scaler the
//! only writer of `spec.replicas` and of the rate share.

use std::time::Duration;

use azure_storage_queue::models::QueueMessage;
use cqrs_operator::crd::{ScalingBehavior, ScalingSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar};
use kube::api::Api;

use crate::harness::Harness;
use crate::support::{eventually, ok, wait_for};

/// Managers that own the field at `path` (`["spec", "replicas"]`) of an object.
fn owners(meta: &kube::api::ObjectMeta, path: &[&str]) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1.as_ref().is_some_and(|f| {
                path.iter()
                    .try_fold(&f.0, |node, key| node.get(format!("f:{key}")))
                    .is_some()
            })
        })
        .map(|e| {
            format!(
                "{}/{}",
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default()
            )
        })
        .collect()
}

fn fast_scaling() -> ScalingSpec {
    ScalingSpec {
        min_replicas: 0,
        max_replicas: 4,
        target_queue_length: 5,
        polling_interval: 1,
        cooldown_period: 3,
        scale_down: ScalingBehavior {
            stabilization_window_seconds: Some(2),
            ..Default::default()
        },
        ..ScalingSpec::default()
    }
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .ok()
        .and_then(|d| d.spec?.replicas)
        .unwrap_or(-1)
}

#[tokio::test]
async fn a_backlog_scales_the_worker_up_and_the_scaler_alone_owns_replicas_and_share() {
    let (h, app) =
        Harness::ready("life-scale", |a| a.spec.workers[0].scaling = fast_scaling()).await;
    let (ns, apps, client, operator) = (&h.ns, &h.apps, &h.client, &h.operator);
    let queue = app.spec.workers[0].queue.clone();

    // A backlog of 12 messages: ceil(12 / 5) = 3 replicas.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let queue_client = h.account().queue(&queue).expect("a queue client");
    for i in 0..12 {
        let message = QueueMessage {
            message_text: Some(format!("m{i}")),
        };
        queue_client
            .send_message(message.try_into().expect("a message body"), None)
            .await
            .expect("enqueued");
    }
    let up = eventually(
        "the registrar to scale to 3",
        Duration::from_secs(60),
        || async { replicas(&deployments, "shop-registrar").await == 3 },
    )
    .await;
    let pods = wait_for("3 registrar pods Running", Duration::from_secs(60), || {
        let phases = ok(ns.kubectl().args([
            "get",
            "pods",
            "-l",
            "cqrs.dev/component=registrar",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
        ]));
        (phases.lines().filter(|p| *p == "Running").count() == 3).then_some(phases)
    });
    assert_eq!(pods.lines().count(), 3, "{pods}");
    let replica_sets = ok(ns.kubectl().args([
        "get",
        "replicasets",
        "-l",
        "cqrs.dev/component=registrar",
        "-o",
        "jsonpath={.items[*].spec.replicas}",
    ]));
    assert_eq!(replica_sets.trim(), "3");
    eventually(
        "status current/desired 3/3",
        Duration::from_secs(60),
        || async {
            let app = apps.get("shop").await.expect("the app");
            app.status.as_ref().is_some_and(|s| {
                s.workers.iter().any(|w| {
                    w.name == "registrar" && w.current_replicas == 3 && w.desired_replicas == 3
                })
            })
        },
    )
    .await;
    eprintln!(
        "measured: backlog to 3 replicas in {:.1} s (pollingInterval 1 s)",
        up.as_secs_f64()
    );

    // One writer per field: the scaler.
    let registrar = deployments
        .get("shop-registrar")
        .await
        .expect("the Deployment");
    assert_eq!(
        owners(&registrar.metadata, &["spec", "replicas"]),
        ["cqrs-operator-scaler/Update"],
        "spec.replicas of the worker Deployment"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let rate = configmaps
        .get("shop-stocker-rate")
        .await
        .expect("the rate ConfigMap");
    let share_owners = owners(&rate.metadata, &["data", "share"]);
    assert_eq!(share_owners.len(), 1, "{share_owners:?}");
    assert!(
        share_owners[0].starts_with("cqrs-operator-scaler/"),
        "{share_owners:?}"
    );

    // An edit of the app and the passes that follow keep the scaler's replicas.
    let reconciles = operator.metric("cqrs_reconciliations_total");
    let mut edited = apps.get("shop").await.expect("the app");
    edited.spec.workers[0].env.push(EnvVar {
        name: "GREETING".into(),
        value: Some("hello".into()),
        ..Default::default()
    });
    h.edit(&edited).await;
    eventually("two more passes", Duration::from_secs(120), || async {
        operator.metric("cqrs_reconciliations_total") >= reconciles + 2.0
    })
    .await;
    let registrar = deployments
        .get("shop-registrar")
        .await
        .expect("the Deployment");
    let template_env = registrar
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        template_env.iter().any(|e| e.name == "GREETING"),
        "the edit is applied"
    );
    assert_eq!(
        registrar.spec.and_then(|s| s.replicas),
        Some(3),
        "the edit kept the scaler's replicas"
    );
    assert_eq!(
        owners(&registrar.metadata, &["spec", "replicas"]),
        ["cqrs-operator-scaler/Update"]
    );
    let rate = configmaps
        .get("shop-stocker-rate")
        .await
        .expect("the rate ConfigMap");
    assert_eq!(owners(&rate.metadata, &["data", "share"]), share_owners);

    // The backlog goes away: back to minReplicas after the stabilization window and cooldown.
    queue_client
        .clear(None)
        .await
        .expect("the queue is cleared");
    let down = eventually(
        "the registrar to return to 0",
        Duration::from_secs(60),
        || async { replicas(&deployments, "shop-registrar").await == 0 },
    )
    .await;
    eprintln!(
        "measured: empty queue to 0 replicas in {:.1} s (cooldownPeriod 3 s, scale-down window 2 s)",
        down.as_secs_f64()
    );
    operator.assert_no_forbidden();
}
