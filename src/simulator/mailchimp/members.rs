//! Member writes: the rules Mailchimp applies to a single write (PUT/PATCH/POST) and to each item of
//! a batch subscribe, as plain functions over a [`List`]. Each write returns the webhook events it
//! caused; the caller hands them to the webhook dispatcher after releasing the lock.
//!
//! Rules (research §2, §3a, §5):
//! - identity is the subscriber hash of the lower-cased address;
//! - an `unsubscribed` or `cleaned` member cannot be set to `subscribed` ("Member In Compliance
//!   State"); `pending` is allowed; an `archived` member may come back with any status;
//! - an address removed with delete-permanent can never be re-added;
//! - merge field values must name existing merge fields; number fields must be numeric; address
//!   fields must be objects with `addr1`, `city`, `state`, `zip` (or `""` to clear);
//! - `last_changed` moves only when status, address, email type, a merge field or a tag changes.
//!
//! Email check (ours, documented): exactly one `@`, a non-empty local part, a domain containing a
//! dot that neither starts nor ends with one, no whitespace, at most 254 characters.

use serde_json::{Map, Value};

use super::problem::{FieldError, Problem};
use crate::simulator::state::{
    Event, List, Member, MemberExtra, Source, Status, SubscriberHash, format_fired_at,
};
use axum::http::StatusCode;

/// The parsed fields of a member write body.
#[derive(Debug, Clone, Default)]
pub struct MemberWrite {
    pub email_address: Option<String>,
    pub status: Option<Status>,
    pub status_if_new: Option<Status>,
    pub email_type: Option<&'static str>,
    pub merge_fields: Option<Map<String, Value>>,
    pub tags: Option<Vec<String>>,
    pub language: Option<String>,
    pub vip: Option<bool>,
    pub ip_signup: Option<String>,
    pub ip_opt: Option<String>,
}

impl MemberWrite {
    /// Parses a member object (single write body or one batch item), collecting field errors.
    pub fn parse(body: &Value, prefix: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new(
                prefix.trim_end_matches('.'),
                "Expected an object",
            )]);
        };
        let field = |name: &str| format!("{prefix}{name}");
        let mut write = MemberWrite::default();
        let string = |name: &str, errors: &mut Vec<FieldError>| match obj.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(field(name), "Schema describes string"));
                None
            }
        };
        write.email_address = string("email_address", &mut errors);
        write.language = string("language", &mut errors);
        write.ip_signup = string("ip_signup", &mut errors);
        write.ip_opt = string("ip_opt", &mut errors);
        for (name, slot) in [
            ("status", &mut write.status),
            ("status_if_new", &mut write.status_if_new),
        ] {
            if let Some(text) = string(name, &mut errors) {
                match Status::parse_writable(&text) {
                    Some(s) => *slot = Some(s),
                    None => errors.push(FieldError::new(
                        field(name),
                        "Value is not one of enum values: subscribed, unsubscribed, cleaned, pending, transactional",
                    )),
                }
            }
        }
        if let Some(text) = string("email_type", &mut errors) {
            match text.as_str() {
                "html" => write.email_type = Some("html"),
                "text" => write.email_type = Some("text"),
                _ => errors.push(FieldError::new(
                    field("email_type"),
                    "Value must be html or text",
                )),
            }
        }
        match obj.get("merge_fields") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => write.merge_fields = Some(m.clone()),
            Some(_) => errors.push(FieldError::new(
                field("merge_fields"),
                "Schema describes object",
            )),
        }
        match obj.get("vip") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => write.vip = Some(*b),
            Some(_) => errors.push(FieldError::new(field("vip"), "Schema describes boolean")),
        }
        match obj.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let mut tags = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str().map(str::trim) {
                        Some(name) if !name.is_empty() => tags.push(name.to_owned()),
                        _ => errors.push(FieldError::new(
                            field("tags"),
                            "Tags must be non-empty strings",
                        )),
                    }
                }
                write.tags = Some(tags);
            }
            Some(_) => errors.push(FieldError::new(field("tags"), "Schema describes array")),
        }
        if errors.is_empty() {
            Ok(write)
        } else {
            Err(errors)
        }
    }
}

