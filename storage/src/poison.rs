//! Poison queues: see what failed without changing it (peek), and put it back on its queue
//! (redrive).
//!
//! A redrive copies each message to the queue first and deletes it from the poison queue
//! second, oldest first. A crash between the two leaves the message in both: the poison copy
//! reappears once its hold (the visibility timeout the redrive took it with) expires, and the
//! next redrive moves it again. So a message can be delivered twice, never lost; the workers
//! are idempotent.

use std::ops::ControlFlow;
use std::time::Duration;

use azure_core::http::RequestContent;
use azure_storage_blob::models::BlockBlobClientUploadOptions;
use azure_storage_queue::models::{
    QueueClientPeekMessagesOptions, QueueClientReceiveMessagesOptions, QueueMessage,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::claims::ClaimAction;
use crate::queues::{MAX_PEEK, poison_queue_name};
use crate::{Error, SdkError, StorageAccount};

/// How long a redrive keeps a message it is moving invisible in the poison queue: if the
/// redrive dies, the message reappears there after this and the next redrive moves it.
pub const REDRIVE_HOLD: Duration = Duration::from_secs(60);

/// Why, and after how many deliveries, a worker poisoned a message. Kept beside it as the blob
/// `<claim-check container>/poisoned/<queue>/<poison message id>.json`: a queue message has no
/// metadata, and its text must stay as it was so a redrive can put it back unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoisonRecord {
    /// Deliveries before it was poisoned.
    pub tries: u32,
    /// The worker's reason.
    pub reason: String,
}

/// Name of the record of poison message `id` of `queue`.
pub fn record_blob(queue: &str, id: &str) -> String {
    format!("{RECORD_PREFIX}{queue}/{id}.json")
}

/// Where the records live in the claim-check container.
pub const RECORD_PREFIX: &str = "poisoned/";

/// One message of a poison queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoisonMessage {
    /// Message id in the poison queue.
    pub id: String,
    /// When it was put in the poison queue.
    pub inserted: Option<OffsetDateTime>,
    /// Times it was received from the poison queue (by redrives that did not finish).
    pub dequeue_count: u64,
    /// Its text, exactly as stored.
    pub text: String,
    /// What the worker recorded when it poisoned it, if it could.
    pub record: Option<PoisonRecord>,
}

impl PoisonMessage {
    /// The first `chars` characters of its text, decoded when the text is base64 of UTF-8
    /// JSON (as several SDKs send).
    pub fn preview(&self, chars: usize) -> String {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.text.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|t| serde_json::from_str::<serde_json::Value>(t).is_ok());
        let text = decoded.as_deref().unwrap_or(&self.text);
        let mut preview: String = text.chars().take(chars).collect();
        if text.chars().count() > chars {
            preview.push('…');
        }
        preview
    }
}

/// What a redrive did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Ids (in the poison queue) of the messages moved, oldest first.
    pub moved: Vec<String>,
    /// Messages copied back whose poison copy could not be deleted: they will come back to
    /// the poison queue listing and be moved again by the next redrive (a duplicate, not a loss).
    pub not_deleted: Vec<String>,
}

