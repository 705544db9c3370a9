//! The local runtime (`cqrs-operator local`) running the reference app on Azurite: workers
//! scale from zero with a backlog and back after the cooldown, and a worker killed mid-backlog
//! loses nothing.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cqrs_storage::azurite::TestAzurite;
use futures::StreamExt as _;
use serde_json::{Value, json};
use support::wait_until;

async fn status(addr: &str) -> Value {
    reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn registrar(status: &Value) -> (i64, i64) {
    let w = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "registrar")
        .unwrap();
    (
        w["currentReplicas"].as_i64().unwrap(),
        w["desiredReplicas"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn workers_scale_up_drain_a_backlog_lose_nothing_when_killed_and_return_to_zero() {
    let azurite = TestAzurite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let scaling = "{minReplicas: 0, maxReplicas: 3, targetQueueLength: 40, pollingInterval: 1, cooldownPeriod: 3, scaleDown: {stabilizationWindowSeconds: 0}}";
    let setup = support::LocalSetup::new(dir.path(), "localtest", scaling);
    let status_addr = setup.status_addr.clone();
    let mut runtime = setup.start(&azurite);
    runtime
        .wait_serving("the local runtime", &format!("http://{status_addr}/status"))
        .await;
    assert_eq!(
        registrar(&status(&status_addr).await),
        (0, 0),
        "minReplicas 0: no worker before work arrives"
    );

    // Watch /status throughout: the most replicas seen, and kill one registrar process hard as
    // soon as two run.
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let monitor = {
        let status_addr = status_addr.clone();
        tokio::spawn(async move {
            let (mut most, mut killed) = (0, None);
            while !*finished.borrow() {
                let s = status(&status_addr).await;
                most = most.max(registrar(&s).0);
                if killed.is_none() && registrar(&s).0 >= 2 {
                    let victim = s["processes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["role"] == "registrar" && p["pid"].is_i64())
                        .cloned();
                    if let Some(victim) = victim {
                        std::process::Command::new("kill")
                            .args(["-KILL", &victim["pid"].as_i64().unwrap().to_string()])
                            .status()
                            .unwrap();
                        killed = Some(victim["replica"].as_i64().unwrap());
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = finished.changed() => {}
                }
            }
            (most, killed)
        })
    };

    // A backlog of 600 registrations through the web role, 16 at a time.
    let web = setup.web();
    runtime
        .wait_serving("the web role", &format!("{web}/healthz"))
        .await;
    let http = reqwest::Client::new();
    let posts = (0..600).map(|i| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            let body = json!({"firstName": "P", "lastName": "Q", "email": format!("load-{i}@example.com"), "dateOfBirth": "1990-01-01"});
            let accepted: Value = http.post(format!("{web}/api/registrations")).json(&body).send().await.unwrap().json().await.unwrap();
            accepted["resultUrl"].as_str().unwrap().to_string()
        }
    });
    let urls: Vec<String> = futures::stream::iter(posts)
        .buffer_unordered(16)
        .collect()
        .await;

    // Every registration gets a token, exactly one, and no address is refused.
    let mut tokens = BTreeSet::new();
    for url in &urls {
        let result = support::wait_for_result(url).await;
        assert!(result.get("error").is_none(), "{url}: {result}");
        assert!(
            tokens.insert(result["registrationToken"].as_str().unwrap().to_string()),
            "duplicate token"
        );
    }
    assert_eq!(tokens.len(), 600);
    done.send(true).unwrap();
    let (most, killed) = monitor.await.unwrap();
    assert!(
        most >= 2,
        "the registrar never ran 2 replicas (most: {most})"
    );
    assert!(killed.is_some(), "no registrar process was killed");

    // Back to zero after the cooldown.
    wait_until("the registrar to return to zero replicas", || async {
        registrar(&status(&status_addr).await) == (0, 0)
    })
    .await;
    let final_status = status(&status_addr).await;
    let reason = final_status["workers"][0]["lastScaleReason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.starts_with("scale to zero"), "{reason}");
    assert_eq!(final_status["queues"][0]["approximateMessageCount"], 0);
    assert_eq!(
        final_status["queues"][0]["poisonMessageCount"], 0,
        "{final_status}"
    );
    assert_eq!(final_status["totalPoisonMessages"], 0, "{final_status}");
    let metrics = reqwest::get(format!("http://{status_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cqrs_scaling_decisions_total{namespace=\"local\",app=\"localtest\",worker=\"registrar\",direction=\"up\"}"), "{metrics}");
    assert!(
        metrics.contains("cqrs_poison_queue_depth{namespace=\"local\",app=\"localtest\""),
        "{metrics}"
    );

    runtime.stop().await;
}
