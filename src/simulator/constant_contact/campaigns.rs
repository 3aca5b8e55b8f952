//! Email campaigns, test sends, account senders, the account summary and bounce reports under
//! `/v3` (research §6, §7).
//!
//! A campaign has one `primary_email` activity (edited, tested and sent here) and a `permalink`
//! activity whose id is reported but not served. The flow a client follows: `POST /emails`
//! (200; a taken name → 409), `PUT /emails/activities/{id}` with the complete activity and its
//! `contact_list_ids` (omitted properties are overwritten, as the vendor documents), then
//! `POST …/schedules` `{"scheduled_date": "0"}` (201 `[]`) from DRAFT or DONE: the activity becomes
//! DONE and is "sent" to the lists' live contacts whose permission is not `unsubscribed`, each
//! recorded (`GET /_sim/constant-contact/sends`); a re-send from DONE reaches only contacts who
//! did not get it yet. Only immediate sends are simulated: a real date is a 400.
//!
//! Senders: `from_email` and `reply_to_email` must be CONFIRMED account emails (the account starts
//! with `club@example.org`; `POST /_sim/constant-contact/senders` adds more). Test sends: at most 5
//! addresses a call and 50 recipients a simulated UTC day (400 beyond).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::limits::utc_day;
use super::state::{
    ActivityStatusCode, Bounce, CcWorld, EmailActivity, EmailCampaign, SEED_SENDER, Send, TestSend,
    cc_time, is_plausible_email, uuid_v4,
};
use super::{CcError, CcResult, PageQuery, json_with, parse_json, query_pairs};
use crate::simulator::SimState;

/// Test emails an account may send per day, counting each recipient.
pub const TEST_SENDS_PER_DAY: usize = 50;

/// Addresses one test send may name.
const TEST_ADDRESSES_PER_CALL: usize = 5;

/// The bounce codes of the report (research §7).
const BOUNCE_CODES: [&str; 7] = ["B", "D", "F", "S", "V", "X", "Z"];

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/emails", get(get_campaigns).post(post_campaign))
        .route("/emails/{campaign_id}", get(get_campaign))
        .route(
            "/emails/activities/{campaign_activity_id}",
            get(get_activity).put(put_activity),
        )
        .route(
            "/emails/activities/{campaign_activity_id}/schedules",
            get(get_schedules).post(post_schedule),
        )
        .route(
            "/emails/activities/{campaign_activity_id}/tests",
            post(post_test),
        )
        .route("/account/emails", get(get_account_emails))
        .route("/account/summary", get(get_account_summary))
        .route(
            "/reports/email_reports/{campaign_activity_id}/tracking/bounces",
            get(get_bounces),
        )
}

fn campaign_json(campaign: &EmailCampaign, activity: Option<&EmailActivity>) -> Value {
    let status = activity.map_or("Draft", |a| a.status.campaign_status());
    let mut out = json!({
        "campaign_id": campaign.id,
        "name": campaign.name,
        "current_status": status,
        "type": "NEWSLETTER",
        "type_code": 10,
        "created_at": cc_time(campaign.created_at),
        "updated_at": cc_time(campaign.updated_at),
    });
    if let Some(activity) = activity {
        out["campaign_activities"] = json!([
            {"campaign_activity_id": activity.id, "role": "primary_email"},
            {"campaign_activity_id": activity.permalink_id, "role": "permalink"},
        ]);
    }
    out
}

fn activity_json(activity: &EmailActivity) -> Value {
    let mut out = json!({
        "campaign_activity_id": activity.id,
        "campaign_id": activity.campaign_id,
        "role": "primary_email",
        "contact_list_ids": activity.contact_list_ids,
        "current_status": activity.status.as_str(),
        "format_type": 5,
        "from_email": activity.from_email,
        "from_name": activity.from_name,
        "reply_to_email": activity.reply_to_email,
        "subject": activity.subject,
        "html_content": activity.html_content,
    });
    if let Some(preheader) = &activity.preheader {
        out["preheader"] = json!(preheader);
    }
    out
}

