//! Inventory: scanner adjustments applied to one read-model blob with optimistic concurrency.
//!
//! A whole batch is applied in one read-modify-write (`If-Match` on the ETag; on conflict,
//! re-read and re-apply), so many workers converge without locks. Each applied `commandId` is
//! remembered in the read model for 24 h: a redelivered or resubmitted command counts once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Handler, Outcome};
use crate::messages::{self, InventoryAdjustment};
use crate::store::{self, Condition, StoreError, Written};

/// Name of the read-model blob.
pub const READ_MODEL: &str = "inventory.json";
/// How long applied command ids are remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Conflicting writes tolerated before the batch is left for redelivery.
const MAX_ATTEMPTS: u32 = 20;

/// The stored read model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadModel {
    /// Incremented by every write.
    pub version: u64,
    /// When it was last written (RFC 3339).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Stock per location, per item.
    #[serde(default)]
    pub stock: BTreeMap<String, BTreeMap<String, i64>>,
    /// Applied command ids and when (Unix seconds), for deduplication.
    #[serde(default)]
    pub applied: BTreeMap<String, i64>,
}

impl ReadModel {
    /// Applies `adjustments` not applied before; returns how many were new.
    pub fn apply(&mut self, adjustments: &[&InventoryAdjustment], now: OffsetDateTime) -> usize {
        let now_s = now.unix_timestamp();
        let horizon = now_s - DEDUP_WINDOW.as_secs() as i64;
        self.applied.retain(|_, at| *at >= horizon);
        let mut new = 0;
        for adj in adjustments {
            if self.applied.contains_key(&adj.command_id) {
                continue;
            }
            *self
                .stock
                .entry(adj.location.clone())
                .or_default()
                .entry(adj.item.clone())
                .or_default() += adj.delta;
            self.applied.insert(adj.command_id.clone(), now_s);
            new += 1;
        }
        self.version += 1;
        self.updated_at = now
            .replace_nanosecond(0)
            .unwrap_or(now)
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        new
    }

    /// The public view: stock per location and totals per item (no dedup bookkeeping).
    pub fn public(&self) -> serde_json::Value {
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        for items in self.stock.values() {
            for (item, qty) in items {
                *totals.entry(item.as_str()).or_default() += qty;
            }
        }
        serde_json::json!({
            "version": self.version,
            "updatedAt": self.updated_at,
            "locations": self.stock,
            "totals": totals,
        })
    }
}

/// Handles inventory adjustments.
#[derive(Clone, Debug)]
pub struct Inventory {
    account: cqrs_storage::StorageAccount,
    container: String,
}

impl Inventory {
    /// A handler keeping the read model in `container`.
    pub fn new(account: cqrs_storage::StorageAccount, container: String) -> Self {
        Self { account, container }
    }

    async fn apply_batch(&self, adjustments: &[&InventoryAdjustment]) -> Result<bool, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (mut model, condition) =
                match store::read::<ReadModel>(&self.account, &self.container, READ_MODEL).await? {
                    Some((model, Some(etag))) => (model, Condition::Match(etag)),
                    Some((model, None)) => (model, Condition::Any),
                    None => (ReadModel::default(), Condition::Create),
                };
            model.apply(adjustments, OffsetDateTime::now_utc());
            match store::write(
                &self.account,
                &self.container,
                READ_MODEL,
                &model,
                condition,
            )
            .await?
            {
                Written::Ok(_) => return Ok(true),
                Written::Conflict => {
                    // Another worker wrote first; back off a little (more each time) and retry.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1) + jitter))
                        .await;
                }
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl Handler for Arc<Inventory> {
    type Command = InventoryAdjustment;

    fn decode(&self, text: &str) -> Result<InventoryAdjustment, String> {
        messages::decode(text)
    }

    async fn handle(&self, batch: &[InventoryAdjustment]) -> Vec<Outcome> {
        let checks: Vec<Result<(), String>> = batch
            .iter()
            .map(|a| a.validate().map_err(|e| messages::describe(&e)))
            .collect();
        let valid: Vec<&InventoryAdjustment> = batch
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.is_ok())
            .map(|(a, _)| a)
            .collect();
        let applied = if valid.is_empty() {
            Ok(true)
        } else {
            self.apply_batch(&valid).await
        };
        checks
            .into_iter()
            .map(|check| match (check, &applied) {
                (Err(reason), _) => Outcome::Reject(format!("invalid adjustment: {reason}")),
                (Ok(()), Ok(true)) => Outcome::Done,
                (Ok(()), Ok(false)) => {
                    Outcome::Retry("too many conflicting writes to the read model".into())
                }
                (Ok(()), Err(e)) => Outcome::Retry(e.to_string()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adj(id: &str, location: &str, item: &str, delta: i64) -> InventoryAdjustment {
        InventoryAdjustment {
            command_id: id.into(),
            location: location.into(),
            item: item.into(),
            delta,
        }
    }

    #[test]
    fn a_command_applied_twice_counts_once() {
        let mut model = ReadModel::default();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (
            adj("c1", "downtown", "apple", 5),
            adj("c2", "downtown", "apple", -2),
        );
        assert_eq!(model.apply(&[&a, &b, &a], now), 2);
        assert_eq!(model.apply(&[&a], now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 3);
        assert_eq!(model.version, 2);
    }

    #[test]
    fn old_command_ids_are_forgotten_after_the_window() {
        let mut model = ReadModel::default();
        let then = OffsetDateTime::now_utc() - time::Duration::hours(25);
        model.apply(&[&adj("old", "a", "b", 1)], then);
        model.apply(&[&adj("new", "a", "b", 1)], OffsetDateTime::now_utc());
        assert!(!model.applied.contains_key("old"));
        assert!(model.applied.contains_key("new"));
    }

    #[test]
    fn the_public_view_has_totals_and_no_bookkeeping() {
        let mut model = ReadModel::default();
        model.apply(
            &[
                &adj("1", "downtown", "apple", 5),
                &adj("2", "harbour", "apple", 2),
                &adj("3", "harbour", "cherry", 1),
            ],
            OffsetDateTime::now_utc(),
        );
        let view = model.public();
        assert_eq!(view["totals"]["apple"], 7);
        assert_eq!(view["locations"]["harbour"]["cherry"], 1);
        assert!(view.get("applied").is_none());
    }
}
