//! Tests of the client against wiremock (the exact requests, retries, the token rules, the
//! budget, imports) and of the pure parts (error bodies, the import split, status mapping).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::auth::{device_flow_with, expires_at};
use super::client::{error_from_response, member_status};
use super::engine::{ImportRequest, import_item, split_import};
use super::*;
use crate::clock::ManualClock;
use crate::config::{ConstantContactConfig, DbUrl};
use crate::domain::{Email, MemberKey, SubscriptionStatus, WriteStatus};
use crate::mapping::{Contact, FieldType, FieldValue};
use crate::providers::retry::{RetryBudget, RetryPolicy, Sleeper};
use crate::providers::{Archive, MemberRefusal, ProviderError, Reaction, UpsertOutcome};
use crate::store::oauth::OAuthToken;
use crate::store::{OpenMode, Store};

const SECRET: &str = "s3cret-app-secret";
const LIST: &str = "5d72b1de-7d43-11ee-9f4c-fa163e56c9b0";

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        budget: RetryBudget::new(100),
        sleeper: Sleeper::from_fn(|_| async {}),
    }
}

fn fast_polling() -> ActivityPolling {
    ActivityPolling {
        first: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        give_up_after: Duration::from_secs(5),
    }
}

/// A mock server, a migrated SQLite state DB on a manual clock, and a config pointing at both.
struct Env {
    server: MockServer,
    store: Store,
    clock: Arc<ManualClock>,
    config: ConstantContactConfig,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

async fn env_with(secret: bool) -> Env {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://state.db", dir.path()).unwrap();
    let clock = ManualClock::new(start());
    let store = Store::open(&url, OpenMode::ReadWrite)
        .await
        .unwrap()
        .with_clock(clock.clone());
    store.migrate().await.unwrap();
    let config = ConstantContactConfig {
        // Each test its own app: the process-wide pace is per client id.
        client_id: format!("app-{:08x}", rand::random::<u32>()),
        client_secret: secret.then(|| SecretString::from(SECRET)),
        base_url: format!("{}/v3", server.uri()),
        auth_url: format!("{}/oauth2/default/v1", server.uri()),
        daily_budget: 10_000,
        requests_per_second: 100,
        poll_every: Duration::from_secs(900),
        timeout_secs: 5,
    };
    Env {
        server,
        store,
        clock,
        config,
        db: dir.path().join("state.db"),
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(true).await
}

impl Env {
    fn client(&self) -> ConstantContactClient {
        ConstantContactClient::new(&self.config, self.store.clone())
            .unwrap()
            .with_retry_policy(fast_retry())
            .with_activity_polling(fast_polling())
    }

    /// Stores the pair `refresh`/`access`, the access token expiring in `expires_in`.
    async fn seed(&self, refresh: &str, access: &str, expires_in: chrono::Duration) {
        let token = OAuthToken {
            refresh_token: SecretString::from(refresh),
            access_token: Some(SecretString::from(access)),
            expires_at: Some(self.store.now() + expires_in),
            rotated_at: self.store.now() - chrono::Duration::hours(1),
        };
        self.store
            .save_oauth_token("constant_contact", &self.config.client_id, &token)
            .await
            .unwrap();
    }

    async fn stored(&self) -> OAuthToken {
        self.store
            .oauth_token("constant_contact", &self.config.client_id)
            .await
            .unwrap()
            .expect("a stored token")
    }

    /// The stored refresh token, read on a connection of its own (from inside a responder).
    fn stored_refresh_now(&self) -> String {
        stored_refresh(&self.db, &self.config.client_id)
    }

    async fn requests_to(&self, p: &str) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.url.path() == p)
            .collect()
    }
}

fn stored_refresh(db: &std::path::Path, account: &str) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT refresh_token FROM oauth_tokens WHERE provider = 'constant_contact' AND account = ?1",
        [account],
        |r| r.get(0),
    )
    .unwrap()
}

fn hours(n: i64) -> chrono::Duration {
    chrono::Duration::hours(n)
}

fn token_answer(refresh: &str, access: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access, "refresh_token": refresh, "token_type": "Bearer",
        "expires_in": 86400, "scope": SCOPES
    }))
}

const TOKEN_PATH: &str = "/oauth2/default/v1/token";

fn fields_page() -> Value {
    json!({"custom_fields": [
        {"custom_field_id": "f-1", "label": "FNAME", "name": "FNAME", "type": "string"},
        {"custom_field_id": "f-2", "label": "Member Since", "name": "Member_Since", "type": "date"}
    ]})
}

async fn mount_fields(env: &Env, access: &str) {
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .and(header("authorization", format!("Bearer {access}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(fields_page()))
        .mount(&env.server)
        .await;
}

fn form(request: &Request) -> BTreeMap<String, String> {
    serde_urlencoded::from_bytes(&request.body).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

// ---- requests, success and failures ----

#[tokio::test]
async fn a_request_carries_the_bearer_token_and_is_counted_and_budgeted() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    let client = env.client();
    let fields = client.custom_fields().await.unwrap();
    assert_eq!(
        fields[1],
        RemoteCustomField {
            id: "f-2".into(),
            label: "Member Since".into(),
            name: "Member_Since".into(),
            kind: "date".into(),
        }
    );
    let sent = env.requests_to("/v3/contact_custom_fields").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].url.query(), Some("limit=100"));
    assert_eq!(sent[0].headers["accept"], "application/json");
    assert_eq!(
        client.calls(),
        crate::providers::ApiCalls { read: 1, write: 0 }
    );
    let used = env
        .store
        .api_budget_used("constant_contact", start().date_naive())
        .await
        .unwrap();
    assert_eq!(used, 1);
    assert!(env.requests_to(TOKEN_PATH).await.is_empty(), "no refresh");
}

#[tokio::test]
async fn a_custom_field_is_created_with_its_label_and_constant_contacts_type() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    Mock::given(method("POST"))
        .and(path("/v3/contact_custom_fields"))
        .and(body_json(json!({"label": "PHONE", "type": "string"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"custom_field_id": "f-3", "label": "PHONE", "name": "PHONE", "type": "string"}),
        ))
        .expect(1)
        .mount(&env.server)
        .await;
    let client = env.client();
    let created = client
        .create_custom_field("PHONE", FieldType::Phone)
        .await
        .unwrap();
    assert_eq!(
        (created.id.as_str(), created.kind.as_str()),
        ("f-3", "string")
    );
    // One that exists with the same type is returned as it is; with another type it is refused,
    // naming the label, without a POST.
    let same = client
        .create_custom_field("FNAME", FieldType::Text)
        .await
        .unwrap();
    assert_eq!(same.id, "f-1");
    let clash = client
        .create_custom_field("Member Since", FieldType::Number)
        .await
        .unwrap_err();
    assert_eq!(clash.code(), "custom_field");
    assert_eq!(
        clash.to_string(),
        "Constant Contact createCustomFields failed: custom field `Member Since`: exists with type `date`; the mapping needs `number`"
    );
    assert_eq!(client.calls().write, 1);
    // The account's fields were read once for the three.
    let reads = env.requests_to("/v3/contact_custom_fields").await;
    assert_eq!(
        reads.iter().filter(|r| r.method.as_str() == "GET").count(),
        1
    );
}

