//! The claim check: commands larger than a queue message travel as a blob.
//!
//! A queue message holds at most 64 KiB. A sender whose command body is larger than the
//! threshold ([`DEFAULT_THRESHOLD_BYTES`], 48 KiB, so that a base64-encoding SDK still fits)
//! writes the body to a blob in the app's claim-check container and enqueues a small
//! reference instead, the envelope:
//!
//! ```json
//! {"claimCheck": {"version": 1, "container": "pieshop-claims", "blob": "inventory/6f1c...",
//!   "size": 409600, "contentType": "application/json", "sha256": "9f86d0..."}}
//! ```
//!
//! A worker that receives an envelope downloads the blob, checks its size and SHA-256, and
//! handles the body like any small command; it deletes the blob only after the message is
//! deleted, so a redelivered reference still finds it. Blobs of poisoned messages are marked
//! ([`POISONED_METADATA`]) and kept with their message; blobs whose message can no longer
//! exist (older than the queue's message time-to-live) are swept by [`StorageAccount::sweep_claims`].
//!
//! The envelope is plain JSON (or base64 of it, as some SDKs send), so producers in any
//! language can send one: upload the blob, then send the envelope.

use std::collections::HashMap;
use std::time::Duration;

use azure_core::http::RequestContent;
use azure_storage_blob::models::{
    BlobContainerClientListBlobsOptions, BlobItem, BlockBlobClientUploadOptions,
    ListBlobsIncludeItem,
};
use azure_storage_queue::models::{QueueClientSendMessageOptions, QueueMessage};
use base64::Engine as _;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::{Error, SdkError, StorageAccount};

/// Bodies above this many bytes go through a blob unless the app sets its own threshold.
pub const DEFAULT_THRESHOLD_BYTES: u32 = 48 * 1024;
/// Smallest threshold an app may set.
pub const MIN_THRESHOLD_BYTES: u32 = 1024;
/// Largest threshold an app may set: 48 KiB of text is 64 KiB once base64-encoded, Azure's
/// message limit.
pub const MAX_THRESHOLD_BYTES: u32 = 48 * 1024;
/// Largest claimed body a worker reads into memory; a bigger one is poisoned.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Metadata key set on the blob of a poisoned message, and refreshed when it is redriven (its
/// value: Unix seconds); the sweep keeps the blob [`POISONED_RETENTION`] from then.
pub const POISONED_METADATA: &str = "cqrspoisoned";
/// How long a poisoned message's blob is kept: the time-to-live of the poison copy (Azure's
/// default of 7 days, which the workers give it).
pub const POISONED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Envelope version this code writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;
/// Envelopes are small; text longer than this is never one (keeps detection cheap).
const MAX_ENVELOPE_BYTES: usize = 4096;

/// The reference a queue message carries instead of a large body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimCheck {
    /// Envelope version (1).
    #[serde(default = "default_version")]
    pub version: u32,
    /// The claim-check container (the app's; a worker refuses any other).
    pub container: String,
    /// Blob name within it (`<queue>/<uuid>` when sent by [`CommandSender`]).
    pub blob: String,
    /// Body length in bytes.
    pub size: u64,
    /// MIME type of the body (`application/json`, `text/csv`, ...).
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
}

fn default_version() -> u32 {
    ENVELOPE_VERSION
}

fn default_content_type() -> String {
    "application/json".into()
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "claimCheck")]
    claim_check: ClaimCheck,
}

