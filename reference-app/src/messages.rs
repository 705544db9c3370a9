//! Commands as they travel on the queues, and their validation (shared by the web role, which
//! validates requests, and the workers, which also get messages put on the queue directly).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, format_description::well_known::Iso8601};

/// Field name -> what is wrong with it.
pub type FieldErrors = BTreeMap<String, String>;

/// A registration request (`POST /api/registrations`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationForm {
    /// First name.
    #[serde(default)]
    pub first_name: String,
    /// Last name.
    #[serde(default)]
    pub last_name: String,
    /// Email address.
    #[serde(default)]
    pub email: String,
    /// Date of birth, `YYYY-MM-DD`.
    #[serde(default)]
    pub date_of_birth: String,
}

/// The registration command on the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCommand {
    /// Registration id; names the result blob.
    pub id: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Email address, trimmed and lower-cased.
    pub email: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// ETag of the pending result blob the web role wrote, so the worker can write the token
    /// without reading the blob first (absent in commands put on the queue by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_etag: Option<String>,
}

/// A stock adjustment from a scanner (`POST /api/inventory/adjustments`, or straight onto the
/// queue as JSON or base64-encoded JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryAdjustment {
    /// Unique per scan: a command applied twice counts once.
    pub command_id: String,
    /// Where (a shop, a van).
    pub location: String,
    /// What (a pie).
    pub item: String,
    /// How many more (negative: fewer).
    pub delta: i64,
}

const MAX_NAME: usize = 100;
const MAX_ID: usize = 128;
const MAX_DELTA: i64 = 1_000_000;