#[tokio::test]
async fn a_field_created_by_someone_else_since_it_was_read_is_adopted_on_409() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    // The first read has no TOWN; by the time of the POST someone has created it.
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fields_page()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&env.server)
        .await;
    let mut later = fields_page();
    later["custom_fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"custom_field_id": "f-9", "label": "TOWN", "name": "TOWN", "type": "string"}));
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(200).set_body_json(later))
        .with_priority(2)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(409).set_body_json(
            json!([{"error_key": "conflict", "error_message": "A custom field with this label already exists."}]),
        ))
        .expect(1)
        .mount(&env.server)
        .await;
    let client = env.client();
    let town = client
        .create_custom_field("TOWN", FieldType::Text)
        .await
        .unwrap();
    assert_eq!(town.id, "f-9");
}

#[tokio::test]
async fn an_account_with_100_fields_refuses_another_without_sending() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let fields: Vec<Value> = (0..100)
        .map(|i| json!({"custom_field_id": format!("f-{i}"), "label": format!("F{i}"), "type": "string"}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"custom_fields": fields})))
        .mount(&env.server)
        .await;
    let err = env
        .client()
        .create_custom_field("TOWN", FieldType::Text)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("custom field `TOWN`: the account has 100 custom fields"),
        "{err}"
    );
    assert!(
        env.requests_to("/v3/contact_custom_fields")
            .await
            .iter()
            .all(|r| r.method.as_str() == "GET")
    );
}

#[test]
fn field_types_map_to_constant_contacts() {
    assert_eq!(field_type(FieldType::Text), "string");
    assert_eq!(field_type(FieldType::Phone), "string");
    assert_eq!(field_type(FieldType::Url), "string");
    assert_eq!(field_type(FieldType::Zip), "string");
    assert_eq!(field_type(FieldType::Number), "number");
    assert_eq!(field_type(FieldType::Date), "date");
    assert_eq!(field_type(FieldType::Birthday), "date");
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_until_success() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html>down</html>"))
        .up_to_n_times(1)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(
            ResponseTemplate::new(429).set_body_json(
                json!({"error_key": "throttled", "error_message": "Too Many Requests"}),
            ),
        )
        .up_to_n_times(1)
        .mount(&env.server)
        .await;
    mount_fields(&env, "A0").await;
    let client = env.client();
    assert_eq!(client.custom_fields().await.unwrap().len(), 2);
    assert_eq!(client.calls().read, 3);
}

#[tokio::test]
async fn a_spent_quota_is_out_of_budget_until_midnight_and_not_retried() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(429).set_body_json(
            json!({"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}),
        ))
        .expect(1)
        .mount(&env.server)
        .await;
    let err = env.client().custom_fields().await.unwrap_err();
    let midnight = Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap();
    assert!(matches!(
        err.kind(),
        ErrorKind::QuotaExceeded { resets_at, local: false } if *resets_at == midnight
    ));
    let e = ProviderError::from(err);
    assert_eq!(
        e.reaction(),
        Reaction::OutOfBudget {
            resets_at: midnight
        }
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_malformed_success_body_is_an_error_and_not_retried() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"custom_fields\": 7}"))
        .expect(1)
        .mount(&env.server)
        .await;
    let err = env.client().custom_fields().await.unwrap_err();
    assert_eq!(err.code(), "malformed_response");
    assert_eq!(err.operation(), "getAllCustomFields");
}

#[tokio::test]
async fn a_timeout_is_retried_for_reads_and_then_reported() {
    let mut env = env().await;
    env.config.timeout_secs = 1;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&env.server)
        .await;
    let client = env.client().with_retry_policy(RetryPolicy {
        max_attempts: 2,
        ..fast_retry()
    });
    let err = client.custom_fields().await.unwrap_err();
    assert_eq!(err.code(), "timeout");
    assert_eq!(err.attempts(), 2);
    let e = ProviderError::from(err);
    assert!(e.is_retryable() && e.may_have_run_there());
}

#[test]
fn the_three_error_shapes_decode() {
    let array = br#"[{"error_key":"contacts.api.not_found","error_message":"contact_id is in an invalid format."},{"error_key":"x","error_message":"y"}]"#;
    assert_eq!(
        ApiProblem::decode(array),
        ApiProblem {
            key: Some("contacts.api.not_found".into()),
            detail: "contacts.api.not_found: contact_id is in an invalid format.; x: y".into(),
        }
    );
    let object = br#"{"error_key":"unauthorized","error_message":"Unauthorized"}"#;
    assert_eq!(
        ApiProblem::decode(object).key.as_deref(),
        Some("unauthorized")
    );
    let oauth = br#"{"error":"invalid_grant","error_description":"unknown, invalid, or expired refresh token"}"#;
    assert_eq!(
        ApiProblem::decode(oauth),
        ApiProblem {
            key: Some("invalid_grant".into()),
            detail: "invalid_grant: unknown, invalid, or expired refresh token".into(),
        }
    );
    assert_eq!(
        ApiProblem::decode(b"<html>oops</html>"),
        ApiProblem::default()
    );
    let long = format!(r#"[{{"error_message":"{}"}}]"#, "x".repeat(5000));
    assert!(ApiProblem::decode(long.as_bytes()).detail.chars().count() <= 501);
}

#[test]
fn status_codes_decide_the_kind_and_the_body_tells_quota_from_throttle() {
    let kind = |status: u16, body: &str| {
        error_from_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            start(),
        )
    };
    assert!(matches!(kind(401, ""), ErrorKind::Unauthorized { .. }));
    assert!(matches!(kind(403, ""), ErrorKind::Forbidden { .. }));
    assert!(matches!(kind(404, "[]"), ErrorKind::NotFound { .. }));
    assert!(matches!(kind(409, ""), ErrorKind::Conflict { .. }));
    assert!(matches!(
        kind(400, ""),
        ErrorKind::Rejected { status: 400, .. }
    ));
    assert!(matches!(
        kind(503, ""),
        ErrorKind::Server { status: 503, .. }
    ));
    assert!(matches!(
        kind(
            429,
            r#"{"error_key":"throttled","error_message":"Too Many Requests"}"#
        ),
        ErrorKind::Throttled { .. }
    ));
    // Too many queued activities: some other 429, waited for and retried.
    assert!(matches!(
        kind(
            429,
            r#"[{"error_key":"activities.queue","error_message":"more than 1000 activities queued"}]"#
        ),
        ErrorKind::Throttled { .. }
    ));
    assert!(matches!(
        kind(
            429,
            r#"{"error_key":"quota_exceeded","error_message":"Limit Exceeded"}"#
        ),
        ErrorKind::QuotaExceeded { local: false, .. }
    ));
}

