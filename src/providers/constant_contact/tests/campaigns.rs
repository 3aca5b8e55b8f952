//! Wiremock tests of the campaign calls: the exact requests, the sender check before a create,
//! the activity written back whole, the tracking image, the test-send limits, and a send that
//! is never retried.

use super::*;
use crate::providers::{CampaignStatus, NewCampaign};

const CAMPAIGN: &str = "c-8987dc1a";
const ACTIVITY: &str = "a-4c08372c";

fn new_campaign<'a>(reply_to: &'a str, segment: Option<&'a str>) -> NewCampaign<'a> {
    NewCampaign {
        list_id: LIST,
        segment_id: segment,
        subject: "Spring news",
        title: "mailbridge:spring-2026",
        from_name: "Riverside Rowing",
        reply_to,
    }
}

/// `GET /account/emails?confirm_status=CONFIRMED` answers `confirmed`.
async fn mount_senders(env: &Env, confirmed: &[&str]) {
    let body: Vec<Value> = confirmed
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"email_address": e, "email_id": i + 1, "confirm_status": "CONFIRMED", "roles": []}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/v3/account/emails"))
        .and(query_param("confirm_status", "CONFIRMED"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&env.server)
        .await;
}

fn campaign_body(status: &str) -> Value {
    json!({
        "campaign_id": CAMPAIGN, "name": "mailbridge:spring-2026", "current_status": status,
        "type": "NEWSLETTER", "type_code": 10,
        "created_at": "2026-12-07T12:00:00.000Z", "updated_at": "2026-12-07T12:00:00.000Z",
        "campaign_activities": [
            {"campaign_activity_id": "p-1", "role": "permalink"},
            {"campaign_activity_id": ACTIVITY, "role": "primary_email"}
        ]
    })
}

/// `GET /emails/{CAMPAIGN}` answers the campaign with `status`.
async fn mount_campaign(env: &Env, status: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/v3/emails/{CAMPAIGN}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign_body(status)))
        .mount(&env.server)
        .await;
}

