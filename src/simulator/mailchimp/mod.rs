//! Mailchimp: the Marketing API routes under `/3.0` (here: ping, lists, batch subscribe, merge
//! fields, members, member tags and list webhooks), with [`members`] (member write rules:
//! compliance, merge fields, email changes; webhook payloads), [`campaigns`] (the campaign
//! routes), [`webhooks`] (registration, matching and background delivery with retries) and
//! [`problem`] (problem+json error bodies). Route parameter names are the spec's, so
//! `MatchedPath` is the spec's path template.
//!
//! `GET …/members` order: ascending `last_changed` (the change index) unless `sort_dir=DESC`;
//! `since_last_changed=T` returns members whose `last_changed`, shown to the second, is `>= T`
//! (inclusive, so a poller that passes the newest `last_changed` it saw again never misses a change
//! made later in that same second; it may see the boundary members twice). `last_changed` is kept
//! in microseconds internally and is strictly increasing across the simulator.

pub mod batches;
pub mod campaigns;
pub mod members;
pub mod problem;
pub mod webhooks;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use self::members::{Ids, MemberWrite, WriteJob, WriteMode, set_status_by_action, write_member};
use self::problem::{FieldError, Problem};
use super::SimState;
use super::faults;
use super::state::{
    Event, List, MERGE_FIELD_TYPES, MemberView, MergeField, Source, Status, SubscriberHash, World,
    default_merge_options, parse_time, random_id,
};

type ApiResult = Result<Response, Problem>;

/// The `/3.0` router with its middleware (stats → auth → concurrency limit → faults → handler).
pub fn routes(state: SimState) -> Router<SimState> {
    operation_routes()
        .route("/batches", post(batches::post_batch))
        .route("/batches/{batch_id}", get(batches::get_batch))
        .layer(from_fn_with_state(state.clone(), faults::inject_faults))
        .layer(from_fn_with_state(state.clone(), faults::limit_concurrency))
        .layer(axum::middleware::from_fn(faults::authenticate))
        .layer(from_fn_with_state(state, faults::count_requests))
}

/// The routes a batch operation may reach (all but `/batches` itself), without middleware: a
/// batch's operations run through these handlers, as the single calls do.
pub fn operation_routes() -> Router<SimState> {
    Router::new()
        .route("/ping", get(ping))
        .route("/lists", get(get_lists).post(post_lists))
        .route("/lists/{list_id}", get(get_list).post(batch_subscribe))
        .route(
            "/lists/{list_id}/merge-fields",
            get(get_merge_fields).post(post_merge_field),
        )
        .route(
            "/lists/{list_id}/members",
            get(get_members).post(post_member),
        )
        .route(
            "/lists/{list_id}/members/{subscriber_hash}",
            get(get_member)
                .put(put_member)
                .patch(patch_member)
                .delete(archive_member),
        )
        .route(
            "/lists/{list_id}/members/{subscriber_hash}/actions/delete-permanent",
            post(delete_permanent),
        )
        .route(
            "/lists/{list_id}/members/{subscriber_hash}/tags",
            get(get_member_tags).post(post_member_tags),
        )
        .route("/lists/{list_id}/tag-search", get(tag_search))
        .route(
            "/lists/{list_id}/webhooks",
            get(get_webhooks).post(post_webhook),
        )
        .route(
            "/lists/{list_id}/webhooks/{webhook_id}",
            get(get_webhook).delete(delete_webhook),
        )
        .merge(campaigns::routes())
        .fallback(not_found)
}

async fn not_found() -> Problem {
    Problem::not_found()
}

