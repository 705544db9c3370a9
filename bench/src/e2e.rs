//! End to end: `POST /api/registrations` until the token is visible in the result blob
//! (polled every 20 ms for a second, then every second as the page does), against a minimal
//! pipeline doing the same storage calls directly (producer: blob + enqueue; two consumers: receive, write the
//! token, delete).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use azure_storage_blob::models::BlockBlobClientUploadOptions;
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use cqrs_storage::StorageAccount;

use crate::common::{
    Bench, Names, Row, Runtime, fixed, median, percentile, post_registration, put_blob,
    result_blob, submit_directly,
};
use crate::load::{Outcome, open_loop};

/// Polling: every 20 ms for the first second (precise latencies), then once a second like the
/// registration page (so a backlog of pending results does not flood storage with reads).
fn poll_delay(waited: Duration) -> Duration {
    if waited < Duration::from_secs(1) {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(1)
    }
}

async fn token_visible(http: &reqwest::Client, url: &str) -> bool {
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && let Ok(body) = r.json::<serde_json::Value>().await
            && body["registrationToken"].is_string()
        {
            return true;
        }
        tokio::time::sleep(poll_delay(start.elapsed())).await;
    }
    false
}

async fn through_app(http: reqwest::Client, web: String) -> bool {
    let Ok(response) = post_registration(&http, &web, "e2e").await else {
        return false;
    };
    let Ok(accepted) = response.json::<serde_json::Value>().await else {
        return false;
    };
    let Some(url) = accepted["resultUrl"].as_str() else {
        return false;
    };
    token_visible(&http, url).await
}

/// The same storage calls made directly; the message carries just the id.
async fn through_raw(http: reqwest::Client, account: StorageAccount, names: Names) -> bool {
    let id = uuid::Uuid::new_v4().to_string();
    match submit_directly(&account, &names, &id, id.clone()).await {
        Ok(url) => token_visible(&http, &url).await,
        Err(_) => false,
    }
}

/// A minimal consumer: receive, write the token blob, delete; 100 ms pause when empty.
async fn raw_consumer(account: StorageAccount, names: Names, stop: Arc<AtomicBool>) {
    let Ok(queue) = account.queue(&names.reg) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(32),
            visibility_timeout: Some(30),
            ..Default::default()
        };
        let Ok(messages) = queue
            .receive_messages(Some(options))
            .await
            .and_then(|r| r.into_model())
        else {
            continue;
        };
        let messages = messages.items.unwrap_or_default();
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let work = messages.into_iter().map(|m| {
            let (account, names, queue) = (&account, &names, &queue);
            async move {
                let (Some(id), Some(pop), Some(text)) =
                    (m.message_id, m.pop_receipt, m.message_text)
                else {
                    return;
                };
                let token =
                    serde_json::json!({"registrationToken": format!("RAW-{text}")}).to_string();
                if put_blob(
                    account,
                    &names.res,
                    &result_blob(&text),
                    token,
                    BlockBlobClientUploadOptions::default(),
                )
                .await
                .is_ok()
                {
                    let _ = queue.delete_message(&id, &pop, None).await;
                }
            }
        });
        futures::future::join_all(work).await;
    }
}

/// The app under test: web + two registrar replicas run by the local runtime.
async fn app_run(
    bench: &Bench,
    http: &reqwest::Client,
    rate: f64,
    duration: Duration,
) -> Result<Outcome> {
    let names = bench.provisioned().await?;
    let runtime = Runtime::start(bench, &names, &fixed(2), &fixed(0)).await?;
    runtime.worker_port("registrar").await?;
    let outcome = open_loop(rate, duration, |_| {
        through_app(http.clone(), runtime.web.clone())
    })
    .await;
    runtime.stop().await;
    Ok(outcome)
}

/// The baseline: the same storage calls from minimal code, with two consumers.
async fn raw_run(
    bench: &Bench,
    http: &reqwest::Client,
    rate: f64,
    duration: Duration,
) -> Result<Outcome> {
    let names = bench.provisioned().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(raw_consumer(
                bench.account.clone(),
                names.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let outcome = open_loop(rate, duration, |_| {
        through_raw(http.clone(), bench.account.clone(), names.clone())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = c.await;
    }
    Ok(outcome)
}

fn failed(errors: usize) -> String {
    if errors > 0 {
        format!(" ({errors} failed)")
    } else {
        String::new()
    }
}

/// End-to-end rows at 50 and 200 registrations per second.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for rate in [50.0, 200.0] {
        // NB: 200/s is past what Azurite serves on a small machine; a short burst (600
        // registrations) keeps the backlog, and the time it takes Azurite to recover, bounded.
        let duration = if rate > 100.0 {
            bench.secs(3, 3)
        } else {
            bench.secs(10, 3)
        };
        let (mut app50, mut app99, mut raw50, mut raw99) = (vec![], vec![], vec![], vec![]);
        let (mut errors, mut raw_errors) = (0, 0);
        for _ in 0..bench.runs() {
            // Each side on its own Azurite: an overloaded phase leaves Azurite busy for a while.
            let app = bench
                .on_fresh(async |b| app_run(b, &http, rate, duration).await)
                .await?;
            let raw = bench
                .on_fresh(async |b| raw_run(b, &http, rate, duration).await)
                .await?;
            app50.push(percentile(&app.latencies_ms, 50.0));
            app99.push(percentile(&app.latencies_ms, 99.0));
            raw50.push(percentile(&raw.latencies_ms, 50.0));
            raw99.push(percentile(&raw.latencies_ms, 99.0));
            errors += app.errors;
            raw_errors += raw.errors;
        }
        let (a50, a99, r50, r99) = (median(app50), median(app99), median(raw50), median(raw99));
        rows.push(Row::new(
            &format!("End to end at {rate:.0} registrations/s (2 workers): POST → token visible, p50 / p99"),
            format!("{a50:.0} / {a99:.0} ms{}", failed(errors)),
            format!("{r50:.0} / {r99:.0} ms{} (same storage calls, minimal code)", failed(raw_errors)),
            format!("{:.2}× / {:.2}×", a50 / r50, a99 / r99),
            "",
            None,
        ));
    }
    Ok(rows)
}
