//! Worker drain rate: one worker replica emptying a prefilled queue, against a raw
//! receive-and-delete loop written with the same SDK.

use std::time::{Duration, Instant};

use anyhow::Result;
use azure_core::http::Etag;
use azure_storage_blob::models::BlockBlobClientUploadOptions;
use azure_storage_queue::QueueClient;
use azure_storage_queue::models::{QueueClientReceiveMessagesOptions, ReceivedMessage};
use futures::StreamExt as _;

use crate::common::{
    Bench, Names, Row, Runtime, counter, create_only, enqueue, fixed, median, put_blob, result_blob,
};

/// What the queue holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Registration,
    Inventory,
}

impl Kind {
    /// The queue of this kind among `names`.
    fn queue(self, names: &Names) -> &str {
        match self {
            Kind::Registration => &names.reg,
            Kind::Inventory => &names.inv,
        }
    }
}

/// A command of `kind` as the web role would enqueue it; for a registration, after writing
/// its pending result blob (whose ETag the command carries).
async fn command(bench: &Bench, names: &Names, kind: Kind, i: usize) -> Result<String> {
    Ok(match kind {
        Kind::Registration => {
            let id = uuid::Uuid::new_v4().to_string();
            let pending = br#"{"registrationToken":null}"#;
            let etag = put_blob(&bench.account, &names.res, &result_blob(&id), &pending[..], create_only())
                .await?
                .map(|e| e.to_string());
            serde_json::json!({"id": id, "firstName": "B", "lastName": "C", "email": format!("drain-{id}@example.com"), "dateOfBirth": "1990-01-01", "resultEtag": etag})
        }
        Kind::Inventory => serde_json::json!({"commandId": uuid::Uuid::new_v4().to_string(), "location": format!("shop-{}", i % 10), "item": format!("pie-{}", i % 20), "delta": 1}),
    }
    .to_string())
}