/// The engine sees a Constant Contact failure only as a [`ProviderError`]: how it reacts is
/// decided here, once, from the error kind.
#[test]
fn a_constant_contact_error_becomes_the_engines_provider_error() {
    let d = String::new;
    let midnight = Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap();
    let rows: Vec<(&str, ErrorKind, Reaction, bool, bool)> = vec![
        (
            "not connected",
            ErrorKind::NotConnected,
            Reaction::Stop,
            false,
            false,
        ),
        (
            "broken",
            ErrorKind::ConnectionBroken { detail: d() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "app refused",
            ErrorKind::TokenRefused { detail: d() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "401 after refresh",
            ErrorKind::Unauthorized { detail: d() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "forbidden",
            ErrorKind::Forbidden { detail: d() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "state DB",
            ErrorKind::Store { detail: d() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "not found",
            ErrorKind::NotFound { detail: d() },
            Reaction::NotFound,
            false,
            false,
        ),
        (
            "quota",
            ErrorKind::QuotaExceeded {
                resets_at: midnight,
                local: true,
            },
            Reaction::OutOfBudget {
                resets_at: midnight,
            },
            false,
            false,
        ),
        (
            "conflict",
            ErrorKind::Conflict { detail: d() },
            Reaction::Failed,
            false,
            false,
        ),
        (
            "throttled",
            ErrorKind::Throttled {
                retry_after: None,
                detail: d(),
            },
            Reaction::Failed,
            true,
            false,
        ),
        (
            "server",
            ErrorKind::Server {
                status: 500,
                detail: d(),
                retry_after: None,
            },
            Reaction::Failed,
            true,
            true,
        ),
        ("timeout", ErrorKind::Timeout, Reaction::Failed, true, true),
        (
            "connect",
            ErrorKind::Connect { detail: d() },
            Reaction::Failed,
            true,
            false,
        ),
        (
            "malformed",
            ErrorKind::MalformedResponse { detail: d() },
            Reaction::Failed,
            false,
            false,
        ),
    ];
    for (case, kind, reaction, retryable, may_have_run) in rows {
        let code = kind.code();
        let cc = ConstantContactError::new("getAllContacts", kind)
            .on_list("L1")
            .for_member("ann@example.org");
        let message = cc.to_string();
        assert!(
            message.starts_with(
                "Constant Contact getAllContacts for ann@example.org on list L1 failed: "
            ),
            "{case}: {message}"
        );
        let e = ProviderError::from(cc);
        assert_eq!(e.reaction(), reaction, "{case}");
        assert_eq!(e.is_retryable(), retryable, "{case}");
        assert_eq!(e.may_have_run_there(), may_have_run, "{case}");
        assert_eq!(e.code(), code, "{case}");
        assert_eq!(e.operation(), "getAllContacts", "{case}");
        assert_eq!(e.provider_name(), "Constant Contact", "{case}");
        assert_eq!(e.to_string(), message, "{case}");
    }
}

// ---- tokens ----

#[test]
fn expires_in_is_seconds_or_an_epoch_time() {
    assert_eq!(expires_at(Some(86400), start()), Some(start() + hours(24)));
    let epoch = Utc.with_ymd_and_hms(2026, 12, 8, 6, 0, 0).unwrap();
    assert_eq!(expires_at(Some(epoch.timestamp()), start()), Some(epoch));
    assert_eq!(expires_at(None, start()), None);
}

#[tokio::test]
async fn a_missing_token_says_to_connect_and_sends_nothing() {
    let env = env().await;
    let err = env.client().custom_fields().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Constant Contact getAllCustomFields failed: not connected: run `mailbridge auth constant-contact`"
    );
    assert_eq!(ProviderError::from(err).reaction(), Reaction::Stop);
    assert!(env.server.received_requests().await.unwrap().is_empty());
}

/// Answers the API call with what the store held when the call arrived, so the test can see the
/// rotated refresh token was committed before the new access token was used.
struct SeesTheStore {
    db: PathBuf,
    account: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Respond for SeesTheStore {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let stored = stored_refresh(&self.db, &self.account);
        self.seen.lock().unwrap().push((bearer, stored));
        ResponseTemplate::new(200).set_body_json(fields_page())
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_committed_before_the_new_access_token_is_used() {
    let env = env().await;
    // Four minutes left: under the five-minute margin.
    env.seed("R0", "A0", chrono::Duration::minutes(4)).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1"))
        .expect(1)
        .mount(&env.server)
        .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(SeesTheStore {
            db: env.db.clone(),
            account: env.config.client_id.clone(),
            seen: seen.clone(),
        })
        .mount(&env.server)
        .await;
    env.client().custom_fields().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("Bearer A1".to_owned(), "R1".to_owned())]
    );
    let token = &env.requests_to(TOKEN_PATH).await[0];
    assert_eq!(
        token.headers["authorization"],
        basic(&env.config.client_id, SECRET).as_str()
    );
    assert_eq!(
        token.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        form(token),
        BTreeMap::from([
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), "R0".to_owned()),
        ]),
        "with Basic auth the client id is not repeated in the body"
    );
    let stored = env.stored().await;
    assert_eq!(stored.access_token.unwrap().expose_secret(), "A1");
    assert_eq!(stored.expires_at, Some(start() + hours(24)));
    assert_eq!(stored.rotated_at, start());
}

#[tokio::test]
async fn a_public_app_names_itself_in_the_token_request_body() {
    let env = env_with(false).await;
    env.seed("R0", "A0", chrono::Duration::minutes(-1)).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1"))
        .mount(&env.server)
        .await;
    mount_fields(&env, "A1").await;
    env.client().custom_fields().await.unwrap();
    let token = &env.requests_to(TOKEN_PATH).await[0];
    assert!(token.headers.get("authorization").is_none());
    assert_eq!(form(token)["client_id"], env.config.client_id);
}

#[tokio::test]
async fn an_access_token_with_more_than_five_minutes_left_is_used_as_it_is() {
    let env = env().await;
    env.seed("R0", "A0", chrono::Duration::minutes(6)).await;
    mount_fields(&env, "A0").await;
    let client = env.client();
    client.custom_fields().await.unwrap();
    assert!(env.requests_to(TOKEN_PATH).await.is_empty());
    // Two minutes later it has four left: the next call refreshes first.
    env.clock.advance(Duration::from_secs(120));
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1"))
        .expect(1)
        .mount(&env.server)
        .await;
    mount_fields(&env, "A1").await;
    client.custom_fields().await.unwrap();
    assert_eq!(env.stored_refresh_now(), "R1");
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_the_call() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .and(header("authorization", "Bearer A0"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"error_key": "unauthorized", "error_message": "Unauthorized"}),
            ),
        )
        .expect(1)
        .mount(&env.server)
        .await;
    mount_fields(&env, "A1").await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1"))
        .expect(1)
        .mount(&env.server)
        .await;
    let client = env.client();
    assert_eq!(client.custom_fields().await.unwrap().len(), 2);
    assert_eq!(client.calls().read, 2);
}