/// Why a member write was refused; becomes a problem (single write) or a batch `errors[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    InvalidEmail(String),
    Compliance(String),
    Forgotten(String),
    Exists(String),
    NotFound,
    HashMismatch,
    Field { field: String, message: String },
    CannotArchive,
}

impl WriteError {
    /// `field` is required and missing or empty.
    fn blank(field: &str) -> Self {
        WriteError::Field {
            field: field.into(),
            message: super::problem::BLANK.into(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        match self {
            WriteError::InvalidEmail(email) => Problem::invalid_field(
                "email_address",
                format!("{email} looks fake or invalid, please enter a real email address."),
            ),
            WriteError::Compliance(email) => Problem::new(
                StatusCode::BAD_REQUEST,
                "Member In Compliance State",
                compliance_detail(email),
            ),
            WriteError::Forgotten(email) => Problem::new(
                StatusCode::BAD_REQUEST,
                "Forgotten Email Not Subscribed",
                forgotten_detail(email),
            ),
            WriteError::Exists(email) => Problem::new(
                StatusCode::BAD_REQUEST,
                "Member Exists",
                format!(
                    "{email} is already a list member. Use PUT to insert or update list members."
                ),
            ),
            WriteError::NotFound => Problem::not_found(),
            WriteError::HashMismatch => Problem::invalid_field(
                "email_address",
                "The subscriber hash in the URL matches neither an existing member nor the email_address in the body.",
            ),
            WriteError::Field { field, message } => Problem {
                detail: "Your merge fields were invalid.".to_owned(),
                ..Problem::invalid_field(field.clone(), message.clone())
            },
            WriteError::CannotArchive => Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "This list member cannot be removed. Can not archive a contact that is bounced, pending or archived",
            ),
        }
    }

    /// `(error, error_code, field, field_message)` for a batch `errors[]` entry.
    pub fn batch_entry(&self, email: &str) -> (String, &'static str, String, String) {
        match self {
            WriteError::Exists(_) => (
                format!(
                    "{email} is already a list member, do you want to update? please provide update_existing:true in the request body"
                ),
                "ERROR_CONTACT_EXISTS",
                String::new(),
                String::new(),
            ),
            WriteError::Field { field, message } => (
                "Your merge fields were invalid.".to_owned(),
                "ERROR_GENERIC",
                field.clone(),
                message.clone(),
            ),
            other => {
                let problem = other.to_problem();
                let (field, message) = problem
                    .errors
                    .first()
                    .map(|e| (e.field.clone(), e.message.clone()))
                    .unwrap_or_default();
                let error = if message.is_empty() {
                    problem.detail
                } else {
                    message.clone()
                };
                (error, "ERROR_GENERIC", field, message)
            }
        }
    }
}

pub fn compliance_detail(email: &str) -> String {
    format!(
        "{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."
    )
}

pub fn forgotten_detail(email: &str) -> String {
    format!(
        "{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."
    )
}

/// Our documented email syntax check (see the module doc).
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return false;
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// How the write was asked for; decides which status field applies and what "exists" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// PUT: upsert; `status_if_new` on creation, `status` always when given.
    Put,
    /// PATCH: update only.
    Patch,
    /// POST /members: create only.
    Post,
    /// One item of POST /lists/{id}.
    Batch {
        update_existing: bool,
        sync_tags: bool,
    },
}

/// What a successful write did.
#[derive(Debug)]
pub struct WriteOutcome {
    pub hash: SubscriberHash,
    pub created: bool,
    pub events: Vec<Event>,
}