/// `from_email` and `reply_to_email` must be confirmed account emails.
fn check_senders(cc: &CcWorld, from: &str, reply_to: &str) -> Result<(), CcError> {
    for (field, address) in [("from_email", from), ("reply_to_email", reply_to)] {
        let confirmed = cc
            .account_emails
            .iter()
            .any(|a| a.confirmed && a.email.eq_ignore_ascii_case(address.trim()));
        if !confirmed {
            return Err(CcError::bad_request(format!(
                "{field} {address} is not a confirmed account email address."
            )));
        }
    }
    Ok(())
}

fn required_text<'a>(
    value: &'a Option<String>,
    field: &str,
    max: usize,
) -> Result<&'a str, CcError> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() && text.chars().count() <= max => Ok(text),
        _ => Err(CcError::bad_request(format!(
            "{field} is required and may be at most {max} characters."
        ))),
    }
}

#[derive(Deserialize)]
struct ActivityIn {
    from_name: Option<String>,
    from_email: Option<String>,
    reply_to_email: Option<String>,
    subject: Option<String>,
    html_content: Option<String>,
    preheader: Option<String>,
    contact_list_ids: Option<Vec<String>>,
}

/// The sender, subject and content fields every write of an activity must carry.
struct ActivityFields {
    from_name: String,
    from_email: String,
    reply_to_email: String,
    subject: String,
    html_content: String,
    preheader: Option<String>,
}

impl ActivityIn {
    fn fields(&self, cc: &CcWorld) -> Result<ActivityFields, CcError> {
        let fields = ActivityFields {
            from_name: required_text(&self.from_name, "from_name", 100)?.to_owned(),
            from_email: required_text(&self.from_email, "from_email", 80)?.to_owned(),
            reply_to_email: required_text(&self.reply_to_email, "reply_to_email", 80)?.to_owned(),
            subject: required_text(&self.subject, "subject", 1000)?.to_owned(),
            html_content: self.html_content.clone().unwrap_or_default(),
            preheader: self.preheader.clone().filter(|p| !p.is_empty()),
        };
        if fields.html_content.chars().count() > 150_000 {
            return Err(CcError::bad_request(
                "html_content may be at most 150000 characters.",
            ));
        }
        if fields
            .preheader
            .as_ref()
            .is_some_and(|p| p.chars().count() > 200)
        {
            return Err(CcError::bad_request(
                "preheader may be at most 200 characters.",
            ));
        }
        check_senders(cc, &fields.from_email, &fields.reply_to_email)?;
        Ok(fields)
    }
}

#[derive(Deserialize)]
struct CreateCampaignRequest {
    name: Option<String>,
    #[serde(default)]
    email_campaign_activities: Vec<ActivityIn>,
}

async fn post_campaign(State(state): State<SimState>, body: Bytes) -> CcResult {
    let request: CreateCampaignRequest = parse_json(&body)?;
    let name = required_text(&request.name, "name", 80)?.to_owned();
    let [activity_in] = request.email_campaign_activities.as_slice() else {
        return Err(CcError::bad_request(
            "email_campaign_activities must hold exactly one activity.",
        ));
    };
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    cc.seed_if_empty();
    let fields = activity_in.fields(cc)?;
    if fields.html_content.trim().is_empty() {
        return Err(CcError::bad_request("html_content is required."));
    }
    if cc
        .campaigns
        .iter()
        .any(|c| c.name.eq_ignore_ascii_case(&name))
    {
        return Err(CcError::conflict(format!(
            "A campaign named '{name}' already exists."
        )));
    }
    let campaign = EmailCampaign {
        id: uuid_v4(),
        name,
        created_at: now,
        updated_at: now,
        activity_id: uuid_v4(),
    };
    let activity = EmailActivity {
        id: campaign.activity_id.clone(),
        permalink_id: uuid_v4(),
        campaign_id: campaign.id.clone(),
        status: ActivityStatusCode::Draft,
        from_name: fields.from_name,
        from_email: fields.from_email,
        reply_to_email: fields.reply_to_email,
        subject: fields.subject,
        preheader: fields.preheader,
        html_content: fields.html_content,
        contact_list_ids: Vec::new(),
        sent_to: Vec::new(),
    };
    let body = campaign_json(&campaign, Some(&activity));
    cc.email_activities.insert(activity.id.clone(), activity);
    cc.campaigns.push(campaign);
    Ok(json_with(StatusCode::OK, body))
}

