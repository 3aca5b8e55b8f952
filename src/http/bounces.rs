//! `POST /v1/bounces` (bearer token): one bounce mail as `message/rfc822`, stored in the state DB
//! before the answer (202 `{"id", "duplicate"}`, invariant 4) and processed afterwards by `serve`'s
//! bounce worker with the code of `bounce ingest`. The same mail posted twice is stored and
//! processed once: its id is the SHA-256 of its bytes.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

use super::{ApiAuth, ApiError, Shared};
use crate::bounces::ingest::{self, IngestError, MAX_BOUNCE_BYTES};

pub fn routes() -> Router<Shared> {
    Router::new().route(
        "/v1/bounces",
        post(receive).layer(DefaultBodyLimit::max(MAX_BOUNCE_BYTES)),
    )
}

/// The media types a raw mail may come as (curl's `--data-binary` sends form encoding unless
/// told otherwise, so a plain octet stream or text is taken too).
const MAIL_TYPES: [&str; 3] = ["message/rfc822", "application/octet-stream", "text/plain"];

async fn receive(
    _auth: ApiAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let media = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if let Some(media) = &media
        && !MAIL_TYPES.contains(&media.as_str())
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be the raw mail as message/rfc822, not {media}"),
        ));
    }
    let body = body.map_err(|r| ApiError::from_body_rejection(r, MAX_BOUNCE_BYTES))?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body must be the raw bounce mail",
        ));
    }
    let (id, new) = match ingest::receive(&state.store, &body).await {
        Ok(stored) => stored,
        Err(IngestError::TooLarge { max, .. }) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over the limit of {max} bytes"),
            ));
        }
        Err(IngestError::Store(e)) => {
            return Err(ApiError::unavailable("storing a bounce mail", e));
        }
    };
    metrics::counter!("mailbridge_bounce_mails_received_total", "duplicate" => if new { "false" } else { "true" })
        .increment(1);
    if new {
        state.bounces_ready.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"id": id, "duplicate": !new})),
    ))
}
