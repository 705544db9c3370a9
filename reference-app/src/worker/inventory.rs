//! Inventory: scanner adjustments and stock takes applied to one read-model blob with
//! optimistic concurrency.
//!
//! A whole batch is applied in one read-modify-write (`If-Match` on the ETag; on conflict,
//! re-read and re-apply), so many workers converge without locks. Each applied `commandId` is
//! remembered in the read model for 24 h (a stock take as `stocktake:<id>`): a redelivered or
//! resubmitted command counts once. A stock take sets the counted quantity of every (location,
//! item) it names; its result blob says how many lines were applied and which were rejected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::stocktake::{self, StockTakeResult};
use super::{Handler, Outcome};
use crate::messages::{self, CountedStock, InventoryAdjustment, StockLine, StockTake};
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

/// What one command does to the read model.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// Add a scanner's delta.
    Adjust(&'a InventoryAdjustment),
    /// Set the counted quantities of a stock take.
    Count {
        /// The stock take's id.
        id: &'a str,
        /// Its good lines.
        lines: &'a [StockLine],
    },
}

impl Change<'_> {
    /// The key remembered in `applied`, so a command counts once.
    fn key(&self) -> String {
        match self {
            Change::Adjust(adj) => adj.command_id.clone(),
            Change::Count { id, .. } => format!("stocktake:{id}"),
        }
    }
}

