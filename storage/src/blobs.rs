//! Idempotent container operations and blob-service CORS rules.
//!
//! CORS rules belong to the whole blob service of an account, which other apps may share.
//! Rules written here carry an owner marker in their exposed headers
//! (`x-cqrs-owner-<owner>`, a header no response carries, so it changes nothing for browsers):
//! ensuring replaces only this owner's rules, removing deletes only them, and rules written by
//! anyone else are kept as they are.

use azure_core::http::RequestContent;
use azure_storage_blob::models::{BlobServiceProperties, CorsRule};
use serde::{Deserialize, Serialize};

use crate::queues::Ensured;
use crate::{Error, SdkError, StorageAccount};

/// Azure's limit of CORS rules per service.
pub const MAX_CORS_RULES: usize = 5;

/// One blob-service CORS rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobCorsRule {
    /// Origins allowed to call (`*` for any).
    pub allowed_origins: Vec<String>,
    /// HTTP methods allowed.
    pub allowed_methods: Vec<String>,
    /// Request headers allowed.
    pub allowed_headers: Vec<String>,
    /// Response headers exposed to scripts.
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache the preflight answer.
    pub max_age_seconds: u32,
}

impl BlobCorsRule {
    /// A rule that lets scripts from `origins` read blobs (GET, HEAD) with any headers.
    pub fn read_only(origins: Vec<String>, max_age_seconds: u32) -> Self {
        Self {
            allowed_origins: origins,
            allowed_methods: vec!["GET".into(), "HEAD".into()],
            allowed_headers: vec!["*".into()],
            exposed_headers: vec!["*".into()],
            max_age_seconds,
        }
    }

    fn to_sdk(&self, owner: &str) -> CorsRule {
        let mut exposed = self.exposed_headers.clone();
        exposed.push(owner_marker(owner));
        CorsRule {
            allowed_origins: Some(self.allowed_origins.join(",")),
            allowed_methods: Some(self.allowed_methods.join(",")),
            allowed_headers: Some(self.allowed_headers.join(",")),
            exposed_headers: Some(exposed.join(",")),
            max_age_in_seconds: Some(i32::try_from(self.max_age_seconds).unwrap_or(i32::MAX)),
        }
    }
}

fn owner_marker(owner: &str) -> String {
    format!("x-cqrs-owner-{owner}")
}

fn owned_by(rule: &CorsRule, owner: &str) -> bool {
    let marker = owner_marker(owner);
    rule.exposed_headers.as_deref().is_some_and(|h| {
        h.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(&marker))
    })
}

fn normalized(rule: &CorsRule) -> [Vec<String>; 4] {
    let split = |s: &Option<String>| {
        let mut v: Vec<String> = s
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        v.sort();
        v
    };
    [
        split(&rule.allowed_origins),
        split(&rule.allowed_methods),
        split(&rule.allowed_headers),
        split(&rule.exposed_headers),
    ]
}

fn same_rule(a: &CorsRule, b: &CorsRule) -> bool {
    normalized(a) == normalized(b) && a.max_age_in_seconds == b.max_age_in_seconds
}

/// The rule set after making `owner`'s rules equal to `desired`; `None` when nothing changes.
fn merge_rules(
    existing: &[CorsRule],
    owner: &str,
    desired: &[BlobCorsRule],
) -> Option<Vec<CorsRule>> {
    let desired: Vec<CorsRule> = desired.iter().map(|r| r.to_sdk(owner)).collect();
    let ours: Vec<&CorsRule> = existing.iter().filter(|r| owned_by(r, owner)).collect();
    let unchanged =
        ours.len() == desired.len() && desired.iter().all(|d| ours.iter().any(|o| same_rule(o, d)));
    if unchanged {
        return None;
    }
    let mut merged: Vec<CorsRule> = existing
        .iter()
        .filter(|r| !owned_by(r, owner))
        .cloned()
        .collect();
    merged.extend(desired);
    Some(merged)
}

/// The rule set to write so that `owner`'s rules equal `desired` (`None`: nothing to do),
/// checked against Azure's limit.
pub(crate) fn merge_cors_rules(
    existing: &[CorsRule],
    owner: &str,
    desired: &[BlobCorsRule],
) -> Result<Option<Vec<CorsRule>>, Error> {
    let Some(merged) = merge_rules(existing, owner, desired) else {
        return Ok(None);
    };
    if merged.len() > MAX_CORS_RULES {
        return Err(Error::TooManyCorsRules {
            needed: merged.len(),
        });
    }
    Ok(Some(merged))
}

