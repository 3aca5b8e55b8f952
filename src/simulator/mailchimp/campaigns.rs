//! Campaign routes: create, read, content, send checklist, test, send, schedule, unschedule.
//!
//! A send delivers to the list's `subscribed` members, narrowed by `recipients.segment_opts` if
//! given, and records each delivery (`GET /_sim/deliveries`). Supported segment conditions: tags,
//! which Mailchimp models as static segments —
//! `{"condition_type":"StaticSegment","field":"static_segment","op":"static_is"|"static_not","value":<tag id>}`
//! with `match` `all` or `any`; `value` may also be the tag's name (a simulator convenience), and
//! `saved_segment_id` may be a tag id. Scheduled campaigns stay `schedule`: the simulator does not
//! fire them at their time.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::problem::{FieldError, Problem};
use super::webhooks;
use super::{QueryMap, json_response, no_content, paging, parse_body, project, required};
use crate::simulator::SimState;
use crate::simulator::state::{
    Campaign, CampaignDelivery, CampaignStatus, Event, List, Source, Status, TestSend, World,
    format_time, parse_time, random_id, without_nulls,
};

type ApiResult = Result<Response, Problem>;

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/campaigns", get(get_campaigns).post(post_campaign))
        .route("/campaigns/{campaign_id}", get(get_campaign))
        .route(
            "/campaigns/{campaign_id}/content",
            get(get_content).put(put_content),
        )
        .route(
            "/campaigns/{campaign_id}/send-checklist",
            get(send_checklist),
        )
        .route("/campaigns/{campaign_id}/actions/test", post(send_test))
        .route("/campaigns/{campaign_id}/actions/send", post(send))
        .route("/campaigns/{campaign_id}/actions/schedule", post(schedule))
        .route(
            "/campaigns/{campaign_id}/actions/unschedule",
            post(unschedule),
        )
}

const CAMPAIGN_TYPES: [&str; 5] = ["regular", "plaintext", "absplit", "rss", "variate"];

/// One parsed segment condition: a tag (by id or name), included or excluded.
#[derive(Debug, Clone, PartialEq)]
enum TagRef {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    match_all: bool,
    conditions: Vec<(TagRef, bool)>,
}

fn parse_segment(opts: &Value) -> Result<Segment, FieldError> {
    let field = "recipients.segment_opts";
    let Some(obj) = opts.as_object() else {
        return Err(FieldError::new(field, "Schema describes object"));
    };
    let match_all = match obj.get("match").and_then(Value::as_str) {
        None | Some("all") => true,
        Some("any") => false,
        Some(_) => {
            return Err(FieldError::new(
                format!("{field}.match"),
                "Value is not one of enum values: any, all",
            ));
        }
    };
    let mut conditions = Vec::new();
    if let Some(id) = obj.get("saved_segment_id").and_then(Value::as_u64) {
        conditions.push((TagRef::Id(id as u32), true));
    }
    for (i, cond) in obj
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{field}.conditions.{i}");
        let kind = cond
            .get("condition_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "StaticSegment" {
            return Err(FieldError::new(
                at,
                "The simulator supports only StaticSegment (tag) conditions.",
            ));
        }
        let include = match cond.get("op").and_then(Value::as_str) {
            Some("static_is") => true,
            Some("static_not") => false,
            _ => {
                return Err(FieldError::new(
                    format!("{at}.op"),
                    "Value is not one of enum values: static_is, static_not",
                ));
            }
        };
        let tag = match cond.get("value") {
            Some(Value::Number(n)) => n.as_u64().map(|n| TagRef::Id(n as u32)),
            Some(Value::String(s)) => Some(
                s.parse::<u32>()
                    .map(TagRef::Id)
                    .unwrap_or_else(|_| TagRef::Name(s.clone())),
            ),
            _ => None,
        };
        let Some(tag) = tag else {
            return Err(FieldError::new(
                format!("{at}.value"),
                "Please provide a tag id.",
            ));
        };
        conditions.push((tag, include));
    }
    Ok(Segment {
        match_all,
        conditions,
    })
}

fn resolve_tag(list: &List, tag: &TagRef) -> Option<u32> {
    match tag {
        TagRef::Id(id) => list.tag_names.contains_key(id).then_some(*id),
        TagRef::Name(name) => list.tag_id(name),
    }
}