/// `GET /emails/activities/{ACTIVITY}` answers `activity`.
async fn mount_activity(env: &Env, activity: Value) {
    Mock::given(method("GET"))
        .and(path(format!("/v3/emails/activities/{ACTIVITY}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(activity))
        .mount(&env.server)
        .await;
}

async fn mount_put(env: &Env, body: Value) {
    Mock::given(method("PUT"))
        .and(path(format!("/v3/emails/activities/{ACTIVITY}")))
        .and(body_json(body))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&env.server)
        .await;
}

/// Every request received, as `METHOD path`, in order.
async fn sent(env: &Env) -> Vec<String> {
    env.server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect()
}

#[tokio::test]
async fn a_campaign_is_created_from_a_confirmed_sender_then_given_its_list_in_a_complete_activity()
{
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_senders(&env, &["club@example.org", "secretary@club.example"]).await;
    Mock::given(method("POST"))
        .and(path("/v3/emails"))
        .and(body_json(json!({
            "name": "mailbridge:spring-2026",
            "email_campaign_activities": [{
                "format_type": 5,
                "from_name": "Riverside Rowing",
                "from_email": "Secretary@Club.example",
                "reply_to_email": "Secretary@Club.example",
                "subject": "Spring news",
                "html_content": "<html><body>[[trackingImage]]</body></html>"
            }]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign_body("Draft")))
        .expect(1)
        .mount(&env.server)
        .await;
    mount_put(
        &env,
        json!({
            "from_name": "Riverside Rowing",
            "from_email": "Secretary@Club.example",
            "reply_to_email": "Secretary@Club.example",
            "subject": "Spring news",
            "html_content": "<html><body>[[trackingImage]]</body></html>",
            "contact_list_ids": [LIST]
        }),
    )
    .await;
    let client = env.client();
    let created = client
        .create_campaign(&new_campaign("Secretary@Club.example", None))
        .await
        .unwrap();
    assert_eq!(created.id, CAMPAIGN);
    assert_eq!(created.status, CampaignStatus::Draft);
    assert_eq!(created.title, "mailbridge:spring-2026");
    assert_eq!(
        sent(&env).await,
        vec![
            "GET /v3/account/emails".to_owned(),
            "POST /v3/emails".to_owned(),
            format!("PUT /v3/emails/activities/{ACTIVITY}"),
        ]
    );
    assert_eq!(
        client.calls(),
        crate::providers::ApiCalls { read: 1, write: 2 }
    );
}

#[tokio::test]
async fn an_unconfirmed_sender_or_a_segment_is_refused_before_anything_is_created() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_senders(&env, &["club@example.org"]).await;
    Mock::given(method("POST"))
        .and(path("/v3/emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign_body("Draft")))
        .expect(0)
        .mount(&env.server)
        .await;
    let client = env.client();
    let err = client
        .create_campaign(&new_campaign("secretary@club.example", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unconfirmed_sender");
    let text = err.to_string();
    for part in [
        "Constant Contact createEmailCampaign on list",
        "secretary@club.example (the campaign's from and reply-to address) is not a confirmed email address",
        "My Settings",
        "POST /account/emails",
        "confirmation link",
        "nothing created",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert_eq!(sent(&env).await, vec!["GET /v3/account/emails".to_owned()]);

    let err = client
        .create_campaign(&new_campaign("club@example.org", Some("juniors")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert!(
        err.to_string()
            .contains("segment `juniors`: Constant Contact audiences cannot be narrowed"),
        "{err}"
    );
    let err = client.segment_id(LIST, "juniors").await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert_eq!(
        sent(&env).await.len(),
        1,
        "a segment is refused without a call"
    );
}

#[tokio::test]
async fn content_is_written_back_in_the_whole_activity_with_the_tracking_image_added() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_campaign(&env, "Draft").await;
    let footer = json!({"address_line1": "1 River Rd", "country_code": "GB", "organization_name": "Riverside Rowing"});
    let document = json!({"letter_format": "HTML"});
    mount_activity(
        &env,
        json!({
            "campaign_activity_id": ACTIVITY, "campaign_id": CAMPAIGN, "role": "primary_email",
            "current_status": "DRAFT", "format_type": 5,
            "from_name": "Riverside Rowing", "from_email": "club@example.org",
            "reply_to_email": "club@example.org", "subject": "Spring news",
            "preheader": "The boats are back", "html_content": "<html><body>[[trackingImage]]</body></html>",
            "contact_list_ids": [LIST], "physical_address_in_footer": footer,
            "document_properties": document, "permalink_url": "https://conta.cc/x"
        }),
    )
    .await;
    mount_put(
        &env,
        json!({
            "from_name": "Riverside Rowing", "from_email": "club@example.org",
            "reply_to_email": "club@example.org", "subject": "Spring news",
            "preheader": "The boats are back",
            "html_content": "<html><body class=\"news\">[[trackingImage]]<h1>Spring</h1></body></html>",
            "contact_list_ids": [LIST], "physical_address_in_footer": footer,
            "document_properties": document
        }),
    )
    .await;
    env.client()
        .set_campaign_content(
            CAMPAIGN,
            "<html><body class=\"news\"><h1>Spring</h1></body></html>",
            "Spring",
        )
        .await
        .unwrap();
    assert_eq!(
        sent(&env).await,
        vec![
            format!("GET /v3/emails/{CAMPAIGN}"),
            format!("GET /v3/emails/activities/{ACTIVITY}"),
            format!("PUT /v3/emails/activities/{ACTIVITY}"),
        ]
    );
}

#[tokio::test]
async fn the_checklist_names_an_unconfirmed_reply_to_and_a_missing_list() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_senders(&env, &["club@example.org"]).await;
    mount_campaign(&env, "Draft").await;
    mount_activity(
        &env,
        json!({
            "campaign_activity_id": ACTIVITY, "current_status": "DRAFT",
            "from_name": "Riverside Rowing", "from_email": "CLUB@example.org",
            "reply_to_email": "secretary@club.example", "subject": "Spring news"
        }),
    )
    .await;
    let checklist = env.client().send_checklist(CAMPAIGN).await.unwrap();
    assert!(!checklist.is_ready);
    let kinds: Vec<(&str, &str)> = checklist
        .items
        .iter()
        .map(|i| (i.heading.as_str(), i.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("From address", "success"),
            ("Reply-to address", "error"),
            ("Recipients", "error")
        ]
    );
    assert!(
        checklist.items[1]
            .details
            .starts_with("secretary@club.example is not a confirmed email address"),
        "{checklist:?}"
    );
    assert_eq!(
        checklist.items[2].details,
        "the email has no contact list to go to"
    );
}

#[tokio::test]
async fn a_checklist_of_confirmed_senders_and_a_list_is_ready() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_senders(&env, &["club@example.org"]).await;
    mount_campaign(&env, "Draft").await;
    mount_activity(
        &env,
        json!({
            "campaign_activity_id": ACTIVITY, "from_name": "Riverside Rowing",
            "from_email": "club@example.org", "reply_to_email": "club@example.org",
            "subject": "Spring news", "contact_list_ids": [LIST]
        }),
    )
    .await;
    let checklist = env.client().send_checklist(CAMPAIGN).await.unwrap();
    assert!(checklist.is_ready, "{checklist:?}");
    assert_eq!(checklist.items[2].details, format!("contact list {LIST}"));
}

fn emails(n: usize) -> Vec<Email> {
    (0..n)
        .map(|i| Email::parse(&format!("t{i}@club.example")).unwrap())
        .collect()
}

#[tokio::test]
async fn test_emails_go_five_a_call_and_fifty_a_utc_day_counted_in_the_state_db() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_campaign(&env, "Draft").await;
    Mock::given(method("POST"))
        .and(path(format!("/v3/emails/activities/{ACTIVITY}/tests")))
        .and(body_json(
            json!({"email_addresses": ["Me@Club.example", "t0@club.example"]}),
        ))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&env.server)
        .await;
    let client = env.client();
    let mut two = vec![Email::parse("Me@Club.example").unwrap()];
    two.extend(emails(1));
    client.test_campaign(CAMPAIGN, &two).await.unwrap();
    let day = start().date_naive();
    assert_eq!(
        env.store.api_budget_used(TEST_BUDGET, day).await.unwrap(),
        2
    );

    // Six addresses in one call: refused, nothing sent, nothing counted.
    let err = client
        .test_campaign(CAMPAIGN, &emails(6))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "test_send_limit");
    assert!(
        err.to_string()
            .contains("6 addresses given; Constant Contact takes at most 5 a call"),
        "{err}"
    );

    // 48 of the day's 50 used (another process counted 46): three more are refused up front.
    for _ in 0..46 {
        assert!(
            env.store
                .take_api_budget(TEST_BUDGET, day, 50)
                .await
                .unwrap()
        );
    }
    let err = client
        .test_campaign(CAMPAIGN, &emails(3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "test_send_limit");
    assert!(
        err.to_string().contains(
            "48 of the account's 50 test emails of the UTC day are used and 3 more were asked for; more can go out from 2026-12-08T00:00:00Z"
        ),
        "{err}"
    );
    assert_eq!(
        env.store.api_budget_used(TEST_BUDGET, day).await.unwrap(),
        48
    );
    let tests_sent = env
        .requests_to(&format!("/v3/emails/activities/{ACTIVITY}/tests"))
        .await;
    assert_eq!(tests_sent.len(), 1, "the refused ones were never sent");

    // The next UTC day has its own fifty.
    env.clock.advance(Duration::from_secs(12 * 3600));
    Mock::given(method("POST"))
        .and(path(format!("/v3/emails/activities/{ACTIVITY}/tests")))
        .and(body_json(
            json!({"email_addresses": ["t0@club.example", "t1@club.example", "t2@club.example"]}),
        ))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&env.server)
        .await;
    client.test_campaign(CAMPAIGN, &emails(3)).await.unwrap();
    let next = day.succ_opt().unwrap();
    assert_eq!(
        env.store.api_budget_used(TEST_BUDGET, next).await.unwrap(),
        3
    );
}

#[tokio::test]
async fn a_send_is_one_schedule_call_with_zero_and_a_schedule_carries_the_time() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_campaign(&env, "Draft").await;
    let schedules = format!("/v3/emails/activities/{ACTIVITY}/schedules");
    Mock::given(method("POST"))
        .and(path(schedules.as_str()))
        .and(body_json(json!({"scheduled_date": "0"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!([])))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path(schedules.as_str()))
        .and(body_json(json!({"scheduled_date": "2026-12-08T09:15:00Z"})))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!([{"scheduled_date": "2026-12-08T09:15:00.000Z"}])),
        )
        .expect(1)
        .mount(&env.server)
        .await;
    let client = env.client();
    client.send_campaign(CAMPAIGN).await.unwrap();
    let at = Utc.with_ymd_and_hms(2026, 12, 8, 9, 15, 0).unwrap();
    client.schedule_campaign(CAMPAIGN, at).await.unwrap();
}

#[tokio::test]
async fn a_send_without_a_clear_answer_is_not_retried_and_may_have_run_there() {
    let mut env = env().await;
    env.config.timeout_secs = 1;
    env.seed("R0", "A0", hours(20)).await;
    mount_campaign(&env, "Draft").await;
    let schedules = format!("/v3/emails/activities/{ACTIVITY}/schedules");
    Mock::given(method("POST"))
        .and(path(schedules.as_str()))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!([{"error_key": "server_error", "error_message": "boom"}])),
        )
        .up_to_n_times(1)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path(schedules.as_str()))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(3)))
        .mount(&env.server)
        .await;
    let client = env.client();
    let err = client.send_campaign(CAMPAIGN).await.unwrap_err();
    assert_eq!((err.code(), err.attempts()), ("server_error", 1));
    let e = ProviderError::from(err);
    assert!(e.may_have_run_there(), "{e}");
    let err = client.send_campaign(CAMPAIGN).await.unwrap_err();
    assert_eq!((err.code(), err.attempts()), ("timeout", 1));
    assert!(ProviderError::from(err).may_have_run_there());
    assert_eq!(
        env.requests_to(&schedules).await.len(),
        2,
        "one attempt each"
    );
}

