//! Mailchimp's error body: RFC 7807 problem+json `{type, title, status, detail, instance}`, plus
//! `errors: [{field, message}]` for validation failures (research §9).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The documentation URL Mailchimp puts in `type`; clients match on `status` + `title`.
const ERROR_DOC_URL: &str = "https://mailchimp.com/developer/marketing/docs/errors/";

/// What Mailchimp says of a required field that is missing or empty.
pub const BLANK: &str = "This value should not be blank.";

/// One field-level validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `field` is required and missing or empty.
    pub fn blank(field: impl Into<String>) -> Self {
        Self::new(field, BLANK)
    }
}

/// An API error answered as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    /// 400 "Invalid Resource" with field errors, as Mailchimp answers a body that fails validation.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            title: "Invalid Resource",
            detail: "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
                .to_owned(),
            errors,
        }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, message)])
    }

    /// `field` is required and missing or empty.
    pub fn blank(field: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::blank(field)])
    }

    pub fn json_parse() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "JSON Parse Exception",
            "We encountered an unspecified JSON parsing error.",
        )
    }

    pub fn too_many_requests() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "An unexpected internal error has occurred. Please contact Support for more information.",
        )
    }

    /// The JSON body (without headers); `instance` is a fresh request id.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(ERROR_DOC_URL));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.insert("instance".into(), json!(request_id()));
        if !self.errors.is_empty() {
            let errors: Vec<Value> = self
                .errors
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect();
            body.insert("errors".into(), Value::Array(errors));
        }
        Value::Object(body)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body();
        let instance = body
            .get("instance")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json; charset=utf-8"),
        );
        if let Ok(value) = HeaderValue::from_str(&instance) {
            headers.insert("x-request-id", value);
        }
        response
    }
}

/// A request id in the UUID-like form Mailchimp uses for `instance`.
fn request_id() -> String {
    let a: u128 = rand::random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validation_problem_carries_field_errors() {
        let body = Problem::invalid_field("email_address", "bad").body();
        assert_eq!(body["title"], "Invalid Resource");
        assert_eq!(body["status"], 400);
        assert_eq!(body["errors"][0]["field"], "email_address");
        assert_eq!(body["instance"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn plain_problem_has_no_errors_array() {
        let body = Problem::not_found().body();
        assert!(body.get("errors").is_none());
        assert_eq!(body["status"], 404);
    }
}
