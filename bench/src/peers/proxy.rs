//! A counting proxy in front of Azurite's queue service, on loopback: both autoscalers reach
//! their queues through it, so every storage call each one makes for a role is counted by
//! queue name, and a queue can be made unreachable (requests held, then answered 504).
//!
//! Written here because what it counts is the benchmark's subject: a generic proxy would
//! count connections or bytes, not storage calls per queue.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;

/// How long a request to an unreachable queue is held before it is answered 504 (longer
/// than either side's client timeout, so each sees a timeout, as with a dropped route).
const HOLD: Duration = Duration::from_secs(40);

#[derive(Default)]
struct Shared {
    calls: BTreeMap<String, u64>,
    unreachable: BTreeSet<String>,
    /// One line per call: seconds since start, queue, method, operation, status, milliseconds.
    log: Option<std::io::BufWriter<std::fs::File>>,
    started: Option<std::time::Instant>,
    /// The longest call Azurite took to answer.
    slowest: Duration,
    /// When each call came, since the start (for how calls bunch together).
    times: Vec<Duration>,
}

/// The running proxy.
#[derive(Clone)]
pub struct CountingProxy {
    /// `http://127.0.0.1:<port>`.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// The queue a request path is about (`/<account>/<queue>[/messages[/<id>]]`); a poison
/// queue's calls are the role's too (`<queue>-poison` → `<queue>`).
pub fn queue_of(path: &str) -> Option<String> {
    let queue = path.trim_start_matches('/').split('/').nth(1)?;
    if queue.is_empty() {
        return None;
    }
    Some(queue.strip_suffix("-poison").unwrap_or(queue).to_owned())
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://127.0.0.1:<port>`),
    /// writing an access log to `log` when given.
    pub async fn start(upstream: &str, log: Option<&std::path::Path>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = match log {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )),
            None => None,
        };
        let shared = Arc::new(Mutex::new(Shared {
            log,
            started: Some(std::time::Instant::now()),
            ..Shared::default()
        }));
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("an HTTP client")?,
            shared: shared.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// A proxy in front of the queue service of `direct`, and the connection string that
    /// reaches it through the proxy.
    pub async fn in_front_of(
        direct: &cqrs_storage::ConnectionString,
        log: Option<&std::path::Path>,
    ) -> Result<(Self, cqrs_storage::ConnectionString)> {
        let upstream = direct.queue_endpoint.origin().ascii_serialization();
        let proxy = Self::start(&upstream, log).await?;
        let mut proxied = direct.clone();
        proxied.queue_endpoint = format!(
            "http://{}{}",
            proxy.addr,
            direct.queue_endpoint.path().trim_end_matches('/')
        )
        .parse()?;
        Ok((proxy, proxied))
    }

    /// Storage calls for `queue` (and its poison queue) so far.
    pub fn calls(&self, queue: &str) -> u64 {
        self.lock().calls.get(queue).copied().unwrap_or(0)
    }

    /// Every call so far, of any queue.
    pub fn total(&self) -> u64 {
        self.lock().times.len() as u64
    }

    /// How many calls came in each `slot` from `from` to `to` (times since the proxy started:
    /// see [`Self::now`]).
    pub fn per_slot(&self, from: Duration, to: Duration, slot: Duration) -> Vec<u64> {
        let n = ((to.saturating_sub(from)).as_secs_f64() / slot.as_secs_f64()).ceil() as usize;
        let mut slots = vec![0u64; n.max(1)];
        for t in self.lock().times.iter().filter(|t| **t >= from && **t < to) {
            let i = ((*t - from).as_secs_f64() / slot.as_secs_f64()) as usize;
            if let Some(s) = slots.get_mut(i) {
                *s += 1;
            }
        }
        slots
    }

