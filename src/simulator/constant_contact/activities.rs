//! Bulk activities (research §3): `POST /activities/contacts_json_import`,
//! `POST /activities/remove_list_memberships` and `GET /activities/{activity_id}`.
//!
//! An activity is answered `initialized` and done later, really asynchronously: one background
//! worker takes activities in creation order, marks each `processing`, waits
//! `SimConfig::cc_activity_delay` (real time), applies it and marks it `completed`. More than
//! `cc_max_queued_activities` unfinished activities → 429 with error_key
//! `too_many_queued_activities`.
//!
//! An import refuses more than 40,000 contacts (400). When the raw body is over 4 MB it silently
//! keeps only the contacts lying wholly within the first 4 MB ([`items_within`]), as the vendor
//! documents; `items_total_count` then counts only those. Import semantics: new contacts become
//! `implicit` (opt-in source Account); existing ones are updated for the properties sent; a
//! contact who unsubscribed within `cc_resubscribe_window` IS re-subscribed (the trap the vendor
//! warns about in contacts_sync.html); an older unsubscriber is counted in
//! `cannot_add_to_list_count` and left off the lists.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::state::{
    Activity, ActivityState, ActivityStatus, ActivityWork, Actor, CcWorld, Contact, ImportRow,
    Permission, RemoveFrom, cc_time, is_plausible_email, uuid_v4,
};
use super::{CcError, CcResult, json_with, parse_json};
use crate::simulator::SimState;

/// Contacts one JSON import may carry.
pub const MAX_IMPORT_CONTACTS: usize = 40_000;

/// Bytes of an import body that are read; contacts past them are silently dropped.
pub const IMPORT_READ_BYTES: usize = 4 * 1024 * 1024;

/// The largest import body accepted at all (413 beyond), to bound the simulator's memory.
const IMPORT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Contact ids one `remove_list_memberships` may name.
const MAX_REMOVE_CONTACTS: usize = 500;

pub fn routes() -> Router<SimState> {
    Router::new()
        .route(
            "/activities/contacts_json_import",
            post(import_json).layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT)),
        )
        .route(
            "/activities/remove_list_memberships",
            post(remove_list_memberships),
        )
        .route("/activities/{activity_id}", get(get_activity))
}

/// How many elements of the top-level `import_data` array end within the first `limit` bytes of
/// `body` (valid JSON assumed). One pass, no recursion: a depth counter and string state.
pub fn items_within(body: &[u8], limit: usize) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0usize;
    let mut last_key = (0usize, 0usize);
    let mut in_target = false;
    let mut element_open = false;
    let mut count = 0usize;
    for (i, &byte) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                if depth == 1 {
                    last_key = (string_start, i);
                }
            }
            continue;
        }
        if i >= limit && !element_open && in_target {
            break;
        }
        match byte {
            b'"' => {
                in_string = true;
                string_start = i + 1;
                if in_target && depth == 2 {
                    element_open = true;
                }
            }
            b'{' | b'[' => {
                if in_target && depth == 2 {
                    element_open = true;
                }
                if depth == 1 && byte == b'[' && &body[last_key.0..last_key.1] == b"import_data" {
                    in_target = true;
                }
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if in_target && depth == 2 && element_open {
                    // A container element just closed.
                    if i < limit {
                        count += 1;
                    }
                    element_open = false;
                } else if in_target && depth == 1 {
                    // The array closed; a scalar element may end here.
                    if element_open && i <= limit {
                        count += 1;
                    }
                    return count;
                }
            }
            b',' => {
                if in_target && depth == 2 && element_open {
                    if i <= limit {
                        count += 1;
                    }
                    element_open = false;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            _ => {
                if in_target && depth == 2 {
                    element_open = true;
                }
            }
        }
    }
    count
}

#[derive(Deserialize)]
struct ImportRequest {
    import_data: Option<Vec<Map<String, Value>>>,
    list_ids: Option<Vec<String>>,
}

/// A row's value as text (numbers and booleans too); `None` for null, arrays and objects.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn import_row(row: &Map<String, Value>) -> ImportRow {
    let field = |name: &str| row.get(name).and_then(text).filter(|v| !v.is_empty());
    ImportRow {
        email: row.get("email").and_then(text),
        first_name: field("first_name"),
        last_name: field("last_name"),
        job_title: field("job_title"),
        company_name: field("company_name"),
        custom_fields: row
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("cf:")?.to_owned(), text(v)?)))
            .collect(),
    }
}

