//! Reliability: nothing lost when workers are killed or storage goes away, bad input never
//! crashes anything, and secrets never reach logs or status.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use cqrs_storage::azurite::{AzuriteOptions, TestAzurite};
use futures::StreamExt as _;
use serde_json::{Value, json};
use support::{App, Options, SCANNER_KEY, read_logs, wait_for_result, wait_until};

/// A random account key nobody else uses, so a leak is unambiguous.
fn secret_key() -> String {
    let bytes: Vec<u8> = (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// No log line, status or metrics text may carry the account key or a SAS signature.
fn assert_no_secrets(text: &str, key: &str, what: &str) {
    assert!(!text.contains(key), "{what} contains the account key");
    for (i, _) in text.match_indices("sig=") {
        let value: String = text[i + 4..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '%' | '+' | '/' | '='))
            .collect();
        assert_eq!(
            value,
            "REDACTED",
            "{what} contains a SAS signature near: {}",
            &text[i.saturating_sub(60)..(i + 40).min(text.len())]
        );
    }
}

async fn post_registration(http: &reqwest::Client, web: &str, email: &str) -> reqwest::Response {
    post_registration_result(http, web, email).await.unwrap()
}

fn post_registration_result(
    http: &reqwest::Client,
    web: &str,
    email: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    let body =
        json!({"firstName": "R", "lastName": "S", "email": email, "dateOfBirth": "1990-01-01"});
    http.post(format!("{web}/api/registrations"))
        .json(&body)
        .send()
}

/// One inventory command with the scanner key.
async fn post_scan(http: &reqwest::Client, web: &str) -> reqwest::Response {
    http.post(format!("{web}/api/inventory/adjustments"))
        .bearer_auth(SCANNER_KEY)
        .json(&json!({"commandId": "c", "location": "l", "item": "i", "delta": 1}))
        .send()
        .await
        .unwrap()
}

/// The sum of a metric's series on a role's `/metrics`.
async fn metric(base: &str, name: &str) -> u64 {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A storage endpoint that accepts connections and never answers (a stalled account).
async fn stalled_storage() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn past_web_max_in_flight_commands_get_503_at_once_instead_of_piling_up() {
    let (port, _stalled) = stalled_storage().await;
    let account = format!(
        "DefaultEndpointsProtocol=http;AccountName=stalled;AccountKey={};BlobEndpoint=http://127.0.0.1:{port}/stalled;QueueEndpoint=http://127.0.0.1:{port}/stalled",
        secret_key()
    );
    let app = App::start(Options {
        extra_env: BTreeMap::from([
            ("CQRS_STORAGE_CONNECTION_STRING".to_string(), account),
            ("WEB_MAX_IN_FLIGHT".to_string(), "2".to_string()),
        ]),
        ..Options::default()
    })
    .await;
    let http = App::client();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(post_registration_result(
                &http,
                &app.web,
                &format!("waiting-{i}@example.com"),
            ))
        })
        .collect();
    wait_until("two commands waiting on the stalled storage", || async {
        metric(&app.web, "pieshop_commands_in_flight").await == 2
    })
    .await;

    // Full: the next commands are refused at once, with a reason and a retry hint.
    let shed = post_registration(&http, &app.web, "third@example.com").await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("WEB_MAX_IN_FLIGHT"),
        "{body}"
    );
    let scan = post_scan(&http, &app.web).await;
    assert_eq!(scan.status(), 503, "inventory commands share the bound");
    // Bad input is still answered as such, without taking a place.
    let invalid = http
        .post(format!("{}/api/registrations", app.web))
        .json(&json!({"firstName": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    assert_eq!(metric(&app.web, "pieshop_commands_shed_total").await, 2);

    // The waiting ones end as ordinary storage errors, and their places come back.
    for w in waiting {
        let response = w.await.unwrap().unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("storage is unavailable"),
            "{body}"
        );
    }
    assert_eq!(metric(&app.web, "pieshop_commands_in_flight").await, 0);
}

#[test]
fn web_max_in_flight_zero_is_refused_with_the_setting_named() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reference-app"))
        .arg("web")
        .env_clear()
        .env(
            "CQRS_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        )
        .env("WEB_MAX_IN_FLIGHT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WEB_MAX_IN_FLIGHT"), "{stderr}");
}

