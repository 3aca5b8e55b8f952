//! `/_sim/constant-contact/*`: control routes (no auth). Their shapes are a contract the client's
//! tests and the demo rely on:
//!
//! - `POST /connect` → `{"client_id", "client_secret", "refresh_token"}`: a new confidential app
//!   and the account's grant to it (scope `contact_data campaign_data account_read
//!   offline_access`); the refresh token is good for one `refresh_token` grant (it rotates).
//! - `POST /device/approve` `{"user_code"}` → `{"approved": true}`; unknown or expired → 404.
//! - `POST /lists` `{"name"}` → `{"list_id"}`; a taken name → 409.
//! - `GET /lists/{list_id}/contacts` → a JSON array of every contact on the list (deleted ones
//!   too), each `{"contact_id", "email", "permission_to_send", "opt_out_source", "opt_out_date",
//!   "first_name", "last_name", "custom_fields": {name: value}, "list_memberships": [list_id],
//!   "deleted"}` (absent values are `null`), in creation order.
//! - `POST /contacts/{email}/unsubscribe`: the contact opts out (permission `unsubscribed`,
//!   opt_out_source `Contact`, opt_out_date now) → that contact in the shape above.
//! - `POST /contacts/{email}/bounce` `{"code": "B"}`: a bounce on the campaign activity sent last →
//!   `{"campaign_activity_id", "contact_id", "bounce_code"}`; 409 when no campaign was sent.
//! - `POST /senders` `{"email", "confirmed"?}`: adds an account email (confirmed unless
//!   `"confirmed": false`) → `{"email", "confirmed"}`.
//! - `GET /sends` → `[{"campaign_activity_id", "contact_id", "email", "at"}]`, every campaign email
//!   "sent"; `GET /test-sends` → `[{"campaign_activity_id", "email", "at"}]`.
//! - `GET /activities` → `[{"activity_id", "kind", "state", "items_total_count", "created_us",
//!   "completed_us", "seen_completed_us"}]`, every bulk activity in creation order; times are the
//!   simulated clock in microseconds since the epoch (`null` when not yet), `seen_completed_us`
//!   the first `GET /activities/{id}` that answered it completed (so a benchmark can tell the
//!   time a client spent waiting on activities from its own work).
//!
//! `{email}` is matched case-insensitively; an unknown one → 404. Errors are Constant Contact's
//! array bodies.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::state::{AccountEmail, Actor, CcWorld, Contact, cc_time, is_plausible_email};
use super::{CcError, CcResult, campaigns, contacts, json_with, oauth, parse_json};
use crate::simulator::SimState;

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/connect", post(connect))
        .route("/device/approve", post(approve_device))
        .route("/lists", post(create_list))
        .route("/lists/{list_id}/contacts", get(list_contacts))
        .route("/contacts/{email}/unsubscribe", post(unsubscribe))
        .route("/contacts/{email}/bounce", post(bounce))
        .route("/senders", post(add_sender))
        .route("/sends", get(sends))
        .route("/test-sends", get(test_sends))
        .route("/activities", get(activities))
}

async fn connect(State(state): State<SimState>) -> CcResult {
    let mut world = state.world();
    world.cc.seed_if_empty();
    let connection = oauth::connect(&mut world.cc);
    Ok(json_with(
        StatusCode::OK,
        json!({
            "client_id": connection.client_id,
            "client_secret": connection.client_secret,
            "refresh_token": connection.refresh_token,
        }),
    ))
}

#[derive(Deserialize)]
struct ApproveRequest {
    user_code: String,
}

async fn approve_device(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: ApproveRequest = parse_json(&body)?;
    let mut world = state.world();
    let now = world.clock.now();
    if oauth::approve(&mut world.cc, &request.user_code, now) {
        Ok(json_with(StatusCode::OK, json!({"approved": true})))
    } else {
        Err(CcError::not_found(
            "No pending device authorization has that user code.",
        ))
    }
}

#[derive(Deserialize)]
struct CreateListRequest {
    name: String,
}

async fn create_list(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: CreateListRequest = parse_json(&body)?;
    let name = request.name.trim();
    if name.is_empty() {
        return Err(CcError::bad_request("name is required."));
    }
    let mut world = state.world();
    let now = world.clock.now();
    let list = contacts::create_list(&mut world.cc, name, false, None, now)?;
    Ok(json_with(StatusCode::OK, json!({"list_id": list.id})))
}

