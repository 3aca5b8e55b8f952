//! Contact lists, custom fields and contacts under `/v3` (research §2, §4, §5).
//!
//! `GET /contacts` pages by cursor in creation order; `_links.next.href` is relative and includes
//! `/v3` (`/v3/contacts?cursor=…`), and is absent on the last page. The cursor carries the
//! filters, so the next page needs nothing else. `updated_after` and `optout_after` are inclusive
//! (`>=`): a poller that passes the newest time it saw again sees the boundary contacts twice
//! rather than missing one changed later in the same second.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::state::{
    Actor, CUSTOM_FIELD_TYPES, CcWorld, Contact, ContactList, CustomField, Permission, cc_time,
    is_plausible_email, uuid_v4,
};
use super::{CcError, CcResult, PageQuery, csv, json_with, parse_json, query_pairs};
use crate::simulator::SimState;
use crate::simulator::state::{parse_time, to_datetime};

/// At most this many custom fields per account (spec createCustomFields).
pub const MAX_CUSTOM_FIELDS: usize = 100;

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/contact_lists", get(get_lists).post(post_list))
        .route("/contact_lists/{list_id}", get(get_list))
        .route(
            "/contact_custom_fields",
            get(get_custom_fields).post(post_custom_field),
        )
        .route("/contacts", get(get_contacts))
        .route("/contacts/sign_up_form", post(sign_up_form))
        .route("/contacts/{contact_id}", get(get_contact).put(put_contact))
}

// ---- lists ----

fn list_json(list: &ContactList, members: Option<usize>) -> Value {
    let mut out = json!({
        "list_id": list.id,
        "name": list.name,
        "favorite": list.favorite,
        "created_at": cc_time(list.created_at),
        "updated_at": cc_time(list.updated_at),
    });
    if let Some(description) = &list.description {
        out["description"] = json!(description);
    }
    if let Some(n) = members {
        out["membership_count"] = json!(n);
    }
    out
}

/// Members of `list_id`; with `active_only`, only those who may be mailed.
fn membership_count(cc: &CcWorld, list_id: &str, active_only: bool) -> usize {
    cc.contacts
        .values()
        .filter(|c| c.deleted_at.is_none() && c.list_memberships.iter().any(|l| l == list_id))
        .filter(|c| !active_only || c.permission.is_active())
        .count()
}

/// `include_membership_count`: `Some(active_only)` when asked for.
fn membership_mode(value: Option<&str>) -> Result<Option<bool>, CcError> {
    match value {
        None => Ok(None),
        Some("all") => Ok(Some(false)),
        Some("active") => Ok(Some(true)),
        Some(_) => Err(CcError::bad_request(
            "include_membership_count must be all or active.",
        )),
    }
}

async fn get_lists(State(state): State<SimState>, RawQuery(query): RawQuery) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let limit = query.limit(50, 1000)?;
    let counts = membership_mode(query.get("include_membership_count"))?;
    let world = state.world();
    let cc = &world.cc;
    let matching: Vec<(usize, &ContactList)> = cc
        .lists
        .iter()
        .enumerate()
        .filter(|(_, l)| query.get("name").is_none_or(|name| l.name == name))
        .collect();
    let page: Vec<&(usize, &ContactList)> = matching
        .iter()
        .filter(|(i, _)| (*i as u64) >= query.after)
        .take(limit + 1)
        .collect();
    let lists: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|(_, l)| list_json(l, counts.map(|active| membership_count(cc, &l.id, active))))
        .collect();
    let mut body = json!({"lists": lists});
    if query.get("include_count") == Some("true") {
        body["lists_count"] = json!(matching.len());
    }
    if let Some((next, _)) = page.get(limit) {
        body["_links"] = json!({"next": {"href": query.next_href("/contact_lists", *next as u64)}});
    }
    Ok(json_with(StatusCode::OK, body))
}

#[derive(Deserialize)]
struct CreateListRequest {
    name: Option<String>,
    #[serde(default)]
    favorite: bool,
    description: Option<String>,
}

async fn post_list(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: CreateListRequest = parse_json(&body)?;
    let name = request.name.unwrap_or_default().trim().to_owned();
    if name.is_empty() || name.chars().count() > 255 {
        return Err(CcError::bad_request(
            "name is required and may be at most 255 characters.",
        ));
    }
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let list = create_list(cc, &name, request.favorite, request.description, now)?;
    Ok(json_with(StatusCode::CREATED, list_json(&list, None)))
}

