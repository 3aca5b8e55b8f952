//! Campaign pushes as durable jobs (issue 26) over the real HTTP server against the simulator:
//! `POST /v1/campaigns` answers 202 and the push runs in the background; pushes for one audience
//! queue and go out in order, each once; a server killed mid-push is restarted and the job
//! (and the one queued behind it) carries on, still at most once per key. The simulator's
//! campaigns and `/_sim/deliveries` are the judges.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::app::wait_for_job;
use support::serve::*;
use tokio::io::AsyncBufReadExt;

fn body(subject: &str) -> Value {
    json!({
        "audience": "newsletter",
        "subject": subject,
        "html": format!("<p>{subject}</p>"),
        "from_name": "Riverside Rowing",
        "reply_to": "secretary@club.example",
    })
}

async fn post(http: &reqwest::Client, base: &str, key: &str, subject: &str) -> (StatusCode, Value) {
    let r = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(&body(subject))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The simulator's deliveries: campaign id → the addresses it went to (each must appear once).
async fn deliveries(env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut by_campaign: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in env.sim.campaign_deliveries().await {
        by_campaign
            .entry(d["campaign_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(d["email"].as_str().unwrap().to_lowercase());
    }
    by_campaign
}

/// The campaigns the simulator holds.
async fn sim_campaigns(env: &Env) -> Vec<Value> {
    env.sim.get_json("/campaigns?count=1000").await["campaigns"]
        .as_array()
        .unwrap()
        .clone()
}

/// Two campaigns, each sent once to the five members.
async fn assert_each_sent_once(env: &Env, jobs: &[&Value]) {
    let sent = deliveries(env).await;
    assert_eq!(sent.len(), jobs.len(), "{sent:?}");
    for job in jobs {
        let id = job["campaign"]["provider_campaign_id"].as_str().unwrap();
        let to = &sent[id];
        let unique: BTreeSet<&String> = to.iter().collect();
        assert_eq!(to.len(), 5, "campaign {id} went to {to:?}");
        assert_eq!(
            unique.len(),
            5,
            "campaign {id} went to someone twice: {to:?}"
        );
    }
    assert_eq!(
        sim_campaigns(env).await.len(),
        jobs.len(),
        "one campaign per key"
    );
}

#[tokio::test]
async fn two_pushes_for_one_audience_are_queued_then_sent_in_order_once_each() {
    let env = Env::start(Options::default()).await;
    // Every provider call takes a while, so the second push is asked for while the first runs.
    env.sim.set_faults(json!({"latency_ms": 60})).await;
    let (status, first) = post(&env.http, &env.base, "spring", "Spring news").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "queued", "{first}");
    assert_eq!(first["campaign"], Value::Null);
    let (status, second) = post(&env.http, &env.base, "summer", "Summer news").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    // While the first is being pushed, the second waits behind it.
    let mut seen = BTreeSet::new();
    loop {
        // The second read first: when the first is still at work after it, the second was
        // waiting when it was read.
        let b = env.api_json("/v1/campaigns/summer").await;
        let a = env.api_json("/v1/campaigns/spring").await;
        let a_status = a["status"].as_str().unwrap().to_owned();
        if a_status != "queued" && a_status != "sent" {
            seen.insert(a_status.clone());
            assert_eq!(b["status"], "queued", "the second push started early: {b}");
        }
        if a_status == "sent" {
            break;
        }
        assert_ne!(a_status, "failed", "{a}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.iter()
            .all(|s| ["syncing", "creating", "sending"].contains(&s.as_str())),
        "{seen:?}"
    );
    assert!(!seen.is_empty(), "the first push was never seen at work");
    let base = format!("{}/v1/campaigns", env.base);
    let a = wait_for_job(&env.http, &base, TOKEN, "spring", "sent").await;
    let b = wait_for_job(&env.http, &base, TOKEN, "summer", "sent").await;
    assert!(
        a["finished_at"].as_str().unwrap() <= b["started_at"].as_str().unwrap(),
        "in order: {a} {b}"
    );
    assert_eq!(
        (a["attempts"].clone(), b["attempts"].clone()),
        (json!(1), json!(1))
    );
    assert_each_sent_once(&env, &[&a, &b]).await;
    // Asked for again: 200 with the job as it is; nothing more is sent.
    let (status, again) = post(&env.http, &env.base, "spring", "Spring news").await;
    assert_eq!((status, &again["status"]), (StatusCode::OK, &json!("sent")));
    let (status, conflict) = post(&env.http, &env.base, "spring", "Other news").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_each_sent_once(&env, &[&a, &b]).await;
    env.stop().await;
}

/// A `serve` killed (SIGKILL) right after it created the first campaign, with a second push
/// queued behind it; a new `serve` finds the first job interrupted once its lease ran out, runs
/// it again without creating or sending anything twice, then the second.
#[tokio::test]
async fn a_server_killed_mid_push_is_restarted_and_its_queue_carries_on_once() {
    let mut env = Env::start(Options::default()).await;
    // Only the child servers work on the queue.
    env.server.take().unwrap().shutdown().await.unwrap();
    let config = env.dir.join("mailbridge.toml");
    let lease = (mailbridge::store::locks::LEASE_TTL_ENV, "1500");
    let (mut first_server, base) = env
        .spawn_serve_env(
            &config,
            "warn",
            &[lease, (mailbridge::cli::campaigns::PAUSE_ENV, "create")],
        )
        .await;
    let (status, _) = post(&env.http, &base, "spring", "Spring news").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = post(&env.http, &base, "summer", "Summer news").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The server says when it has created the first campaign (and stops there).
    let stderr = first_server.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(mailbridge::cli::campaigns::PAUSE_MARKER) {
                return;
            }
        }
        panic!("the server ended before it created the campaign");
    })
    .await
    .expect("the campaign was never created");
    first_server.kill().await.unwrap();
    assert_eq!(sim_campaigns(&env).await.len(), 1, "created, not sent");
    assert!(deliveries(&env).await.is_empty());
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM campaign_jobs WHERE idempotency_key = 'spring'")
            .fetch_one(&env.state)
            .await
            .unwrap();
    assert!(
        ["syncing", "creating"].contains(&status.as_str()),
        "{status}"
    );

    let (mut second_server, base) = env.spawn_serve_env(&config, "warn", &[lease]).await;
    let url = format!("{base}/v1/campaigns");
    let a = wait_for_job(&env.http, &url, TOKEN, "spring", "sent").await;
    assert_eq!(a["attempts"], 2, "{a}");
    assert!(a["interrupted_at"].is_string(), "{a}");
    assert!(
        ["syncing", "creating"].contains(&a["interrupted_step"].as_str().unwrap()),
        "{a}"
    );
    let b = wait_for_job(&env.http, &url, TOKEN, "summer", "sent").await;
    assert_eq!(b["attempts"], 1, "{b}");
    assert_each_sent_once(&env, &[&a, &b]).await;
    second_server.kill().await.unwrap();
}

/// A worker killed as it started a push holds the campaign key's lease without having recorded
/// anything; the job run again (by another worker) waits for that lease to run out and sends,
/// once, instead of failing as "another push is starting" (found by tests/faults_sync.rs).
#[tokio::test]
async fn a_key_held_by_a_dead_push_that_recorded_nothing_is_sent_once_its_lease_runs_out() {
    use mailbridge::store::locks::LockHolder;
    let env = Env::start(Options::default()).await;
    let config = support::app::load_config(&env.dir.join("mailbridge.toml"));
    let store = support::app::open_store(&config.state.url).await;
    // The dead worker's lease: taken, never renewed, no campaign row behind it.
    let dead = LockHolder::this_process("killed-worker");
    assert_eq!(
        store.try_lock("campaign:held", &dead, 2).await.unwrap(),
        None
    );
    let (status, _) = post(&env.http, &env.base, "held", "Held news").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let base = format!("{}/v1/campaigns", env.base);
    let job = wait_for_job(&env.http, &base, TOKEN, "held", "sent").await;
    assert_each_sent_once(&env, &[&job]).await;
    env.stop().await;
}