/// The target `list_ids` of an activity: 1 to 50 existing lists.
fn checked_targets(cc: &CcWorld, list_ids: Option<Vec<String>>) -> Result<Vec<String>, CcError> {
    let list_ids = list_ids.unwrap_or_default();
    if list_ids.is_empty() || list_ids.len() > 50 {
        return Err(CcError::bad_request("list_ids must name 1 to 50 lists."));
    }
    match list_ids.iter().find(|id| cc.list(id).is_none()) {
        Some(unknown) => Err(CcError::bad_request(format!(
            "List {unknown} was not found."
        ))),
        None => Ok(list_ids),
    }
}

fn queue_full() -> CcError {
    CcError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_queued_activities",
        "Too many activities are queued for this account; try again when some have completed.",
    )
}

async fn import_json(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: ImportRequest = parse_json(&body)?;
    let mut rows = request.import_data.unwrap_or_default();
    if rows.is_empty() {
        return Err(CcError::bad_request(
            "import_data must hold at least one contact.",
        ));
    }
    if rows.len() > MAX_IMPORT_CONTACTS {
        return Err(CcError::bad_request(format!(
            "An import may hold at most {MAX_IMPORT_CONTACTS} contacts; this one holds {}.",
            rows.len()
        )));
    }
    if body.len() > IMPORT_READ_BYTES {
        rows.truncate(items_within(&body, IMPORT_READ_BYTES));
    }
    let rows: Vec<ImportRow> = rows.iter().map(import_row).collect();
    let max_queued = state.config().cc_max_queued_activities;
    let response = {
        let mut world = state.world();
        let now = world.clock.now();
        let cc = &mut world.cc;
        let list_ids = checked_targets(cc, request.list_ids)?;
        if cc.unfinished_activities() >= max_queued {
            return Err(queue_full());
        }
        let status = ActivityStatus {
            items_total_count: rows.len() as u64,
            list_count: list_ids.len() as u64,
            ..ActivityStatus::default()
        };
        create(cc, now, status, ActivityWork::Import { rows, list_ids })
    };
    enqueue(&state, response.0);
    Ok(json_with(StatusCode::CREATED, response.1))
}

#[derive(Deserialize)]
struct RemoveSource {
    contact_ids: Option<Vec<String>>,
    list_ids: Option<Vec<String>>,
    #[serde(default)]
    all_active_contacts: bool,
}

#[derive(Deserialize)]
struct RemoveRequest {
    source: Option<RemoveSource>,
    list_ids: Option<Vec<String>>,
}

/// Exactly one of `contact_ids` (≤ 500), `list_ids` (≤ 50) or `all_active_contacts`.
fn remove_from(source: Option<RemoveSource>) -> Result<RemoveFrom, CcError> {
    let source = source.ok_or_else(|| CcError::bad_request("source is required."))?;
    match (
        source.contact_ids,
        source.list_ids,
        source.all_active_contacts,
    ) {
        (Some(ids), None, false) if !ids.is_empty() && ids.len() <= MAX_REMOVE_CONTACTS => {
            Ok(RemoveFrom::Contacts(ids))
        }
        (Some(_), None, false) => Err(CcError::bad_request(format!(
            "source.contact_ids must name 1 to {MAX_REMOVE_CONTACTS} contacts."
        ))),
        (None, Some(lists), false) if !lists.is_empty() && lists.len() <= 50 => {
            Ok(RemoveFrom::MembersOf(lists))
        }
        (None, Some(_), false) => Err(CcError::bad_request(
            "source.list_ids must name 1 to 50 lists.",
        )),
        (None, None, true) => Ok(RemoveFrom::AllActive),
        _ => Err(CcError::bad_request(
            "source must name exactly one of contact_ids, list_ids or all_active_contacts.",
        )),
    }
}

async fn remove_list_memberships(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: RemoveRequest = parse_json(&body)?;
    let from = remove_from(request.source)?;
    let max_queued = state.config().cc_max_queued_activities;
    let response = {
        let mut world = state.world();
        let now = world.clock.now();
        let cc = &mut world.cc;
        let list_ids = checked_targets(cc, request.list_ids)?;
        if cc.unfinished_activities() >= max_queued {
            return Err(queue_full());
        }
        let status = ActivityStatus {
            items_total_count: match &from {
                RemoveFrom::Contacts(ids) => ids.len() as u64,
                _ => 0,
            },
            list_count: list_ids.len() as u64,
            ..ActivityStatus::default()
        };
        create(
            cc,
            now,
            status,
            ActivityWork::RemoveListMemberships { from, list_ids },
        )
    };
    enqueue(&state, response.0);
    Ok(json_with(StatusCode::CREATED, response.1))
}