/// Counters the write needs from the world (ids are global, not per list).
pub struct Ids<'a> {
    pub next_seq: &'a mut u64,
    pub next_tag_id: &'a mut u32,
}

/// One member write with what it needs besides the list: how it was asked for, what it says, and
/// the world's clock and counters. [`write_member`] hands it on to the create or the update.
pub struct WriteJob<'a> {
    pub mode: WriteMode,
    pub write: &'a MemberWrite,
    pub skip_merge_validation: bool,
    pub source: Source,
    pub now: i64,
    pub ids: Ids<'a>,
}

/// Applies one member write to `list`. `path_hash` is the `{subscriber_hash}` of PUT/PATCH (None
/// for POST and batch items, whose identity is the body's address).
pub fn write_member(
    list: &mut List,
    path_hash: Option<SubscriberHash>,
    job: WriteJob<'_>,
) -> Result<WriteOutcome, WriteError> {
    let (mode, write) = (job.mode, job.write);
    let body_email = write
        .email_address
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if let Some(email) = body_email
        && !is_valid_email(email)
    {
        return Err(WriteError::InvalidEmail(email.to_owned()));
    }
    let body_hash = body_email.map(SubscriberHash::of_email);

    // Which member (if any) is written, and does the address change?
    let (target, new_email): (Option<SubscriberHash>, Option<&str>) = match (mode, path_hash) {
        (WriteMode::Put | WriteMode::Patch, Some(path)) => {
            if list.members.contains_key(&path) {
                let change = body_email.filter(|_| body_hash != Some(path));
                (Some(path), change)
            } else if mode == WriteMode::Patch {
                return Err(WriteError::NotFound);
            } else if body_hash == Some(path) {
                (None, None)
            } else if body_email.is_none() {
                return Err(WriteError::blank("email_address"));
            } else {
                return Err(WriteError::HashMismatch);
            }
        }
        _ => {
            let Some(hash) = body_hash else {
                return Err(WriteError::blank("email_address"));
            };
            (list.members.contains_key(&hash).then_some(hash), None)
        }
    };

    match target {
        Some(hash) => update_existing(list, hash, new_email, job),
        None => {
            let (Some(email), Some(hash)) = (body_email, body_hash) else {
                return Err(WriteError::NotFound);
            };
            create(list, hash, email, job)
        }
    }
}

fn create(
    list: &mut List,
    hash: SubscriberHash,
    email: &str,
    job: WriteJob<'_>,
) -> Result<WriteOutcome, WriteError> {
    let (mode, write, source, now) = (job.mode, job.write, job.source, job.now);
    if list.forgotten.contains(&hash) {
        return Err(WriteError::Forgotten(email.to_owned()));
    }
    let status = match mode {
        WriteMode::Put => write.status.or(write.status_if_new),
        _ => write.status,
    };
    let Some(status) = status else {
        let field = if mode == WriteMode::Put {
            "status_if_new"
        } else {
            "status"
        };
        return Err(WriteError::blank(field));
    };
    let mut merge_fields = Vec::new();
    apply_merge_fields(
        list,
        &mut merge_fields,
        write.merge_fields.as_ref(),
        job.skip_merge_validation,
        true,
    )?;
    merge_fields.shrink_to_fit();
    *job.ids.next_seq += 1;
    let mut member = Member {
        email: email.to_owned(),
        hash,
        seq: *job.ids.next_seq,
        status,
        email_type: write.email_type.unwrap_or("html"),
        merge_fields,
        tags: Vec::new(),
        last_changed: now,
        timestamp_signup: Some(now),
        timestamp_opt: (status == Status::Subscribed).then_some(now),
        extra: MemberExtra {
            unsubscribe_reason: (status == Status::Unsubscribed)
                .then(|| "N/A (Unsubscribed by admin)".to_owned()),
            ip_signup: write.ip_signup.clone(),
            ip_opt: write.ip_opt.clone(),
            language: write.language.clone(),
        }
        .boxed(),
        vip: write.vip.unwrap_or(false),
        source: "API - Generic",
    };
    if let Some(tags) = &write.tags {
        for name in tags {
            let id = list.tag_id_or_create(name, job.ids.next_tag_id);
            if !member.tags.contains(&id) {
                member.tags.push(id);
            }
        }
    }
    note_status_dates(list, status, now);
    let mut events = Vec::new();
    if status == Status::Subscribed && list.has_webhooks() {
        events.push(member_event(list, &member, "subscribe", source, now, &[]));
    }
    list.touch(hash, None, now);
    list.members.insert(hash, member);
    Ok(WriteOutcome {
        hash,
        created: true,
        events,
    })
}

