//! The pie shop at a real shop's size: the inventory with 100,000 items across 50 locations
//! against a small one (10 locations × 20 items), both filled by a stock take through the web
//! role and measured in the same run: adjustments drained per second by one worker replica,
//! the dashboard's first paint and live-update latency in headless Chromium, and the bytes of
//! the query API's answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::common::{Bench, Names, Row, Runtime, fixed, median, wait_for_items};
use crate::drain::{Kind, worker_rate_on};
use crate::stocktake::post_and_wait;

/// One of the two shops.
#[derive(Clone, Copy, Debug)]
struct Size {
    locations: usize,
    items_per_location: usize,
}

/// 10 locations × 20 items: the drain benchmark's shop.
const SMALL: Size = Size {
    locations: 10,
    items_per_location: 20,
};
/// 100,000 items across 50 locations.
const LARGE: Size = Size {
    locations: 50,
    items_per_location: 2_000,
};

impl Size {
    fn items(self) -> usize {
        self.locations * self.items_per_location
    }

    /// A stock take of every item: `shop-<l>,pie-<i>` (the drain's adjustments go to shop-0..9,
    /// pie-0..19, which both sizes hold).
    fn stocktake(self) -> String {
        let mut csv = String::with_capacity(self.items() * 24 + 32);
        csv.push_str("location,item,quantity\n");
        for i in 0..self.items() {
            let (l, item) = (i % self.locations, i / self.locations);
            csv.push_str(&format!("shop-{l},pie-{item},{}\n", 1 + i % 9));
        }
        csv
    }
}

/// Fills the read model of `names` through a stock take (the runtime is stopped after).
async fn seed(bench: &Bench, names: &Names, size: Size) -> Result<()> {
    let runtime = Runtime::start(bench, names, &fixed(0), &fixed(1)).await?;
    runtime.worker_port("stocker").await?;
    let http = reqwest::Client::new();
    let applied = post_and_wait(&http, &runtime.web, size.stocktake(), size.items()).await;
    runtime.stop().await;
    applied.map(|_| ())
}

/// Adjustments drained per second by one stocker from a shop of `size`.
async fn adjust_rate(bench: &Bench, size: Size, n: usize) -> Result<f64> {
    let names = bench.provisioned().await?;
    seed(bench, &names, size).await?;
    worker_rate_on(bench, &names, Kind::Inventory, n).await
}

/// What the dashboard measured at one size.
#[derive(Debug, Default)]
struct Dashboard {
    first_paint_ms: f64,
    live_ms: f64,
    html_bytes: f64,
    summary_bytes: f64,
    location_bytes: f64,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.cjs")
}

/// Chromium and playwright-core, as `cargo xtask bench` installs them.
fn browser_env() -> Result<(String, String)> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = std::env::var("PLAYWRIGHT_CORE").context(
        "PLAYWRIGHT_CORE is not set: run the benchmarks with `cargo xtask bench`, which installs \
         playwright-core and Chromium",
    )?;
    anyhow::ensure!(
        Path::new(&chromium).is_file(),
        "no Chromium at {chromium}: `cargo xtask bench` installs Debian's package"
    );
    Ok((chromium, playwright))
}

async fn dashboard(bench: &Bench, size: Size) -> Result<Dashboard> {
    let (chromium, playwright) = browser_env()?;
    let names = bench.provisioned().await?;
    seed(bench, &names, size).await?;
    let runtime = Runtime::start(bench, &names, &fixed(0), &fixed(1)).await?;
    runtime.worker_port("stocker").await?;
    let http = reqwest::Client::new();
    wait_for_items(&http, &runtime.web, size.items()).await?;
    let summary_url = format!("{}/api/inventory", runtime.web);
    let bytes = async |url: &str| -> Result<f64> {
        Ok(http.get(url).send().await?.bytes().await?.len() as f64)
    };
    let summary_bytes = bytes(&summary_url).await?;
    let location_bytes = bytes(&format!("{}/api/inventory/locations/shop-0", runtime.web)).await?;
    let samples = if bench.quick { "3" } else { "7" };
    let output = Command::new("node")
        .arg(script())
        .env("PLAYWRIGHT_CORE", playwright)
        .env("CHROMIUM", chromium)
        .env("WEB_URL", &runtime.web)
        .env("SCANNER_KEY", "bench-key")
        .env("LOCATION", "shop-0")
        .env("SAMPLES", samples)
        .env("BACKGROUND_RATE", "10")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .context("the dashboard script took over 300 s")?
        .context("cannot run node (Node.js is needed for the dashboard benchmark)")?;
    runtime.stop().await;
    anyhow::ensure!(
        output.status.success(),
        "the dashboard script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let measured: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{}", String::from_utf8_lossy(&output.stdout)))?;
    let list = |name: &str| -> Vec<f64> {
        measured[name]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    Ok(Dashboard {
        first_paint_ms: median(list("firstPaintMs")),
        live_ms: median(list("liveMs")),
        html_bytes: measured["htmlBytes"].as_f64().unwrap_or_default(),
        summary_bytes,
        location_bytes,
    })
}

