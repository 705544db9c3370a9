//! Inventory: scanner adjustments and stock takes applied to the partitioned read model
//! ([`crate::inventory`]) with optimistic concurrency.
//!
//! A batch is grouped by partition and each partition gets one read-modify-write (`If-Match` on
//! its ETag; on conflict, re-read and re-apply), so many workers converge without locks and an
//! adjustment rewrites only its location's partition, whatever the size of the shop. A command
//! is done when every partition it touches has it; otherwise it is redelivered, and the
//! partitions that have it already skip it (each remembers the commands applied to it). A stock
//! take sets the counted quantity of every (location, item) it names; its result blob says how
//! many lines were applied and which were rejected.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::stocktake::{self, StockTakeResult};
use super::{Handler, Outcome};
use crate::inventory::{Change, layout, writer};
use crate::messages::{self, CountedStock, InventoryAdjustment, StockLine, StockTake};
use crate::metrics::AppMetrics;
use crate::store::{self, Condition, StoreError};

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
#[derive(Debug)]
pub struct Inventory {
    account: cqrs_storage::StorageAccount,
    results: String,
    writer: writer::Writer,
    metrics: Arc<AppMetrics>,
}

impl Inventory {
    /// A handler keeping the read model in `container` and stock-take results in `results`,
    /// counting its writes in `metrics`.
    pub fn new(
        account: cqrs_storage::StorageAccount,
        container: String,
        results: String,
        metrics: Arc<AppMetrics>,
    ) -> Self {
        Self {
            writer: writer::Writer::new(account.clone(), container),
            account,
            results,
            metrics,
        }
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

/// Partition -> the changes of a batch to it; and partition -> the commands (by index) that
/// change it.
type Grouped<'a> = (Vec<(u64, Vec<Change<'a>>)>, BTreeMap<u64, Vec<usize>>);

/// Groups a batch's good commands by the partitions they change.
fn group_by_partition<'a>(
    batch: &'a [InventoryCommand],
    checks: &'a [Result<Option<CountedStock>, String>],
) -> Grouped<'a> {
    let mut groups: BTreeMap<u64, Vec<Change<'a>>> = BTreeMap::new();
    let mut members: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, (command, check)) in batch.iter().zip(checks).enumerate() {
        match (command, check) {
            (InventoryCommand::Adjust(adj), Ok(_)) => {
                let p = layout::partition_of(&adj.location);
                groups.entry(p).or_default().push(Change::Adjust(adj));
                members.entry(p).or_default().push(i);
            }
            (InventoryCommand::StockTake(take), Ok(Some(counted))) => {
                let mut lines: BTreeMap<u64, Vec<&'a StockLine>> = BTreeMap::new();
                for line in &counted.lines {
                    lines
                        .entry(layout::partition_of(&line.location))
                        .or_default()
                        .push(line);
                }
                for (p, lines) in lines {
                    groups.entry(p).or_default().push(Change::Count {
                        id: &take.stocktake_id,
                        lines,
                    });
                    members.entry(p).or_default().push(i);
                }
            }
            _ => {}
        }
    }
    (groups.into_iter().collect(), members)
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
        let (groups, members) = group_by_partition(batch, &checks);
        // Per command: the first failure among its partitions (`None`: all applied).
        let mut failed: Vec<Option<String>> = vec![None; batch.len()];
        for (p, outcome) in self.writer.apply_all(groups).await {
            let reason = match outcome {
                Ok(Some(conflicts)) => {
                    self.metrics.readmodel_writes.inc();
                    self.metrics
                        .readmodel_conflicts
                        .inc_by(u64::from(conflicts));
                    continue;
                }
                Ok(None) => "too many conflicting writes to the read model".to_string(),
                Err(e) => e.to_string(),
            };
            for &i in members.get(&p).into_iter().flatten() {
                failed[i].get_or_insert_with(|| reason.clone());
            }
        }
        let outcomes = batch
            .iter()
            .zip(checks)
            .zip(failed)
            .map(|((command, check), failed)| {
                async move {
                    match (check, failed) {
                        (Err(reason), _) => Outcome::Reject(reason),
                        (Ok(_), Some(reason)) => Outcome::Retry(reason),
                        (Ok(None), None) => Outcome::Done,
                        (Ok(Some(counted)), None) => {
                            let InventoryCommand::StockTake(take) = command else {
                                return Outcome::Done;
                            };
                            let result = StockTakeResult::applied(&counted);
                            match self.write_result(&take.stocktake_id, &result).await {
                                Ok(()) => Outcome::Done,
                                // NB: applied already; the redelivery counts once and writes this.
                                Err(e) => Outcome::Retry(format!(
                                    "cannot write the stock-take result: {e}"
                                )),
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

    fn adjustment(id: &str, location: &str) -> InventoryCommand {
        InventoryCommand::Adjust(InventoryAdjustment {
            command_id: id.into(),
            location: location.into(),
            item: "apple".into(),
            delta: 1,
        })
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
    fn a_batch_is_one_change_list_per_partition_and_a_stock_take_joins_each_it_touches() {
        let take = InventoryCommand::decode(
            r#"{"stocktakeId":"s","csv":"location,item,quantity\ndowntown,a,1\nharbour,b,2\ndowntown,c,3"}"#,
        )
        .unwrap();
        let batch = vec![
            adjustment("1", "downtown"),
            adjustment("2", "harbour"),
            adjustment("3", "downtown"),
            take,
            InventoryCommand::Adjust(InventoryAdjustment {
                command_id: "bad".into(),
                location: "downtown".into(),
                item: "apple".into(),
                delta: 0,
            }),
        ];
        let checks: Vec<_> = batch.iter().map(InventoryCommand::check).collect();
        assert!(checks[4].is_err());
        let (groups, members) = group_by_partition(&batch, &checks);
        let (down, harb) = (
            layout::partition_of("downtown"),
            layout::partition_of("harbour"),
        );
        assert_ne!(down, harb, "the test needs two partitions");
        assert_eq!(groups.len(), 2);
        assert_eq!(members[&down], vec![0, 2, 3]);
        assert_eq!(members[&harb], vec![1, 3]);
        let downtown = &groups.iter().find(|(p, _)| *p == down).unwrap().1;
        assert_eq!(downtown.len(), 3);
        let Change::Count { lines, .. } = &downtown[2] else {
            panic!("the stock take's downtown lines come last");
        };
        assert_eq!(lines.len(), 2, "only its lines in this partition");
    }
}
