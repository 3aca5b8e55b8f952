//! The message API (DESIGN.md "HTTP contract"): `POST /v1/messages` queues one transactional
//! message and answers 202 `{"id", "message_id"}` only after it is committed (invariant 4);
//! `GET /v1/messages/{id}` reports its delivery status. Both need the bearer token.
//!
//! An `Idempotency-Key` header makes a retry safe: the same key within 24 hours answers 202 with
//! the first message's `id` and `message_id` (and `Idempotent-Replayed: true`) and queues nothing;
//! the same key with a different message is 409 `idempotency_key_reused`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::{ApiAuth, ApiError, Shared};
use crate::relay::outbox::{self, EnqueueError, IdempotencyKey};
use crate::relay::render::NewMessage;

/// `body_limit`: [`super::message_body_limit`], which replaces the server's default for
/// `POST /v1/messages` (this layer is nearer the handler, so its limit is the one applied).
pub fn routes(body_limit: usize) -> Router<Shared> {
    Router::new()
        .route(
            "/v1/messages",
            post(create).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/v1/messages/{id}", get(status))
}

fn relay_off() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "relay_off",
        "the relay is not configured ([relay] is missing)",
    )
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: String| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("the Idempotency-Key header: {why}"),
        )
    };
    let text = value
        .to_str()
        .map_err(|_| bad("an idempotency key is printable ASCII".into()))?;
    IdempotencyKey::parse(text).map(Some).map_err(bad)
}

async fn create(
    _auth: ApiAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body
        .map_err(|r| ApiError::from_body_rejection(r, super::message_body_limit(&state.config)))?;
    let relay = state.config.relay.as_ref().ok_or_else(relay_off)?;
    let key = idempotency_key(&headers)?;
    // The path of the offending field, in the same `field` form as the checks after parsing.
    let mut json = serde_json::Deserializer::from_slice(&body);
    let msg: NewMessage = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let message = if field == "." {
            format!("the body is not a valid message: {}", e.inner())
        } else {
            format!("`{field}`: {}", e.inner())
        };
        ApiError::bad_request("invalid_json", message)
    })?;
    match outbox::enqueue_keyed(&state.store, relay, &msg, key.as_ref()).await {
        Ok(queued) => {
            let mut headers = HeaderMap::new();
            if queued.replayed {
                headers.insert(
                    HeaderName::from_static("idempotent-replayed"),
                    HeaderValue::from_static("true"),
                );
            } else {
                state.outbox_ready.notify_one();
            }
            Ok((StatusCode::ACCEPTED, headers, Json(queued)))
        }
        Err(e @ EnqueueError::KeyReused { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            e.to_string(),
        )),
        Err(EnqueueError::Input(e)) => Err(ApiError::bad_request("invalid_field", e.to_string())),
        Err(EnqueueError::Render(e)) => Err(ApiError::internal("rendering a message", e)),
        Err(EnqueueError::Store(e)) => Err(ApiError::unavailable("storing a message", e)),
    }
}

async fn status(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match outbox::get(&state.store, &id).await {
        Ok(Some(s)) => Ok(Json(s)),
        Ok(None) => Err(ApiError::not_found(format!("no message with id `{id}`"))),
        Err(e) => Err(ApiError::unavailable("reading a message", e)),
    }
}
