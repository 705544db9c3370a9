//! JSON blobs with optimistic concurrency: reads return the ETag, writes are conditional
//! (`If-None-Match: *` to create, `If-Match` to replace), and a lost race is a value, not an
//! error.

use azure_core::http::{Etag, RequestContent};
use azure_storage_blob::models::{BlobClientDownloadOptions, BlockBlobClientUploadOptions};
use cqrs_storage::{SdkError, StorageAccount};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a write must relate to what is stored.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Whatever is there (creates or replaces).
    Any,
    /// Only if the blob does not exist.
    Create,
    /// Only if the blob still has this ETag.
    Match(Etag),
}

/// The outcome of a conditional write.
#[derive(Debug)]
pub enum Written {
    /// Stored; the new ETag.
    Ok(Option<Etag>),
    /// Someone else wrote first (409 or 412).
    Conflict,
}

/// Why a blob could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage call failed.
    #[error("blob {blob}: {source}")]
    Storage {
        /// `container/name`.
        blob: String,
        /// The SDK's reason.
        source: SdkError,
    },
    /// The blob holds something that is not the expected JSON.
    #[error("blob {blob} holds invalid JSON: {reason}")]
    Corrupt {
        /// `container/name`.
        blob: String,
        /// The parser's reason.
        reason: String,
    },
    /// Other writers kept winning the race for the blob; the work is left for later.
    #[error("blob {blob}: too many conflicting writes")]
    Contended {
        /// `container/name`.
        blob: String,
    },
}

impl StoreError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Storage { source, .. } if source.is_transient())
    }
}

/// What a conditional read found.
#[derive(Debug)]
pub enum Read<T> {
    /// No such blob.
    Missing,
    /// Still the ETag the reader knows.
    Unchanged,
    /// The content and its ETag.
    Found(T, Option<Etag>),
}

/// Reads `container/name` as JSON: `None` when it does not exist.
pub async fn read<T: DeserializeOwned>(
    account: &StorageAccount,
    container: &str,
    name: &str,
) -> Result<Option<(T, Option<Etag>)>, StoreError> {
    Ok(
        match read_if_changed(account, container, name, None).await? {
            Read::Found(value, etag) => Some((value, etag)),
            Read::Missing | Read::Unchanged => None,
        },
    )
}

/// Reads `container/name` as JSON unless its ETag is still `known` (`If-None-Match`).
pub async fn read_if_changed<T: DeserializeOwned>(
    account: &StorageAccount,
    container: &str,
    name: &str,
    known: Option<&Etag>,
) -> Result<Read<T>, StoreError> {
    let blob = format!("{container}/{name}");
    let options = BlobClientDownloadOptions {
        if_none_match: known.cloned(),
        ..Default::default()
    };
    let result = match account.blob(container, name).download(Some(options)).await {
        Ok(result) => result,
        Err(e) => match e.http_status().map(u16::from) {
            Some(404) => return Ok(Read::Missing),
            Some(304) => return Ok(Read::Unchanged),
            _ => {
                return Err(StoreError::Storage {
                    blob,
                    source: SdkError(e),
                });
            }
        },
    };
    let etag = result.properties.etag.clone();
    let bytes = result
        .body
        .collect()
        .await
        .map_err(|e| StoreError::Storage {
            blob: blob.clone(),
            source: SdkError(e),
        })?;
    let value = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        blob,
        reason: e.to_string(),
    })?;
    Ok(Read::Found(value, etag))
}

/// Writes `value` as JSON to `container/name` under `condition`.
pub async fn write<T: Serialize>(
    account: &StorageAccount,
    container: &str,
    name: &str,
    value: &T,
    condition: Condition,
) -> Result<Written, StoreError> {
    let blob = format!("{container}/{name}");
    let body = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        blob: blob.clone(),
        reason: e.to_string(),
    })?;
    let mut options = BlockBlobClientUploadOptions {
        blob_content_type: Some("application/json".into()),
        // NB: browsers poll result blobs; they must never see a cached copy.
        blob_cache_control: Some("no-store".into()),
        ..Default::default()
    };
    match condition {
        Condition::Any => {}
        Condition::Create => options.if_none_match = Some(Etag::from("*")),
        Condition::Match(etag) => options.if_match = Some(etag),
    }
    let content: RequestContent<azure_core::Bytes, _> = azure_core::Bytes::from(body).into();
    match account
        .blob(container, name)
        .upload(content, Some(options))
        .await
    {
        Ok(result) => Ok(Written::Ok(result.etag)),
        Err(e) if matches!(e.http_status().map(u16::from), Some(409 | 412)) => {
            Ok(Written::Conflict)
        }
        Err(e) => Err(StoreError::Storage {
            blob,
            source: SdkError(e),
        }),
    }
}
