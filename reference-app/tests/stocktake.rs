//! Commands of any size: stock takes through the claim check, end to end on Azurite (HTTP,
//! the official Python SDK, redelivery, corrupted and deleted blobs, the orphan sweep) and the
//! body limits of every endpoint.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use cqrs_storage::claims::{ClaimCheck, POISONED_METADATA};
use futures::TryStreamExt as _;
use serde_json::{Value, json};
use support::{App, Options, SCANNER_KEY, read_logs, wait_for_stocktake, wait_until};

/// Line `i` of a generated stock take: 4 locations, 250 items, quantities 0-6 (about 42 bytes
/// a line, so 10,000 lines are ~400 KiB).
fn line(i: usize) -> (String, String, i64) {
    (
        format!("harbour-street-{}", i % 4),
        format!("morello-cherry-pie-{:03}", i % 250),
        (i % 7) as i64,
    )
}

/// What `n` generated lines add up to, per (location, item).
fn expected(n: usize) -> BTreeMap<(String, String), i64> {
    let mut sums = BTreeMap::new();
    for i in 0..n {
        let (location, item, quantity) = line(i);
        *sums.entry((location, item)).or_default() += quantity;
    }
    sums
}

fn csv(n: usize) -> String {
    let mut text = String::from("location,item,quantity\n");
    for i in 0..n {
        let (location, item, quantity) = line(i);
        text.push_str(&format!("{location},{item},{quantity}\n"));
    }
    text
}

