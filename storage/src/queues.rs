//! Idempotent queue operations and the queue-depth probe.

use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders as _, QueueClientPeekMessagesOptions,
};

use crate::{Error, SdkError, StorageAccount};

/// Most messages one peek returns (a service limit).
pub const MAX_PEEK: u32 = 32;

/// Suffix of the poison queue that receives messages dequeued too often.
pub const POISON_SUFFIX: &str = "-poison";

/// The poison queue of `queue`.
pub fn poison_queue_name(queue: &str) -> String {
    format!("{queue}{POISON_SUFFIX}")
}

/// What an `ensure_*` call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The resource was created by this call.
    Created,
    /// The resource was already there.
    Existed,
}

/// One observation of a queue's depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// The service's approximate count: visible **and** invisible (in-flight) messages. Never
    /// lower than the real count, possibly higher.
    pub approximate: u64,
    /// The exact number of visible messages, counted by peeking, when the queue is small enough
    /// (approximate count <= 32) for one peek to see them all.
    pub visible: Option<u64>,
}

impl QueueDepth {
    /// Messages waiting to be picked up: exact when known, else the approximate count.
    pub fn backlog(&self) -> u64 {
        self.visible.unwrap_or(self.approximate)
    }

    /// Messages received by a worker but not yet deleted (invisible), when that can be told
    /// apart from the backlog; `None` means "unknown, assume some may be in flight".
    pub fn in_flight(&self) -> Option<u64> {
        self.visible.map(|v| self.approximate.saturating_sub(v))
    }
}

impl StorageAccount {
    /// Creates `name` unless it exists.
    pub async fn ensure_queue(&self, name: &str) -> Result<Ensured, Error> {
        let queue = self.queue(name)?;
        match queue.create(None).await {
            Ok(rsp) if u16::from(rsp.status()) == 201 => Ok(Ensured::Created),
            Ok(_) => Ok(Ensured::Existed),
            Err(e) => {
                let e = SdkError(e);
                match e.code() {
                    // Same name, different metadata: it exists; we never set metadata.
                    Some("QueueAlreadyExists") => Ok(Ensured::Existed),
                    _ => Err(Error::CreateQueue {
                        name: name.into(),
                        source: e,
                    }),
                }
            }
        }
    }

    /// Creates `name` and its poison queue unless they exist.
    pub async fn ensure_queue_with_poison(&self, name: &str) -> Result<Ensured, Error> {
        let main = self.ensure_queue(name).await?;
        self.ensure_queue(&poison_queue_name(name)).await?;
        Ok(main)
    }

    /// Deletes `name`; a queue that is already gone is not an error. Returns whether it existed.
    pub async fn delete_queue(&self, name: &str) -> Result<bool, Error> {
        match self.queue(name)?.delete(None).await {
            Ok(_) => Ok(true),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(false),
            Err(e) => Err(Error::DeleteQueue {
                name: name.into(),
                source: SdkError(e),
            }),
        }
    }

    /// Reads the depth of `name`: one metadata call, plus one peek when the queue is small.
    pub async fn queue_depth(&self, name: &str) -> Result<QueueDepth, Error> {
        let probe_err = |e| Error::ProbeQueue {
            name: name.into(),
            source: SdkError(e),
        };
        let queue = self.queue(name)?;
        let props = queue.get_properties(None).await.map_err(probe_err)?;
        let approximate = props
            .approximate_messages_count()
            .map_err(probe_err)?
            .unwrap_or(0);
        let approximate = u64::try_from(approximate).unwrap_or(0);
        if approximate == 0 {
            return Ok(QueueDepth {
                approximate,
                visible: Some(0),
            });
        }
        if approximate > u64::from(MAX_PEEK) {
            return Ok(QueueDepth {
                approximate,
                visible: None,
            });
        }
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(MAX_PEEK as i32),
            ..Default::default()
        };
        let peeked = queue
            .peek_messages(Some(options))
            .await
            .map_err(probe_err)?
            .into_model()
            .map_err(probe_err)?;
        let visible = peeked.items.map_or(0, |items| items.len() as u64);
        // NB: messages can arrive between the two calls; never report more visible than total.
        Ok(QueueDepth {
            approximate: approximate.max(visible),
            visible: Some(visible),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_prefers_the_exact_visible_count() {
        let d = QueueDepth {
            approximate: 7,
            visible: Some(3),
        };
        assert_eq!(d.backlog(), 3);
        assert_eq!(d.in_flight(), Some(4));
        let big = QueueDepth {
            approximate: 900,
            visible: None,
        };
        assert_eq!(big.backlog(), 900);
        assert_eq!(big.in_flight(), None);
    }

    #[test]
    fn poison_queue_is_suffixed() {
        assert_eq!(poison_queue_name("registrations"), "registrations-poison");
    }
}