/// Stores a new `initialized` activity; returns its id and its 201 body.
fn create(
    cc: &mut CcWorld,
    now: i64,
    status: ActivityStatus,
    work: ActivityWork,
) -> (String, Value) {
    let kind = match work {
        ActivityWork::Import { .. } => "contacts_json_import",
        ActivityWork::RemoveListMemberships { .. } | ActivityWork::Done => {
            "remove_list_memberships"
        }
    };
    let activity = Activity {
        id: uuid_v4(),
        state: ActivityState::Initialized,
        created_at: now,
        updated_at: now,
        started_at: None,
        completed_at: None,
        seen_completed_at: None,
        kind,
        status,
        errors: Vec::new(),
        work,
    };
    let body = activity_json(&activity);
    let id = activity.id.clone();
    cc.activities.insert(id.clone(), activity);
    (id, body)
}

/// The spec's activity shape.
pub fn activity_json(activity: &Activity) -> Value {
    let s = &activity.status;
    let mut out = json!({
        "activity_id": activity.id,
        "state": activity.state.as_str(),
        "created_at": cc_time(activity.created_at),
        "updated_at": cc_time(activity.updated_at),
        "percent_done": if activity.state == ActivityState::Completed { 100 } else { 0 },
        "activity_errors": activity.errors,
        "status": {
            "items_total_count": s.items_total_count,
            "items_completed_count": s.items_completed_count,
            "person_count": s.person_count,
            "error_count": s.error_count,
            "correctable_count": s.correctable_count,
            "cannot_add_to_list_count": s.cannot_add_to_list_count,
            "list_count": s.list_count,
        },
        "_links": {"self": {"href": format!("/v3/activities/{}", activity.id)}},
    });
    if let Some(t) = activity.started_at {
        out["started_at"] = json!(cc_time(t));
    }
    if let Some(t) = activity.completed_at {
        out["completed_at"] = json!(cc_time(t));
    }
    out
}

async fn get_activity(State(state): State<SimState>, Path(activity_id): Path<String>) -> CcResult {
    let mut world = state.world();
    let now = world.clock.now();
    let activity = world
        .cc
        .activities
        .get_mut(&activity_id)
        .ok_or_else(|| CcError::not_found(format!("Activity {activity_id} was not found.")))?;
    if activity.state == ActivityState::Completed && activity.seen_completed_at.is_none() {
        activity.seen_completed_at = Some(now);
    }
    Ok(json_with(StatusCode::OK, activity_json(activity)))
}

// ---- the worker ----