/// A contact as the control routes show it (custom fields by name).
fn control_json(cc: &CcWorld, contact: &Contact) -> Value {
    let fields: Map<String, Value> = contact
        .custom_fields
        .iter()
        .map(|(id, value)| {
            let name = cc
                .custom_fields
                .iter()
                .find(|f| &f.id == id)
                .map_or_else(|| id.clone(), |f| f.name.clone());
            (name, json!(value))
        })
        .collect();
    json!({
        "contact_id": contact.id,
        "email": contact.email,
        "permission_to_send": contact.permission.as_str(),
        "opt_out_source": contact.opt_out_source.map(Actor::as_str),
        "opt_out_date": contact.opt_out_date.map(cc_time),
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "custom_fields": fields,
        "list_memberships": contact.list_memberships,
        "deleted": contact.deleted_at.is_some(),
    })
}

async fn list_contacts(State(state): State<SimState>, Path(list_id): Path<String>) -> CcResult {
    let world = state.world();
    let cc = &world.cc;
    if cc.list(&list_id).is_none() {
        return Err(CcError::not_found(format!("List {list_id} was not found.")));
    }
    let out: Vec<Value> = cc
        .contacts
        .values()
        .filter(|c| c.list_memberships.contains(&list_id))
        .map(|c| control_json(cc, c))
        .collect();
    Ok(json_with(StatusCode::OK, Value::Array(out)))
}

fn unknown_contact(email: &str) -> CcError {
    CcError::not_found(format!("No contact has the address {email}."))
}

async fn unsubscribe(State(state): State<SimState>, Path(email): Path<String>) -> CcResult {
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let contact = cc
        .contact_by_email_mut(&email)
        .ok_or_else(|| unknown_contact(&email))?;
    contact.opt_out(Actor::Contact, None, now);
    contact.update_source = Actor::Contact;
    let body = cc
        .contact_by_email(&email)
        .map(|c| control_json(cc, c))
        .unwrap_or_default();
    Ok(json_with(StatusCode::OK, body))
}

#[derive(Deserialize)]
struct BounceRequest {
    code: String,
}

async fn bounce(State(state): State<SimState>, Path(email): Path<String>, body: Bytes) -> CcResult {
    let request: BounceRequest = parse_json(&body)?;
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let recorded = campaigns::record_bounce(cc, &email, &request.code, now)?;
    Ok(json_with(StatusCode::OK, recorded))
}

#[derive(Deserialize)]
struct SenderRequest {
    email: String,
    confirmed: Option<bool>,
}

async fn add_sender(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: SenderRequest = parse_json(&body)?;
    if !is_plausible_email(&request.email) {
        return Err(CcError::bad_request("email is not a valid address."));
    }
    let confirmed = request.confirmed.unwrap_or(true);
    let mut world = state.world();
    let cc = &mut world.cc;
    cc.seed_if_empty();
    let id = cc.account_emails.len() as u64 + 1;
    match cc
        .account_emails
        .iter_mut()
        .find(|a| a.email.eq_ignore_ascii_case(&request.email))
    {
        Some(existing) => existing.confirmed = confirmed,
        None => cc.account_emails.push(AccountEmail {
            email: request.email.trim().to_owned(),
            confirmed,
            id,
        }),
    }
    Ok(json_with(
        StatusCode::OK,
        json!({"email": request.email.trim(), "confirmed": confirmed}),
    ))
}

async fn sends(State(state): State<SimState>) -> CcResult {
    let world = state.world();
    let out: Vec<Value> = world
        .cc
        .sends
        .iter()
        .map(|s| {
            json!({
                "campaign_activity_id": s.campaign_activity_id,
                "contact_id": s.contact_id,
                "email": s.email,
                "at": cc_time(s.at),
            })
        })
        .collect();
    Ok(json_with(StatusCode::OK, Value::Array(out)))
}

async fn test_sends(State(state): State<SimState>) -> CcResult {
    let world = state.world();
    let out: Vec<Value> = world
        .cc
        .test_sends
        .iter()
        .map(|s| {
            json!({
                "campaign_activity_id": s.campaign_activity_id,
                "email": s.email,
                "at": cc_time(s.at),
            })
        })
        .collect();
    Ok(json_with(StatusCode::OK, Value::Array(out)))
}

async fn activities(State(state): State<SimState>) -> CcResult {
    let world = state.world();
    let mut all: Vec<_> = world.cc.activities.values().collect();
    all.sort_by_key(|a| a.created_at);
    let out: Vec<Value> = all
        .into_iter()
        .map(|a| {
            json!({
                "activity_id": a.id,
                "kind": a.kind,
                "state": a.state.as_str(),
                "items_total_count": a.status.items_total_count,
                "created_us": a.created_at,
                "completed_us": a.completed_at,
                "seen_completed_us": a.seen_completed_at,
            })
        })
        .collect();
    Ok(json_with(StatusCode::OK, Value::Array(out)))
}