/// Creates a list; a name already in use is a 409.
pub fn create_list(
    cc: &mut CcWorld,
    name: &str,
    favorite: bool,
    description: Option<String>,
    now: i64,
) -> Result<ContactList, CcError> {
    if cc.lists.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
        return Err(CcError::conflict(format!(
            "A list named '{name}' already exists."
        )));
    }
    let list = ContactList {
        id: uuid_v4(),
        name: name.to_owned(),
        description,
        favorite,
        created_at: now,
        updated_at: now,
    };
    cc.lists.push(list.clone());
    Ok(list)
}

async fn get_list(
    State(state): State<SimState>,
    Path(list_id): Path<String>,
    RawQuery(query): RawQuery,
) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let counts = membership_mode(query.get("include_membership_count"))?;
    let world = state.world();
    let cc = &world.cc;
    let list = cc
        .list(&list_id)
        .ok_or_else(|| CcError::not_found(format!("List {list_id} was not found.")))?;
    let body = list_json(
        list,
        counts.map(|active| membership_count(cc, &list.id, active)),
    );
    Ok(json_with(StatusCode::OK, body))
}

// ---- custom fields ----

fn custom_field_json(field: &CustomField) -> Value {
    json!({
        "custom_field_id": field.id,
        "label": field.label,
        "name": field.name,
        "type": field.kind,
        "created_at": cc_time(field.created_at),
        "updated_at": cc_time(field.updated_at),
    })
}

async fn get_custom_fields(State(state): State<SimState>, RawQuery(query): RawQuery) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let limit = query.limit(50, 100)?;
    let world = state.world();
    let fields = &world.cc.custom_fields;
    let start = query.after as usize;
    let page: Vec<Value> = fields
        .iter()
        .skip(start)
        .take(limit)
        .map(custom_field_json)
        .collect();
    let mut body = json!({"custom_fields": page});
    if fields.len() > start + limit {
        body["_links"] = json!({"next": {"href": query.next_href(
            "/contact_custom_fields",
            (start + limit) as u64,
        )}});
    }
    Ok(json_with(StatusCode::OK, body))
}

#[derive(Deserialize)]
struct CreateCustomFieldRequest {
    label: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn post_custom_field(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: CreateCustomFieldRequest = parse_json(&body)?;
    let label = request.label.unwrap_or_default().trim().to_owned();
    if label.is_empty() || label.chars().count() > 50 {
        return Err(CcError::bad_request(
            "label is required and may be at most 50 characters.",
        ));
    }
    let kind = request.kind.unwrap_or_default();
    if !CUSTOM_FIELD_TYPES.contains(&kind.as_str()) {
        return Err(CcError::bad_request(format!(
            "type must be one of {}.",
            CUSTOM_FIELD_TYPES.join(", ")
        )));
    }
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let name = label.replace(' ', "_");
    if cc
        .custom_fields
        .iter()
        .any(|f| f.label.eq_ignore_ascii_case(&label) || f.name.eq_ignore_ascii_case(&name))
    {
        return Err(CcError::conflict(format!(
            "A custom field labelled '{label}' already exists."
        )));
    }
    if cc.custom_fields.len() >= MAX_CUSTOM_FIELDS {
        return Err(CcError::bad_request(format!(
            "An account may have at most {MAX_CUSTOM_FIELDS} custom fields."
        )));
    }
    let field = CustomField {
        id: uuid_v4(),
        label,
        name,
        kind,
        created_at: now,
        updated_at: now,
    };
    let body = custom_field_json(&field);
    cc.custom_fields.push(field);
    Ok(json_with(StatusCode::CREATED, body))
}

// ---- contacts ----

/// Which sub-resources `include` asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Include {
    pub custom_fields: bool,
    pub list_memberships: bool,
}

const INCLUDABLE: [&str; 6] = [
    "custom_fields",
    "list_memberships",
    "phone_numbers",
    "street_addresses",
    "taggings",
    "notes",
];

