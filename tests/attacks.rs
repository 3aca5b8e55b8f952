//! The attack table (issue 24): requests an outsider can send to a real `serve`, each with what
//! the client is told and exactly what may change in the member DB, the state DB and the outbox.
//! After every case the process still answers `/healthz`. Every webhook route and every event
//! type that changes something has at least one case: a new one without a case fails
//! `every_route_and_event_type_has_a_case`.
//!
//! Two set-ups: `Unsigned` (no signing secret: deliveries are hints, confirmed with the
//! simulator before they act) and `Signed` (the audience has a signing secret: unsigned
//! deliveries are refused, signed ones act directly). Members m1…m5 are synced first, so the
//! state DB ties each address to its member.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mailbridge::providers::mailchimp::webhook::{
    MAILCHIMP_TYPES, MANDRILL_TYPES, mailchimp_signature, mandrill_signature,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::serve::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Unsigned,
    Signed,
}

/// One row of a member DB: id, email, newsletter, email_status.
type MemberRow = (i64, String, bool, String);

/// What a case sends: path (after the base URL), body, headers.
struct Request {
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

struct Case {
    name: &'static str,
    /// The routes and event types it exercises (checked for coverage).
    covers: &'static [&'static str],
    setup: Setup,
    /// A request sent first (it must succeed); what the case may change is counted after it.
    first: Option<fn(&Env) -> Request>,
    request: fn(&Env) -> Request,
    status: u16,
    /// The JSON error code, for refusals.
    code: Option<&'static str>,
    /// Events recorded (including ignored ones).
    events: i64,
    /// The outcome the event ends with, once the writeback worker is done with it.
    outcome: Option<&'static str>,
    /// How the member DB changes (applied to the snapshot taken before the case).
    members: fn(&mut Vec<MemberRow>),
    /// Addresses newly on the suppression list.
    suppressed: &'static [&'static str],
    /// Messages newly in the outbox.
    queued: i64,
    /// A line /metrics must show afterwards.
    metric: Option<&'static str>,
}

fn unchanged(_: &mut Vec<MemberRow>) {}

fn no_request(_: &Env) -> Request {
    hook(Vec::new())
}

/// What a row does not say: unsigned set-up, one request, and nothing recorded or changed.
const BASE: Case = Case {
    name: "",
    covers: &[],
    setup: Setup::Unsigned,
    first: None,
    request: no_request,
    status: 0,
    code: None,
    events: 0,
    outcome: None,
    members: unchanged,
    suppressed: &[],
    queued: 0,
    metric: None,
};

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    serde_urlencoded::to_string(pairs).unwrap().into_bytes()
}

fn hook(body: Vec<u8>) -> Request {
    Request {
        path: format!("/webhooks/mailchimp/{SECRET}"),
        body,
        headers: vec![],
    }
}

/// [`hook`] with a signature made with `secret` at the Unix time `at`.
fn hook_signed_with(secret: &[u8], at: i64, body: Vec<u8>) -> Request {
    let sig = mailchimp_signature(secret, at, &body);
    Request {
        headers: vec![("x-mailchimp-signature", sig)],
        ..hook(body)
    }
}

/// [`hook`] signed now with the audience's secret.
fn signed_hook(body: Vec<u8>) -> Request {
    hook_signed_with(SIGNING.as_bytes(), chrono::Utc::now().timestamp(), body)
}

fn unsubscribe(list: &str, email: &str, reason: &str, fired_at: &str) -> Vec<u8> {
    form(&[
        ("type", "unsubscribe"),
        ("fired_at", fired_at),
        ("data[action]", "unsub"),
        ("data[reason]", reason),
        ("data[list_id]", list),
        ("data[email]", email),
        ("data[merges][EMAIL]", email),
        // A member key in the body: kept for the record, selects nobody.
        ("data[merges][MBRKEY]", "2"),
    ])
}

/// The transactional endpoint's URL as the test config registers it (the signature covers it).
const MANDRILL_URL: &str = "http://127.0.0.1:1/webhooks/mailchimp-transactional";

fn mandrill(events: &Value, key: Option<&str>) -> Request {
    mandrill_raw(events.to_string(), key)
}