/// A JSON response with `application/json`.
pub fn json_response(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// A response from JSON already serialised (hot paths serialise straight from the state).
pub fn json_bytes_response(bytes: Vec<u8>) -> Response {
    let mut response = bytes.into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serialises `value`; with `fields`/`exclude_fields` in the query it goes through a `Value` to be
/// projected, otherwise straight to bytes.
pub fn serialize_projected<T: serde::Serialize>(
    value: &T,
    members: usize,
    query: &HashMap<String, String>,
) -> ApiResult {
    let projected = query.contains_key("fields") || query.contains_key("exclude_fields");
    let bytes = if projected {
        let value = serde_json::to_value(value).map_err(|_| Problem::internal())?;
        serde_json::to_vec(&project(value, query)?)
    } else {
        to_json_bytes(value, members)
    };
    Ok(json_bytes_response(bytes.map_err(|_| Problem::internal())?))
}

/// Serialises into a buffer sized for `members` members up front (growing a 600 KB buffer by
/// doubling showed up as allocator time in the bench).
pub fn to_json_bytes<T: serde::Serialize>(
    value: &T,
    members: usize,
) -> serde_json::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256 + members * 1300);
    serde_json::to_writer(&mut buf, value)?;
    Ok(buf)
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Parses a JSON request body (an object).
pub fn parse_body(bytes: &Bytes) -> Result<Value, Problem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| Problem::json_parse())?;
    if !value.is_object() {
        return Err(Problem::json_parse());
    }
    Ok(value)
}

/// The body's field at `path` (dotted, as Mailchimp names it in a problem: `recipients.list_id`),
/// read by `read` (`Value::as_str`, `Value::as_array`, …); missing or of another type, it is blank.
pub fn required<'b, T>(
    body: &'b Value,
    path: &str,
    read: impl FnOnce(&'b Value) -> Option<T>,
) -> Result<T, Problem> {
    body.pointer(&format!("/{}", path.replace('.', "/")))
        .and_then(read)
        .ok_or_else(|| Problem::blank(path))
}

/// The query string as a map (last value wins; one that does not parse reads as empty).
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let pairs = parts
            .uri
            .query()
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok());
        Ok(QueryMap(
            pairs
                .map(|pairs| pairs.into_iter().collect())
                .unwrap_or_default(),
        ))
    }
}

fn query_bool(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `count` (default 10, at most 1000) and `offset`.
pub fn paging(query: &HashMap<String, String>) -> Result<(usize, usize), Problem> {
    let count = non_negative(query, "count", 10)?;
    if count > 1000 {
        return Err(Problem::invalid_field(
            "count",
            "count must be less than or equal to 1000",
        ));
    }
    let offset = non_negative(query, "offset", 0)?;
    Ok((count, offset))
}

/// The query's non-negative integer `name`, `default` when it is absent.
fn non_negative(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
) -> Result<usize, Problem> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            Problem::invalid_field(name, format!("{name} must be a non-negative integer"))
        }),
    }
}

/// Applies `fields` / `exclude_fields` (comma-separated dot paths; arrays are transparent).
pub fn project(value: Value, query: &HashMap<String, String>) -> Result<Value, Problem> {
    let fields = query.get("fields").filter(|f| !f.is_empty());
    let exclude = query.get("exclude_fields").filter(|f| !f.is_empty());
    match (fields, exclude) {
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "fields and exclude_fields are mutually exclusive.",
        )),
        (Some(fields), None) => Ok(keep_paths(value, &dot_paths(fields))),
        (None, Some(exclude)) => Ok(drop_paths(value, &dot_paths(exclude))),
        (None, None) => Ok(value),
    }
}

/// `a.b, c` → `[["a", "b"], ["c"]]`.
fn dot_paths(list: &str) -> Vec<Vec<&str>> {
    list.split(',')
        .map(|p| p.trim().split('.').collect())
        .collect()
}

fn keep_paths(value: Value, paths: &[Vec<&str>]) -> Value {
    if paths.iter().any(|p| p.is_empty()) {
        return value;
    }
    match value {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (key, v) in obj {
                let sub: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p[0] == key)
                    .map(|p| p[1..].to_vec())
                    .collect();
                if !sub.is_empty() {
                    out.insert(key, keep_paths(v, &sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| keep_paths(v, paths)).collect())
        }
        other => other,
    }
}

fn drop_paths(value: Value, paths: &[Vec<&str>]) -> Value {
    match value {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (key, v) in obj {
                if paths.iter().any(|p| p.len() == 1 && p[0] == key) {
                    continue;
                }
                let sub: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p.len() > 1 && p[0] == key)
                    .map(|p| p[1..].to_vec())
                    .collect();
                out.insert(
                    key,
                    if sub.is_empty() {
                        v
                    } else {
                        drop_paths(v, &sub)
                    },
                );
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| drop_paths(v, paths)).collect())
        }
        other => other,
    }
}