#[tokio::test]
async fn a_401_after_the_refresh_stops_the_run() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contact_custom_fields"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1-secret-token", "A1-secret-token"))
        .expect(1)
        .mount(&env.server)
        .await;
    let err = env.client().custom_fields().await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("even after a refresh"), "{message}");
    assert!(!message.contains("secret-token") && !format!("{err:?}").contains("secret-token"));
    assert_eq!(ProviderError::from(err).reaction(), Reaction::Stop);
}

/// Answers the first token request after a delay with a new pair, and every later one with
/// `invalid_grant` (the refresh token was spent by the first).
struct RotatesOnce {
    calls: AtomicUsize,
}

impl Respond for RotatesOnce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            token_answer("R1", "A1").set_delay(Duration::from_millis(1500))
        } else {
            ResponseTemplate::new(400).set_body_json(json!({
                "error": "invalid_grant",
                "error_description": "unknown, invalid, or expired refresh token"
            }))
        }
    }
}

/// Two processes (two clients on one SQLite state DB) refresh at once: the token endpoint rotates
/// for the first and refuses the second with `invalid_grant`; the second adopts the pair the
/// first commits instead of declaring the connection broken.
#[tokio::test]
async fn the_loser_of_a_refresh_race_adopts_the_winners_token() {
    let env = env().await;
    env.seed("R0", "A0", chrono::Duration::minutes(-5)).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(RotatesOnce {
            calls: AtomicUsize::new(0),
        })
        .expect(2)
        .mount(&env.server)
        .await;
    mount_fields(&env, "A1").await;
    let (first, second) = (env.client(), env.client());
    let (a, b) = tokio::join!(first.custom_fields(), second.custom_fields());
    assert_eq!((a.unwrap().len(), b.unwrap().len()), (2, 2));
    assert_eq!(env.stored_refresh_now(), "R1");
    let api = env.requests_to("/v3/contact_custom_fields").await;
    assert_eq!(api.len(), 2);
    assert!(
        api.iter()
            .all(|r| r.headers["authorization"] == "Bearer A1")
    );
}

#[tokio::test]
async fn a_refused_refresh_with_nothing_newer_stored_is_a_broken_connection() {
    let env = env().await;
    env.seed("R0-very-secret", "A0", chrono::Duration::minutes(-5))
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "The refresh token is invalid or expired."
        })))
        .expect(1)
        .mount(&env.server)
        .await;
    let err = env.client().custom_fields().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Constant Contact getAllCustomFields failed: the connection is broken (the refresh token was refused: invalid_grant: The refresh token is invalid or expired.): run `mailbridge auth constant-contact` again"
    );
    assert_eq!(ProviderError::from(err).reaction(), Reaction::Stop);
    assert!(
        env.requests_to("/v3/contact_custom_fields")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn refreshes_of_one_client_are_serialised_and_shared() {
    let env = env().await;
    env.seed("R0", "A0", chrono::Duration::minutes(-5)).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1").set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&env.server)
        .await;
    mount_fields(&env, "A1").await;
    let client = env.client();
    let calls: Vec<_> = (0..4).map(|_| client.custom_fields()).collect();
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn debug_output_shows_no_token_or_secret() {
    let env = env().await;
    env.seed("R0-hidden", "A0-hidden", hours(20)).await;
    let client = env.client();
    let shown = format!("{client:?} {:?} {:?}", env.stored().await, env.config);
    assert!(
        !shown.contains("hidden") && !shown.contains(SECRET),
        "{shown}"
    );
}

#[tokio::test]
async fn a_refresh_token_given_by_hand_is_exchanged_stored_and_proven() {
    let env = env().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer("R1", "A1"))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/account/summary"))
        .and(header("authorization", "Bearer A1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"organization_name": "Club"})),
        )
        .expect(1)
        .mount(&env.server)
        .await;
    store_refresh_token(&env.config, &env.store, SecretString::from("R0"))
        .await
        .unwrap();
    assert_eq!(env.stored_refresh_now(), "R1");
    assert_eq!(
        form(&env.requests_to(TOKEN_PATH).await[0])["refresh_token"],
        "R0"
    );
}

/// Token endpoint answers for the device flow, in turn.
struct DeviceAnswers {
    answers: Mutex<Vec<ResponseTemplate>>,
}

impl Respond for DeviceAnswers {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.answers.lock().unwrap().remove(0)
    }
}

fn oauth_error(error: &str) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({"error": error, "error_description": error}))
}

