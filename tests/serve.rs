//! `mailbridge serve` (issue 5): the real HTTP server on port 0 with SQLite and PostgreSQL state
//! DBs and a real member DB; the simulator delivers real webhooks to it. Each rule of the issue
//! has a test here that fails without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge::demo::sample;
use mailbridge::providers::mailchimp::webhook::{mailchimp_signature, mandrill_signature};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::AnyPool;
use support::serve::*;
use support::{app, db};

/// Simulator → webhook → member DB, end to end: the sync registers the webhook, a reader
/// unsubscribes and an address is cleaned at the "provider"; both land in the member DB.
async fn end_to_end(pg_state: bool) {
    let env = Env::start(Options {
        pg_state,
        ..Options::default()
    })
    .await;
    env.sync();
    let webhooks = format!("/lists/{}/webhooks", env.list);
    let hooks = env.sim.get_json(&webhooks).await;
    assert_eq!(hooks["total_items"], 1, "exactly one webhook: {hooks}");
    assert_eq!(hooks["webhooks"][0]["url"], env.hook_url());
    assert_eq!(hooks["webhooks"][0]["sources"]["api"], false);
    // A second sync keeps exactly one.
    env.sync();
    let hooks = env.sim.get_json(&webhooks).await;
    assert_eq!(hooks["total_items"], 1);

    // member_action asserts that the simulator took each action.
    env.sim
        .member_action(&env.list, "m2@example.org", "unsubscribe")
        .await;
    let took = env.wait_member_status(2, "unsubscribed").await;
    assert!(!env.member_status(2).await.1, "consent cleared");
    eprintln!("unsubscribe landed in the member DB after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    env.sim
        .member_action(&env.list, "m3@example.org", "clean")
        .await;
    env.wait_member_status(3, "cleaned").await;
    env.assert_outcome("m3@example.org", "cleaned", "applied")
        .await;
    assert_eq!(
        env.suppression("m3@example.org").await.map(|s| s.0),
        Some("hard_bounce".to_owned())
    );
    // The unsubscribe is not a suppression (transactional mail still reaches them).
    assert_eq!(env.suppression("m2@example.org").await, None);
    assert_eq!(env.remote_status(2).await, "unsubscribed");
    assert_eq!(env.remote_status(3).await, "cleaned");
    // The next sync does not re-subscribe them (consent is sacred).
    env.sync();
    let members = env.sim.sim_members(&env.list).await;
    let status_of = |email: &str| {
        members
            .iter()
            .find(|m| m["email_address"] == email)
            .map(|m| m["status"].clone())
    };
    assert_eq!(status_of("m2@example.org"), Some(json!("unsubscribed")));
    assert_eq!(status_of("m3@example.org"), Some(json!("cleaned")));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_webhooks_land_in_the_member_db_sqlite_state() {
    end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_webhooks_land_in_the_member_db_postgres_state() {
    end_to_end(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_secret_validation_get_and_refusals_store_nothing() {
    let env = Env::start(Options::default()).await;
    let ok = env.http.get(env.hook_url()).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let wrong = format!("{}/webhooks/mailchimp/not-the-secret", env.base);
    assert_eq!(
        env.http.get(&wrong).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let form = unsubscribe_form(&env.list, "m1@example.org", "2026-11-28 10:00:00", "manual");
    assert_eq!(
        env.post_form(&wrong, &form, &[]).await.status(),
        StatusCode::NOT_FOUND
    );

    // Malformed bodies: 400 with a JSON error naming the problem.
    let unknown = form.replace("type=unsubscribe", "type=explode");
    let r = env.post_hook(&unknown).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_type");
    let no_email = serde_urlencoded::to_string([
        ("type", "cleaned"),
        ("fired_at", "2026-11-28 10:00:00"),
        ("data[list_id]", env.list.as_str()),
        ("data[reason]", "hard"),
    ])
    .unwrap();
    let r = env.post_hook(&no_email).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_email");
    let r = env.post_hook("%%%not=a&form").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Over 1 MiB: 413.
    let big = format!("{form}&data[merges][BIG]={}", "x".repeat(1024 * 1024 + 10));
    let r = env.post_hook(&big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(env.event_count().await, 0, "refused requests store nothing");
    assert_eq!(env.member_status(1).await.0, "ok");

    // The valid one is stored; its retry is a no-op that still answers 200.
    let r = env.post_hook(&form).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "stored");
    let r = env.post_hook(&form).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    assert_eq!(env.event_count().await, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_are_verified_before_parsing() {
    let env = Env::start(Options {
        signing_secret: Some("whsec-test".into()),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    let form = unsubscribe_form(&env.list, "m1@example.org", "2026-11-28 10:00:00", "manual");
    let now = chrono::Utc::now().timestamp();
    // No signature, wrong secret, stale timestamp: 401, nothing stored.
    assert_eq!(
        env.post_hook(&form).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let signed_as = |secret: &[u8], at: i64, body: &[u8]| {
        let signature = mailchimp_signature(secret, at, body);
        let (env, form) = (&env, &form);
        async move { env.post_hook_signed_as(form, signature).await.status() }
    };
    let forged = signed_as(b"guess", now, form.as_bytes()).await;
    assert_eq!(forged, StatusCode::UNAUTHORIZED);
    let stale = signed_as(b"whsec-test", now - 600, form.as_bytes()).await;
    assert_eq!(stale, StatusCode::UNAUTHORIZED);
    // A signature over another body does not carry over.
    let other = signed_as(b"whsec-test", now, b"type=subscribe").await;
    assert_eq!(other, StatusCode::UNAUTHORIZED);
    assert_eq!(env.event_count().await, 0);
    let good = signed_as(b"whsec-test", now, form.as_bytes()).await;
    assert_eq!(good, StatusCode::OK);
    env.wait_member_status(1, "unsubscribed").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_signs_its_deliveries_and_they_verify() {
    let mut env = Env::start(Options::default()).await;
    env.sync_plain();
    // Register the webhook ourselves to learn the one-time signing secret.
    let created: Value = env
        .sim
        .register_webhook(
            &env.list,
            &env.hook_url(),
            json!({"unsubscribe": true}),
            json!({"user": true, "admin": true, "api": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = created["signing_secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 16);
    // Restart the server on the same port with the secret configured for the audience.
    env.server.take().unwrap().shutdown().await.unwrap();
    let text = env.config_text.replace(
        "list_id = \"",
        &format!("webhook_signing_secret = \"{secret}\"\nlist_id = \""),
    );
    let path = env.dir.join("signed.toml");
    std::fs::write(&path, &text).unwrap();
    let addr = env.base.trim_start_matches("http://").to_owned();
    env.server = Some(app::start_serve(app::load_config(&path), Some(&addr)).await);
    // A reader unsubscribes at the provider.
    env.sim
        .member_action(&env.list, "m4@example.org", "unsubscribe")
        .await;
    let deliveries = env
        .sim
        .wait_for_deliveries("one delivery", |a| !a.is_empty())
        .await;
    assert_eq!(deliveries[0]["status"], 200, "{deliveries:?}");
    env.assert_outcome("m4@example.org", "unsubscribed", "applied")
        .await;
    env.wait_member_status(4, "unsubscribed").await;
    env.stop().await;
}

/// `path` answers 401 to a request without the API token and to one with a wrong token.
async fn assert_needs_the_token(env: &Env, method: Method, path: &str) {
    let url = format!("{}{path}", env.base);
    let request = || env.http.request(method.clone(), &url);
    let without = request().send().await.unwrap();
    assert_eq!(
        without.status(),
        StatusCode::UNAUTHORIZED,
        "{method} {path}"
    );
    let wrong = request().bearer_auth("wrong").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_events_are_stored_and_listed_not_errors() {
    let env = Env::start_signed().await;
    let form = unsubscribe_form(
        &env.list,
        "stranger@example.org",
        "2026-11-28 10:00:00",
        "manual",
    );
    env.deliver_signed(&form).await;
    env.assert_outcome("stranger@example.org", "unsubscribed", "unmatched")
        .await;
    assert_needs_the_token(&env, Method::GET, "/v1/events?unmatched=true").await;
    let listed = env.api_json("/v1/events?unmatched=true").await;
    let events = listed["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["email"], "stranger@example.org");
    assert_eq!(events[0]["outcome"], "unmatched");
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("mailbridge_events_applied_total"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"unmatched\""), "{metrics}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_events_do_not_undo_newer_state() {
    let env = Env::start_signed().await;
    env.sync_plain();
    assert_eq!(env.remote_status(1).await, "subscribed");
    let unsub = unsubscribe_form(&env.list, "m1@example.org", "2026-11-28 10:00:00", "manual");
    env.deliver_signed(&unsub).await;
    env.wait_member_status(1, "unsubscribed").await;
    // An older subscribe arrives late: stored, superseded, no change.
    let old_sub = subscribe_form(&env.list, "m1@example.org", "2026-11-28 09:00:00");
    env.deliver_signed(&old_sub).await;
    env.assert_outcome("m1@example.org", "subscribed", "superseded")
        .await;
    assert_eq!(env.remote_status(1).await, "unsubscribed");
    // A newer subscribe (the member re-subscribed on the provider's form) does apply.
    let new_sub = subscribe_form(&env.list, "m1@example.org", "2026-11-28 11:00:00");
    env.deliver_signed(&new_sub).await;
    wait_until("the newer subscribe", Duration::from_secs(10), || async {
        env.remote_status(1).await == "subscribed"
    })
    .await;
    // An older cleaned still suppresses the address, but does not overwrite the newer status.
    let old_clean = cleaned_form(&env.list, "m1@example.org", "2026-11-28 08:00:00");
    env.deliver_signed(&old_clean).await;
    env.assert_outcome("m1@example.org", "cleaned", "superseded")
        .await;
    assert_eq!(env.remote_status(1).await, "subscribed");
    assert_eq!(env.member_status(1).await.0, "unsubscribed");
    assert!(env.suppression("m1@example.org").await.is_some());
    env.stop().await;
}

/// Posts the transactional `events` to `env`'s endpoint, signed with `key` (none: unsigned) for
/// the URL registered at the provider; the status it answers.
async fn post_mandrill(env: &Env, events: &Value, key: Option<&[u8]>) -> StatusCode {
    // The signed URL is the one registered at the provider, from public_url.
    let signed_url = "http://127.0.0.1:1/webhooks/mailchimp-transactional";
    let fields = vec![("mandrill_events".to_owned(), events.to_string())];
    let body = serde_urlencoded::to_string(&fields).unwrap();
    let headers: Vec<_> = key
        .map(|key| {
            let sig = mandrill_signature(key, signed_url, &fields);
            ("x-mandrill-signature", sig)
        })
        .into_iter()
        .collect();
    let url = format!("{}/webhooks/mailchimp-transactional", env.base);
    env.post_form(&url, &body, &headers).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_webhooks_verify_and_suppress() {
    let env = Env::start(Options {
        extra_server: "soft_bounce_threshold = 3\n".into(),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    let url = format!("{}/webhooks/mailchimp-transactional", env.base);
    assert_eq!(
        env.http.head(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // The provider's check: an empty batch signed with `test-webhook`.
    assert_eq!(
        post_mandrill(&env, &json!([]), Some(b"test-webhook")).await,
        StatusCode::OK
    );

    let hard = json!([{"event": "hard_bounce", "ts": 1_795_000_000, "_id": "m-1",
        "msg": {"email": "m5@example.org", "bounce_description": "bad_mailbox", "diag": "smtp;550 5.1.1 unknown", "state": "bounced"}}]);
    assert_eq!(
        post_mandrill(&env, &hard, Some(b"wrong-key")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_mandrill(&env, &hard, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(env.event_count().await, 0);
    assert_eq!(
        post_mandrill(&env, &hard, Some(MANDRILL_KEY.as_bytes())).await,
        StatusCode::OK
    );
    env.wait_member_status(5, "cleaned").await;
    // The writeback lands before the round's state DB commit: wait for that commit too.
    env.assert_outcome("m5@example.org", "hard_bounce", "applied")
        .await;
    assert_eq!(
        env.suppression("m5@example.org").await.map(|s| s.0),
        Some("hard_bounce".into())
    );

    // Soft bounces: the third within the window suppresses.
    for (n, ts) in [
        (1, 1_795_000_100i64),
        (2, 1_795_000_200),
        (3, 1_795_000_300),
    ] {
        let soft = json!([{"event": "soft_bounce", "ts": ts, "_id": format!("s-{n}"),
            "msg": {"email": "m4@example.org", "bounce_description": "mailbox_full"}}]);
        assert_eq!(
            post_mandrill(&env, &soft, Some(MANDRILL_KEY.as_bytes())).await,
            StatusCode::OK
        );
        let applied = "SELECT COUNT(*) FROM provider_events
                       WHERE event_type = 'soft_bounce' AND applied_at IS NOT NULL";
        env.wait_state_count(
            "the soft bounce to be applied",
            applied,
            n,
            Duration::from_secs(10),
        )
        .await;
        let suppressed = env.suppression("m4@example.org").await;
        if n < 3 {
            assert_eq!(suppressed, None, "after {n} soft bounces");
        } else {
            assert_eq!(suppressed.map(|s| s.0), Some("soft_bounce".into()));
        }
    }
    env.stop().await;
}

/// A TCP forwarder in front of PostgreSQL that the test can take down and bring back.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, c, upstream) = (up.clone(), conns.clone(), upstream.to_owned());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy { addr, up, conns }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_the_member_db_is_down_and_apply_when_it_returns() {
    let Some(db) = db::pg_database().await else {
        return;
    };
    // The member DB on PostgreSQL, reached through a proxy the test controls. (AnyPool needs
    // its drivers before Env::start installs them: run alone, this test panicked.)
    sqlx::any::install_default_drivers();
    let members = AnyPool::connect(&db.url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sample::schema_sql(
        mailbridge::config::DbKind::Postgres,
    )))
    .execute(&members)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO members (id, email, first_name, last_name, membership, newsletter, email_status, updated_at) VALUES {}",
        (1..=3).map(member_sql).collect::<Vec<_>>().join(",")
    )))
    .execute(&members)
    .await
    .unwrap();
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let via_proxy = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let env = Env::start(Options {
        members_url: Some(via_proxy),
        signing_secret: Some(SIGNING.into()),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    proxy.down();
    let form = unsubscribe_form(&env.list, "m2@example.org", "2026-11-28 10:00:00", "manual");
    let r = env.post_signed(&form).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the provider still gets its 200"
    );
    // A cleaned address is suppressed at once: the suppression list is in the state DB, and
    // the relay must stop mailing it now, not when the club's database is back.
    let form = cleaned_form(&env.list, "m3@example.org", "2026-11-28 10:00:01");
    let r = env.post_signed(&form).await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_until(
        "the suppression while the member DB is down",
        Duration::from_secs(15),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT reason FROM suppressions WHERE email = 'm3@example.org' AND lifted_at IS NULL",
            )
            .fetch_optional(&env.state)
            .await
            .unwrap()
                == Some("hard_bounce".to_owned())
        },
    )
    .await;
    // The worker tries, fails, and keeps the events.
    let failed = "SELECT COUNT(*) FROM provider_events
                  WHERE applied_at IS NULL AND last_error IS NOT NULL";
    wait_until(
        "a failed writeback attempt",
        Duration::from_secs(15),
        || async { env.state_count(failed).await >= 1 },
    )
    .await;
    let waiting = env
        .state_count("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL")
        .await;
    assert_eq!(waiting, 2, "both events wait for their writebacks");
    // Member 2's status, read straight from PostgreSQL (not through the proxy).
    let status_of_2 = || async {
        sqlx::query_scalar::<_, String>("SELECT email_status FROM members WHERE id = 2")
            .fetch_one(&members)
            .await
            .unwrap()
    };
    assert_eq!(status_of_2().await, "ok");
    proxy.up();
    wait_until(
        "the writeback after the member DB returned",
        Duration::from_secs(40),
        || async { status_of_2().await == "unsubscribed" },
    )
    .await;
    env.stop().await;
    members.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sync_api_runs_a_sync_and_reports_it() {
    let env = Env::start(Options::default()).await;
    assert_needs_the_token(&env, Method::POST, "/v1/sync").await;
    let run_id = env.start_sync_run().await;
    let report = env.wait_for_run(&run_id).await;
    assert_eq!(report["run_id"], run_id);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["created"], 5);
    assert_eq!(env.sim.sim_members(&env.list).await.len(), 5);
    let unknown = env.api(Method::GET, "/v1/sync/nope").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad = env
        .api(Method::POST, "/v1/sync")
        .json(&json!({"audiences": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let health: Value = env.healthz().await.json().await.unwrap();
    assert_eq!(health["state_db"], "reachable");
    // The outcome is counted right after the report is stored.
    wait_until("the sync run metric", Duration::from_secs(10), || async {
        let metrics = env.metrics().await;
        metrics
            .contains("mailbridge_sync_runs_total{audience=\"newsletter\",outcome=\"succeeded\"}")
    })
    .await;
    env.stop().await;
}

/// Sends SIGTERM to a child `serve`.
fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// The binary: SIGTERM while deliveries are in flight; every delivery that got its 200 is in the
/// state DB, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_loses_nothing() {
    let env = Env::start(Options::default()).await;
    let (mut child, base) = env.spawn_serve(&env.cli_config(), "warn").await;
    let url = format!("{base}/webhooks/mailchimp/{SECRET}");
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for w in 0..8 {
        let (url, list, acked) = (url.clone(), env.list.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..200 {
                let email = format!("load{w}-{i}@example.org");
                let form = unsubscribe_form(&list, &email, "2026-11-28 10:00:00", "manual");
                match http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => acked.lock().unwrap().push(email),
                    _ => break,
                }
            }
        }));
    }
    wait_until("some deliveries", Duration::from_secs(20), || async {
        acked.lock().unwrap().len() >= 100
    })
    .await;
    sigterm(&child);
    for s in senders {
        s.await.unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100);
    let stored: Vec<String> = sqlx::query_scalar("SELECT email FROM provider_events")
        .fetch_all(&env.state)
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|e| !stored.contains(*e)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_suppress_and_address_changes_are_written_back() {
    let env = Env::start_signed().await;
    env.sync_plain();
    // An unsubscribe caused by a spam complaint: complained, consent cleared, suppressed.
    let abuse = unsubscribe_form(&env.list, "m1@example.org", "2026-11-28 10:00:00", "abuse");
    env.deliver_signed(&abuse).await;
    env.wait_member_status(1, "complained").await;
    env.assert_outcome("m1@example.org", "complained", "applied")
        .await;
    assert_eq!(
        env.suppression("m1@example.org").await.map(|s| s.0),
        Some("spam_complaint".into())
    );
    assert!(!env.member_status(1).await.1);
    // upemail (documented legacy sample fields): the member's address changes in the member DB.
    let up = serde_urlencoded::to_string([
        ("type", "upemail"),
        ("fired_at", "2026-11-28 10:05:00"),
        ("data[list_id]", env.list.as_str()),
        ("data[new_id]", "51da8c3259"),
        ("data[new_email]", "New.Address@Example.org"),
        ("data[old_email]", "m2@example.org"),
    ])
    .unwrap();
    env.deliver_signed(&up).await;
    wait_until("the address change", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, String>("SELECT email FROM members WHERE id = 2")
            .fetch_one(&env.members)
            .await
            .unwrap()
            == "New.Address@Example.org"
    })
    .await;
    // profile and campaign events are stored and ignored.
    let profile = serde_urlencoded::to_string([
        ("type", "profile"),
        ("fired_at", "2026-11-28 10:06:00"),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", env.list.as_str()),
        ("data[email]", "m3@example.org"),
        ("data[email_type]", "html"),
        ("data[merges][EMAIL]", "m3@example.org"),
        ("data[merges][FNAME]", "MailChimp"),
        ("data[merges][LNAME]", "API"),
        ("data[merges][INTERESTS]", "Group1,Group2"),
        ("data[ip_opt]", "10.20.10.30"),
    ])
    .unwrap();
    env.deliver_signed(&profile).await;
    env.assert_outcome("m3@example.org", "profile", "ignored")
        .await;
    assert_eq!(env.member_status(3).await.0, "ok");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_started_while_another_holds_the_audience_lock_is_queued() {
    use mailbridge::store::OpenMode;
    use mailbridge::store::locks::LockHolder;
    let env = Env::start(Options::default()).await;
    let url = mailbridge::config::DbUrl::parse(
        &format!("sqlite://{}/state.db", env.dir.display()),
        &env.dir,
    )
    .unwrap();
    let store = app::try_open_store(&url, OpenMode::ReadWrite)
        .await
        .unwrap();
    // Another process (say, the nightly run elsewhere) holds the audience's lock.
    let other = LockHolder::this_process("someone-else");
    assert_eq!(
        store
            .try_lock("sync:newsletter", &other, 600)
            .await
            .unwrap(),
        None
    );
    let run_id = env.start_sync_run().await;
    // Queued behind the other run (tests/sync_jobs.rs sees it run once the lock is free).
    // The worker retries the job while it waits (the job shows `syncing` for the moment of each
    // retry), so the state is read as one snapshot: queued, and saying what it waits for.
    let path = format!("/v1/sync/{run_id}");
    let seen = std::sync::Mutex::new(serde_json::Value::Null);
    wait_until(
        "the sync to wait for the lock",
        Duration::from_secs(20),
        || async {
            let status = env.api_json(&path).await;
            let waiting = status["status"] == "queued" && status["waiting_for"].is_string();
            *seen.lock().unwrap() = status;
            waiting
        },
    )
    .await;
    let status = seen.lock().unwrap().clone();
    assert!(
        status["waiting_for"]
            .as_str()
            .unwrap()
            .contains("another sync"),
        "{status}"
    );
    assert!(
        env.sim.sim_members(&env.list).await.is_empty(),
        "nothing was pushed"
    );
    store.unlock("sync:newsletter", &other).await.unwrap();
    env.stop().await;
}

async fn writer_dedupes(url: &str, dir: &Path) {
    use mailbridge::events::ingest::EventWriter;
    use mailbridge::providers::NewEvent;
    let store = app::open_store(&mailbridge::config::DbUrl::parse(url, dir).unwrap()).await;
    let event = |email: &str| NewEvent {
        provider: "mailchimp",
        audience: None,
        list_id: Some("l1".into()),
        event_type: "unsubscribed".into(),
        email: Some(email.into()),
        member_key: None,
        reason: Some("manual".into()),
        fired_at: "2026-11-28T10:00:00.000Z".into(),
        source_id: None,
        payload: "{}".into(),
        verified: true,
        ignored: None,
    };
    let writer = EventWriter::start(store.clone());
    // A repeat inside one batch, and across batches.
    let first = writer
        .write(vec![
            event("a@example.org"),
            event("b@example.org"),
            event("a@example.org"),
        ])
        .await
        .unwrap();
    assert_eq!(first, vec![true, true, false]);
    let again = writer
        .write(vec![event("b@example.org"), event("c@example.org")])
        .await
        .unwrap();
    assert_eq!(again, vec![false, true]);
    // Many concurrent callers: each gets its own answers.
    let mut calls = Vec::new();
    for i in 0..50 {
        let w = writer.clone();
        calls.push(tokio::spawn(async move {
            w.write(vec![
                event(&format!("x{i}@example.org")),
                event("a@example.org"),
            ])
            .await
            .unwrap()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), vec![true, false]);
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM provider_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 53);
    // A NUL in a delivery (a JSON "\u0000"; PostgreSQL's text cannot hold it) is stored as
    // U+FFFD, the same on both backends, instead of failing the delivery on every retry.
    let mut nul = event("nul@example.org");
    nul.reason = Some("bad\0reason".into());
    nul.payload = "{\"reason\": \"bad\0reason\"}".into();
    assert_eq!(writer.write(vec![nul]).await.unwrap(), vec![true]);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM provider_events WHERE email = 'nul@example.org'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(reason, "bad\u{FFFD}reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_writer_reports_duplicates_sqlite_and_postgres() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    writer_dedupes("sqlite://state.db", dir.path()).await;
    if let Some(db) = db::pg_database().await {
        writer_dedupes(&db.url, dir.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_state_db_apply_each_event_once() {
    let env = Env::start(Options {
        pg_state: true,
        signing_secret: Some(SIGNING.into()),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    let config = app::load_config(&env.dir.join("mailbridge.toml"));
    let second = app::start_serve(config, Some("127.0.0.1:0")).await;
    let second_url = format!("http://{}/webhooks/mailchimp/{SECRET}", second.addr);
    // Deliveries go to both servers; one process holds the writeback lease and applies them all.
    for (i, url) in [
        (1, env.hook_url()),
        (2, second_url.clone()),
        (3, second_url),
    ] {
        let form = unsubscribe_form(
            &env.list,
            &format!("m{i}@example.org"),
            "2026-11-28 10:00:00",
            "manual",
        );
        assert_eq!(
            env.post_signed_to(&url, &form).await.status(),
            StatusCode::OK
        );
    }
    for i in 1..=3 {
        env.wait_member_status(i, "unsubscribed").await;
    }
    // The writebacks land before the round's state DB commit (applied_at, attempts).
    env.wait_state_count(
        "the events to be applied",
        "SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL",
        0,
        Duration::from_secs(10),
    )
    .await;
    // Each event was applied once (one attempt each), by whichever server held the writeback
    // lease at the time; the lease is given back once nothing is left to apply, so that a
    // `pull` or `sync` can take it.
    env.wait_state_count(
        "the writeback lease to be given back",
        "SELECT COUNT(*) FROM locks WHERE name = 'events:writeback'",
        0,
        Duration::from_secs(10),
    )
    .await;
    let attempts: Vec<i64> = sqlx::query_scalar("SELECT attempts FROM provider_events ORDER BY id")
        .fetch_all(&env.state)
        .await
        .unwrap();
    assert_eq!(attempts, vec![1, 1, 1]);
    second.shutdown().await.unwrap();
    env.stop().await;
}

// ---- The server defends itself (issue 24): timeouts, a connection cap, request tracing. ----

/// How a slow client's connection ended: when (since its start), and what the server said.
struct SlowEnd {
    kind: &'static str,
    closed_after: Duration,
    answer: String,
}

/// A client that sends `opening` and then one byte a second, until the server closes the
/// connection (or `give_up` passes: then `closed_after` is `give_up`). `ready` counts clients
/// whose opening was written; `closed` counts clients whose connection ended.
async fn slow_client(
    addr: std::net::SocketAddr,
    kind: &'static str,
    opening: Vec<u8>,
    ready: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    give_up: Duration,
) -> SlowEnd {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&opening).await.unwrap();
    ready.fetch_add(1, Ordering::SeqCst);
    let mut drip = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = drip.tick() => {
                // A write into a connection the server closed fails now or on the next read.
                if stream.write_all(b"a").await.is_err() {
                    break started.elapsed();
                }
            }
            () = tokio::time::sleep(give_up.saturating_sub(started.elapsed())) => break give_up,
        }
    };
    closed.fetch_add(1, Ordering::SeqCst);
    SlowEnd {
        kind,
        closed_after: end,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// 200 connections that send a byte a second (100 stuck in their headers, 100 in their bodies:
/// a webhook and a message) do not keep a webhook delivery or `POST /v1/messages` from being
/// served at once; the header read timeout and the request timeout then close them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_do_not_block_requests_and_are_closed_by_the_timeouts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    const MARGIN: Duration = Duration::from_secs(3);
    let env = Env::start(Options {
        extra_server: format!(
            "header_read_timeout_secs = {}\nrequest_timeout_secs = {}\n\n[relay]\nfrom = \"Riverside Rowing Club <club@club.example>\"\n",
            HEADER_TIMEOUT.as_secs(),
            REQUEST_TIMEOUT.as_secs()
        ),
        ..Options::default()
    })
    .await;
    env.sync_plain();
    let addr = env.server.as_ref().unwrap().addr;
    let (ready, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let give_up = HEADER_TIMEOUT + REQUEST_TIMEOUT + MARGIN * 2;
    let mut clients = Vec::new();
    for i in 0..200 {
        let (kind, opening) = match i % 4 {
            0 | 1 => (
                "headers",
                b"POST /v1/messages HTTP/1.1\r\nHost: mailbridge\r\nX-Slow: ".to_vec(),
            ),
            2 => (
                "webhook body",
                format!(
                    "POST /webhooks/mailchimp/{SECRET} HTTP/1.1\r\nHost: mailbridge\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\ntype="
                )
                .into_bytes(),
            ),
            _ => (
                "message body",
                format!(
                    "POST /v1/messages HTTP/1.1\r\nHost: mailbridge\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"to\": "
                )
                .into_bytes(),
            ),
        };
        clients.push(tokio::spawn(slow_client(
            addr,
            kind,
            opening,
            ready.clone(),
            closed.clone(),
            give_up,
        )));
    }
    wait_until("200 slow clients", Duration::from_secs(10), || async {
        ready.load(Ordering::SeqCst) == 200
    })
    .await;

    // While they are all open, a webhook delivery and a message are served at once.
    let events_before = env.event_count().await;
    let started = Instant::now();
    let form = unsubscribe_form(&env.list, "m2@example.org", "2026-11-28 10:00:00", "manual");
    let hook = env.post_hook(&form).await;
    assert_eq!(hook.status(), StatusCode::OK, "{:?}", hook.text().await);
    let message = env
        .api(Method::POST, "/v1/messages")
        .json(&json!({
            "to": "ana@example.org",
            "subject": "Welcome",
            "text": "Welcome to the club.",
            "category": "registration",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(message.status(), StatusCode::ACCEPTED);
    let served_in = started.elapsed();
    assert!(
        served_in < Duration::from_secs(2),
        "served in {served_in:?}"
    );
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the slow clients were all still open while the requests were served"
    );
    let id = message.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE id = $1")
        .bind(&id)
        .fetch_one(&env.state)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the message is stored");
    assert_eq!(
        env.event_count().await,
        events_before + 1,
        "the event is stored"
    );

    // Then the timeouts close every slow connection.
    for client in clients {
        let end = client.await.unwrap();
        let limit = if end.kind == "headers" {
            HEADER_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        assert!(
            end.closed_after < limit + MARGIN,
            "a slow client ({}) was closed after {:?} (limit {limit:?} + {MARGIN:?})",
            end.kind,
            end.closed_after
        );
        assert!(
            end.closed_after + Duration::from_millis(500) >= limit,
            "a slow client ({}) was closed after {:?}, before its timeout",
            end.kind,
            end.closed_after
        );
        if end.kind != "headers" {
            assert!(
                end.answer.starts_with("HTTP/1.1 408")
                    && end.answer.contains("\"code\":\"request_timeout\""),
                "{}: {}",
                end.kind,
                end.answer
            );
        }
    }
    assert_eq!(env.healthz().await.status(), StatusCode::OK);
    env.stop().await;
}

/// At most `max_connections` connections are served; a further one waits (it is not refused)
/// until one of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let env = Env::start(Options {
        extra_server: "max_connections = 2\nheader_read_timeout_secs = 60\n".into(),
        ..Options::default()
    })
    .await;
    let addr = env.server.as_ref().unwrap().addr;
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let health = format!("{}/healthz", env.base);
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(health)
            .send()
            .await
            .map(|r| r.status())
    });
    let pending = tokio::time::timeout(Duration::from_secs(1), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        pending.is_err(),
        "a third connection was served while two held the slots"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(second);
    env.stop().await;
}

/// Each request is traced in a span with its method and route template; the webhook URL secret
/// (the path) is never logged, right or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_by_route_template_without_the_url_secret() {
    let env = Env::start(Options::default()).await;
    let (mut child, base) = env
        .spawn_serve(&env.cli_config(), "mailbridge=debug,tower_http=debug")
        .await;
    let wrong = "wrong-secret-9876543210";
    let form = unsubscribe_form(&env.list, "m2@example.org", "2026-11-28 10:00:00", "manual");
    let ok = env
        .post_form(&format!("{base}/webhooks/mailchimp/{SECRET}"), &form, &[])
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = env
        .post_form(&format!("{base}/webhooks/mailchimp/{wrong}"), &form, &[])
        .await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    sigterm(&child);
    let mut stderr = String::new();
    {
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
    }
    child.wait().await.unwrap();
    assert!(
        stderr.contains("method=POST route=/webhooks/mailchimp/{secret}"),
        "{stderr}"
    );
    assert!(stderr.contains("route=/healthz"), "{stderr}");
    assert!(
        !stderr.contains(SECRET),
        "the URL secret was logged:\n{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "a wrong secret was logged:\n{stderr}"
    );
    env.stop().await;
}

/// A webhook storm: `DELIVERIES` signed deliveries over `CONNECTIONS` keep-alive connections,
/// `REPEATS` of them a second delivery of an event (sometimes in the same group commit as the
/// first). Each event is stored exactly once and answered `stored` exactly once; each 200 is
/// answered only once its event is in the state DB. Then the state DB refuses the inserts: every
/// delivery is answered 503 (the provider retries), none 200, nothing stored; once it accepts
/// them again the retries are stored.
async fn storm(pg_state: bool) {
    const CONNECTIONS: usize = 16;
    const DELIVERIES: usize = 200;
    const REPEATS: usize = 40;
    let env = Env::start(Options {
        pg_state,
        signing_secret: Some(SIGNING.into()),
        ..Options::default()
    })
    .await;
    // Outside CI without a PostgreSQL, Env falls back to SQLite.
    let postgres = {
        let conn = env.state.acquire().await.unwrap();
        conn.backend_name() == "PostgreSQL"
    };
    eprintln!(
        "state DB: {}",
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    let distinct = DELIVERIES - REPEATS;
    let email = move |i: usize| format!("storm{}@example.org", i % distinct);
    let env = Arc::new(env);
    let mut senders = Vec::new();
    for c in 0..CONNECTIONS {
        let env = env.clone();
        senders.push(tokio::spawn(async move {
            // One client, one keep-alive connection.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut answers = Vec::new();
            for i in (c..DELIVERIES).step_by(CONNECTIONS) {
                let email = email(i);
                let form = unsubscribe_form(&env.list, &email, "2026-11-28 10:00:00", "manual");
                let sig = mailchimp_signature(
                    SIGNING.as_bytes(),
                    chrono::Utc::now().timestamp(),
                    form.as_bytes(),
                );
                let response = http
                    .post(env.hook_url())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-mailchimp-signature", sig)
                    .body(form)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{email}");
                let body: Value = response.json().await.unwrap();
                // Answered, so already committed: visible to any other connection now.
                let (stored,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM provider_events WHERE email = $1")
                        .bind(&email)
                        .fetch_one(&env.state)
                        .await
                        .unwrap();
                assert_eq!(
                    stored, 1,
                    "{email} answered {body} and stored {stored} times"
                );
                answers.push((email, body["status"].as_str().unwrap().to_owned()));
            }
            answers
        }));
    }
    let mut stored_answers: std::collections::HashMap<String, usize> = Default::default();
    let mut answered = 0;
    for s in senders {
        for (email, status) in s.await.unwrap() {
            answered += 1;
            assert!(status == "stored" || status == "duplicate", "{status}");
            *stored_answers.entry(email).or_default() += usize::from(status == "stored");
        }
    }
    assert_eq!(answered, DELIVERIES);
    assert_eq!(stored_answers.len(), distinct);
    assert!(
        stored_answers.values().all(|n| *n == 1),
        "each event is answered `stored` once: {stored_answers:?}"
    );
    let rows = "SELECT COUNT(*) FROM provider_events WHERE email LIKE 'storm%'";
    assert_eq!(env.state_count(rows).await, distinct as i64);
    let emails = "SELECT COUNT(DISTINCT email) FROM provider_events WHERE email LIKE 'storm%'";
    assert_eq!(env.state_count(emails).await, distinct as i64);

    // The state DB refuses every insert: a trigger stands in for a full disk or a lost server.
    let refuse: &[&str] = if postgres {
        &[
            "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER refuse_events BEFORE INSERT ON provider_events
             FOR EACH ROW EXECUTE FUNCTION refuse_events()",
        ]
    } else {
        &[
            "CREATE TRIGGER refuse_events BEFORE INSERT ON provider_events
           BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        ]
    };
    for sql in refuse {
        sqlx::raw_sql(*sql).execute(&env.state).await.unwrap();
    }
    let refused = |i: usize| format!("refused{i}@example.org");
    let post_all = || async {
        let mut posts = Vec::new();
        for i in 0..CONNECTIONS * 2 {
            let env = env.clone();
            posts.push(tokio::spawn(async move {
                let form =
                    unsubscribe_form(&env.list, &refused(i), "2026-11-28 10:00:00", "manual");
                env.post_signed(&form).await.status()
            }));
        }
        let mut statuses = Vec::new();
        for p in posts {
            statuses.push(p.await.unwrap());
        }
        statuses
    };
    let statuses = post_all().await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "a delivery that was not stored is never answered 200: {statuses:?}"
    );
    let refused_rows = "SELECT COUNT(*) FROM provider_events WHERE email LIKE 'refused%'";
    assert_eq!(env.state_count(refused_rows).await, 0);
    // The provider's retries, once the state DB accepts them again.
    let accept = if postgres {
        "DROP TRIGGER refuse_events ON provider_events"
    } else {
        "DROP TRIGGER refuse_events"
    };
    sqlx::raw_sql(accept).execute(&env.state).await.unwrap();
    let statuses = post_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        env.state_count(refused_rows).await,
        (CONNECTIONS * 2) as i64
    );
    Arc::into_inner(env).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_storm_is_stored_once_each_and_answered_after_commit_sqlite_state() {
    storm(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_storm_is_stored_once_each_and_answered_after_commit_postgres_state() {
    storm(true).await;
}
