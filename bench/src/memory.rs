//! Peak memory (VmHWM) of the local runtime, the web role and a worker under load, against
//! each one's resident memory when idle.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use crate::common::{Bench, Row, Runtime, post_registration};
use crate::load::open_loop;

pub(crate) fn kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (role, pid) of every running process: the runtime itself, web, workers.
async fn pids(runtime: &Runtime) -> Vec<(String, u32)> {
    let mut all: Vec<(String, u32)> = runtime
        .pid()
        .map(|p| ("runtime".to_string(), p))
        .into_iter()
        .collect();
    for p in runtime.processes().await.unwrap_or_default() {
        if let (Some(role), Some(pid)) = (p["role"].as_str(), p["pid"].as_u64()) {
            let group = if role == "web" { "web" } else { "worker" };
            all.push((group.to_string(), u32::try_from(pid).unwrap_or(0)));
        }
    }
    all
}

/// Memory rows.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let names = bench.provisioned().await?;
    let scaling = "{minReplicas: 1, maxReplicas: 3, targetQueueLength: 25, pollingInterval: 1, cooldownPeriod: 5}";
    let runtime = Runtime::start(bench, &names, scaling, scaling).await?;
    runtime.worker_port("registrar").await?;
    let mut idle: BTreeMap<String, f64> = BTreeMap::new();
    for (role, pid) in pids(&runtime).await {
        let rss = kib(pid, "VmRSS:").unwrap_or(0.0);
        let slot = idle.entry(role).or_insert(0.0);
        *slot = slot.max(rss);
    }
    let http = reqwest::Client::new();
    let duration = bench.secs(15, 3);
    let sampling = {
        let status = runtime.status.clone();
        let pid = runtime.pid();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut peak: BTreeMap<String, f64> = BTreeMap::new();
            let until = tokio::time::Instant::now() + duration + Duration::from_secs(5);
            while tokio::time::Instant::now() < until {
                let mut current: Vec<(String, u32)> = pid
                    .map(|p| ("runtime".to_string(), p))
                    .into_iter()
                    .collect();
                if let Ok(r) = client.get(format!("http://{status}/status")).send().await
                    && let Ok(s) = r.json::<serde_json::Value>().await
                {
                    for p in s["processes"].as_array().cloned().unwrap_or_default() {
                        if let (Some(role), Some(pid)) = (p["role"].as_str(), p["pid"].as_u64()) {
                            current.push((
                                if role == "web" { "web" } else { "worker" }.to_string(),
                                u32::try_from(pid).unwrap_or(0),
                            ));
                        }
                    }
                }
                for (role, pid) in current {
                    if let Some(hwm) = kib(pid, "VmHWM:") {
                        let slot = peak.entry(role).or_insert(0.0);
                        *slot = slot.max(hwm);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        })
    };
    let web = runtime.web.clone();
    let registrations = open_loop(150.0, duration, |_| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            post_registration(&http, &web, "mem")
                .await
                .is_ok_and(|r| r.status() == 202)
        }
    });
    let scans = open_loop(300.0, duration, |i| {
        let (http, web) = (http.clone(), runtime.web.clone());
        async move {
            let body = serde_json::json!({"commandId": format!("mem-{i}"), "location": format!("shop-{}", i % 10), "item": format!("pie-{}", i % 20), "delta": 1});
            http.post(format!("{web}/api/inventory/adjustments"))
                .bearer_auth("bench-key")
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 202)
        }
    });
    let (registrations, scans) = tokio::join!(registrations, scans);
    let accepted = registrations.latencies_ms.len() + scans.latencies_ms.len();
    let offered = accepted + registrations.errors + scans.errors;
    let peak = sampling.await?;
    runtime.stop().await;
    let mib = |k: f64| k / 1024.0;
    Ok(["runtime", "web", "worker"]
        .iter()
        .map(|role| {
            let (p, i) = (
                peak.get(*role).copied().unwrap_or(f64::NAN),
                idle.get(*role).copied().unwrap_or(f64::NAN),
            );
            let label = match *role {
                "runtime" => "Peak RSS, operator (local runtime)",
                "web" => "Peak RSS, web role",
                _ => "Peak RSS, worker (largest replica)",
            };
            // The web role sheds what storage cannot take (503): say how much it accepted.
            let served = if *role == "web" {
                format!(" ({accepted} of {offered} commands accepted)")
            } else {
                String::new()
            };
            Row::new(
                &format!("{label} under 150 registrations/s + 300 scans/s"),
                format!("{:.1} MiB{served}", mib(p)),
                format!("{:.1} MiB idle", mib(i)),
                format!("{:.2}×", p / i),
                "",
                None,
            )
        })
        .collect())
}
