//! `POST /api/inventory/stocktakes` (scanner key): a whole stock take as CSV (`text/csv`, a
//! `location,item,quantity` header) or JSON (`application/json`: an array of lines, or
//! `{"lines": [...]}`), up to 8 MiB. Checked as a whole here (header, line count); lines are
//! checked one by one by the worker, which reports the bad ones with their line numbers in the
//! result blob. Answered `202 {stocktakeId, resultUrl}`. A 10,000-line stock take (~400 KiB) is
//! far over a queue message's 64 KiB: it travels through the claim check.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, STOCKTAKE_BODY_LIMIT};
use crate::messages::StockTake;
use crate::worker::stocktake::{StockTakeResult, result_blob};

/// Query parameters of an upload.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadParams {
    /// The client's own id, so a resubmitted upload counts once (default: a new UUID).
    pub stocktake_id: Option<String>,
}

fn field(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::Fields([(name.to_string(), message.into())].into())
}

/// The stock take command for a body of `content_type`.
fn command(id: String, content_type: &str, text: &str) -> Result<StockTake, ApiError> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut take = StockTake {
        stocktake_id: id,
        csv: None,
        lines: None,
        result_etag: None,
    };
    match essence.as_str() {
        "text/csv" => take.csv = Some(text.to_string()),
        "application/json" => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| field("body", format!("is not valid JSON: {e}")))?;
            take.lines = Some(match value {
                Value::Array(lines) => lines,
                Value::Object(mut object) => match object.remove("lines") {
                    Some(Value::Array(lines)) => lines,
                    _ => return Err(field("lines", "must be an array of lines")),
                },
                _ => {
                    return Err(field(
                        "body",
                        "must be an array of lines or an object with `lines`",
                    ));
                }
            });
        }
        other => {
            return Err(ApiError::UnsupportedType(format!(
                "a stock take is text/csv or application/json, not {:?}",
                if other.is_empty() { "(none)" } else { other }
            )));
        }
    }
    Ok(take)
}

/// Accepts a stock take.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !super::inventory::authorized(&state, &headers) {
        return Err(ApiError::Unauthorized);
    }
    let body =
        body.map_err(|r| ApiError::from_body(r.status(), r.body_text(), STOCKTAKE_BODY_LIMIT))?;
    let text = std::str::from_utf8(&body).map_err(|_| field("body", "must be UTF-8 text"))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let id = params
        .stocktake_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut take = command(id, content_type, text)?;
    take.validate().map_err(ApiError::Fields)?;
    let _admitted = state.admission.enter()?;
    let cfg = &state.config;
    let blob = result_blob(&take.stocktake_id);
    // NB: the pending result first, so the uploader can poll at once; a resubmission with the
    // same id finds it (and the worker counts the stock take once).
    take.result_etag = super::create_result(cfg, &blob, &StockTakeResult::default()).await?;
    super::enqueue(cfg, &cfg.inventory_queue, &take, "stock take").await?;
    let url = super::result_url(cfg, &blob).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "stocktakeId": take.stocktake_id, "resultUrl": url })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_commands_by_content_type() {
        let csv = command(
            "s".into(),
            "text/csv; charset=utf-8",
            "location,item,quantity\n",
        )
        .unwrap();
        assert!(csv.csv.is_some());
        let array = command("s".into(), "application/json", r#"[{"location":"a"}]"#).unwrap();
        assert_eq!(array.lines.map(|l| l.len()), Some(1));
        let object = command("s".into(), "Application/JSON", r#"{"lines":[]}"#).unwrap();
        assert_eq!(object.lines.map(|l| l.len()), Some(0));
        assert!(matches!(
            command("s".into(), "application/json", "{"),
            Err(ApiError::Fields(f)) if f["body"].contains("not valid JSON")
        ));
        assert!(matches!(
            command("s".into(), "application/json", r#"{"lines":3}"#),
            Err(ApiError::Fields(f)) if f.contains_key("lines")
        ));
        assert!(matches!(
            command("s".into(), "text/plain", "x"),
            Err(ApiError::UnsupportedType(m)) if m.contains("text/plain")
        ));
    }
}
