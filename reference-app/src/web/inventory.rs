//! Inventory commands (`POST /api/inventory/adjustments`, scanner key required) and queries
//! (`GET /api/inventory`, `GET /inventory/events`), served from a cache that follows the
//! read-model blob by ETag: no request ever reads storage.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use azure_core::http::Etag;
use azure_storage_blob::models::BlobClientDownloadOptions;
use cqrs_storage::{SdkError, StorageAccount};
use futures::Stream;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::{ApiError, AppState};
use crate::messages::InventoryAdjustment;
use crate::worker::inventory::{READ_MODEL, ReadModel};

/// How often the cache checks the read-model blob's ETag.
pub const REFRESH: Duration = Duration::from_millis(500);

/// One version of the public read model.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// ETag of the blob it came from (`None`: no blob yet).
    pub etag: Option<String>,
    /// The public JSON.
    pub json: Arc<str>,
    /// The same, parsed (for the page).
    pub model: Arc<serde_json::Value>,
}

impl Snapshot {
    fn of(model: &ReadModel, etag: Option<String>) -> Self {
        let value = model.public();
        Self {
            etag,
            json: value.to_string().into(),
            model: Arc::new(value),
        }
    }
}

/// The cached read model; subscribers are told about every change.
#[derive(Debug)]
pub struct InventoryCache {
    current: watch::Sender<Snapshot>,
    closed: watch::Sender<bool>,
}

impl Default for InventoryCache {
    fn default() -> Self {
        Self {
            current: watch::Sender::new(Snapshot::of(&ReadModel::default(), None)),
            closed: watch::Sender::new(false),
        }
    }
}

impl InventoryCache {
    /// The latest snapshot.
    pub fn current(&self) -> Snapshot {
        self.current.borrow().clone()
    }

    /// Fetches the blob if its ETag changed; returns whether the snapshot changed.
    pub async fn refresh(
        &self,
        account: &StorageAccount,
        container: &str,
    ) -> Result<bool, SdkError> {
        let known = self.current.borrow().etag.clone();
        let options = BlobClientDownloadOptions {
            if_none_match: known.clone().map(Etag::from),
            ..Default::default()
        };
        let result = match account
            .blob(container, READ_MODEL)
            .download(Some(options))
            .await
        {
            Ok(result) => result,
            Err(e) => match e.http_status().map(u16::from) {
                Some(304) => return Ok(false),
                Some(404) if known.is_none() => return Ok(false),
                _ => return Err(SdkError(e)),
            },
        };
        let etag = result.properties.etag.as_ref().map(ToString::to_string);
        let bytes = result.body.collect().await.map_err(SdkError)?;
        match serde_json::from_slice::<ReadModel>(&bytes) {
            Ok(model) => {
                self.current.send_replace(Snapshot::of(&model, etag));
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(
                    "the inventory read model is not valid JSON; keeping the last good one: {e}"
                );
                Ok(false)
            }
        }
    }

    /// Keeps the cache fresh until [`InventoryCache::close`].
    pub fn spawn_refresher(
        self: &Arc<Self>,
        account: StorageAccount,
        container: String,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            let mut failing = false;
            while !*closed.borrow() {
                match cache.refresh(&account, &container).await {
                    Ok(_) if failing => {
                        tracing::info!("the inventory read model is readable again");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        tracing::warn!(
                            "cannot refresh the inventory read model (serving the last one): {e}"
                        );
                        failing = true;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(REFRESH) => {}
                    _ = closed.changed() => {}
                }
            }
        })
    }

    /// Stops the refresher and ends every event stream (for a graceful shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Server-sent events: the current model at once, then every change.
    fn events(&self) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let updates = self.current.subscribe();
        let closed = self.closed.subscribe();
        futures::stream::unfold(
            (updates, closed, true),
            |(mut updates, mut closed, first)| async move {
                if !first {
                    tokio::select! {
                        changed = updates.changed() => changed.ok()?,
                        _ = closed.changed() => return None,
                    }
                }
                if *closed.borrow() {
                    return None;
                }
                let snapshot = updates.borrow_and_update().clone();
                Some((
                    Ok(Event::default().event("inventory").data(&*snapshot.json)),
                    (updates, closed, false),
                ))
            },
        )
    }
}

/// `GET /api/inventory`: the public read model, with an ETag.
pub async fn query(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let snapshot = state.inventory.current();
    let etag = format!("\"v{}\"", snapshot.model["version"].as_u64().unwrap_or(0));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        snapshot.json.to_string(),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /inventory/events`: server-sent events with the read model.
pub async fn events(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(state.inventory.events())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Whether the request carries the scanners' key.
pub(super) fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = state.scanner_key.as_deref() else {
        return false;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    bool::from(presented.as_bytes().ct_eq(key.as_bytes()))
}

/// `POST /api/inventory/adjustments`: enqueue a scanner's adjustment.
pub async fn adjust(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<InventoryAdjustment>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !authorized(&state, &headers) {
        return Err(ApiError::Unauthorized);
    }
    let adjustment = body
        .map_err(|r| ApiError::from_json(r, super::ADJUSTMENT_BODY_LIMIT))?
        .0;
    adjustment.validate().map_err(ApiError::Fields)?;
    let _admitted = state.admission.enter()?;
    let cfg = &state.config;
    super::enqueue(cfg, &cfg.inventory_queue, &adjustment, "adjustment").await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "commandId": adjustment.command_id })),
    ))
}