    /// Time since the proxy started.
    pub fn now(&self) -> Duration {
        self.lock().started.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// The longest any call forwarded to Azurite took so far.
    pub fn slowest(&self) -> Duration {
        self.lock().slowest
    }

    /// Writes out what the access log holds so far.
    pub fn flush_log(&self) {
        if let Some(log) = &mut self.lock().log {
            let _ = std::io::Write::flush(log);
        }
    }

    /// From now on, requests for `queue` are held and then answered 504.
    pub fn make_unreachable(&self, queue: &str) {
        self.lock().unreachable.insert(queue.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let queue = queue_of(request.uri().path());
    let unreachable = {
        let mut shared = up.shared.lock().unwrap_or_else(|p| p.into_inner());
        let at = shared.started.map(|s| s.elapsed()).unwrap_or_default();
        shared.times.push(at);
        if let Some(queue) = &queue {
            *shared.calls.entry(queue.clone()).or_default() += 1;
        }
        queue
            .as_ref()
            .is_some_and(|q| shared.unreachable.contains(q))
    };
    let started = std::time::Instant::now();
    let method = request.method().clone();
    // NB: only the operation: the rest of the query may be a SAS token.
    let operation = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("comp=")))
        .unwrap_or("-")
        .to_owned();
    let response = if unreachable {
        tokio::time::sleep(HOLD).await;
        status(StatusCode::GATEWAY_TIMEOUT)
    } else {
        pass(&up, request, &path_and_query).await
    };
    let took = started.elapsed();
    let mut shared = up.shared.lock().unwrap_or_else(|p| p.into_inner());
    if !unreachable && took > shared.slowest {
        shared.slowest = took;
    }
    let since = shared.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    if let Some(log) = &mut shared.log {
        let _ = writeln!(
            log,
            "{since:.3} {} {method} {operation} {} {:.0}",
            queue.as_deref().unwrap_or("-"),
            response.status().as_u16(),
            took.as_secs_f64() * 1000.0
        );
    }
    response
}

async fn pass(up: &Upstream, request: Request, path_and_query: &str) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut outgoing = up
        .http
        .request(parts.method, format!("{}{path_and_query}", up.base))
        .body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        // NB: reqwest has already undone any transfer encoding.
        if name != HeaderName::from_static("transfer-encoding") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response
        .body(Body::from(bytes))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY))
}

fn status(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use cqrs_storage::azurite::TestAzurite;
    use cqrs_storage::{RetrySettings, StorageAccount};

    use super::*;

    /// The instrument itself, on a real Azurite through the SDK both sides use: every call
    /// counted for its queue (poison queue included, other queues apart), bodies and
    /// signatures passed through intact, and an unreachable queue failing while others work.
    #[tokio::test]
    async fn counts_each_queues_calls_and_makes_one_unreachable() {
        let azurite = TestAzurite::start().await;
        let direct = azurite.connection_string.clone();
        let proxy =
            CountingProxy::start(&direct.queue_endpoint.origin().ascii_serialization(), None)
                .await
                .unwrap();
        let mut proxied = direct.clone();
        proxied.queue_endpoint = format!("http://{}{}", proxy.addr, direct.queue_endpoint.path())
            .parse()
            .unwrap();
        let mut retry = RetrySettings::BACKGROUND;
        retry.max_retries = 0;
        retry.per_try_timeout = Duration::from_secs(2);
        let account = StorageAccount::from_connection_string(&proxied, retry).unwrap();
        let (a, b) = (
            cqrs_storage::azurite::unique_name("pxa"),
            cqrs_storage::azurite::unique_name("pxb"),
        );
        for queue in [&a, &b, &format!("{a}-poison")] {
            account.ensure_queue(queue).await.unwrap();
        }
        crate::common::enqueue(&account.queue(&a).unwrap(), "hello".into())
            .await
            .unwrap();
        let depth = account.queue_depth(&a).await.unwrap();
        assert_eq!(depth.approximate, 1);
        // create a, create a-poison, send, metadata, peek (1 to 32 messages are peeked)
        assert_eq!(proxy.calls(&a), 5);
        assert_eq!(proxy.calls(&b), 1);

        proxy.make_unreachable(&a);
        let started = std::time::Instant::now();
        let probe = tokio::time::timeout(Duration::from_secs(5), account.queue_depth(&a)).await;
        assert!(
            probe.is_err() || probe.is_ok_and(|r| r.is_err()),
            "an unreachable queue must not answer"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(account.queue_depth(&b).await.unwrap().approximate, 0);
    }

    #[test]
    fn calls_are_attributed_to_the_role_queue() {
        assert_eq!(queue_of("/devstoreaccount1/q-1").as_deref(), Some("q-1"));
        assert_eq!(
            queue_of("/devstoreaccount1/q-1/messages").as_deref(),
            Some("q-1")
        );
        assert_eq!(
            queue_of("/devstoreaccount1/q-1-poison").as_deref(),
            Some("q-1")
        );
        assert_eq!(queue_of("/devstoreaccount1"), None);
        assert_eq!(queue_of("/devstoreaccount1/"), None);
    }
}
