//! Load generators: open loop (a fixed offered rate; latency counted from the scheduled send
//! time, so a slow server cannot hide its queueing) and closed loop (N clients back to back).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latencies in milliseconds of the requests that succeeded, and how many failed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub latencies_ms: Vec<f64>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl Outcome {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `rate` requests per second for `duration`; `request(i)` does one and reports success.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, request: F) -> Outcome
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let fut = request(i);
        tasks.push(tokio::spawn(async move {
            let ok = fut.await;
            (ok, due.elapsed())
        }));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok((true, latency)) => outcome.latencies_ms.push(latency.as_secs_f64() * 1000.0),
            _ => outcome.errors += 1,
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// `clients` loops each sending `request()` back to back for `duration`; successful requests
/// per second.
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, request: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (request, done) = (request.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if request().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}