#[tokio::test]
async fn a_storage_outage_gives_503s_then_everything_resumes_with_nothing_lost() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let key = secret_key();
    let azurite = TestAzurite::private_with(AzuriteOptions {
        location: Some(data.path().to_path_buf()),
        account: Some(("outageacct".into(), key.clone())),
        ..AzuriteOptions::default()
    })
    .await;
    let mut app = App::start_on(
        azurite,
        Options {
            log_dir: Some(logs.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    app.start_worker("registrar", &[]).await;
    app.start_worker("stocker", &[]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut accepted = Vec::new();
    for i in 0..40 {
        let response = post_registration(&http, &app.web, &format!("before-{i}@example.com")).await;
        assert_eq!(response.status(), 202);
        accepted.push(
            response.json::<Value>().await.unwrap()["resultUrl"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    app.own_azurite().shut_down().await;
    // While storage is down: commands get 503 with Retry-After, promptly (the client's 20 s
    // timeout would turn a hang into a failure), never a 500.
    for i in 0..10 {
        let response = post_registration(&http, &app.web, &format!("during-{i}@example.com")).await;
        assert_eq!(response.status(), 503, "a command during the outage");
        assert_eq!(response.headers()["retry-after"], "2");
    }
    let scan = post_scan(&http, &app.web).await;
    assert_eq!(scan.status(), 503);
    // Queries are served from the cache, storage or not.
    assert_eq!(
        http.get(format!("{}/api/inventory", app.web))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The workers notice, back off, and stay up.
    let worker_port = app.workers[0].2;
    wait_until("the registrar to report failed receives", || async {
        let metrics = reqwest::get(format!("http://127.0.0.1:{worker_port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .any(|l| l.starts_with("pieshop_receive_errors_total") && !l.ends_with(" 0"))
    })
    .await;
    assert!(app.all_alive(), "a process died during the outage");

    app.own_azurite().restart().await.unwrap();
    for i in 0..40 {
        let url = loop {
            let response =
                post_registration(&http, &app.web, &format!("after-{i}@example.com")).await;
            if response.status() == 202 {
                break response.json::<Value>().await.unwrap()["resultUrl"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
            assert_eq!(response.status(), 503, "only 503s while storage comes back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        accepted.push(url);
    }
    let mut tokens = BTreeSet::new();
    for url in &accepted {
        let result = wait_for_result(url).await;
        assert!(result.get("error").is_none(), "{result}");
        tokens.insert(result["registrationToken"].as_str().unwrap().to_string());
    }
    assert_eq!(
        tokens.len(),
        accepted.len(),
        "every accepted registration got its own token"
    );
    assert!(app.all_alive(), "a process died");
    assert_no_secrets(&read_logs(logs.path()), &key, "the logs");
}

/// Sends until the web role accepts (202), honouring 503 + Retry-After as a client should.
async fn accepted<F, Fut>(send: F) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..60 {
        let response = send().await.unwrap();
        match response.status().as_u16() {
            202 => return response,
            503 => tokio::time::sleep(Duration::from_millis(500)).await,
            other => panic!("unexpected status {other}"),
        }
    }
    panic!("the web role kept answering 503");
}

fn operator_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_reference-app")).with_file_name("cqrs-operator");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p cqrs-operator` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Kills a random worker process of the local runtime every 3 s while thousands of
/// commands flow: no registration is lost or doubled, no email is registered twice, stock
/// totals are exact.
#[tokio::test]
async fn killing_workers_repeatedly_loses_nothing() {
    // Its own Azurite: this load would starve the tests sharing the run's instance.
    let azurite = TestAzurite::private().await;
    let dir = tempfile::tempdir().unwrap();
    let scaling = "{minReplicas: 2, maxReplicas: 3, targetQueueLength: 50, pollingInterval: 1, cooldownPeriod: 5}";
    let setup = support::LocalSetup::new(dir.path(), "chaos", scaling);
    let status_addr = setup.status_addr.clone();
    let mut runtime = setup.start(&azurite);
    let web = setup.web();
    runtime
        .wait_serving("the web role", &format!("{web}/healthz"))
        .await;

    // The chaos monkey: SIGKILL a random worker process every 3 s until told to stop. (Much
    // faster and the runtime's restart backoff, meant for crash loops, keeps replicas down.)
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let monkey = {
        let status_addr = status_addr.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            while !*finished.borrow() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(3000)) => {}
                    _ = finished.changed() => break,
                }
                let status: Value = reqwest::get(format!("http://{status_addr}/status"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let pids: Vec<i64> = status["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["role"] != "web")
                    .filter_map(|p| p["pid"].as_i64())
                    .collect();
                if pids.is_empty() {
                    continue;
                }
                let victim = pids[uuid::Uuid::new_v4().as_bytes()[0] as usize % pids.len()];
                std::process::Command::new("kill")
                    .args(["-KILL", &victim.to_string()])
                    .status()
                    .unwrap();
                kills += 1;
            }
            kills
        })
    };

    let http = reqwest::Client::new();
    // 1200 registrations, 40 of them for an address used twice.
    let registrations = (0..1200).map(|i| {
        let (http, web) = (http.clone(), web.clone());
        let email = if i >= 1160 {
            format!("user-{}@example.com", i - 1160)
        } else {
            format!("user-{i}@example.com")
        };
        async move {
            let response = accepted(|| post_registration_result(&http, &web, &email)).await;
            (
                email,
                response.json::<Value>().await.unwrap()["resultUrl"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        }
    });
    // 1200 adjustments, 60 of them sent twice.
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let adjustments: Vec<Value> = (0..1200)
        .map(|i| {
            let item = ["apple", "cherry", "pecan", "plum"][i % 4];
            let delta = (i % 7) as i64 - 3;
            let delta = if delta == 0 { 5 } else { delta };
            let location = format!("shop-{}", i % 5);
            *expected.entry((location.clone(), item.to_string())).or_default() += delta;
            json!({"commandId": format!("chaos-{i}"), "location": location, "item": item, "delta": delta})
        })
        .collect();
    let resends: Vec<Value> = adjustments.iter().step_by(20).cloned().collect();
    let scans = adjustments.into_iter().chain(resends).map(|body| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            accepted(|| {
                http.post(format!("{web}/api/inventory/adjustments"))
                    .bearer_auth(SCANNER_KEY)
                    .json(&body)
                    .send()
            })
            .await;
        }
    });
    let (results, ()) = tokio::join!(
        futures::stream::iter(registrations)
            .buffer_unordered(16)
            .collect::<Vec<_>>(),
        futures::stream::iter(scans)
            .buffer_unordered(16)
            .collect::<()>(),
    );

    let mut tokens = BTreeSet::new();
    let mut per_email: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (email, url) in &results {
        let result = wait_for_result(url).await;
        let entry = per_email.entry(email.clone()).or_default();
        match result["registrationToken"].as_str() {
            Some(token) => {
                assert!(
                    tokens.insert(token.to_string()),
                    "token {token} handed out twice"
                );
                entry.0 += 1;
            }
            None => {
                assert!(
                    result["error"]
                        .as_str()
                        .unwrap()
                        .contains("already registered"),
                    "{result}"
                );
                entry.1 += 1;
            }
        }
    }
    assert_eq!(per_email.len(), 1160);
    assert!(
        per_email.values().all(|(tokens, _)| *tokens == 1),
        "every address registered exactly once"
    );
    assert_eq!(
        per_email
            .values()
            .map(|(_, refused)| refused)
            .sum::<usize>(),
        40
    );

    wait_until("every adjustment to be applied exactly once", || async {
        support::stock(&web).await == expected
    })
    .await;
    done.send(true).unwrap();
    let kills = monkey.await.unwrap();
    assert!(kills >= 5, "the chaos monkey killed only {kills} processes");
    runtime.stop().await;
}

#[tokio::test]
async fn bad_messages_are_poisoned_with_a_log_line_and_a_metric_and_nothing_crashes() {
    let logs = tempfile::tempdir().unwrap();
    let mut app = App::start(Options {
        log_dir: Some(logs.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    app.start_worker("stocker", &[]).await;
    app.start_worker("registrar", &[]).await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let bad_inventory = vec![
        "not json at all".to_string(),
        "".to_string(),
        "[1, 2, 3]".to_string(),
        b64(&[0xff, 0xfe, 0x00, 0x80]),
        b64(b"base64 of plain text"),
        json!({"commandId": "x", "location": "l".repeat(5000), "item": "i", "delta": 1})
            .to_string(),
        json!({"commandId": "y", "location": "l", "item": "i", "delta": 99_999_999}).to_string(),
        json!({"commandId": 7, "location": "l", "item": "i", "delta": 1}).to_string(),
    ];
    for text in &bad_inventory {
        app.enqueue_raw(&app.names.inventory, text).await;
    }
    let bad_registrations = ["{\"id\": \"no fields\"}".to_string(), json!({"id": "../../etc", "firstName": "a", "lastName": "b", "email": "e@x.io", "dateOfBirth": "1990-01-01"}).to_string()];
    for text in &bad_registrations {
        app.enqueue_raw(&app.names.registrations, text).await;
    }
    let inv_poison = format!("{}-poison", app.names.inventory);
    let reg_poison = format!("{}-poison", app.names.registrations);
    wait_until("every bad message in a poison queue", || async {
        app.peek(&inv_poison).await.len() == bad_inventory.len()
            && app.peek(&reg_poison).await.len() == bad_registrations.len()
    })
    .await;
    assert!(app.all_alive(), "a worker crashed on bad input");
    let poisoned: u64 = {
        let mut total = 0;
        for (_, _, port) in &app.workers {
            total += metric(
                &format!("http://127.0.0.1:{port}"),
                "pieshop_messages_poisoned_total",
            )
            .await;
        }
        total
    };
    assert_eq!(
        poisoned,
        (bad_inventory.len() + bad_registrations.len()) as u64
    );
    let lines = read_logs(logs.path())
        .lines()
        .filter(|l| l.contains("moved to the poison queue"))
        .count();
    assert_eq!(
        lines,
        bad_inventory.len() + bad_registrations.len(),
        "one log line per poisoned message"
    );
    // Good work still flows.
    let ok = json!({"commandId": "fine", "location": "downtown", "item": "apple", "delta": 2});
    app.enqueue_raw(&app.names.inventory, &ok.to_string()).await;
    wait_until("a good message after the bad ones", || async {
        support::stock_of(&app.web, "downtown", "apple").await == Some(2)
    })
    .await;
}

/// The local runtime and the roles, run as the user runs them, with an account key of their
/// own: the key and SAS signatures never appear in what they print or serve, even on errors.
#[tokio::test]
async fn secrets_never_reach_logs_status_or_metrics() {
    let key = secret_key();
    let azurite = TestAzurite::private_with(AzuriteOptions {
        account: Some(("secretacct".into(), key.clone())),
        ..AzuriteOptions::default()
    })
    .await;
    let cs = azurite.connection_string.to_connection_string();
    assert!(cs.contains(&key));
    let dir = tempfile::tempdir().unwrap();
    let setup = support::LocalSetup::new(dir.path(), "secrets", "{minReplicas: 1, maxReplicas: 1}");
    let inv = &setup.names.inventory;
    let log = dir.path().join("runtime.log");
    let exe = env!("CARGO_BIN_EXE_reference-app");
    let mut runtime = tokio::process::Command::new(operator_binary())
        .args(["local", "-f", setup.manifest.to_str().unwrap()])
        .arg(format!("--run=web={exe}"))
        .arg(format!("--run=worker={exe}"))
        .arg(format!("--status-addr={}", setup.status_addr))
        .arg(format!("--web-port={}", setup.web_port))
        .env("CQRS_STORAGE_CONNECTION_STRING", &cs)
        .stdout(std::fs::File::create(dir.path().join("runtime.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let web = setup.web();
    wait_until("the web role", || async {
        reqwest::get(format!("{web}/healthz")).await.is_ok()
    })
    .await;

    let http = reqwest::Client::new();
    let accepted: Value = post_registration(&http, &web, "secret@example.com")
        .await
        .json()
        .await
        .unwrap();
    let url = accepted["resultUrl"].as_str().unwrap().to_string();
    assert!(
        url.contains("sig="),
        "the browser's URL carries its signature (by design)"
    );
    wait_for_result(&url).await;
    let unauthorized = http
        .post(format!("{web}/api/inventory/adjustments"))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let account = azurite.account();
    let message = azure_storage_queue::models::QueueMessage {
        message_text: Some("garbage".into()),
    };
    account
        .queue(inv)
        .unwrap()
        .send_message(message.try_into().unwrap(), None)
        .await
        .unwrap();
    wait_until("the garbage in the poison queue", || async {
        account
            .queue_depth(&format!("{inv}-poison"))
            .await
            .is_ok_and(|d| d.approximate == 1)
    })
    .await;
    let status = reqwest::get(format!("http://{}/status", setup.status_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", setup.status_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &runtime.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(60), runtime.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );

    assert_no_secrets(
        &std::fs::read_to_string(&log).unwrap(),
        &key,
        "the runtime's and roles' logs",
    );
    assert_no_secrets(&status, &key, "/status");
    assert_no_secrets(&metrics, &key, "/metrics");

    // A connection string that cannot work: the error names the problem, not the key.
    let bad = cs.replace("http://", "ftp://");
    let out = std::process::Command::new(operator_binary())
        .args([
            "local",
            "-f",
            setup.manifest.to_str().unwrap(),
            "--run=worker=/bin/true",
            "--run=web=/bin/true",
        ])
        .env("CQRS_STORAGE_CONNECTION_STRING", &bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("BlobEndpoint"),
        "{stderr}"
    );
    assert_no_secrets(&stderr, &key, "the error");
}
