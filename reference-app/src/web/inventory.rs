//! Inventory commands (`POST /api/inventory/adjustments`, scanner key required) and queries
//! (`GET /api/inventory`, `GET /api/inventory/locations/{location}`, `GET /inventory/events`),
//! served from a cache that follows the read model's partitions: no request ever reads
//! storage, and no answer grows with the number of items (pages of at most
//! [`MAX_PAGE_SIZE`](super::inventory_view::MAX_PAGE_SIZE) rows; live updates carry only what
//! changed).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use azure_storage_blob::models::BlobContainerClientListBlobsOptions;
use cqrs_storage::{SdkError, StorageAccount};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch};

use super::inventory_view::{InventoryView, Loaded, Paging};
use super::{ApiError, AppState};
use crate::inventory::{Partition, layout};
use crate::messages::InventoryAdjustment;
use crate::store::{self, StoreError};

/// How often the cache lists the partitions' ETags.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Live updates kept for a slow event stream before it is told to re-read instead.
const DELTA_BACKLOG: usize = 64;
/// Partitions downloaded at once by a refresh.
const CONCURRENT_DOWNLOADS: usize = 8;

/// The cached read model; subscribers are told about every change.
#[derive(Debug)]
pub struct InventoryCache {
    current: watch::Sender<Arc<InventoryView>>,
    deltas: broadcast::Sender<Arc<str>>,
    closed: watch::Sender<bool>,
}

impl Default for InventoryCache {
    fn default() -> Self {
        Self {
            current: watch::Sender::new(Arc::new(InventoryView::default())),
            deltas: broadcast::Sender::new(DELTA_BACKLOG),
            closed: watch::Sender::new(false),
        }
    }
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Listing the partitions failed.
    #[error("cannot list the inventory partitions: {0}")]
    List(SdkError),
    /// Reading one failed.
    #[error(transparent)]
    Read(#[from] StoreError),
}

/// The partitions' blob names and ETags.
async fn list_partitions(
    account: &StorageAccount,
    container: &str,
) -> Result<Vec<(String, String)>, SdkError> {
    let options = BlobContainerClientListBlobsOptions {
        prefix: Some(layout::PREFIX.into()),
        ..Default::default()
    };
    let mut pages = account
        .container(container)
        .list_blobs(Some(options))?
        .into_pages();
    let mut out = Vec::new();
    while let Some(page) = pages.try_next().await? {
        for item in page.into_model()?.blob_items {
            let etag = item.properties.as_ref().and_then(|p| p.etag.as_ref());
            if let (Some(name), Some(etag)) = (item.name.clone(), etag) {
                out.push((name, etag.to_string()));
            }
        }
    }
    Ok(out)
}

impl InventoryCache {
    /// The latest view.
    pub fn current(&self) -> Arc<InventoryView> {
        self.current.borrow().clone()
    }

    /// Lists the partitions and loads those whose ETag changed; returns whether the view did.
    pub async fn refresh(
        &self,
        account: &StorageAccount,
        container: &str,
    ) -> Result<bool, RefreshError> {
        let listed = list_partitions(account, container)
            .await
            .map_err(RefreshError::List)?;
        let view = self.current();
        let stale: Vec<String> = listed
            .iter()
            .filter(|(name, etag)| view.partitions.get(name).is_none_or(|l| &l.etag != etag))
            .map(|(name, _)| name.clone())
            .collect();
        let gone: Vec<String> = view
            .partitions
            .keys()
            .filter(|name| !listed.iter().any(|(n, _)| n == *name))
            .cloned()
            .collect();
        if stale.is_empty() && gone.is_empty() {
            return Ok(false);
        }
        let reads: Vec<_> = stale
            .into_iter()
            .map(|name| async move {
                let read = store::read::<Partition>(account, container, &name).await;
                (name, read)
            })
            .collect();
        let reads: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .collect()
            .await;
        let mut changed = Vec::new();
        for (name, read) in reads {
            match read {
                Ok(Some((partition, etag))) => changed.push((
                    name,
                    Arc::new(Loaded {
                        etag: etag.map(|e| e.to_string()).unwrap_or_default(),
                        partition,
                    }),
                )),
                // Deleted between the listing and the read: gone at the next listing.
                Ok(None) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!("{e}; keeping the last good version of that partition");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (next, delta) = view.next(changed, &gone);
        self.current.send_replace(Arc::new(next));
        if !delta.is_empty() && self.deltas.receiver_count() > 0 {
            let _ = self.deltas.send(json(&delta).into());
        }
        Ok(true)
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

    /// Server-sent events: `hello` with the current version, then a `delta` per change (a
    /// `resync` when this stream fell behind: the client re-reads what it shows).
    fn events(&self) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let deltas = self.deltas.subscribe();
        let closed = self.closed.subscribe();
        let hello = Event::default()
            .event("hello")
            .data(json!({ "version": self.current().version }).to_string());
        let first = futures::stream::once(async move { Ok(hello) });
        let rest =
            futures::stream::unfold((deltas, closed), |(mut deltas, mut closed)| async move {
                let event = tokio::select! {
                    delta = deltas.recv() => match delta {
                        Ok(delta) => Event::default().event("delta").data(&*delta),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            Event::default().event("resync").data("{}")
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = closed.wait_for(|c| *c) => return None,
                };
                Some((Ok(event), (deltas, closed)))
            });
        first.chain(rest)
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// A JSON answer with an ETag (`304` when the client has it).
fn with_etag(headers: &HeaderMap, etag: String, body: &impl Serialize) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, "application/json")], json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /api/inventory?q=&page=&pageSize=`: the shop's totals and a page of locations with
/// theirs.
pub async fn query(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let paging = Paging::parse(&params).map_err(ApiError::Fields)?;
    let view = state.inventory.current();
    let page = view.locations_page(&paging);
    Ok(with_etag(&headers, format!("\"v{}\"", view.version), &page))
}

/// `GET /api/inventory/locations/{location}?q=&page=&pageSize=`: a page of one location's
/// items; 404 when it has no stock recorded.
pub async fn location(
    State(state): State<Arc<AppState>>,
    Path(location): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let paging = Paging::parse(&params).map_err(ApiError::Fields)?;
    let view = state.inventory.current();
    Ok(match view.location_page(&location, &paging) {
        Some(page) => with_etag(&headers, format!("\"v{}\"", page.summary.version), &page),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no stock is recorded at location {location:?}") })),
        )
            .into_response(),
    })
}

/// `GET /inventory/events`: server-sent events with what changed.
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
