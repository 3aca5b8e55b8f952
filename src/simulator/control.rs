//! The `/_sim` control endpoints (no auth). Their shapes are a contract other tools rely on:
//!
//! - `POST /_sim/faults` `{"rate_429", "rate_500", "latency_ms", "drop_connection_rate"}` (all
//!   optional, `{}` clears) → 200 with the faults now in force, on `/3.0` and `/v3` alike;
//!   `GET /_sim/faults` reads them.
//! - `GET /_sim/stats` → `{"total", "by_route": {"METHOD /3.0/template": n}, "faults": {"429",
//!   "500", "dropped"}, "constant_contact": {"operations": {operationId: n}, "rate_limited":
//!   {"throttled", "quota_exceeded"}, "token_calls"}}` (`total` and `by_route` count Mailchimp
//!   only); `POST /_sim/stats/reset` zeroes them.
//! - `GET /_sim/lists/{list_id}/members` → `{"members": [member…], "total_items": n}`, unpaged, in
//!   Mailchimp's member shape, ordered by `last_changed`.
//! - `POST /_sim/lists/{list_id}/members/{email}/unsubscribe[?reason=abuse][&campaign_id=…]`: a
//!   reader unsubscribes (`abuse` = spam complaint); webhooks fire with source `user`.
//! - `POST /_sim/lists/{list_id}/members/{email}/clean[?reason=hard|abuse][&campaign_id=…]`: the
//!   address hard-bounces; webhooks fire with source `admin`.
//! - `POST /_sim/lists/{list_id}/members/{email}/confirm`: a pending member confirms (→ subscribed,
//!   source `user`).
//! - `GET /_sim/deliveries` → `[{"campaign_id", "email"}]`; `GET /_sim/test-sends` →
//!   `[{"campaign_id", "email", "send_type"}]`.
//! - `GET /_sim/webhook-deliveries` → every delivery attempt `[{"webhook_id", "url", "type",
//!   "email", "attempt", "status", "outcome", "body", "at"}]`.
//! - `POST /_sim/clock/advance` `{"seconds": n}`: moves simulated time forward (so a test can make
//!   changes land in a later second without sleeping) → `{"now"}`.
//! - `GET /_sim/batch-results/{batch_id}.tar.gz`: a finished `/batches` batch's results (the
//!   `response_body_url` its status gives; Mailchimp serves these from a storage host).
//! - `POST /_sim/reset`: all state (Constant Contact's too), stats, faults and logs.
//! - `/_sim/constant-contact/*`: Constant Contact's own control routes
//!   ([`super::constant_contact::control`]).
//!
//! `{email}` may also be a subscriber hash. Unknown list or member → 404 problem.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::SimState;
use super::faults::Faults;
use super::mailchimp::members::set_status_by_action;
use super::mailchimp::problem::Problem;
use super::mailchimp::webhooks;
use super::mailchimp::{
    ListAt, QueryMap, json_bytes_response, json_response, list_at, path_hash, to_json_bytes,
};
use super::state::{MemberView, Source, Status};

type ApiResult = Result<Response, Problem>;

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/faults", get(get_faults).post(set_faults))
        .route("/stats", get(get_stats))
        .route("/stats/reset", post(reset_stats))
        .route("/lists/{list_id}/members", get(list_members))
        .route(
            "/lists/{list_id}/members/{email}/unsubscribe",
            post(|state, path, query| reader_event(state, path, query, UNSUBSCRIBE)),
        )
        .route(
            "/lists/{list_id}/members/{email}/clean",
            post(|state, path, query| reader_event(state, path, query, CLEAN)),
        )
        .route("/lists/{list_id}/members/{email}/confirm", post(confirm))
        .route("/deliveries", get(deliveries))
        .route("/test-sends", get(test_sends))
        .route("/webhook-deliveries", get(webhook_deliveries))
        .route("/clock/advance", post(advance_clock))
        .route(
            "/batch-results/{file}",
            get(super::mailchimp::batches::download),
        )
        .route("/reset", post(reset))
}

/// `{"seconds": n}`: moves the simulator's clock forward (timestamps, `last_changed`).
async fn advance_clock(State(state): State<SimState>, body: Bytes) -> ApiResult {
    let body: Value = serde_json::from_slice(&body).map_err(|_| Problem::json_parse())?;
    let Some(seconds) = body
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| *s >= 0.0)
    else {
        return Err(Problem::invalid_field(
            "seconds",
            "Please provide a non-negative number of seconds.",
        ));
    };
    let mut world = state.world();
    world.clock.advance((seconds * 1_000_000.0) as i64);
    let now = world.clock.now();
    Ok(json_response(
        json!({"now": super::state::format_time(now)}),
    ))
}

async fn get_faults(State(state): State<SimState>) -> Response {
    json_response(json!(*state.faults()))
}