async fn ping() -> Response {
    json_response(json!({"health_status": "Everything's Chimpy!"}))
}

// ---- lists ----

async fn get_lists(State(state): State<SimState>, QueryMap(query): QueryMap) -> ApiResult {
    let (count, offset) = paging(&query)?;
    let world = state.world();
    let lists: Vec<Value> = world
        .list_order
        .iter()
        .filter_map(|id| world.lists.get(id))
        .skip(offset)
        .take(count)
        .map(List::to_json)
        .collect();
    let body = json!({"lists": lists, "total_items": world.lists.len(), "constraints": {
        "may_create": true, "max_instances": 1000, "current_total_instances": world.lists.len()
    }, "_links": []});
    Ok(json_response(project(body, &query)?))
}

async fn post_lists(State(state): State<SimState>, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    let mut errors = Vec::new();
    let obj = body.as_object().cloned().unwrap_or_default();
    for (name, kind) in [
        ("name", "string"),
        ("permission_reminder", "string"),
        ("email_type_option", "boolean"),
        ("contact", "object"),
        ("campaign_defaults", "object"),
    ] {
        let ok = match (obj.get(name), kind) {
            (Some(Value::String(s)), "string") => !s.trim().is_empty(),
            (Some(Value::Bool(_)), "boolean") => true,
            (Some(Value::Object(_)), "object") => true,
            _ => false,
        };
        if !ok {
            errors.push(FieldError::blank(name));
        }
    }
    if let Some(Value::Object(contact)) = obj.get("contact") {
        for name in ["company", "address1", "city", "country"] {
            if !contact.get(name).is_some_and(Value::is_string) {
                errors.push(FieldError::blank(format!("contact.{name}")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let mut settings = obj;
    for (key, default) in [
        ("double_optin", json!(false)),
        ("marketing_permissions", json!(false)),
        ("use_archive_bar", json!(false)),
        ("notify_on_subscribe", json!("")),
        ("notify_on_unsubscribe", json!("")),
        ("visibility", json!("prv")),
    ] {
        settings.entry(key).or_insert(default);
    }
    let mut world = state.world();
    let now = world.clock.now();
    let id = random_id(10);
    let web_id = world.next_web_id();
    let list = List::new(id.clone(), web_id, settings, now);
    let body = list.to_json();
    world.lists.insert(id.clone(), list);
    world.list_order.push(id);
    Ok(json_response(body))
}

async fn get_list(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let body = state
        .world()
        .list(&list_id)
        .map(List::to_json)
        .ok_or_else(Problem::not_found)?;
    Ok(json_response(project(body, &query)?))
}

/// `POST /lists/{list_id}`: batch subscribe or unsubscribe (research §3a).
async fn batch_subscribe(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
    body: Bytes,
) -> ApiResult {
    let skip_merge_validation = query_bool(&query, "skip_merge_validation");
    let skip_duplicate_check = query_bool(&query, "skip_duplicate_check");
    let body = parse_body(&body)?;
    let items = required(&body, "members", Value::as_array)?;
    let limit = state.config().batch_limit;
    if items.len() > limit {
        return Err(Problem::invalid_field(
            "members",
            format!(
                "Schema describes array with maximum of {limit} items, {} found",
                items.len()
            ),
        ));
    }
    let flag = |name: &str| -> Result<bool, Problem> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Problem::invalid_field(name, "Schema describes boolean")),
        }
    };
    let update_existing = flag("update_existing")?;
    let sync_tags = flag("sync_tags")?;
    let mode = WriteMode::Batch {
        update_existing,
        sync_tags,
    };

    let mut guard = state.world();
    let world = &mut *guard;
    let Some(list) = world.lists.get_mut(&list_id) else {
        return Err(Problem::not_found());
    };
    let (mut new_members, mut updated_members, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        let email = item
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let write = match MemberWrite::parse(item, "") {
            Ok(w) => w,
            Err(field_errors) => {
                let first = field_errors
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| FieldError::new("", ""));
                errors.push(batch_error(
                    &email,
                    first.message.clone(),
                    "ERROR_GENERIC",
                    &first.field,
                    &first.message,
                ));
                continue;
            }
        };
        if !email.is_empty() && !seen.insert(SubscriberHash::of_email(&email)) {
            if !skip_duplicate_check {
                let msg = format!("{email} appears more than once in this request.");
                errors.push(batch_error(
                    &email,
                    msg,
                    "ERROR_GENERIC",
                    "email_address",
                    "",
                ));
            }
            continue;
        }
        // Every member written gets its own, strictly later last_changed.
        let now = world.clock.now();
        let ids = Ids {
            next_seq: &mut world.next_seq,
            next_tag_id: &mut world.next_tag_id,
        };
        let job = WriteJob {
            mode,
            write: &write,
            skip_merge_validation,
            source: Source::Api,
            now,
            ids,
        };
        match write_member(list, None, job) {
            Ok(outcome) => {
                events.extend(outcome.events);
                if outcome.created {
                    new_members.push(outcome.hash);
                } else {
                    updated_members.push(outcome.hash);
                }
            }
            Err(err) => {
                let (error, code, field, message) = err.batch_entry(&email);
                errors.push(batch_error(&email, error, code, &field, &message));
            }
        }
    }
    let views = |hashes: &[SubscriberHash]| -> Vec<MemberView<'_>> {
        hashes
            .iter()
            .filter_map(|h| list.members.get(h))
            .map(|member| list.view(member, true))
            .collect()
    };
    let result = BatchResult {
        total_created: new_members.len(),
        total_updated: updated_members.len(),
        error_count: errors.len(),
        new_members: views(&new_members),
        updated_members: views(&updated_members),
        errors: &errors,
        _links: [],
    };
    let bytes = to_json_bytes(&result, new_members.len() + updated_members.len())
        .map_err(|_| Problem::internal())?;
    let deliveries = webhooks::resolve(world, &events);
    drop(guard);
    webhooks::spawn(&state, deliveries);
    Ok(json_bytes_response(bytes))
}

