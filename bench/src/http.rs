//! The web role's command and query paths, against the cost of their storage calls made
//! directly and against a minimal static handler serving the same bytes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cqrs_storage::StorageAccount;
use tokio::process::Command;

use crate::common::{
    Bench, Names, Row, Runtime, fixed, median, percentile, post_registration, put_blob,
    submit_directly, wait_for_items, wait_until,
};
use crate::load::{closed_loop, open_loop};

/// Offered load of the command-path benchmark.
const COMMAND_RATE: f64 = 100.0;

/// What `POST /api/registrations` does to storage, done directly, with the command the web
/// role would enqueue.
async fn raw_command(account: StorageAccount, names: Names) -> bool {
    let id = uuid::Uuid::new_v4().to_string();
    let command = serde_json::json!({"id": id, "firstName": "B", "lastName": "C", "email": format!("{id}@example.com"), "dateOfBirth": "1990-01-01"});
    submit_directly(&account, &names, &id, command.to_string())
        .await
        .is_ok()
}

async fn web_command(http: reqwest::Client, web: String) -> bool {
    post_registration(&http, &web, "cmd")
        .await
        .is_ok_and(|r| r.status() == 202)
}

/// `POST /api/registrations` through the web role (run by the local runtime, no workers).
async fn web_run(bench: &Bench, http: &reqwest::Client) -> Result<crate::load::Outcome> {
    let names = bench.provisioned().await?;
    let runtime = Runtime::start(bench, &names, &fixed(0), &fixed(0)).await?;
    let outcome = open_loop(COMMAND_RATE, bench.secs(10, 3), |_| {
        web_command(http.clone(), runtime.web.clone())
    })
    .await;
    runtime.stop().await;
    Ok(outcome)
}

/// The same storage calls made directly.
async fn raw_run(bench: &Bench) -> Result<crate::load::Outcome> {
    let names = bench.provisioned().await?;
    Ok(open_loop(COMMAND_RATE, bench.secs(10, 3), |_| {
        raw_command(bench.account.clone(), names.clone())
    })
    .await)
}

/// Command path rows.
pub async fn command_path(bench: &Bench) -> Result<Vec<Row>> {
    let http = reqwest::Client::new();
    let (mut web_p50, mut web_p99, mut web_tput, mut raw_p50, mut raw_p99) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..bench.runs() {
        // Each side on an Azurite of its own: what one side leaves (a thousand blobs and
        // messages per run) would otherwise slow whichever side runs second.
        let web = bench.on_fresh(async |b| web_run(b, &http).await).await?;
        let raw = bench.on_fresh(async |b| raw_run(b).await).await?;
        web_p50.push(percentile(&web.latencies_ms, 50.0));
        web_p99.push(percentile(&web.latencies_ms, 99.0));
        web_tput.push(web.throughput());
        raw_p50.push(percentile(&raw.latencies_ms, 50.0));
        raw_p99.push(percentile(&raw.latencies_ms, 99.0));
    }
    let (w50, w99, tput, r50, r99) = (
        median(web_p50),
        median(web_p99),
        median(web_tput),
        median(raw_p50),
        median(raw_p99),
    );
    let overhead = w50 / r50 - 1.0;
    Ok(vec![
        Row::new(
            &format!("Command path `POST /api/registrations` at {COMMAND_RATE:.0}/s, p50"),
            format!("{w50:.1} ms ({tput:.0} req/s served)"),
            format!("{r50:.1} ms (blob put + enqueue + SAS, direct)"),
            format!("{:+.0}% overhead", overhead * 100.0),
            "≤ +20%",
            Some(overhead <= 0.20),
        ),
        Row::new(
            &format!("Command path at {COMMAND_RATE:.0}/s, p99"),
            format!("{w99:.1} ms"),
            format!("{r99:.1} ms"),
            format!("{:+.0}%", (w99 / r99 - 1.0) * 100.0),
            "",
            None,
        ),
    ])
}

/// A read model of 10 locations × 20 items, in the single-blob format of earlier versions
/// (carried over into the partitions when the web role starts).
fn seed_model() -> serde_json::Value {
    let mut stock = serde_json::Map::new();
    for l in 0..10 {
        let items: serde_json::Map<String, serde_json::Value> = (0..20)
            .map(|i| (format!("pie-{i:02}"), serde_json::json!(l * 20 + i)))
            .collect();
        stock.insert(format!("shop-{l:02}"), items.into());
    }
    serde_json::json!({"version": 7, "updatedAt": "2026-11-22T10:00:00Z", "stock": stock, "applied": {}})
}

/// Query path rows.
pub async fn query_path(bench: &Bench) -> Result<Vec<Row>> {
    let names = bench.provisioned().await?;
    put_blob(
        &bench.account,
        &names.rm,
        "inventory.json",
        serde_json::to_vec(&seed_model())?,
        Default::default(),
    )
    .await
    .context("seeding the read model")?;
    let runtime = Runtime::start(bench, &names, &fixed(0), &fixed(0)).await?;
    let http = reqwest::Client::new();
    wait_for_items(&http, &runtime.web, 200).await?;
    let url = format!("{}/api/inventory", runtime.web);
    let bytes = http.get(&url).send().await?.bytes().await?;
    let file = bench.work.join("inventory-static.json");
    std::fs::write(&file, &bytes)?;
    let static_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new(std::env::current_exe()?)
        .args([
            "static-server",
            "--port",
            &static_port.to_string(),
            "--file",
        ])
        .arg(&file)
        .kill_on_drop(true)
        .spawn()?;
    let static_url = format!("http://127.0.0.1:{static_port}/api/inventory");
    wait_until("the static server", Duration::from_secs(30), || async {
        http.get(&static_url).send().await.is_ok()
    })
    .await?;

    let duration = bench.secs(5, 2);
    let get = |url: String| {
        let http = http.clone();
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        }
    };
    let (mut app, mut baseline) = (vec![], vec![]);
    for _ in 0..bench.runs() {
        app.push(closed_loop(32, duration, get(url.clone())).await);
        baseline.push(closed_loop(32, duration, get(static_url.clone())).await);
    }
    let _ = server.kill().await;
    runtime.stop().await;
    let (app, baseline) = (median(app), median(baseline));
    let ratio = app / baseline;
    Ok(vec![Row::new(
        &format!(
            "Query path `GET /api/inventory` ({} bytes, 32 clients)",
            bytes.len()
        ),
        format!("{app:.0} req/s"),
        format!("{baseline:.0} req/s (static handler, same bytes)"),
        format!("{ratio:.2}×"),
        "≥ 0.7×",
        Some(ratio >= 0.7),
    )])
}

/// `cqrs-bench static-server`: serves one file's bytes as JSON at /api/inventory, with the
/// same server stack (tokio + axum) as the web role.
pub async fn static_server(port: u16, file: &std::path::Path) -> Result<()> {
    let bytes: Arc<[u8]> = std::fs::read(file)?.into();
    let app = axum::Router::new().route(
        "/api/inventory",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            async move { ([("content-type", "application/json")], bytes.to_vec()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    use axum::serve::ListenerExt as _;
    // The same socket setting as the web role.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
