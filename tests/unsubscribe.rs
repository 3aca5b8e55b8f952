//! RFC 8058 one-click unsubscribe (issue 19) on the real server: the header pair on notification
//! mail only, `POST /u/{token}` recording the opt-out durably before its 200 (idempotent),
//! `GET /u/{token}` never unsubscribing, wrong bodies and tampered or replayed tokens refused,
//! the opt-out written back to the member DB and holding notifications back while password mail
//! still flows, and a mailed `unsubscribe+TOKEN@` through `POST /v1/bounces` doing the same.
//! SQLite and PostgreSQL state DBs (PostgreSQL falls back to SQLite outside CI).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use data_encoding::BASE32_DNSSEC;
use mailbridge::domain::Email;
use mailbridge::relay::Category;
use mailbridge::relay::unsubscribe::{mail_token, token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::serve::*;

const UNSUB_SECRET: &str = "unsubscribe-secret-for-tests";
const BOUNCE_DOMAIN: &str = "bounces.club.example";

async fn start(pg_state: bool) -> Env {
    Env::start(Options {
        pg_state,
        extra_server: "public_url = \"https://mail.club.example\"\n".into(),
        relay: Some(format!(
            "routes = [\"sendmail\"]\nsendmail_path = \"/nonexistent/sendmail\"\nbounce_domain = \"{BOUNCE_DOMAIN}\"\nverp_secret = \"verp-secret\"\nunsubscribe_secret = \"{UNSUB_SECRET}\"\n"
        )),
        ..Options::default()
    })
    .await
}

/// A sync from a config without the https `public_url` (the simulator would try to reach it
/// to register its webhook).
fn sync(env: &Env) {
    let text = env
        .config_text
        .replace("public_url = \"https://mail.club.example\"\n", "");
    let path = env.dir.join("sync.toml");
    std::fs::write(&path, text).unwrap();
    // Two of five members opting out is past the mass-archive guardrail's 10%.
    let out = std::process::Command::new(support::db::binary())
        .arg("--config")
        .arg(&path)
        .args(["sync", "--allow-mass-archive"])
        .env("MAILBRIDGE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Enqueues a message; returns its outbox id.
async fn send(env: &Env, to: &str, category: &str) -> String {
    let res = env
        .api(Method::POST, "/v1/messages")
        .json(&json!({"to": to, "subject": "Club news", "text": "Hello", "category": category}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The stored bytes of message `id`, unfolded.
async fn stored(env: &Env, id: &str) -> String {
    let (raw,): (Vec<u8>,) = sqlx::query_as("SELECT raw FROM outbox_bodies WHERE id = $1")
        .bind(id)
        .fetch_one(&env.state)
        .await
        .unwrap();
    String::from_utf8(raw).unwrap().replace("\r\n ", " ")
}

async fn status_of(env: &Env, id: &str) -> Value {
    env.api_json(&format!("/v1/messages/{id}")).await
}

async fn opt_outs(env: &Env, email: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM unsubscribes WHERE email = $1")
        .bind(email)
        .fetch_one(&env.state)
        .await
        .unwrap()
}

async fn post_u(env: &Env, token: &str, content_type: &str, body: &str) -> reqwest::Response {
    env.http
        .post(format!("{}/u/{token}", env.base))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

const FORM: &str = "application/x-www-form-urlencoded";
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

async fn one_click(pg_state: bool) {
    let env = start(pg_state).await;
    // The member DB's members become contacts: the state DB ties addresses to members.
    sync(&env);

    // Headers: on a notification, not on registration or password mail.
    let note = send(&env, "m1@example.org", "notification").await;
    let text = stored(&env, &note).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: "))
        .unwrap_or_else(|| panic!("no List-Unsubscribe: {text}"));
    let tok = line
        .split("/u/")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap()
        .to_owned();
    // The mailto link names the message (a local part holds at most 64 octets).
    let mail_tok = mail_token(UNSUB_SECRET.as_bytes(), &note);
    assert_eq!(
        line,
        format!(
            "List-Unsubscribe: <https://mail.club.example/u/{tok}>, <mailto:unsubscribe+{mail_tok}@{BOUNCE_DOMAIN}>"
        )
    );
    assert!(format!("unsubscribe+{mail_tok}").len() <= 64);
    assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    for category in ["registration", "password"] {
        let id = send(&env, "m1@example.org", category).await;
        assert!(!stored(&env, &id).await.contains("List-Unsubscribe"));
    }

    // GET shows a page with the button and never unsubscribes.
    let page = env
        .http
        .get(format!("{}/u/{tok}", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("m1@example.org"), "{html}");
    assert!(
        html.contains("<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"),
        "{html}"
    );
    assert_eq!(opt_outs(&env, "m1@example.org").await, 0);

    // A wrong body is 400 and changes nothing.
    for (ct, body) in [
        (FORM, ""),
        (FORM, "List-Unsubscribe=One-Click&also=this"),
        ("application/json", "{}"),
    ] {
        assert_eq!(
            post_u(&env, &tok, ct, body).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(opt_outs(&env, "m1@example.org").await, 0);

    // Tampered tokens, a token under another key, and Ana's MAC replayed for another address
    // or category: 404, with nothing said about why, and nothing recorded.
    let mut bytes = BASE32_DNSSEC.decode(tok.as_bytes()).unwrap();
    bytes.truncate(bytes.len() - "m1@example.org".len());
    bytes.extend_from_slice(b"m2@example.org");
    let replayed = BASE32_DNSSEC.encode(&bytes);
    let mut other_category = BASE32_DNSSEC.decode(tok.as_bytes()).unwrap();
    other_category[1] = b'p';
    let other_category = BASE32_DNSSEC.encode(&other_category);
    let m3 = Email::parse("m3@example.org").unwrap();
    let foreign = token(b"not the secret", &m3, Category::Notification).unwrap();
    let flipped = format!(
        "{}{}",
        &tok[..tok.len() - 1],
        if tok.ends_with('a') { 'b' } else { 'a' }
    );
    for bad in [&replayed, &other_category, &foreign, &flipped, "nonsense"] {
        let res = post_u(&env, bad, FORM, ONE_CLICK).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{bad}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("mac") && !body.contains(bad), "{body}");
    }
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM unsubscribes").await,
        0
    );

    // The one-click POST: durable before the 200.
    let res = post_u(&env, &tok, FORM, ONE_CLICK).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(opt_outs(&env, "m1@example.org").await, 1);
    let events = "SELECT COUNT(*) FROM provider_events WHERE provider = 'one_click'";
    assert_eq!(env.state_count(events).await, 1);
    // Twice: still 200, nothing more.
    let multipart = "--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b0undary--\r\n";
    let res = post_u(
        &env,
        &tok,
        "multipart/form-data; boundary=b0undary",
        multipart,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(opt_outs(&env, "m1@example.org").await, 1);
    assert_eq!(env.state_count(events).await, 1);

    // Written back to the member DB through the mapping, like a provider's unsubscribe.
    wait_until("the write-back", Duration::from_secs(10), || async {
        !env.member_status(1).await.1
    })
    .await;
    env.assert_outcome("m1@example.org", "unsubscribed", "applied")
        .await;
    let listed = env.api_json("/v1/events").await;
    assert!(
        listed["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["provider"] == "one_click"
                && e["email"] == "m1@example.org"
                && e["reason"] == "notification"),
        "{listed}"
    );

    // The next notification is held back; password mail still flows.
    let held = send(&env, "m1@example.org", "notification").await;
    let held = status_of(&env, &held).await;
    assert_eq!(held["status"], "suppressed", "{held}");
    assert!(
        held["last_reply"]
            .as_str()
            .unwrap()
            .contains("unsubscribed"),
        "{held}"
    );
    let password = send(&env, "m1@example.org", "password").await;
    assert_ne!(status_of(&env, &password).await["status"], "suppressed");
    // Another member's notifications are untouched.
    let other = send(&env, "m2@example.org", "notification").await;
    assert_ne!(status_of(&env, &other).await["status"], "suppressed");

    // A mailed request to the mailto link of m2's notification, through the bounce path, does
    // the same; one whose token was made with another key, or that names a password mail (no one
    // opts out of those), changes nothing.
    let m3_note = send(&env, "m3@example.org", "notification").await;
    let m3_password = send(&env, "m3@example.org", "password").await;
    let t2 = mail_token(UNSUB_SECRET.as_bytes(), &other);
    let mail = format!(
        "From: m2@example.org\r\nTo: <unsubscribe+{t2}@{BOUNCE_DOMAIN}>\r\nSubject: unsubscribe\r\nMessage-ID: <u2@example.org>\r\n\r\nplease\r\n"
    );
    let forged = format!(
        "From: m3@example.org\r\nDelivered-To: unsubscribe+{}@{BOUNCE_DOMAIN}\r\nTo: club@club.example\r\nSubject: unsubscribe\r\nMessage-ID: <u3@example.org>\r\n\r\nplease\r\n",
        mail_token(b"not the secret", &m3_note)
    );
    let not_opt_out = format!(
        "From: m3@example.org\r\nTo: <unsubscribe+{}@{BOUNCE_DOMAIN}>\r\nSubject: unsubscribe\r\nMessage-ID: <u4@example.org>\r\n\r\nplease\r\n",
        mail_token(UNSUB_SECRET.as_bytes(), &m3_password)
    );
    for raw in [&mail, &forged, &not_opt_out] {
        let res = env
            .api(Method::POST, "/v1/bounces")
            .header("content-type", "message/rfc822")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    env.wait_state_count(
        "the bounce worker",
        "SELECT COUNT(*) FROM bounce_messages WHERE processed_at IS NOT NULL",
        3,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(opt_outs(&env, "m2@example.org").await, 1);
    assert_eq!(opt_outs(&env, "m3@example.org").await, 0);
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM bounce_messages WHERE outcome = 'refused'")
            .await,
        2
    );
    wait_until("the mailed write-back", Duration::from_secs(10), || async {
        !env.member_status(2).await.1
    })
    .await;
    assert!(
        env.member_status(3).await.1,
        "the forged request changed nothing"
    );

    // The provider audience gets the unsubscribe at the next sync, and no sync re-subscribes.
    sync(&env);
    sync(&env);
    let members = env.sim.sim_members(&env.list).await;
    for email in ["m1@example.org", "m2@example.org"] {
        let status = members
            .iter()
            .find(|m| m["email_address"] == email)
            .map(|m| m["status"].clone());
        assert_ne!(status, Some(json!("subscribed")), "{email}: {members:?}");
    }
    assert!(
        members
            .iter()
            .any(|m| m["email_address"] == "m3@example.org" && m["status"] == "subscribed")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_sqlite_state() {
    one_click(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_postgres_state() {
    one_click(true).await;
}