fn update_existing(
    list: &mut List,
    hash: SubscriberHash,
    new_email: Option<&str>,
    job: WriteJob<'_>,
) -> Result<WriteOutcome, WriteError> {
    let (mode, write, source, now) = (job.mode, job.write, job.source, job.now);
    let Some(current) = list.members.get(&hash) else {
        return Err(WriteError::NotFound);
    };
    let archived = current.status == Status::Archived;
    match mode {
        WriteMode::Post if !archived => return Err(WriteError::Exists(current.email.clone())),
        WriteMode::Batch {
            update_existing: false,
            ..
        } if !archived => {
            return Err(WriteError::Exists(current.email.clone()));
        }
        _ => {}
    }
    // An archived member comes back as if new: status_if_new applies to PUT.
    let wanted = match mode {
        WriteMode::Put if archived => write.status.or(write.status_if_new),
        _ => write.status,
    };
    if archived && wanted.is_none() && mode != WriteMode::Patch {
        return Err(WriteError::blank("status"));
    }
    if let Some(new) = wanted {
        check_transition(current.status, new, &current.email)?;
    }
    let mut new_hash = hash;
    if let Some(email) = new_email {
        let candidate = SubscriberHash::of_email(email);
        if list.forgotten.contains(&candidate) {
            return Err(WriteError::Forgotten(email.to_owned()));
        }
        if list.members.contains_key(&candidate) {
            return Err(WriteError::Exists(email.to_owned()));
        }
        new_hash = candidate;
    }
    let mut merge_fields = current.merge_fields.clone();
    let merges_changed = apply_merge_fields(
        list,
        &mut merge_fields,
        write.merge_fields.as_ref(),
        job.skip_merge_validation,
        false,
    )?;

    // Validation done: from here on the write applies.
    let Some(mut member) = list.members.remove(&hash) else {
        return Err(WriteError::NotFound);
    };
    let old_changed = member.last_changed;
    let old_status = member.status;
    let old_email = member.email.clone();
    let mut changed = merges_changed;
    let mut profile = merges_changed;
    merge_fields.shrink_to_fit();
    member.merge_fields = merge_fields;
    if let Some(email) = new_email {
        member.email = email.to_owned();
        member.hash = new_hash;
        changed = true;
        profile = true;
    }
    if let Some(kind) = write.email_type
        && kind != member.email_type
    {
        member.email_type = kind;
        changed = true;
        profile = true;
    }
    if let Some(vip) = write.vip {
        changed |= vip != member.vip;
        member.vip = vip;
    }
    if let Some(language) = &write.language
        && member.extra().language.as_ref() != Some(language)
    {
        member.extra_mut().language = Some(language.clone());
        changed = true;
    }
    if let Some(ip) = &write.ip_opt {
        member.extra_mut().ip_opt = Some(ip.clone());
    }
    if let Some(tags) = &write.tags {
        let sync = matches!(
            mode,
            WriteMode::Batch {
                sync_tags: true,
                ..
            }
        );
        let mut wanted_ids = Vec::with_capacity(tags.len());
        for name in tags {
            let id = list.tag_id_or_create(name, job.ids.next_tag_id);
            if !wanted_ids.contains(&id) {
                wanted_ids.push(id);
            }
        }
        let before = member.tags.clone();
        if sync {
            member.tags = wanted_ids;
        } else {
            for id in wanted_ids {
                if !member.tags.contains(&id) {
                    member.tags.push(id);
                }
            }
        }
        changed |= before != member.tags;
    }
    let mut events = Vec::new();
    if let Some(new) = wanted
        && new != old_status
    {
        member.status = new;
        changed = true;
        match new {
            Status::Subscribed => {
                member.timestamp_opt = Some(now);
                if let Some(extra) = member.extra.as_mut() {
                    extra.unsubscribe_reason = None;
                }
            }
            Status::Unsubscribed => {
                member.extra_mut().unsubscribe_reason =
                    Some("N/A (Unsubscribed by admin)".to_owned());
            }
            _ => {}
        }
        note_status_dates(list, new, now);
    }
    if changed {
        member.last_changed = now;
    }
    if new_email.is_some() && list.has_webhooks() {
        let pairs = [
            ("data[list_id]".to_owned(), list.id.clone()),
            ("data[new_id]".to_owned(), new_hash.to_hex()),
            ("data[new_email]".to_owned(), member.email.clone()),
            ("data[old_email]".to_owned(), old_email),
        ];
        events.push(Event {
            list_id: list.id.clone(),
            kind: "upemail",
            source,
            email: member.email.clone(),
            data: pairs.to_vec(),
            fired_at: now,
        });
    }
    if member.status != old_status {
        if let Some(event) = status_event(list, &member, old_status, source, now, "manual", None) {
            events.push(event);
        }
    } else if profile && member.status != Status::Archived && list.has_webhooks() {
        events.push(member_event(list, &member, "profile", source, now, &[]));
    }
    if new_email.is_some() && member.status != old_status && list.has_webhooks() {
        events.push(member_event(list, &member, "profile", source, now, &[]));
    }
    if changed {
        list.changes.remove(&old_changed);
        list.changes.insert(member.last_changed, new_hash);
    }
    let created = old_status == Status::Archived && member.status != Status::Archived;
    list.members.insert(new_hash, member);
    Ok(WriteOutcome {
        hash: new_hash,
        created: created && matches!(mode, WriteMode::Batch { .. }),
        events,
    })
}