#[derive(serde::Serialize)]
struct BatchResult<'a> {
    total_created: usize,
    total_updated: usize,
    error_count: usize,
    new_members: Vec<MemberView<'a>>,
    updated_members: Vec<MemberView<'a>>,
    errors: &'a [Value],
    _links: [u8; 0],
}

fn batch_error(email: &str, error: String, code: &str, field: &str, field_message: &str) -> Value {
    json!({
        "email_address": email,
        "error": error,
        "error_code": code,
        "field": field,
        "field_message": field_message,
    })
}

// ---- merge fields ----

async fn get_merge_fields(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let (count, offset) = paging(&query)?;
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let fields: Vec<Value> = list
        .merge_fields
        .iter()
        .filter(|f| query.get("type").is_none_or(|t| *t == f.kind))
        .skip(offset)
        .take(count)
        .map(|f| f.to_json(&list_id))
        .collect();
    let body = json!({
        "merge_fields": fields,
        "list_id": list_id,
        "total_items": list.merge_fields.len(),
        "_links": [],
    });
    Ok(json_response(project(body, &query)?))
}

async fn post_merge_field(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::blank("name"));
    }
    if !MERGE_FIELD_TYPES.contains(&kind) {
        errors.push(FieldError::new(
            "type",
            format!(
                "Value is not one of enum values: {}",
                MERGE_FIELD_TYPES.join(", ")
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let tag = match body
        .get("tag")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(tag) => tag.to_uppercase(),
        None => {
            let t: String = name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(10)
                .collect();
            if t.is_empty() {
                "MERGE".to_owned()
            } else {
                t.to_uppercase()
            }
        }
    };
    let mut world = state.world();
    let list = world
        .lists
        .get_mut(&list_id)
        .ok_or_else(Problem::not_found)?;
    if tag == "EMAIL" || list.merge_field_by_tag(&tag).is_some() {
        return Err(Problem {
            detail: format!("A Merge Field with the tag \"{tag}\" already exists for this list."),
            ..Problem::invalid_field(
                "tag",
                format!("A Merge Field with the tag \"{tag}\" already exists for this list."),
            )
        });
    }
    let options = match body.get("options") {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => default_merge_options(kind),
    };
    let field = MergeField {
        merge_id: list.next_merge_id,
        tag,
        name: name.to_owned(),
        kind: kind.to_owned(),
        required: body
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        public: body.get("public").and_then(Value::as_bool).unwrap_or(false),
        display_order: body
            .get("display_order")
            .and_then(Value::as_i64)
            .unwrap_or(list.merge_fields.len() as i64 + 2),
        default_value: body
            .get("default_value")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        help_text: body
            .get("help_text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        options,
    };
    list.next_merge_id += 1;
    let json = field.to_json(&list_id);
    list.merge_fields.push(field);
    Ok(json_response(json))
}

// ---- members ----

async fn get_members(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let (count, offset) = paging(&query)?;
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            Status::parse(s).ok_or_else(|| Problem::invalid_field("status", "Invalid status"))?,
        ),
    };
    let time = |name: &str| -> Result<Option<i64>, Problem> {
        match query.get(name).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_time(s).map(Some).ok_or_else(|| {
                Problem::invalid_field(name, "Please provide a valid ISO 8601 date-time.")
            }),
        }
    };
    // Inclusive at the shown (whole-second) precision: see the module doc.
    let since = time("since_last_changed")?.map(|t| t.div_euclid(1_000_000) * 1_000_000);
    let before = time("before_last_changed")?.map(|t| t.div_euclid(1_000_000) * 1_000_000);
    let descending = query
        .get("sort_dir")
        .is_some_and(|d| d.eq_ignore_ascii_case("DESC"));
    let sort_field = query
        .get("sort_field")
        .map(String::as_str)
        .unwrap_or("last_changed");
    if !matches!(
        sort_field,
        "last_changed" | "timestamp_opt" | "timestamp_signup" | ""
    ) {
        return Err(Problem::invalid_field("sort_field", "Invalid sort field"));
    }
    let email_type = query.get("email_type").cloned();
    let vip_only = query_bool(&query, "vip_only");
    let unique_email_id = query.get("unique_email_id").cloned();

    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let lower = since.unwrap_or(i64::MIN);
    let upper = before.unwrap_or(i64::MAX);
    let range = if lower < upper {
        list.changes.range(lower..upper)
    } else {
        list.changes.range(0..0)
    };
    let matches = |hash: &SubscriberHash| -> Option<&super::state::Member> {
        let member = list.members.get(hash)?;
        let keep = status.is_none_or(|s| member.status == s)
            && email_type.as_deref().is_none_or(|t| member.email_type == t)
            && (!vip_only || member.vip)
            && unique_email_id
                .as_deref()
                .is_none_or(|u| member.unique_email_id() == u);
        keep.then_some(member)
    };
    let unfiltered =
        status.is_none() && email_type.is_none() && !vip_only && unique_email_id.is_none();
    let (total, page): (usize, Vec<MemberView<'_>>) = if sort_field == "last_changed"
        || sort_field.is_empty()
    {
        let view = |member| list.view(member, false);
        if unfiltered {
            let total = if since.is_none() && before.is_none() {
                list.members.len()
            } else {
                range.clone().filter(|(_, h)| matches(h).is_some()).count()
            };
            let keep = |(_, h): (&i64, &SubscriberHash)| matches(h).map(view);
            // Without member filters, skip `offset` on the index alone (no member lookups).
            let page = if descending {
                page_of(range.rev(), offset, count, keep)
            } else {
                page_of(range, offset, count, keep)
            };
            (total, page)
        } else {
            // With a filter (the pull's `status=unsubscribed` and friends), one pass both counts
            // the matches and keeps the page's share of them: two passes looked up each of a
            // million members twice per request.
            let mut total = 0usize;
            let mut page = Vec::new();
            let mut visit = |(_, h): (&i64, &SubscriberHash)| {
                if let Some(member) = matches(h) {
                    if total >= offset && page.len() < count {
                        page.push(view(member));
                    }
                    total += 1;
                }
            };
            if descending {
                range.rev().for_each(&mut visit);
            } else {
                range.for_each(&mut visit);
            }
            (total, page)
        }
    } else {
        let mut all: Vec<&super::state::Member> = range.filter_map(|(_, h)| matches(h)).collect();
        let key = |m: &super::state::Member| {
            if sort_field == "timestamp_opt" {
                m.timestamp_opt
            } else {
                m.timestamp_signup
            }
        };
        all.sort_by_key(|m| (key(m), m.last_changed));
        if descending {
            all.reverse();
        }
        let total = all.len();
        (
            total,
            all.into_iter()
                .skip(offset)
                .take(count)
                .map(|member| list.view(member, false))
                .collect(),
        )
    };
    let body = MembersPage {
        members: page,
        list_id: &list_id,
        total_items: total,
        _links: [],
    };
    serialize_projected(&body, body.members.len(), &query)
}

/// Items `offset..offset + count`, each made by `keep` (which drops none: the offset is skipped
/// on the index alone).
fn page_of<I: Iterator, T>(
    items: I,
    offset: usize,
    count: usize,
    keep: impl FnMut(I::Item) -> Option<T>,
) -> Vec<T> {
    items.skip(offset).take(count).filter_map(keep).collect()
}

#[derive(serde::Serialize)]
struct MembersPage<'a> {
    members: Vec<MemberView<'a>>,
    list_id: &'a str,
    total_items: usize,
    _links: [u8; 0],
}

