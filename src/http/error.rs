//! The API's error answer: `{"error": {"code", "message"}}` (DESIGN.md "HTTP contract"), never
//! with internals. Server-side failures are logged here and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code naming the kind of problem and a message naming the field.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A failure on our side: the detail (the error and its causes) goes to the log, the caller
    /// gets a generic message.
    pub fn internal(
        what: &str,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ApiError {
        log_failure(what, err);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed; see the server log"),
        )
    }

    /// The state DB is unreachable: 503, so that providers retry the delivery later.
    pub fn unavailable(
        what: &str,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ApiError {
        log_failure(what, err);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} failed; try again later"),
        )
    }
}

/// Logs `err` with its whole cause chain: a store error names the work, its source the cause.
fn log_failure(what: &str, err: impl Into<Box<dyn std::error::Error + Send + Sync>>) {
    let err: Box<dyn std::error::Error + Send + Sync> = err.into();
    let err: &(dyn std::error::Error + 'static) = &*err;
    tracing::error!("{what}: {}", crate::error_chain(err));
}

/// A body the server would not read (over `MAX_BODY_BYTES`, or cut off): the same JSON error
/// shape as every other refusal, not axum's plain-text one.
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
        ApiError::from_body_rejection(rejection, super::MAX_BODY_BYTES)
    }
}

impl ApiError {
    /// A body the server would not read, on a route whose body limit is `limit` bytes.
    pub fn from_body_rejection(
        rejection: axum::extract::rejection::BytesRejection,
        limit: usize,
    ) -> ApiError {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                format!("the request body is over the server's limit of {limit} bytes"),
            )
        } else {
            ApiError::new(status, "invalid_body", rejection.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}
