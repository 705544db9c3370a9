//! Registrations: one per email address, even with many workers racing; each registration gets
//! its token exactly once, in its result blob.
//!
//! 1. The result blob `results/registrations/<id>.json` already holding a token or an error
//!    means the command was handled before (a redelivery): done.
//! 2. The email is claimed with a conditional create of `readmodels/registrations/by-email/<sha256>.json`
//!    holding the registration id. Losing the race to a *different* id means the email is taken:
//!    the result gets an error. Finding our own id means a redelivery after a crash: go on.
//! 3. The token is written into the result blob with `If-Match` on the ETag read in step 1, so
//!    two workers handling the same message cannot write two different tokens.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Handler, Outcome};
use crate::messages::{self, RegisterCommand};
use crate::store::{self, Condition, StoreError, Written};

/// The result blob a browser polls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResult {
    /// The token, once registered.
    pub registration_token: Option<String>,
    /// Why the registration was refused, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is not final: the command was poisoned (something it needs was down) and a
    /// redrive will handle it again, writing the token into this same blob.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

impl RegistrationResult {
    /// A token or a final refusal: a redelivered command has nothing left to do.
    fn finished(&self) -> bool {
        self.registration_token.is_some() || (self.error.is_some() && !self.retryable)
    }
}

/// Env var of the worker: while set to `true`, the "email service" is down and every
/// registration fails (for now), so it is retried and finally poisoned: the reference app's
/// way to show a poison queue filling and a redrive emptying it.
pub const EMAIL_SERVICE_DOWN: &str = "EMAIL_SERVICE_DOWN";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmailClaim {
    registration_id: String,
}

/// Name of the result blob of registration `id`.
pub fn result_blob(id: &str) -> String {
    format!("registrations/{id}.json")
}

fn claim_blob(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("registrations/by-email/{hex}.json")
}

/// Handles registration commands.
#[derive(Clone, Debug)]
pub struct Registrations {
    account: cqrs_storage::StorageAccount,
    results: String,
    readmodels: String,
    email_down: bool,
}

impl Registrations {
    /// A handler writing results to `results` and email claims to `readmodels`.
    pub fn new(account: cqrs_storage::StorageAccount, results: String, readmodels: String) -> Self {
        Self {
            account,
            results,
            readmodels,
            email_down: false,
        }
    }

    /// The same with the email service down ([`EMAIL_SERVICE_DOWN`]).
    pub fn with_email_down(mut self, down: bool) -> Self {
        self.email_down = down;
        self
    }

    async fn register(&self, cmd: &RegisterCommand) -> Result<Outcome, StoreError> {
        if let Err(errors) = cmd.validate() {
            let reason = messages::describe(&errors);
            // Without a usable id there is no result blob to answer in.
            if errors.contains_key("id") {
                return Ok(Outcome::Reject(format!(
                    "invalid registration command: {reason}"
                )));
            }
            self.finish(
                cmd,
                RegistrationResult {
                    registration_token: None,
                    error: Some(format!("invalid registration: {reason}")),
                    retryable: false,
                },
            )
            .await?;
            return Ok(Outcome::Done);
        }
        let blob = result_blob(&cmd.id);
        // NB: the web role sends the pending blob's ETag, so the common path writes the token
        // without reading the blob first; a redelivered or duplicated command fails the
        // If-Match below and is sorted out there.
        let etag = match &cmd.result_etag {
            Some(tag) => Some(azure_core::http::Etag::from(tag.clone())),
            None => {
                let current =
                    store::read::<RegistrationResult>(&self.account, &self.results, &blob).await?;
                if current.as_ref().is_some_and(|(r, _)| r.finished()) {
                    return Ok(Outcome::Done);
                }
                current.and_then(|(_, etag)| etag)
            }
        };

        if self.email_down {
            return Ok(Outcome::Retry(format!(
                "the email service is down ({EMAIL_SERVICE_DOWN}=true); retried, then poisoned"
            )));
        }
        let claim = EmailClaim {
            registration_id: cmd.id.clone(),
        };
        let claim_name = claim_blob(&cmd.email);
        let ours = match store::write(
            &self.account,
            &self.readmodels,
            &claim_name,
            &claim,
            Condition::Create,
        )
        .await?
        {
            Written::Ok(_) => true,
            Written::Conflict => {
                store::read::<EmailClaim>(&self.account, &self.readmodels, &claim_name)
                    .await?
                    .is_some_and(|(existing, _)| existing.registration_id == cmd.id)
            }
        };
        let result = if ours {
            RegistrationResult {
                registration_token: Some(new_token()),
                ..Default::default()
            }
        } else {
            RegistrationResult {
                error: Some(format!("{} is already registered", cmd.email)),
                ..Default::default()
            }
        };
        let condition = etag.map_or(Condition::Create, Condition::Match);
        match store::write(&self.account, &self.results, &blob, &result, condition).await? {
            Written::Ok(_) => Ok(Outcome::Done),
            // Another worker finished this registration first (check it did), or a poisoned
            // attempt left a retryable error, which this answer replaces.
            Written::Conflict => {
                match store::read::<RegistrationResult>(&self.account, &self.results, &blob).await?
                {
                    Some((r, _)) if r.finished() => Ok(Outcome::Done),
                    Some((r, Some(current))) if r.retryable => {
                        match store::write(
                            &self.account,
                            &self.results,
                            &blob,
                            &result,
                            Condition::Match(current),
                        )
                        .await?
                        {
                            Written::Ok(_) => Ok(Outcome::Done),
                            Written::Conflict => Ok(Outcome::Retry(
                                "the result blob changed underneath; retrying".into(),
                            )),
                        }
                    }
                    _ => Ok(Outcome::Retry(
                        "the result blob changed underneath; retrying".into(),
                    )),
                }
            }
        }
    }