/// The shop rows.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let n = if bench.quick { 300 } else { 1_000 };
    let (mut small, mut large) = (Vec::new(), Vec::new());
    let (mut small_dash, mut large_dash) = (Vec::new(), Vec::new());
    for _ in 0..bench.runs() {
        small.push(
            bench
                .on_fresh(async |b| adjust_rate(b, SMALL, n).await)
                .await?,
        );
        large.push(
            bench
                .on_fresh(async |b| adjust_rate(b, LARGE, n).await)
                .await?,
        );
        small_dash.push(bench.on_fresh(async |b| dashboard(b, SMALL).await).await?);
        large_dash.push(bench.on_fresh(async |b| dashboard(b, LARGE).await).await?);
        let (s, l) = (
            &small_dash[small_dash.len() - 1],
            &large_dash[large_dash.len() - 1],
        );
        eprintln!(
            "    run {}: adjustments {:.0} / {:.0} msg/s, first paint {:.0} / {:.0} ms, live {:.0} / {:.0} ms (small / large)",
            small.len(),
            small[small.len() - 1],
            large[large.len() - 1],
            s.first_paint_ms,
            l.first_paint_ms,
            s.live_ms,
            l.live_ms,
        );
    }
    let pick = |runs: &[Dashboard], f: fn(&Dashboard) -> f64| median(runs.iter().map(f).collect());
    let (small_rate, large_rate) = (median(small), median(large));
    let ratio = large_rate / small_rate;
    let mut rows = vec![Row::new(
        &format!("Adjustments into 100,000 items at 50 locations ({n}, 1 replica)"),
        format!("{large_rate:.0} msg/s"),
        format!("{small_rate:.0} msg/s (200 items at 10 locations)"),
        format!("{ratio:.2}×"),
        "≥ 0.9×",
        Some(ratio >= 0.9),
    )];
    let timed = |name: &str, f: fn(&Dashboard) -> f64| {
        let (s, l) = (pick(&small_dash, f), pick(&large_dash, f));
        Row::new(
            name,
            format!("{l:.0} ms"),
            format!("{s:.0} ms (200 items)"),
            format!("{:.2}×", l / s),
            "< 1 s",
            Some(l < 1000.0),
        )
    };
    rows.push(timed(
        "Dashboard first paint at 100,000 items (Chromium)",
        |d| d.first_paint_ms,
    ));
    rows.push(timed(
        "Dashboard live update at 100,000 items (POST → cell, scanners at 10/s)",
        |d| d.live_ms,
    ));
    let sized = |name: &str, f: fn(&Dashboard) -> f64| {
        let (s, l) = (pick(&small_dash, f), pick(&large_dash, f));
        Row::new(
            name,
            format!("{l:.0} bytes"),
            format!("{s:.0} bytes (200 items)"),
            format!("{:.1}×", l / s),
            "≤ 32 KiB",
            Some(l <= 32.0 * 1024.0),
        )
    };
    rows.push(sized(
        "`GET /api/inventory` per poll at 100,000 items (first page of locations)",
        |d| d.summary_bytes,
    ));
    rows.push(sized(
        "`GET /api/inventory/locations/{l}` at 100,000 items (first page of 2,000)",
        |d| d.location_bytes,
    ));
    rows.push(sized("`/inventory` HTML at 100,000 items", |d| {
        d.html_bytes
    }));
    Ok(rows)
}