/// [`mandrill`] with `mandrill_events` as given, JSON or not.
fn mandrill_raw(events: String, key: Option<&str>) -> Request {
    let fields = vec![("mandrill_events".to_owned(), events)];
    let mut headers = vec![];
    if let Some(key) = key {
        headers.push((
            "x-mandrill-signature",
            mandrill_signature(key.as_bytes(), MANDRILL_URL, &fields),
        ));
    }
    Request {
        path: "/webhooks/mailchimp-transactional".into(),
        body: serde_urlencoded::to_string(&fields).unwrap().into_bytes(),
        headers,
    }
}

fn message(key: Option<&str>, token: Option<&str>, subject: &str) -> Request {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(key) = key {
        headers.push(("idempotency-key", key.to_owned()));
    }
    if let Some(token) = token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    Request {
        path: "/v1/messages".into(),
        body:
            json!({"to": "ana@example.org", "subject": subject, "text": "Your new password link.", "category": "password"})
                .to_string()
                .into_bytes(),
        headers,
    }
}

fn mandrill_event(kind: &str, email: &str) -> Value {
    json!([{"event": kind, "ts": chrono::Utc::now().timestamp(), "_id": format!("msg-{kind}"),
            "msg": {"email": email, "bounce_description": "bad_mailbox"}}])
}

/// One transactional event of `kind` about `email`, signed with the configured webhook key.
fn signed_event(kind: &str, email: &str) -> Request {
    mandrill(&mandrill_event(kind, email), Some(MANDRILL_KEY))
}

