//! The exact requests of a small real sync, pinned with wiremock: merge fields created first,
//! one batch-subscribe with `update_existing`, the status chosen per member (subscribed, or pending
//! after a re-consent), merge fields with the member key in MBRKEY, the owned tags, the archive
//! DELETE, and a per-member batch error recorded in `sync_errors` and the report (exit 3), then
//! skipped on the next run until the member row changes.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use sqlx::AnyPool;
use support::{ConfigFile, db};
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const LIST: &str = "L1";

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

fn member(email: &str, status: &str, key: &str) -> Value {
    json!({
        "id": md5_hex(email),
        "email_address": email,
        "status": status,
        "last_changed": "2026-06-01T10:00:00+00:00",
        "merge_fields": {"MBRKEY": key},
    })
}

async fn mount(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path(format!("/lists/{LIST}/members")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"members": [], "total_items": 0})),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/lists/{LIST}/merge-fields")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "merge_fields": [
                {"merge_id": 1, "tag": "FNAME", "name": "First Name", "type": "text"},
                {"merge_id": 2, "tag": "LNAME", "name": "Last Name", "type": "text"}
            ],
            "total_items": 2
        })))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/lists/{LIST}/merge-fields")))
        .respond_with(|req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            ResponseTemplate::new(200).set_body_json(json!({
                "merge_id": 9, "tag": body["tag"], "name": body["name"], "type": body["type"]
            }))
        })
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/lists/{LIST}")))
        .and(body_partial_json(json!({"update_existing": true})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "new_members": [
                member("m1@example.org", "subscribed", "1"),
                member("m3@example.org", "pending", "3")
            ],
            "updated_members": [],
            "errors": [{
                "email_address": "m2@example.org",
                "error": "m2@example.org looks fake or invalid, please enter a real email address.",
                "error_code": "ERROR_GENERIC",
                "field": "",
                "field_message": ""
            }],
            "total_created": 2, "total_updated": 0, "error_count": 1
        })))
        .mount(server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!(
            "/lists/{LIST}/members/{}",
            md5_hex("gone@example.org")
        )))
        .respond_with(ResponseTemplate::new(204))
        .mount(server)
        .await;
}

async fn setup(dir: &Path, server: &MockServer) -> std::path::PathBuf {
    sqlx::any::install_default_drivers();
    let config = ConfigFile::new("sqlite://state.db", "sqlite://members.db")
        .mailchimp("secret-key-that-must-not-leak", Some(&server.uri()), "")
        .audience(LIST, "")
        .write(dir);
    std::fs::File::create(dir.join("members.db")).unwrap();
    let members = AnyPool::connect(&format!("sqlite://{}", dir.join("members.db").display()))
        .await
        .unwrap();
    for sql in [
        mailbridge::demo::sample::schema_sql(mailbridge::config::DbKind::Sqlite),
        "INSERT INTO members VALUES
           (1, 'm1@example.org', 'Ann', 'Lee', 'family', TRUE, 'ok', '2026-01-01 00:00:00'),
           (2, 'm2@example.org', 'Bob', 'Fake', 'full', TRUE, 'ok', '2026-01-01 00:00:00'),
           (3, 'm3@example.org', 'Cy', 'Back', 'junior', TRUE, 'ok', '2026-07-01 00:00:00')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&members)
            .await
            .unwrap();
    }
    members.close().await;
    let out = db::run_binary(&config, &["migrate"]).await;
    assert!(out.status.success());
    // The state before this run: m3 unsubscribed at the provider in May (recorded by a pull, so
    // verified, and applied;
    // it has no contact row), a sync saw its consent withheld in June, and the member DB says
    // consent given now (its updated_at alone would prove nothing); `gone` was synced and has
    // left the member DB.
    let state = AnyPool::connect(&format!("sqlite://{}", dir.join("state.db").display()))
        .await
        .unwrap();
    for sql in [
        "INSERT INTO provider_events (dedupe_key, provider, audience, list_id, event_type, email, member_key, fired_at, payload, received_at, applied_at, verified)
         VALUES ('k1', 'mailchimp', 'newsletter', 'L1', 'unsubscribed', 'm3@example.org', NULL, '2026-05-01T00:00:00.000Z', '{}', '2026-05-01T00:00:00.000Z', '2026-05-01T00:00:00.000Z', 1)",
        "INSERT INTO contacts (audience, member_key, email, remote_id, content_hash, remote_status, synced_at)
         VALUES ('newsletter', '9', 'gone@example.org', NULL, 'x', 'subscribed', '2026-01-01T00:00:00.000Z')",
        "INSERT INTO cursors (audience, name, position, updated_at) VALUES ('newsletter', 'mailchimp.members', '2026-05-01T00:00:00.000Z', '2026-05-01T00:00:00.000Z')",
        "INSERT INTO consent_seen (audience, member_key, consent, seen_at, withheld_at) VALUES ('newsletter', '3', 'withheld', '2026-06-01T00:00:00.000Z', '2026-06-01T00:00:00.000Z')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&state).await.unwrap();
    }
    state.close().await;
    config
}

