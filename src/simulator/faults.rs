//! What wraps every `/3.0` request, outermost first: request statistics by route template, API key
//! check, the per-key concurrency limit (Mailchimp's 10 simultaneous connections), and injected
//! faults (latency, 429, 500, dropped connection). A fault is decided before the handler runs, so a
//! faulted write changes nothing. The fault roll ([`roll`]) also serves Constant Contact's `/v3`.

use std::collections::BTreeMap;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SimState;
use super::constant_contact::state::CcStats;
use super::mailchimp::problem::Problem;

/// Fault settings (`POST /_sim/faults`); every field optional, `{}` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub rate_429: f64,
    #[serde(default)]
    pub rate_500: f64,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub drop_connection_rate: f64,
}

impl Faults {
    /// Rates must be probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("rate_429", self.rate_429),
            ("rate_500", self.rate_500),
            ("drop_connection_rate", self.drop_connection_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// Request counts (`GET /_sim/stats`).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub total: u64,
    pub by_route: BTreeMap<String, u64>,
    pub faults_429: u64,
    pub faults_500: u64,
    pub dropped: u64,
    /// Constant Contact's counters (its requests are not in `total` / `by_route`).
    pub constant_contact: CcStats,
}

impl Stats {
    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "by_route": self.by_route,
            "faults": {"429": self.faults_429, "500": self.faults_500, "dropped": self.dropped},
            "constant_contact": self.constant_contact.to_json(),
        })
    }
}

/// Marker put on a response whose connection the server must close without answering.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// The API key of an authenticated request.
#[derive(Debug, Clone)]
pub struct ApiKey(pub String);

/// Counts every request by `METHOD /3.0/path/{template}` (the spec's parameter names are used in
/// the routes, so the matched path is the spec's template).
pub async fn count_requests(State(state): State<SimState>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", req.method(), path.as_str()),
        None => format!("{} (unmatched)", req.method()),
    };
    {
        let mut stats = state.stats();
        stats.total += 1;
        *stats.by_route.entry(route).or_insert(0) += 1;
    }
    next.run(req).await
}

/// Basic auth (any user, non-empty key) or `Authorization: Bearer <token>`.
pub async fn authenticate(mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "API Key Missing",
            "Your request did not include an API key.",
        )
        .into_response();
    };
    match api_key(header) {
        Some(key) => {
            req.extensions_mut().insert(ApiKey(key));
            next.run(req).await
        }
        None => Problem::new(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        )
        .into_response(),
    }
}

/// Extracts the key from an `Authorization` header value.
pub fn api_key(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, key) = text.split_once(':')?;
    (!key.is_empty()).then(|| key.to_owned())
}

/// Decrements the key's in-flight count when the request is done (response produced or the
/// request future dropped).
struct InFlight {
    state: SimState,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inflight = self.state.inflight();
        if let Some(n) = inflight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inflight.remove(&self.key);
            }
        }
    }
}

/// More than `config.concurrency_limit` requests in flight for one key → 429.
pub async fn limit_concurrency(
    State(state): State<SimState>,
    req: Request,
    next: Next,
) -> Response {
    let key = req
        .extensions()
        .get::<ApiKey>()
        .map(|k| k.0.clone())
        .unwrap_or_default();
    let admitted = {
        let mut inflight = state.inflight();
        let n = inflight.entry(key.clone()).or_insert(0);
        if *n >= state.config().concurrency_limit {
            false
        } else {
            *n += 1;
            true
        }
    };
    if !admitted {
        return Problem::too_many_requests().into_response();
    }
    let _guard = InFlight { state, key };
    next.run(req).await
}

/// The fault an injected-fault roll picked for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without answering.
    Drop,
    TooManyRequests,
    Internal,
}

impl Fault {
    /// The response that closes the connection unanswered (the accept loop sees the marker).
    pub fn dropped_response() -> Response {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, "connection dropped").into_response();
        response.extensions_mut().insert(DropConnection);
        response
    }
}

/// Waits the configured latency, then rolls the configured faults and counts the one picked.
/// Each provider's middleware turns the fault into its own error body.
pub async fn roll(state: &SimState) -> Option<Fault> {
    let faults = state.faults().clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
    }
    if hit(faults.drop_connection_rate) {
        state.stats().dropped += 1;
        return Some(Fault::Drop);
    }
    if hit(faults.rate_429) {
        state.stats().faults_429 += 1;
        return Some(Fault::TooManyRequests);
    }
    if hit(faults.rate_500) {
        state.stats().faults_500 += 1;
        return Some(Fault::Internal);
    }
    None
}

/// Applies the configured faults before the handler runs.
pub async fn inject_faults(State(state): State<SimState>, req: Request, next: Next) -> Response {
    match roll(&state).await {
        Some(Fault::Drop) => Fault::dropped_response(),
        Some(Fault::TooManyRequests) => Problem::too_many_requests().into_response(),
        Some(Fault::Internal) => Problem::internal().into_response(),
        None => next.run(req).await,
    }
}

fn hit(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || rand::random::<f64>() < rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn api_key_accepts_basic_and_bearer() {
        let basic = base64::engine::general_purpose::STANDARD.encode("anystring:key-us1");
        assert_eq!(
            api_key(&format!("Basic {basic}")).as_deref(),
            Some("key-us1")
        );
        assert_eq!(api_key("Bearer tok").as_deref(), Some("tok"));
        let empty = base64::engine::general_purpose::STANDARD.encode("user:");
        assert_eq!(api_key(&format!("Basic {empty}")), None);
        assert_eq!(api_key("Basic !!!"), None);
        assert_eq!(api_key("Digest abc"), None);
        assert_eq!(api_key("Bearer "), None);
    }

    #[test]
    fn fault_rates_are_probabilities() {
        for (name, faults, valid) in [
            (
                "rate above 1",
                Faults {
                    rate_500: 1.5,
                    ..Faults::default()
                },
                false,
            ),
            (
                "rate of one half",
                Faults {
                    rate_429: 0.5,
                    ..Faults::default()
                },
                true,
            ),
        ] {
            assert_eq!(faults.validate().is_ok(), valid, "{name}");
        }
        assert!(!hit(0.0));
        assert!(hit(1.0));
    }
}
