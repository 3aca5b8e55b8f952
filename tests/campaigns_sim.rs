//! Campaign push end to end against the simulator: at most once per key (twice the same push,
//! a crash between create and send found again by title, the real binary killed between create
//! and send, concurrent HTTP pushes), recipients read from `/_sim/deliveries` (never an
//! unsubscribed, cleaned or non-consenting member), and the refusals that change nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mailbridge::campaigns::store as rows;
use mailbridge::campaigns::{
    CampaignError, CampaignRecord, CampaignState, PushOutcome, PushRequest,
};
use mailbridge::providers::mailchimp::MailchimpClient;
use mailbridge::sync::apply::SyncOptions;
use reqwest::Method;
use serde_json::{Value, json};
use support::app::{self, SimApp};
use support::{Kind, db};

const TOKEN: &str = "campaign-test-token";

type Env = SimApp;

/// Members 1..=n, consent for all but those in `no_consent`; membership cycles full, family,
/// junior. SQLite state.
async fn env(n: u64, no_consent: &[u64]) -> Env {
    env_on(n, no_consent, Kind::Sqlite).await.unwrap()
}

/// [`env`] on a state DB of `state` kind; `None` (skip) when its server is unreachable outside CI.
async fn env_on(n: u64, no_consent: &[u64], state: Kind) -> Option<Env> {
    let rows =
        (1..=n).map(|i| db::member_row(i, db::cycling_membership(i), !no_consent.contains(&i)));
    let e = SimApp::start(state, Kind::Sqlite, false, rows, |c| {
        c.mailchimp_extra("timeout_secs = 5\n")
            .audience_extra(
                "from_name = \"Riverside Rowing\"\nreply_to = \"secretary@club.example\"\n",
            )
            .server(&format!(
                "bind = \"127.0.0.1:0\"\napi_token = \"{TOKEN}\"\n"
            ))
    })
    .await?;
    e.members.close().await;
    Some(e)
}

fn request() -> PushRequest {
    PushRequest {
        audience: "newsletter".into(),
        subject: "Spring news".into(),
        html: "<h1>Spring news</h1><p>The boats are back on the water.</p>".into(),
        ..PushRequest::default()
    }
}

impl Env {
    async fn push_with(
        &self,
        client: &MailchimpClient,
        request: &PushRequest,
        key: Option<&str>,
    ) -> Result<PushOutcome, CampaignError> {
        self.app.push_with(client, request, key, None).await
    }

    async fn push(
        &self,
        request: &PushRequest,
        key: Option<&str>,
    ) -> Result<PushOutcome, CampaignError> {
        self.push_with(&self.client(), request, key).await
    }

    async fn sync(&self) {
        let r = self
            .app
            .sync_with(&self.client(), SyncOptions::default())
            .await
            .unwrap();
        assert_eq!(r.failed, 0);
    }

    /// Delivered addresses, one entry per delivery.
    async fn deliveries(&self) -> Vec<String> {
        let all = self.sim.sim_json(Method::GET, "/deliveries").await;
        all.as_array()
            .unwrap()
            .iter()
            .map(|d| d["email"].as_str().unwrap().to_lowercase())
            .collect()
    }

