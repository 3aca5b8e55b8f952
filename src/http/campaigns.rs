//! The campaign API (DESIGN.md "HTTP contract"): `POST /v1/campaigns` with an `Idempotency-Key`
//! header checks the push and queues it as a job (202 with the job, 200 with the existing job for
//! a repeated key, 409 for a key reused with a different body); the push runs in the background
//! (`campaigns::jobs`), one job at a time per audience, in order. `GET /v1/campaigns/{key}`
//! shows the job (`queued`, `syncing`, `creating`, `sending`, `sent`, `scheduled`, `failed`,
//! `interrupted`) with the campaign's record. Both need the bearer token.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{ApiAuth, ApiError, Shared};
use crate::campaigns::jobs::{self, Enqueued};
use crate::campaigns::push;
use crate::campaigns::{CampaignError, CampaignRecord, CampaignState, PushRequest};
use crate::sync::SyncError;

/// The header that carries the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/campaigns", post(post_campaign))
        .route("/v1/campaigns/{key}", get(get_campaign))
}

async fn post_campaign(
    _auth: ApiAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let key = match headers.get(IDEMPOTENCY_KEY).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::bad_request(
                "missing_idempotency_key",
                "the `Idempotency-Key` header is required",
            ));
        }
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "the `Idempotency-Key` header must be visible ASCII",
            ));
        }
        Some(Ok(k)) => k.trim().to_owned(),
    };
    let request: PushRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("request body: {e}")))?;
    // An audience this server has no client for (an unknown one is refused by the push).
    if let Some(audience) = state
        .config
        .audiences
        .iter()
        .find(|a| a.name == request.audience)
        && let Err(e) = state.providers.require(audience.provider)
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            format!("{e} on this server"),
        ));
    }
    let enqueued = jobs::enqueue(&state.store, &state.config, &request, &key)
        .await
        .map_err(api_error)?;
    state.start_campaign_jobs();
    let (status, job) = match enqueued {
        Enqueued::New(job) => (StatusCode::ACCEPTED, job),
        Enqueued::Existing(job) => (StatusCode::OK, job),
    };
    Ok((status, axum::Json(job)).into_response())
}

async fn get_campaign(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let job = jobs::get(&state.store, &key)
        .await
        .map_err(|e| api_error(e.into()))?;
    if let Some(job) = job {
        return Ok(axum::Json(job).into_response());
    }
    // A campaign pushed with the CLI: no job, its record.
    let record = push::status(&state.store, &key).await.map_err(api_error)?;
    Ok(axum::Json(json!({
        "key": record.key,
        "audience": record.audience,
        "status": status_of(&record),
        "campaign": record,
    }))
    .into_response())
}

/// The job status a campaign pushed without a job shows.
fn status_of(record: &CampaignRecord) -> &'static str {
    match record.state {
        CampaignState::Sent | CampaignState::Sending => "sent",
        CampaignState::Scheduled => "scheduled",
        CampaignState::Failed => "failed",
        CampaignState::Draft | CampaignState::Tested => "creating",
    }
}

/// Input problems are told as they are; provider and database failures are logged and answered
/// without internals.
fn api_error(e: CampaignError) -> ApiError {
    let message = e.to_string();
    match e {
        CampaignError::Invalid { .. } => ApiError::bad_request("invalid_request", message),
        CampaignError::Refused(_) | CampaignError::KeyBusy(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
        }
        CampaignError::KeyConflict { .. } => ApiError::conflict(message),
        CampaignError::UnknownKey(_) => ApiError::not_found(message),
        CampaignError::NotReady { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_ready", message)
        }
        CampaignError::Unconfirmed { .. } => {
            tracing::warn!("{message}");
            ApiError::new(StatusCode::BAD_GATEWAY, "unconfirmed", message)
        }
        CampaignError::ProviderState { .. } => {
            ApiError::new(StatusCode::CONFLICT, "provider_state", message)
        }
        CampaignError::Sync { source, .. } if matches!(*source, SyncError::Locked { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "sync_running", message)
        }
        CampaignError::Provider(p) => {
            tracing::error!("campaign push: {p}");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                format!(
                    "{} {} failed ({})",
                    p.provider_name(),
                    p.operation(),
                    p.code()
                ),
            )
        }
        CampaignError::Store(_) | CampaignError::Source(_) => {
            ApiError::unavailable("campaign push", message)
        }
        CampaignError::Sync { .. } => ApiError::internal("the preflight sync", message),
    }
}
