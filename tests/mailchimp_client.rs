//! The Mailchimp client against wiremock: the exact requests it sends (method, path, query, body,
//! auth), and how it reacts to success, 5xx, 429 with and without `Retry-After`, timeouts,
//! malformed bodies, partial batch errors, a spent retry budget and the in-flight limit.
//! One mock server per test. Backoff waits go through a recording sleeper, so retries take no
//! real time (paused tokio time cannot be used here: it would fire HTTP timeouts early).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use mailbridge::config::MailchimpConfig;
use mailbridge::domain::{Email, SubscriptionStatus};
use mailbridge::mapping::{FieldType, FieldValue};
use mailbridge::providers::mailchimp::{
    ApiCalls, Archive, BatchMember, BatchResult, ErrorKind, MailchimpClient, MailchimpError,
    RemoteMember, SubscriberHash, WriteStatus, subscriber_hash,
};
use mailbridge::providers::retry::{RetryBudget, RetryPolicy, Sleeper, Stop};
use secrecy::SecretString;
use serde_json::{Value, json};
use support::app;
use wiremock::matchers::{basic_auth, body_json, header, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "0123456789abcdef0123456789abcdef-us6";
const LIST: &str = "abc123";
const BASE_MS: u64 = 10;

struct Harness {
    server: MockServer,
    client: MailchimpClient,
    waits: Arc<Mutex<Vec<Duration>>>,
}

fn config(base_url: String, max_in_flight: u32, timeout_secs: u64) -> MailchimpConfig {
    MailchimpConfig {
        api_key: SecretString::from(KEY),
        base_url,
        max_in_flight,
        timeout_secs,
    }
}

fn recording_policy(max_attempts: u32, budget: u32) -> (RetryPolicy, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let policy = RetryPolicy {
        max_attempts,
        base: Duration::from_millis(BASE_MS),
        cap: Duration::from_secs(30),
        budget: RetryBudget::new(budget),
        sleeper: Sleeper::from_fn(move |d| {
            w.lock().unwrap().push(d);
            async {}
        }),
    };
    (policy, waits)
}

async fn harness_with(max_in_flight: u32, max_attempts: u32, budget: u32) -> Harness {
    let server = MockServer::start().await;
    let (policy, waits) = recording_policy(max_attempts, budget);
    let client = app::mailchimp_client(&config(format!("{}/3.0", server.uri()), max_in_flight, 1))
        .with_retry_policy(policy);
    Harness {
        server,
        client,
        waits,
    }
}

async fn harness() -> Harness {
    harness_with(10, 4, 50).await
}

impl Harness {
    async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap()
    }

    /// `upsert_member` of `address` to its own hash, without merge fields.
    async fn upsert(
        &self,
        address: &str,
        status_if_new: WriteStatus,
        status: Option<WriteStatus>,
    ) -> Result<RemoteMember, MailchimpError> {
        self.client
            .upsert_member(
                LIST,
                &hash(address),
                &email(address),
                status_if_new,
                status,
                &BTreeMap::new(),
            )
            .await
    }

    /// `batch_subscribe` of [`batch_members`], updating existing members, without tag sync.
    async fn batch(&self) -> Result<BatchResult, MailchimpError> {
        self.client
            .batch_subscribe(LIST, &batch_members(), true, false)
            .await
    }

    fn waits(&self) -> Vec<Duration> {
        self.waits.lock().unwrap().clone()
    }

    /// `request` must arrive exactly once (checked when the server drops) and gets `response`.
    async fn expect_once(&self, request: MockBuilder, response: impl Respond + 'static) {
        request
            .respond_with(response)
            .expect(1)
            .mount(&self.server)
            .await;
    }

    /// Every `request`, however many arrive (none included), gets `response`.
    async fn answer(&self, request: MockBuilder, response: impl Respond + 'static) {
        request.respond_with(response).mount(&self.server).await;
    }

    /// The first `n` of `request` get `response`; later ones go to the mocks mounted after.
    async fn answer_first(&self, n: u64, request: MockBuilder, response: impl Respond + 'static) {
        request
            .respond_with(response)
            .up_to_n_times(n)
            .mount(&self.server)
            .await;
    }
}

/// Requests with method `verb` to exactly `at`; more matchers chain on with `.and`.
fn route(verb: &str, at: impl Into<String>) -> MockBuilder {
    Mock::given(method(verb)).and(path(at))
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn hash(s: &str) -> SubscriberHash {
    subscriber_hash(&email(s))
}

/// The `Authorization` header for `anystring:KEY`, spelled out.
fn expected_auth() -> String {
    // base64("anystring:0123456789abcdef0123456789abcdef-us6")
    "Basic YW55c3RyaW5nOjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmLXVzNg==".to_owned()
}

fn problem(status: u16, title: &str, detail: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/",
               "title": title, "status": status, "detail": detail, "instance": "req-42"})
        .to_string(),
        "application/problem+json",
    )
}

fn member_json(address: &str, status: &str) -> Value {
    json!({"id": hash(address).as_str(), "email_address": address, "status": status,
           "last_changed": "2024-03-01T10:00:00+00:00", "unsubscribe_reason": "",
           "merge_fields": {"FNAME": "Ann", "MBRKEY": "7"}, "tags_count": 0})
}