#[tokio::test]
async fn a_campaign_reads_as_the_engines_status() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_campaign(&env, "Executing").await;
    let c = env.client().campaign(CAMPAIGN).await.unwrap();
    assert_eq!(c.status, CampaignStatus::Sending);
    assert_eq!(c.title, "mailbridge:spring-2026");
    assert_eq!(c.id, CAMPAIGN);
}

#[tokio::test]
async fn campaigns_are_found_by_name_across_pages_and_a_half_made_draft_gets_its_list() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let summary = |id: &str, name: &str, status: &str| json!({"campaign_id": id, "name": name, "current_status": status, "type": "NEWSLETTER"});
    Mock::given(method("GET"))
        .and(path("/v3/emails"))
        .and(query_param("limit", "500"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "campaigns": [
                summary("old", "mailbridge:spring-2026", "Removed"),
                summary("x", "mailbridge:spring-2026-b", "Draft"),
            ],
            "_links": {"next": {"href": "/v3/emails?cursor=p2"}}
        })))
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/emails"))
        .and(query_param("cursor", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "campaigns": [summary(CAMPAIGN, "mailbridge:spring-2026", "Draft")]
        })))
        .mount(&env.server)
        .await;
    mount_campaign(&env, "Draft").await;
    // The create stopped after its POST: the activity has no list yet.
    mount_activity(
        &env,
        json!({
            "campaign_activity_id": ACTIVITY, "current_status": "DRAFT",
            "from_name": "Riverside Rowing", "from_email": "club@example.org",
            "reply_to_email": "club@example.org", "subject": "Spring news"
        }),
    )
    .await;
    mount_put(
        &env,
        json!({
            "from_name": "Riverside Rowing", "from_email": "club@example.org",
            "reply_to_email": "club@example.org", "subject": "Spring news",
            "contact_list_ids": [LIST]
        }),
    )
    .await;
    let found = env
        .client()
        .campaigns_titled(LIST, "mailbridge:spring-2026")
        .await
        .unwrap();
    let ids: Vec<(&str, &CampaignStatus)> =
        found.iter().map(|c| (c.id.as_str(), &c.status)).collect();
    assert_eq!(
        ids,
        vec![
            (CAMPAIGN, &CampaignStatus::Draft),
            ("old", &CampaignStatus::Other("Removed".into()))
        ]
    );
}