    async fn campaigns(&self) -> Vec<Value> {
        self.sim.get_json("/campaigns?count=1000").await["campaigns"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn campaign_calls(&self) -> Vec<(String, u64)> {
        let s = self.sim.sim_json(Method::GET, "/stats").await;
        s["by_route"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.contains("/campaigns"))
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    }
}

fn addresses(ids: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    ids.into_iter()
        .map(|i| format!("m{i}@example.org"))
        .collect()
}

/// The shared scenario: members 1..=12, 3 without consent; after a first sync 1 unsubscribes and
/// 2 is cleaned at the provider. The push (its preflight pulls both back) reaches exactly the
/// other nine, once, however often it is pushed.
async fn push_twice_sends_once(e: &Env) {
    e.sync().await;
    e.provider_action("m1@example.org", "unsubscribe").await;
    e.provider_action("m2@example.org", "clean").await;
    e.sim.sim_json(Method::POST, "/stats/reset").await;

    let first = e.push(&request(), None).await.unwrap();
    assert!(first.inserted && first.acted);
    assert_eq!(first.record.state, CampaignState::Sent);
    assert_eq!(first.record.recipients, Some(9));
    assert!(first.record.key.starts_with("auto-"));
    let preflight = first.preflight.as_ref().unwrap();
    assert_eq!(
        (preflight.unsubscribes_pulled, preflight.bounces_pulled),
        (1, 1)
    );
    let mut calls = e.campaign_calls().await;
    calls.sort();
    assert_eq!(
        calls,
        vec![
            ("GET /3.0/campaigns/{campaign_id}".to_owned(), 1),
            (
                "GET /3.0/campaigns/{campaign_id}/send-checklist".to_owned(),
                1
            ),
            ("POST /3.0/campaigns".to_owned(), 1),
            (
                "POST /3.0/campaigns/{campaign_id}/actions/send".to_owned(),
                1
            ),
            ("PUT /3.0/campaigns/{campaign_id}/content".to_owned(), 1),
        ]
    );

    let delivered = e.deliveries().await;
    let unique: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(
        delivered.len(),
        unique.len(),
        "one delivery per member: {delivered:?}"
    );
    assert_eq!(unique, addresses((4..=12).chain([])));
    for opted_out in ["m1@example.org", "m2@example.org", "m3@example.org"] {
        assert!(
            !unique.contains(opted_out),
            "{opted_out} received the campaign"
        );
    }

    // The admin presses "send" again: same derived key, nothing sent again, no provider call.
    e.sim.sim_json(Method::POST, "/stats/reset").await;
    let again = e.push(&request(), None).await.unwrap();
    assert!(!again.inserted && !again.acted);
    assert_eq!(again.record, first.record);
    assert!(e.campaign_calls().await.is_empty());
    assert_eq!(e.deliveries().await.len(), 9);
    assert_eq!(e.campaigns().await.len(), 1);

    // The same key with another body is refused and changes nothing.
    let other = PushRequest {
        subject: "Summer news".into(),
        ..request()
    };
    let err = e.push(&other, Some(&first.record.key)).await.unwrap_err();
    assert!(matches!(err, CampaignError::KeyConflict { .. }), "{err}");
    assert_eq!(
        rows::get(&e.store, &first.record.key)
            .await
            .unwrap()
            .unwrap(),
        first.record
    );
    assert_eq!(e.campaigns().await.len(), 1);
}

#[tokio::test]
async fn push_twice_with_the_same_key_sends_once_to_subscribed_members_only() {
    let e = env(12, &[3]).await;
    push_twice_sends_once(&e).await;
}

#[tokio::test]
async fn push_twice_sends_once_with_a_postgres_state_db() {
    let Some(e) = env_on(12, &[3], Kind::Postgres).await else {
        return;
    };
    push_twice_sends_once(&e).await;
}

#[tokio::test]
async fn test_sends_go_out_before_the_send_and_a_segment_narrows_the_recipients() {
    let e = env(9, &[]).await;
    let r = PushRequest {
        segment: Some("junior".into()),
        test_to: vec!["me@club.example".into()],
        ..request()
    };
    let out = e.push(&r, Some("juniors-1")).await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    let tests = e.sim.sim_json(Method::GET, "/test-sends").await;
    assert_eq!(tests.as_array().unwrap().len(), 1, "{tests}");
    assert_eq!(tests[0]["email"], "me@club.example");
    // Membership cycles full, family, junior from id 0: the juniors are 2, 5 and 8.
    let delivered: BTreeSet<String> = e.deliveries().await.into_iter().collect();
    assert_eq!(delivered, addresses([2, 5, 8]));
    assert_eq!(out.record.recipients, Some(3));
    let campaign = &e.campaigns().await[0];
    assert_eq!(campaign["settings"]["title"], "mailbridge:juniors-1");
    assert_eq!(campaign["settings"]["reply_to"], "secretary@club.example");
}

#[tokio::test]
async fn a_schedule_is_handed_to_the_provider_and_nothing_is_delivered_now() {
    let e = env(3, &[]).await;
    let r = PushRequest {
        schedule: Some("2099-12-01T09:15:00Z".into()),
        ..request()
    };
    let out = e.push(&r, Some("later")).await.unwrap();
    assert_eq!(out.record.state, CampaignState::Scheduled);
    assert_eq!(e.campaigns().await[0]["status"], "schedule");
    assert!(e.deliveries().await.is_empty());
    // Pushing it again does not schedule twice.
    let again = e.push(&r, Some("later")).await.unwrap();
    assert!(!again.acted);

    // Once its time has passed, a repeat still gets the record; a new key is refused.
    let past = PushRequest {
        schedule: Some("2026-01-01T09:00:00Z".into()),
        ..request()
    };
    let spec = mailbridge::campaigns::validate(&past, &e.config.audiences[0]).unwrap();
    let hash = mailbridge::campaigns::content_hash(&spec);
    assert!(
        rows::insert_intent(&e.store, "january", "newsletter", &hash)
            .await
            .unwrap()
    );
    rows::set_state(&e.store, "january", CampaignState::Scheduled, Some(3), None)
        .await
        .unwrap();
    let repeat = e.push(&past, Some("january")).await.unwrap();
    assert_eq!(repeat.record.state, CampaignState::Scheduled);
    let err = e.push(&past, Some("february")).await.unwrap_err();
    assert!(err.to_string().contains("is not in the future"), "{err}");
    assert!(rows::get(&e.store, "february").await.unwrap().is_none());
}

#[tokio::test]
async fn refusals_leave_no_campaign_and_no_record() {
    // Nobody consents: the audience is empty after the preflight sync.
    let e = env(3, &[1, 2, 3]).await;
    let err = e.push(&request(), Some("empty")).await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("no subscribed members"), "{err}");
    assert!(rows::get(&e.store, "empty").await.unwrap().is_none());
    assert!(e.campaigns().await.is_empty());

    // --no-sync on an audience that never synced.
    let e = env(3, &[]).await;
    let r = PushRequest {
        no_sync: true,
        ..request()
    };
    let err = e.push(&r, Some("stale")).await.unwrap_err();
    assert!(err.to_string().contains("never been synced"), "{err}");
    // After a sync, --no-sync is fine within the age limit.
    e.sync().await;
    let out = e.push(&r, Some("fresh")).await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    // … and refused once the last sync is older than max_sync_age_minutes (60).
    sqlx::query("UPDATE audiences SET last_success_at = '2026-01-01T00:00:00.000Z'")
        .execute(e.store.pool())
        .await
        .unwrap();
    let err = e
        .push(
            &PushRequest {
                subject: "Later".into(),
                ..r
            },
            Some("old"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("older than campaigns.max_sync_age_minutes = 60"),
        "{err}"
    );

    // An unknown tag is refused before anything is created.
    let seg = PushRequest {
        segment: Some("no-such-tag".into()),
        ..request()
    };
    let err = e.push(&seg, Some("seg")).await.unwrap_err();
    assert!(
        err.to_string().contains("has no tag `no-such-tag`"),
        "{err}"
    );
    assert!(rows::get(&e.store, "seg").await.unwrap().is_none());
    assert_eq!(e.campaigns().await.len(), 1);
}

/// A push that crashed after Mailchimp created the campaign but before the id was recorded:
/// the next push finds the campaign by its title instead of creating a second one.
#[tokio::test]
async fn a_campaign_created_before_a_crash_is_found_by_its_title() {
    let e = env(4, &[]).await;
    // An earlier campaign with the same content under another key gives the content hash.
    let hash = e
        .push(&request(), Some("earlier"))
        .await
        .unwrap()
        .record
        .content_hash;
    let before = e.campaigns().await.len();
    let deliveries_before = e.deliveries().await.len();
    // The crashed push: its intent row, and the campaign it created, id not recorded.
    assert!(
        rows::insert_intent(&e.store, "crashed", "newsletter", &hash)
            .await
            .unwrap()
    );
    let created = e
        .sim
        .send_json(
            Method::POST,
            "/campaigns",
            &json!({
                "type": "regular",
                "recipients": {"list_id": e.list},
                "settings": {"subject_line": "Spring news", "title": "mailbridge:crashed",
                             "from_name": "Riverside Rowing", "reply_to": "secretary@club.example"}
            }),
        )
        .await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();

    let resumed = e.push(&request(), Some("crashed")).await.unwrap();
    assert!(!resumed.inserted && resumed.acted);
    assert_eq!(resumed.record.state, CampaignState::Sent);
    assert_eq!(
        resumed.record.provider_campaign_id.as_deref(),
        created["id"].as_str()
    );
    assert_eq!(e.campaigns().await.len(), before + 1);
    assert_eq!(e.deliveries().await.len(), deliveries_before + 4);
}

/// Runs the binary with `args` off the runtime; it must succeed. Its stdout as JSON.
async fn push_json(args: &dyn Fn(&mut Command)) -> Value {
    let mut cmd = Command::new(db::binary());
    args(&mut cmd);
    let out = tokio::task::spawn_blocking(move || support::run_ok(&mut cmd, "campaign push"))
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The real binary, stopped right after it recorded the campaign id (before the send) and
/// killed with SIGKILL; the rerun sends exactly once.
#[tokio::test]
async fn killing_the_binary_between_create_and_send_then_rerunning_sends_once() {
    let e = env(5, &[]).await;
    let html = e.dir.join("spring.html");
    std::fs::write(&html, "<p>Spring news</p>").unwrap();
    let args = |cmd: &mut Command| {
        cmd.arg("--config")
            .arg(&e.config_path)
            .args([
                "campaign",
                "push",
                "--audience",
                "newsletter",
                "--subject",
                "Spring news",
                "--html",
            ])
            .arg(&html)
            .args(["--key", "spring-2026", "--json"])
            .env("MAILBRIDGE_LOG", "warn");
    };
    let mut first = Command::new(db::binary());
    args(&mut first);
    let mut child = first
        .env(mailbridge::cli::campaigns::PAUSE_ENV, "create")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Blocking reads on a thread: the simulator serves on this test's runtime meanwhile.
    let marker = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.starts_with(mailbridge::cli::campaigns::PAUSE_MARKER) {
                return Some(line);
            }
        }
        None
    })
    .await
    .unwrap();
    assert!(marker.is_some(), "the push ended before it paused");
    child.kill().unwrap();
    child.wait().unwrap();

