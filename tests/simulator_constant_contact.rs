//! Behaviour of the Constant Contact half of the simulator over real HTTP (port 0), one test per
//! rule it promises. With `MAILBRIDGE_SPEC_PROXY=1` every `/v3` request these tests send goes
//! through Prism driven by the vendor's spec (`spec-proxy constant-contact`), so the simulator's
//! paths and our requests are checked against it; a 422 from the proxy fails the test. The OAuth
//! server and `/_sim` are not in that spec and are always called directly, as are the requests
//! that test the simulator's own 401 (Prism answers a missing token itself).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mailbridge::simulator::{SimConfig, Simulator, SimulatorHandle};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};
use support::sim::spec_proxy::SpecProxy;

/// A simulator with one connected app and its access token.
struct Cc {
    handle: SimulatorHandle,
    client: Client,
    /// Where `/v3` requests go: the simulator's `/v3`, or the spec-proxy's root.
    api_url: String,
    proxy: Option<SpecProxy>,
    client_id: String,
    client_secret: String,
    refresh_token: String,
    access_token: String,
}

/// Settings with the per-second limit off, so tests may send requests back to back.
fn unthrottled() -> SimConfig {
    SimConfig {
        cc_requests_per_second: 0,
        ..SimConfig::default()
    }
}

impl Cc {
    async fn start() -> Self {
        Self::start_with(unthrottled()).await
    }

