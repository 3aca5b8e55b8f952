//! Provider webhooks: `GET|POST /webhooks/mailchimp/{secret}` (list webhooks) and
//! `HEAD|POST /webhooks/mailchimp-transactional` (Mandrill-style). Order of checks: URL secret
//! (404), signature (401), body (400), then the events are committed (group commit, see
//! `events::ingest`) before the 200. Refused requests store nothing.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::{ApiError, Shared, constant_time_eq};
use crate::providers::NewEvent;
use crate::providers::mailchimp::webhook::{self, WebhookError};
use crate::store::signing::StoredSigningSecret;

/// Every webhook route, as the router knows it. tests/attacks.rs fails when one has no case.
pub const ROUTES: [&str; 2] = [MAILCHIMP_ROUTE, TRANSACTIONAL_ROUTE];
const MAILCHIMP_ROUTE: &str = "/webhooks/mailchimp/{secret}";
const TRANSACTIONAL_ROUTE: &str = "/webhooks/mailchimp-transactional";

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            MAILCHIMP_ROUTE,
            get(mailchimp_validate).post(mailchimp_event),
        )
        .route(
            TRANSACTIONAL_ROUTE,
            get(transactional_validate)
                .head(transactional_validate)
                .post(transactional_events),
        )
}

fn rejected(provider: &'static str, why: &'static str) {
    metrics::counter!("mailbridge_events_rejected_total", "provider" => provider, "reason" => why)
        .increment(1);
}

fn webhook_error(provider: &'static str, err: WebhookError) -> ApiError {
    match err {
        WebhookError::Signature(message) => {
            rejected(provider, "signature");
            ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", message)
        }
        WebhookError::Malformed { code, message } => {
            rejected(provider, code);
            ApiError::bad_request(code, message)
        }
    }
}

/// The URL secret must match `[server] webhook_secret` (constant time); anything else is a 404,
/// as for a URL that does not exist.
fn check_url_secret(state: &Shared, given: &str) -> Result<(), ApiError> {
    let expected = state
        .config
        .server
        .as_ref()
        .and_then(|s| s.webhook_secret.as_ref());
    match expected {
        Some(secret) if constant_time_eq(given.as_bytes(), secret.expose_secret().as_bytes()) => {
            Ok(())
        }
        _ => {
            rejected("mailchimp", "wrong_secret");
            Err(ApiError::not_found("no such endpoint"))
        }
    }
}

async fn mailchimp_validate(
    State(state): State<Shared>,
    Path(secret): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_url_secret(&state, &secret)?;
    Ok(Json(json!({"status": "ok"})))
}

async fn mailchimp_event(
    State(state): State<Shared>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    check_url_secret(&state, &secret)?;
    let now = chrono::Utc::now();
    let header = headers
        .get("x-mailchimp-signature")
        .and_then(|v| v.to_str().ok());
    let unreadable = |e| ApiError::unavailable("reading the webhook signing secrets", e);
    let stored = state
        .signing_secrets
        .get(&state.store)
        .await
        .map_err(unreadable)?;
    let checked = match check_mailchimp(&state, &stored, header, &body, now) {
        // Refused on the secrets read a moment ago: `sync` may have stored the one that signs
        // it since. Checked again on the table as it is now before it is refused.
        Err(WebhookError::Signature(_)) => {
            let stored = state
                .signing_secrets
                .fresh(&state.store)
                .await
                .map_err(unreadable)?;
            check_mailchimp(&state, &stored, header, &body, now)
        }
        checked => checked,
    };
    let event = checked.map_err(|e| webhook_error("mailchimp", e))?;
    let ignored = event.ignored;
    if let Some(why) = ignored {
        metrics::counter!("mailbridge_events_ignored_total", "provider" => "mailchimp", "reason" => why)
            .increment(1);
    }
    let stored = store(&state, vec![event]).await?;
    Ok(Json(match (ignored, stored) {
        (Some(why), _) => json!({"status": "ignored", "reason": why}),
        (None, 1) => json!({"status": "stored"}),
        (None, _) => json!({"status": "duplicate"}),
    }))
}