async fn get_campaigns(State(state): State<SimState>, RawQuery(query): RawQuery) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let limit = query.limit(50, 500)?;
    let after_date = time_param(&query, "after_date")?;
    let before_date = time_param(&query, "before_date")?;
    let world = state.world();
    let cc = &world.cc;
    let matching: Vec<(usize, &EmailCampaign)> = cc
        .campaigns
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as u64) >= query.after)
        .filter(|(_, c)| after_date.is_none_or(|t| c.updated_at >= t))
        .filter(|(_, c)| before_date.is_none_or(|t| c.updated_at <= t))
        .take(limit + 1)
        .collect();
    let campaigns: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|(_, c)| {
            let mut summary = campaign_json(c, cc.email_activities.get(&c.activity_id));
            if let Some(obj) = summary.as_object_mut() {
                obj.remove("campaign_activities");
            }
            summary
        })
        .collect();
    let mut body = json!({"campaigns": campaigns});
    if let Some((next, _)) = matching.get(limit) {
        body["_links"] = json!({"next": {"href": query.next_href("/emails", *next as u64)}});
    }
    Ok(json_with(StatusCode::OK, body))
}

fn time_param(query: &PageQuery, name: &str) -> Result<Option<i64>, CcError> {
    query
        .get(name)
        .map(|text| {
            crate::simulator::state::parse_time(text).ok_or_else(|| {
                CcError::bad_request(format!("{name} must be an ISO-8601 date-time."))
            })
        })
        .transpose()
}

async fn get_campaign(State(state): State<SimState>, Path(campaign_id): Path<String>) -> CcResult {
    let world = state.world();
    let cc = &world.cc;
    let campaign = cc
        .campaigns
        .iter()
        .find(|c| c.id == campaign_id)
        .ok_or_else(|| CcError::not_found(format!("Campaign {campaign_id} was not found.")))?;
    let activity = cc.email_activities.get(&campaign.activity_id);
    Ok(json_with(StatusCode::OK, campaign_json(campaign, activity)))
}

fn activity_not_found(id: &str) -> CcError {
    CcError::not_found(format!("Campaign activity {id} was not found."))
}

async fn get_activity(State(state): State<SimState>, Path(activity_id): Path<String>) -> CcResult {
    let world = state.world();
    let activity = world
        .cc
        .email_activities
        .get(&activity_id)
        .ok_or_else(|| activity_not_found(&activity_id))?;
    Ok(json_with(StatusCode::OK, activity_json(activity)))
}

/// `PUT /emails/activities/{id}`: the complete activity; omitted properties are overwritten.
async fn put_activity(
    State(state): State<SimState>,
    Path(activity_id): Path<String>,
    body: Bytes,
) -> CcResult {
    let request: ActivityIn = parse_json(&body)?;
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    cc.seed_if_empty();
    if !cc.email_activities.contains_key(&activity_id) {
        return Err(activity_not_found(&activity_id));
    }
    let fields = request.fields(cc)?;
    let lists = request.contact_list_ids.unwrap_or_default();
    if let Some(unknown) = lists.iter().find(|id| cc.list(id).is_none()) {
        return Err(CcError::bad_request(format!(
            "List {unknown} was not found."
        )));
    }
    let activity = cc
        .email_activities
        .get_mut(&activity_id)
        .ok_or_else(|| activity_not_found(&activity_id))?;
    activity.from_name = fields.from_name;
    activity.from_email = fields.from_email;
    activity.reply_to_email = fields.reply_to_email;
    activity.subject = fields.subject;
    activity.html_content = fields.html_content;
    activity.preheader = fields.preheader;
    activity.contact_list_ids = lists;
    let body = activity_json(activity);
    let campaign_id = activity.campaign_id.clone();
    if let Some(campaign) = cc.campaigns.iter_mut().find(|c| c.id == campaign_id) {
        campaign.updated_at = now;
    }
    Ok(json_with(StatusCode::OK, body))
}

async fn get_schedules(State(state): State<SimState>, Path(activity_id): Path<String>) -> CcResult {
    let world = state.world();
    if !world.cc.email_activities.contains_key(&activity_id) {
        return Err(activity_not_found(&activity_id));
    }
    // Sends are immediate: nothing is ever left scheduled.
    Ok(json_with(StatusCode::OK, json!([])))
}

