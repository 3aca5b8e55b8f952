//! List webhooks: registration (with Mailchimp's validation GET), matching events to webhooks by
//! `events` and `sources`, and delivery in background tasks with bounded retries. Every attempt is
//! logged for `GET /_sim/webhook-deliveries`, which is how tests wait for a delivery.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::members::webhook_form;
use super::problem::Problem;
use crate::simulator::SimState;
use crate::simulator::state::{
    Event, WEBHOOK_EVENTS, WEBHOOK_SOURCES, Webhook, World, format_time, random_id,
};

/// One delivery to make: an event matched to one webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub list_id: String,
    pub url: String,
    pub kind: &'static str,
    pub email: String,
    pub form: String,
    pub signing_secret: String,
}

/// One logged attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub webhook_id: String,
    pub url: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub email: String,
    pub attempt: u32,
    /// HTTP status answered, if any.
    pub status: Option<u16>,
    /// `delivered`, `failed` (will retry), `gave_up`, `disabled` (410) or `error: …`.
    pub outcome: String,
    pub body: String,
    pub at: String,
}

/// Parses and validates a `POST /lists/{id}/webhooks` body, then sends the validation GET.
/// Omitted `events`/`sources` flags default to true (documented choice).
pub async fn register(state: &SimState, list_id: &str, body: &Value) -> Result<Value, Problem> {
    let url = body
        .get("url")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    if parsed.is_none() {
        return Err(Problem::invalid_field(
            "url",
            "This value should be a valid URL.",
        ));
    }
    let events = flags(body.get("events"), &WEBHOOK_EVENTS, "events")?;
    let sources = flags(body.get("sources"), &WEBHOOK_SOURCES, "sources")?;
    if state.world().list(list_id).is_none() {
        return Err(Problem::not_found());
    }
    validate_url(state, url).await?;
    let hook = Webhook {
        id: random_id(10),
        url: url.to_owned(),
        events,
        sources,
        signing_secret: random_id(32),
    };
    let mut world = state.world();
    let list = world
        .lists
        .get_mut(list_id)
        .ok_or_else(Problem::not_found)?;
    let mut json = hook.to_json(list_id);
    // Current Mailchimp shows the signing secret once, in the create response (research §6).
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "signing_secret".into(),
            Value::String(hook.signing_secret.clone()),
        );
    }
    list.webhooks.push(hook);
    Ok(json)
}

fn flags(
    value: Option<&Value>,
    names: &[&'static str],
    field: &str,
) -> Result<std::collections::BTreeMap<&'static str, bool>, Problem> {
    let mut out: std::collections::BTreeMap<&'static str, bool> =
        names.iter().map(|n| (*n, true)).collect();
    match value {
        None | Some(Value::Null) => Ok(out),
        Some(Value::Object(obj)) => {
            for (key, v) in obj {
                let Some(name) = names.iter().find(|n| **n == key.as_str()) else {
                    return Err(Problem::invalid_field(
                        format!("{field}.{key}"),
                        "Unknown property",
                    ));
                };
                let Some(flag) = v.as_bool() else {
                    return Err(Problem::invalid_field(
                        format!("{field}.{key}"),
                        "Schema describes boolean",
                    ));
                };
                out.insert(name, flag);
            }
            Ok(out)
        }
        Some(_) => Err(Problem::invalid_field(field, "Schema describes object")),
    }
}

/// Mailchimp checks the URL with a GET before saving the webhook; anything but 2xx refuses it.
async fn validate_url(state: &SimState, url: &str) -> Result<(), Problem> {
    let answer = state
        .http()
        .get(url)
        .header(
            reqwest::header::USER_AGENT,
            "MailChimp.com WebHook Validator",
        )
        .timeout(state.config().webhook_timeout)
        .send()
        .await;
    let code = match answer {
        Ok(response) if response.status().is_success() => return Ok(()),
        Ok(response) => response.status().as_u16().to_string(),
        Err(_) => "none (connection failed)".to_owned(),
    };
    Err(Problem::invalid_field(
        "url",
        format!(
            "We couldn't verify the URL is working. Please double check and try again. HTTP Code: {code}"
        ),
    ))
}

/// Matches events to the webhooks of their lists (call while holding the world lock).
pub fn resolve(world: &World, events: &[Event]) -> Vec<Delivery> {
    let mut out = Vec::new();
    for event in events {
        let Some(list) = world.lists.get(&event.list_id) else {
            continue;
        };
        let hooks = list
            .webhooks
            .iter()
            .filter(|h| h.wants(event.kind, event.source));
        let mut form = None;
        for hook in hooks {
            let body = form.get_or_insert_with(|| webhook_form(event)).clone();
            out.push(Delivery {
                webhook_id: hook.id.clone(),
                list_id: list.id.clone(),
                url: hook.url.clone(),
                kind: event.kind,
                email: event.email.clone(),
                form: body,
                signing_secret: hook.signing_secret.clone(),
            });
        }
    }
    out
}

/// Starts one background task per delivery; the caller's request does not wait for them.
pub fn spawn(state: &SimState, deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        let state = state.clone();
        tokio::spawn(async move { deliver(state, delivery).await });
    }
}

async fn deliver(state: SimState, delivery: Delivery) {
    let config = state.config().clone();
    let mut shutdown = state.shutdown_signal();
    for attempt in 1..=config.webhook_max_attempts {
        if *shutdown.borrow() {
            return;
        }
        let result = state
            .http()
            .post(&delivery.url)
            .header(reqwest::header::USER_AGENT, "MailChimp.com")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(
                "X-Mailchimp-Signature",
                crate::providers::mailchimp::webhook::mailchimp_signature(
                    delivery.signing_secret.as_bytes(),
                    chrono::Utc::now().timestamp(),
                    delivery.form.as_bytes(),
                ),
            )
            .timeout(config.webhook_timeout)
            .body(delivery.form.clone())
            .send()
            .await;
        let last = attempt == config.webhook_max_attempts;
        let (status, outcome, done) = match result {
            Ok(response) if response.status().is_success() => (
                Some(response.status().as_u16()),
                "delivered".to_owned(),
                true,
            ),
            Ok(response) if response.status() == StatusCode::GONE => {
                // 410 disables the webhook at once, without retries (changelog 2021-04-05).
                let mut world = state.world();
                if let Some(list) = world.lists.get_mut(&delivery.list_id) {
                    list.webhooks.retain(|h| h.id != delivery.webhook_id);
                }
                (Some(410), "disabled".to_owned(), true)
            }
            Ok(response) => {
                let outcome = if last { "gave_up" } else { "failed" };
                (Some(response.status().as_u16()), outcome.to_owned(), last)
            }
            Err(err) => {
                let kind = if err.is_timeout() {
                    "timeout"
                } else {
                    "connection failed"
                };
                let outcome = if last {
                    format!("gave_up: {kind}")
                } else {
                    format!("error: {kind}")
                };
                (None, outcome, last)
            }
        };
        state.webhook_log().push(Attempt {
            webhook_id: delivery.webhook_id.clone(),
            url: delivery.url.clone(),
            kind: delivery.kind,
            email: delivery.email.clone(),
            attempt,
            status,
            outcome,
            body: delivery.form.clone(),
            at: format_time(chrono::Utc::now().timestamp_micros()),
        });
        if done {
            return;
        }
        let delay = config.webhook_backoff * 2u32.saturating_pow(attempt - 1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `Duration` helper for configs.
pub const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