impl StorageAccount {
    /// Creates container `name` (private) unless it exists.
    pub async fn ensure_container(&self, name: &str) -> Result<Ensured, Error> {
        match self.container(name).create(None).await {
            Ok(_) => Ok(Ensured::Created),
            Err(e) => {
                let e = SdkError(e);
                match e.code() {
                    Some("ContainerAlreadyExists") => Ok(Ensured::Existed),
                    _ => Err(Error::CreateContainer {
                        name: name.into(),
                        source: e,
                    }),
                }
            }
        }
    }

    /// Deletes container `name` and every blob in it; a missing container is not an error.
    /// Returns whether it existed.
    pub async fn delete_container(&self, name: &str) -> Result<bool, Error> {
        match self.container(name).delete(None).await {
            Ok(_) => Ok(true),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(false),
            Err(e) => Err(Error::DeleteContainer {
                name: name.into(),
                source: SdkError(e),
            }),
        }
    }

    /// The blob service's CORS rules as they are now.
    pub async fn blob_cors_rules(&self) -> Result<Vec<CorsRule>, Error> {
        let read_err = |e| Error::BlobCors {
            action: "read",
            source: SdkError(e),
        };
        let props = self
            .blob_service()
            .get_properties(None)
            .await
            .map_err(read_err)?
            .into_model()
            .map_err(read_err)?;
        Ok(props.cors.unwrap_or_default())
    }

    /// Makes `owner`'s blob-service CORS rules equal to `rules`, keeping everyone else's.
    /// Returns whether anything was written.
    pub async fn ensure_blob_cors(
        &self,
        owner: &str,
        rules: &[BlobCorsRule],
    ) -> Result<bool, Error> {
        let existing = self.blob_cors_rules().await?;
        let Some(merged) = merge_cors_rules(&existing, owner, rules)? else {
            return Ok(false);
        };
        self.write_blob_cors(merged).await?;
        Ok(true)
    }

    /// Removes `owner`'s blob-service CORS rules. Returns whether anything was written.
    pub async fn remove_blob_cors(&self, owner: &str) -> Result<bool, Error> {
        self.ensure_blob_cors(owner, &[]).await
    }

    /// Replaces the blob service's CORS rules with `rules`.
    pub async fn write_blob_cors(&self, rules: Vec<CorsRule>) -> Result<(), Error> {
        let write_err = |e| Error::BlobCors {
            action: "write",
            source: SdkError(e),
        };
        // NB: elements left out of Set Blob Service Properties keep their current values, so
        // only the CORS list is sent.
        let props = BlobServiceProperties {
            cors: Some(rules),
            ..Default::default()
        };
        let content: RequestContent<BlobServiceProperties, _> =
            props.try_into().map_err(write_err)?;
        self.blob_service()
            .set_properties(content, None)
            .await
            .map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign() -> CorsRule {
        CorsRule {
            allowed_origins: Some("https://other.example".into()),
            allowed_methods: Some("PUT".into()),
            allowed_headers: Some("*".into()),
            exposed_headers: Some("*".into()),
            max_age_in_seconds: Some(60),
        }
    }

    #[test]
    fn adds_our_rule_and_keeps_foreign_ones() {
        let desired = [BlobCorsRule::read_only(
            vec!["http://localhost:8080".into()],
            3600,
        )];
        let merged = merge_rules(&[foreign()], "default-shop", &desired).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(same_rule(&merged[0], &foreign()));
        assert!(owned_by(&merged[1], "default-shop"));
    }

    #[test]
    fn an_equal_rule_set_needs_no_write_whatever_the_order_or_case() {
        let desired = [BlobCorsRule::read_only(
            vec!["https://a".into(), "https://b".into()],
            60,
        )];
        let mut ours = desired[0].to_sdk("o");
        ours.allowed_origins = Some("https://B, https://a".into());
        ours.allowed_methods = Some("head,get".into());
        assert!(merge_rules(&[foreign(), ours], "o", &desired).is_none());
    }

    #[test]
    fn a_changed_rule_replaces_only_ours() {
        let old = BlobCorsRule::read_only(vec!["https://old".into()], 60).to_sdk("o");
        let other_owner = BlobCorsRule::read_only(vec!["https://x".into()], 60).to_sdk("p");
        let desired = [BlobCorsRule::read_only(vec!["https://new".into()], 60)];
        let merged = merge_rules(&[old, other_owner.clone()], "o", &desired).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(same_rule(&merged[0], &other_owner));
        assert_eq!(merged[1].allowed_origins.as_deref(), Some("https://new"));
    }

    #[test]
    fn removing_keeps_everyone_elses_rules() {
        let ours = BlobCorsRule::read_only(vec!["https://a".into()], 60).to_sdk("o");
        let merged = merge_rules(&[ours, foreign()], "o", &[]).unwrap();
        assert_eq!(merged.len(), 1);
        assert!(same_rule(&merged[0], &foreign()));
        assert!(merge_rules(&[foreign()], "o", &[]).is_none());
    }
}