#[tokio::test]
async fn the_device_flow_shows_the_code_and_polls_at_the_interval_asked() {
    let env = env_with(false).await;
    Mock::given(method("POST"))
        .and(path("/oauth2/default/v1/device/authorize"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "device_code": "dev-1", "user_code": "ABCD-EFGH",
            "verification_uri": "https://auth.example/activate",
            "verification_uri_complete": "https://auth.example/activate?user_code=ABCD-EFGH",
            "expires_in": 600, "interval": 5
        })))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(DeviceAnswers {
            answers: Mutex::new(vec![
                oauth_error("authorization_pending"),
                oauth_error("slow_down"),
                token_answer("R1", "A1"),
            ]),
        })
        .expect(3)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/account/summary"))
        .and(header("authorization", "Bearer A1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&env.server)
        .await;
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let sleeper = Sleeper::from_fn(move |d| {
        w.lock().unwrap().push(d);
        async {}
    });
    let mut shown = Vec::new();
    device_flow_with(&env.config, &env.store, |c| shown.push(c.clone()), &sleeper)
        .await
        .unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].user_code, "ABCD-EFGH");
    assert_eq!(shown[0].verification_uri, "https://auth.example/activate");
    assert_eq!(
        *waits.lock().unwrap(),
        vec![
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(10)
        ]
    );
    let authorize = &env.requests_to("/oauth2/default/v1/device/authorize").await[0];
    assert_eq!(
        form(authorize),
        BTreeMap::from([
            ("client_id".to_owned(), env.config.client_id.clone()),
            (
                "scope".to_owned(),
                "contact_data campaign_data account_read offline_access".to_owned()
            ),
        ])
    );
    let poll = &env.requests_to(TOKEN_PATH).await[0];
    assert_eq!(
        form(poll),
        BTreeMap::from([
            ("client_id".to_owned(), env.config.client_id.clone()),
            ("device_code".to_owned(), "dev-1".to_owned()),
            (
                "grant_type".to_owned(),
                "urn:ietf:params:oauth:grant-type:device_code".to_owned()
            ),
        ])
    );
    assert_eq!(env.stored_refresh_now(), "R1");
}

#[tokio::test]
async fn a_denied_or_expired_device_code_ends_the_flow_with_a_reason() {
    for (error, words) in [
        ("access_denied", "denied"),
        ("expired_token", "expired before it was approved"),
    ] {
        let env = env_with(false).await;
        Mock::given(method("POST"))
            .and(path("/oauth2/default/v1/device/authorize"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "device_code": "d", "user_code": "U", "verification_uri": "https://a/b", "interval": 1
            })))
            .mount(&env.server)
            .await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(oauth_error(error))
            .expect(1)
            .mount(&env.server)
            .await;
        let err = device_flow_with(
            &env.config,
            &env.store,
            |_| {},
            &Sleeper::from_fn(|_| async {}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(words), "{error}: {err}");
        assert!(
            env.store
                .oauth_token("constant_contact", &env.config.client_id)
                .await
                .unwrap()
                .is_none()
        );
    }
}

// ---- budget ----

#[tokio::test]
async fn the_daily_budget_stops_a_call_until_midnight_utc() {
    let mut env = env().await;
    env.config.daily_budget = 2;
    env.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 7, 23, 0, 0).unwrap());
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    let client = env.client();
    client.custom_fields().await.unwrap();
    client.custom_fields().await.unwrap();
    let err = client.custom_fields().await.unwrap_err();
    let midnight = Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap();
    assert!(matches!(
        err.kind(),
        ErrorKind::QuotaExceeded { resets_at, local: true } if *resets_at == midnight
    ));
    assert_eq!(
        err.to_string(),
        "Constant Contact getAllCustomFields failed: the daily_budget of requests is spent (nothing sent) until 2026-12-08T00:00:00Z"
    );
    assert_eq!(env.requests_to("/v3/contact_custom_fields").await.len(), 2);
    // A new UTC day brings the budget back.
    env.clock.set(midnight);
    client.custom_fields().await.unwrap();
    assert_eq!(env.requests_to("/v3/contact_custom_fields").await.len(), 3);
}

/// The daily budget's quota alerts, raised by the limiter as it takes each request: 80% of 10
/// queues one alert mail to `[alerts] to`, the 9th request none, the 10th (95%) one more, and a
/// new UTC day alerts again; each is claimed once in `quota_alerts`.
#[tokio::test]
async fn the_daily_budget_raises_quota_alerts_once_per_threshold_and_day() {
    let mut env = env().await;
    env.config.daily_budget = 10;
    env.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap());
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    let config = crate::config::Config::from_str_with_env(
        std::path::Path::new("mb.toml"),
        "[members]\nurl = \"sqlite://m.db\"\nmapping = \"m.toml\"\n\
         [relay]\nfrom = \"Club <club@club.example>\"\nroutes = [\"sendmail\"]\n\
         [alerts]\nto = [\"ops@club.example\"]\n",
        &|_| None,
    )
    .unwrap();
    let alerts = crate::relay::alerts::Alerter::new(
        env.store.clone(),
        config.alerts.clone(),
        config.relay.clone().map(Arc::new),
    );
    let client = env.client().with_alerts(alerts);
    let queued = |store: Store| async move {
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT o.recipient, o.category, b.raw FROM outbox o JOIN outbox_bodies b ON b.id = o.id ORDER BY o.rowid",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(to, category, raw)| {
                let subject = mail_parser::MessageParser::default()
                    .parse(&raw)
                    .and_then(|m| m.subject().map(str::to_owned))
                    .unwrap_or_default();
                (to, category, subject)
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..7 {
        client.custom_fields().await.unwrap();
    }
    assert!(queued(env.store.clone()).await.is_empty());
    client.custom_fields().await.unwrap();
    let first = (
        "ops@club.example".to_owned(),
        "alert".to_owned(),
        "[mailbridge] 80% of constant_contact's daily API budget: 8 of 10 requests used".to_owned(),
    );
    assert_eq!(queued(env.store.clone()).await, vec![first.clone()]);
    client.custom_fields().await.unwrap();
    assert_eq!(queued(env.store.clone()).await.len(), 1);
    client.custom_fields().await.unwrap();
    let mut got = queued(env.store.clone()).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].2,
        "[mailbridge] 95% of constant_contact's daily API budget: 10 of 10 requests used"
    );
    // The next UTC day: the budget and its alerts start again.
    env.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap());
    for _ in 0..8 {
        client.custom_fields().await.unwrap();
    }
    got = queued(env.store.clone()).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], first);
    let claims: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT kind, subject, threshold, period_start FROM quota_alerts ORDER BY period_start, threshold",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    let claim = |t: i64, day: &str| {
        (
            "api_daily_budget".to_owned(),
            "constant_contact".to_owned(),
            t,
            format!("{day}T00:00:00.000Z"),
        )
    };
    assert_eq!(
        claims,
        vec![
            claim(80, "2026-12-07"),
            claim(95, "2026-12-07"),
            claim(80, "2026-12-08")
        ]
    );
}