    async fn outcome(&self, cmd: &RegisterCommand) -> Outcome {
        match self.register(cmd).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_transient() => Outcome::Retry(e.to_string()),
            Err(e) => Outcome::Retry(format!("{e} (poisoned if it keeps failing)")),
        }
    }

    /// Writes a final result unless one is there already (a corrupt blob is replaced).
    async fn finish(
        &self,
        cmd: &RegisterCommand,
        result: RegistrationResult,
    ) -> Result<(), StoreError> {
        let blob = result_blob(&cmd.id);
        let condition =
            match store::read::<RegistrationResult>(&self.account, &self.results, &blob).await {
                Ok(Some((r, _))) if r.finished() => return Ok(()),
                Ok(Some((_, Some(etag)))) => Condition::Match(etag),
                Ok(_) => Condition::Create,
                Err(StoreError::Corrupt { .. }) => Condition::Any,
                Err(e) => return Err(e),
            };
        store::write(&self.account, &self.results, &blob, &result, condition).await?;
        Ok(())
    }
}

/// A registration token: 128 random bits, grouped for reading aloud.
fn new_token() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    format!(
        "RT-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..16],
        &hex[16..24],
        &hex[24..32]
    )
}

/// Registrations of one batch handled at once (each is independent).
const CONCURRENCY: usize = 16;

#[async_trait]
impl Handler for Arc<Registrations> {
    type Command = RegisterCommand;

    fn decode(&self, text: &str) -> Result<RegisterCommand, String> {
        messages::decode(text)
    }

    async fn handle(&self, batch: &[RegisterCommand]) -> Vec<Outcome> {
        let work: Vec<_> = batch.iter().map(|cmd| self.outcome(cmd)).collect();
        futures::stream::iter(work)
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    async fn poisoned(&self, command: Option<&RegisterCommand>, reason: &str) {
        let Some(cmd) = command else { return };
        // NB: the browser is polling this blob; give it an answer so it stops waiting.
        let result = RegistrationResult {
            registration_token: None,
            error: Some(
                "the registration could not be processed yet; it is kept and will be retried"
                    .into(),
            ),
            retryable: true,
        };
        if let Err(e) = self.finish(cmd, result).await {
            tracing::warn!(registration = %cmd.id, "cannot write the error result after poisoning ({reason}): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_readable() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 32 + 3);
        assert!(a.starts_with("RT-"));
    }

    #[test]
    fn email_claims_do_not_reveal_the_address() {
        let name = claim_blob("ada@example.com");
        assert!(
            !name.contains("ada")
                && name.starts_with("registrations/by-email/")
                && name.len() == 23 + 64 + 5
        );
    }

    #[test]
    fn the_pending_result_serializes_with_a_null_token() {
        assert_eq!(
            serde_json::to_string(&RegistrationResult::default()).unwrap(),
            r#"{"registrationToken":null}"#
        );
    }
}