async fn prefill(bench: &Bench, names: &Names, kind: Kind, n: usize) -> Result<()> {
    let client = bench.account.queue(kind.queue(names))?;
    let sends = (0..n).map(|i| {
        let client = &client;
        async move { enqueue(client, command(bench, names, kind, i).await?).await }
    });
    let results: Vec<Result<()>> = futures::stream::iter(sends)
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Up to 32 messages, invisible for 60 s.
async fn receive(queue: &QueueClient) -> Result<Vec<ReceivedMessage>> {
    let options = QueueClientReceiveMessagesOptions {
        number_of_messages: Some(32),
        visibility_timeout: Some(60),
        ..Default::default()
    };
    Ok(queue
        .receive_messages(Some(options))
        .await?
        .into_model()?
        .items
        .unwrap_or_default())
}

/// How many of `calls` (run concurrently) succeeded.
async fn count_ok(calls: impl IntoIterator<Item = impl Future<Output = bool>>) -> usize {
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count()
}

/// A raw consumer of `n` prefilled messages: receive 32, run `handle(id, pop receipt, text)`
/// on each concurrently (it deletes the message when done), until `n` are handled; msg/s.
async fn raw_loop<F, Fut>(queue: &QueueClient, n: usize, handle: F) -> Result<f64>
where
    F: Fn(String, String, String) -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let work = receive(queue)
            .await?
            .into_iter()
            .filter_map(|m| Some(handle(m.message_id?, m.pop_receipt?, m.message_text?)));
        done += count_ok(work).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The baseline: receive and delete, nothing else.
async fn raw_rate(bench: &Bench, n: usize) -> Result<f64> {
    let names = bench.provisioned().await?;
    prefill(bench, &names, Kind::Inventory, n).await?;
    let queue = bench.account.queue(&names.inv)?;
    raw_loop(&queue, n, |id, pop, _| {
        let queue = &queue;
        async move { queue.delete_message(&id, &pop, None).await.is_ok() }
    })
    .await
}

/// A raw loop making the registration worker's storage calls itself: for each message claim
/// the address, write the token with If-Match, delete.
async fn raw_registration_rate(bench: &Bench, n: usize) -> Result<f64> {
    let names = bench.provisioned().await?;
    prefill(bench, &names, Kind::Registration, n).await?;
    let queue = bench.account.queue(&names.reg)?;
    raw_loop(&queue, n, |id, pop, text| {
        let (queue, account, names) = (&queue, &bench.account, &names);
        async move {
            let Ok(cmd) = serde_json::from_str::<serde_json::Value>(&text) else {
                return false;
            };
            let (rid, email) = (
                cmd["id"].as_str().unwrap_or_default(),
                cmd["email"].as_str().unwrap_or_default(),
            );
            let claim = format!(r#"{{"registrationId":"{rid}"}}"#);
            let create = BlockBlobClientUploadOptions {
                if_none_match: Some(Etag::from("*")),
                ..Default::default()
            };
            let claim_blob = format!("registrations/by-email/{email}.json");
            if put_blob(account, &names.rm, &claim_blob, claim, create)
                .await
                .is_err()
            {
                return false;
            }
            let matching = BlockBlobClientUploadOptions {
                if_match: cmd["resultEtag"]
                    .as_str()
                    .map(|e| Etag::from(e.to_string())),
                ..Default::default()
            };
            let token = &br#"{"registrationToken":"RT-RAW"}"#[..];
            if put_blob(account, &names.res, &result_blob(rid), token, matching)
                .await
                .is_err()
            {
                return false;
            }
            queue.delete_message(&id, &pop, None).await.is_ok()
        }
    })
    .await
}

/// A raw loop making the inventory worker's storage calls itself: per batch of 32, one blob
/// write per location in it (as the read model's partitions are written), then the deletes.
async fn raw_inventory_rate(bench: &Bench, n: usize) -> Result<f64> {
    let names = bench.provisioned().await?;
    prefill(bench, &names, Kind::Inventory, n).await?;
    let queue = bench.account.queue(&names.inv)?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let messages = receive(&queue).await?;
        let locations: std::collections::BTreeSet<String> = messages
            .iter()
            .filter_map(|m| {
                serde_json::from_str::<serde_json::Value>(m.message_text.as_ref()?).ok()
            })
            .filter_map(|c| c["location"].as_str().map(String::from))
            .collect();
        let (account, container) = (&bench.account, names.rm.as_str());
        let writes = locations.iter().map(|l| async move {
            let body = format!(r#"{{"stock":{{"{l}":{{}}}}}}"#).into_bytes();
            let blob = format!("raw/{l}.json");
            put_blob(account, container, &blob, body, Default::default()).await
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
        let deletes = messages.into_iter().filter_map(|m| {
            let (id, pop) = (m.message_id?, m.pop_receipt?);
            let queue = &queue;
            Some(async move { queue.delete_message(&id, &pop, None).await.is_ok() })
        });
        done += count_ok(deletes).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One worker replica draining `n` prefilled messages of `kind`.
pub async fn worker_rate(bench: &Bench, kind: Kind, n: usize) -> Result<f64> {
    worker_rate_on(bench, &bench.provisioned().await?, kind, n).await
}

/// [`worker_rate`] on storage already provisioned (and perhaps holding a read model).
pub async fn worker_rate_on(bench: &Bench, names: &Names, kind: Kind, n: usize) -> Result<f64> {
    prefill(bench, names, kind, n).await?;
    let (registrar, stocker, role) = match kind {
        Kind::Registration => (fixed(1), fixed(0), "registrar"),
        Kind::Inventory => (fixed(0), fixed(1), "stocker"),
    };
    let queue = kind.queue(names);
    let runtime = Runtime::start(bench, names, &registrar, &stocker).await?;
    let port = runtime.worker_port(role).await?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    // Drained: every message counted, or the queue empty (its approximate count includes
    // messages in flight; checked once a second, it is the costlier call). NB: the second
    // matters when a delete's answer was lost and its retry found the message gone: the
    // worker does not count what it could not delete.
    let deadline = started + Duration::from_secs(600);
    let mut last_depth_check = started;
    loop {
        if counter(&http, port, "pieshop_messages_processed_total").await >= n as f64 {
            break;
        }
        if last_depth_check.elapsed() >= Duration::from_secs(1) {
            last_depth_check = Instant::now();
            if bench
                .account
                .queue_depth(queue)
                .await
                .is_ok_and(|d| d.approximate == 0)
            {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after 600 s waiting for the worker to drain {queue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    runtime.stop().await;
    Ok(rate)
}

/// The drain rows.
pub async fn run(bench: &Bench) -> Result<Vec<Row>> {
    let (n_raw, n_reg, n_inv) = if bench.quick {
        (300, 200, 300)
    } else {
        (1000, 600, 1000)
    };
    let (mut raw, mut raw_work, mut reg, mut inv, mut raw_inv) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.runs() {
        raw.push(bench.on_fresh(async |b| raw_rate(b, n_raw).await).await?);
        raw_work.push(
            bench
                .on_fresh(async |b| raw_registration_rate(b, n_reg).await)
                .await?,
        );
        reg.push(
            bench
                .on_fresh(async |b| worker_rate(b, Kind::Registration, n_reg).await)
                .await?,
        );
        inv.push(
            bench
                .on_fresh(async |b| worker_rate(b, Kind::Inventory, n_inv).await)
                .await?,
        );
        raw_inv.push(
            bench
                .on_fresh(async |b| raw_inventory_rate(b, n_inv).await)
                .await?,
        );
        eprintln!(
            "    run {}: raw {:.0}, raw registration {:.0}, registrations {:.0}, inventory {:.0}, raw inventory {:.0} msg/s",
            raw.len(),
            raw[raw.len() - 1],
            raw_work[raw_work.len() - 1],
            reg[reg.len() - 1],
            inv[inv.len() - 1],
            raw_inv[raw_inv.len() - 1]
        );
    }
    let (raw, raw_work, reg, inv, raw_inv) = (
        median(raw),
        median(raw_work),
        median(reg),
        median(inv),
        median(raw_inv),
    );
    let row = |name: &str, rate: f64, base: f64, what: &str| {
        let ratio = rate / base;
        Row::new(
            name,
            format!("{rate:.0} msg/s"),
            format!("{base:.0} msg/s ({what})"),
            format!("{ratio:.2}×"),
            "≥ 0.8×",
            Some(ratio >= 0.8),
        )
    };
    Ok(vec![
        row(
            "Worker drain, registrations (1 replica)",
            reg,
            raw,
            "raw receive + delete loop",
        ),
        row(
            "Worker drain, registrations (1 replica)",
            reg,
            raw_work,
            "raw loop making the same storage calls",
        ),
        row(
            "Worker drain, inventory (1 replica)",
            inv,
            raw,
            "raw receive + delete loop",
        ),
        row(
            "Worker drain, inventory (1 replica)",
            inv,
            raw_inv,
            "raw loop making the same storage calls: a write per location in a batch",
        ),
    ])
}
