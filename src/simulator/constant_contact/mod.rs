//! Constant Contact V3 (<https://developer.constantcontact.com/api_guide/>) beside Mailchimp on the
//! simulator's port: the API under `/v3`, its OAuth server under `/oauth2/default/v1`, and control
//! routes under `/_sim/constant-contact`. Paths, operation ids, field names and status codes follow
//! the vendor's OpenAPI spec (`constant-contact-v3.yaml`, build 3.0.161).
//!
//! Map:
//! - [`state`]: the account as plain data (apps, tokens, lists, custom fields, contacts,
//!   activities, campaigns, senders, budgets);
//! - [`oauth`]: the token and device-authorization endpoints, refresh-token rotation, bearer checks;
//! - [`limits`]: the per-app budget (4 requests a second, 10,000 a simulated UTC day);
//! - [`contacts`]: lists, custom fields and contacts; [`activities`]: JSON imports, list-membership
//!   removal and the background worker that completes them; [`campaigns`]: email campaigns, test
//!   sends, account senders and bounce reports;
//! - [`control`]: `/_sim/constant-contact/*`, the no-auth contract tests and the demo use.
//!
//! Every `/v3` request passes, outermost first: the count by `operationId`, the bearer check (401
//! object), the app's budget (429 object), the injected faults shared with Mailchimp, the handler.
//! API errors are a JSON array `[{"error_key", "error_message"}]`; the auth and rate-limit errors
//! are single objects, as the vendor sends them.

pub mod activities;
pub mod campaigns;
pub mod contacts;
pub mod control;
pub mod limits;
pub mod oauth;
pub mod state;

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::SimState;
use super::faults::{self, Fault};
use limits::{Limits, Verdict};

/// The `/v3` router with its middleware.
pub fn routes(state: SimState) -> Router<SimState> {
    Router::new()
        .merge(contacts::routes())
        .merge(activities::routes())
        .merge(campaigns::routes())
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), inject_faults))
        .layer(from_fn_with_state(state.clone(), guard))
        .layer(from_fn_with_state(state, count_operation))
}

async fn not_found() -> CcError {
    CcError::not_found("The requested resource was not found.")
}

/// The spec's `operationId` of each route the simulator serves (`/v3` left off the template).
const OPERATIONS: &[(Method, &str, &str)] = &[
    (Method::GET, "/contact_lists", "getAllLists"),
    (Method::POST, "/contact_lists", "createList"),
    (Method::GET, "/contact_lists/{list_id}", "getList"),
    (Method::GET, "/contact_custom_fields", "getAllCustomFields"),
    (Method::POST, "/contact_custom_fields", "createCustomFields"),
    (Method::GET, "/contacts", "getAllContacts"),
    (Method::GET, "/contacts/{contact_id}", "getContactById"),
    (Method::PUT, "/contacts/{contact_id}", "updateContact"),
    (
        Method::POST,
        "/contacts/sign_up_form",
        "createOrUpdateContact",
    ),
    (
        Method::POST,
        "/activities/contacts_json_import",
        "createImportJSONActivity",
    ),
    (
        Method::POST,
        "/activities/remove_list_memberships",
        "createListRemoveActivity",
    ),
    (Method::GET, "/activities/{activity_id}", "getActivityById"),
    (Method::GET, "/emails", "getAllEmailCampaigns"),
    (Method::POST, "/emails", "createEmailCampaign"),
    (Method::GET, "/emails/{campaign_id}", "getEmailCampaignById"),
    (
        Method::GET,
        "/emails/activities/{campaign_activity_id}",
        "getEmailCampaignActivity",
    ),
    (
        Method::PUT,
        "/emails/activities/{campaign_activity_id}",
        "updateEmailCampaignActivity",
    ),
    (
        Method::GET,
        "/emails/activities/{campaign_activity_id}/schedules",
        "getEmailCampaignActivitySchedule",
    ),
    (
        Method::POST,
        "/emails/activities/{campaign_activity_id}/schedules",
        "scheduleEmailCampaignActivity",
    ),
    (
        Method::POST,
        "/emails/activities/{campaign_activity_id}/tests",
        "testSendEmailCampaignActivity",
    ),
    (
        Method::GET,
        "/account/emails",
        "getAllAccountEmailAddresses",
    ),
    (Method::GET, "/account/summary", "getAccountDetails"),
    (
        Method::GET,
        "/reports/email_reports/{campaign_activity_id}/tracking/bounces",
        "getBouncesReport",
    ),
];

