//! Syncs asked for over HTTP are durable jobs (issue 26), over the real HTTP server (a `serve`
//! child process) against the simulator: `POST /v1/sync` while another worker holds the
//! audience's lock is queued (202, `GET /v1/sync/{id}` shows `queued`), the queue survives a
//! restart of the server, and once the lock is free both syncs run, one after the other, each
//! once.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::DateTime;
use mailbridge::store::locks::LockHolder;
use reqwest::Method;
use serde_json::Value;
use support::serve::*;

fn time(v: &Value, field: &str) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(v[field].as_str().unwrap()).unwrap()
}

async fn two_syncs_queue_behind_a_held_lock_and_run_once_each(pg_state: bool) {
    let mut env = Env::start(Options {
        pg_state,
        ..Options::default()
    })
    .await;
    // Only the child servers work on the queue.
    env.server.take().unwrap().shutdown().await.unwrap();
    let config = env.dir.join("mailbridge.toml");
    let lease_env = (mailbridge::store::locks::LEASE_TTL_ENV, "1500");

    // Another worker (here: this test) is syncing the audience: it holds the audience's lock.
    let state_url = support::app::load_config(&config).state.url;
    let other = support::app::open_store(&state_url)
        .await
        .with_lease_ttl(Duration::from_millis(1500));
    let lease = other
        .lease("sync:newsletter", LockHolder::this_process("other-worker"))
        .await
        .unwrap()
        .unwrap();

    let (mut first, base) = env.spawn_serve_env(&config, "warn", &[lease_env]).await;
    let a = env.post_sync_at(&base).await;
    let b = env.post_sync_at(&base).await;
    assert_ne!(a, b);
    // The worker took the first, found the audience locked, and put it back.
    wait_until(
        "the first sync to wait for the lock",
        Duration::from_secs(20),
        || async {
            let v = env.api_json_at(&base, &format!("/v1/sync/{a}")).await;
            v["status"] == "queued" && v["waiting_for"].is_string()
        },
    )
    .await;
    let v = env.api_json_at(&base, &format!("/v1/sync/{b}")).await;
    assert_eq!(v["status"], "queued", "{v}");
    assert_eq!(v["audience"], "newsletter", "{v}");

    // The queue outlives the server.
    first.kill().await.unwrap();
    let (mut second, base) = env.spawn_serve_env(&config, "warn", &[lease_env]).await;
    for id in [&a, &b] {
        // Queued, or being tried again by the new server's worker (which puts it back).
        let v = env.api_json_at(&base, &format!("/v1/sync/{id}")).await;
        assert!(
            ["queued", "syncing"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
    }
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM sync_runs").await,
        0,
        "nothing ran while the lock was held"
    );

    lease.release().await;
    env.base = base.clone();
    let first_run = env.wait_for_run(&a).await;
    let second_run = env.wait_for_run(&b).await;
    assert_eq!(first_run["status"], "succeeded", "{first_run}");
    assert_eq!(second_run["status"], "succeeded", "{second_run}");
    // Once each: the first created the five members, the second found nothing to write.
    assert_eq!(first_run["created"], 5, "{first_run}");
    assert_eq!(second_run["created"], 0, "{second_run}");
    assert_eq!(second_run["unchanged"], 5, "{second_run}");
    assert_eq!(second_run["api_calls"]["write"], 0, "{second_run}");
    // One after the other.
    assert!(
        time(&second_run, "started_at") >= time(&first_run, "finished_at"),
        "{first_run}\n{second_run}"
    );
    assert_eq!(env.state_count("SELECT COUNT(*) FROM sync_runs").await, 2);
    // Both jobs end `done` (each is closed just after its run's row).
    env.wait_state_count(
        "both sync jobs done",
        "SELECT COUNT(*) FROM campaign_jobs WHERE kind = 'sync' AND status = 'done' AND finished_at IS NOT NULL",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(env.state_count("SELECT COUNT(*) FROM sync_runs").await, 2);
    second.kill().await.unwrap();
}

#[tokio::test]
async fn syncs_queue_behind_another_worker_and_survive_a_restart_sqlite() {
    two_syncs_queue_behind_a_held_lock_and_run_once_each(false).await;
}

#[tokio::test]
async fn syncs_queue_behind_another_worker_and_survive_a_restart_postgres() {
    two_syncs_queue_behind_a_held_lock_and_run_once_each(true).await;
}

/// Two syncs asked for back to back in one process run one after the other, each once.
#[tokio::test]
async fn two_posts_in_one_server_run_in_order() {
    let env = Env::start(Options::default()).await;
    let a = env.start_sync_run().await;
    let b = env.start_sync_run().await;
    let first_run = env.wait_for_run(&a).await;
    let second_run = env.wait_for_run(&b).await;
    assert_eq!(first_run["created"], 5, "{first_run}");
    assert_eq!(second_run["unchanged"], 5, "{second_run}");
    assert!(time(&second_run, "started_at") >= time(&first_run, "finished_at"));
    let unknown = env.api(Method::GET, "/v1/sync/nope").send().await.unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
}