/// What the shipped mapping's writeback does to a member: the status, and consent cleared for
/// everything but `cleaned`.
fn set_status(members: &mut [MemberRow], id: i64, status: &str) {
    for m in members.iter_mut().filter(|m| m.0 == id) {
        m.2 = m.2 && status == "cleaned";
        m.3 = status.to_owned();
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- The three attacks measured from outside ---------------------------------------
        Case {
            name: "forged upemail with a member key in the merges rewrites nobody's address",
            covers: &["/webhooks/mailchimp/{secret}", "upemail"],
            request: |env| {
                hook(form(&[
                    ("type", "upemail"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[list_id]", &env.list),
                    ("data[new_id]", "51da8c3259"),
                    ("data[new_email]", "attacker@evil.example"),
                    ("data[old_email]", "m1@example.org"),
                    ("data[merges][MBRKEY]", "2"),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("not_confirmed"),
            metric: Some("outcome=\"not_confirmed\""),
            ..BASE
        },
        Case {
            name: "a 60 KB key nested 20,000 levels is refused and the server goes on",
            covers: &["/webhooks/mailchimp/{secret}"],
            request: |_| hook(format!("data[a]{}=1", "[b".repeat(30_000)).into_bytes()),
            status: 400,
            code: Some("key_too_long"),
            metric: Some("reason=\"key_too_long\""),
            ..BASE
        },
        Case {
            name: "cleaned for a list no audience has suppresses nobody",
            covers: &["/webhooks/mailchimp/{secret}", "cleaned"],
            request: |_| {
                hook(form(&[
                    ("type", "cleaned"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[list_id]", "unknownlist"),
                    ("data[reason]", "hard"),
                    ("data[email]", "president@club.example"),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("unknown_list"),
            metric: Some(
                "mailbridge_events_ignored_total{provider=\"mailchimp\",reason=\"unknown_list\"}",
            ),
            ..BASE
        },
        // --- Unsigned deliveries are hints -------------------------------------------------
        Case {
            name: "forged cleaned on our list for an address the provider does not have",
            covers: &["cleaned"],
            request: |env| {
                hook(form(&[
                    ("type", "cleaned"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[list_id]", &env.list),
                    ("data[reason]", "hard"),
                    ("data[email]", "president@club.example"),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("not_confirmed"),
            ..BASE
        },
        Case {
            name: "forged unsubscribe of a subscribed member changes nothing",
            covers: &["unsubscribe"],
            request: |env| {
                hook(unsubscribe(
                    &env.list,
                    "m3@example.org",
                    "manual",
                    "2026-12-01 10:00:00",
                ))
            },
            status: 200,
            events: 1,
            outcome: Some("not_confirmed"),
            ..BASE
        },
        Case {
            name: "forged spam complaint suppresses nobody",
            covers: &["unsubscribe"],
            request: |env| {
                hook(unsubscribe(
                    &env.list,
                    "m4@example.org",
                    "abuse",
                    "2026-12-01 10:00:00",
                ))
            },
            status: 200,
            events: 1,
            outcome: Some("not_confirmed"),
            ..BASE
        },
        Case {
            name: "forged subscribe of an address the provider does not have",
            covers: &["subscribe"],
            request: |env| {
                hook(form(&[
                    ("type", "subscribe"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[list_id]", &env.list),
                    ("data[email]", "stranger@example.org"),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("not_confirmed"),
            ..BASE
        },
        Case {
            name: "profile and campaign events are stored and change nothing",
            covers: &["profile"],
            request: |env| {
                hook(form(&[
                    ("type", "profile"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[list_id]", &env.list),
                    ("data[email]", "m5@example.org"),
                    ("data[merges][MBRKEY]", "1"),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("ignored"),
            ..BASE
        },
        Case {
            name: "campaign event",
            covers: &["campaign"],
            request: |env| {
                hook(form(&[
                    ("type", "campaign"),
                    ("fired_at", "2026-12-01 10:00:00"),
                    ("data[id]", "5aa2102003"),
                    ("data[status]", "sent"),
                    ("data[list_id]", &env.list),
                ]))
            },
            status: 200,
            events: 1,
            outcome: Some("ignored"),
            ..BASE
        },
        // --- Bounds and refusals -------------------------------------------------------------
        Case {
            name: "wrong URL secret: 404, as for no endpoint",
            covers: &["/webhooks/mailchimp/{secret}"],
            request: |env| Request {
                path: "/webhooks/mailchimp/guess".into(),
                ..hook(unsubscribe(
                    &env.list,
                    "m1@example.org",
                    "manual",
                    "2026-12-01 10:00:00",
                ))
            },
            status: 404,
            code: Some("not_found"),
            ..BASE
        },
        Case {
            name: "keys nested five levels",
            covers: &["/webhooks/mailchimp/{secret}"],
            request: |_| hook(b"type=profile&data[a][b][c][d][e]=1".to_vec()),
            status: 400,
            code: Some("too_deep"),
            ..BASE
        },
        Case {
            name: "too many form fields",
            covers: &["/webhooks/mailchimp/{secret}"],
            request: |_| hook(vec!["a=1"; 1001].join("&").into_bytes()),
            status: 400,
            code: Some("too_many_fields"),
            ..BASE
        },
        Case {
            name: "a body over 1 MiB",
            covers: &["/webhooks/mailchimp/{secret}"],
            request: |_| {
                hook(format!("type=profile&data[x]={}", "y".repeat(1_100_000)).into_bytes())
            },
            status: 413,
            code: Some("body_too_large"),
            ..BASE
        },
        // --- Signed lists --------------------------------------------------------------------
        Case {
            name: "unsigned delivery to a list with a signing secret",
            covers: &["/webhooks/mailchimp/{secret}", "unsubscribe"],
            setup: Setup::Signed,
            request: |env| {
                hook(unsubscribe(
                    &env.list,
                    "m1@example.org",
                    "manual",
                    "2026-12-01 10:00:00",
                ))
            },
            status: 401,
            code: Some("bad_signature"),
            ..BASE
        },
        Case {
            name: "signature made with a guessed secret",
            covers: &["unsubscribe"],
            setup: Setup::Signed,
            request: |env| {
                let body =
                    unsubscribe(&env.list, "m1@example.org", "manual", "2026-12-01 10:00:00");
                hook_signed_with(b"guess", chrono::Utc::now().timestamp(), body)
            },
            status: 401,
            code: Some("bad_signature"),
            ..BASE
        },
        Case {
            name: "a replayed signature ten minutes old",
            covers: &["unsubscribe"],
            setup: Setup::Signed,
            request: |env| {
                let body =
                    unsubscribe(&env.list, "m1@example.org", "manual", "2026-12-01 10:00:00");
                let ten_minutes_ago = chrono::Utc::now().timestamp() - 600;
                hook_signed_with(SIGNING.as_bytes(), ten_minutes_ago, body)
            },
            status: 401,
            code: Some("bad_signature"),
            ..BASE
        },
        Case {
            name: "signed unsubscribe acts on the stored contact, not on the merges' member key",
            covers: &["unsubscribe"],
            setup: Setup::Signed,
            request: |env| {
                signed_hook(unsubscribe(
                    &env.list,
                    "m1@example.org",
                    "manual",
                    "2026-12-01 10:00:00",
                ))
            },
            status: 200,
            events: 1,
            outcome: Some("applied"),
            members: |m| set_status(m, 1, "unsubscribed"),
            ..BASE
        },
        Case {
            name: "signed unsubscribe dated 9999 is dated at receipt",
            covers: &["unsubscribe"],
            setup: Setup::Signed,
            request: |env| {
                signed_hook(unsubscribe(
                    &env.list,
                    "m2@example.org",
                    "manual",
                    "9999-12-31 23:59:59",
                ))
            },
            status: 200,
            events: 1,
            outcome: Some("applied"),
            members: |m| set_status(m, 2, "unsubscribed"),
            ..BASE
        },
        // --- Mailchimp Transactional ---------------------------------------------------------
        Case {
            name: "transactional batch without a signature",
            covers: &["/webhooks/mailchimp-transactional", "hard_bounce"],
            request: |_| mandrill(&mandrill_event("hard_bounce", "m1@example.org"), None),
            status: 401,
            code: Some("bad_signature"),
            ..BASE
        },
        Case {
            name: "transactional batch signed with the validation key `test-webhook`",
            covers: &["/webhooks/mailchimp-transactional", "spam"],
            request: |_| {
                mandrill(
                    &mandrill_event("spam", "m1@example.org"),
                    Some("test-webhook"),
                )
            },
            status: 401,
            code: Some("bad_signature"),
            ..BASE
        },
        Case {
            name: "transactional JSON nested 10,000 levels",
            covers: &["/webhooks/mailchimp-transactional"],
            request: |_| {
                let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
                mandrill_raw(deep, Some(MANDRILL_KEY))
            },
            status: 400,
            code: Some("too_deep"),
            ..BASE
        },
        Case {
            name: "transactional batch of 1,001 events",
            covers: &["/webhooks/mailchimp-transactional"],
            request: |_| {
                let one = json!({"event": "open", "ts": 1, "msg": {"email": "a@example.org"}});
                mandrill(&Value::Array(vec![one; 1001]), Some(MANDRILL_KEY))
            },
            status: 400,
            code: Some("too_many_events"),
            ..BASE
        },
        Case {
            name: "signed hard bounce suppresses and marks the member",
            covers: &["hard_bounce"],
            request: |_| signed_event("hard_bounce", "m5@example.org"),
            status: 200,
            events: 1,
            outcome: Some("applied"),
            members: |m| set_status(m, 5, "cleaned"),
            suppressed: &["m5@example.org"],
            ..BASE
        },
        Case {
            name: "signed soft bounce: counted, not yet suppressed",
            covers: &["soft_bounce"],
            setup: Setup::Signed,
            request: |_| signed_event("soft_bounce", "m3@example.org"),
            status: 200,
            events: 1,
            outcome: Some("applied"),
            ..BASE
        },
        Case {
            name: "signed reject suppresses",
            covers: &["reject"],
            setup: Setup::Signed,
            request: |_| signed_event("reject", "nobody@example.net"),
            status: 200,
            events: 1,
            outcome: Some("unmatched"),
            suppressed: &["nobody@example.net"],
            ..BASE
        },
        Case {
            name: "signed spam complaint suppresses and marks the member",
            covers: &["spam"],
            setup: Setup::Signed,
            request: |_| signed_event("spam", "m4@example.org"),
            status: 200,
            events: 1,
            outcome: Some("applied"),
            members: |m| set_status(m, 4, "complained"),
            suppressed: &["m4@example.org"],
            ..BASE
        },
        Case {
            name: "signed unsub marks the member, suppresses nobody",
            covers: &["unsub"],
            setup: Setup::Signed,
            request: |_| signed_event("unsub", "m3@example.org"),
            status: 200,
            events: 1,
            outcome: Some("applied"),
            members: |m| set_status(m, 3, "unsubscribed"),
            ..BASE
        },
        // --- Transactional messages -----------------------------------------------------------
        Case {
            name: "a message without the API token",
            covers: &["/v1/messages"],
            request: |_| message(None, None, "Password reset"),
            status: 401,
            code: Some("unauthorized"),
            ..BASE
        },
        Case {
            name: "a retry after a lost 202 queues nothing more",
            covers: &["/v1/messages"],
            first: Some(|_| message(Some("reset-42"), Some(TOKEN), "Password reset")),
            request: |_| message(Some("reset-42"), Some(TOKEN), "Password reset"),
            status: 202,
            metric: Some("mailbridge_relay_idempotent_replays_total"),
            ..BASE
        },
        Case {
            name: "another message under a used idempotency key",
            covers: &["/v1/messages"],
            first: Some(|_| message(Some("reset-43"), Some(TOKEN), "Password reset")),
            request: |_| message(Some("reset-43"), Some(TOKEN), "Something else"),
            status: 409,
            code: Some("idempotency_key_reused"),
            ..BASE
        },
        Case {
            name: "an idempotency key of 300 characters",
            covers: &["/v1/messages"],
            request: |_| message(Some(&"k".repeat(300)), Some(TOKEN), "Password reset"),
            status: 400,
            code: Some("invalid_idempotency_key"),
            ..BASE
        },
        Case {
            name: "a first message with a key is queued once",
            covers: &["/v1/messages"],
            request: |_| message(Some("welcome-7"), Some(TOKEN), "Welcome"),
            status: 202,
            queued: 1,
            ..BASE
        },
    ]
}

#[test]
fn every_route_and_event_type_has_a_case() {
    let cases = cases();
    let covered = |what: &str| cases.iter().any(|c| c.covers.contains(&what));
    for route in mailbridge::http::webhooks::ROUTES {
        assert!(covered(route), "webhook route {route} has no attack case");
    }
    for kind in MAILCHIMP_TYPES.iter().chain(MANDRILL_TYPES.iter()) {
        assert!(covered(kind), "event type {kind} has no attack case");
    }
}

async fn members(env: &Env) -> Vec<MemberRow> {
    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT id, email, CAST(newsletter AS INTEGER), email_status FROM members ORDER BY id",
    )
    .fetch_all(&env.members)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, email, n, status)| (id, email, n != 0, status))
        .collect()
}

async fn suppressions(env: &Env) -> Vec<String> {
    sqlx::query_scalar("SELECT email FROM suppressions ORDER BY email")
        .fetch_all(&env.state)
        .await
        .unwrap()
}

/// The state DB's contacts: member key, email, remote status.
async fn contacts(env: &Env) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT member_key, email, remote_status FROM contacts ORDER BY member_key")
        .fetch_all(&env.state)
        .await
        .unwrap()
}

async fn send(env: &Env, req: Request) -> reqwest::Response {
    let mut builder = env
        .http
        .post(format!("{}{}", env.base, req.path))
        .body(req.body);
    if !req.headers.iter().any(|(k, _)| *k == "content-type") {
        builder = builder.header("content-type", "application/x-www-form-urlencoded");
    }
    for (k, v) in req.headers {
        builder = builder.header(k, v);
    }
    builder.send().await.unwrap()
}

async fn run(setup: Setup, pg_state: bool) {
    let env = Env::start(Options {
        signing_secret: (setup == Setup::Signed).then(|| SIGNING.to_owned()),
        pg_state,
        extra_server: "\n[relay]\nfrom = \"Riverside Rowing Club <club@club.example>\"\n".into(),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    for case in cases().into_iter().filter(|c| c.setup == setup) {
        let name = case.name;
        if let Some(first) = case.first {
            let response = send(&env, first(&env)).await;
            let status = response.status();
            let told = response.text().await.unwrap_or_default();
            assert!(
                status.is_success(),
                "{name}: the first request got {status}: {told}"
            );
        }
        let mut want_members = members(&env).await;
        let suppressed_before = suppressions(&env).await;
        let events_before = env.event_count().await;
        let outbox_before = env.state_count("SELECT COUNT(*) FROM outbox").await;
        let contacts_before = contacts(&env).await;
        let sent_at = chrono::Utc::now();

        let response = send(&env, (case.request)(&env)).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, case.status, "{name}: told {body}");
        if let Some(code) = case.code {
            assert_eq!(body["error"]["code"], code, "{name}: told {body}");
        }

        // Whatever was stored has been dealt with by the writeback worker.
        env.wait_state_count(
            &format!("{name}: events applied"),
            "SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL",
            0,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(
            env.event_count().await - events_before,
            case.events,
            "{name}: events recorded"
        );
        if let Some(outcome) = case.outcome {
            let (got, fired): (Option<String>, String) = sqlx::query_as(
                "SELECT outcome, fired_at FROM provider_events ORDER BY id DESC LIMIT 1",
            )
            .fetch_one(&env.state)
            .await
            .unwrap();
            assert_eq!(got.as_deref(), Some(outcome), "{name}: outcome");
            // No stored time is later than a few minutes after receipt.
            let fired = chrono::DateTime::parse_from_rfc3339(&fired).unwrap();
            assert!(
                fired <= sent_at + chrono::Duration::minutes(5),
                "{name}: fired_at {fired} is in the future"
            );
        }
        (case.members)(&mut want_members);
        assert_eq!(members(&env).await, want_members, "{name}: member DB");
        let mut want_suppressed = suppressed_before;
        want_suppressed.extend(case.suppressed.iter().map(|s| (*s).to_owned()));
        want_suppressed.sort();
        assert_eq!(
            suppressions(&env).await,
            want_suppressed,
            "{name}: suppressions"
        );
        assert_eq!(
            env.state_count("SELECT COUNT(*) FROM outbox").await - outbox_before,
            case.queued,
            "{name}: outbox"
        );
        if case.outcome != Some("applied") {
            assert_eq!(contacts(&env).await, contacts_before, "{name}: contacts");
        }
        if let Some(line) = case.metric {
            let metrics = env.metrics().await;
            assert!(metrics.contains(line), "{name}: /metrics lacks {line}");
        }
        let health = env.healthz().await;
        assert_eq!(health.status(), StatusCode::OK, "{name}: /healthz");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_a_server_without_signing() {
    run(Setup::Unsigned, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_a_server_with_a_signing_secret() {
    run(Setup::Signed, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_a_server_with_a_postgres_state_db() {
    run(Setup::Unsigned, true).await;
    run(Setup::Signed, true).await;
}

/// An unsigned delivery that the provider bears out is applied, with the provider's version:
/// here the reader really unsubscribed at the provider, and the forged-looking hint says it was
/// a spam complaint dated 9999; what lands is a plain unsubscribe at the provider's time, and no
/// suppression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_hint_the_provider_confirms_applies_what_the_provider_says() {
    let env = Env::start(Options::default()).await;
    env.sync_plain();
    env.sim
        .member_action(&env.list, "m2@example.org", "unsubscribe")
        .await;
    let body = unsubscribe(&env.list, "m2@example.org", "abuse", "9999-12-31 23:59:59");
    let r = send(&env, hook(body)).await;
    assert_eq!(r.status(), StatusCode::OK);
    env.wait_member_status(2, "unsubscribed").await;
    // The member row is written before the event's outcome is recorded: wait for the outcome.
    assert_eq!(
        env.outcome_of("m2@example.org", "unsubscribed")
            .await
            .as_deref(),
        Some("applied")
    );
    let (kind, verified, fired, outcome): (String, i64, String, String) = sqlx::query_as(
        "SELECT event_type, verified, fired_at, outcome FROM provider_events WHERE email = 'm2@example.org'",
    )
    .fetch_one(&env.state)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), verified, outcome.as_str()),
        ("unsubscribed", 1, "applied")
    );
    assert!(!fired.starts_with("9999"), "{fired}");
    assert_eq!(env.suppression("m2@example.org").await, None);
    assert_eq!(env.remote_status(2).await, "unsubscribed");
    // Member 2's merge key named nobody else: member 1 is untouched.
    assert_eq!(env.member_status(1).await.0, "ok");
    env.stop().await;
}

/// `sync` registering the webhook stores the signing secret Mailchimp returns; from then on an
/// unsigned delivery for that list is refused, and the simulator's signed deliveries land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registered_webhook_s_signing_secret_is_stored_and_required_sqlite_state() {
    signing_secret_is_stored_and_required(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registered_webhook_s_signing_secret_is_stored_and_required_postgres_state() {
    signing_secret_is_stored_and_required(true).await;
}

async fn signing_secret_is_stored_and_required(pg_state: bool) {
    let env = Env::start(Options {
        pg_state,
        ..Options::default()
    })
    .await;
    env.sync(); // registers the webhook (public_url is set for the CLI run)
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT list_id, secret FROM webhook_signing_secrets")
            .fetch_all(&env.state)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].0, env.list);
    assert!(stored[0].1.len() >= 16);
    // The secret never reaches the sync's output.
    let out = env.sync();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(&stored[0].1), "the secret leaked: {text}");
    let body = unsubscribe(&env.list, "m1@example.org", "manual", "2026-12-01 10:00:00");
    let r = send(&env, hook(body)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.event_count().await, 0);
    env.sim
        .member_action(&env.list, "m1@example.org", "unsubscribe")
        .await;
    env.wait_member_status(1, "unsubscribed").await;
    let verified: i64 = sqlx::query_scalar(
        "SELECT verified FROM provider_events WHERE email = 'm1@example.org' AND event_type = 'unsubscribed'",
    )
    .fetch_one(&env.state)
    .await
    .unwrap();
    assert_eq!(verified, 1);
    env.stop().await;
}

/// While Mailchimp cannot be asked, an unsigned event waits (backed off, nothing applied, nothing
/// suppressed), and the round's other unsigned events wait with it instead of each retrying;
/// once Mailchimp answers again the hint is confirmed and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_events_wait_while_mailchimp_cannot_be_asked() {
    let env = Env::start(Options::default()).await;
    env.sync_plain();
    env.sim
        .member_action(&env.list, "m3@example.org", "clean")
        .await;
    let r = env.sim.set_faults(json!({"rate_500": 1.0})).await;
    assert!(r.status().is_success());
    // Six unsigned events: two chunks of confirmations.
    let strangers: Vec<String> = (1..=3).map(|i| format!("x{i}@example.net")).collect();
    let emails = ["m3@example.org", "m4@example.org", "m5@example.org"]
        .into_iter()
        .chain(strangers.iter().map(String::as_str));
    for email in emails {
        let body = form(&[
            ("type", "cleaned"),
            ("fired_at", "2026-12-01 10:00:00"),
            ("data[list_id]", &env.list),
            ("data[reason]", "hard"),
            ("data[email]", email),
        ]);
        let r = send(&env, hook(body)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    env.wait_state_count(
        "the failed confirmations to be recorded",
        "SELECT COUNT(*) FROM provider_events WHERE last_error IS NOT NULL AND next_attempt_at IS NOT NULL",
        6,
        // The client retries each read 5 times with back-off: a few seconds a round.
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL")
            .await,
        6
    );
    assert!(suppressions(&env).await.is_empty());
    assert_eq!(env.member_status(3).await.0, "ok");
    // Mailchimp was asked, and refused every read.
    let stats = env.sim.sim_json(reqwest::Method::GET, "/stats").await;
    assert!(
        stats["by_route"]["GET /3.0/lists/{list_id}/members/{subscriber_hash}"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{stats}"
    );
    // Mailchimp answers again: m3 (really cleaned) is confirmed; the others are not.
    env.sim.set_faults(json!({"rate_500": 0.0})).await;
    env.wait_state_count(
        "the events to be applied",
        "SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL",
        0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(suppressions(&env).await, vec!["m3@example.org".to_owned()]);
    assert_eq!(env.member_status(3).await.0, "cleaned");
    assert_eq!(env.member_status(4).await.0, "ok");
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("SELECT email, outcome FROM provider_events ORDER BY email")
            .fetch_all(&env.state)
            .await
            .unwrap();
    let mut want = vec![
        ("m3@example.org".to_owned(), "applied".to_owned()),
        ("m4@example.org".to_owned(), "not_confirmed".to_owned()),
        ("m5@example.org".to_owned(), "not_confirmed".to_owned()),
    ];
    want.extend(
        strangers
            .iter()
            .map(|e| (e.clone(), "not_confirmed".to_owned())),
    );
    want.sort();
    assert_eq!(outcomes, want);
    env.stop().await;
}
