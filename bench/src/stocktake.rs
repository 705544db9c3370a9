//! Stock takes through the claim check: a 10,000-line CSV (~450 KiB, far over a queue
//! message) posted to the web role until its result blob says applied, against lines sent as
//! small adjustment commands and drained by the same worker. NB: the baseline drains 1,000
//! adjustments, as the drain benchmark does: with 10,000 messages queued Azurite itself slows
//! to a few dozen receives a second, which would measure Azurite, not the worker.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::common::{Bench, Row, Runtime, fixed, median};
use crate::drain::{Kind, worker_rate};

/// A stock take of `n` lines over 10 shops and 20 pies (like the drain's adjustments).
fn csv(n: usize) -> String {
    let mut text = String::from("location,item,quantity\n");
    for i in 0..n {
        text.push_str(&format!(
            "harbour-street-shop-{},morello-cherry-pie-{},{}\n",
            i % 10,
            i % 20,
            i % 7
        ));
    }
    text
}

/// Lines per second of the second of two stock takes posted one after the other (the first
/// wakes the worker from its idle backoff), from the POST to the result blob saying `applied`.
async fn stocktake_rate(bench: &Bench, n: usize) -> Result<f64> {
    let names = bench.provisioned().await?;
    let runtime = Runtime::start(bench, &names, &fixed(0), &fixed(1)).await?;
    runtime.worker_port("stocker").await?;
    let http = reqwest::Client::new();
    let mut rate = 0.0;
    for _ in 0..2 {
        rate = apply(&http, &runtime.web, n).await?;
    }
    runtime.stop().await;
    Ok(rate)
}

async fn apply(http: &reqwest::Client, web: &str, n: usize) -> Result<f64> {
    post_and_wait(http, web, csv(n), n).await
}

/// Posts a stock take of `n` good lines and waits until its result says applied; lines/s.
pub async fn post_and_wait(
    http: &reqwest::Client,
    web: &str,
    body: String,
    n: usize,
) -> Result<f64> {
    let started = Instant::now();
    let accepted: serde_json::Value = http
        .post(format!("{web}/api/inventory/stocktakes"))
        .bearer_auth("bench-key")
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let url = accepted["resultUrl"]
        .as_str()
        .context("no resultUrl in the answer")?
        .to_string();
    let deadline = started + Duration::from_secs(300);
    loop {
        let result: serde_json::Value = http.get(&url).send().await?.json().await?;
        match result["status"].as_str() {
            Some("applied") => {
                anyhow::ensure!(
                    result["linesApplied"] == n,
                    "applied {} of {n} lines",
                    result["linesApplied"]
                );
                break;
            }
            Some("pending") => {}
            other => anyhow::bail!("the stock take ended {other:?}: {result}"),
        }
        anyhow::ensure!(Instant::now() < deadline, "no result after 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The stock-take row.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let (n, n_single) = if bench.quick {
        (2_000, 300)
    } else {
        (10_000, 1_000)
    };
    let (mut take, mut single) = (Vec::new(), Vec::new());
    for _ in 0..bench.runs() {
        take.push(bench.on_fresh(async |b| stocktake_rate(b, n).await).await?);
        single.push(
            bench
                .on_fresh(async |b| worker_rate(b, Kind::Inventory, n_single).await)
                .await?,
        );
        eprintln!(
            "    run {}: stock take {:.0} lines/s, as adjustments {:.0} lines/s",
            take.len(),
            take[take.len() - 1],
            single[single.len() - 1]
        );
    }
    let (take, single) = (median(take), median(single));
    let ratio = take / single;
    Ok(vec![Row::new(
        &format!("Stock take of {n} lines through the claim check (POST → result applied)"),
        format!("{take:.0} lines/s"),
        format!("{single:.0} lines/s (lines as {n_single} adjustment commands, same worker)"),
        format!("{ratio:.1}×"),
        "≥ 1×",
        Some(ratio >= 1.0),
    )])
}