#[test]
fn the_quota_resets_at_the_next_midnight_utc() {
    assert_eq!(
        next_midnight(Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap()),
        Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(
        next_midnight(Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap()),
        Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap()
    );
}

// ---- imports ----

fn contact(i: usize, fields: &[(&str, FieldValue)]) -> Contact {
    Contact {
        member_key: MemberKey::from_int(i as i64),
        email: Email::parse(&format!("m{i}@example.org")).unwrap(),
        merge_fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        tags: BTreeSet::from(["ignored".to_owned()]),
    }
}

#[test]
fn an_import_item_is_the_address_and_its_fields_as_cf_text() {
    let c = contact(
        1,
        &[
            ("FNAME", FieldValue::Text("Ann".into())),
            ("DUES", FieldValue::Number(12.5)),
            ("NOTE", FieldValue::Text("é".repeat(300))),
        ],
    );
    let item: Value = serde_json::from_slice(&import_item(&c).unwrap()).unwrap();
    assert_eq!(item["email"], "m1@example.org");
    assert_eq!(item["cf:FNAME"], "Ann");
    assert_eq!(item["cf:DUES"], "12.5");
    assert_eq!(item["cf:NOTE"].as_str().unwrap().chars().count(), 255);
    assert!(item.get("tags").is_none());
}

/// Every body is under the byte limit, holds the members listed in order, and the next
/// request's first member would not have fitted in it.
fn assert_split(requests: &[ImportRequest], items: &[(usize, Vec<u8>)], max_bytes: usize) {
    let mut next = 0;
    for (r, request) in requests.iter().enumerate() {
        assert!(
            request.body.len() < max_bytes,
            "request {r} is {} bytes",
            request.body.len()
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["list_ids"], json!([LIST]));
        assert_eq!(
            body["import_data"].as_array().unwrap().len(),
            request.members.len()
        );
        assert_eq!(
            request.members,
            (next..next + request.members.len()).collect::<Vec<_>>()
        );
        next += request.members.len();
        if let Some(following) = requests.get(r + 1) {
            let first = &items[following.members[0]].1;
            assert!(
                request.body.len() + 1 + first.len() >= max_bytes,
                "request {r} had room for the next member"
            );
        }
    }
    assert_eq!(next, items.len());
}

#[test]
fn an_import_is_split_to_stay_under_four_megabytes_counted_in_bytes() {
    // ~1 KB per contact (non-ASCII text: bytes, not characters, count).
    let note = FieldValue::Text("ü".repeat(250));
    let items: Vec<(usize, Vec<u8>)> = (0..9_000)
        .map(|i| {
            let c = contact(i, &[("A", note.clone()), ("B", note.clone())]);
            (i, import_item(&c).unwrap())
        })
        .collect();
    let (requests, too_large) = split_import(LIST, &items, MAX_IMPORT_BYTES, MAX_IMPORT_CONTACTS);
    assert!(too_large.is_empty());
    assert_eq!(requests.len(), 3);
    assert_split(&requests, &items, MAX_IMPORT_BYTES);
    assert!(requests[0].body.len() > MAX_IMPORT_BYTES - 2_000);
}

#[test]
fn the_split_is_exact_at_the_byte_boundary() {
    let items: Vec<(usize, Vec<u8>)> = (0..3)
        .map(|i| (i, br#"{"email":"a@b.c"}"#.to_vec()))
        .collect();
    let one = split_import(LIST, &items[..1], usize::MAX, 10).0[0]
        .body
        .len();
    let two = split_import(LIST, &items[..2], usize::MAX, 10).0[0]
        .body
        .len();
    // A limit one byte above two members' body holds two; at exactly that size, one.
    let (r, _) = split_import(LIST, &items, two + 1, 10);
    assert_eq!(
        r.iter().map(|r| r.members.len()).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_split(&r, &items, two + 1);
    let (r, _) = split_import(LIST, &items, two, 10);
    assert_eq!(
        r.iter().map(|r| r.members.len()).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert_split(&r, &items, two);
    // A member that cannot fit even alone is set apart, not sent.
    let (r, too_large) = split_import(LIST, &items, one, 10);
    assert!(r.is_empty());
    assert_eq!(too_large, vec![0, 1, 2]);
}

fn activity(id: &str, state: &str, total: usize, errors: u64, errors_text: &[&str]) -> Value {
    json!({
        "activity_id": id, "state": state, "percent_done": 100,
        "activity_errors": errors_text,
        "status": {"items_total_count": total, "items_completed_count": total,
                   "error_count": errors, "cannot_add_to_list_count": 0},
        "_links": {"self": {"href": format!("/v3/activities/{id}")}}
    })
}

#[tokio::test]
async fn an_import_over_40000_contacts_is_split_by_count_and_accepted_by_its_counts() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = sizes.clone();
    let n = AtomicUsize::new(0);
    Mock::given(method("POST"))
        .and(path("/v3/activities/contacts_json_import"))
        .respond_with(move |r: &Request| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let count = body["import_data"].as_array().unwrap().len();
            s.lock().unwrap().push(count);
            let id = format!("act-{}", n.fetch_add(1, Ordering::SeqCst));
            ResponseTemplate::new(201).set_body_json(activity(&id, "completed", count, 0, &[]))
        })
        .expect(2)
        .mount(&env.server)
        .await;
    let contacts: Vec<Contact> = (0..40_001).map(|i| contact(i, &[])).collect();
    let members: Vec<(&Contact, WriteStatus)> = contacts
        .iter()
        .map(|c| (c, WriteStatus::Subscribed))
        .collect();
    let outcomes = env.client().import_contacts(LIST, &members).await.unwrap();
    assert_eq!(*sizes.lock().unwrap(), vec![40_000, 1]);
    assert_eq!(outcomes.len(), 40_001);
    assert!(outcomes.iter().all(|o| *o == UpsertOutcome::Accepted(None)));
}

#[tokio::test]
async fn members_the_counts_miss_are_read_back_and_refused_with_the_activitys_words() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let c1 = contact(1, &[("FNAME", FieldValue::Text("Ann".into()))]);
    let c2 = contact(2, &[]);
    let c3 = contact(3, &[]);
    let c4 = contact(4, &[]);
    let gone = contact(5, &[]);
    Mock::given(method("POST"))
        .and(path("/v3/activities/contacts_json_import"))
        .and(body_json(json!({
            "import_data": [
                {"email": "m1@example.org", "cf:FNAME": "Ann"},
                {"email": "m2@example.org"}, {"email": "m3@example.org"}, {"email": "m4@example.org"}
            ],
            "list_ids": [LIST]
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(activity("imp-1", "initialized", 0, 0, &[])))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/activities/imp-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(activity(
            "imp-1",
            "processing",
            4,
            0,
            &[],
        )))
        .up_to_n_times(1)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/activities/imp-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(activity(
            "imp-1",
            "completed",
            4,
            1,
            &["Line 2: M2@example.org - invalid email address"],
        )))
        .mount(&env.server)
        .await;
    // The read-back: two pages, the second through the relative `_links.next.href`.
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("lists", LIST))
        .and(query_param("updated_after", "2026-12-07T11:59:00Z"))
        .and(query_param("include", "custom_fields,list_memberships"))
        .and(query_param("limit", "500"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contacts": [{"contact_id": "c1", "email_address": {"address": "M1@example.org", "permission_to_send": "implicit"}}],
            "_links": {"next": {"href": "/v3/contacts?cursor=page2"}}
        })))
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("cursor", "page2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contacts": [{"contact_id": "c4", "email_address": {"address": "m4@example.org", "permission_to_send": "pending_confirmation"}}]
        })))
        .mount(&env.server)
        .await;
    // The unsubscribed member is looked up and removed from the list.
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("email", "m5@example.org"))
        .and(query_param("include", "list_memberships"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contacts": [{"contact_id": "c5", "email_address": {"address": "m5@example.org"}, "list_memberships": [LIST]}]
        })))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/activities/remove_list_memberships"))
        .and(body_json(
            json!({"source": {"contact_ids": ["c5"]}, "list_ids": [LIST]}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(activity(
            "rm-1",
            "completed",
            1,
            0,
            &[],
        )))
        .expect(1)
        .mount(&env.server)
        .await;
    let members = [
        (&c1, WriteStatus::Subscribed),
        (&c2, WriteStatus::Subscribed),
        (&gone, WriteStatus::Unsubscribed),
        (&c3, WriteStatus::Pending),
        (&c4, WriteStatus::Subscribed),
    ];
    let outcomes = env.client().import_contacts(LIST, &members).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            UpsertOutcome::Accepted(Some(SubscriptionStatus::Subscribed)),
            UpsertOutcome::Refused(MemberRefusal {
                code: "provider_invalid_email".into(),
                message: "Line 2: M2@example.org - invalid email address".into(),
                invalid_address: true,
            }),
            UpsertOutcome::Accepted(Some(SubscriptionStatus::Unsubscribed)),
            UpsertOutcome::Refused(MemberRefusal {
                code: "not_imported".into(),
                message: "not on the list after import activity imp-1 (completed; 1 error(s), 0 previously unsubscribed contact(s) not added)".into(),
                invalid_address: false,
            }),
            UpsertOutcome::Accepted(Some(SubscriptionStatus::Pending)),
        ]
    );
}

