//! `POST /api/registrations`: write the pending result blob, enqueue the command, answer
//! `202` with a read-only SAS URL for that one blob.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::{ApiError, AppState};
use crate::messages::RegistrationForm;
use crate::worker::registration::{RegistrationResult, result_blob};

/// How long a result URL stays valid.
pub const RESULT_URL_LIFETIME: Duration = Duration::hours(1);

/// Accepts a registration.
pub async fn register(
    State(state): State<Arc<AppState>>,
    body: Result<Json<RegistrationForm>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let form = body
        .map_err(|r| ApiError::from_json(r, super::REGISTRATION_BODY_LIMIT))?
        .0;
    let id = uuid::Uuid::new_v4().to_string();
    let mut command = form
        .into_command(id.clone(), OffsetDateTime::now_utc().date())
        .map_err(ApiError::Fields)?;
    let _admitted = state.admission.enter()?;
    let cfg = &state.config;
    let blob = result_blob(&id);

    // NB: the blob first, so a worker always finds it; a failed enqueue leaves only a pending
    // blob nobody polls. Its ETag travels with the command (the worker then needs no read).
    command.result_etag = super::create_result(cfg, &blob, &RegistrationResult::default()).await?;
    super::enqueue(cfg, &cfg.registration_queue, &command, "registration").await?;
    let url = super::result_url(cfg, &blob).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "resultUrl": url })),
    ))
}

/// Rewrites a blob URL from the endpoint the roles use to the one browsers reach.
pub fn public_url(url: &url::Url, internal: &url::Url, public: Option<&url::Url>) -> String {
    let text = url.as_str();
    match public {
        Some(public) => {
            let internal = internal.as_str().trim_end_matches('/');
            match text.strip_prefix(internal) {
                Some(rest) => format!("{}{rest}", public.as_str().trim_end_matches('/')),
                None => text.to_string(),
            }
        }
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_urls_are_rewritten_to_the_public_endpoint() {
        let internal = url::Url::parse("http://azurite:10000/devstoreaccount1").unwrap();
        let url = url::Url::parse(
            "http://azurite:10000/devstoreaccount1/results/registrations/x.json?sv=1&sig=abc",
        )
        .unwrap();
        let public = url::Url::parse("http://localhost:10000/devstoreaccount1").unwrap();
        assert_eq!(
            public_url(&url, &internal, Some(&public)),
            "http://localhost:10000/devstoreaccount1/results/registrations/x.json?sv=1&sig=abc"
        );
        assert_eq!(public_url(&url, &internal, None), url.as_str());
    }
}