/// Hands an activity to the worker, starting it on first use (or after it stopped).
fn enqueue(state: &SimState, activity_id: String) {
    let mut queue = state.cc_queue();
    if let Some(sender) = queue.as_ref()
        && sender.send(activity_id.clone()).is_ok()
    {
        return;
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    let _ = sender.send(activity_id);
    *queue = Some(sender);
    tokio::spawn(worker(state.clone(), receiver));
}

/// Processes activities one at a time, in the order they were created.
async fn worker(state: SimState, mut queue: mpsc::UnboundedReceiver<String>) {
    let mut shutdown = state.shutdown_signal();
    loop {
        let id = tokio::select! {
            id = queue.recv() => match id {
                Some(id) => id,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        if !start(&state, &id) {
            continue;
        }
        let delay = state.config().cc_activity_delay;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        finish(&state, &id);
    }
}

/// Marks the activity `processing`; `false` if it is gone (a reset since).
fn start(state: &SimState, id: &str) -> bool {
    let mut world = state.world();
    let now = world.clock.now();
    match world.cc.activities.get_mut(id) {
        Some(activity) => {
            activity.state = ActivityState::Processing;
            activity.started_at = Some(now);
            activity.updated_at = now;
            true
        }
        None => false,
    }
}

/// Applies the activity's work and marks it `completed`.
fn finish(state: &SimState, id: &str) {
    let window =
        i64::try_from(state.config().cc_resubscribe_window.as_micros()).unwrap_or(i64::MAX);
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let Some(work) = cc
        .activities
        .get_mut(id)
        .map(|a| std::mem::replace(&mut a.work, ActivityWork::Done))
    else {
        return;
    };
    let (status, errors) = match work {
        ActivityWork::Import { rows, list_ids } => apply_import(cc, &rows, &list_ids, now, window),
        ActivityWork::RemoveListMemberships { from, list_ids } => {
            apply_remove(cc, &from, &list_ids, now)
        }
        ActivityWork::Done => return,
    };
    if let Some(activity) = cc.activities.get_mut(id) {
        activity.status = status;
        activity.errors = errors;
        activity.state = ActivityState::Completed;
        activity.completed_at = Some(now);
        activity.updated_at = now;
    }
}

/// Applies an import; returns the activity's status and error strings. `resubscribe_window` is in
/// µs of simulated time.
pub fn apply_import(
    cc: &mut CcWorld,
    rows: &[ImportRow],
    list_ids: &[String],
    now: i64,
    resubscribe_window: i64,
) -> (ActivityStatus, Vec<String>) {
    let mut status = ActivityStatus {
        items_total_count: rows.len() as u64,
        list_count: list_ids.len() as u64,
        ..ActivityStatus::default()
    };
    let mut errors = Vec::new();
    for row in rows {
        status.items_completed_count += 1;
        let email = row.email.as_deref().unwrap_or_default().trim();
        if !is_plausible_email(email) {
            status.error_count += 1;
            status.correctable_count += 1;
            errors.push(format!("Invalid email address: '{email}'"));
            continue;
        }
        let mut fields = Vec::new();
        let mut row_failed = false;
        for (name, value) in &row.custom_fields {
            match cc.custom_field_by_name(name) {
                Some(field) if value.chars().count() <= 255 => {
                    fields.push((field.id.clone(), value.clone()));
                }
                Some(_) => {
                    row_failed = true;
                    errors.push(format!(
                        "{email}: the value of cf:{name} is over 255 characters"
                    ));
                }
                None => {
                    row_failed = true;
                    errors.push(format!("{email}: unknown custom field cf:{name}"));
                }
            }
        }
        if row_failed {
            status.error_count += 1;
        }
        if cc.contact_by_email(email).is_none() {
            let seq = cc.next_seq();
            let mut contact = Contact::new(seq, email, Actor::Account, now);
            contact.opt_in(Permission::Implicit, Actor::Account, now);
            cc.insert_contact(contact);
        }
        let Some(contact) = cc.contact_by_email_mut(email) else {
            continue;
        };
        status.person_count += 1;
        let may_join = match contact.permission {
            Permission::Unsubscribed => {
                let recent = contact
                    .opt_out_date
                    .is_some_and(|at| now.saturating_sub(at) <= resubscribe_window);
                if recent {
                    contact.opt_in(Permission::Implicit, Actor::Account, now);
                }
                recent
            }
            Permission::NotSet => {
                contact.opt_in(Permission::Implicit, Actor::Account, now);
                true
            }
            _ => true,
        };
        if may_join {
            for list in list_ids {
                contact.add_list(list);
            }
        } else {
            status.cannot_add_to_list_count += 1;
        }
        for (slot, value) in [
            (&mut contact.first_name, &row.first_name),
            (&mut contact.last_name, &row.last_name),
            (&mut contact.job_title, &row.job_title),
            (&mut contact.company_name, &row.company_name),
        ] {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
        for (id, value) in fields {
            contact.set_custom_field(&id, value);
        }
        contact.deleted_at = None;
        contact.update_source = Actor::Account;
        contact.updated_at = now;
    }
    (status, errors)
}

/// Removes the selected contacts from `list_ids`.
pub fn apply_remove(
    cc: &mut CcWorld,
    from: &RemoveFrom,
    list_ids: &[String],
    now: i64,
) -> (ActivityStatus, Vec<String>) {
    let selected: Vec<String> = match from {
        RemoveFrom::Contacts(ids) => ids.clone(),
        RemoveFrom::MembersOf(lists) => cc
            .contacts
            .values()
            .filter(|c| c.list_memberships.iter().any(|l| lists.contains(l)))
            .map(|c| c.id.clone())
            .collect(),
        RemoveFrom::AllActive => cc
            .contacts
            .values()
            .filter(|c| c.deleted_at.is_none() && c.permission.is_active())
            .map(|c| c.id.clone())
            .collect(),
    };
    let mut status = ActivityStatus {
        items_total_count: selected.len() as u64,
        list_count: list_ids.len() as u64,
        ..ActivityStatus::default()
    };
    let mut errors = Vec::new();
    for id in &selected {
        status.items_completed_count += 1;
        let Some(contact) = cc.contact_mut(id) else {
            status.error_count += 1;
            errors.push(format!("Contact {id} was not found"));
            continue;
        };
        status.person_count += 1;
        let before = contact.list_memberships.len();
        contact.list_memberships.retain(|l| !list_ids.contains(l));
        if contact.list_memberships.len() != before {
            contact.updated_at = now;
        }
    }
    (status, errors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn body_of(n: usize) -> Vec<u8> {
        let rows: Vec<Value> = (0..n)
            .map(|i| json!({"email": format!("m{i}@x.org"), "first_name": "Ann"}))
            .collect();
        serde_json::to_vec(&json!({"list_ids": ["l"], "import_data": rows})).unwrap()
    }

    #[test]
    fn truncation_keeps_only_contacts_wholly_inside_the_limit() {
        let body = body_of(100);
        assert_eq!(items_within(&body, body.len()), 100);
        // Cut just before the end of the 10th element's closing brace, then just after it.
        let text = String::from_utf8(body.clone()).unwrap();
        let tenth_end = text.match_indices('}').nth(9).unwrap().0;
        assert_eq!(items_within(&body, tenth_end), 9);
        assert_eq!(items_within(&body, tenth_end + 1), 10);
        assert_eq!(items_within(&body, 10), 0);
    }

    #[test]
    fn truncation_ignores_braces_and_keys_inside_strings() {
        let body = br#"{"x": "import_data", "import_data": [{"email": "a}@x.org", "cf:n": "[\"]"}, {"email": "b@x.org"}], "list_ids": ["l"]}"#;
        assert_eq!(items_within(body, body.len()), 2);
        let nested = br#"{"import_data": [{"a": {"b": [1, 2]}}, 3, "s"]}"#;
        assert_eq!(items_within(nested, nested.len()), 3);
    }

    #[test]
    fn truncation_at_the_real_limit() {
        let body = body_of(100_000);
        assert!(body.len() > IMPORT_READ_BYTES);
        let kept = items_within(&body, IMPORT_READ_BYTES);
        assert!(kept > 0 && kept < 100_000);
        // Every kept element ends inside the first 4 MB, the next one does not.
        let text = std::str::from_utf8(&body).unwrap();
        let ends: Vec<usize> = text.match_indices('}').map(|(i, _)| i).collect();
        assert!(ends[kept - 1] < IMPORT_READ_BYTES);
        assert!(ends[kept] >= IMPORT_READ_BYTES);
    }

    fn row(email: &str) -> ImportRow {
        ImportRow {
            email: Some(email.into()),
            ..ImportRow::default()
        }
    }

    fn world_with_unsubscriber(unsubscribed_at: i64) -> CcWorld {
        let mut cc = CcWorld::default();
        let seq = cc.next_seq();
        let mut contact = Contact::new(seq, "gone@x.org", Actor::Account, 0);
        contact.opt_in(Permission::Explicit, Actor::Contact, 0);
        contact.opt_out(Actor::Contact, None, unsubscribed_at);
        cc.insert_contact(contact);
        cc
    }

    #[test]
    fn a_recent_unsubscriber_is_resubscribed_and_an_old_one_is_not() {
        let window = 30 * DAY;
        let now = 100 * DAY;
        let lists = vec!["l1".to_owned()];

        let mut recent = world_with_unsubscriber(now - 29 * DAY);
        let (status, _) = apply_import(&mut recent, &[row("gone@x.org")], &lists, now, window);
        let contact = recent.contact_by_email("gone@x.org").unwrap();
        assert_eq!(contact.permission, Permission::Implicit);
        assert_eq!(contact.list_memberships, lists);
        assert_eq!(status.cannot_add_to_list_count, 0);

        let mut old = world_with_unsubscriber(now - 31 * DAY);
        let (status, _) = apply_import(&mut old, &[row("gone@x.org")], &lists, now, window);
        let contact = old.contact_by_email("gone@x.org").unwrap();
        assert_eq!(contact.permission, Permission::Unsubscribed);
        assert!(contact.list_memberships.is_empty());
        assert_eq!(status.cannot_add_to_list_count, 1);
    }

    #[test]
    fn import_errors_name_the_address() {
        let mut cc = CcWorld::default();
        let mut with_cf = row("ann@x.org");
        with_cf.custom_fields = vec![("nope".into(), "1".into())];
        let (status, errors) = apply_import(
            &mut cc,
            &[row("not-an-address"), with_cf, row("bob@x.org")],
            &["l".to_owned()],
            DAY,
            DAY,
        );
        assert_eq!(status.items_total_count, 3);
        assert_eq!(status.items_completed_count, 3);
        assert_eq!(status.error_count, 2);
        assert_eq!(status.person_count, 2);
        assert!(errors[0].contains("not-an-address"));
        assert!(errors[1].contains("ann@x.org") && errors[1].contains("cf:nope"));
        let bob = cc.contact_by_email("bob@x.org").unwrap();
        assert_eq!(bob.permission, Permission::Implicit);
        assert_eq!(bob.opt_in_source, Some(Actor::Account));
    }
}