#[tokio::test]
async fn removal_from_a_list_finds_ids_by_address_and_knows_who_is_already_gone() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    for (email, body) in [
        (
            "a@example.org",
            json!({"contacts": [{"contact_id": "ca", "email_address": {"address": "a@example.org"}, "list_memberships": [LIST]}]}),
        ),
        ("b@example.org", json!({"contacts": []})),
        (
            "c@example.org",
            json!({"contacts": [{"contact_id": "cc", "email_address": {"address": "c@example.org"}, "list_memberships": ["other"]}]}),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path("/v3/contacts"))
            .and(query_param("email", email))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&env.server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/v3/activities/remove_list_memberships"))
        .and(body_json(
            json!({"source": {"contact_ids": ["ca"]}, "list_ids": [LIST]}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(activity(
            "rm",
            "failed",
            1,
            1,
            &["boom"],
        )))
        .mount(&env.server)
        .await;
    let client = env.client();
    let err = client
        .remove_from_list(LIST, &["a@example.org", "b@example.org", "c@example.org"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "activity_failed");
    assert!(
        err.to_string().contains("activity rm ended failed: boom"),
        "{err}"
    );
    // An address with no contact on the list needs no removal at all.
    let out = client
        .remove_from_list(LIST, &["b@example.org", "c@example.org"])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            ("b@example.org".to_owned(), Archive::AlreadyGone),
            ("c@example.org".to_owned(), Archive::AlreadyGone)
        ]
    );
    assert_eq!(
        env.requests_to("/v3/activities/remove_list_memberships")
            .await
            .len(),
        1
    );
}

// ---- members ----

#[test]
fn permission_to_send_maps_to_a_subscription_status() {
    use SubscriptionStatus::*;
    for (permission, deleted, status) in [
        (Some("explicit"), false, Subscribed),
        (Some("implicit"), false, Subscribed),
        (Some("pending_confirmation"), false, Pending),
        (Some("unsubscribed"), false, Unsubscribed),
        (Some("not_set"), false, Pending),
        (Some("temp_hold"), false, Pending),
        (None, false, Pending),
        (Some("explicit"), true, Archived),
    ] {
        assert_eq!(
            member_status(permission, deleted),
            status,
            "{permission:?} {deleted}"
        );
    }
}

#[tokio::test]
async fn a_contact_is_read_by_address_with_its_fields_by_name() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("email", "ann@example.org"))
        .and(query_param("include", "custom_fields,list_memberships"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"contacts": [{
                "contact_id": "c-ann",
                "email_address": {"address": "Ann@Example.org", "permission_to_send": "explicit"},
                "updated_at": "2026-12-01T10:00:00Z",
                "custom_fields": [{"custom_field_id": "f-1", "value": "Ann"}],
                "list_memberships": [LIST]
            }]})),
        )
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("email", "nobody@example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"contacts": []})))
        .mount(&env.server)
        .await;
    let client = env.client();
    let member = client.contact("ann@example.org").await.unwrap().unwrap();
    assert_eq!(member.id, "c-ann");
    assert_eq!(member.email_address, "Ann@Example.org");
    assert_eq!(member.status, SubscriptionStatus::Subscribed);
    assert_eq!(
        member.merge_fields,
        BTreeMap::from([("FNAME".to_owned(), json!("Ann"))])
    );
    assert_eq!(
        member.last_changed,
        Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap())
    );
    assert_eq!(client.contact("nobody@example.org").await.unwrap(), None);
}