async fn sync(config: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let args: Vec<&str> = ["sync", "--json"].iter().chain(extra).copied().collect();
    let out = db::run_binary(config, &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report =
        serde_json::from_str(stdout.lines().next().unwrap_or("null")).unwrap_or(Value::Null);
    (out.status.code(), report, format!("{stdout}\n{stderr}"))
}

#[tokio::test]
async fn a_small_sync_sends_exactly_these_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    mount(&server).await;
    let config = setup(dir.path(), &server).await;

    // One contact in the state DB and it is archived: past the guardrail on purpose.
    let (code, report, output) = sync(&config, &["--allow-mass-archive"]).await;
    assert_eq!(code, Some(3), "{output}");
    assert!(!output.contains("secret-key-that-must-not-leak"));

    let requests = server.received_requests().await.unwrap();
    for r in &requests {
        let auth = r.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.starts_with("Basic "), "{auth}");
    }
    let bodies = |m: &str, p: &str| -> Vec<Value> {
        requests
            .iter()
            .filter(|r| r.method.as_str() == m && r.url.path() == p)
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    };
    // Pull first: unsubscribed, cleaned, pending since the cursor (2026-05-01T00:00:00), less the
    // pull's overlap of 10 minutes.
    let pulls: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.url.path() == "/lists/L1/members")
        .collect();
    assert_eq!(pulls.len(), 3);
    assert!(pulls.iter().all(|r| {
        r.url
            .query_pairs()
            .any(|(k, v)| k == "since_last_changed" && v.starts_with("2026-04-30T23:50:00"))
    }));
    let first_write = requests
        .iter()
        .position(|r| r.method.as_str() != "GET")
        .unwrap();
    assert!(
        requests[..first_write]
            .iter()
            .filter(|r| r.url.path() == "/lists/L1/members")
            .count()
            == 3,
        "the pull happens before any write"
    );

    assert_eq!(
        bodies("POST", "/lists/L1/merge-fields"),
        vec![
            json!({"tag": "MTYPE", "name": "Membership", "type": "text"}),
            json!({"tag": "MBRKEY", "name": "Member key", "type": "text"}),
        ]
    );
    let batches = bodies("POST", "/lists/L1");
    assert_eq!(batches.len(), 1);
    assert_eq!(
        batches[0],
        json!({
            "members": [
                {"email_address": "m1@example.org", "status": "subscribed",
                 "merge_fields": {"FNAME": "Ann", "LNAME": "Lee", "MTYPE": "family", "MBRKEY": "1"},
                 "tags": ["family"]},
                {"email_address": "m2@example.org", "status": "subscribed",
                 "merge_fields": {"FNAME": "Bob", "LNAME": "Fake", "MTYPE": "full", "MBRKEY": "2"},
                 "tags": ["full"]},
                {"email_address": "m3@example.org", "status": "pending",
                 "merge_fields": {"FNAME": "Cy", "LNAME": "Back", "MTYPE": "junior", "MBRKEY": "3"},
                 "tags": ["junior"]}
            ],
            "update_existing": true,
            "sync_tags": false
        })
    );
    let deletes: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].url.path(),
        format!("/lists/L1/members/{}", md5_hex("gone@example.org"))
    );

    assert_eq!(report["created"], 2);
    assert_eq!(report["archived"], 1);
    assert_eq!(report["failed"], 1);
    assert_eq!(report["errors"][0]["member_key"], "2");
    assert_eq!(report["errors"][0]["email"], "m2@example.org");
    assert_eq!(report["errors"][0]["code"], "provider_invalid_email");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("looks fake")
    );
    assert_eq!(
        report["api_calls"]["write"], 4,
        "2 merge fields, 1 batch, 1 archive"
    );

    let state = AnyPool::connect(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();
    let errors: Vec<(String, String, String)> =
        sqlx::query_as("SELECT member_key, email, code FROM sync_errors")
            .fetch_all(&state)
            .await
            .unwrap();
    assert_eq!(
        errors,
        vec![(
            "2".to_owned(),
            "m2@example.org".to_owned(),
            "provider_invalid_email".to_owned()
        )]
    );
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT member_key, remote_status FROM contacts ORDER BY member_key")
            .fetch_all(&state)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![
            ("1".to_owned(), "subscribed".to_owned()),
            ("3".to_owned(), "pending".to_owned()),
            ("9".to_owned(), "archived".to_owned()),
        ]
    );

    // The run recorded that it saw m3's consent given (the withheld observation stays).
    let seen: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT member_key, consent, withheld_at FROM consent_seen ORDER BY member_key",
    )
    .fetch_all(&state)
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![(
            "3".to_owned(),
            "given".to_owned(),
            "2026-06-01T00:00:00.000Z".to_owned()
        )]
    );

    // Next run: the invalid address is skipped (not sent) until its row changes; nothing to do.
    server.reset().await;
    mount(&server).await;
    let (code, report, output) = sync(&config, &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(report["skipped_invalid"], 1);
    let requests = server.received_requests().await.unwrap();
    // (This mock does not remember the merge fields created above, so they are created again.)
    assert!(
        requests
            .iter()
            .all(|r| r.method.as_str() == "GET" || r.url.path() == "/lists/L1/merge-fields"),
        "no member write: {:?}",
        requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.url))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_merge_field_of_another_type_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/lists/{LIST}/merge-fields")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "merge_fields": [{"merge_id": 3, "tag": "MTYPE", "name": "Member type", "type": "number"}],
            "total_items": 1
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/lists/{LIST}/members")))
        .and(query_param("count", "1000"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"members": [], "total_items": 0})),
        )
        .mount(&server)
        .await;
    let config = setup(dir.path(), &server).await;
    let (code, _, output) = sync(&config, &["--allow-mass-archive"]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("MTYPE")
            && output.contains("`text`")
            && output.contains("`number`")
            && output.contains("Member type"),
        "{output}"
    );
    let requests = server.received_requests().await.unwrap();
    assert!(requests.iter().all(|r| r.method.as_str() == "GET"));
}