impl ClaimCheck {
    /// The envelope JSON a queue message carries.
    pub fn to_message(&self) -> String {
        serde_json::to_string(&Envelope {
            claim_check: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Reads a message's text: `None` when it is not an envelope (a plain command), the
    /// reference when it is one, an error saying what is wrong with a broken envelope.
    pub fn parse(text: &str) -> Option<Result<Self, String>> {
        let text = text.trim();
        if text.len() > MAX_ENVELOPE_BYTES {
            return None;
        }
        let json;
        let text = if text.starts_with('{') {
            text
        } else {
            // NB: several SDKs base64-encode message text by default.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?;
            json = String::from_utf8(bytes).ok()?;
            json.trim()
        };
        if !text.contains("\"claimCheck\"") {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let object = value.as_object()?;
        if !object.contains_key("claimCheck") {
            return None;
        }
        if object.len() != 1 {
            return Some(Err(
                "a claim-check envelope holds only the `claimCheck` object".into(),
            ));
        }
        Some(
            serde_json::from_value::<Envelope>(value)
                .map_err(|e| format!("invalid claim-check envelope: {e}"))
                .and_then(|e| e.claim_check.checked()),
        )
    }

    fn checked(self) -> Result<Self, String> {
        if self.version != ENVELOPE_VERSION {
            return Err(format!(
                "claim-check envelope version {} is not supported (this worker reads version {ENVELOPE_VERSION})",
                self.version
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("claim-check sha256 must be 64 hex digits".into());
        }
        if self.blob.is_empty() || self.blob.len() > 1024 {
            return Err("claim-check blob name must be 1-1024 characters".into());
        }
        if self.size > MAX_BODY_BYTES {
            return Err(format!(
                "claimed body of {} bytes is larger than the {MAX_BODY_BYTES} bytes a worker reads",
                self.size
            ));
        }
        Ok(self)
    }

    /// `container/blob`, for messages.
    pub fn location(&self) -> String {
        format!("{}/{}", self.container, self.blob)
    }
}

/// Lowercase hex SHA-256 of `body`.
pub fn sha256_hex(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What was done to a claim-check blob when it failed ([`Error::Claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAction {
    /// Uploading it.
    Write,
    /// Listing the container (the sweep).
    List,
    /// Marking it poisoned.
    Mark,
    /// Deleting it.
    Delete,
}

impl std::fmt::Display for ClaimAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimAction::Write => "write",
            ClaimAction::List => "list",
            ClaimAction::Mark => "mark",
            ClaimAction::Delete => "delete",
        })
    }
}

/// Why a claimed body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// It can never be had (missing, altered, foreign container): poison the message.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed for now: leave the message for redelivery.
    #[error("cannot read claim-check blob {blob}: {source}")]
    Unavailable {
        /// `container/blob`.
        blob: String,
        /// The SDK's reason.
        source: SdkError,
    },
}

/// How a command went onto its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// As the message itself.
    Inline,
    /// As a blob, with this reference on the queue.
    Claimed(ClaimCheck),
}

/// Sends commands of any size: inline up to the threshold, through a claim-check blob above.
#[derive(Clone, Debug)]
pub struct CommandSender {
    account: StorageAccount,
    container: String,
    threshold: usize,
}

impl CommandSender {
    /// Claims go to `container` for bodies over `threshold_bytes`.
    pub fn new(account: StorageAccount, container: String, threshold_bytes: u32) -> Self {
        Self {
            account,
            container,
            threshold: threshold_bytes as usize,
        }
    }

    /// The claim-check container.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Enqueues `body` on `queue` with a time-to-live (`-1`: never expire). A body over the
    /// threshold is written to `<container>/<queue>/<uuid>` first and a reference enqueued;
    /// if the enqueue then fails, the blob is left for the sweep.
    pub async fn send(
        &self,
        queue: &str,
        body: &str,
        content_type: &str,
        ttl_seconds: i64,
    ) -> Result<Sent, Error> {
        let (text, sent) = if body.len() > self.threshold {
            let claim = self.upload(queue, body, content_type).await?;
            (claim.to_message(), Sent::Claimed(claim))
        } else {
            (body.to_string(), Sent::Inline)
        };
        let content: RequestContent<QueueMessage, _> = QueueMessage {
            message_text: Some(text),
        }
        .try_into()
        .map_err(|e| Error::SendMessage {
            queue: queue.into(),
            source: SdkError(e),
        })?;
        let options = QueueClientSendMessageOptions {
            message_time_to_live: Some(i32::try_from(ttl_seconds).unwrap_or(-1)),
            ..Default::default()
        };
        self.account
            .queue(queue)?
            .send_message(content, Some(options))
            .await
            .map_err(|e| Error::SendMessage {
                queue: queue.into(),
                source: SdkError(e),
            })?;
        Ok(sent)
    }

    async fn upload(
        &self,
        queue: &str,
        body: &str,
        content_type: &str,
    ) -> Result<ClaimCheck, Error> {
        let claim = ClaimCheck {
            version: ENVELOPE_VERSION,
            container: self.container.clone(),
            blob: format!("{queue}/{}", uuid::Uuid::new_v4()),
            size: body.len() as u64,
            content_type: content_type.into(),
            sha256: sha256_hex(body.as_bytes()),
        };
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some(content_type.into()),
            ..Default::default()
        };
        let content: RequestContent<azure_core::Bytes, _> =
            azure_core::Bytes::copy_from_slice(body.as_bytes()).into();
        self.account
            .blob(&self.container, &claim.blob)
            .upload(content, Some(options))
            .await
            .map_err(|e| Error::Claim {
                action: ClaimAction::Write,
                blob: claim.location(),
                source: SdkError(e),
            })?;
        Ok(claim)
    }
}

/// What one sweep of a claim-check container did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Orphaned blobs deleted.
    pub deleted: usize,
    /// Blobs kept (their message may still exist).
    pub kept: usize,
}

impl StorageAccount {
    /// Downloads and checks the body `claim` names; `container` is the app's claim-check
    /// container (an envelope naming another one is refused).
    pub async fn fetch_claim(
        &self,
        claim: &ClaimCheck,
        container: &str,
    ) -> Result<String, ClaimError> {
        let location = claim.location();
        if claim.container != container {
            return Err(ClaimError::Invalid(format!(
                "claim-check blob {location} is not in this app's claim-check container {container}"
            )));
        }
        let unavailable = |e| ClaimError::Unavailable {
            blob: location.clone(),
            source: SdkError(e),
        };
        let result = match self.blob(container, &claim.blob).download(None).await {
            Ok(result) => result,
            Err(e) if e.http_status().map(u16::from) == Some(404) => {
                return Err(ClaimError::Invalid(format!(
                    "claim-check blob {location} does not exist (deleted, or never uploaded)"
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        if let Some(length) = result.properties.content_length
            && length != claim.size
        {
            return Err(ClaimError::Invalid(format!(
                "claim-check blob {location} holds {length} bytes, the envelope says {}",
                claim.size
            )));
        }
        let body = result.body.collect().await.map_err(unavailable)?;
        if body.len() as u64 != claim.size {
            return Err(ClaimError::Invalid(format!(
                "claim-check blob {location} holds {} bytes, the envelope says {}",
                body.len(),
                claim.size
            )));
        }
        let hash = sha256_hex(&body);
        if !hash.eq_ignore_ascii_case(&claim.sha256) {
            return Err(ClaimError::Invalid(format!(
                "claim-check blob {location} has SHA-256 {hash}, the envelope says {} (altered after it was sent)",
                claim.sha256
            )));
        }
        String::from_utf8(body.to_vec()).map_err(|_| {
            ClaimError::Invalid(format!("claim-check blob {location} is not UTF-8 text"))
        })
    }

    /// Deletes the blob of a handled command; one already gone is not an error.
    pub async fn delete_claim(&self, claim: &ClaimCheck) -> Result<(), Error> {
        match self.blob(&claim.container, &claim.blob).delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(()),
            Err(e) => Err(Error::Claim {
                action: ClaimAction::Delete,
                blob: claim.location(),
                source: SdkError(e),
            }),
        }
    }

    /// Marks the blob of a poisoned (or redriven) command with the time, so the sweep keeps it
    /// as long as the message's copy lives.
    pub async fn mark_claim_poisoned(&self, claim: &ClaimCheck) -> Result<(), Error> {
        let metadata = HashMap::from([(
            POISONED_METADATA.to_string(),
            OffsetDateTime::now_utc().unix_timestamp().to_string(),
        )]);
        match self
            .blob(&claim.container, &claim.blob)
            .set_metadata(&metadata, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(()),
            Err(e) => Err(Error::Claim {
                action: ClaimAction::Mark,
                blob: claim.location(),
                source: SdkError(e),
            }),
        }
    }

    /// Deletes the blobs under `<container>/<queue>/` whose message can no longer exist: older
    /// than `message_ttl` (plus a margin for clock skew), or, for poisoned ones, older than
    /// [`POISONED_RETENTION`]. `None`: messages never expire, only poisoned blobs are swept.
    /// The queue's poison records go after [`POISONED_RETENTION`] too, like their poison copy.
    pub async fn sweep_claims(
        &self,
        container: &str,
        queue: &str,
        message_ttl: Option<Duration>,
    ) -> Result<Swept, Error> {
        let records = format!("{}{queue}/", crate::poison::RECORD_PREFIX);
        self.sweep_prefix(container, &records, Some(POISONED_RETENTION))
            .await?;
        let margin = message_ttl.map(|ttl| ttl + ttl.min(Duration::from_secs(60)));
        self.sweep_prefix(container, &format!("{queue}/"), margin)
            .await
    }

    /// Deletes the blobs under `prefix` past [`kept_until`] (`keep` for unmarked ones).
    async fn sweep_prefix(
        &self,
        container: &str,
        prefix: &str,
        keep: Option<Duration>,
    ) -> Result<Swept, Error> {
        let list_err = |e| Error::Claim {
            action: ClaimAction::List,
            blob: format!("{container}/{prefix}"),
            source: SdkError(e),
        };
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.into()),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let now = OffsetDateTime::now_utc();
        let mut pages = self
            .container(container)
            .list_blobs(Some(options))
            .map_err(list_err)?
            .into_pages();
        let mut swept = Swept::default();
        while let Some(page) = pages.try_next().await.map_err(list_err)? {
            for item in page.into_model().map_err(list_err)?.blob_items {
                let Some(name) = item.name.clone() else {
                    continue;
                };
                if kept_until(&item, keep).is_none_or(|until| now <= until) {
                    swept.kept += 1;
                    continue;
                }
                match self.blob(container, &name).delete(None).await {
                    Ok(_) => swept.deleted += 1,
                    Err(e) if e.http_status().map(u16::from) == Some(404) => {}
                    Err(e) => {
                        return Err(Error::Claim {
                            action: ClaimAction::Delete,
                            blob: format!("{container}/{name}"),
                            source: SdkError(e),
                        });
                    }
                }
            }
        }
        Ok(swept)
    }
}

/// Until when a listed blob is kept: a poisoned one [`POISONED_RETENTION`] from its mark (the
/// time it was poisoned or redriven), any other one `keep` from its creation; `None`: forever.
fn kept_until(item: &BlobItem, keep: Option<Duration>) -> Option<OffsetDateTime> {
    let created = item
        .properties
        .as_ref()
        .and_then(|p| p.creation_time.or(p.last_modified));
    let marked = item
        .metadata
        .as_ref()
        .and_then(|m| m.values.as_ref())
        .and_then(|v| v.get(POISONED_METADATA))
        .map(|at| {
            at.parse::<i64>()
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        });
    match marked {
        Some(at) => Some(at.or(created)? + POISONED_RETENTION),
        None => Some(created? + keep?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> ClaimCheck {
        ClaimCheck {
            version: 1,
            container: "pieshop-claims".into(),
            blob: "inventory/abc".into(),
            size: 5,
            content_type: "application/json".into(),
            sha256: sha256_hex(b"hello"),
        }
    }

    #[test]
    fn an_envelope_round_trips_plain_and_base64() {
        let text = claim().to_message();
        assert!(text.starts_with(r#"{"claimCheck":{"version":1,"#), "{text}");
        assert_eq!(ClaimCheck::parse(&text), Some(Ok(claim())));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        assert_eq!(ClaimCheck::parse(&b64), Some(Ok(claim())));
    }

    #[test]
    fn plain_commands_are_not_envelopes() {
        for text in [
            r#"{"commandId":"c1","location":"a","item":"b","delta":1}"#,
            "not json",
            "",
            r#"{"note":"mentions \"claimCheck\" in a string"}"#,
            r#"["claimCheck"]"#,
        ] {
            assert_eq!(ClaimCheck::parse(text), None, "{text}");
        }
        let big = format!(r#"{{"claimCheck":{{}},"pad":"{}"}}"#, "x".repeat(5000));
        assert_eq!(ClaimCheck::parse(&big), None);
    }

    #[test]
    fn broken_envelopes_say_what_is_wrong() {
        let cases = [
            (r#"{"claimCheck":{"container":"c"}}"#, "missing field"),
            (
                r#"{"claimCheck":{"version":2,"container":"c","blob":"b","size":1,"sha256":"00"}}"#,
                "version 2",
            ),
            (
                r#"{"claimCheck":{"container":"c","blob":"b","size":1,"sha256":"xyz"}}"#,
                "64 hex digits",
            ),
            (r#"{"claimCheck":{},"extra":1}"#, "only the `claimCheck`"),
            (
                r#"{"claimCheck":{"container":"c","blob":"b","size":1,"sha256":"00","colour":"red"}}"#,
                "unknown field",
            ),
        ];
        for (text, wanted) in cases {
            let err = ClaimCheck::parse(text).expect("an envelope").unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
        let mut huge = claim();
        huge.size = MAX_BODY_BYTES + 1;
        let err = ClaimCheck::parse(&huge.to_message()).unwrap().unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn the_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