impl StorageAccount {
    /// The first `max` (at most 32) messages of `queue`'s poison queue, oldest first, without
    /// changing them.
    pub async fn peek_poison(&self, queue: &str, max: u32) -> Result<Vec<PoisonMessage>, Error> {
        let name = poison_queue_name(queue);
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_PEEK) as i32),
            ..Default::default()
        };
        let peek_err = |e| Error::ProbeQueue {
            name: name.clone(),
            source: SdkError(e),
        };
        let peeked = self
            .queue(&name)?
            .peek_messages(Some(options))
            .await
            .map_err(peek_err)?
            .into_model()
            .map_err(peek_err)?;
        Ok(peeked
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(PoisonMessage {
                    id: m.message_id?,
                    inserted: m.insertion_time,
                    dequeue_count: u64::try_from(m.dequeue_count.unwrap_or(0)).unwrap_or(0),
                    text: m.message_text.unwrap_or_default(),
                    record: None,
                })
            })
            .collect())
    }

    /// Records why poison message `id` of `queue` was poisoned, in `container`.
    pub async fn record_poisoned(
        &self,
        container: &str,
        queue: &str,
        id: &str,
        record: &PoisonRecord,
    ) -> Result<(), Error> {
        let name = record_blob(queue, id);
        let body = serde_json::to_vec(record).unwrap_or_default();
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            ..Default::default()
        };
        self.blob(container, &name)
            .upload(azure_core::Bytes::from(body).into(), Some(options))
            .await
            .map_err(|e| Error::Claim {
                action: ClaimAction::Write,
                blob: format!("{container}/{name}"),
                source: SdkError(e),
            })?;
        Ok(())
    }

    /// Fills in the [`PoisonRecord`] of each of `messages` of `queue` found in `container`.
    pub async fn read_poison_records(
        &self,
        container: &str,
        queue: &str,
        messages: &mut [PoisonMessage],
    ) {
        let reads = messages.iter().map(|m| async move {
            let blob = self.blob(container, &record_blob(queue, &m.id));
            let body = blob.download(None).await.ok()?.body.collect().await.ok()?;
            serde_json::from_slice::<PoisonRecord>(&body).ok()
        });
        let records = futures::future::join_all(reads).await;
        for (m, record) in messages.iter_mut().zip(records) {
            m.record = record;
        }
    }

    async fn delete_poison_record(&self, container: &str, queue: &str, id: &str) {
        let name = record_blob(queue, id);
        if let Err(e) = self.blob(container, &name).delete(None).await
            && e.http_status().map(u16::from) != Some(404)
        {
            tracing::warn!(
                "cannot delete {container}/{name} (the sweep will): {}",
                SdkError(e)
            );
        }
    }

    /// Moves up to `max` messages of `queue`'s poison queue back onto `queue`, oldest first,
    /// text byte for byte: each is copied, then deleted from the poison queue. `hold` is how
    /// long a message taken from the poison queue stays invisible there while it is moved (if
    /// the redrive dies, it reappears after that and the next redrive moves it). `after_copy`
    /// is told each copied id; `Break` stops the redrive at once, as a crash between the copy
    /// and the delete would (the tests use it). `records`: the claim-check container, whose
    /// [`PoisonRecord`]s of the moved messages are deleted.
    pub async fn redrive(
        &self,
        queue: &str,
        max: usize,
        hold: Duration,
        records: Option<&str>,
        mut after_copy: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Redriven, Error> {
        let poison_name = poison_queue_name(queue);
        let poison = self.queue(&poison_name)?;
        let target = self.queue(queue)?;
        let mut done = Redriven::default();
        while done.moved.len() < max {
            let want = (max - done.moved.len()).min(MAX_PEEK as usize);
            let options = QueueClientReceiveMessagesOptions {
                number_of_messages: Some(want as i32),
                visibility_timeout: Some(i32::try_from(hold.as_secs().max(1)).unwrap_or(60)),
                ..Default::default()
            };
            let receive_err = |e| Error::ProbeQueue {
                name: poison_name.clone(),
                source: SdkError(e),
            };
            let batch = poison
                .receive_messages(Some(options))
                .await
                .map_err(receive_err)?
                .into_model()
                .map_err(receive_err)?
                .items
                .unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            // NB: one at a time, so the queue gets them back in their order.
            for m in batch {
                let (Some(id), Some(pop)) = (m.message_id, m.pop_receipt) else {
                    continue;
                };
                let text = m.message_text.unwrap_or_default();
                // NB: a redriven claim check's blob must outlive the new message (7 days
                // from now), not the old one: refresh its mark before the copy.
                if let Some(Ok(claim)) = crate::claims::ClaimCheck::parse(&text) {
                    self.mark_claim_poisoned(&claim).await?;
                }
                let copy = QueueMessage {
                    message_text: Some(text),
                };
                let send_err = |e| Error::SendMessage {
                    queue: queue.into(),
                    source: SdkError(e),
                };
                let content: RequestContent<QueueMessage, _> = copy.try_into().map_err(send_err)?;
                target.send_message(content, None).await.map_err(send_err)?;
                if after_copy(&id).is_break() {
                    return Ok(done);
                }
                match poison.delete_message(&id, &pop, None).await {
                    Ok(_) => {
                        if let Some(container) = records {
                            self.delete_poison_record(container, queue, &id).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(message = %id, "copied back to {queue} but cannot delete from {poison_name}: {}", SdkError(e));
                        done.not_deleted.push(id.clone());
                    }
                }
                done.moved.push(id);
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned(text: &str) -> PoisonMessage {
        PoisonMessage {
            id: "m".into(),
            inserted: None,
            dequeue_count: 0,
            text: text.into(),
            record: None,
        }
    }

    #[test]
    fn previews_decode_base64_json_and_are_cut() {
        let json = r#"{"commandId":"c1","delta":3}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        assert_eq!(poisoned(&b64).preview(200), json);
        assert_eq!(
            poisoned("not base64 at all!").preview(200),
            "not base64 at all!"
        );
        // base64 of something that is not JSON stays as it is.
        let word = base64::engine::general_purpose::STANDARD.encode("hello");
        assert_eq!(poisoned(&word).preview(200), word);
        assert_eq!(poisoned(&"x".repeat(300)).preview(200).chars().count(), 201);
    }
}