/// The compliance rule: unsubscribed/cleaned members cannot be forced back to subscribed.
pub fn check_transition(old: Status, new: Status, email: &str) -> Result<(), WriteError> {
    if new == Status::Subscribed && matches!(old, Status::Unsubscribed | Status::Cleaned) {
        return Err(WriteError::Compliance(email.to_owned()));
    }
    Ok(())
}

fn note_status_dates(list: &mut List, status: Status, now: i64) {
    match status {
        Status::Subscribed => list.last_sub = Some(now),
        Status::Unsubscribed => list.last_unsub = Some(now),
        _ => {}
    }
}

/// Validates `incoming` merge values against the list's fields and merges them into `values`.
/// Returns whether anything changed. `creating` enforces required fields.
pub fn apply_merge_fields(
    list: &List,
    values: &mut Vec<(u32, Value)>,
    incoming: Option<&Map<String, Value>>,
    skip_validation: bool,
    creating: bool,
) -> Result<bool, WriteError> {
    let mut changed = false;
    if let Some(incoming) = incoming {
        for (tag, value) in incoming {
            let Some(field) = list.merge_field_by_tag(tag) else {
                if skip_validation {
                    continue;
                }
                return Err(WriteError::Field {
                    field: tag.clone(),
                    message: format!("The merge field {tag} does not exist on this audience."),
                });
            };
            let value =
                normalise_merge_value(&field.kind, value).map_err(|message| WriteError::Field {
                    field: field.tag.clone(),
                    message: message.to_owned(),
                })?;
            let id = field.merge_id;
            match values.iter_mut().find(|(existing, _)| *existing == id) {
                Some((_, old)) if *old == value => {}
                Some((_, old)) => {
                    *old = value;
                    changed = true;
                }
                None if is_blank(&value) => {}
                None => {
                    values.push((id, value));
                    changed = true;
                }
            }
        }
    }
    if creating && !skip_validation {
        for field in list.merge_fields.iter().filter(|f| f.required) {
            let present = values
                .iter()
                .any(|(id, v)| *id == field.merge_id && !is_blank(v));
            if !present {
                return Err(WriteError::Field {
                    field: field.tag.clone(),
                    message: "Please enter a value".into(),
                });
            }
        }
    }
    Ok(changed)
}