/// A segment condition with its tag resolved on the list: (tag id if the tag exists, include?).
type ResolvedCondition = (Option<u32>, bool);

/// The subscribed members a send reaches, in change order.
fn recipients<'a>(
    list: &'a List,
    segment: Option<&Segment>,
) -> Vec<&'a crate::simulator::state::Member> {
    let resolved: Option<(bool, Vec<ResolvedCondition>)> = segment.map(|s| {
        (
            s.match_all,
            s.conditions
                .iter()
                .map(|(t, inc)| (resolve_tag(list, t), *inc))
                .collect(),
        )
    });
    list.changes
        .values()
        .filter_map(|h| list.members.get(h))
        .filter(|m| m.status == Status::Subscribed)
        .filter(|m| match &resolved {
            None => true,
            Some((_, conds)) if conds.is_empty() => true,
            Some((match_all, conds)) => {
                let test = |(tag, include): &ResolvedCondition| {
                    let has = tag.is_some_and(|t| m.tags.contains(&t));
                    has == *include
                };
                if *match_all {
                    conds.iter().all(test)
                } else {
                    conds.iter().any(test)
                }
            }
        })
        .collect()
}

fn campaign_json(campaign: &Campaign, list: Option<&List>) -> Value {
    let segment = campaign
        .segment_opts
        .as_ref()
        .and_then(|o| parse_segment(o).ok());
    let count = list
        .map(|l| recipients(l, segment.as_ref()).len())
        .unwrap_or(0);
    let mut recipients_json = json!({
        "list_id": campaign.list_id,
        "list_is_active": list.is_some(),
        "list_name": list.and_then(|l| l.settings.get("name").cloned()).unwrap_or(json!("")),
        "segment_text": if campaign.segment_opts.is_some() { "Tag segment" } else { "" },
        "recipient_count": count,
    });
    if let (Some(opts), Some(obj)) = (&campaign.segment_opts, recipients_json.as_object_mut()) {
        obj.insert("segment_opts".into(), opts.clone());
    }
    without_nulls(json!({
        "id": campaign.id,
        "web_id": campaign.web_id,
        "parent_campaign_id": "",
        "type": campaign.kind,
        "create_time": format_time(campaign.create_time),
        "archive_url": format!("http://eepurl.com/sim{}", campaign.web_id),
        "long_archive_url": format!("https://sim.us1.list-manage.com/campaign?u=sim&id={}", campaign.id),
        "status": campaign.status.as_str(),
        "emails_sent": campaign.emails_sent,
        "send_time": campaign.send_time.map(format_time),
        "content_type": if campaign.html.is_some() { "html" } else { "template" },
        "needs_block_refresh": false,
        "resendable": false,
        "recipients": recipients_json,
        "settings": campaign.settings,
        "tracking": campaign.tracking,
        "delivery_status": {"enabled": false},
        "_links": [],
    }))
}

/// The campaign `id`, or 404.
fn campaign<'w>(world: &'w World, id: &str) -> Result<&'w Campaign, Problem> {
    world.campaigns.get(id).ok_or_else(Problem::not_found)
}

fn campaign_mut<'w>(world: &'w mut World, id: &str) -> Result<&'w mut Campaign, Problem> {
    world.campaigns.get_mut(id).ok_or_else(Problem::not_found)
}

async fn get_campaigns(State(state): State<SimState>, QueryMap(query): QueryMap) -> ApiResult {
    let (count, offset) = paging(&query)?;
    let world = state.world();
    let matching: Vec<&Campaign> = world
        .campaign_order
        .iter()
        .filter_map(|id| world.campaigns.get(id))
        .filter(|c| query.get("status").is_none_or(|s| c.status.as_str() == s))
        .filter(|c| query.get("list_id").is_none_or(|l| &c.list_id == l))
        .collect();
    let total = matching.len();
    let campaigns: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|c| campaign_json(c, world.lists.get(&c.list_id)))
        .collect();
    let body = json!({"campaigns": campaigns, "total_items": total, "_links": []});
    drop(world);
    Ok(json_response(project(body, &query)?))
}