async fn upload(app: &App, content_type: &str, body: String, query: &str) -> reqwest::Response {
    App::client()
        .post(format!("{}/api/inventory/stocktakes{query}", app.web))
        .bearer_auth(SCANNER_KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// One pair's stock on the dashboard's API.
async fn stock_of(app: &App, location: &str, item: &str) -> Option<i64> {
    support::stock_of(&app.web, location, item).await
}

/// Blob names in the app's claim-check container.
async fn claim_blobs(app: &App) -> Vec<String> {
    let mut pages = app
        .account
        .container(&app.names.claims)
        .list_blobs(None)
        .unwrap()
        .into_pages();
    let mut names = vec![];
    while let Some(page) = pages.try_next().await.unwrap() {
        names.extend(
            page.into_model()
                .unwrap()
                .blob_items
                .into_iter()
                .filter_map(|b| b.name),
        );
    }
    names
}

fn envelope(text: &str) -> ClaimCheck {
    ClaimCheck::parse(text)
        .unwrap_or_else(|| panic!("not a claim-check envelope: {text}"))
        .unwrap()
}

/// Every expected (location, item) quantity is on the dashboard's API.
async fn assert_stock(app: &App, expected: &BTreeMap<(String, String), i64>) {
    let stock = support::stock(&app.web).await;
    for ((location, item), quantity) in expected {
        assert_eq!(
            stock.get(&(location.clone(), item.clone())),
            Some(quantity),
            "{location}/{item}"
        );
    }
}

#[tokio::test]
async fn a_400_kib_stock_take_over_http_is_applied_and_leaves_no_claim_blob() {
    let mut app = App::start(Options::default()).await;
    let mut body = csv(10_000);
    // Three bad lines at the end: lines 10,002 to 10,004 of the file.
    body.push_str(
        "harbour-street-0,,3\nharbour-street-0,plum-pie,lots\nharbour-street-0,plum-pie\n",
    );
    assert!(body.len() > 390 * 1024, "{} bytes", body.len());
    let response = upload(&app, "text/csv", body, "").await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["stocktakeId"].as_str().unwrap();
    let url = accepted["resultUrl"].as_str().unwrap();
    assert!(url.contains(&format!("/stocktakes/{id}.json?")), "{url}");

    // On the queue: only the small envelope; the body waits in the claim-check container.
    let queued = app.peek(&app.names.inventory).await;
    assert_eq!(queued.len(), 1);
    assert!(queued[0].len() < 1024, "{}", queued[0]);
    let claim = envelope(&queued[0]);
    assert_eq!(claim.container, app.names.claims);
    assert!(claim.size > 390 * 1024);
    assert_eq!(claim_blobs(&app).await, std::slice::from_ref(&claim.blob));

    app.start_worker("stocker", &[]).await;
    let result = wait_for_stocktake(url).await;
    assert_eq!(result["status"], "applied", "{result}");
    assert_eq!(result["linesApplied"], 10_000);
    assert_eq!(result["linesRejected"], 3);
    let rejected: Vec<(u64, String)> = result["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
        [10_002, 10_003, 10_004]
    );
    assert!(rejected[0].1.contains("item is required"), "{rejected:?}");
    assert!(rejected[1].1.contains("not a whole number"), "{rejected:?}");
    assert!(rejected[2].1.contains("has 2 fields"), "{rejected:?}");

    let expected = expected(10_000);
    wait_until("the dashboard to show the stock take", || async {
        stock_of(&app, "harbour-street-3", "morello-cherry-pie-249").await
            == Some(
                expected[&(
                    "harbour-street-3".to_string(),
                    "morello-cherry-pie-249".to_string(),
                )],
            )
    })
    .await;
    assert_stock(&app, &expected).await;
    wait_until("the claim-check blob to be deleted", || async {
        claim_blobs(&app).await.is_empty()
    })
    .await;
    assert!(app.peek(&app.names.inventory).await.is_empty());
}

#[tokio::test]
async fn a_redelivered_reference_still_finds_its_blob_and_a_resubmission_counts_once() {
    let mut app = App::start(Options {
        visibility: 2,
        ..Options::default()
    })
    .await;
    let accepted: Value = upload(&app, "text/csv", csv(2_000), "?stocktakeId=count-7")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["stocktakeId"], "count-7");
    // A worker that takes the message and dies before finishing: it comes back after 2 s.
    let options = azure_storage_queue::models::QueueClientReceiveMessagesOptions {
        visibility_timeout: Some(1),
        ..Default::default()
    };
    let taken = app
        .account
        .queue(&app.names.inventory)
        .unwrap()
        .receive_messages(Some(options))
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .items
        .unwrap();
    assert_eq!(taken.len(), 1);
    app.start_worker("stocker", &[]).await;
    let result = wait_for_stocktake(accepted["resultUrl"].as_str().unwrap()).await;
    assert_eq!(result["status"], "applied", "{result}");
    assert_eq!(result["linesApplied"], 2_000);
    let expected = expected(2_000);
    let pair = (
        "harbour-street-1".to_string(),
        "morello-cherry-pie-001".to_string(),
    );
    wait_until("the stock take on the dashboard", || async {
        stock_of(&app, &pair.0, &pair.1).await == Some(expected[&pair])
    })
    .await;

    // A scanner adjusts after the count, then the same stock take is uploaded again.
    let adjusted = App::client()
        .post(format!("{}/api/inventory/adjustments", app.web))
        .bearer_auth(SCANNER_KEY)
        .json(&json!({"commandId": "after-count", "location": pair.0, "item": pair.1, "delta": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(adjusted.status(), 202);
    wait_until("the adjustment", || async {
        stock_of(&app, &pair.0, &pair.1).await == Some(expected[&pair] - 1)
    })
    .await;
    let again = upload(&app, "text/csv", csv(2_000), "?stocktakeId=count-7").await;
    assert_eq!(again.status(), 202);
    wait_until("the resubmission handled and its blob deleted", || async {
        app.peek(&app.names.inventory).await.is_empty() && claim_blobs(&app).await.is_empty()
    })
    .await;
    assert_eq!(
        stock_of(&app, &pair.0, &pair.1).await,
        Some(expected[&pair] - 1),
        "a stock take applied twice must count once (the later adjustment stays)"
    );
}

#[tokio::test]
async fn a_corrupted_or_deleted_claim_blob_poisons_the_message_with_the_reason() {
    let logs = tempfile::tempdir().unwrap();
    let mut app = App::start(Options {
        log_dir: Some(logs.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    for id in ["altered", "deleted"] {
        let response = upload(&app, "text/csv", csv(3_000), &format!("?stocktakeId={id}")).await;
        assert_eq!(response.status(), 202);
    }
    let queued = app.peek(&app.names.inventory).await;
    let (altered, deleted) = (envelope(&queued[0]), envelope(&queued[1]));
    // Same size, one byte changed: only the hash can tell.
    let original = app
        .account
        .blob(&altered.container, &altered.blob)
        .download(None)
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    let mut tampered = original.to_vec();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'x' { b'y' } else { b'x' };
    app.account
        .blob(&altered.container, &altered.blob)
        .upload(azure_core::Bytes::from(tampered).into(), None)
        .await
        .unwrap();
    app.account.delete_claim(&deleted).await.unwrap();

    app.start_worker("stocker", &[]).await;
    let poison = format!("{}-poison", app.names.inventory);
    wait_until("both references in the poison queue", || async {
        app.peek(&poison).await.len() == 2
    })
    .await;
    let poisoned = app.peek(&poison).await;
    assert!(
        poisoned.contains(&queued[0]) && poisoned.contains(&queued[1]),
        "copied byte for byte"
    );
    let log = read_logs(logs.path());
    assert!(
        log.contains(&format!(
            "claim-check blob {} has SHA-256",
            altered.location()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "claim-check blob {} does not exist",
            deleted.location()
        )),
        "{log}"
    );
    // The altered blob stays with its poisoned message, marked so the sweep keeps it.
    let properties = app
        .account
        .blob(&altered.container, &altered.blob)
        .get_properties(None)
        .await
        .unwrap();
    let marked = properties
        .headers()
        .iter()
        .any(|(name, _)| name.as_str() == format!("x-ms-meta-{POISONED_METADATA}"));
    assert!(marked, "the poisoned message's blob is marked");
    assert!(app.peek(&app.names.inventory).await.is_empty());
}

#[tokio::test]
async fn orphaned_claim_blobs_are_swept_after_the_message_ttl_and_poisoned_ones_kept() {
    let mut app = App::start(Options {
        message_ttl: 2,
        ..Options::default()
    })
    .await;
    let sender = cqrs_storage::claims::CommandSender::new(
        app.account.clone(),
        app.names.claims.clone(),
        1024,
    );
    // Three references whose messages expire (1 s) before any worker sees them: their blobs
    // are orphans. One is marked poisoned now, one was marked 8 days ago (its poison copy has
    // expired too).
    let big = "x".repeat(4096);
    let mut claims = vec![];
    for _ in 0..3 {
        match sender
            .send(&app.names.inventory, &big, "text/plain", 1)
            .await
            .unwrap()
        {
            cqrs_storage::claims::Sent::Claimed(claim) => claims.push(claim),
            other => panic!("expected a claim, got {other:?}"),
        }
    }
    app.account.mark_claim_poisoned(&claims[1]).await.unwrap();
    let long_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(8)).unix_timestamp();
    app.account
        .blob(&claims[2].container, &claims[2].blob)
        .set_metadata(
            &[(POISONED_METADATA.to_string(), long_ago.to_string())].into(),
            None,
        )
        .await
        .unwrap();
    wait_until("the messages expired", || async {
        app.peek(&app.names.inventory).await.is_empty()
    })
    .await;
    assert_eq!(claim_blobs(&app).await.len(), 3);

    app.start_worker("stocker", &[]).await;
    wait_until(
        "the orphan and the long-poisoned one swept (ttl 2 s + margin)",
        || async { claim_blobs(&app).await == [claims[1].blob.clone()] },
    )
    .await;
    // Still there a few sweeps later: poisoned blobs live as long as their poison copy.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(claim_blobs(&app).await, [claims[1].blob.clone()]);
}

#[tokio::test]
async fn every_endpoint_answers_413_naming_its_limit() {
    let app = App::start(Options::default()).await;
    let client = App::client();
    let cases = [
        ("/api/registrations", 16 * 1024 + 1, "16 KiB"),
        ("/api/inventory/adjustments", 16 * 1024 + 1, "16 KiB"),
        ("/api/inventory/stocktakes", 8 * 1024 * 1024 + 1, "8 MiB"),
    ];
    for (path, size, limit) in cases {
        let padding = "x".repeat(size);
        let response = client
            .post(format!("{}{path}", app.web))
            .bearer_auth(SCANNER_KEY)
            .header("content-type", "application/json")
            .body(format!(r#"{{"firstName":"{padding}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(limit), "{path}: {message}");
    }
    // Under the limit but wrong as a whole: 400 naming the field, 415 for the type.
    let bad_header = upload(&app, "text/csv", "sku,count\na,1\n".into(), "").await;
    assert_eq!(bad_header.status(), 400);
    let body: Value = bad_header.json().await.unwrap();
    assert!(
        body["errors"]["csv"]
            .as_str()
            .unwrap()
            .contains("location,item,quantity"),
        "{body}"
    );
    let wrong_type = upload(&app, "text/plain", "hello".into(), "").await;
    assert_eq!(wrong_type.status(), 415);
    let no_key = App::client()
        .post(format!("{}/api/inventory/stocktakes", app.web))
        .header("content-type", "text/csv")
        .body(csv(1))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
}

/// The venv python with the Azure SDK (`cargo xtask tools` installs it).
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CQRS_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        venv.is_file(),
        "the Python SDK interop test needs the project's venv with azure-storage-blob and \
         azure-storage-queue: run `cargo xtask tools` (or set CQRS_TEST_PYTHON to a python that has them)"
    );
    venv
}

/// Runs `tests/python/send_commands.py`; returns what it printed per command.
fn send_with_python(app: &App, commands: &[Value], base64: bool) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_commands.py");
    let args = json!({
        "connectionString": app.azurite.connection_string.to_connection_string(),
        "queue": app.names.inventory,
        "container": app.names.claims,
        "base64": base64,
        "commands": commands,
    });
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // NB: on stdin: 10,000 lines are far over the argument-length limit.
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        args.to_string().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "send_commands.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn result_blob(app: &App, id: &str) -> Option<Value> {
    let blob = app
        .account
        .blob(&app.names.results, &format!("stocktakes/{id}.json"));
    let body = blob.download(None).await.ok()?.body.collect().await.ok()?;
    serde_json::from_slice(&body).ok()
}

#[tokio::test]
async fn the_python_sdk_sends_plain_commands_and_claim_checks_the_worker_applies() {
    let mut app = App::start(Options::default()).await;
    app.start_worker("stocker", &[]).await;
    let lines: Vec<Value> = (0..10_000)
        .map(|i| {
            let (location, item, quantity) = line(i);
            json!({"location": location, "item": item, "quantity": quantity})
        })
        .collect();
    for base64 in [false, true] {
        let id = if base64 { "py-base64" } else { "py-plain" };
        let adjustment = json!({"commandId": format!("{id}-adj"), "location": "python-van", "item": id, "delta": 5});
        let take = json!({"stocktakeId": id, "lines": lines});
        let sent = send_with_python(&app, &[adjustment, take], base64);
        assert_eq!(
            sent[0]["claimed"],
            Value::Null,
            "a small command goes inline"
        );
        assert!(
            sent[1]["claimed"].is_string(),
            "a 600 KiB one through a blob: {sent:?}"
        );
        wait_until("the stock take's result", || async {
            result_blob(&app, id)
                .await
                .is_some_and(|r| r["status"] == "applied")
        })
        .await;
        let result = result_blob(&app, id).await.unwrap();
        assert_eq!(result["linesApplied"], 10_000, "{result}");
        wait_until("the adjustment", || async {
            stock_of(&app, "python-van", id).await == Some(5)
        })
        .await;
    }
    assert_stock(&app, &expected(10_000)).await;
    wait_until("no claim-check blob left", || async {
        claim_blobs(&app).await.is_empty()
    })
    .await;
}