/// The `operationId` of `method` on the route template `path` (with or without `/v3`).
pub fn operation_id(method: &Method, path: &str) -> Option<&'static str> {
    let template = path.strip_prefix("/v3").unwrap_or(path);
    OPERATIONS
        .iter()
        .find(|(m, t, _)| m == method && *t == template)
        .map(|(_, _, op)| *op)
}

/// Counts every request that reached a route, by `operationId` (refused ones included: they
/// reached the provider and would count against a real app's budget all the same).
async fn count_operation(State(state): State<SimState>, req: Request, next: Next) -> Response {
    let op = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| operation_id(req.method(), path.as_str()));
    if let Some(op) = op {
        *state
            .stats()
            .constant_contact
            .operations
            .entry(op)
            .or_insert(0) += 1;
    }
    next.run(req).await
}

/// The application an authenticated request came from.
#[derive(Debug, Clone)]
pub struct AppId(pub String);

/// Bearer check, then the app's budget.
async fn guard(State(state): State<SimState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(oauth::bearer_token)
        .map(str::to_owned);
    let limits = Limits {
        per_second: state.config().cc_requests_per_second,
        per_day: state.config().cc_daily_quota,
    };
    let verdict = {
        let mut world = state.world();
        let now = world.clock.now();
        let cc = &mut world.cc;
        let Some(app) = token.and_then(|t| oauth::app_of_access_token(cc, &t, now)) else {
            return CcError::unauthorized().into_response();
        };
        let verdict = cc
            .budgets
            .entry(app.clone())
            .or_default()
            .admit(Instant::now(), now, limits);
        req.extensions_mut().insert(AppId(app));
        verdict
    };
    match verdict {
        Verdict::Admitted => next.run(req).await,
        Verdict::Throttled => {
            state.stats().constant_contact.throttled += 1;
            CcError::throttled().into_response()
        }
        Verdict::QuotaExceeded => {
            state.stats().constant_contact.quota_exceeded += 1;
            CcError::quota_exceeded().into_response()
        }
    }
}

/// `POST /_sim/faults` applies here too; the bodies are Constant Contact's.
async fn inject_faults(State(state): State<SimState>, req: Request, next: Next) -> Response {
    match faults::roll(&state).await {
        Some(Fault::Drop) => Fault::dropped_response(),
        Some(Fault::TooManyRequests) => CcError::throttled().into_response(),
        Some(Fault::Internal) => CcError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "An internal server error occurred.",
        )
        .into_response(),
        None => next.run(req).await,
    }
}

/// A `/v3` error: a JSON array with one `{error_key, error_message}`, or a single object for
/// auth and rate-limit errors.
#[derive(Debug, Clone)]
pub struct CcError {
    pub status: StatusCode,
    pub key: &'static str,
    pub message: String,
    pub single: bool,
}

impl CcError {
    pub fn new(status: StatusCode, key: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            key,
            message: message.into(),
            single: false,
        }
    }

    fn single(mut self) -> Self {
        self.single = true;
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").single()
    }

    pub fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Too Many Requests",
        )
        .single()
    }

    pub fn quota_exceeded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            "Limit Exceeded",
        )
        .single()
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn malformed_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "The request body is not valid JSON of the expected shape.",
        )
    }
}