fn text(errors: &mut FieldErrors, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.insert(field.into(), "is required".into());
    } else if value.chars().count() > max {
        errors.insert(field.into(), format!("must be at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        errors.insert(field.into(), "must not contain control characters".into());
    }
}

/// A plausible email address: one `@`, something before it, a dotted domain after it.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.len() <= 254
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

impl RegistrationForm {
    /// The command, or an error per bad field.
    pub fn into_command(self, id: String, today: Date) -> Result<RegisterCommand, FieldErrors> {
        let mut errors = FieldErrors::new();
        text(&mut errors, "firstName", &self.first_name, MAX_NAME);
        text(&mut errors, "lastName", &self.last_name, MAX_NAME);
        let email = self.email.trim().to_lowercase();
        if email.is_empty() {
            errors.insert("email".into(), "is required".into());
        } else if !valid_email(&email) {
            errors.insert("email".into(), "is not a valid email address".into());
        }
        match Date::parse(self.date_of_birth.trim(), &Iso8601::DATE) {
            Err(_) if self.date_of_birth.trim().is_empty() => {
                errors.insert("dateOfBirth".into(), "is required".into());
            }
            Err(_) => {
                errors.insert(
                    "dateOfBirth".into(),
                    "must be a date like 1990-04-23".into(),
                );
            }
            Ok(born) if born > today => {
                errors.insert("dateOfBirth".into(), "must not be in the future".into());
            }
            Ok(born) if today.year() - born.year() > 150 => {
                errors.insert(
                    "dateOfBirth".into(),
                    "must be within the last 150 years".into(),
                );
            }
            Ok(_) => {}
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RegisterCommand {
            id,
            first_name: self.first_name.trim().into(),
            last_name: self.last_name.trim().into(),
            email,
            date_of_birth: self.date_of_birth.trim().into(),
            result_etag: None,
        })
    }
}

impl RegisterCommand {
    /// Re-checks a command that came off the queue.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let form = RegistrationForm {
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            email: self.email.clone(),
            date_of_birth: self.date_of_birth.clone(),
        };
        let mut errors = match form.into_command(self.id.clone(), OffsetDateTime::now_utc().date())
        {
            Ok(_) => FieldErrors::new(),
            Err(e) => e,
        };
        if self.id.is_empty()
            || self.id.len() > MAX_ID
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            errors.insert(
                "id".into(),
                "must be 1-128 letters, digits or dashes".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl InventoryAdjustment {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        text(&mut errors, "commandId", &self.command_id, MAX_ID);
        text(&mut errors, "location", &self.location, MAX_NAME);
        text(&mut errors, "item", &self.item, MAX_NAME);
        if self.delta == 0 {
            errors.insert("delta".into(), "must not be 0".into());
        } else if self.delta.abs() > MAX_DELTA {
            errors.insert("delta".into(), format!("must be within ±{MAX_DELTA}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A stock take (`POST /api/inventory/stocktakes`, or through the claim check by any SDK):
/// counted quantities that replace the stock of every (location, item) pair it names. Lines
/// are checked one by one: bad ones are reported with their line number, the rest applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockTake {
    /// Unique per stock take: applied twice, it counts once. Names the result blob.
    pub stocktake_id: String,
    /// The lines as CSV with a `location,item,quantity` header (or set `lines`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// The lines as JSON objects `{"location", "item", "quantity"}` (or set `csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<serde_json::Value>>,
    /// ETag of the pending result blob the web role wrote (absent when sent by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_etag: Option<String>,
}

/// One counted line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockLine {
    /// Where.
    pub location: String,
    /// What.
    pub item: String,
    /// How many were counted.
    pub quantity: i64,
}

/// A line that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// CSV: the line in the file (the header is line 1). JSON: the 1-based position in `lines`.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// A stock take split into the lines to apply and the lines rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountedStock {
    /// Lines that passed every check.
    pub lines: Vec<StockLine>,
    /// Lines that did not, in order.
    pub rejected: Vec<LineError>,
}

/// Most lines in one stock take.
pub const MAX_STOCKTAKE_LINES: usize = 100_000;
/// Largest counted quantity on one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// The CSV header a stock take starts with (columns in any order).
pub const CSV_COLUMNS: [&str; 3] = ["location", "item", "quantity"];

fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes())
}

/// Where each of [`CSV_COLUMNS`] is in the header, or what is wrong with the header.
fn csv_columns(reader: &mut csv::Reader<&[u8]>) -> Result<[usize; 3], String> {
    let header = reader
        .headers()
        .map_err(|e| format!("the CSV header cannot be read: {e}"))?;
    let names: Vec<String> = header.iter().map(str::to_ascii_lowercase).collect();
    let mut at = [0; 3];
    for (slot, column) in at.iter_mut().zip(CSV_COLUMNS) {
        *slot = names.iter().position(|n| n == column).ok_or_else(|| {
            format!(
                "the CSV header must name the columns {} (found {:?})",
                CSV_COLUMNS.join(","),
                names.join(",")
            )
        })?;
    }
    Ok(at)
}

fn stock_line(
    location: &str,
    item: &str,
    quantity: Result<i64, String>,
) -> Result<StockLine, String> {
    let mut errors = FieldErrors::new();
    text(&mut errors, "location", location, MAX_NAME);
    text(&mut errors, "item", item, MAX_NAME);
    match &quantity {
        Err(reason) => {
            errors.insert("quantity".into(), reason.clone());
        }
        Ok(q) if !(0..=MAX_QUANTITY).contains(q) => {
            errors.insert(
                "quantity".into(),
                format!("must be between 0 and {MAX_QUANTITY}"),
            );
        }
        Ok(_) => {}
    }
    if !errors.is_empty() {
        return Err(describe(&errors));
    }
    Ok(StockLine {
        location: location.trim().into(),
        item: item.trim().into(),
        quantity: quantity.unwrap_or_default(),
    })
}

fn json_line(value: &serde_json::Value) -> Result<StockLine, String> {
    let Some(object) = value.as_object() else {
        return Err("must be an object with location, item and quantity".into());
    };
    let field = |name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let quantity = match object.get("quantity") {
        None => Err("is required".to_string()),
        Some(q) => q
            .as_i64()
            .ok_or_else(|| "must be a whole number".to_string()),
    };
    stock_line(field("location"), field("item"), quantity)
}

impl StockTake {
    /// Checks what must hold for the whole stock take (its id, one form of lines, the CSV
    /// header, the number of lines); single lines are checked by [`StockTake::count`].
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        if self.stocktake_id.is_empty()
            || self.stocktake_id.len() > MAX_ID
            || !self
                .stocktake_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            errors.insert(
                "stocktakeId".into(),
                "must be 1-128 letters, digits or dashes".into(),
            );
        }
        let lines = match (&self.csv, &self.lines) {
            (Some(csv), None) => match csv_columns(&mut csv_reader(csv)) {
                Ok(_) => Some(csv.lines().skip(1).filter(|l| !l.trim().is_empty()).count()),
                Err(reason) => {
                    errors.insert("csv".into(), reason);
                    None
                }
            },
            (None, Some(lines)) => Some(lines.len()),
            _ => {
                errors.insert("lines".into(), "set exactly one of csv or lines".into());
                None
            }
        };
        match lines {
            Some(0) => {
                errors.insert(
                    "lines".into(),
                    "a stock take needs at least one line".into(),
                );
            }
            Some(n) if n > MAX_STOCKTAKE_LINES => {
                errors.insert(
                    "lines".into(),
                    format!("{n} lines; a stock take has at most {MAX_STOCKTAKE_LINES}"),
                );
            }
            _ => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks every line: the ones to apply, and the ones rejected with their line number.
    pub fn count(&self) -> CountedStock {
        let mut counted = CountedStock::default();
        let mut keep = |line: u64, parsed: Result<StockLine, String>| match parsed {
            Ok(l) => counted.lines.push(l),
            Err(reason) => counted.rejected.push(LineError { line, reason }),
        };
        if let Some(lines) = &self.lines {
            for (i, value) in lines.iter().enumerate() {
                keep(i as u64 + 1, json_line(value));
            }
        } else if let Some(text) = &self.csv {
            let mut reader = csv_reader(text);
            let Ok(at) = csv_columns(&mut reader) else {
                keep(
                    1,
                    Err("the CSV header is not location,item,quantity".into()),
                );
                return counted;
            };
            // NB: the reader's own line numbers point at the blank lines before a record;
            // counted here from its byte offset instead (incrementally: 10,000 lines stay linear).
            let (mut seen, mut newlines) = (0usize, 0u64);
            let mut line_at = |byte: u64| {
                let mut start = usize::try_from(byte).unwrap_or(text.len()).min(text.len());
                while text
                    .as_bytes()
                    .get(start)
                    .is_some_and(|b| matches!(b, b'\r' | b'\n'))
                {
                    start += 1;
                }
                if start >= seen {
                    newlines += text.as_bytes()[seen..start]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                    seen = start;
                }
                newlines + 1
            };
            for record in reader.records() {
                match record {
                    Ok(r) => {
                        let line = r.position().map_or(0, |p| line_at(p.byte()));
                        if r.len() != CSV_COLUMNS.len() {
                            keep(
                                line,
                                Err(format!(
                                    "has {} fields, expected {}",
                                    r.len(),
                                    CSV_COLUMNS.len()
                                )),
                            );
                            continue;
                        }
                        let quantity = r[at[2]]
                            .parse::<i64>()
                            .map_err(|_| format!("{:?} is not a whole number", &r[at[2]]));
                        keep(line, stock_line(&r[at[0]], &r[at[1]], quantity));
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| line_at(p.byte()));
                        keep(line, Err(format!("cannot be read as CSV: {e}")));
                    }
                }
            }
        }
        counted
    }
}

