//! The campaign API (DESIGN.md "HTTP contract"): `POST /v1/campaigns` with an `Idempotency-Key`
//! header pushes a campaign (201 with the record, 200 with the existing record for a repeated
//! key, 409 for a key reused with a different body); `GET /v1/campaigns/{key}` reads it. Both
//! need the bearer token. The push runs in the request (preflight sync included).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{ApiAuth, ApiError, Shared};
use crate::campaigns::push::{self, PushContext};
use crate::campaigns::{CampaignError, PushRequest};
use crate::progress::Progress;
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
    let source = state
        .member_source()
        .await
        .map_err(|e| ApiError::unavailable("connecting to the member database", e))?;
    // The push runs as its own task: a caller that hangs up does not cut it off between create
    // and send (it would leave the lease held until it expires); shutdown waits for it.
    let task_state = state.clone();
    let pushed = state.tasks.spawn(async move {
        let progress = Progress::hidden();
        let ctx = PushContext {
            config: &task_state.config,
            mapping: &task_state.mapping,
            store: &task_state.store,
            source: &source,
            providers: &task_state.providers,
            progress: &progress,
            after_create: None,
        };
        push::push(&ctx, &request, Some(&key)).await
    });
    let outcome = pushed
        .await
        .map_err(|e| ApiError::internal("the campaign push task", e))?
        .map_err(api_error)?;
    let status = if outcome.inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(outcome.record)).into_response())
}

async fn get_campaign(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let record = push::status(&state.store, &key).await.map_err(api_error)?;
    Ok(axum::Json(record).into_response())
}

/// Input problems are told as they are; provider and database failures are logged and answered
/// without internals.
fn api_error(e: CampaignError) -> ApiError {
    let message = e.to_string();
    match e {
        CampaignError::Invalid { .. } => ApiError::bad_request("invalid_request", message),
        CampaignError::Refused(_) => {
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