/// A `{subscriber_hash}` path segment; one that is not an MD5 hash names no member (404).
pub fn path_hash(segment: &str) -> Result<SubscriberHash, Problem> {
    SubscriberHash::from_path(segment).ok_or_else(Problem::not_found)
}

/// A list about to change: the clock's next instant, the list, and the id counters beside it
/// (the borrows of `World` are split so a handler can use all three).
pub struct ListAt<'a> {
    pub now: i64,
    pub list: &'a mut List,
    pub ids: Ids<'a>,
}

/// Takes the time, then the list `list_id` (404 when there is none).
pub fn list_at<'a>(world: &'a mut World, list_id: &str) -> Result<ListAt<'a>, Problem> {
    let now = world.clock.now();
    let list = world
        .lists
        .get_mut(list_id)
        .ok_or_else(Problem::not_found)?;
    let ids = Ids {
        next_seq: &mut world.next_seq,
        next_tag_id: &mut world.next_tag_id,
    };
    Ok(ListAt { now, list, ids })
}

/// An API archive of one member (`DELETE …/members/{hash}`, and a permanent delete of a
/// subscribed member first).
fn archive(list: &mut List, hash: SubscriberHash, now: i64) -> Result<Vec<Event>, Problem> {
    set_status_by_action(
        list,
        hash,
        Status::Archived,
        "manual",
        None,
        Source::Api,
        now,
    )
    .map_err(|e| e.to_problem())
}