/// Largest command the workers accept: Azure's 64 KiB for a message, or the largest body the
/// claim check reads.
pub const MAX_MESSAGE_BYTES: usize = cqrs_storage::claims::MAX_BODY_BYTES as usize;

/// Decodes a queue message: JSON, or base64-encoded JSON (what several Azure SDKs send by
/// default). The error says why, for the poison log.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes is larger than {MAX_MESSAGE_BYTES}",
            text.len()
        ));
    }
    let trimmed = text.trim();
    match serde_json::from_str(trimmed) {
        Ok(value) => Ok(value),
        Err(json_err) => {
            let bytes = BASE64
                .decode(trimmed)
                .map_err(|_| format!("neither JSON ({json_err}) nor base64"))?;
            let inner = std::str::from_utf8(&bytes)
                .map_err(|_| "base64 that does not decode to UTF-8 text".to_string())?;
            serde_json::from_str(inner).map_err(|e| format!("base64 of invalid JSON ({e})"))
        }
    }
}

/// Formats errors as one line for logs and result blobs.
pub fn describe(errors: &FieldErrors) -> String {
    errors
        .iter()
        .map(|(f, e)| format!("{f} {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn form(first: &str, last: &str, email: &str, dob: &str) -> RegistrationForm {
        RegistrationForm {
            first_name: first.into(),
            last_name: last.into(),
            email: email.into(),
            date_of_birth: dob.into(),
        }
    }

    #[test]
    fn a_valid_form_becomes_a_normalized_command() {
        let cmd = form(" Ada ", "Lovelace", " Ada@Example.COM ", "1815-12-10")
            .into_command("r1".into(), date!(2026 - 11 - 22));
        // 211 years: too old.
        assert_eq!(
            cmd.unwrap_err()["dateOfBirth"],
            "must be within the last 150 years"
        );
        let cmd = form(" Ada ", "Lovelace", " Ada@Example.COM ", "1990-12-10")
            .into_command("r1".into(), date!(2026 - 11 - 22))
            .unwrap();
        assert_eq!(cmd.first_name, "Ada");
        assert_eq!(cmd.email, "ada@example.com");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = form("", &"x".repeat(101), "not-an-email", "23/04/1990")
            .into_command("r".into(), date!(2026 - 11 - 22))
            .unwrap_err();
        assert_eq!(errors["firstName"], "is required");
        assert_eq!(errors["lastName"], "must be at most 100 characters");
        assert_eq!(errors["email"], "is not a valid email address");
        assert_eq!(errors["dateOfBirth"], "must be a date like 1990-04-23");
        let errors = form("a", "b", "", "2030-01-01")
            .into_command("r".into(), date!(2026 - 11 - 22))
            .unwrap_err();
        assert_eq!(errors["email"], "is required");
        assert_eq!(errors["dateOfBirth"], "must not be in the future");
    }

    #[test]
    fn messages_decode_from_json_or_base64_json() {
        let json = r#"{"commandId":"c1","location":"downtown","item":"apple-pie","delta":3}"#;
        let plain: InventoryAdjustment = decode(json).unwrap();
        let b64: InventoryAdjustment = decode(&BASE64.encode(json)).unwrap();
        assert_eq!(plain, b64);
        assert!(
            decode::<InventoryAdjustment>("{not json")
                .unwrap_err()
                .contains("neither JSON")
        );
        assert!(
            decode::<InventoryAdjustment>(&BASE64.encode("{}"))
                .unwrap_err()
                .contains("base64 of invalid JSON")
        );
        assert!(
            decode::<InventoryAdjustment>(&"a".repeat(MAX_MESSAGE_BYTES + 1))
                .unwrap_err()
                .contains("larger than")
        );
        assert!(
            decode::<InventoryAdjustment>(&BASE64.encode([0xff, 0xfe]))
                .unwrap_err()
                .contains("UTF-8")
        );
    }

    fn stocktake(csv: &str) -> StockTake {
        StockTake {
            stocktake_id: "st-1".into(),
            csv: Some(csv.into()),
            lines: None,
            result_etag: None,
        }
    }

    #[test]
    fn csv_lines_are_checked_one_by_one_with_their_line_numbers() {
        let take = stocktake(
            "Item,Location,Quantity\napple-pie,downtown,12\n\ncherry-pie,downtown,-3\n,harbour,1\nplum,harbour,x\nonly,two\n\"quoted, pie\",harbour,4\n",
        );
        assert_eq!(take.validate(), Ok(()));
        let counted = take.count();
        assert_eq!(
            counted.lines,
            [
                StockLine {
                    location: "downtown".into(),
                    item: "apple-pie".into(),
                    quantity: 12
                },
                StockLine {
                    location: "harbour".into(),
                    item: "quoted, pie".into(),
                    quantity: 4
                },
            ]
        );
        let lines: Vec<u64> = counted.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [4, 5, 6, 7], "{:?}", counted.rejected);
        assert!(
            counted.rejected[0]
                .reason
                .contains("quantity must be between 0")
        );
        assert!(counted.rejected[1].reason.contains("item is required"));
        assert!(
            counted.rejected[2]
                .reason
                .contains("\"x\" is not a whole number")
        );
        assert!(
            counted.rejected[3]
                .reason
                .contains("has 2 fields, expected 3")
        );
    }

    #[test]
    fn json_lines_are_numbered_by_position() {
        let take = StockTake {
            stocktake_id: "st-2".into(),
            csv: None,
            lines: Some(vec![
                serde_json::json!({"location": "a", "item": "b", "quantity": 1}),
                serde_json::json!({"location": "a", "item": "b", "quantity": 1.5}),
                serde_json::json!("not an object"),
            ]),
            result_etag: None,
        };
        assert_eq!(take.validate(), Ok(()));
        let counted = take.count();
        assert_eq!(counted.lines.len(), 1);
        assert_eq!(counted.rejected[0].line, 2);
        assert!(counted.rejected[0].reason.contains("whole number"));
        assert_eq!(counted.rejected[1].line, 3);
    }

    #[test]
    fn a_stock_take_as_a_whole_must_make_sense() {
        let errors = stocktake("sku,count\na,1\n").validate().unwrap_err();
        assert!(
            errors["csv"].contains("location,item,quantity"),
            "{errors:?}"
        );
        let errors = stocktake("location,item,quantity\n")
            .validate()
            .unwrap_err();
        assert!(errors["lines"].contains("at least one"), "{errors:?}");
        let mut both = stocktake("location,item,quantity\na,b,1\n");
        both.lines = Some(vec![]);
        both.stocktake_id = "bad id!".into();
        let errors = both.validate().unwrap_err();
        assert!(errors["lines"].contains("exactly one"));
        assert!(errors["stocktakeId"].contains("letters, digits or dashes"));
    }

    #[test]
    fn adjustments_are_checked() {
        let bad = InventoryAdjustment {
            command_id: "".into(),
            location: "l".into(),
            item: "\u{7}".into(),
            delta: 0,
        };
        let errors = bad.validate().unwrap_err();
        assert_eq!(errors.len(), 3);
        assert!(describe(&errors).contains("delta must not be 0"));
    }
}