fn ping_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"health_status": "Everything's Chimpy!"}))
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the API key leaked: {text}");
    assert!(
        !text.contains("0123456789abcdef"),
        "the API key leaked: {text}"
    );
    assert!(
        !text.contains("YW55c3RyaW5n"),
        "the auth header leaked: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// ping

#[tokio::test]
async fn ping_sends_basic_auth_and_the_user_agent() {
    let h = harness().await;
    h.expect_once(
        route("GET", "/3.0/ping")
            .and(basic_auth("anystring", KEY))
            .and(header("authorization", expected_auth().as_str())),
        ping_ok(),
    )
    .await;

    assert_eq!(h.client.ping().await.unwrap(), "Everything's Chimpy!");
    let req = &h.requests().await[0];
    let ua = req.headers.get("user-agent").unwrap().to_str().unwrap();
    assert_eq!(ua, format!("mailbridge/{}", env!("CARGO_PKG_VERSION")));
    assert!(req.url.query().is_none());
    assert_eq!(h.client.calls(), ApiCalls { read: 1, write: 0 });
}

#[tokio::test]
async fn ping_401_is_unauthorized_naming_the_base_url_not_the_key() {
    let h = harness().await;
    h.expect_once(
        route("GET", "/3.0/ping"),
        problem(
            401,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        ),
    )
    .await;

    let err = h.client.ping().await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unauthorized { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}/3.0", h.server.uri())), "{msg}");
    assert_no_key(&msg);
    assert_eq!(err.attempts(), 1);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn ping_429_with_retry_after_waits_that_long_in_real_time() {
    let server = MockServer::start().await;
    route("GET", "/3.0/ping")
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    route("GET", "/3.0/ping")
        .respond_with(ping_ok())
        .mount(&server)
        .await;
    // The production sleeper, so the wait is real.
    let client = app::mailchimp_client(&config(format!("{}/3.0", server.uri()), 10, 5));
    let start = Instant::now();
    client.ping().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(client.calls().read, 2);
}

// ---------------------------------------------------------------------------------------------
// merge fields

#[tokio::test]
async fn list_merge_fields_pages_with_count_1000() {
    let h = harness().await;
    let field = |id: u64, tag: &str, kind: &str| {
        json!({"merge_id": id, "tag": tag, "name": tag.to_lowercase(), "type": kind,
               "list_id": LIST, "required": false, "public": false})
    };
    let page = |offset: &str| {
        route("GET", format!("/3.0/lists/{LIST}/merge-fields"))
            .and(query_param("count", "1000"))
            .and(query_param("offset", offset))
    };
    h.expect_once(
        page("0"),
        ResponseTemplate::new(200).set_body_json(json!({
            "merge_fields": [field(1, "FNAME", "text"), field(2, "ADDRESS", "address")],
            "list_id": LIST, "total_items": 3})),
    )
    .await;
    h.expect_once(
        page("2"),
        ResponseTemplate::new(200).set_body_json(json!({
            "merge_fields": [field(5, "MBRKEY", "number")], "list_id": LIST, "total_items": 3})),
    )
    .await;

    let fields = h.client.list_merge_fields(LIST).await.unwrap();
    let tags: Vec<_> = fields
        .iter()
        .map(|f| (f.merge_id, f.tag.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(
        tags,
        vec![
            (1, "FNAME", "text"),
            (2, "ADDRESS", "address"),
            (5, "MBRKEY", "number")
        ]
    );
    assert_eq!(h.client.calls(), ApiCalls { read: 2, write: 0 });
}

#[tokio::test]
async fn create_merge_field_sends_tag_name_and_type() {
    let h = harness().await;
    h.expect_once(
        route("POST", format!("/3.0/lists/{LIST}/merge-fields"))
            .and(basic_auth("anystring", KEY))
            .and(header("content-type", "application/json"))
            .and(body_json(
                json!({"tag": "MBRKEY", "name": "Member key", "type": "number"}),
            )),
        ResponseTemplate::new(200).set_body_json(json!({
            "merge_id": 9, "tag": "MBRKEY", "name": "Member key", "type": "number",
            "list_id": LIST})),
    )
    .await;

    let f = h
        .client
        .create_merge_field(LIST, "MBRKEY", "Member key", FieldType::Number)
        .await
        .unwrap();
    assert_eq!((f.merge_id, f.tag.as_str()), (9, "MBRKEY"));
    assert_eq!(h.client.calls(), ApiCalls { read: 0, write: 1 });
}

#[tokio::test]
async fn a_timed_out_merge_field_create_is_not_retried() {
    let h = harness().await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}/merge-fields")),
        ping_ok().set_delay(Duration::from_secs(3)),
    )
    .await;

    let err = h
        .client
        .create_merge_field(LIST, "MBRKEY", "Member key", FieldType::Number)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout), "{err}");
    assert_eq!(err.attempts(), 1);
    assert_eq!(h.requests().await.len(), 1);
    assert!(err.to_string().contains("may still have run"));
}

