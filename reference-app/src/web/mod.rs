//! The web role: accepts commands (enqueues them) and serves queries (from a cache), plus
//! the two pages.
//!
//! Commands and queries are authorized separately: queries (`GET`) are public and read-only;
//! inventory commands need the scanners' key; registrations are open by nature (anyone may
//! register) and only ever create their own result blob.

mod inventory;
mod inventory_view;
mod pages;
mod registration;
mod stocktake;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AppConfig;
use crate::metrics::{AppMetrics, RouteLabels};
use crate::store::{self, Condition, Written};
pub use inventory::InventoryCache;

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// Storage and names.
    pub config: AppConfig,
    /// The scanners' key (`SCANNER_KEY`); without it inventory commands are refused.
    pub scanner_key: Option<String>,
    /// The inventory read model, kept fresh in the background.
    pub inventory: Arc<InventoryCache>,
    /// Metrics.
    pub metrics: Arc<AppMetrics>,
    /// The bound on commands waiting on storage.
    pub admission: Admission,
}

/// Bounds the commands waiting on storage at once (`WEB_MAX_IN_FLIGHT`). When storage slows
/// down, requests would otherwise pile up in memory without limit (each holds its body, its
/// connection and its storage calls); past the bound a command is answered 503 with
/// `Retry-After` at once, which clients already handle as a transient failure.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: NonZeroUsize,
    /// Commands refused (`pieshop_commands_shed_total`).
    shed: Counter,
}

impl Admission {
    /// The default bound: room for a burst while storage answers in tens of milliseconds,
    /// small enough that a stall costs a few MiB, not hundreds.
    pub const DEFAULT_LIMIT: NonZeroUsize = NonZeroUsize::new(256).expect("256 is not zero");

    /// At most `limit` commands at once; each refusal counts in `shed`.
    pub fn new(limit: NonZeroUsize, shed: Counter) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.get())),
            limit,
            shed,
        }
    }

    /// Admits one command (released when the permit drops), or refuses at once.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            self.shed.inc();
            ApiError::Busy(self.limit.get())
        })
    }

    /// Commands admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.limit.get() - self.permits.available_permits()
    }
}

/// An error answered as JSON.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with one message per field.
    Fields(BTreeMap<String, String>),
    /// 401: missing or wrong key.
    Unauthorized,
    /// 503 with `Retry-After`: storage is unreachable for now.
    Unavailable(String),
    /// 503 with `Retry-After`: this many commands are already waiting on storage.
    Busy(usize),
    /// 413: the body is over this endpoint's limit (in bytes).
    TooLarge(usize),
    /// 415: a body of a type this endpoint does not take.
    UnsupportedType(String),
}

/// Largest body of `POST /api/registrations`.
pub const REGISTRATION_BODY_LIMIT: usize = 16 * 1024;
/// Largest body of `POST /api/inventory/adjustments`.
pub const ADJUSTMENT_BODY_LIMIT: usize = 16 * 1024;
/// Largest body of `POST /api/inventory/stocktakes` (a 10,000-line stock take is ~400 KiB).
pub const STOCKTAKE_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// `8 MiB`, `16 KiB`, `100 bytes`.
pub fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

impl ApiError {
    /// A JSON body that could not be read: 413 over `limit`, else 400 naming the problem.
    fn from_json(rejection: JsonRejection, limit: usize) -> Self {
        Self::from_body(rejection.status(), rejection.body_text(), limit)
    }