async fn set_faults(State(state): State<SimState>, body: Bytes) -> ApiResult {
    let faults: Faults = if body.iter().all(u8::is_ascii_whitespace) {
        Faults::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Problem::bad_request(format!("Invalid faults: {e}")))?
    };
    faults.validate().map_err(Problem::bad_request)?;
    *state.faults() = faults.clone();
    Ok(json_response(json!(faults)))
}

async fn get_stats(State(state): State<SimState>) -> Response {
    json_response(state.stats().to_json())
}

async fn reset_stats(State(state): State<SimState>) -> Response {
    *state.stats() = Default::default();
    json_response(state.stats().to_json())
}

async fn list_members(State(state): State<SimState>, Path(list_id): Path<String>) -> ApiResult {
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let members: Vec<MemberView<'_>> = list
        .changes
        .values()
        .filter_map(|h| list.members.get(h))
        .map(|member| list.view(member, false))
        .collect();
    let body = WholeList {
        total_items: members.len(),
        members,
    };
    let bytes = to_json_bytes(&body, body.total_items).map_err(|_| Problem::internal())?;
    Ok(json_bytes_response(bytes))
}

#[derive(serde::Serialize)]
struct WholeList<'a> {
    members: Vec<MemberView<'a>>,
    total_items: usize,
}

/// Applies a reader/bounce status change and fires the list's webhooks.
fn act(
    state: &SimState,
    list_id: &str,
    email: &str,
    status: Status,
    reason: &str,
    campaign_id: Option<&str>,
    source: Source,
) -> ApiResult {
    let hash = path_hash(email)?;
    let mut guard = state.world();
    let world = &mut *guard;
    let ListAt { now, list, .. } = list_at(world, list_id)?;
    let events = set_status_by_action(list, hash, status, reason, campaign_id, source, now)
        .map_err(|e| e.to_problem())?;
    let body = list
        .members
        .get(&hash)
        .map(|m| list.member_json(m))
        .unwrap_or_default();
    let deliveries = webhooks::resolve(world, &events);
    drop(guard);
    webhooks::spawn(state, deliveries);
    Ok(json_response(body))
}

/// What a reader's unsubscribe or a bounce does: the status it sets, its reason unless
/// `?reason=abuse` says `abuse`, and the source its webhooks report.
#[derive(Clone, Copy)]
struct ReaderEvent {
    status: Status,
    usual_reason: &'static str,
    source: Source,
}

const UNSUBSCRIBE: ReaderEvent = ReaderEvent {
    status: Status::Unsubscribed,
    usual_reason: "manual",
    source: Source::User,
};

const CLEAN: ReaderEvent = ReaderEvent {
    status: Status::Cleaned,
    usual_reason: "hard",
    source: Source::Admin,
};

/// `unsubscribe` and `clean`: `event` for the member, with `?reason=` and `?campaign_id=`.
async fn reader_event(
    State(state): State<SimState>,
    Path((list_id, email)): Path<(String, String)>,
    QueryMap(query): QueryMap,
    event: ReaderEvent,
) -> ApiResult {
    let reason = if query.get("reason").map(String::as_str) == Some("abuse") {
        "abuse"
    } else {
        event.usual_reason
    };
    act(
        &state,
        &list_id,
        &email,
        event.status,
        reason,
        query.get("campaign_id").map(String::as_str),
        event.source,
    )
}

async fn confirm(
    State(state): State<SimState>,
    Path((list_id, email)): Path<(String, String)>,
) -> ApiResult {
    let hash = path_hash(&email)?;
    let status = state
        .world()
        .list(&list_id)
        .and_then(|l| l.members.get(&hash))
        .map(|m| m.status)
        .ok_or_else(Problem::not_found)?;
    if status != Status::Pending {
        return Err(Problem::bad_request(format!(
            "Only a pending member can confirm; this one is {}.",
            status.as_str()
        )));
    }
    act(
        &state,
        &list_id,
        &email,
        Status::Subscribed,
        "manual",
        None,
        Source::User,
    )
}

async fn deliveries(State(state): State<SimState>) -> Response {
    let world = state.world();
    let out: Vec<Value> = world
        .deliveries
        .iter()
        .map(|d| json!({"campaign_id": d.campaign_id, "email": d.email}))
        .collect();
    drop(world);
    json_response(Value::Array(out))
}

async fn test_sends(State(state): State<SimState>) -> Response {
    let world = state.world();
    let out: Vec<Value> = world
        .test_sends
        .iter()
        .map(|t| json!({"campaign_id": t.campaign_id, "email": t.email, "send_type": t.send_type}))
        .collect();
    drop(world);
    json_response(Value::Array(out))
}

async fn webhook_deliveries(State(state): State<SimState>) -> Response {
    let log = state.webhook_log().clone();
    json_response(json!(log))
}

async fn reset(State(state): State<SimState>) -> Response {
    state.reset();
    json_response(json!({"reset": true}))
}