#[tokio::test]
async fn a_500_on_a_merge_field_create_is_not_retried_but_a_429_is() {
    let h = harness().await;
    let create = || route("POST", format!("/3.0/lists/{LIST}/merge-fields"));
    h.answer_first(1, create(), ResponseTemplate::new(429))
        .await;
    h.answer(create(), ResponseTemplate::new(500)).await;

    let err = h
        .client
        .create_merge_field(LIST, "X", "X", FieldType::Text)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Server { status: 500, .. }),
        "{err}"
    );
    assert_eq!(err.attempts(), 2);
    assert_eq!(h.requests().await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// batch subscribe

fn batch_members() -> Vec<BatchMember> {
    vec![
        BatchMember {
            email: email("Ann@Example.com"),
            status: WriteStatus::Subscribed,
            merge_fields: BTreeMap::from([
                ("FNAME".to_owned(), FieldValue::Text("Ann".into())),
                ("MBRKEY".to_owned(), FieldValue::Number(7.0)),
            ]),
            tags: BTreeSet::from(["member".to_owned(), "board".to_owned()]),
        },
        BatchMember {
            email: email("bob@example.com"),
            status: WriteStatus::Pending,
            merge_fields: BTreeMap::new(),
            tags: BTreeSet::new(),
        },
    ]
}

fn batch_body() -> Value {
    json!({
        "members": [
            {"email_address": "Ann@Example.com", "status": "subscribed",
             "merge_fields": {"FNAME": "Ann", "MBRKEY": 7.0},
             "tags": ["board", "member"]},
            {"email_address": "bob@example.com", "status": "pending"}
        ],
        "update_existing": true,
        "sync_tags": false
    })
}

fn batch_response() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "new_members": [member_json("ann@example.com", "subscribed")],
        "updated_members": [],
        "errors": [{"email_address": "bob@example.com",
                    "error": "bob@example.com is in a compliance state",
                    "error_code": "ERROR_GENERIC",
                    "field": null, "field_message": null}],
        "total_created": 1, "total_updated": 0, "error_count": 1
    }))
}

#[tokio::test]
async fn batch_subscribe_sends_the_exact_body_and_surfaces_partial_errors() {
    let h = harness().await;
    h.expect_once(
        route("POST", format!("/3.0/lists/{LIST}"))
            .and(basic_auth("anystring", KEY))
            .and(body_json(batch_body())),
        batch_response(),
    )
    .await;

    let result = h.batch().await.unwrap();
    assert_eq!(result.created.len(), 1);
    assert_eq!(result.created[0].id, hash("ann@example.com"));
    assert_eq!(result.created[0].status, SubscriptionStatus::Subscribed);
    assert_eq!(result.errors.len(), 1);
    let e = &result.errors[0];
    assert_eq!(e.email_address, "bob@example.com");
    assert_eq!(e.error_code.as_deref(), Some("ERROR_GENERIC"));
    assert_eq!(e.subscriber_hash(), hash("bob@example.com"));
    assert_eq!(
        (
            result.total_created,
            result.total_updated,
            result.error_count
        ),
        (1, 0, 1)
    );
    assert!(h.requests().await[0].url.query().is_none());
    assert_eq!(h.client.calls(), ApiCalls { read: 0, write: 1 });
}

#[tokio::test]
async fn batch_subscribe_with_sync_tags_always_sends_the_tag_list() {
    let h = harness().await;
    let mut body = batch_body();
    body["sync_tags"] = json!(true);
    body["members"][1]["tags"] = json!([]);
    h.expect_once(
        route("POST", format!("/3.0/lists/{LIST}")).and(body_json(body)),
        batch_response(),
    )
    .await;

    h.client
        .batch_subscribe(LIST, &batch_members(), true, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn batch_subscribe_reports_merge_field_errors() {
    let h = harness().await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}")),
        ResponseTemplate::new(200).set_body_json(json!({
            "new_members": [], "updated_members": [member_json("bob@example.com", "pending")],
            "errors": [{"email_address": "Ann@Example.com", "error": "Invalid merge field",
                        "error_code": "ERROR_GENERIC", "field": "MBRKEY",
                        "field_message": "Please enter a number"}],
            "total_created": 0, "total_updated": 1, "error_count": 1})),
    )
    .await;

    let r = h.batch().await.unwrap();
    assert_eq!(r.updated[0].status, SubscriptionStatus::Pending);
    assert_eq!(r.errors[0].field.as_deref(), Some("MBRKEY"));
    assert_eq!(
        r.errors[0].field_message.as_deref(),
        Some("Please enter a number")
    );
    assert_eq!(r.errors[0].subscriber_hash(), hash("ann@example.com"));
}

#[tokio::test]
async fn more_than_500_members_are_refused_before_any_request() {
    let h = harness().await;
    let members: Vec<BatchMember> = (0..501)
        .map(|i| BatchMember {
            email: email(&format!("m{i}@example.com")),
            status: WriteStatus::Subscribed,
            merge_fields: BTreeMap::new(),
            tags: BTreeSet::new(),
        })
        .collect();
    let err = h
        .client
        .batch_subscribe(LIST, &members, true, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TooManyMembers { count: 501 }),
        "{err}"
    );
    assert_eq!(err.attempts(), 0);
    assert!(h.requests().await.is_empty());
    assert_eq!(h.client.calls(), ApiCalls::default());

    // An empty batch costs no call either.
    let r = h
        .client
        .batch_subscribe(LIST, &[], true, false)
        .await
        .unwrap();
    assert_eq!(r.total_created, 0);
    assert!(h.requests().await.is_empty());
}