async fn post_campaign(State(state): State<SimState>, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
    if !CAMPAIGN_TYPES.contains(&kind) {
        return Err(Problem::invalid_field(
            "type",
            format!(
                "Value is not one of enum values: {}",
                CAMPAIGN_TYPES.join(", ")
            ),
        ));
    }
    let list_id = required(&body, "recipients.list_id", Value::as_str)?;
    let segment_opts = body
        .pointer("/recipients/segment_opts")
        .filter(|v| !v.is_null())
        .cloned();
    if let Some(opts) = &segment_opts {
        parse_segment(opts).map_err(|e| Problem::invalid(vec![e]))?;
    }
    let mut settings = match body.get("settings") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(Problem::invalid_field(
                "settings",
                "Schema describes object",
            ));
        }
    };
    for (key, default) in [
        ("subject_line", json!("")),
        ("preview_text", json!("")),
        ("title", json!("")),
        ("from_name", json!("")),
        ("reply_to", json!("")),
        ("to_name", json!("")),
        ("folder_id", json!("")),
        ("authenticate", json!(true)),
        ("auto_footer", json!(false)),
        ("inline_css", json!(false)),
        ("auto_tweet", json!(false)),
        ("fb_comments", json!(true)),
        ("timewarp", json!(false)),
        ("template_id", json!(0)),
        ("drag_and_drop", json!(false)),
        ("use_conversation", json!(false)),
    ] {
        settings.entry(key).or_insert(default);
    }
    let mut tracking = json!({
        "opens": true, "html_clicks": true, "text_clicks": false, "goal_tracking": false,
        "ecomm360": false, "google_analytics": "", "clicktale": "",
    });
    if let (Some(Value::Object(given)), Some(t)) = (body.get("tracking"), tracking.as_object_mut())
    {
        for (k, v) in given {
            t.insert(k.clone(), v.clone());
        }
    }
    let mut world = state.world();
    if !world.lists.contains_key(list_id) {
        return Err(Problem::invalid_field(
            "recipients.list_id",
            format!("The list \"{list_id}\" does not exist."),
        ));
    }
    let now = world.clock.now();
    let web_id = world.next_web_id();
    let campaign = Campaign {
        id: random_id(10),
        web_id,
        kind: kind.to_owned(),
        list_id: list_id.to_owned(),
        segment_opts,
        settings,
        tracking,
        status: CampaignStatus::Save,
        html: None,
        plain_text: None,
        create_time: now,
        send_time: None,
        emails_sent: 0,
    };
    let json = campaign_json(&campaign, world.lists.get(list_id));
    world.campaign_order.push(campaign.id.clone());
    world.campaigns.insert(campaign.id.clone(), campaign);
    Ok(json_response(json))
}