    /// A body extractor's rejection (`status`, `text`): 413 over `limit`, else 400 on `body`.
    fn from_body(status: StatusCode, text: String, limit: usize) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge(limit);
        }
        ApiError::Fields(BTreeMap::from([("body".to_string(), text)]))
    }

    fn storage(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::warn!("{what}: {e}");
        ApiError::Unavailable(format!("{what}: storage is unavailable, try again shortly"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Fields(errors) => {
                (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors }))).into_response()
            }
            ApiError::Unauthorized => {
                let mut rsp = (StatusCode::UNAUTHORIZED, Json(json!({ "error": "a valid scanner key is required (Authorization: Bearer <key>)" }))).into_response();
                rsp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                rsp
            }
            ApiError::Unavailable(message) => unavailable(&message, "2"),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({
                    "error": format!("the request body is larger than {}, this endpoint's limit", human_bytes(limit)),
                    "limitBytes": limit,
                })),
            )
                .into_response(),
            ApiError::UnsupportedType(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": message })),
            )
                .into_response(),
            ApiError::Busy(limit) => unavailable(
                &format!(
                    "busy: {limit} commands are already waiting on storage (WEB_MAX_IN_FLIGHT), try again shortly"
                ),
                "1",
            ),
        }
    }
}

fn unavailable(message: &str, retry_after: &'static str) -> Response {
    let mut rsp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": message })),
    )
        .into_response();
    rsp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    rsp
}

/// Encodes `command` as JSON and enqueues it on `queue`, through the claim check when it is
/// large; `what` names it in errors.
async fn enqueue<T: serde::Serialize>(
    config: &AppConfig,
    queue: &str,
    command: &T,
    what: &str,
) -> Result<(), ApiError> {
    let text = serde_json::to_string(command)
        .map_err(|e| ApiError::storage(&format!("cannot encode the {what}"), e))?;
    config
        .sender
        .send(queue, &text, "application/json", config.message_ttl(queue))
        .await
        .map_err(|e| ApiError::storage(&format!("cannot enqueue the {what}"), e))?;
    Ok(())
}

/// Creates a pending result blob (unless one exists: a resubmission) and returns its ETag,
/// which travels with the command so the worker can write the answer without reading first.
async fn create_result<T: serde::Serialize>(
    config: &AppConfig,
    blob: &str,
    pending: &T,
) -> Result<Option<String>, ApiError> {
    let written = store::write(
        &config.account,
        &config.results_container,
        blob,
        pending,
        Condition::Create,
    )
    .await
    .map_err(|e| ApiError::storage("cannot create the result blob", e))?;
    Ok(match written {
        Written::Ok(etag) => etag.map(|e| e.to_string()),
        Written::Conflict => None,
    })
}

/// A read-only SAS URL for one result blob, as browsers reach it.
async fn result_url(config: &AppConfig, blob: &str) -> Result<String, ApiError> {
    let url = config
        .account
        .blob_read_url(
            &config.results_container,
            blob,
            time::OffsetDateTime::now_utc() + registration::RESULT_URL_LIFETIME,
        )
        .await
        .map_err(|e| ApiError::storage("cannot sign the result URL", e))?;
    Ok(registration::public_url(
        &url,
        config.account.blob_service().url(),
        config.public_blob_endpoint.as_ref(),
    ))
}

/// All routes of the web role.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/", get(pages::register_page))
        .route("/inventory", get(pages::inventory_page))
        .route(
            "/api/registrations",
            post(registration::register).layer(DefaultBodyLimit::max(REGISTRATION_BODY_LIMIT)),
        )
        .route("/api/inventory", get(inventory::query))
        .route(
            "/api/inventory/locations/{location}",
            get(inventory::location),
        )
        .route(
            "/api/inventory/adjustments",
            post(inventory::adjust).layer(DefaultBodyLimit::max(ADJUSTMENT_BODY_LIMIT)),
        )
        .route(
            "/api/inventory/stocktakes",
            post(stocktake::upload).layer(DefaultBodyLimit::max(STOCKTAKE_BODY_LIMIT)),
        )
        .route("/inventory/events", get(inventory::events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let in_flight = i64::try_from(state.admission.in_flight()).unwrap_or(i64::MAX);
    state.metrics.commands_in_flight.set(in_flight);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    state
        .metrics
        .responses
        .get_or_create(&RouteLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