fn is_blank(value: &Value) -> bool {
    matches!(value, Value::Null) || value.as_str() == Some("")
}

/// Checks one merge value against its field type; returns the value to store.
pub fn normalise_merge_value(kind: &str, value: &Value) -> Result<Value, &'static str> {
    if is_blank(value) {
        return Ok(Value::String(String::new()));
    }
    match kind {
        "number" => match value {
            Value::Number(_) => Ok(value.clone()),
            Value::String(s) if s.trim().parse::<f64>().is_ok() => Ok(value.clone()),
            _ => Err("Please enter a number"),
        },
        "address" => match value {
            Value::Object(obj) => {
                for key in ["addr1", "city", "state", "zip"] {
                    if !obj.get(key).is_some_and(Value::is_string) {
                        return Err("Please enter a complete address");
                    }
                }
                Ok(value.clone())
            }
            _ => Err("Please enter a complete address"),
        },
        _ => match value {
            Value::String(_) => Ok(value.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err("Please enter a text value"),
        },
    }
}

/// The event a status change fires, if any. `reason` is `manual` or `abuse` for unsubscribes and
/// `hard` or `abuse` for cleans.
pub fn status_event(
    list: &List,
    member: &Member,
    old: Status,
    source: Source,
    now: i64,
    reason: &str,
    campaign_id: Option<&str>,
) -> Option<Event> {
    if !list.has_webhooks() {
        return None;
    }
    let campaign: Vec<(String, String)> = campaign_id
        .map(|c| vec![("data[campaign_id]".to_owned(), c.to_owned())])
        .unwrap_or_default();
    let unsubscribe_event = |action: &str, reason: &str, campaign: &[(String, String)]| {
        let mut extra = vec![
            ("data[action]".to_owned(), action.to_owned()),
            ("data[reason]".to_owned(), reason.to_owned()),
        ];
        extra.extend_from_slice(campaign);
        member_event(list, member, "unsubscribe", source, now, &extra)
    };
    match member.status {
        Status::Subscribed if old != Status::Subscribed => {
            Some(member_event(list, member, "subscribe", source, now, &[]))
        }
        Status::Unsubscribed => Some(unsubscribe_event("unsub", reason, &campaign)),
        // An archive of a subscribed member reads as an unsubscribe (no campaign).
        Status::Archived if old == Status::Subscribed => {
            Some(unsubscribe_event("delete", "manual", &[]))
        }
        Status::Cleaned => {
            let mut data = vec![("data[list_id]".to_owned(), list.id.clone())];
            data.extend(campaign);
            data.push(("data[reason]".to_owned(), reason.to_owned()));
            data.push(("data[email]".to_owned(), member.email.clone()));
            Some(Event {
                list_id: list.id.clone(),
                kind: "cleaned",
                source,
                email: member.email.clone(),
                data,
                fired_at: now,
            })
        }
        _ => None,
    }
}