async fn get_member(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let hash = path_hash(&hash)?;
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let member = list.members.get(&hash).ok_or_else(Problem::not_found)?;
    let body = list.member_json(member);
    drop(world);
    Ok(json_response(project(body, &query)?))
}

/// PUT, PATCH and POST of one member share this path.
fn single_write(
    state: &SimState,
    list_id: &str,
    path: Option<SubscriberHash>,
    mode: WriteMode,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> ApiResult {
    let body = parse_body(body)?;
    let mut write = MemberWrite::parse(&body, "").map_err(Problem::invalid)?;
    if mode != WriteMode::Post {
        // PUT and PATCH take no tags (only POST …/members and the tags endpoint do).
        write.tags = None;
    }
    if mode == WriteMode::Put && write.email_address.is_none() {
        return Err(Problem::blank("email_address"));
    }
    let mut world = state.world();
    let world = &mut *world;
    let ListAt { now, list, ids } = list_at(world, list_id)?;
    let job = WriteJob {
        mode,
        write: &write,
        skip_merge_validation: query_bool(query, "skip_merge_validation"),
        source: Source::Api,
        now,
        ids,
    };
    let outcome = write_member(list, path, job).map_err(|e| e.to_problem())?;
    let json = list
        .members
        .get(&outcome.hash)
        .map(|m| list.member_json(m))
        .unwrap_or_default();
    let deliveries = webhooks::resolve(world, &outcome.events);
    webhooks::spawn(state, deliveries);
    Ok(json_response(json))
}

async fn put_member(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
    QueryMap(query): QueryMap,
    body: Bytes,
) -> ApiResult {
    let hash = SubscriberHash::from_path(&hash).ok_or_else(|| {
        Problem::invalid_field(
            "subscriber_hash",
            "The subscriber hash must be the MD5 of the lower-cased email.",
        )
    })?;
    single_write(&state, &list_id, Some(hash), WriteMode::Put, &query, &body)
}

async fn patch_member(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
    QueryMap(query): QueryMap,
    body: Bytes,
) -> ApiResult {
    let hash = path_hash(&hash)?;
    single_write(
        &state,
        &list_id,
        Some(hash),
        WriteMode::Patch,
        &query,
        &body,
    )
}

async fn post_member(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
    body: Bytes,
) -> ApiResult {
    single_write(&state, &list_id, None, WriteMode::Post, &query, &body)
}

/// A change to one member that may fire webhooks (204): `change` gets the list, the member's
/// hash and the time, and returns the events.
fn change_member(
    state: &SimState,
    list_id: &str,
    hash: &str,
    change: impl FnOnce(&mut List, SubscriberHash, i64) -> Result<Vec<Event>, Problem>,
) -> ApiResult {
    let hash = path_hash(hash)?;
    let mut world = state.world();
    let world = &mut *world;
    let ListAt { now, list, .. } = list_at(world, list_id)?;
    let events = change(list, hash, now)?;
    let deliveries = webhooks::resolve(world, &events);
    webhooks::spawn(state, deliveries);
    Ok(no_content())
}

/// `DELETE …/members/{hash}` archives (204); cleaned, pending and archived members cannot be.
async fn archive_member(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
) -> ApiResult {
    change_member(&state, &list_id, &hash, |list, hash, now| {
        let status = list
            .members
            .get(&hash)
            .map(|m| m.status)
            .ok_or_else(Problem::not_found)?;
        if matches!(status, Status::Cleaned | Status::Pending | Status::Archived) {
            return Err(members::WriteError::CannotArchive.to_problem());
        }
        archive(list, hash, now)
    })
}

/// Removes the member for good; the address can never be re-added.
async fn delete_permanent(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
) -> ApiResult {
    change_member(&state, &list_id, &hash, |list, hash, now| {
        let mut events = Vec::new();
        if list.members.get(&hash).map(|m| m.status) == Some(Status::Subscribed) {
            events = archive(list, hash, now)?;
        }
        let member = list.members.remove(&hash).ok_or_else(Problem::not_found)?;
        list.changes.remove(&member.last_changed);
        list.forgotten.insert(hash);
        Ok(events)
    })
}

async fn get_member_tags(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
) -> ApiResult {
    let hash = path_hash(&hash)?;
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let member = list.members.get(&hash).ok_or_else(Problem::not_found)?;
    let tags: Vec<Value> = member
        .tags
        .iter()
        .map(|id| json!({"id": id, "name": list.tag_names.get(id).cloned().unwrap_or_default()}))
        .collect();
    Ok(json_response(
        json!({"tags": tags, "total_items": tags.len(), "_links": []}),
    ))
}

/// `{"tags":[{"name","status":"active"|"inactive"}]}` → 204.
async fn post_member_tags(
    State(state): State<SimState>,
    Path((list_id, hash)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let hash = path_hash(&hash)?;
    let body = parse_body(&body)?;
    let items = required(&body, "tags", Value::as_array)?;
    let mut changes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        let active = match item.get("status").and_then(Value::as_str) {
            Some("active") => true,
            Some("inactive") => false,
            _ => {
                return Err(Problem::invalid_field(
                    format!("tags.{i}.status"),
                    "Value is not one of enum values: active, inactive",
                ));
            }
        };
        if name.is_empty() {
            return Err(Problem::blank(format!("tags.{i}.name")));
        }
        changes.push((name.to_owned(), active));
    }
    let mut world = state.world();
    let ListAt { now, list, ids } = list_at(&mut world, &list_id)?;
    if !list.members.contains_key(&hash) {
        return Err(Problem::not_found());
    }
    let mut resolved = Vec::with_capacity(changes.len());
    for (name, active) in changes {
        let id = if active {
            Some(list.tag_id_or_create(&name, ids.next_tag_id))
        } else {
            list.tag_id(&name)
        };
        resolved.push((id, active));
    }
    let Some(member) = list.members.get_mut(&hash) else {
        return Err(Problem::not_found());
    };
    let before = member.tags.clone();
    for (id, active) in resolved {
        match (id, active) {
            (Some(id), true) if !member.tags.contains(&id) => member.tags.push(id),
            (Some(id), false) => member.tags.retain(|t| *t != id),
            _ => {}
        }
    }
    if member.tags != before {
        let old = member.last_changed;
        member.last_changed = now;
        list.touch(hash, Some(old), now);
    }
    Ok(no_content())
}

/// `GET /lists/{list_id}/tag-search?name=` → `{tags:[{id,name}], total_items}`; lets a client find
/// the tag id to use in a campaign segment.
async fn tag_search(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let needle = query
        .get("name")
        .map(|n| n.to_lowercase())
        .unwrap_or_default();
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let mut tags: Vec<(u32, &String)> = list
        .tag_names
        .iter()
        .filter(|(_, name)| name.to_lowercase().contains(&needle))
        .map(|(id, name)| (*id, name))
        .collect();
    tags.sort();
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    Ok(json_response(
        json!({"tags": tags, "total_items": tags.len()}),
    ))
}

// ---- webhooks ----

async fn get_webhooks(State(state): State<SimState>, Path(list_id): Path<String>) -> ApiResult {
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let hooks: Vec<Value> = list.webhooks.iter().map(|h| h.to_json(&list_id)).collect();
    Ok(json_response(json!({
        "webhooks": hooks, "list_id": list_id, "total_items": hooks.len(), "_links": [],
    })))
}

async fn post_webhook(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let json = webhooks::register(&state, &list_id, &body).await?;
    Ok(json_response(json))
}

async fn get_webhook(
    State(state): State<SimState>,
    Path((list_id, webhook_id)): Path<(String, String)>,
) -> ApiResult {
    let world = state.world();
    let list = world.list(&list_id).ok_or_else(Problem::not_found)?;
    let hook = list
        .webhooks
        .iter()
        .find(|h| h.id == webhook_id)
        .ok_or_else(Problem::not_found)?;
    Ok(json_response(hook.to_json(&list_id)))
}

async fn delete_webhook(
    State(state): State<SimState>,
    Path((list_id, webhook_id)): Path<(String, String)>,
) -> ApiResult {
    let mut world = state.world();
    let list = world
        .lists
        .get_mut(&list_id)
        .ok_or_else(Problem::not_found)?;
    let before = list.webhooks.len();
    list.webhooks.retain(|h| h.id != webhook_id);
    if list.webhooks.len() == before {
        return Err(Problem::not_found());
    }
    Ok(no_content())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fields_keep_only_named_paths_through_arrays() {
        let value = json!({"members": [{"id": "a", "email_address": "x", "status": "s"}], "total_items": 1, "list_id": "l"});
        let out = project(value, &q(&[("fields", "members.id,total_items")])).unwrap();
        assert_eq!(out, json!({"members": [{"id": "a"}], "total_items": 1}));
    }

    #[test]
    fn exclude_fields_drop_named_paths() {
        let value = json!({"members": [{"id": "a", "tags": []}], "_links": []});
        let out = project(value, &q(&[("exclude_fields", "_links,members.tags")])).unwrap();
        assert_eq!(out, json!({"members": [{"id": "a"}]}));
        let both = project(json!({}), &q(&[("fields", "a"), ("exclude_fields", "b")]));
        assert!(both.is_err());
    }

    #[test]
    fn paging_limits_count() {
        assert_eq!(paging(&q(&[])).unwrap(), (10, 0));
        assert_eq!(
            paging(&q(&[("count", "1000"), ("offset", "5")])).unwrap(),
            (1000, 5)
        );
        assert!(paging(&q(&[("count", "1001")])).is_err());
        assert!(paging(&q(&[("count", "-1")])).is_err());
    }
}