#[derive(Deserialize)]
struct ScheduleRequest {
    scheduled_date: Option<String>,
}

async fn post_schedule(
    State(state): State<SimState>,
    Path(activity_id): Path<String>,
    body: Bytes,
) -> CcResult {
    let request: ScheduleRequest = parse_json(&body)?;
    match request.scheduled_date.as_deref().map(str::trim) {
        Some("0") => {}
        Some(_) => {
            return Err(CcError::bad_request(
                "The simulator sends only immediately: scheduled_date must be \"0\".",
            ));
        }
        None => return Err(CcError::bad_request("scheduled_date is required.")),
    }
    let mut world = state.world();
    let now = world.clock.now();
    send_now(&mut world.cc, &activity_id, now)?;
    Ok(json_with(StatusCode::CREATED, json!([])))
}

/// Sends the activity to its lists' live contacts who have not unsubscribed and did not get it yet.
pub fn send_now(cc: &mut CcWorld, activity_id: &str, now: i64) -> Result<usize, CcError> {
    let activity = cc
        .email_activities
        .get(activity_id)
        .ok_or_else(|| activity_not_found(activity_id))?;
    if activity.contact_list_ids.is_empty() {
        return Err(CcError::bad_request(
            "Add contact_list_ids to the activity (PUT) before scheduling it.",
        ));
    }
    if activity.html_content.trim().is_empty() {
        return Err(CcError::bad_request("The activity has no html_content."));
    }
    let recipients: Vec<(String, String)> = cc
        .contacts
        .values()
        .filter(|c| c.deleted_at.is_none())
        .filter(|c| c.permission != super::state::Permission::Unsubscribed)
        .filter(|c| {
            c.list_memberships
                .iter()
                .any(|l| activity.contact_list_ids.contains(l))
        })
        .filter(|c| !activity.sent_to.contains(&c.id))
        .map(|c| (c.id.clone(), c.email.clone()))
        .collect();
    let campaign_id = activity.campaign_id.clone();
    for (contact_id, email) in &recipients {
        cc.sends.push(Send {
            campaign_activity_id: activity_id.to_owned(),
            contact_id: contact_id.clone(),
            email: email.clone(),
            at: now,
        });
    }
    if let Some(activity) = cc.email_activities.get_mut(activity_id) {
        activity
            .sent_to
            .extend(recipients.iter().map(|(id, _)| id.clone()));
        activity.status = ActivityStatusCode::Done;
    }
    if let Some(campaign) = cc.campaigns.iter_mut().find(|c| c.id == campaign_id) {
        campaign.updated_at = now;
    }
    cc.last_sent_activity = Some(activity_id.to_owned());
    Ok(recipients.len())
}

#[derive(Deserialize)]
struct TestSendRequest {
    #[serde(default)]
    email_addresses: Vec<String>,
}