impl ReadModel {
    /// Applies the changes not applied before; returns how many were new.
    pub fn apply(&mut self, changes: &[Change<'_>], now: OffsetDateTime) -> usize {
        let now_s = now.unix_timestamp();
        let horizon = now_s - DEDUP_WINDOW.as_secs() as i64;
        self.applied.retain(|_, at| *at >= horizon);
        let mut new = 0;
        for change in changes {
            let key = change.key();
            if self.applied.contains_key(&key) {
                continue;
            }
            match change {
                Change::Adjust(adj) => {
                    *self
                        .stock
                        .entry(adj.location.clone())
                        .or_default()
                        .entry(adj.item.clone())
                        .or_default() += adj.delta;
                }
                Change::Count { lines, .. } => {
                    // NB: an item counted on several lines (several shelves) is their sum.
                    let mut counted: BTreeMap<(&str, &str), i64> = BTreeMap::new();
                    for line in *lines {
                        *counted.entry((&line.location, &line.item)).or_default() += line.quantity;
                    }
                    for ((location, item), quantity) in counted {
                        self.stock
                            .entry(location.to_string())
                            .or_default()
                            .insert(item.to_string(), quantity);
                    }
                }
            }
            self.applied.insert(key, now_s);
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

/// A command on the inventory queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventoryCommand {
    /// A scanner's adjustment.
    Adjust(InventoryAdjustment),
    /// A stock take (usually through the claim check: 10,000 lines are about 400 KiB).
    StockTake(Box<StockTake>),
}

impl InventoryCommand {
    /// Decodes a message: a stock take has a `stocktakeId`, an adjustment a `commandId`.
    pub fn decode(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = messages::decode(text)?;
        if value.get("stocktakeId").is_some() {
            serde_json::from_value(value)
                .map(|take| Self::StockTake(Box::new(take)))
                .map_err(|e| format!("invalid stock take: {e}"))
        } else {
            serde_json::from_value(value)
                .map(Self::Adjust)
                .map_err(|e| format!("invalid adjustment: {e}"))
        }
    }

    /// Checks the command; a stock take's lines are counted here, once per delivery.
    fn check(&self) -> Result<Option<CountedStock>, String> {
        match self {
            Self::Adjust(adj) => adj
                .validate()
                .map(|()| None)
                .map_err(|e| format!("invalid adjustment: {}", messages::describe(&e))),
            Self::StockTake(take) => take
                .validate()
                .map(|()| Some(take.count()))
                .map_err(|e| format!("invalid stock take: {}", messages::describe(&e))),
        }
    }
}

/// Handles inventory commands.
#[derive(Clone, Debug)]
pub struct Inventory {
    account: cqrs_storage::StorageAccount,
    container: String,
    results: String,
}

impl Inventory {
    /// A handler keeping the read model in `container` and stock-take results in `results`.
    pub fn new(account: cqrs_storage::StorageAccount, container: String, results: String) -> Self {
        Self {
            account,
            container,
            results,
        }
    }

    async fn apply_batch(&self, changes: &[Change<'_>]) -> Result<bool, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (mut model, condition) =
                match store::read::<ReadModel>(&self.account, &self.container, READ_MODEL).await? {
                    Some((model, Some(etag))) => (model, Condition::Match(etag)),
                    Some((model, None)) => (model, Condition::Any),
                    None => (ReadModel::default(), Condition::Create),
                };
            model.apply(changes, OffsetDateTime::now_utc());
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

    /// Writes a stock take's result blob (whatever was there: the result is the same on every
    /// delivery).
    async fn write_result(&self, id: &str, result: &StockTakeResult) -> Result<(), StoreError> {
        store::write(
            &self.account,
            &self.results,
            &stocktake::result_blob(id),
            result,
            Condition::Any,
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl Handler for Arc<Inventory> {
    type Command = InventoryCommand;

    fn decode(&self, text: &str) -> Result<InventoryCommand, String> {
        InventoryCommand::decode(text)
    }

    async fn handle(&self, batch: &[InventoryCommand]) -> Vec<Outcome> {
        let checks: Vec<Result<Option<CountedStock>, String>> =
            batch.iter().map(InventoryCommand::check).collect();
        let changes: Vec<Change<'_>> = batch
            .iter()
            .zip(&checks)
            .filter_map(|(command, check)| match (command, check) {
                (InventoryCommand::Adjust(adj), Ok(_)) => Some(Change::Adjust(adj)),
                (InventoryCommand::StockTake(take), Ok(Some(counted))) => Some(Change::Count {
                    id: &take.stocktake_id,
                    lines: &counted.lines,
                }),
                _ => None,
            })
            .collect();
        let applied = if changes.is_empty() {
            Ok(true)
        } else {
            self.apply_batch(&changes).await
        };
        let outcomes = batch.iter().zip(checks).map(|(command, check)| {
            let applied = &applied;
            async move {
                match (check, applied) {
                    (Err(reason), _) => Outcome::Reject(reason),
                    (Ok(_), Ok(false)) => {
                        Outcome::Retry("too many conflicting writes to the read model".into())
                    }
                    (Ok(_), Err(e)) => Outcome::Retry(e.to_string()),
                    (Ok(None), Ok(true)) => Outcome::Done,
                    (Ok(Some(counted)), Ok(true)) => {
                        let InventoryCommand::StockTake(take) = command else {
                            return Outcome::Done;
                        };
                        let result = StockTakeResult::applied(&counted);
                        match self.write_result(&take.stocktake_id, &result).await {
                            Ok(()) => Outcome::Done,
                            // NB: applied already; the redelivery counts once and writes this.
                            Err(e) => {
                                Outcome::Retry(format!("cannot write the stock-take result: {e}"))
                            }
                        }
                    }
                }
            }
        });
        futures::future::join_all(outcomes).await
    }

    async fn poisoned(&self, command: Option<&InventoryCommand>, reason: &str) {
        let Some(InventoryCommand::StockTake(take)) = command else {
            return;
        };
        // NB: the uploader polls this blob; give it the reason so it stops waiting.
        let result =
            StockTakeResult::failed(format!("the stock take could not be applied: {reason}"));
        if let Err(e) = self.write_result(&take.stocktake_id, &result).await {
            tracing::warn!(stocktake = %take.stocktake_id, "cannot write the failed result after poisoning ({reason}): {e}");
        }
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

    fn adjust<'a>(adjustments: &[&'a InventoryAdjustment]) -> Vec<Change<'a>> {
        adjustments.iter().map(|a| Change::Adjust(a)).collect()
    }

    fn line(location: &str, item: &str, quantity: i64) -> StockLine {
        StockLine {
            location: location.into(),
            item: item.into(),
            quantity,
        }
    }

    #[test]
    fn a_stock_take_sets_the_counted_pairs_once_and_sums_repeated_lines() {
        let mut model = ReadModel::default();
        let now = OffsetDateTime::now_utc();
        let before = adj("c1", "downtown", "apple", 5);
        let plum = adj("c2", "harbour", "plum", 2);
        model.apply(&adjust(&[&before, &plum]), now);
        let lines = [
            line("downtown", "apple", 3),
            line("downtown", "apple", 4),
            line("downtown", "cherry", 1),
        ];
        let count = Change::Count {
            id: "st-1",
            lines: &lines,
        };
        assert_eq!(model.apply(&[count], now), 1);
        assert_eq!(model.stock["downtown"]["apple"], 7);
        assert_eq!(model.stock["downtown"]["cherry"], 1);
        assert_eq!(
            model.stock["harbour"]["plum"], 2,
            "pairs not counted are left alone"
        );
        let after = adj("c3", "downtown", "apple", -1);
        model.apply(&adjust(&[&after]), now);
        // A redelivered stock take must not undo the adjustment made since.
        assert_eq!(model.apply(&[count], now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 6);
        assert!(model.applied.contains_key("stocktake:st-1"));
    }

    #[test]
    fn commands_decode_by_their_id_field() {
        let adjustment =
            InventoryCommand::decode(r#"{"commandId":"c","location":"l","item":"i","delta":1}"#)
                .unwrap();
        assert!(matches!(adjustment, InventoryCommand::Adjust(_)));
        let take = InventoryCommand::decode(
            r#"{"stocktakeId":"s","csv":"location,item,quantity\na,b,1"}"#,
        )
        .unwrap();
        assert!(matches!(take, InventoryCommand::StockTake(_)));
        let err = InventoryCommand::decode(r#"{"stocktakeId":7}"#).unwrap_err();
        assert!(err.starts_with("invalid stock take"), "{err}");
    }

    #[test]
    fn a_command_applied_twice_counts_once() {
        let mut model = ReadModel::default();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (
            adj("c1", "downtown", "apple", 5),
            adj("c2", "downtown", "apple", -2),
        );
        assert_eq!(model.apply(&adjust(&[&a, &b, &a]), now), 2);
        assert_eq!(model.apply(&adjust(&[&a]), now), 0);
        assert_eq!(model.stock["downtown"]["apple"], 3);
        assert_eq!(model.version, 2);
    }

    #[test]
    fn old_command_ids_are_forgotten_after_the_window() {
        let mut model = ReadModel::default();
        let then = OffsetDateTime::now_utc() - time::Duration::hours(25);
        model.apply(&adjust(&[&adj("old", "a", "b", 1)]), then);
        model.apply(
            &adjust(&[&adj("new", "a", "b", 1)]),
            OffsetDateTime::now_utc(),
        );
        assert!(!model.applied.contains_key("old"));
        assert!(model.applied.contains_key("new"));
    }

    #[test]
    fn the_public_view_has_totals_and_no_bookkeeping() {
        let mut model = ReadModel::default();
        model.apply(
            &adjust(&[
                &adj("1", "downtown", "apple", 5),
                &adj("2", "harbour", "apple", 2),
                &adj("3", "harbour", "cherry", 1),
            ]),
            OffsetDateTime::now_utc(),
        );
        let view = model.public();
        assert_eq!(view["totals"]["apple"], 7);
        assert_eq!(view["locations"]["harbour"]["cherry"], 1);
        assert!(view.get("applied").is_none());
    }
}