/// An event with the member block of research §6: `data[id]`, `data[list_id]`, `data[email]`,
/// `data[email_type]`, `data[merges][…]`, `data[ip_opt]` (+ `data[ip_signup]` for subscribe).
pub fn member_event(
    list: &List,
    member: &Member,
    kind: &'static str,
    source: Source,
    now: i64,
    extra: &[(String, String)],
) -> Event {
    let mut data: Vec<(String, String)> = extra.to_vec();
    data.push(("data[id]".into(), member.hash.to_hex()));
    data.push(("data[list_id]".into(), list.id.clone()));
    data.push(("data[email]".into(), member.email.clone()));
    data.push(("data[email_type]".into(), member.email_type.to_owned()));
    data.push(("data[merges][EMAIL]".into(), member.email.clone()));
    for field in &list.merge_fields {
        match member.merge_value(field.merge_id) {
            Some(Value::Object(parts)) => {
                for (key, part) in parts {
                    let text = part
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| part.to_string());
                    data.push((format!("data[merges][{}][{key}]", field.tag), text));
                }
            }
            Some(Value::String(s)) => {
                data.push((format!("data[merges][{}]", field.tag), s.clone()))
            }
            Some(other) => data.push((format!("data[merges][{}]", field.tag), other.to_string())),
            None => data.push((format!("data[merges][{}]", field.tag), String::new())),
        }
    }
    data.push((
        "data[ip_opt]".into(),
        member.extra().ip_opt.clone().unwrap_or_default(),
    ));
    if kind == "subscribe" {
        data.push((
            "data[ip_signup]".into(),
            member.extra().ip_signup.clone().unwrap_or_default(),
        ));
    }
    Event {
        list_id: list.id.clone(),
        kind,
        source,
        email: member.email.clone(),
        data,
        fired_at: now,
    }
}

