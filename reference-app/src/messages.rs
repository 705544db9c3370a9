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

/// Largest message the workers accept (Azure's own limit is 64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

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
            decode::<InventoryAdjustment>(&"a".repeat(70_000))
                .unwrap_err()
                .contains("larger than")
        );
        assert!(
            decode::<InventoryAdjustment>(&BASE64.encode([0xff, 0xfe]))
                .unwrap_err()
                .contains("UTF-8")
        );
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