/// A batch write that fails `times` times with `fail`, then succeeds.
struct BatchRetry {
    /// What the row checks (the name of the test it was).
    name: &'static str,
    fail: fn() -> ResponseTemplate,
    times: u64,
    /// The back-off waits the retries must have taken.
    waits: fn(&[Duration]) -> bool,
}

/// A 5xx or 429 is retried after the right wait, and every attempt is counted as a call.
#[tokio::test]
async fn transient_batch_failures_are_retried_after_the_right_wait() {
    let rows = [
        BatchRetry {
            name: "a_500_is_retried_and_every_attempt_is_counted",
            fail: || {
                ResponseTemplate::new(500)
                    .set_body_raw("<html>Internal Server Error</html>", "text/html")
            },
            times: 1,
            waits: |w| w.len() == 1 && w[0] <= Duration::from_millis(BASE_MS),
        },
        BatchRetry {
            name: "a_429_with_retry_after_waits_at_least_that_long",
            fail: || ResponseTemplate::new(429).insert_header("Retry-After", "1"),
            times: 1,
            waits: |w| w == [Duration::from_secs(1)],
        },
        BatchRetry {
            name: "a_429_without_retry_after_backs_off_with_jitter",
            fail: || ResponseTemplate::new(429),
            times: 2,
            waits: |w| {
                w.len() == 2
                    && w[0] <= Duration::from_millis(BASE_MS)
                    && w[1] <= Duration::from_millis(2 * BASE_MS)
            },
        },
    ];
    for row in rows {
        let name = row.name;
        let h = harness().await;
        let batch = || route("POST", format!("/3.0/lists/{LIST}"));
        h.answer_first(row.times, batch(), (row.fail)()).await;
        h.answer(batch().and(body_json(batch_body())), batch_response())
            .await;

        let r = h.batch().await.unwrap();
        let attempts = row.times + 1;
        assert_eq!(r.total_created, 1, "{name}");
        assert_eq!(h.requests().await.len() as u64, attempts, "{name}");
        assert_eq!(
            h.client.calls(),
            ApiCalls {
                read: 0,
                write: attempts
            },
            "{name}"
        );
        let waits = h.waits();
        assert!((row.waits)(&waits), "{name}: waited {waits:?}");
    }
}

#[tokio::test]
async fn the_retry_budget_stops_a_run_against_a_server_that_keeps_failing() {
    // 10 attempts allowed per request, but only 4 retries for the whole run.
    let h = harness_with(10, 10, 4).await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}")),
        ResponseTemplate::new(500),
    )
    .await;

    let err = h.batch().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Server { status: 500, .. }));
    assert_eq!(err.attempts(), 5);
    assert_eq!(err.gave_up(), Some(Stop::BudgetExhausted));
    assert_eq!(h.requests().await.len(), 5);
    assert!(err.to_string().contains("after 5 attempts"), "{err}");

    // The next request of the same run gets no retry at all.
    let err = h.batch().await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(h.requests().await.len(), 6);
    assert_eq!(h.client.calls().write, 6);
}