async fn get_campaign(
    State(state): State<SimState>,
    Path(campaign_id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult {
    let world = state.world();
    let campaign = campaign(&world, &campaign_id)?;
    let body = campaign_json(campaign, world.lists.get(&campaign.list_id));
    drop(world);
    Ok(json_response(project(body, &query)?))
}

fn content_json(campaign: &Campaign) -> Value {
    let html = campaign.html.clone().unwrap_or_default();
    json!({
        "html": html,
        "plain_text": campaign.plain_text.clone().unwrap_or_default(),
        "archive_html": html,
        "_links": [],
    })
}

async fn get_content(State(state): State<SimState>, Path(campaign_id): Path<String>) -> ApiResult {
    let world = state.world();
    let campaign = campaign(&world, &campaign_id)?;
    Ok(json_response(content_json(campaign)))
}

/// Accepts `html` (+ optional `plain_text`, derived from the HTML when absent) or `plain_text`.
async fn put_content(
    State(state): State<SimState>,
    Path(campaign_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let html = body.get("html").and_then(Value::as_str).map(str::to_owned);
    let plain = body
        .get("plain_text")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if html.is_none() && plain.is_none() {
        return Err(Problem::invalid_field(
            "html",
            "The simulator accepts html and/or plain_text content (template, url and archive are not supported).",
        ));
    }
    let mut world = state.world();
    let campaign = campaign_mut(&mut world, &campaign_id)?;
    if campaign.status != CampaignStatus::Save {
        return Err(Problem::bad_request(
            "This campaign's content cannot be changed: it has been scheduled or sent.",
        ));
    }
    campaign.plain_text = plain.or_else(|| html.as_deref().map(strip_tags));
    campaign.html = html;
    Ok(json_response(content_json(campaign)))
}

/// A crude HTML → text conversion for the auto-generated plain-text part.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `(is_ready, items)`; one item per check, `error` when it fails.
fn checklist(campaign: &Campaign, list: Option<&List>) -> (bool, Vec<Value>) {
    let setting = |k: &str| {
        campaign
            .settings
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let checks = [
        (
            1,
            "Audience",
            list.is_some(),
            "The campaign's audience exists.",
            "The campaign has no audience.",
        ),
        (
            2,
            "Subject line",
            !setting("subject_line").is_empty(),
            "The subject line is set.",
            "You need to add a subject line.",
        ),
        (
            3,
            "From name",
            !setting("from_name").is_empty(),
            "The from name is set.",
            "You need to add a from name.",
        ),
        (
            4,
            "Reply-to address",
            !setting("reply_to").is_empty(),
            "The reply-to address is set.",
            "You need to add a reply-to email address.",
        ),
        (
            5,
            "Content",
            campaign.html.is_some() || campaign.plain_text.is_some(),
            "The campaign has content.",
            "You need to add content to your campaign.",
        ),
    ];
    let mut ready = true;
    let items = checks
        .iter()
        .map(|(id, heading, ok, good, bad)| {
            ready &= *ok;
            json!({
                "type": if *ok { "success" } else { "error" },
                "id": id,
                "heading": heading,
                "details": if *ok { good } else { bad },
            })
        })
        .collect();
    (ready, items)
}

async fn send_checklist(
    State(state): State<SimState>,
    Path(campaign_id): Path<String>,
) -> ApiResult {
    let world = state.world();
    let campaign = campaign(&world, &campaign_id)?;
    let (ready, items) = checklist(campaign, world.lists.get(&campaign.list_id));
    Ok(json_response(
        json!({"is_ready": ready, "items": items, "_links": []}),
    ))
}

/// `{test_emails:[…], send_type:"html"|"plaintext"}` → 204; recorded for `/_sim/test-sends`.
async fn send_test(
    State(state): State<SimState>,
    Path(campaign_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let emails = required(&body, "test_emails", Value::as_array)?;
    let emails: Vec<String> = emails
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if emails.is_empty() || emails.iter().any(|e| !super::members::is_valid_email(e)) {
        return Err(Problem::invalid_field(
            "test_emails",
            "Please provide valid email addresses.",
        ));
    }
    let send_type = body
        .get("send_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !matches!(send_type, "html" | "plaintext") {
        return Err(Problem::invalid_field(
            "send_type",
            "Value is not one of enum values: html, plaintext",
        ));
    }
    let mut world = state.world();
    let campaign = campaign(&world, &campaign_id)?;
    if campaign.html.is_none() && campaign.plain_text.is_none() {
        return Err(Problem::bad_request(
            "Your Campaign is not ready to send test emails: it has no content.",
        ));
    }
    let id = campaign.id.clone();
    for email in emails {
        world.test_sends.push(TestSend {
            campaign_id: id.clone(),
            email,
            send_type: send_type.to_owned(),
        });
    }
    Ok(no_content())
}

/// `save` → `sent`: delivers to the subscribed members (in the segment) and records each delivery.
async fn send(State(state): State<SimState>, Path(campaign_id): Path<String>) -> ApiResult {
    let mut guard = state.world();
    let world = &mut *guard;
    let now = world.clock.now();
    let campaign = campaign(world, &campaign_id)?;
    match campaign.status {
        CampaignStatus::Save => {}
        CampaignStatus::Sent => {
            return Err(Problem::bad_request("This campaign has already been sent."));
        }
        CampaignStatus::Schedule => {
            return Err(Problem::bad_request(
                "This campaign is scheduled; unschedule it before sending it now.",
            ));
        }
    }
    let list = world.lists.get(&campaign.list_id);
    let (ready, _) = checklist(campaign, list);
    let Some(list) = list.filter(|_| ready) else {
        return Err(Problem::bad_request("Your Campaign is not ready to send."));
    };
    let segment = campaign
        .segment_opts
        .as_ref()
        .and_then(|o| parse_segment(o).ok());
    let emails: Vec<String> = recipients(list, segment.as_ref())
        .iter()
        .map(|m| m.email.clone())
        .collect();
    let event = Event {
        list_id: list.id.clone(),
        kind: "campaign",
        source: Source::Api,
        email: String::new(),
        data: vec![
            ("data[id]".into(), campaign.id.clone()),
            (
                "data[subject]".into(),
                campaign
                    .settings
                    .get("subject_line")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            ("data[status]".into(), "sent".into()),
            ("data[reason]".into(), String::new()),
            ("data[list_id]".into(), list.id.clone()),
        ],
        fired_at: now,
    };
    let count = emails.len() as u64;
    world
        .deliveries
        .extend(emails.into_iter().map(|email| CampaignDelivery {
            campaign_id: campaign_id.clone(),
            email,
        }));
    if let Some(campaign) = world.campaigns.get_mut(&campaign_id) {
        campaign.status = CampaignStatus::Sent;
        campaign.send_time = Some(now);
        campaign.emails_sent = count;
    }
    let deliveries = webhooks::resolve(world, &[event]);
    drop(guard);
    webhooks::spawn(&state, deliveries);
    Ok(no_content())
}

/// `schedule_time` must be a future quarter hour (:00, :15, :30, :45, zero seconds).
async fn schedule(
    State(state): State<SimState>,
    Path(campaign_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let text = required(&body, "schedule_time", Value::as_str)?;
    let Some(at) = parse_time(text) else {
        return Err(Problem::invalid_field(
            "schedule_time",
            "Please provide a valid ISO 8601 date-time.",
        ));
    };
    let at_seconds = at.div_euclid(1_000_000);
    if at.rem_euclid(60_000_000) != 0 || at_seconds.div_euclid(60).rem_euclid(15) != 0 {
        return Err(Problem::bad_request(
            "This campaign cannot be scheduled: Campaigns may only be scheduled to send on the quarter-hour (:00, :15, :30, :45).",
        ));
    }
    let mut guard = state.world();
    let world = &mut *guard;
    let now = world.clock.now();
    if at <= now {
        return Err(Problem::bad_request(
            "This campaign cannot be scheduled: the schedule time is in the past.",
        ));
    }
    let campaign = campaign(world, &campaign_id)?;
    if campaign.status != CampaignStatus::Save {
        return Err(Problem::bad_request(format!(
            "This campaign cannot be scheduled: its status is {}.",
            campaign.status.as_str()
        )));
    }
    let (ready, _) = checklist(campaign, world.lists.get(&campaign.list_id));
    if !ready {
        return Err(Problem::bad_request("Your Campaign is not ready to send."));
    }
    if let Some(campaign) = world.campaigns.get_mut(&campaign_id) {
        campaign.status = CampaignStatus::Schedule;
        campaign.send_time = Some(at);
    }
    Ok(no_content())
}

async fn unschedule(State(state): State<SimState>, Path(campaign_id): Path<String>) -> ApiResult {
    let mut world = state.world();
    let campaign = campaign_mut(&mut world, &campaign_id)?;
    if campaign.status != CampaignStatus::Schedule {
        return Err(Problem::bad_request(
            "This campaign cannot be unscheduled: it is not scheduled.",
        ));
    }
    campaign.status = CampaignStatus::Save;
    campaign.send_time = None;
    Ok(no_content())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segment_accepts_static_segment_conditions_by_id_or_name() {
        let opts = json!({"match": "any", "conditions": [
            {"condition_type": "StaticSegment", "field": "static_segment", "op": "static_is", "value": 7},
            {"condition_type": "StaticSegment", "field": "static_segment", "op": "static_not", "value": "board"},
        ]});
        let seg = parse_segment(&opts).unwrap();
        assert!(!seg.match_all);
        assert_eq!(
            seg.conditions,
            vec![(TagRef::Id(7), true), (TagRef::Name("board".into()), false)]
        );
        let bad = json!({"conditions": [{"condition_type": "Aim", "op": "open", "value": "any"}]});
        assert!(parse_segment(&bad).is_err());
    }

    #[test]
    fn strip_tags_keeps_text() {
        assert_eq!(
            strip_tags("<p>Hello <b>club</b></p>\n<p>bye</p>"),
            "Hello club bye"
        );
    }
}
