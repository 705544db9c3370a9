//! The pie shop at a real shop's size: 100,000 items across 50 locations, filled by one stock
//! take, keeps every guarantee of the small one: a stock take over many partitions is one
//! idempotent command with one result, two workers racing on one partition lose nothing
//! (ETag conflicts re-applied), resent commands count once, and workers killed (SIGKILL) in
//! the middle of their batches lose nothing.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::time::Duration;

use cqrs_storage::azurite::TestAzurite;
use futures::StreamExt as _;
use serde_json::{Value, json};
use support::{App, Options, wait_for_stocktake, wait_until};

use support::{LOCATIONS, PER_LOCATION, Stock, big_stocktake, inventory_summary, upload_stocktake};

/// A counter (summed over its labels) on worker `port`'s /metrics.
async fn counter(port: u16, name: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `n` adjustments to `locations`, as (command, expected change).
fn adjustments(tag: &str, n: usize, locations: &[&str]) -> Vec<(Value, (String, String), i64)> {
    (0..n)
        .map(|i| {
            let location = locations[i % locations.len()].to_string();
            let item = format!("pie-{}", i % 40);
            let delta = if i % 4 == 0 { -1 } else { 2 };
            (
                json!({"commandId": format!("{tag}-{i}"), "location": location, "item": item, "delta": delta}),
                (location, item),
                delta,
            )
        })
        .collect()
}

async fn enqueue_all(app: &App, commands: &[(Value, (String, String), i64)], expected: &mut Stock) {
    let texts: Vec<String> = commands
        .iter()
        .map(|(body, pair, delta)| {
            *expected.get_mut(pair).unwrap() += delta;
            body.to_string()
        })
        .collect();
    let sends = texts
        .iter()
        .map(|text| app.enqueue_raw(&app.names.inventory, text));
    futures::stream::iter(sends)
        .buffer_unordered(32)
        .collect::<()>()
        .await;
}

#[tokio::test]
async fn a_100_000_item_shop_keeps_every_guarantee() {
    // Its own Azurite: this load would starve the tests sharing the run's instance.
    let mut app = App::start_on(
        TestAzurite::private().await,
        Options {
            visibility: 5,
            ..Options::default()
        },
    )
    .await;
    let first = app.start_worker("stocker", &[]).await;
    let second = app.start_worker("stocker", &[]).await;

    // One stock take over every partition: one command, one result blob.
    let (csv, mut expected) = big_stocktake();
    let result = wait_for_stocktake(&upload_stocktake(&app, &csv, "big-1").await).await;
    assert_eq!(result["status"], "applied", "{result}");
    assert_eq!(result["linesApplied"], LOCATIONS * PER_LOCATION);
    wait_until("the dashboard to show 100,000 items", || async {
        inventory_summary(&app.web).await["totals"]["items"] == LOCATIONS * PER_LOCATION
    })
    .await;
    let summary = inventory_summary(&app.web).await;
    assert_eq!(summary["totals"]["locations"], LOCATIONS);
    assert_eq!(
        summary["locations"].as_array().unwrap().len(),
        50,
        "one page"
    );

    // Two workers on one location (one partition): their writes race; each race lost is
    // re-applied, and every adjustment counts once, resent ones too.
    let racing = adjustments("race", 600, &["shop-7"]);
    let resent: Vec<_> = racing.iter().step_by(10).cloned().collect();
    enqueue_all(&app, &racing, &mut expected).await;
    for (body, ..) in &resent {
        app.enqueue_raw(&app.names.inventory, &body.to_string())
            .await;
    }
    wait_until("the racing adjustments", || async {
        let mut all = true;
        for i in 0..40 {
            let pair = ("shop-7".to_string(), format!("pie-{i}"));
            all &= support::stock_of(&app.web, &pair.0, &pair.1).await == Some(expected[&pair]);
        }
        all
    })
    .await;
    let (p1, p2) = (app.workers[first].2, app.workers[second].2);
    let conflicts = counter(p1, "pieshop_readmodel_conflicts").await
        + counter(p2, "pieshop_readmodel_conflicts").await;
    assert!(
        conflicts > 0,
        "600 adjustments of one partition by two workers should have raced at least once"
    );

    // The same stock take again, after adjustments since: it counts once (nothing is reset).
    let again = wait_for_stocktake(&upload_stocktake(&app, &csv, "big-1").await).await;
    assert_eq!(again["status"], "applied", "{again}");

    // Workers SIGKILLed while they work through a backlog: their batches come back after the
    // visibility timeout and are applied once.
    let backlog = adjustments("kill", 1_500, &["shop-0", "shop-13", "shop-26", "shop-39"]);
    enqueue_all(&app, &backlog, &mut expected).await;
    for round in 0..3 {
        let port = app.workers[first].2;
        let before = counter(port, "pieshop_messages_processed").await;
        wait_until("the worker to be busy with the backlog", || async {
            counter(port, "pieshop_messages_processed").await >= before + 50
        })
        .await;
        app.kill_worker(first).await;
        app.workers.remove(first);
        app.start_worker("stocker", &[]).await;
        let last = app.workers.len() - 1;
        app.workers.swap(first, last);
        eprintln!("killed a busy worker ({} in round {round})", before + 50);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_until("every adjustment and nothing else", || async {
        support::stock(&app.web).await == expected
    })
    .await;
}

/// The blobs under the read model's partitions: (name, size in bytes).
async fn partition_blobs(app: &App) -> Vec<(String, u64)> {
    use futures::TryStreamExt as _;
    let options = azure_storage_blob::models::BlobContainerClientListBlobsOptions {
        prefix: Some("inventory/partitions/".into()),
        ..Default::default()
    };
    let mut pages = app
        .account
        .container(&app.names.readmodels)
        .list_blobs(Some(options))
        .unwrap()
        .into_pages();
    let mut out = Vec::new();
    while let Some(page) = pages.try_next().await.unwrap() {
        for item in page.into_model().unwrap().blob_items {
            let size = item
                .properties
                .as_ref()
                .and_then(|p| p.content_length)
                .unwrap_or_default();
            out.push((item.name.unwrap_or_default(), size));
        }
    }
    out
}

#[tokio::test]
async fn one_location_of_20_000_items_is_split_so_its_writes_stay_small() {
    let mut app = App::start(Options::default()).await;
    app.start_worker("stocker", &[]).await;
    let mut csv = String::from("location,item,quantity\n");
    let mut expected = Stock::new();
    for i in 0..20_000 {
        csv.push_str(&format!("warehouse,pie-{i},3\n"));
        expected.insert(("warehouse".to_string(), format!("pie-{i}")), 3);
    }
    let result = wait_for_stocktake(&upload_stocktake(&app, &csv, "warehouse-1").await).await;
    assert_eq!(result["status"], "applied", "{result}");
    let adjustments = adjustments("wh", 300, &["warehouse"]);
    enqueue_all(&app, &adjustments, &mut expected).await;
    wait_until("every adjustment of the big location", || async {
        support::stock(&app.web).await == expected
    })
    .await;
    let blobs = partition_blobs(&app).await;
    let largest = blobs.iter().map(|(_, size)| *size).max().unwrap();
    assert!(
        blobs.len() >= 20_000 / 4_096 && largest < 256 * 1024,
        "the location's 20,000 items are in blobs of at most 4,096 items: {} blobs, the largest {largest} bytes",
        blobs.len()
    );
}