    async fn start_with(config: SimConfig) -> Self {
        let handle = Simulator::start_with("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let client = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut api_url = handle.constant_contact_url();
        let proxy =
            SpecProxy::start_if_enabled_for("constant-contact", &handle.constant_contact_url())
                .await;
        if let Some(proxy) = &proxy {
            api_url = proxy.base_url();
        }
        let mut cc = Self {
            handle,
            client,
            api_url,
            proxy,
            client_id: String::new(),
            client_secret: String::new(),
            refresh_token: String::new(),
            access_token: String::new(),
        };
        let app = cc.sim_ok(Method::POST, "/connect", None).await;
        cc.client_id = app["client_id"].as_str().unwrap().to_owned();
        cc.client_secret = app["client_secret"].as_str().unwrap().to_owned();
        cc.refresh_token = app["refresh_token"].as_str().unwrap().to_owned();
        let tokens = cc.refresh().await;
        assert_eq!(tokens.status(), 200);
        let tokens: Value = tokens.json().await.unwrap();
        cc.refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
        cc.access_token = tokens["access_token"].as_str().unwrap().to_owned();
        cc
    }

    /// Refreshes and keeps the new tokens (after the simulated clock passed the access token's
    /// lifetime).
    async fn renew(&mut self) {
        let tokens: Value = self.refresh().await.json().await.unwrap();
        self.refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
        self.access_token = tokens["access_token"].as_str().unwrap().to_owned();
    }

    /// `grant_type=refresh_token` with the current refresh token and Basic client auth.
    async fn refresh(&self) -> Response {
        self.refresh_with(&self.refresh_token).await
    }

    async fn refresh_with(&self, refresh_token: &str) -> Response {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .basic_auth(&self.client_id, Some(&self.client_secret))
        .send()
        .await
        .unwrap()
    }

    fn token_request(&self, form: &[(&str, &str)]) -> RequestBuilder {
        self.client
            .post(format!("{}/token", self.handle.oauth_url()))
            .form(form)
    }

    fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.access_token)
    }

    /// A `/v3` request straight to the simulator, never through the spec-proxy: for requests that
    /// break the spec on purpose (to test the simulator's own validation) and for the valid
    /// requests the spec itself refuses (see `remove_list_memberships_removes_only_the_named_lists`).
    fn direct(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(
                method,
                format!("{}{path}", self.handle.constant_contact_url()),
            )
            .bearer_auth(&self.access_token)
    }

    /// Sends a `/v3` request; a 422 from the spec-proxy fails the test with its violations.
    async fn send(&self, request: RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let violations = response
            .headers()
            .get("sl-violations")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = response.text().await.unwrap();
        assert!(
            !(self.proxy.is_some() && status == 422),
            "the spec-proxy refused the request: {violations:?} {text}"
        );
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.api(Method::GET, path)).await
    }

    async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.api(Method::POST, path).json(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.api(Method::PUT, path).json(body)).await
    }

    /// Follows a relative `_links.next.href` (`/v3/…`).
    async fn follow(&self, href: &str) -> Value {
        let path = href.strip_prefix("/v3").unwrap();
        self.get_ok(path).await
    }

    fn sim(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(
            method,
            format!("{}/_sim/constant-contact{path}", self.handle.base_url()),
        )
    }

    async fn sim_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.sim(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "/_sim/constant-contact{path}");
        response.json().await.unwrap()
    }

    async fn stats(&self) -> Value {
        let url = format!("{}/_sim/stats", self.handle.base_url());
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn advance_clock(&self, seconds: i64) -> Value {
        let url = format!("{}/_sim/clock/advance", self.handle.base_url());
        let response = self
            .client
            .post(url)
            .json(&json!({"seconds": seconds}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn create_list(&self, name: &str) -> String {
        let (status, list) = self.post("/contact_lists", &json!({"name": name})).await;
        assert_eq!(status, 201, "{list}");
        list["list_id"].as_str().unwrap().to_owned()
    }

    async fn sign_up(&self, email: &str, list: &str) -> Value {
        let body = json!({"email_address": email, "list_memberships": [list]});
        let (status, answer) = self.post("/contacts/sign_up_form", &body).await;
        assert!(status == 201 || status == 200, "{status} {answer}");
        answer
    }

    async fn list_contacts(&self, list: &str) -> Vec<Value> {
        self.sim_ok(Method::GET, &format!("/lists/{list}/contacts"), None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    async fn import(&self, body: &Value) -> (u16, Value) {
        self.post("/activities/contacts_json_import", body).await
    }

    /// Polls the activity until it is `completed`.
    async fn completed(&self, activity_id: &str) -> Value {
        self.wait_for_state(activity_id, "completed").await
    }

    async fn wait_for_state(&self, activity_id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let activity = self.get_ok(&format!("/activities/{activity_id}")).await;
            if activity["state"] == state {
                return activity;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "activity never reached {state}: {activity}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Imports `body` and waits for the activity to complete.
    async fn import_completed(&self, body: &Value) -> Value {
        let (status, activity) = self.import(body).await;
        assert_eq!(status, 201, "{activity}");
        self.completed(activity["activity_id"].as_str().unwrap())
            .await
    }
}

/// The single error of an array body.
fn array_error(body: &Value) -> (&str, &str) {
    let errors = body
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"));
    assert_eq!(errors.len(), 1, "{body}");
    (
        errors[0]["error_key"].as_str().unwrap(),
        errors[0]["error_message"].as_str().unwrap(),
    )
}

fn contact_by_email<'a>(contacts: &'a [Value], email: &str) -> &'a Value {
    contacts
        .iter()
        .find(|c| c["email"] == email)
        .unwrap_or_else(|| panic!("{email} not in {contacts:?}"))
}

// ---- OAuth ----

#[tokio::test]
async fn refresh_tokens_rotate_and_an_old_one_is_refused() {
    let cc = Cc::start().await;
    let old = cc.refresh_token.clone();
    let response = cc.refresh().await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 86_400);
    assert!(tokens["scope"].as_str().unwrap().contains("offline_access"));
    let rotated = tokens["refresh_token"].as_str().unwrap();
    assert_ne!(rotated, old);

    let reused = cc.refresh_with(&old).await;
    assert_eq!(reused.status(), 400);
    let error: Value = reused.json().await.unwrap();
    assert_eq!(
        error,
        json!({"error": "invalid_grant", "error_description": "unknown, invalid, or expired refresh token"})
    );
    assert_eq!(cc.refresh_with(rotated).await.status(), 200);

    let wrong_secret = cc
        .token_request(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .basic_auth(&cc.client_id, Some("not-the-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);
    let error: Value = wrong_secret.json().await.unwrap();
    assert_eq!(error["error"], "invalid_client");
    // The access token issued before the refreshes still works until it expires.
    assert_eq!(cc.get("/contact_lists").await.0, 200);
}

#[tokio::test]
async fn device_flow_pends_slows_down_and_issues_tokens_once_approved() {
    let cc = Cc::start().await;
    let authorize = |scope: &'static str| {
        cc.client
            .post(format!("{}/device/authorize", cc.handle.oauth_url()))
            .form(&[("client_id", cc.client_id.as_str()), ("scope", scope)])
            .send()
    };
    let poll = |device_code: String| {
        cc.token_request(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", &device_code),
            ("client_id", &cc.client_id),
        ])
        .send()
    };
    let device: Value = authorize("contact_data offline_access")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(device["expires_in"], 600);
    assert_eq!(device["interval"], 5);
    let code = device["device_code"].as_str().unwrap().to_owned();
    let user_code = device["user_code"].as_str().unwrap();
    assert!(
        device["verification_uri_complete"]
            .as_str()
            .unwrap()
            .ends_with(user_code)
    );

    let pending = poll(code.clone()).await.unwrap();
    assert_eq!(pending.status(), 400);
    assert_eq!(
        pending.json::<Value>().await.unwrap()["error"],
        "authorization_pending"
    );
    let hasty = poll(code.clone()).await.unwrap();
    assert_eq!(hasty.json::<Value>().await.unwrap()["error"], "slow_down");

    cc.sim_ok(
        Method::POST,
        "/device/approve",
        Some(json!({"user_code": user_code})),
    )
    .await;
    cc.advance_clock(5).await;
    let granted = poll(code.clone()).await.unwrap();
    assert_eq!(granted.status(), 200);
    let tokens: Value = granted.json().await.unwrap();
    assert_eq!(tokens["scope"], "contact_data offline_access");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    // A device grant refreshes with client_id alone (a public client).
    let refreshed = cc
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &cc.client_id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    cc.advance_clock(5).await;
    let reused = poll(code).await.unwrap();
    assert_eq!(
        reused.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // Without offline_access there is no refresh token.
    let device: Value = authorize("contact_data")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cc.sim_ok(
        Method::POST,
        "/device/approve",
        Some(json!({"user_code": device["user_code"]})),
    )
    .await;
    let tokens: Value = poll(device["device_code"].as_str().unwrap().to_owned())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tokens["access_token"].is_string());
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");

    // A code nobody approves expires after 600 simulated seconds.
    let device: Value = authorize("contact_data")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cc.advance_clock(601).await;
    let expired = poll(device["device_code"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    assert_eq!(
        expired.json::<Value>().await.unwrap()["error"],
        "expired_token"
    );
    let unknown = cc
        .sim(Method::POST, "/device/approve")
        .json(&json!({"user_code": "NOPE-NOPE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn access_tokens_expire_on_the_simulated_clock() {
    let cc = Cc::start_with(SimConfig {
        cc_access_token_ttl: Duration::from_secs(60),
        ..unthrottled()
    })
    .await;
    let direct = format!("{}/contact_lists", cc.handle.constant_contact_url());
    let unauthorized = json!({"error_key": "unauthorized", "error_message": "Unauthorized"});

    let ok = cc
        .client
        .get(&direct)
        .bearer_auth(&cc.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    cc.advance_clock(61).await;
    let expired = cc
        .client
        .get(&direct)
        .bearer_auth(&cc.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert_eq!(expired.json::<Value>().await.unwrap(), unauthorized);
    let missing = cc.client.get(&direct).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let unknown = cc
        .client
        .get(&direct)
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.json::<Value>().await.unwrap(), unauthorized);
}

// ---- limits ----

#[tokio::test]
async fn requests_over_the_per_second_limit_are_throttled_and_use_no_quota() {
    let cc = Cc::start_with(SimConfig {
        cc_requests_per_second: 2,
        cc_daily_quota: 3,
        ..SimConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    let mut throttled_body = None;
    for _ in 0..3 {
        let (status, body) = cc.get("/contact_lists").await;
        if status == 429 {
            throttled_body = Some(body);
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        throttled_body.unwrap(),
        json!({"error_key": "throttled", "error_message": "Too Many Requests"})
    );

    // Once the second is over, the third request of the day passes; every throttled retry on the
    // way costs no quota, so the next request that is not throttled meets the quota: 3 accepted.
    let third = poll_until(&cc, |status, _| status != 429).await;
    assert_eq!(third.0, 200);
    let fourth = poll_until(&cc, |_, body| body["error_key"] != "throttled").await;
    assert_eq!(
        fourth,
        (
            429,
            json!({"error_key": "quota_exceeded", "error_message": "Limit Exceeded"})
        )
    );
    let stats = cc.stats().await;
    assert!(
        stats["constant_contact"]["rate_limited"]["throttled"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        stats["constant_contact"]["rate_limited"]["quota_exceeded"],
        1
    );
}

/// Sends `GET /contact_lists` until `done` holds for the answer (10 s deadline).
async fn poll_until(cc: &Cc, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = cc.get("/contact_lists").await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daily_quota_resets_at_simulated_utc_midnight() {
    let cc = Cc::start_with(SimConfig {
        cc_daily_quota: 3,
        // The token outlives the clock's moves: up to a day to the next noon, then half a day
        // (with a day's token the test failed whenever it ran after 12:00 UTC).
        cc_access_token_ttl: Duration::from_secs(3 * 86_400),
        ..unthrottled()
    })
    .await;
    // Start at 12:00:00 UTC of the current simulated day, so no request crosses midnight early.
    let now = cc.advance_clock(0).await;
    let now = chrono::DateTime::parse_from_rfc3339(now["now"].as_str().unwrap()).unwrap();
    let since_midnight = now.timestamp().rem_euclid(86_400);
    cc.advance_clock((86_400 + 43_200 - since_midnight) % 86_400)
        .await;

    for _ in 0..3 {
        assert_eq!(cc.get("/contact_lists").await.0, 200);
    }
    let (status, body) = cc.get("/contact_lists").await;
    assert_eq!(
        (status, body),
        (
            429,
            json!({"error_key": "quota_exceeded", "error_message": "Limit Exceeded"})
        )
    );
    cc.advance_clock(43_200 - 60).await;
    assert_eq!(cc.get("/contact_lists").await.0, 429, "still the same day");
    cc.advance_clock(61).await;
    assert_eq!(cc.get("/contact_lists").await.0, 200, "a new UTC day");
}

// ---- lists, custom fields, contacts ----

#[tokio::test]
async fn lists_are_created_read_and_names_are_unique() {
    let cc = Cc::start().await;
    let id = cc.create_list("Club news").await;
    let list = cc.get_ok(&format!("/contact_lists/{id}")).await;
    assert_eq!(list["name"], "Club news");
    let (status, body) = cc
        .post("/contact_lists", &json!({"name": "Club news"}))
        .await;
    assert_eq!((status, array_error(&body).0), (409, "conflict"));
    let all = cc
        .get_ok("/contact_lists?include_membership_count=all")
        .await;
    assert_eq!(all["lists"][0]["membership_count"], 0);
    let unknown = cc
        .get("/contact_lists/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!((unknown.0, array_error(&unknown.1).0), (404, "not_found"));
}

#[tokio::test]
async fn custom_fields_get_a_name_from_the_label_and_are_limited_to_100() {
    let cc = Cc::start().await;
    let (status, field) = cc
        .post(
            "/contact_custom_fields",
            &json!({"label": "Member Number", "type": "string"}),
        )
        .await;
    assert_eq!(status, 201, "{field}");
    assert_eq!(field["name"], "Member_Number");
    let (status, _) = cc
        .post(
            "/contact_custom_fields",
            &json!({"label": "Member Number", "type": "string"}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = cc
        .post(
            "/contact_custom_fields",
            &json!({"label": "Odd", "type": "colour"}),
        )
        .await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));
    for i in 1..100 {
        let (status, body) = cc
            .post(
                "/contact_custom_fields",
                &json!({"label": format!("Field {i}"), "type": "string"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = cc
        .post(
            "/contact_custom_fields",
            &json!({"label": "One too many", "type": "string"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let page = cc.get_ok("/contact_custom_fields?limit=100").await;
    assert_eq!(page["custom_fields"].as_array().unwrap().len(), 100);
    let too_many = cc.direct(Method::GET, "/contact_custom_fields?limit=101");
    assert_eq!(cc.send(too_many).await.0, 400);
}

#[tokio::test]
async fn contacts_page_by_a_relative_cursor_that_keeps_the_filters() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    let other = cc.create_list("Board").await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let email = format!("m{i}@example.org");
        cc.sign_up(&email, &list).await;
        expected.push(email);
    }
    cc.sign_up("board@example.org", &other).await;

    let mut seen = Vec::new();
    let mut page = cc.get_ok(&format!("/contacts?lists={list}&limit=3")).await;
    let mut pages = 1;
    loop {
        for contact in page["contacts"].as_array().unwrap() {
            assert!(contact.get("list_memberships").is_none(), "not included");
            seen.push(
                contact["email_address"]["address"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let Some(href) = page["_links"]["next"]["href"].as_str() else {
            break;
        };
        assert!(href.starts_with("/v3/contacts?cursor="), "{href}");
        page = cc.follow(href).await;
        pages += 1;
    }
    assert_eq!((seen, pages), (expected, 3));

    cc.sim_ok(Method::POST, "/contacts/m3@example.org/unsubscribe", None)
        .await;
    let unsubscribed = cc
        .get_ok("/contacts?status=unsubscribed&include=list_memberships")
        .await;
    let contacts = unsubscribed["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["email_address"]["address"], "m3@example.org");
    assert_eq!(contacts[0]["email_address"]["opt_out_source"], "Contact");
    assert_eq!(contacts[0]["list_memberships"], json!([list]));
    let by_email = cc.get_ok("/contacts?email=M5@example.org").await;
    assert_eq!(by_email["contacts"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=501", "status=gone"] {
        let (status, body) = cc
            .send(cc.direct(Method::GET, &format!("/contacts?{bad}")))
            .await;
        assert_eq!(
            (status, array_error(&body).0),
            (400, "validation_error"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn optout_after_finds_unsubscribes_that_updated_after_may_miss() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    cc.sign_up("ann@example.org", &list).await;
    cc.sign_up("bob@example.org", &list).await;
    let now = cc.advance_clock(60).await;
    let since = now["now"].as_str().unwrap().replace("+00:00", "Z");
    cc.sim_ok(Method::POST, "/contacts/bob@example.org/unsubscribe", None)
        .await;
    let page = cc
        .get_ok(&format!(
            "/contacts?status=unsubscribed&optout_after={since}"
        ))
        .await;
    let contacts = page["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["email_address"]["address"], "bob@example.org");
    assert_eq!(
        contacts[0]["email_address"]["permission_to_send"],
        "unsubscribed"
    );
}

#[tokio::test]
async fn sign_up_form_creates_then_updates_appending_lists_and_fields() {
    let cc = Cc::start().await;
    let news = cc.create_list("Club news").await;
    let board = cc.create_list("Board").await;
    let (_, field) = cc
        .post(
            "/contact_custom_fields",
            &json!({"label": "Member Number", "type": "string"}),
        )
        .await;
    let field_id = field["custom_field_id"].as_str().unwrap();
    let (status, created) = cc
        .post(
            "/contacts/sign_up_form",
            &json!({"email_address": "ann@example.org", "first_name": "Ann", "list_memberships": [news]}),
        )
        .await;
    assert_eq!((status, created["action"].as_str()), (201, Some("created")));
    let (status, updated) = cc
        .post(
            "/contacts/sign_up_form",
            &json!({"email_address": "ANN@example.org", "list_memberships": [board],
                    "custom_fields": [{"custom_field_id": field_id, "value": "42"}]}),
        )
        .await;
    assert_eq!((status, updated["action"].as_str()), (200, Some("updated")));
    assert_eq!(created["contact_id"], updated["contact_id"]);
    let id = created["contact_id"].as_str().unwrap();
    let contact = cc
        .get_ok(&format!("/contacts/{id}?include=list_memberships"))
        .await;
    assert_eq!(contact["first_name"], "Ann", "kept when not sent");
    assert_eq!(contact["email_address"]["permission_to_send"], "explicit");
    assert_eq!(contact["list_memberships"], json!([news, board]));
    let members = cc.list_contacts(&board).await;
    assert_eq!(members[0]["custom_fields"], json!({"Member_Number": "42"}));
    let (status, body) = cc
        .post(
            "/contacts/sign_up_form",
            &json!({"email_address": "not-an-address", "list_memberships": [news]}),
        )
        .await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));
}

#[tokio::test]
async fn put_replaces_core_properties_and_keeps_memberships_unless_sent() {
    let cc = Cc::start().await;
    let news = cc.create_list("Club news").await;
    let created = cc.sign_up("ann@example.org", &news).await;
    let id = created["contact_id"].as_str().unwrap();
    let path = format!("/contacts/{id}");
    let (status, contact) = cc
        .put(
            &path,
            &json!({"email_address": {"address": "ann.new@example.org"}, "last_name": "Smith",
                    "update_source": "Account"}),
        )
        .await;
    assert_eq!(status, 200, "{contact}");
    assert_eq!(contact["email_address"]["address"], "ann.new@example.org");
    assert_eq!(contact["last_name"], "Smith");
    assert_eq!(contact["list_memberships"], json!([news]));
    let no_source = json!({"email_address": {"address": "x@example.org"}});
    let (status, body) = cc
        .send(cc.direct(Method::PUT, &path).json(&no_source))
        .await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));

    // The account may not undo an unsubscribe made by the contact.
    cc.sim_ok(
        Method::POST,
        "/contacts/ann.new@example.org/unsubscribe",
        None,
    )
    .await;
    let (status, _) = cc
        .put(
            &path,
            &json!({"email_address": {"address": "ann.new@example.org", "permission_to_send": "explicit"},
                    "update_source": "Account"}),
        )
        .await;
    assert_eq!(status, 400);
    let unknown = cc
        .put(
            "/contacts/00000000-0000-4000-8000-000000000000",
            &json!({"email_address": {"address": "z@example.org"}, "update_source": "Account"}),
        )
        .await;
    assert_eq!((unknown.0, array_error(&unknown.1).0), (404, "not_found"));
}

// ---- activities ----

#[tokio::test]
async fn an_import_of_more_than_40000_contacts_is_refused() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    let rows: Vec<Value> = (0..40_001)
        .map(|i| json!({"email": format!("m{i}@example.org")}))
        .collect();
    let (status, body) = cc
        .import(&json!({"import_data": rows, "list_ids": [list]}))
        .await;
    assert_eq!(status, 400);
    assert!(array_error(&body).1.contains("40000"), "{body}");
}

#[tokio::test]
async fn an_import_over_4_mb_keeps_only_the_contacts_wholly_in_the_first_4_mb() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    cc.post(
        "/contact_custom_fields",
        &json!({"label": "note", "type": "string"}),
    )
    .await;
    // The body is built by hand so the byte offset where each contact ends is known.
    let note = "n".repeat(120);
    let mut body = format!(r#"{{"list_ids":["{list}"],"import_data":["#);
    let mut ends = Vec::new();
    for i in 0..35_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"email":"member{i}@example.org","first_name":"M","cf:note":"{note}"}}"#
        ));
        ends.push(body.len() - 1);
    }
    body.push_str("]}");
    const FOUR_MB: usize = 4 * 1024 * 1024;
    assert!(body.len() > FOUR_MB);
    let expected = ends.iter().filter(|end| **end < FOUR_MB).count();
    assert!(expected < 35_000);

    let request = cc
        .api(Method::POST, "/activities/contacts_json_import")
        .header("content-type", "application/json")
        .body(body);
    let (status, activity) = cc.send(request).await;
    assert_eq!(status, 201, "{activity}");
    assert_eq!(activity["status"]["items_total_count"], expected);
    let done = cc
        .completed(activity["activity_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"]["items_total_count"], expected);
    assert_eq!(done["status"]["person_count"], expected);
    let members = cc.list_contacts(&list).await;
    assert_eq!(members.len(), expected);
    assert!(
        members
            .iter()
            .any(|m| m["email"] == format!("member{}@example.org", expected - 1))
    );
    assert!(
        !members
            .iter()
            .any(|m| m["email"] == format!("member{expected}@example.org"))
    );
}

#[tokio::test]
async fn an_activity_goes_from_initialized_through_processing_to_completed() {
    let cc = Cc::start_with(SimConfig {
        // Long enough to see `processing` even through the spec-proxy's latency.
        cc_activity_delay: Duration::from_secs(2),
        ..unthrottled()
    })
    .await;
    let list = cc.create_list("Club news").await;
    cc.post(
        "/contact_custom_fields",
        &json!({"label": "Member Number", "type": "string"}),
    )
    .await;
    let (status, created) = cc
        .import(&json!({"list_ids": [list], "import_data": [
            {"email": "ann@example.org", "first_name": "Ann", "cf:Member_Number": "7"},
            {"email": "not-an-address"},
            {"email": "bob@example.org", "cf:shoe_size": "44"},
        ]}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "initialized");
    assert_eq!(created["status"]["items_total_count"], 3);
    let id = created["activity_id"].as_str().unwrap();
    assert_eq!(
        created["_links"]["self"]["href"],
        format!("/v3/activities/{id}")
    );
    let processing = cc.wait_for_state(id, "processing").await;
    assert!(processing["started_at"].is_string());
    // The control route tells when a client first saw it completed (not yet).
    let timing = |all: Value| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|a| a["activity_id"] == id)
            .cloned()
            .unwrap()
    };
    let before = timing(cc.sim_ok(Method::GET, "/activities", None).await);
    assert_eq!(before["kind"], "contacts_json_import");
    assert_eq!(before["items_total_count"], 3);
    assert!(before["created_us"].is_i64(), "{before}");
    assert!(before["seen_completed_us"].is_null(), "{before}");
    let done = cc.completed(id).await;
    assert_eq!(done["percent_done"], 100);
    let after = timing(cc.sim_ok(Method::GET, "/activities", None).await);
    assert_eq!(after["state"], "completed");
    let (created, completed, seen) = (
        after["created_us"].as_i64().unwrap(),
        after["completed_us"].as_i64().unwrap(),
        after["seen_completed_us"].as_i64().unwrap(),
    );
    assert!(created < completed && completed <= seen, "{after}");
    // A later poll does not move it: it marks the end of the client's wait.
    cc.completed(id).await;
    let again = timing(cc.sim_ok(Method::GET, "/activities", None).await);
    assert_eq!(again["seen_completed_us"], after["seen_completed_us"]);
    let status = &done["status"];
    assert_eq!(
        (
            status["items_completed_count"].as_u64(),
            status["person_count"].as_u64(),
            status["error_count"].as_u64()
        ),
        (Some(3), Some(2), Some(2))
    );
    let errors: Vec<&str> = done["activity_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not-an-address")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("bob@example.org") && e.contains("cf:shoe_size")),
        "{errors:?}"
    );
    let members = cc.list_contacts(&list).await;
    let ann = contact_by_email(&members, "ann@example.org");
    assert_eq!(ann["permission_to_send"], "implicit");
    assert_eq!(ann["custom_fields"], json!({"Member_Number": "7"}));
    let unknown = cc
        .get("/activities/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(unknown.0, 404);
}

#[tokio::test]
async fn an_import_resubscribes_a_recent_unsubscriber_but_not_an_old_one() {
    let mut cc = Cc::start().await;
    let news = cc.create_list("Club news").await;
    let events = cc.create_list("Events").await;
    cc.sign_up("old@example.org", &news).await;
    cc.sign_up("recent@example.org", &news).await;
    cc.sim_ok(Method::POST, "/contacts/old@example.org/unsubscribe", None)
        .await;
    cc.advance_clock(31 * 86_400).await;
    cc.sim_ok(
        Method::POST,
        "/contacts/recent@example.org/unsubscribe",
        None,
    )
    .await;
    cc.advance_clock(86_400).await;
    cc.renew().await;

    let done = cc
        .import_completed(&json!({"list_ids": [events], "import_data": [
            {"email": "old@example.org"}, {"email": "recent@example.org"}, {"email": "new@example.org"},
        ]}))
        .await;
    assert_eq!(done["status"]["cannot_add_to_list_count"], 1);
    let on_events = cc.list_contacts(&events).await;
    let emails: Vec<&str> = on_events
        .iter()
        .map(|c| c["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["recent@example.org", "new@example.org"]);
    let recent = contact_by_email(&on_events, "recent@example.org");
    assert_eq!(
        recent["permission_to_send"], "implicit",
        "the vendor's trap"
    );
    let on_news = cc.list_contacts(&news).await;
    let old = contact_by_email(&on_news, "old@example.org");
    assert_eq!(old["permission_to_send"], "unsubscribed");
    assert_eq!(old["opt_out_source"], "Contact");
}

#[tokio::test]
async fn remove_list_memberships_removes_only_the_named_lists() {
    let cc = Cc::start().await;
    let news = cc.create_list("Club news").await;
    let board = cc.create_list("Board").await;
    let mut ids = Vec::new();
    for email in ["ann@example.org", "bob@example.org", "cat@example.org"] {
        let body = json!({"email_address": email, "list_memberships": [news, board]});
        let (_, created) = cc.post("/contacts/sign_up_form", &body).await;
        ids.push(created["contact_id"].as_str().unwrap().to_owned());
    }
    let gone = "00000000-0000-4000-8000-000000000000";
    // Sent past the spec-proxy: the spec (build 3.0.161) declares `maxItems: 0` on
    // `source.contact_ids` and `list_ids`, so Prism refuses every valid request of this operation
    // (the vendor's own limits are 500 and 50, as the descriptions say).
    let remove = json!({"source": {"contact_ids": [ids[0], ids[1], gone]}, "list_ids": [news]});
    let (status, activity) = cc
        .send(
            cc.direct(Method::POST, "/activities/remove_list_memberships")
                .json(&remove),
        )
        .await;
    assert_eq!(status, 201, "{activity}");
    let done = cc
        .completed(activity["activity_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"]["items_total_count"], 3);
    assert_eq!(done["status"]["error_count"], 1);
    assert!(done["activity_errors"][0].as_str().unwrap().contains(gone));
    let on_news: Vec<String> = cc
        .list_contacts(&news)
        .await
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(on_news, ["cat@example.org"]);
    assert_eq!(cc.list_contacts(&board).await.len(), 3);

    let too_many: Vec<String> = (0..501).map(|_| gone.to_owned()).collect();
    let remove = json!({"source": {"contact_ids": too_many}, "list_ids": [news]});
    let (status, body) = cc
        .send(
            cc.direct(Method::POST, "/activities/remove_list_memberships")
                .json(&remove),
        )
        .await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));
}

#[tokio::test]
async fn more_unfinished_activities_than_the_queue_allows_get_429() {
    let cc = Cc::start_with(SimConfig {
        cc_max_queued_activities: 2,
        cc_activity_delay: Duration::from_secs(30),
        ..unthrottled()
    })
    .await;
    let list = cc.create_list("Club news").await;
    let body = json!({"list_ids": [list], "import_data": [{"email": "ann@example.org"}]});
    assert_eq!(cc.import(&body).await.0, 201);
    assert_eq!(cc.import(&body).await.0, 201);
    let (status, refused) = cc.import(&body).await;
    assert_eq!(status, 429);
    assert_eq!(array_error(&refused).0, "too_many_queued_activities");
}

// ---- control, stats, faults, reset ----

#[tokio::test]
async fn control_routes_keep_their_contract() {
    let cc = Cc::start().await;
    let created = cc
        .sim_ok(
            Method::POST,
            "/lists",
            Some(json!({"name": "Made by control"})),
        )
        .await;
    let list = created["list_id"].as_str().unwrap();
    assert_eq!(
        cc.get_ok(&format!("/contact_lists/{list}")).await["name"],
        "Made by control"
    );
    cc.sign_up("ann@example.org", list).await;
    let unsubscribed = cc
        .sim_ok(Method::POST, "/contacts/Ann@example.org/unsubscribe", None)
        .await;
    assert_eq!(unsubscribed["permission_to_send"], "unsubscribed");
    assert_eq!(unsubscribed["opt_out_source"], "Contact");
    assert!(unsubscribed["opt_out_date"].is_string());
    let members = cc.list_contacts(list).await;
    assert_eq!(members.len(), 1);
    for key in [
        "email",
        "permission_to_send",
        "opt_out_source",
        "custom_fields",
        "list_memberships",
    ] {
        assert!(
            members[0].get(key).is_some(),
            "{key} missing: {}",
            members[0]
        );
    }
    for (path, want) in [
        ("/contacts/nobody@example.org/unsubscribe", 404),
        ("/lists/nope/contacts", 404),
    ] {
        let method = if path.starts_with("/lists") {
            Method::GET
        } else {
            Method::POST
        };
        let response = cc.sim(method, path).send().await.unwrap();
        assert_eq!(response.status(), want, "{path}");
    }
    let bounce = cc
        .sim(Method::POST, "/contacts/ann@example.org/bounce")
        .json(&json!({"code": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bounce.status(), 409, "no campaign was sent");
}

#[tokio::test]
async fn stats_count_requests_by_operation_id() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    cc.get_ok("/contacts").await;
    cc.get_ok("/contacts?limit=1").await;
    cc.get_ok(&format!("/contact_lists/{list}")).await;
    cc.refresh().await;
    let stats = cc.stats().await;
    let ops = &stats["constant_contact"]["operations"];
    assert_eq!(ops["getAllContacts"], 2);
    assert_eq!(ops["createList"], 1);
    assert_eq!(ops["getList"], 1);
    assert!(ops.get("getAllLists").is_none());
    assert_eq!(stats["constant_contact"]["token_calls"], 2);
    assert_eq!(stats["total"], 0, "Mailchimp's count is its own");
}

#[tokio::test]
async fn injected_faults_apply_to_v3_with_constant_contact_bodies() {
    let cc = Cc::start().await;
    let faults = format!("{}/_sim/faults", cc.handle.base_url());
    let set = |body: Value| cc.client.post(&faults).json(&body).send();
    assert_eq!(set(json!({"rate_500": 1.0})).await.unwrap().status(), 200);
    let (status, body) = cc.get("/contacts").await;
    assert_eq!((status, array_error(&body).0), (500, "server_error"));
    set(json!({"rate_429": 1.0})).await.unwrap();
    let (status, body) = cc.get("/contacts").await;
    assert_eq!(
        (status, body["error_key"].as_str()),
        (429, Some("throttled"))
    );
    set(json!({})).await.unwrap();
    assert_eq!(cc.get("/contacts").await.0, 200);
    assert_eq!(cc.stats().await["faults"]["500"], 1);
}

#[tokio::test]
async fn reset_clears_constant_contact_state() {
    let cc = Cc::start().await;
    cc.create_list("Club news").await;
    let reset = format!("{}/_sim/reset", cc.handle.base_url());
    assert_eq!(cc.client.post(reset).send().await.unwrap().status(), 200);
    let operations = &cc.stats().await["constant_contact"]["operations"];
    assert_eq!(operations, &json!({}));
    let direct = format!("{}/contact_lists", cc.handle.constant_contact_url());
    let after = cc
        .client
        .get(direct)
        .bearer_auth(&cc.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the app and its tokens are gone");
    assert_eq!(cc.refresh().await.status(), 401);
}

// ---- campaigns ----

fn campaign_body(name: &str) -> Value {
    json!({"name": name, "email_campaign_activities": [{
        "format_type": 5, "from_name": "The Club", "from_email": "club@example.org",
        "reply_to_email": "club@example.org", "subject": "News",
        "html_content": "<html><body>[[trackingImage]]<p>Hello</p></body></html>",
    }]})
}

/// Creates a campaign whose primary activity goes to `list`; returns (campaign id, activity id).
async fn campaign_for(cc: &Cc, name: &str, list: &str) -> (String, String) {
    let (status, created) = cc.post("/emails", &campaign_body(name)).await;
    assert_eq!(status, 200, "{created}");
    let activity = created["campaign_activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == "primary_email")
        .unwrap()["campaign_activity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut update = campaign_body(name)["email_campaign_activities"][0].clone();
    update["contact_list_ids"] = json!([list]);
    let (status, updated) = cc
        .put(&format!("/emails/activities/{activity}"), &update)
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["contact_list_ids"], json!([list]));
    (
        created["campaign_id"].as_str().unwrap().to_owned(),
        activity,
    )
}

/// `POST …/schedules` `{"scheduled_date": "0"}`, past the spec-proxy: the spec types
/// `scheduled_date` as `date-time`, so Prism refuses the `"0"` its own description prescribes for
/// sending now.
async fn send_now(cc: &Cc, activity: &str) -> (u16, Value) {
    let path = format!("/emails/activities/{activity}/schedules");
    cc.send(
        cc.direct(Method::POST, &path)
            .json(&json!({"scheduled_date": "0"})),
    )
    .await
}

async fn sends(cc: &Cc) -> Vec<String> {
    cc.sim_ok(Method::GET, "/sends", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["email"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_campaign_is_sent_to_its_lists_except_unsubscribers_and_resent_only_to_newcomers() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    for email in ["ann@example.org", "bob@example.org", "cat@example.org"] {
        cc.sign_up(email, &list).await;
    }
    cc.sim_ok(Method::POST, "/contacts/bob@example.org/unsubscribe", None)
        .await;
    let (campaign, activity) = campaign_for(&cc, "June news", &list).await;
    let (status, body) = cc.post("/emails", &campaign_body("June news")).await;
    assert_eq!((status, array_error(&body).0), (409, "conflict"));
    let mut stranger = campaign_body("From a stranger");
    stranger["email_campaign_activities"][0]["from_email"] = json!("someone@example.org");
    assert_eq!(cc.post("/emails", &stranger).await.0, 400);

    let (status, answer) = send_now(&cc, &activity).await;
    assert_eq!((status, answer), (201, json!([])));
    assert_eq!(sends(&cc).await, ["ann@example.org", "cat@example.org"]);
    let read = cc.get_ok(&format!("/emails/{campaign}")).await;
    assert_eq!(read["current_status"], "Done");
    let read = cc.get_ok(&format!("/emails/activities/{activity}")).await;
    assert_eq!(read["current_status"], "DONE");
    let schedules = cc
        .get_ok(&format!("/emails/activities/{activity}/schedules"))
        .await;
    assert_eq!(schedules, json!([]));

    cc.sign_up("dan@example.org", &list).await;
    assert_eq!(send_now(&cc, &activity).await.0, 201);
    assert_eq!(
        sends(&cc).await,
        ["ann@example.org", "cat@example.org", "dan@example.org"]
    );
    let listed = cc.get_ok("/emails?after_date=2000-01-01T00:00:00Z").await;
    assert_eq!(listed["campaigns"][0]["campaign_id"], campaign);
    let future = cc.get_ok("/emails?after_date=2999-01-01T00:00:00Z").await;
    assert_eq!(future["campaigns"], json!([]));
}

#[tokio::test]
async fn a_campaign_needs_its_recipients_before_it_can_be_sent() {
    let cc = Cc::start().await;
    let (status, created) = cc.post("/emails", &campaign_body("No lists")).await;
    assert_eq!(status, 200);
    let activity = created["campaign_activities"][0]["campaign_activity_id"]
        .as_str()
        .unwrap();
    let (status, body) = send_now(&cc, activity).await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));
    let mut missing_subject = campaign_body("x")["email_campaign_activities"][0].clone();
    missing_subject.as_object_mut().unwrap().remove("subject");
    let path = format!("/emails/activities/{activity}");
    let put = cc.direct(Method::PUT, &path).json(&missing_subject);
    assert_eq!(cc.send(put).await.0, 400);
}

#[tokio::test]
async fn test_sends_take_5_addresses_a_call_and_50_a_day() {
    let mut cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    let (_, activity) = campaign_for(&cc, "Tests", &list).await;
    let path = format!("/emails/activities/{activity}/tests");
    let five: Vec<String> = (0..5).map(|i| format!("t{i}@example.org")).collect();
    for _ in 0..10 {
        let (status, _) = cc.post(&path, &json!({"email_addresses": five})).await;
        assert_eq!(status, 204);
    }
    let (status, body) = cc
        .post(&path, &json!({"email_addresses": ["one@example.org"]}))
        .await;
    assert_eq!((status, array_error(&body).0), (400, "validation_error"));
    let six: Vec<String> = (0..6).map(|i| format!("t{i}@example.org")).collect();
    let too_many = cc
        .direct(Method::POST, &path)
        .json(&json!({"email_addresses": six}));
    assert_eq!(cc.send(too_many).await.0, 400);
    assert_eq!(
        cc.sim_ok(Method::GET, "/test-sends", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        50
    );
    cc.advance_clock(86_400).await;
    cc.renew().await;
    let (status, _) = cc
        .post(&path, &json!({"email_addresses": ["one@example.org"]}))
        .await;
    assert_eq!(status, 204, "a new day");
}

#[tokio::test]
async fn account_emails_list_the_confirmed_senders() {
    let cc = Cc::start().await;
    cc.sim_ok(
        Method::POST,
        "/senders",
        Some(json!({"email": "pending@example.org", "confirmed": false})),
    )
    .await;
    cc.sim_ok(
        Method::POST,
        "/senders",
        Some(json!({"email": "editor@example.org"})),
    )
    .await;
    let confirmed = cc.get_ok("/account/emails?confirm_status=CONFIRMED").await;
    let addresses: Vec<&str> = confirmed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["email_address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["club@example.org", "editor@example.org"]);
    assert_eq!(confirmed[0]["confirm_status"], "CONFIRMED");
    let all = cc.get_ok("/account/emails").await;
    assert_eq!(all.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bounces_are_reported_newest_first_by_cursor() {
    let cc = Cc::start().await;
    let list = cc.create_list("Club news").await;
    let emails = ["ann@example.org", "bob@example.org", "cat@example.org"];
    for email in emails {
        cc.sign_up(email, &list).await;
    }
    let (_, activity) = campaign_for(&cc, "Bouncy", &list).await;
    assert_eq!(send_now(&cc, &activity).await.0, 201);
    for (email, code) in emails.iter().zip(["B", "S", "B"]) {
        let recorded = cc
            .sim_ok(
                Method::POST,
                &format!("/contacts/{email}/bounce"),
                Some(json!({"code": code})),
            )
            .await;
        assert_eq!(recorded["campaign_activity_id"], activity.as_str());
    }
    let path = format!("/reports/email_reports/{activity}/tracking/bounces");
    let first = cc.get_ok(&format!("{path}?limit=2")).await;
    let page_emails = |page: &Value| -> Vec<String> {
        page["tracking_activities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["email_address"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(page_emails(&first), ["cat@example.org", "bob@example.org"]);
    assert_eq!(
        first["tracking_activities"][0]["tracking_activity_type"],
        "em_bounces"
    );
    let href = first["_links"]["next"]["href"].as_str().unwrap();
    assert!(href.starts_with(&format!("/v3{path}?cursor=")), "{href}");
    let second = cc.follow(href).await;
    assert_eq!(page_emails(&second), ["ann@example.org"]);
    assert!(second["_links"].get("next").is_none());
    let suspended = cc.get_ok(&format!("{path}?bounce_code=S")).await;
    assert_eq!(page_emails(&suspended), ["bob@example.org"]);
}