impl Include {
    fn parse(value: Option<&str>) -> Result<Self, CcError> {
        let mut include = Include::default();
        for part in value.map(csv).unwrap_or_default() {
            match part {
                "custom_fields" => include.custom_fields = true,
                "list_memberships" => include.list_memberships = true,
                other if INCLUDABLE.contains(&other) => {}
                other => {
                    return Err(CcError::bad_request(format!(
                        "include does not accept '{other}'."
                    )));
                }
            }
        }
        Ok(include)
    }

    const ALL: Include = Include {
        custom_fields: true,
        list_memberships: true,
    };
}

/// The contact in the spec's shape.
pub fn contact_json(contact: &Contact, include: Include) -> Value {
    let mut email = Map::new();
    email.insert("address".into(), json!(contact.email));
    email.insert(
        "permission_to_send".into(),
        json!(contact.permission.as_str()),
    );
    email.insert(
        "created_at".into(),
        json!(cc_time(contact.email_created_at)),
    );
    email.insert(
        "updated_at".into(),
        json!(cc_time(contact.email_updated_at)),
    );
    if let Some(source) = contact.opt_in_source {
        email.insert("opt_in_source".into(), json!(source.as_str()));
    }
    if let Some(date) = contact.opt_in_date {
        email.insert("opt_in_date".into(), json!(cc_time(date)));
    }
    if let Some(source) = contact.opt_out_source {
        email.insert("opt_out_source".into(), json!(source.as_str()));
    }
    if let Some(date) = contact.opt_out_date {
        email.insert("opt_out_date".into(), json!(cc_time(date)));
    }
    if let Some(reason) = &contact.opt_out_reason {
        email.insert("opt_out_reason".into(), json!(reason));
    }
    email.insert("confirm_status".into(), json!("off"));
    let mut out = Map::new();
    out.insert("contact_id".into(), json!(contact.id));
    out.insert("email_address".into(), Value::Object(email));
    for (key, value) in [
        ("first_name", &contact.first_name),
        ("last_name", &contact.last_name),
        ("job_title", &contact.job_title),
        ("company_name", &contact.company_name),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), json!(value));
        }
    }
    out.insert(
        "create_source".into(),
        json!(contact.create_source.as_str()),
    );
    out.insert(
        "update_source".into(),
        json!(contact.update_source.as_str()),
    );
    out.insert("created_at".into(), json!(cc_time(contact.created_at)));
    out.insert("updated_at".into(), json!(cc_time(contact.updated_at)));
    if let Some(deleted) = contact.deleted_at {
        let date = to_datetime(deleted).format("%Y-%m-%d").to_string();
        out.insert("deleted_at".into(), json!(date));
    }
    if include.custom_fields {
        let fields: Vec<Value> = contact
            .custom_fields
            .iter()
            .map(|(id, value)| json!({"custom_field_id": id, "value": value}))
            .collect();
        out.insert("custom_fields".into(), Value::Array(fields));
    }
    if include.list_memberships {
        out.insert("list_memberships".into(), json!(contact.list_memberships));
    }
    Value::Object(out)
}

/// A `status` filter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    All,
    Active,
    Deleted,
    Permission(Permission),
}

impl StatusFilter {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "all" => StatusFilter::All,
            "active" => StatusFilter::Active,
            "deleted" => StatusFilter::Deleted,
            "not_set" | "pending_confirmation" | "temp_hold" | "unsubscribed" => {
                StatusFilter::Permission(Permission::parse(text)?)
            }
            _ => return None,
        })
    }

    fn matches(self, contact: &Contact) -> bool {
        let deleted = contact.deleted_at.is_some();
        match self {
            StatusFilter::All => true,
            StatusFilter::Deleted => deleted,
            StatusFilter::Active => !deleted && contact.permission.is_active(),
            StatusFilter::Permission(p) => !deleted && contact.permission == p,
        }
    }
}

/// The filters of `GET /contacts`, parsed once.
#[derive(Debug, Default)]
struct ContactFilter {
    email: Option<String>,
    statuses: Vec<StatusFilter>,
    lists: Vec<String>,
    updated_after: Option<i64>,
    optout_after: Option<i64>,
}

fn time_param(query: &PageQuery, name: &str) -> Result<Option<i64>, CcError> {
    query
        .get(name)
        .map(|text| {
            parse_time(text).ok_or_else(|| {
                CcError::bad_request(format!("{name} must be an ISO-8601 date-time."))
            })
        })
        .transpose()
}