impl IntoResponse for CcError {
    fn into_response(self) -> Response {
        let error = json!({"error_key": self.key, "error_message": self.message});
        let body = if self.single { error } else { json!([error]) };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type CcResult = Result<Response, CcError>;

/// A JSON response with `status`.
pub fn json_with(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

/// Parses a JSON body into `T`; anything else is a 400 array.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CcError> {
    serde_json::from_slice(body).map_err(|e| {
        CcError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("The request body could not be read: {e}"),
        )
    })
}

/// The query string as pairs, in order (repeated names kept, as `bounce_code` needs).
pub fn query_pairs(req_query: Option<&str>) -> Vec<(String, String)> {
    req_query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

/// A query with the paging cursor resolved: the filters and position a `cursor` carries
/// replace the request's own (the `_links.next.href` of a page holds only `cursor`).
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub pairs: Vec<(String, String)>,
    /// The `seq` after which this page starts (0: from the beginning).
    pub after: u64,
}

impl PageQuery {
    pub fn from_request(pairs: Vec<(String, String)>) -> Result<Self, CcError> {
        let Some(cursor) = pairs.iter().find(|(k, _)| k == "cursor").map(|(_, v)| v) else {
            return Ok(Self { pairs, after: 0 });
        };
        decode_cursor(cursor).ok_or_else(|| CcError::bad_request("The cursor is not valid."))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` within `1..=max` (`default` when absent); anything else is a 400.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, CcError> {
        match self.get("limit") {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| CcError::bad_request(format!("limit must be between 1 and {max}."))),
        }
    }

    /// The relative `_links.next.href` of the page after `last_seq`, for `path` (under `/v3`).
    pub fn next_href(&self, path: &str, last_seq: u64) -> String {
        format!("/v3{path}?cursor={}", encode_cursor(&self.pairs, last_seq))
    }
}

fn encode_cursor(pairs: &[(String, String)], after: u64) -> String {
    let mut all: Vec<(&str, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    all.push(("__after", after.to_string()));
    let text = serde_urlencoded::to_string(&all).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Option<PageQuery> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()?;
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).ok()?;
    let at = pairs.iter().position(|(k, _)| k == "__after")?;
    let after = pairs.remove(at).1.parse().ok()?;
    Some(PageQuery { pairs, after })
}

/// Splits a csv query value into its trimmed, non-empty parts.
pub fn csv(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// A map of the query's last values (for routes that need no repeats and no cursor).
pub fn query_map(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    pairs.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_found_with_or_without_the_prefix() {
        assert_eq!(
            operation_id(&Method::GET, "/v3/contacts/{contact_id}"),
            Some("getContactById")
        );
        assert_eq!(
            operation_id(&Method::PUT, "/contacts/{contact_id}"),
            Some("updateContact")
        );
        assert_eq!(
            operation_id(&Method::DELETE, "/contacts/{contact_id}"),
            None
        );
    }

    #[test]
    fn a_cursor_carries_the_filters_and_the_position() {
        let pairs = vec![
            ("status".to_owned(), "all".to_owned()),
            ("limit".to_owned(), "2".to_owned()),
        ];
        let first = PageQuery::from_request(pairs).unwrap();
        let href = first.next_href("/contacts", 42);
        let cursor = href.strip_prefix("/v3/contacts?cursor=").unwrap();
        let next = PageQuery::from_request(vec![("cursor".to_owned(), cursor.to_owned())]).unwrap();
        assert_eq!(next.after, 42);
        assert_eq!(next.get("status"), Some("all"));
        assert_eq!(next.limit(50, 500).unwrap(), 2);
        assert!(PageQuery::from_request(vec![("cursor".to_owned(), "%%%".to_owned())]).is_err());
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        let query = |v: &str| PageQuery {
            pairs: vec![("limit".to_owned(), v.to_owned())],
            after: 0,
        };
        assert!(query("0").limit(50, 500).is_err());
        assert!(query("501").limit(50, 500).is_err());
        assert!(query("x").limit(50, 500).is_err());
        assert_eq!(query("500").limit(50, 500).unwrap(), 500);
        assert_eq!(PageQuery::default().limit(50, 500).unwrap(), 50);
    }
}