    let row = rows::get(&e.store, "spring-2026").await.unwrap().unwrap();
    assert_eq!(row.state, CampaignState::Draft);
    let id = row.provider_campaign_id.clone().unwrap();
    let campaigns = e.campaigns().await;
    assert_eq!(campaigns.len(), 1);
    assert_eq!(campaigns[0]["status"], "save");
    assert!(e.deliveries().await.is_empty());

    // The killed push's lease is still running: a push now does not take it over (the holder
    // might be alive elsewhere) and sends nothing.
    let record = push_json(&args).await;
    assert_eq!(record["state"], "draft");
    assert!(e.deliveries().await.is_empty());
    // Once it has run out (a minute without renewal; aged here rather than waited for), the
    // rerun takes the key over and sends exactly once.
    let aged = sqlx::query(
        "UPDATE locks SET expires_at = '2000-01-01T00:00:00.000Z' WHERE name = 'campaign:spring-2026'",
    )
    .execute(e.store.pool())
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1, "the killed push's lease");

    let record = push_json(&args).await;
    assert_eq!(record["state"], "sent");
    assert_eq!(record["provider_campaign_id"], id.as_str());
    assert_eq!(e.campaigns().await.len(), 1);
    assert_eq!(e.deliveries().await.len(), 5);

    // And `campaign status` shows the same record.
    let status = Command::new(db::binary())
        .arg("--config")
        .arg(&e.config_path)
        .args(["campaign", "status", "spring-2026", "--json"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let shown: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(shown, record);
}

async fn start_server(e: &Env) -> mailbridge::http::ServerHandle {
    app::start_http(app::app_state_from_parts(&e.app, Some(e.client()))).await
}

#[tokio::test]
async fn concurrent_http_pushes_with_the_same_idempotency_key_send_once() {
    let e = env(6, &[]).await;
    concurrent_http_pushes(&e).await;
}

#[tokio::test]
async fn concurrent_http_pushes_send_once_with_a_postgres_state_db() {
    let Some(e) = env_on(6, &[], Kind::Postgres).await else {
        return;
    };
    concurrent_http_pushes(&e).await;
}

async fn concurrent_http_pushes(e: &Env) {
    let server = start_server(e).await;
    let url = format!("http://{}/v1/campaigns", server.addr);
    let http = reqwest::Client::new();
    let body = json!({
        "audience": "newsletter",
        "subject": "Spring news",
        "html": "<p>Spring news</p>",
        "test_to": ["me@club.example"],
    });
    let post = |key: &'static str, body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let answers = futures::future::join_all((0..4).map(|_| post("web-42", body.clone()))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 202], "{answers:#?}");
    for (_, job) in &answers {
        assert_eq!(job["key"], "web-42");
    }
    // GET of the campaign pushed under `key`, with the token.
    let get_record = |key: &str| {
        let request = http.get(format!("{url}/{key}")).bearer_auth(TOKEN);
        async move { request.send().await.unwrap() }
    };
    let job = app::wait_for_job(&http, &url, TOKEN, "web-42", "sent").await;
    let get = get_record("web-42").await;
    assert_eq!(get.status(), 200);
    let record: CampaignRecord = {
        let v: Value = get.json().await.unwrap();
        assert_eq!(v, job);
        assert_eq!(v["campaign"]["state"], "sent", "{v}");
        assert_eq!(v["campaign"]["recipients"], 6);
        assert_eq!(v["attempts"], 1);
        rows::get(&e.store, "web-42").await.unwrap().unwrap()
    };
    assert_eq!(record.state, CampaignState::Sent);
    assert_eq!(e.campaigns().await.len(), 1);
    assert_eq!(e.deliveries().await.len(), 6);
    let tests = e.sim.sim_json(Method::GET, "/test-sends").await;
    assert_eq!(tests.as_array().unwrap().len(), 1, "one test send: {tests}");

    // Repeated later: 200 with the record. Another body: 409. No header: 400. No token: 401.
    let (status, again) = post("web-42", body.clone()).await;
    assert_eq!((status, &again["status"]), (200, &json!("sent")));
    let (status, conflict) = post(
        "web-42",
        json!({"audience": "newsletter", "subject": "Other", "html": "<p>x</p>"}),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "conflict");
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&url)
        .header("Idempotency-Key", "x")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, bad) = post(
        "web-43",
        json!({"audience": "newsletter", "subject": "", "html": "<p>x</p>"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("subject:"),
        "{bad}"
    );
    let r = get_record("web-43").await;
    assert_eq!(r.status(), 404);
    assert_eq!(e.campaigns().await.len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_create_is_recorded_and_the_same_key_resumes_later() {
    let e = env(3, &[]).await;
    // The provider answers every call with 500: create fails, and the row says so.
    let client = e
        .client()
        .with_retry_policy(mailbridge::providers::retry::RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
            budget: mailbridge::providers::retry::RetryBudget::new(0),
            sleeper: mailbridge::providers::retry::Sleeper::tokio(),
        });
    e.sync().await;
    e.sim.set_faults(json!({"rate_500": 1.0})).await;
    let err = e
        .push_with(
            &client,
            &PushRequest {
                no_sync: true,
                ..request()
            },
            Some("outage"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CampaignError::Provider(_)), "{err}");
    let row = rows::get(&e.store, "outage").await.unwrap().unwrap();
    assert_eq!(row.state, CampaignState::Failed);
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .contains("create_campaign"),
        "{row:?}"
    );
    e.sim.set_faults(json!({})).await;
    let out = e
        .push(
            &PushRequest {
                no_sync: true,
                ..request()
            },
            Some("outage"),
        )
        .await
        .unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(out.record.last_error, None);
    assert_eq!(e.campaigns().await.len(), 1);
    assert_eq!(e.deliveries().await.len(), 3);
}

#[tokio::test]
async fn the_binary_refuses_bad_input_with_exit_2_naming_what_and_changes_nothing() {
    let e = env(2, &[]).await;
    let good = e.dir.join("good.html");
    std::fs::write(&good, "<p>hello</p>").unwrap();
    let latin1 = e.dir.join("latin1.html");
    std::fs::write(&latin1, b"<p>caf\xe9</p>").unwrap();
    let config = e.config_path.clone();
    let status_config = e.config_path.clone();
    let run = move |subject: &str, html: &std::path::Path, extra: &[&str]| {
        let audience = if extra.first() == Some(&"--audience") {
            extra[1]
        } else {
            "newsletter"
        };
        let extra = if extra.first() == Some(&"--audience") {
            &extra[2..]
        } else {
            extra
        };
        let out = Command::new(db::binary())
            .arg("--config")
            .arg(&config)
            .args([
                "campaign",
                "push",
                "--audience",
                audience,
                "--subject",
                subject,
                "--html",
            ])
            .arg(html)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases = tokio::task::spawn_blocking(move || {
        vec![
            run("Spring", &latin1, &[]),
            run("", &good, &[]),
            run("Spring", &good, &["--schedule", "2099-12-01T09:07:00Z"]),
            run("Spring", &good, &["--audience", "nope"]),
            run("Spring", &good, &["--key", "has space"]),
            {
                let out = Command::new(db::binary())
                    .arg("--config")
                    .arg(&status_config)
                    .args(["campaign", "status", "no-such-key"])
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            },
        ]
    })
    .await
    .unwrap();
    let expect = [
        "--html: ",
        "subject: must not be empty",
        "nearest valid times are 2099-12-01T09:00:00Z and 2099-12-01T09:15:00Z",
        "no audience named `nope`",
        "key: must be 1 to 128 characters",
        "no campaign with key `no-such-key`",
    ];
    for ((code, stderr), what) in cases.iter().zip(expect) {
        assert_eq!(*code, Some(2), "{stderr}");
        assert!(stderr.contains(what), "expected {what:?} in {stderr}");
    }
    assert!(cases[0].1.contains("is not UTF-8"), "{}", cases[0].1);
    let count: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM campaigns")
        .fetch_one(e.store.pool())
        .await
        .unwrap();
    assert_eq!(count.0, 0);
    assert!(e.campaigns().await.is_empty());
}

/// A push whose send went out but whose `sent` was never recorded (the row says `failed`): the
/// next push of the key asks the provider first and records `sent`, even where its own preflight
/// would refuse (here: `--no-sync` and a stale last sync).
#[tokio::test]
async fn a_sent_campaign_recorded_as_failed_is_found_sent_before_any_preflight() {
    let e = env(4, &[]).await;
    let out = e.push(&request(), Some("lost")).await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    for sql in [
        "UPDATE campaigns SET state = 'failed' WHERE idempotency_key = 'lost'",
        "UPDATE audiences SET last_success_at = '2026-01-01T00:00:00.000Z'",
    ] {
        sqlx::query(sql).execute(e.store.pool()).await.unwrap();
    }
    let deliveries = e.deliveries().await.len();
    let r = PushRequest {
        no_sync: true,
        ..request()
    };
    let again = e.push(&r, Some("lost")).await.unwrap();
    assert_eq!(again.record.state, CampaignState::Sent);
    assert_eq!(e.deliveries().await.len(), deliveries, "nothing sent again");
    assert_eq!(e.campaigns().await.len(), 1);
}