#[tokio::test]
async fn an_address_change_puts_the_whole_contact_back_with_the_new_address() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    mount_fields(&env, "A0").await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("email", "old@example.org"))
        .and(query_param("include", "list_memberships,custom_fields"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"contacts": [{
                "contact_id": "c-1",
                "email_address": {"address": "old@example.org", "permission_to_send": "implicit"},
                "first_name": "Ann", "last_name": "Lee",
                "custom_fields": [{"custom_field_id": "f-2", "value": "2020-01-01"}],
                "list_memberships": ["other-list"]
            }]})),
        )
        .mount(&env.server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v3/contacts/c-1"))
        .and(body_json(json!({
            "email_address": {"address": "New@example.org", "permission_to_send": "implicit"},
            "first_name": "Ann", "last_name": "Lee",
            "update_source": "Account",
            "custom_fields": [
                {"custom_field_id": "f-2", "value": "2020-01-01"},
                {"custom_field_id": "f-1", "value": "Annie"}
            ],
            "list_memberships": ["other-list", LIST]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contact_id": "c-1",
            "email_address": {"address": "New@example.org", "permission_to_send": "implicit"},
            "custom_fields": [{"custom_field_id": "f-1", "value": "Annie"}]
        })))
        .expect(1)
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("email", "ghost@example.org"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"contacts": []})))
        .mount(&env.server)
        .await;
    let client = env.client();
    let fields = BTreeMap::from([("FNAME".to_owned(), FieldValue::Text("Annie".into()))]);
    let member = client
        .change_address(
            LIST,
            "old@example.org",
            &Email::parse("New@example.org").unwrap(),
            &fields,
        )
        .await
        .unwrap();
    assert_eq!(
        (member.id.as_str(), member.email_address.as_str()),
        ("c-1", "New@example.org")
    );
    let missing = client
        .change_address(
            LIST,
            "ghost@example.org",
            &Email::parse("x@example.org").unwrap(),
            &fields,
        )
        .await
        .unwrap_err();
    assert!(matches!(missing.kind(), ErrorKind::NotFound { .. }));
    assert_eq!(missing.member(), Some("ghost@example.org"));
    assert_eq!(ProviderError::from(missing).reaction(), Reaction::NotFound);
}

#[tokio::test]
async fn opt_outs_are_polled_by_opt_out_date_and_say_who_opted_out() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("status", "unsubscribed"))
        .and(query_param("lists", LIST))
        .and(query_param("optout_after", "2026-12-01T00:00:00Z"))
        .and(query_param("include", "custom_fields"))
        .and(query_param("limit", "500"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contacts": [
                {"contact_id": "c1", "email_address": {"address": "a@example.org", "permission_to_send": "unsubscribed",
                  "opt_out_source": "Contact", "opt_out_date": "2026-12-03T08:00:00Z", "opt_out_reason": "too many"}},
                {"contact_id": "c2", "email_address": {"address": "b@example.org", "permission_to_send": "unsubscribed",
                  "opt_out_source": "Account", "opt_out_date": "2026-12-04T08:00:00Z"}}
            ],
            "_links": {"next": {"href": "/v3/contacts?cursor=next-1"}}
        })))
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/contacts"))
        .and(query_param("cursor", "next-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"contacts": []})))
        .mount(&env.server)
        .await;
    let client = env.client();
    let since = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let (page, next) = client.opt_outs_page(LIST, Some(since), None).await.unwrap();
    assert_eq!(next.as_deref(), Some("/v3/contacts?cursor=next-1"));
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].source, Some(OptOutSource::Contact));
    assert_eq!(
        page[0].member.unsubscribe_reason.as_deref(),
        Some("too many")
    );
    assert_eq!(
        page[0].member.last_changed,
        Some(Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap())
    );
    assert_eq!(page[1].source, Some(OptOutSource::Account));
    assert_eq!(page[1].member.status, SubscriptionStatus::Unsubscribed);
    let (last, none) = client.opt_outs_page(LIST, Some(since), next).await.unwrap();
    assert!(last.is_empty() && none.is_none());
    let sent = env.requests_to("/v3/contacts").await;
    assert!(
        sent.iter()
            .all(|r| !r.url.as_str().contains("updated_after"))
    );
}

#[tokio::test]
async fn a_next_link_off_the_api_origin_is_refused_before_the_token_goes_anywhere() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let client = env.client();
    for href in [
        "https://evil.example/v3/contacts",
        "//evil.example/v3/x",
        "v3/contacts",
        "/\\evil",
    ] {
        let err = client
            .opt_outs_page(LIST, None, Some(href.to_owned()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "malformed_response", "{href}");
    }
    assert!(env.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn bounces_are_read_from_each_recent_campaigns_primary_email() {
    let env = env().await;
    env.seed("R0", "A0", hours(20)).await;
    let since = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    Mock::given(method("GET"))
        .and(path("/v3/emails"))
        .and(query_param("after_date", "2026-12-01T00:00:00Z"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"campaigns": [{"campaign_id": "camp-1"}]})),
        )
        .mount(&env.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/emails/camp-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"campaign_id": "camp-1", "campaign_activities": [
                {"campaign_activity_id": "act-p", "role": "permalink"},
                {"campaign_activity_id": "act-1", "role": "primary_email"}
            ]}),
        ))
        .mount(&env.server)
        .await;
    let bounce = |email: &str, code: &str, at: &str| {
        json!({
            "contact_id": "c", "campaign_activity_id": "act-1", "tracking_activity_type": "em_bounces",
            "email_address": email, "bounce_code": code, "created_time": at
        })
    };
    Mock::given(method("GET"))
        .and(path("/v3/reports/email_reports/act-1/tracking/bounces"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tracking_activities": [
                bounce("x@example.org", "B", "2026-12-05T00:00:00Z"),
                bounce("y@example.org", "F", "2026-11-30T00:00:00Z")
            ],
            "_links": {"next": {"href": "/v3/reports/email_reports/act-1/tracking/bounces?next=2"}}
        })))
        .expect(1)
        .mount(&env.server)
        .await;
    let bounces = env.client().bounces_since(since).await.unwrap();
    assert_eq!(
        bounces,
        vec![Bounce {
            email: "x@example.org".into(),
            code: "B".into(),
            at: Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap(),
            activity_id: "act-1".into(),
        }]
    );
    assert!(bounces[0].is_hard());
}

// ---- pace ----

/// Every client of one app in the process shares one pace; the token endpoint gets one call a
/// second.
#[tokio::test(start_paused = true)]
async fn clients_of_one_app_share_its_pace() {
    use super::limits::{api_pacer, token_pacer};
    let app = format!("pace-{:08x}", rand::random::<u32>());
    let (a, b) = (api_pacer(&app, 4), api_pacer(&app, 50));
    assert!(
        Arc::ptr_eq(&a, &b),
        "one pacer per client id, at the first rate asked"
    );
    assert!(!Arc::ptr_eq(&a, &api_pacer("another-app", 4)));
    let begin = tokio::time::Instant::now();
    for pacer in [&a, &b, &a, &b, &a] {
        pacer.wait().await;
    }
    // Five requests at 4 a second, each turn a tenth longer than 250 ms (the margin for the
    // requests' varying delays): the fifth goes out 1.1 s after the first.
    assert_eq!(begin.elapsed(), Duration::from_millis(1100));
    let token = token_pacer("http://auth.example/token");
    let begin = tokio::time::Instant::now();
    for _ in 0..3 {
        token.wait().await;
    }
    assert_eq!(begin.elapsed(), Duration::from_millis(2200));
}

mod campaigns;
