//! The result of a stock take, in the blob the uploader polls
//! (`results/stocktakes/<stocktakeId>.json`, read through the SAS URL the web role answered).

use serde::{Deserialize, Serialize};

use crate::messages::{CountedStock, LineError};

/// Rejected lines listed in a result; past this only their number is given.
pub const MAX_LISTED_REJECTIONS: usize = 1000;

/// Where a stock take is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Accepted, not applied yet.
    #[default]
    Pending,
    /// Applied to the read model (its good lines).
    Applied,
    /// Could not be applied at all (see `error`).
    Failed,
}

/// The result blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockTakeResult {
    /// Where it is.
    pub status: Status,
    /// Lines applied.
    #[serde(default)]
    pub lines_applied: usize,
    /// Lines rejected.
    #[serde(default)]
    pub lines_rejected: usize,
    /// The first [`MAX_LISTED_REJECTIONS`] rejected lines with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<LineError>,
    /// Why it failed as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StockTakeResult {
    /// The result of applying `counted`.
    pub fn applied(counted: &CountedStock) -> Self {
        Self {
            status: Status::Applied,
            lines_applied: counted.lines.len(),
            lines_rejected: counted.rejected.len(),
            rejected: counted
                .rejected
                .iter()
                .take(MAX_LISTED_REJECTIONS)
                .cloned()
                .collect(),
            error: None,
        }
    }

    /// A stock take that could not be applied.
    pub fn failed(error: String) -> Self {
        Self {
            status: Status::Failed,
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Name of the result blob of stock take `id`.
pub fn result_blob(id: &str) -> String {
    format!("stocktakes/{id}.json")
}