async fn post_test(
    State(state): State<SimState>,
    Path(activity_id): Path<String>,
    body: Bytes,
) -> CcResult {
    let request: TestSendRequest = parse_json(&body)?;
    let count = request.email_addresses.len();
    if count == 0 || count > TEST_ADDRESSES_PER_CALL {
        return Err(CcError::bad_request(format!(
            "email_addresses must hold 1 to {TEST_ADDRESSES_PER_CALL} addresses."
        )));
    }
    if let Some(bad) = request
        .email_addresses
        .iter()
        .find(|a| !is_plausible_email(a))
    {
        return Err(CcError::bad_request(format!(
            "'{bad}' is not a valid email address."
        )));
    }
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    if !cc.email_activities.contains_key(&activity_id) {
        return Err(activity_not_found(&activity_id));
    }
    let today = utc_day(now);
    let sent_today = cc
        .test_sends
        .iter()
        .filter(|t| utc_day(t.at) == today)
        .count();
    if sent_today + count > TEST_SENDS_PER_DAY {
        return Err(CcError::bad_request(format!(
            "The account may send at most {TEST_SENDS_PER_DAY} test emails a day."
        )));
    }
    for email in request.email_addresses {
        cc.test_sends.push(TestSend {
            campaign_activity_id: activity_id.clone(),
            email,
            at: now,
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /account/summary` (getAccountDetails): the account's organisation and owner, what a
/// client calls to prove its tokens work.
async fn get_account_summary(State(state): State<SimState>) -> CcResult {
    let mut world = state.world();
    world.cc.seed_if_empty();
    let contact_email = world
        .cc
        .account_emails
        .first()
        .map_or(SEED_SENDER, |a| a.email.as_str());
    Ok(json_with(
        StatusCode::OK,
        json!({
            "encoded_account_id": "a07e1simulat0r",
            "organization_name": "The Club",
            "contact_email": contact_email,
            "country_code": "US",
            "time_zone_id": "US/Eastern",
        }),
    ))
}

async fn get_account_emails(State(state): State<SimState>, RawQuery(query): RawQuery) -> CcResult {
    let pairs = query_pairs(query.as_deref());
    if pairs.len() > 1 {
        return Err(CcError::bad_request(
            "Use only one query parameter at a time.",
        ));
    }
    let confirmed = match pairs
        .iter()
        .find(|(k, _)| k == "confirm_status")
        .map(|(_, v)| v.as_str())
    {
        None => None,
        Some("CONFIRMED" | "C") => Some(true),
        Some("UNCONFIRMED" | "U") => Some(false),
        Some(other) => {
            return Err(CcError::bad_request(format!(
                "confirm_status does not accept '{other}'."
            )));
        }
    };
    let address = pairs
        .iter()
        .find(|(k, _)| k == "email_address")
        .map(|(_, v)| v.clone());
    let mut world = state.world();
    world.cc.seed_if_empty();
    let out: Vec<Value> = world
        .cc
        .account_emails
        .iter()
        .filter(|a| confirmed.is_none_or(|c| a.confirmed == c))
        .filter(|a| {
            address
                .as_deref()
                .is_none_or(|e| a.email.eq_ignore_ascii_case(e))
        })
        .map(|a| {
            json!({
                "email_address": a.email,
                "email_id": a.id,
                "confirm_status": if a.confirmed { "CONFIRMED" } else { "UNCONFIRMED" },
                "roles": ["CONTACT"],
                "pending_roles": [],
            })
        })
        .collect();
    Ok(json_with(StatusCode::OK, Value::Array(out)))
}

async fn get_bounces(
    State(state): State<SimState>,
    Path(activity_id): Path<String>,
    RawQuery(query): RawQuery,
) -> CcResult {
    let query = PageQuery::from_request(query_pairs(query.as_deref()))?;
    let limit = query.limit(500, 500)?;
    let codes: Vec<&str> = query.all("bounce_code").collect();
    if let Some(bad) = codes.iter().find(|c| !BOUNCE_CODES.contains(c)) {
        return Err(CcError::bad_request(format!(
            "bounce_code does not accept '{bad}'."
        )));
    }
    let world = state.world();
    let cc = &world.cc;
    if !cc.email_activities.contains_key(&activity_id) {
        return Err(activity_not_found(&activity_id));
    }
    // Newest first; the cursor's position is the `seq` of the last bounce shown.
    let page: Vec<&Bounce> = cc
        .bounces
        .iter()
        .rev()
        .filter(|b| b.campaign_activity_id == activity_id)
        .filter(|b| query.after == 0 || b.seq < query.after)
        .filter(|b| codes.is_empty() || codes.contains(&b.code.as_str()))
        .take(limit + 1)
        .collect();
    let items: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|b| {
            let current = cc
                .contact(&b.contact_id)
                .map_or(b.email.as_str(), |c| c.email.as_str());
            let mut item = json!({
                "contact_id": b.contact_id,
                "campaign_activity_id": b.campaign_activity_id,
                "tracking_activity_type": "em_bounces",
                "email_address": b.email,
                "bounce_code": b.code,
                "current_email_address": current,
                "created_time": cc_time(b.at),
            });
            if let Some(first) = &b.first_name {
                item["first_name"] = json!(first);
            }
            if let Some(last) = &b.last_name {
                item["last_name"] = json!(last);
            }
            item
        })
        .collect();
    let mut links = json!({});
    if let (Some(_), Some(last)) = (page.get(limit), page.get(limit.saturating_sub(1))) {
        let path = format!("/reports/email_reports/{activity_id}/tracking/bounces");
        links["next"] = json!({"href": query.next_href(&path, last.seq)});
    }
    Ok(json_with(
        StatusCode::OK,
        json!({"tracking_activities": items, "_links": links}),
    ))
}

/// Records a bounce of `email` on the campaign activity sent last (for
/// `POST /_sim/constant-contact/contacts/{email}/bounce`).
pub fn record_bounce(
    cc: &mut CcWorld,
    email: &str,
    code: &str,
    now: i64,
) -> Result<Value, CcError> {
    if !BOUNCE_CODES.contains(&code) {
        return Err(CcError::bad_request(format!(
            "code must be one of {}.",
            BOUNCE_CODES.join(", ")
        )));
    }
    let activity_id = cc
        .last_sent_activity
        .clone()
        .ok_or_else(|| CcError::conflict("No campaign has been sent, so nothing can bounce."))?;
    let contact = cc
        .contact_by_email(email)
        .ok_or_else(|| CcError::not_found(format!("No contact has the address {email}.")))?;
    let bounce = Bounce {
        seq: 0,
        campaign_activity_id: activity_id.clone(),
        contact_id: contact.id.clone(),
        email: contact.email.clone(),
        first_name: contact.first_name.clone(),
        last_name: contact.last_name.clone(),
        code: code.to_owned(),
        at: now,
    };
    let seq = cc.next_seq();
    let body = json!({
        "campaign_activity_id": activity_id,
        "contact_id": bounce.contact_id,
        "bounce_code": code,
    });
    cc.bounces.push(Bounce { seq, ..bounce });
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::simulator::constant_contact::state::{Actor, Contact, Permission};

    fn world_with_campaign(list: &str) -> CcWorld {
        let mut cc = CcWorld::default();
        for (email, permission) in [
            ("ann@x.org", Permission::Explicit),
            ("bob@x.org", Permission::Unsubscribed),
        ] {
            let seq = cc.next_seq();
            let mut contact = Contact::new(seq, email, Actor::Account, 0);
            contact.permission = permission;
            contact.add_list(list);
            cc.insert_contact(contact);
        }
        cc.email_activities.insert(
            "a1".into(),
            EmailActivity {
                id: "a1".into(),
                permalink_id: "p1".into(),
                campaign_id: "c1".into(),
                status: ActivityStatusCode::Draft,
                from_name: "Club".into(),
                from_email: "club@example.org".into(),
                reply_to_email: "club@example.org".into(),
                subject: "News".into(),
                preheader: None,
                html_content: "<p>hi</p>".into(),
                contact_list_ids: vec![list.into()],
                sent_to: Vec::new(),
            },
        );
        cc
    }

    #[test]
    fn a_send_skips_unsubscribers_and_a_resend_skips_earlier_recipients() {
        let mut cc = world_with_campaign("l1");
        assert_eq!(send_now(&mut cc, "a1", 1).unwrap(), 1);
        assert_eq!(cc.sends[0].email, "ann@x.org");
        let seq = cc.next_seq();
        let mut cat = Contact::new(seq, "cat@x.org", Actor::Account, 2);
        cat.permission = Permission::Implicit;
        cat.add_list("l1");
        cc.insert_contact(cat);
        assert_eq!(send_now(&mut cc, "a1", 3).unwrap(), 1);
        assert_eq!(cc.sends[1].email, "cat@x.org");
        assert_eq!(cc.email_activities["a1"].status, ActivityStatusCode::Done);
    }

    #[test]
    fn bounces_need_a_sent_campaign_and_a_known_code() {
        let mut cc = world_with_campaign("l1");
        assert_eq!(
            record_bounce(&mut cc, "ann@x.org", "B", 1)
                .unwrap_err()
                .status,
            StatusCode::CONFLICT
        );
        send_now(&mut cc, "a1", 1).unwrap();
        assert_eq!(
            record_bounce(&mut cc, "ann@x.org", "Q", 2)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let recorded = record_bounce(&mut cc, "ANN@x.org", "B", 2).unwrap();
        assert_eq!(recorded["campaign_activity_id"], "a1");
        assert_eq!(cc.bounces.len(), 1);
    }
}