#[tokio::test]
async fn max_attempts_bounds_a_single_request() {
    let h = harness_with(10, 3, 50).await;
    h.answer(route("GET", "/3.0/ping"), ResponseTemplate::new(503))
        .await;
    let err = h.client.ping().await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.gave_up(), Some(Stop::MaxAttempts));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn malformed_json_on_200_is_reported_and_not_retried() {
    let h = harness().await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}")),
        ResponseTemplate::new(200).set_body_raw("{\"new_members\": [", "application/json"),
    )
    .await;

    let err = h.batch().await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MalformedResponse { .. }),
        "{err}"
    );
    assert_eq!(err.operation(), "batch_subscribe");
    assert_eq!(err.list_id(), Some(LIST));
    assert_eq!(h.requests().await.len(), 1);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unknown_member_status_on_200_is_a_malformed_response() {
    let h = harness().await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}")),
        ResponseTemplate::new(200).set_body_json(json!({
            "new_members": [member_json("ann@example.com", "zombie")],
            "updated_members": [], "errors": [],
            "total_created": 1, "total_updated": 0, "error_count": 0})),
    )
    .await;
    let err = h.batch().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::MalformedResponse { .. }));
    assert_eq!(h.requests().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// single members

/// A member upsert that the API takes: the body it must send to the hash it must send it to.
struct UpsertPut {
    /// What the row checks (the name of the test it was).
    name: &'static str,
    /// The address whose hash the member has at Mailchimp (the old one for an address change).
    at: &'static str,
    address: &'static str,
    status_if_new: WriteStatus,
    status: Option<WriteStatus>,
    fields: BTreeMap<String, FieldValue>,
    body: Value,
    /// The status Mailchimp answers with.
    answered: (&'static str, SubscriptionStatus),
}

/// `upsert_member` PUTs the exact body to the member's hash and reads the member it gets back.
#[tokio::test]
async fn upsert_member_puts_the_body_to_the_members_hash() {
    let rows = [
        UpsertPut {
            name: "upsert_member_puts_to_the_hash_with_status_if_new",
            at: "Ann@Example.com",
            address: "Ann@Example.com",
            status_if_new: WriteStatus::Pending,
            status: None,
            fields: BTreeMap::from([("FNAME".to_owned(), FieldValue::Text("Ann".into()))]),
            body: json!({
                "email_address": "Ann@Example.com",
                "status_if_new": "pending",
                "merge_fields": {"FNAME": "Ann"}
            }),
            answered: ("pending", SubscriptionStatus::Pending),
        },
        UpsertPut {
            name: "an_address_change_puts_the_new_address_to_the_old_hash",
            at: "ann@old.example",
            address: "ann@new.example",
            status_if_new: WriteStatus::Subscribed,
            status: Some(WriteStatus::Subscribed),
            fields: BTreeMap::new(),
            body: json!({
                "email_address": "ann@new.example",
                "status_if_new": "subscribed",
                "status": "subscribed"
            }),
            answered: ("subscribed", SubscriptionStatus::Subscribed),
        },
    ];
    for row in rows {
        let name = row.name;
        let h = harness().await;
        let address = email(row.address);
        let answered = row.address.to_lowercase();
        h.expect_once(
            route("PUT", format!("/3.0/lists/{LIST}/members/{}", hash(row.at)))
                .and(basic_auth("anystring", KEY))
                .and(body_json(row.body)),
            ResponseTemplate::new(200).set_body_json(member_json(&answered, row.answered.0)),
        )
        .await;

        let m = h
            .client
            .upsert_member(
                LIST,
                &hash(row.at),
                &address,
                row.status_if_new,
                row.status,
                &row.fields,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.status, row.answered.1, "{name}");
        assert_eq!(m.id, subscriber_hash(&address).as_str(), "{name}");
        assert_eq!(
            m.last_changed,
            Some(Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0).unwrap()),
            "{name}"
        );
        assert_eq!(m.unsubscribe_reason, None, "{name}");
        assert_eq!(m.email().unwrap(), address, "{name}");
        assert_eq!(h.client.calls(), ApiCalls { read: 0, write: 1 }, "{name}");
        h.server.verify().await;
    }
}

/// A member upsert the API refuses with a 400 problem, and the error it must become.
struct UpsertRefusal {
    /// What the row checks (the name of the test it was).
    name: &'static str,
    title: &'static str,
    detail: &'static str,
    status_if_new: WriteStatus,
    status: Option<WriteStatus>,
    kind: fn(&ErrorKind) -> bool,
    /// The error's code, where the row pins it.
    code: Option<&'static str>,
}

/// Refusals are their own error kinds and never retried: one request, no back-off, and the
/// problem's instance id in the message.
#[tokio::test]
async fn upsert_refusals_are_their_own_kinds_and_not_retried() {
    let rows = [
        UpsertRefusal {
            name: "a_compliance_400_is_not_retried",
            title: "Member In Compliance State",
            detail: "ann@example.com is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed.",
            status_if_new: WriteStatus::Subscribed,
            status: Some(WriteStatus::Subscribed),
            kind: |k| matches!(k, ErrorKind::Compliance { .. }),
            code: Some("compliance_state"),
        },
        UpsertRefusal {
            name: "a_forgotten_address_is_its_own_kind",
            title: "Forgotten Email Not Subscribed",
            detail: "ann@example.com was permanently deleted and cannot be re-imported.",
            status_if_new: WriteStatus::Pending,
            status: None,
            kind: |k| matches!(k, ErrorKind::Forgotten { .. }),
            code: None,
        },
    ];
    for row in rows {
        let name = row.name;
        let h = harness().await;
        h.answer(
            Mock::given(method("PUT")),
            problem(400, row.title, row.detail),
        )
        .await;
        let err = h
            .upsert("ann@example.com", row.status_if_new, row.status)
            .await
            .unwrap_err();
        assert!((row.kind)(err.kind()), "{name}: {err}");
        if let Some(code) = row.code {
            assert_eq!(err.code(), code, "{name}");
        }
        assert_eq!(err.attempts(), 1, "{name}");
        assert_eq!(h.requests().await.len(), 1, "{name}");
        assert!(err.to_string().contains("req-42"), "{name}: {err}");
        assert!(h.waits().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn a_timed_out_upsert_is_retried_because_it_is_idempotent() {
    let h = harness().await;
    // The client timeout is 1 s; the first answer comes after 3 s.
    let ann =
        ResponseTemplate::new(200).set_body_json(member_json("ann@example.com", "subscribed"));
    h.answer_first(
        1,
        Mock::given(method("PUT")),
        ann.clone().set_delay(Duration::from_secs(3)),
    )
    .await;
    h.answer(Mock::given(method("PUT")), ann).await;

    let started = Instant::now();
    let m = h
        .upsert("ann@example.com", WriteStatus::Subscribed, None)
        .await
        .unwrap();
    assert_eq!(m.status, SubscriptionStatus::Subscribed);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(h.requests().await.len(), 2);
    assert_eq!(h.client.calls().write, 2);
}

#[tokio::test]
async fn archive_member_deletes_and_reads_404_as_already_gone() {
    let h = harness().await;
    let ann = hash("ann@example.com");
    let bob = hash("bob@example.com");
    h.expect_once(
        route("DELETE", format!("/3.0/lists/{LIST}/members/{ann}"))
            .and(basic_auth("anystring", KEY)),
        ResponseTemplate::new(204),
    )
    .await;
    h.expect_once(
        route("DELETE", format!("/3.0/lists/{LIST}/members/{bob}")),
        problem(
            404,
            "Resource Not Found",
            "The requested resource could not be found.",
        ),
    )
    .await;

    assert_eq!(
        h.client.archive_member(LIST, &ann).await.unwrap(),
        Archive::Archived
    );
    assert_eq!(
        h.client.archive_member(LIST, &bob).await.unwrap(),
        Archive::AlreadyGone
    );
    assert!(h.requests().await.iter().all(|r| r.body.is_empty()));
    assert_eq!(h.client.calls(), ApiCalls { read: 0, write: 2 });
}

#[tokio::test]
async fn archiving_a_pending_member_is_a_distinct_error() {
    let h = harness().await;
    h.expect_once(
        Mock::given(method("DELETE")),
        problem(
            405,
            "Method Not Allowed",
            "This list member cannot be removed. Can not archive a contact that is bounced, pending or archived",
        ),
    )
    .await;
    let err = h
        .client
        .archive_member(LIST, &hash("ann@example.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::CannotArchive { .. }),
        "{err}"
    );
    assert_eq!(err.code(), "cannot_archive");
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn update_member_tags_posts_active_and_inactive_with_is_syncing() {
    let h = harness().await;
    let ann = hash("ann@example.com");
    h.expect_once(
        route("POST", format!("/3.0/lists/{LIST}/members/{ann}/tags"))
            .and(basic_auth("anystring", KEY))
            .and(body_json(json!({
                "tags": [{"name": "board", "status": "active"}, {"name": "lapsed", "status": "inactive"}],
                "is_syncing": true
            }))),
        ResponseTemplate::new(204),
    )
    .await;

    h.client
        .update_member_tags(LIST, &ann, &[("board", true), ("lapsed", false)])
        .await
        .unwrap();
    // Nothing to change costs nothing.
    h.client
        .update_member_tags::<&str>(LIST, &ann, &[])
        .await
        .unwrap();
    assert_eq!(h.client.calls(), ApiCalls { read: 0, write: 1 });
}

// ---------------------------------------------------------------------------------------------
// reading changes

#[tokio::test]
async fn list_members_changed_sends_exactly_the_documented_query() {
    let h = harness().await;
    h.expect_once(
        route("GET", format!("/3.0/lists/{LIST}/members")).and(basic_auth("anystring", KEY)),
        ResponseTemplate::new(200).set_body_json(json!({
            "members": [
                {"id": hash("ann@example.com").as_str(), "email_address": "ann@example.com",
                 "status": "unsubscribed", "last_changed": "2024-03-01T10:00:00+00:00",
                 "unsubscribe_reason": "N/A (Unsubscribed by admin)",
                 "merge_fields": {"MBRKEY": 7, "ADDRESS": {"addr1": "1 Main St"}}}
            ],
            "total_items": 1001
        })),
    )
    .await;

    let since = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap();
    let page = h
        .client
        .list_members_changed(
            LIST,
            SubscriptionStatus::Unsubscribed,
            Some(since),
            1000,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(page.total_items, 1001);
    let m = &page.members[0];
    assert_eq!(m.status, SubscriptionStatus::Unsubscribed);
    assert_eq!(
        m.unsubscribe_reason.as_deref(),
        Some("N/A (Unsubscribed by admin)")
    );
    assert_eq!(m.merge_fields["MBRKEY"], json!(7));
    assert_eq!(m.merge_fields["ADDRESS"]["addr1"], json!("1 Main St"));

    let req = &h.requests().await[0];
    let query: Vec<(String, String)> = req.url.query_pairs().into_owned().collect();
    let expected: Vec<(String, String)> = [
        ("status", "unsubscribed"),
        ("since_last_changed", "2024-02-29T23:59:58+00:00"),
        ("sort_field", "last_changed"),
        ("sort_dir", "ASC"),
        (
            "fields",
            "members.email_address,members.id,members.status,members.last_changed,\
             members.unsubscribe_reason,members.merge_fields,total_items",
        ),
        ("offset", "1000"),
        ("count", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(query, expected);
    // The `+` of the offset must travel encoded, or the server reads a space.
    assert!(req.url.query().unwrap().contains("%2B00%3A00"));
    assert_eq!(h.client.calls(), ApiCalls { read: 1, write: 0 });
}

#[tokio::test]
async fn list_members_changed_without_a_cursor_reads_everything_with_the_status() {
    let h = harness().await;
    h.expect_once(
        route("GET", format!("/3.0/lists/{LIST}/members")).and(query_param("status", "cleaned")),
        ResponseTemplate::new(200).set_body_json(json!({"members": [], "total_items": 0})),
    )
    .await;
    let page = h
        .client
        .list_members_changed(LIST, SubscriptionStatus::Cleaned, None, 0, 1000)
        .await
        .unwrap();
    assert!(page.members.is_empty());
    let req = &h.requests().await[0];
    assert!(
        !req.url
            .query_pairs()
            .any(|(k, _)| k == "since_last_changed")
    );
}

#[tokio::test]
async fn a_page_larger_than_1000_is_refused_before_sending() {
    let h = harness().await;
    let err = h
        .client
        .list_members_changed(LIST, SubscriptionStatus::Cleaned, None, 0, 1001)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidArgument { .. }),
        "{err}"
    );
    assert!(h.requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// transport

#[tokio::test]
async fn connection_refused_is_retried_and_not_counted_as_a_call() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (policy, waits) = recording_policy(3, 50);
    let client = app::mailchimp_client(&config(format!("http://127.0.0.1:{port}/3.0"), 10, 1))
        .with_retry_policy(policy);
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Connect { .. }), "{err}");
    assert_eq!(err.attempts(), 3);
    assert_eq!(waits.lock().unwrap().len(), 2);
    assert_eq!(client.calls(), ApiCalls::default());
    assert_no_key(&err.to_string());
}

/// Counts how many requests the server holds at once: each is held for `delay`, so the requests
/// in flight when one arrives are those that arrived less than `delay` before it.
#[derive(Clone)]
struct ConcurrencyProbe {
    delay: Duration,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    max: Arc<AtomicUsize>,
}

impl Respond for ConcurrencyProbe {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap();
        arrivals.retain(|t| now.duration_since(*t) < self.delay);
        arrivals.push(now);
        self.max.fetch_max(arrivals.len(), Ordering::SeqCst);
        ping_ok().set_delay(self.delay)
    }
}

#[tokio::test]
async fn never_more_than_max_in_flight_requests_on_the_wire() {
    let h = harness_with(2, 4, 50).await;
    let probe = ConcurrencyProbe {
        delay: Duration::from_millis(300),
        arrivals: Arc::new(Mutex::new(Vec::new())),
        max: Arc::new(AtomicUsize::new(0)),
    };
    h.answer(route("GET", "/3.0/ping"), probe.clone()).await;

    let calls = (0..8).map(|_| h.client.ping());
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(h.requests().await.len(), 8);
    // At most two at once, and the limit was actually reached.
    assert_eq!(probe.max.load(Ordering::SeqCst), 2);
    assert_eq!(h.client.calls().read, 8);
}

#[tokio::test]
async fn neither_debug_nor_any_error_shows_the_key() {
    let h = harness_with(10, 2, 50).await;
    assert_no_key(&format!("{:?}", h.client));
    h.answer(route("GET", "/3.0/ping"), ResponseTemplate::new(401))
        .await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}")),
        ResponseTemplate::new(502).set_body_raw("<html>502</html>", "text/html"),
    )
    .await;
    h.answer(
        route("GET", format!("/3.0/lists/{LIST}/merge-fields")),
        ResponseTemplate::new(200).set_body_raw("not json", "text/plain"),
    )
    .await;
    h.answer(
        route("POST", format!("/3.0/lists/{LIST}/merge-fields")),
        ping_ok().set_delay(Duration::from_secs(3)),
    )
    .await;
    h.answer(
        Mock::given(method("PUT")),
        problem(400, "Invalid Resource", "Your merge fields were invalid."),
    )
    .await;

    let mut errors: Vec<MailchimpError> = vec![
        h.client.ping().await.unwrap_err(),
        h.batch().await.unwrap_err(),
        h.client.list_merge_fields(LIST).await.unwrap_err(),
        h.client
            .create_merge_field(LIST, "A", "A", FieldType::Text)
            .await
            .unwrap_err(),
        h.upsert("ann@example.com", WriteStatus::Pending, None)
            .await
            .unwrap_err(),
    ];
    errors.push(
        h.client
            .list_members_changed(LIST, SubscriptionStatus::Cleaned, None, 0, 0)
            .await
            .unwrap_err(),
    );
    for e in &errors {
        assert_no_key(&e.to_string());
        assert_no_key(&format!("{e:?}"));
    }
    assert_no_key(&format!("{:?}", h.client));
}

mod batches {
    use std::io::Write;

    use mailbridge::providers::MemberWrite;
    use mailbridge::providers::mailchimp::BatchPolling;

    use super::*;

    fn gz_tar(name: &str, json: &Value) -> Vec<u8> {
        let bytes = serde_json::to_vec(json).unwrap();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .unwrap();
        let mut gz = tar.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    fn fast(client: MailchimpClient) -> MailchimpClient {
        client.with_batch_polling(BatchPolling {
            first_wait: Duration::from_millis(1),
            max_wait: Duration::from_millis(5),
            give_up_after: Duration::from_millis(200),
        })
    }

    /// A batch whose id is the prefix of its first operation id (`member` or `tags`).
    struct Submitted;

    impl Respond for Submitted {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let first = body["operations"][0]["operation_id"].as_str().unwrap();
            let id = first.split('-').next().unwrap();
            ResponseTemplate::new(200).set_body_json(json!({"id": id, "status": "pending"}))
        }
    }

    fn writes() -> Vec<MemberWrite> {
        vec![
            MemberWrite {
                at: "old@example.org".into(),
                email: email("New@Example.org"),
                status_if_new: WriteStatus::Subscribed,
                status: None,
                merge_fields: BTreeMap::from([(
                    "FNAME".to_owned(),
                    FieldValue::Text("Ann".into()),
                )]),
                tags: vec![("family".into(), true), ("full".into(), false)],
            },
            MemberWrite {
                at: "pending@example.org".into(),
                email: email("pending@example.org"),
                status_if_new: WriteStatus::Pending,
                status: None,
                merge_fields: BTreeMap::new(),
                tags: vec![],
            },
        ]
    }

    #[tokio::test]
    async fn member_writes_are_sent_as_a_batch_of_puts_then_one_of_tags_and_read_back_by_operation_id()
     {
        let h = harness().await;
        let base = h.server.uri();
        Mock::given(method("POST"))
            .and(path("/3.0/batches"))
            .respond_with(Submitted)
            .mount(&h.server)
            .await;
        for id in ["member", "tags"] {
            Mock::given(method("GET"))
                .and(path(format!("/3.0/batches/{id}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "id": id, "status": "finished",
                    "response_body_url": format!("{base}/results/{id}.tar.gz"),
                })))
                .mount(&h.server)
                .await;
        }
        let new_hash = hash("new@example.org");
        let member = json!({"id": new_hash.as_str(), "email_address": "New@Example.org", "status": "subscribed"});
        let problem = json!({"title": "Invalid Resource", "status": 400, "detail": "Please provide a valid email address.", "errors": [{"field": "email_address", "message": "looks fake"}]});
        Mock::given(method("GET"))
            .and(path("/results/member.tar.gz"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(gz_tar("r/0.json", &json!([
                {"status_code": 200, "operation_id": "member-0", "response": member.to_string()},
                {"status_code": 400, "operation_id": "member-1", "response": problem.to_string()},
            ]))))
            .mount(&h.server)
            .await;
        Mock::given(method("GET"))
            .and(path("/results/tags.tar.gz"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(gz_tar(
                "r/0.json",
                &json!([
                    {"status_code": 204, "operation_id": "tags-0", "response": ""},
                ]),
            )))
            .mount(&h.server)
            .await;

        let client = fast(h.client.clone());
        let results = client.write_members(LIST, &writes()).await.unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(
            results[0].as_ref().unwrap(),
            &SubscriptionStatus::Subscribed
        );
        let refused = results[1].as_ref().unwrap_err();
        assert_eq!(refused.code(), "invalid_resource");
        assert!(
            refused.to_string().contains("email_address: looks fake"),
            "{refused}"
        );

        let requests = h.requests().await;
        let posts: Vec<Value> = requests
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(posts.len(), 2);
        let puts = posts[0]["operations"].as_array().unwrap();
        assert_eq!(puts.len(), 2);
        assert_eq!(puts[0]["method"], "PUT");
        assert_eq!(
            puts[0]["path"],
            format!("/lists/{LIST}/members/{}", hash("old@example.org"))
        );
        assert_eq!(puts[0]["operation_id"], "member-0");
        // `body` is a JSON string, as the spec's Operations schema says.
        let body: Value = serde_json::from_str(puts[0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"email_address": "New@Example.org", "status_if_new": "subscribed", "merge_fields": {"FNAME": "Ann"}})
        );
        assert_eq!(
            puts[1]["path"],
            format!("/lists/{LIST}/members/{}", hash("pending@example.org"))
        );
        let body: Value = serde_json::from_str(puts[1]["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"email_address": "pending@example.org", "status_if_new": "pending"})
        );
        // Tags only for the member written, at its new address.
        let tags = posts[1]["operations"].as_array().unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0]["method"], "POST");
        assert_eq!(
            tags[0]["path"],
            format!("/lists/{LIST}/members/{new_hash}/tags")
        );
        assert_eq!(tags[0]["operation_id"], "tags-0");
        let body: Value = serde_json::from_str(tags[0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"tags": [{"name": "family", "status": "active"}, {"name": "full", "status": "inactive"}], "is_syncing": true})
        );
        // The archive is fetched without the API key; it is not counted as an API call.
        for r in requests
            .iter()
            .filter(|r| r.url.path().starts_with("/results/"))
        {
            assert!(r.headers.get("authorization").is_none());
        }
        assert_eq!(client.calls(), ApiCalls { read: 2, write: 2 });
    }

    #[tokio::test]
    async fn a_batch_that_never_finishes_is_an_error_naming_it() {
        let h = harness().await;
        Mock::given(method("POST"))
            .and(path("/3.0/batches"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": "slowbatch1", "status": "pending"})),
            )
            .mount(&h.server)
            .await;
        Mock::given(method("GET"))
            .and(path("/3.0/batches/slowbatch1"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": "slowbatch1", "status": "started"})),
            )
            .mount(&h.server)
            .await;
        let e = fast(h.client.clone())
            .write_members(LIST, &writes())
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BatchUnfinished { batch_id, .. } if batch_id == "slowbatch1"),
            "{e}"
        );
        assert!(
            e.to_string().contains("batch slowbatch1 was not finished"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_garbled_results_archive_is_refused_naming_the_batch_without_a_panic() {
        let h = harness().await;
        let base = h.server.uri();
        Mock::given(method("POST"))
            .and(path("/3.0/batches"))
            .respond_with(Submitted)
            .mount(&h.server)
            .await;
        Mock::given(method("GET"))
            .and(path("/3.0/batches/member"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "member", "status": "finished", "response_body_url": format!("{base}/results/member.tar.gz"),
            })))
            .mount(&h.server)
            .await;
        Mock::given(method("GET"))
            .and(path("/results/member.tar.gz"))
            .respond_with(
                ResponseTemplate::new(200).set_body_bytes(b"<html>not an archive</html>".to_vec()),
            )
            .mount(&h.server)
            .await;
        let e = fast(h.client.clone())
            .write_members(LIST, &writes())
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BatchResults { batch_id, .. } if batch_id == "member"),
            "{e}"
        );
    }
}