impl ContactFilter {
    fn parse(query: &PageQuery) -> Result<Self, CcError> {
        let statuses = query
            .get("status")
            .map(csv)
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                StatusFilter::parse(s)
                    .ok_or_else(|| CcError::bad_request(format!("status does not accept '{s}'.")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lists: Vec<String> = query
            .get("lists")
            .map(csv)
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if lists.len() > 25 {
            return Err(CcError::bad_request("lists accepts at most 25 list ids."));
        }
        Ok(Self {
            email: query.get("email").map(super::state::email_key),
            statuses,
            lists,
            updated_after: time_param(query, "updated_after")?,
            optout_after: time_param(query, "optout_after")?,
        })
    }

    fn matches(&self, contact: &Contact) -> bool {
        let status_ok = if self.statuses.is_empty() {
            contact.deleted_at.is_none()
        } else {
            self.statuses.iter().any(|s| s.matches(contact))
        };
        status_ok
            && self
                .email
                .as_ref()
                .is_none_or(|e| super::state::email_key(&contact.email) == *e)
            && (self.lists.is_empty()
                || contact
                    .list_memberships
                    .iter()
                    .any(|l| self.lists.contains(l)))
            && self.updated_after.is_none_or(|t| contact.updated_at >= t)
            && self
                .optout_after
                .is_none_or(|t| contact.opt_out_date.is_some_and(|d| d >= t))
    }
}

async fn get_contacts(State(state): State<SimState>, RawQuery(query): RawQuery) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let limit = query.limit(50, 500)?;
    let include = Include::parse(query.get("include"))?;
    let filter = ContactFilter::parse(&query)?;
    let world = state.world();
    let cc = &world.cc;
    let mut page: Vec<&Contact> = cc
        .contacts
        .range(query.after + 1..)
        .map(|(_, c)| c)
        .filter(|c| filter.matches(c))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let contacts: Vec<Value> = page.iter().map(|c| contact_json(c, include)).collect();
    let mut body = json!({"contacts": contacts});
    if query.get("include_count") == Some("true") {
        let count = cc.contacts.values().filter(|c| filter.matches(c)).count();
        body["contacts_count"] = json!(count);
    }
    if let (true, Some(last)) = (more, page.last()) {
        body["_links"] = json!({"next": {"href": query.next_href("/contacts", last.seq)}});
    }
    Ok(json_with(StatusCode::OK, body))
}

async fn get_contact(
    State(state): State<SimState>,
    Path(contact_id): Path<String>,
    RawQuery(query): RawQuery,
) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let include = Include::parse(query.get("include"))?;
    let world = state.world();
    let contact = world
        .cc
        .contact(&contact_id)
        .ok_or_else(|| contact_not_found(&contact_id))?;
    Ok(json_with(StatusCode::OK, contact_json(contact, include)))
}

fn contact_not_found(contact_id: &str) -> CcError {
    CcError::not_found(format!("Contact {contact_id} was not found."))
}

#[derive(Deserialize)]
struct EmailAddressIn {
    address: String,
    permission_to_send: Option<String>,
    opt_out_reason: Option<String>,
}