/// A Mailchimp list delivery checked against the signing secrets of the config and `stored`:
/// the signature first, before the body is parsed (research §6), then the body, then whether its
/// list demands a signature it lacks. The event comes back marked verified or not.
fn check_mailchimp(
    state: &Shared,
    stored: &[StoredSigningSecret],
    header: Option<&str>,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<NewEvent, WebhookError> {
    let config = &state.config;
    // The lists whose deliveries must be signed: a secret in the config, or the one Mailchimp
    // returned when `sync` registered the webhook.
    let signed: Vec<(&str, &[u8])> = config
        .audiences
        .iter()
        .filter_map(|a| {
            a.webhook_signing_secret
                .as_ref()
                .map(|s| (a.list_id.as_str(), s.expose_secret().as_bytes()))
        })
        .chain(
            stored
                .iter()
                .map(|s| (s.list_id.as_str(), s.secret.expose_secret().as_bytes())),
        )
        .collect();
    // A header with no secret to check it against proves nothing: the delivery is then unsigned.
    let signed_for: Option<&str> = match header {
        Some(_) if !signed.is_empty() => {
            let secrets: Vec<&[u8]> = signed.iter().map(|(_, s)| *s).collect();
            let i = webhook::verify_mailchimp_signature(header, body, &secrets, now)?;
            Some(signed[i].0)
        }
        _ => None,
    };
    let pairs = webhook::form_pairs(body)?;
    let mut event = webhook::decode_mailchimp(
        &pairs,
        |list| {
            config
                .audiences
                .iter()
                .find(|a| a.list_id == list)
                .map(|a| a.name.clone())
        },
        now,
    )?;
    // A list with a signing secret accepts only deliveries signed with its own secret.
    let list = event.list_id.as_deref().unwrap_or("");
    let needs_signature = signed.iter().any(|(l, _)| *l == list);
    if needs_signature && signed_for != Some(list) {
        return Err(WebhookError::Signature(if header.is_none() {
            "missing X-Mailchimp-Signature header".to_owned()
        } else {
            "X-Mailchimp-Signature was made with another list's secret".to_owned()
        }));
    }
    // Unsigned, it is a hint: the writeback worker confirms it with Mailchimp before it acts.
    event.verified = signed_for == Some(list);
    Ok(event)
}

/// Commits the events, counts them, wakes the writeback worker; the number that were new.
async fn store(state: &Shared, events: Vec<NewEvent>) -> Result<usize, ApiError> {
    let labels: Vec<(&'static str, String)> = events
        .iter()
        .map(|e| (e.provider, e.event_type.clone()))
        .collect();
    let fresh = state
        .events
        .write(events)
        .await
        .map_err(|e| ApiError::unavailable("storing the event", e))?;
    let mut new = 0;
    for ((provider, kind), is_new) in labels.into_iter().zip(fresh) {
        metrics::counter!("mailbridge_events_received_total", "provider" => provider, "type" => kind.clone())
            .increment(1);
        if is_new {
            new += 1;
        } else {
            metrics::counter!("mailbridge_events_duplicate_total", "provider" => provider, "type" => kind)
                .increment(1);
        }
    }
    if new > 0 {
        state.events_ready.notify_one();
    }
    Ok(new)
}

/// The transactional endpoint's key and the URL it is signed over, when configured.
fn transactional_setup(state: &Shared) -> Option<(&[u8], String)> {
    let server = state.config.server.as_ref()?;
    let key = server.transactional_webhook_key.as_ref()?;
    let url = match (&server.transactional_webhook_url, &server.public_url) {
        (Some(url), _) => url.clone(),
        (None, Some(base)) => format!("{base}/webhooks/mailchimp-transactional"),
        (None, None) => return None,
    };
    Some((key.expose_secret().as_bytes(), url))
}

async fn transactional_validate(State(state): State<Shared>) -> StatusCode {
    if transactional_setup(&state).is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn transactional_events(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    const P: &str = "mailchimp_transactional";
    let Some((key, url)) = transactional_setup(&state) else {
        rejected(P, "not_configured");
        return Err(ApiError::not_found(
            "transactional webhooks are off: [server] transactional_webhook_key is not configured",
        ));
    };
    let pairs = webhook::form_pairs(&body).map_err(|e| webhook_error(P, e))?;
    let header = headers
        .get("x-mandrill-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = webhook::verify_mandrill_signature(header, key, &url, &pairs) {
        // The provider's check of a new webhook is an empty batch signed with `test-webhook`.
        let empty_test = pairs
            .iter()
            .all(|(k, v)| k != "mandrill_events" || v.trim() == "[]")
            && webhook::verify_mandrill_signature(header, b"test-webhook", &url, &pairs).is_ok();
        if !empty_test {
            return Err(webhook_error(P, e));
        }
    }
    let events =
        webhook::decode_mandrill(&pairs, chrono::Utc::now()).map_err(|e| webhook_error(P, e))?;
    let total = events.len();
    let new = store(&state, events).await?;
    Ok(Json(
        json!({"status": "stored", "received": total, "new": new}),
    ))
}