/// The form body of one webhook delivery: `type`, `fired_at`, then the event's `data[…]` pairs.
pub fn webhook_form(event: &Event) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(event.data.len() + 2);
    let fired_at = format_fired_at(event.fired_at);
    pairs.push(("type", event.kind));
    pairs.push(("fired_at", &fired_at));
    for (k, v) in &event.data {
        pairs.push((k, v));
    }
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Sets a member's status from a reader or bounce action (`/_sim`); returns the event.
pub fn set_status_by_action(
    list: &mut List,
    hash: SubscriberHash,
    status: Status,
    reason: &str,
    campaign_id: Option<&str>,
    source: Source,
    now: i64,
) -> Result<Vec<Event>, WriteError> {
    let Some(mut member) = list.members.remove(&hash) else {
        return Err(WriteError::NotFound);
    };
    let old = member.status;
    if old == status {
        list.members.insert(hash, member);
        return Ok(Vec::new());
    }
    let old_changed = member.last_changed;
    member.status = status;
    member.last_changed = now;
    match status {
        Status::Unsubscribed => {
            member.extra_mut().unsubscribe_reason = Some(if reason == "abuse" {
                "Abuse complaint".to_owned()
            } else {
                "N/A (Unsubscribed via link)".to_owned()
            });
        }
        Status::Subscribed => {
            member.timestamp_opt = Some(now);
            if let Some(extra) = member.extra.as_mut() {
                extra.unsubscribe_reason = None;
            }
        }
        _ => {}
    }
    note_status_dates(list, status, now);
    let events: Vec<Event> = status_event(list, &member, old, source, now, reason, campaign_id)
        .into_iter()
        .collect();
    list.touch(hash, Some(old_changed), now);
    list.members.insert(hash, member);
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> List {
        List::new("l1".into(), 1, Map::new(), 0)
    }

    fn write(email: &str, status: Status) -> MemberWrite {
        MemberWrite {
            email_address: Some(email.into()),
            status: Some(status),
            ..Default::default()
        }
    }

    fn apply(
        list: &mut List,
        mode: WriteMode,
        w: &MemberWrite,
        now: i64,
    ) -> Result<WriteOutcome, WriteError> {
        let (mut seq, mut tag) = (0u64, 0u32);
        write_member(
            list,
            None,
            WriteJob {
                mode,
                write: w,
                skip_merge_validation: false,
                source: Source::Api,
                now,
                ids: Ids {
                    next_seq: &mut seq,
                    next_tag_id: &mut tag,
                },
            },
        )
    }

    /// A batch write that updates existing members (and leaves their tags).
    const UPDATE: WriteMode = WriteMode::Batch {
        update_existing: true,
        sync_tags: false,
    };

    /// A list with `email` added by `POST …/members` at time `now`.
    fn list_with(email: &str, status: Status, now: i64) -> List {
        let mut l = list();
        apply(&mut l, WriteMode::Post, &write(email, status), now).unwrap();
        l
    }

    #[test]
    fn email_check_accepts_ordinary_and_rejects_odd_addresses() {
        assert!(is_valid_email("ann@example.org"));
        assert!(is_valid_email("a.b+c@sub.example.co.uk"));
        for bad in [
            "",
            "ann",
            "@example.org",
            "ann@example",
            "ann@@example.org",
            "a n@example.org",
            "ann@.org",
            "ann@example.org.",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn unsubscribed_member_cannot_be_resubscribed_but_may_go_pending() {
        let mut l = list_with("a@x.org", Status::Unsubscribed, 1);
        let err = apply(&mut l, UPDATE, &write("a@x.org", Status::Subscribed), 2).unwrap_err();
        assert_eq!(err, WriteError::Compliance("a@x.org".into()));
        apply(&mut l, UPDATE, &write("a@x.org", Status::Pending), 3).unwrap();
        let member = l.members.values().next().unwrap();
        assert_eq!(member.status, Status::Pending);
        assert_eq!(member.last_changed, 3);
    }

    #[test]
    fn unchanged_write_keeps_last_changed() {
        let mut l = list_with("a@x.org", Status::Subscribed, 1);
        let outcome = apply(&mut l, UPDATE, &write("a@x.org", Status::Subscribed), 5).unwrap();
        assert!(outcome.events.is_empty());
        assert_eq!(l.members.values().next().unwrap().last_changed, 1);
        assert_eq!(l.changes.len(), 1);
    }

    #[test]
    fn merge_values_are_checked_against_field_types() {
        assert!(normalise_merge_value("number", &json!("12.5")).is_ok());
        assert!(normalise_merge_value("number", &json!("twelve")).is_err());
        assert!(
            normalise_merge_value(
                "address",
                &json!({"addr1": "1 St", "city": "C", "state": "S", "zip": "1"})
            )
            .is_ok()
        );
        assert!(normalise_merge_value("address", &json!("1 St")).is_err());
        assert_eq!(normalise_merge_value("text", &json!(7)), Ok(json!("7")));
        let mut l = list();
        let mut w = write("a@x.org", Status::Subscribed);
        w.merge_fields = Some(json!({"NOPE": "x"}).as_object().unwrap().clone());
        assert!(matches!(
            apply(&mut l, WriteMode::Post, &w, 1),
            Err(WriteError::Field { .. })
        ));
        assert!(l.members.is_empty());
    }

    #[test]
    fn webhook_form_is_urlencoded_with_type_first() {
        let mut l = list();
        l.webhooks.push(crate::simulator::state::Webhook {
            id: "w".into(),
            url: "http://127.0.0.1:1/".into(),
            events: Default::default(),
            sources: Default::default(),
            signing_secret: String::new(),
        });
        let outcome = apply(
            &mut l,
            WriteMode::Post,
            &write("a@x.org", Status::Subscribed),
            1_000_000,
        )
        .unwrap();
        let form = webhook_form(&outcome.events[0]);
        assert!(
            form.starts_with("type=subscribe&fired_at=1970-01-01+00%3A00%3A01&"),
            "{form}"
        );
        assert!(
            form.contains("data%5Bmerges%5D%5BEMAIL%5D=a%40x.org"),
            "{form}"
        );
    }
}