#[derive(Deserialize)]
struct CustomFieldIn {
    custom_field_id: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct UpdateContactRequest {
    email_address: Option<EmailAddressIn>,
    first_name: Option<String>,
    last_name: Option<String>,
    job_title: Option<String>,
    company_name: Option<String>,
    update_source: Option<String>,
    custom_fields: Option<Vec<CustomFieldIn>>,
    list_memberships: Option<Vec<String>>,
}

/// Checks custom field values against the account's fields (≤ 25 per contact, values ≤ 255).
fn checked_custom_fields(
    cc: &CcWorld,
    fields: &[CustomFieldIn],
    max: usize,
) -> Result<Vec<(String, String)>, CcError> {
    if fields.len() > max {
        return Err(CcError::bad_request(format!(
            "At most {max} custom fields may be sent."
        )));
    }
    fields
        .iter()
        .map(|f| {
            if !cc.custom_fields.iter().any(|d| d.id == f.custom_field_id) {
                return Err(CcError::bad_request(format!(
                    "Custom field {} does not exist.",
                    f.custom_field_id
                )));
            }
            if f.value.chars().count() > 255 {
                return Err(CcError::bad_request(
                    "A custom field value may be at most 255 characters.",
                ));
            }
            Ok((f.custom_field_id.clone(), f.value.clone()))
        })
        .collect()
}

fn checked_lists(cc: &CcWorld, lists: &[String]) -> Result<(), CcError> {
    if lists.len() > 50 {
        return Err(CcError::bad_request(
            "A contact may belong to at most 50 lists.",
        ));
    }
    match lists.iter().find(|id| cc.list(id).is_none()) {
        Some(unknown) => Err(CcError::not_found(format!("List {unknown} was not found."))),
        None => Ok(()),
    }
}

fn name_field(value: Option<String>, field: &str) -> Result<Option<String>, CcError> {
    match value {
        Some(v) if v.chars().count() > 50 => Err(CcError::bad_request(format!(
            "{field} may be at most 50 characters."
        ))),
        other => Ok(other.filter(|v| !v.is_empty())),
    }
}

/// `PUT /contacts/{contact_id}`: a full replacement of the core properties (an omitted name is
/// cleared); `list_memberships` and `custom_fields` are replaced only when sent. An unsubscribe by
/// the contact can not be undone by the account (`update_source: Account`): 400.
async fn put_contact(
    State(state): State<SimState>,
    Path(contact_id): Path<String>,
    body: Bytes,
) -> CcResult {
    let request: UpdateContactRequest = parse_json(&body)?;
    let source = request
        .update_source
        .as_deref()
        .and_then(Actor::parse)
        .ok_or_else(|| CcError::bad_request("update_source must be Contact or Account."))?;
    let first_name = name_field(request.first_name, "first_name")?;
    let last_name = name_field(request.last_name, "last_name")?;
    let job_title = name_field(request.job_title, "job_title")?;
    let company_name = name_field(request.company_name, "company_name")?;
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let current = cc
        .contact(&contact_id)
        .ok_or_else(|| contact_not_found(&contact_id))?;
    let (permission, was, opted_out_by) = match &request.email_address {
        Some(email) => (
            email
                .permission_to_send
                .as_deref()
                .map(|p| {
                    Permission::parse(p).ok_or_else(|| {
                        CcError::bad_request(format!("permission_to_send '{p}' is not valid."))
                    })
                })
                .transpose()?,
            current.permission,
            current.opt_out_source,
        ),
        None => (None, current.permission, current.opt_out_source),
    };
    if let Some(p) = permission
        && was == Permission::Unsubscribed
        && p != Permission::Unsubscribed
        && opted_out_by == Some(Actor::Contact)
        && source == Actor::Account
    {
        return Err(CcError::bad_request(
            "The contact unsubscribed; only the contact can opt back in.",
        ));
    }
    let fields = request
        .custom_fields
        .as_deref()
        .map(|f| checked_custom_fields(cc, f, 25))
        .transpose()?;
    if let Some(lists) = &request.list_memberships {
        checked_lists(cc, lists)?;
    }
    if let Some(email) = &request.email_address {
        if !is_plausible_email(&email.address) {
            return Err(CcError::bad_request(format!(
                "'{}' is not a valid email address.",
                email.address
            )));
        }
        if !cc.change_email(&contact_id, &email.address, now) {
            return Err(CcError::conflict(format!(
                "{} belongs to another contact.",
                email.address
            )));
        }
    }
    let contact = cc
        .contact_mut(&contact_id)
        .ok_or_else(|| contact_not_found(&contact_id))?;
    if let (Some(p), Some(email)) = (permission, &request.email_address) {
        if p == Permission::Unsubscribed && was != Permission::Unsubscribed {
            contact.opt_out(source, email.opt_out_reason.clone(), now);
        } else if p != Permission::Unsubscribed && p != was {
            contact.opt_in(p, source, now);
        }
    }
    contact.first_name = first_name;
    contact.last_name = last_name;
    contact.job_title = job_title;
    contact.company_name = company_name;
    if let Some(fields) = fields {
        contact.custom_fields = fields;
    }
    if let Some(lists) = request.list_memberships {
        contact.list_memberships = lists;
    }
    contact.deleted_at = None;
    contact.update_source = source;
    contact.updated_at = now;
    Ok(json_with(
        StatusCode::OK,
        contact_json(contact, Include::ALL),
    ))
}

#[derive(Deserialize)]
struct SignUpRequest {
    email_address: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    job_title: Option<String>,
    company_name: Option<String>,
    #[serde(default)]
    list_memberships: Vec<String>,
    #[serde(default)]
    custom_fields: Vec<CustomFieldIn>,
}

/// `POST /contacts/sign_up_form`: create or update by address. The contact gives explicit
/// permission (their own sign-up, so an earlier unsubscribe is undone); names are updated when
/// sent, lists and custom fields are appended, a deleted contact is revived.
async fn sign_up_form(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: SignUpRequest = parse_json(&body)?;
    let email = request.email_address.unwrap_or_default();
    if !is_plausible_email(&email) {
        return Err(CcError::bad_request(format!(
            "'{email}' is not a valid email address."
        )));
    }
    if request.list_memberships.is_empty() {
        return Err(CcError::bad_request(
            "list_memberships must name 1 to 50 lists.",
        ));
    }
    let first_name = name_field(request.first_name, "first_name")?;
    let last_name = name_field(request.last_name, "last_name")?;
    let job_title = name_field(request.job_title, "job_title")?;
    let company_name = name_field(request.company_name, "company_name")?;
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    checked_lists(cc, &request.list_memberships)?;
    let fields = checked_custom_fields(cc, &request.custom_fields, 50)?;
    let created = cc.contact_by_email(&email).is_none();
    if created {
        let seq = cc.next_seq();
        cc.insert_contact(Contact::new(seq, &email, Actor::Contact, now));
    }
    let contact = cc
        .contact_by_email_mut(&email)
        .ok_or_else(|| contact_not_found(&email))?;
    if contact.permission != Permission::Explicit {
        contact.opt_in(Permission::Explicit, Actor::Contact, now);
    }
    for (slot, value) in [
        (&mut contact.first_name, first_name),
        (&mut contact.last_name, last_name),
        (&mut contact.job_title, job_title),
        (&mut contact.company_name, company_name),
    ] {
        if value.is_some() {
            *slot = value;
        }
    }
    for list in &request.list_memberships {
        contact.add_list(list);
    }
    for (id, value) in fields {
        contact.set_custom_field(&id, value);
    }
    contact.deleted_at = None;
    contact.update_source = Actor::Contact;
    contact.updated_at = now;
    let (status, action) = if created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, "updated")
    };
    Ok(json_with(
        status,
        json!({"contact_id": contact.id, "action": action}),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn contact(permission: Permission, deleted: bool) -> Contact {
        let mut c = Contact::new(1, "a@x.org", Actor::Account, 10);
        c.permission = permission;
        c.deleted_at = deleted.then_some(20);
        c
    }

    #[test]
    fn status_filters() {
        let unsub = contact(Permission::Unsubscribed, false);
        let explicit = contact(Permission::Explicit, false);
        let deleted = contact(Permission::Explicit, true);
        let filter = |status: &str| {
            let query = PageQuery {
                pairs: vec![("status".into(), status.into())],
                after: 0,
            };
            ContactFilter::parse(&query).unwrap()
        };
        let default = ContactFilter::default();
        for (name, f, c, expected) in [
            ("default keeps live", &default, &explicit, true),
            ("default drops deleted", &default, &deleted, false),
            ("all keeps deleted", &filter("all"), &deleted, true),
            (
                "active drops unsubscribed",
                &filter("active"),
                &unsub,
                false,
            ),
            ("active keeps explicit", &filter("active"), &explicit, true),
            ("deleted", &filter("deleted"), &deleted, true),
            (
                "unsubscribed",
                &filter("unsubscribed,deleted"),
                &unsub,
                true,
            ),
        ] {
            assert_eq!(f.matches(c), expected, "{name}");
        }
        let bad = PageQuery {
            pairs: vec![("status".into(), "gone".into())],
            after: 0,
        };
        assert!(ContactFilter::parse(&bad).is_err());
    }

    #[test]
    fn include_is_checked() {
        assert!(
            Include::parse(Some("custom_fields,notes"))
                .unwrap()
                .custom_fields
        );
        assert!(Include::parse(Some("everything")).is_err());
    }
}
