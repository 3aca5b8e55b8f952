//! The built-in nightly schedule end to end (issue 26), on the project's manual clock: real
//! `serve` applications (in-process, two or three on one state DB), the simulator and a member
//! DB. The night's sync starts at its time and runs once however many workers share the state
//! DB; a night missed while no process was up runs at start-up only with
//! `[server] catch_up_missed = true`.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone, Utc};
use mailbridge::app::App;
use mailbridge::campaigns::jobs::nightly_run_id;
use mailbridge::clock::ManualClock;
use mailbridge::http::ServerHandle;
use support::serve::*;

fn local(d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Local
        .from_local_datetime(
            &NaiveDate::from_ymd_opt(2026, 11, d)
                .unwrap()
                .and_hms_opt(h, min, 0)
                .unwrap(),
        )
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

async fn env(pg_state: bool, catch_up: bool) -> Env {
    let mut env = Env::start(Options {
        pg_state,
        ..Options::default()
    })
    .await;
    // Only the workers on the manual clock run (this one is on the system clock, and has no
    // schedule: with one it could catch up a night of the real clock).
    env.server.take().unwrap().shutdown().await.unwrap();
    let text = env.config_text.replace(
        "[server]\n",
        &format!("[server]\nnightly_sync = \"02:30\"\ncatch_up_missed = {catch_up}\n"),
    );
    assert_ne!(text, env.config_text);
    std::fs::write(env.dir.join("mailbridge.toml"), text).unwrap();
    env
}

async fn worker(env: &Env, clock: &Arc<ManualClock>) -> ServerHandle {
    let config = support::app::load_config(&env.dir.join("mailbridge.toml"));
    mailbridge::http::serve::start(
        App::new(config).with_clock(clock.clone()),
        Some("127.0.0.1:0"),
    )
    .await
    .unwrap()
}

/// The finished runs, oldest first: (run id, status, started_at).
async fn runs(env: &Env) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT run_id, status, started_at FROM sync_runs ORDER BY started_at")
        .fetch_all(&env.state)
        .await
        .unwrap()
}

async fn wait_finished(env: &Env, n: usize) -> Vec<(String, String, String)> {
    wait_until(
        &format!("{n} finished runs"),
        Duration::from_secs(60),
        || async {
            let r = runs(env).await;
            r.len() >= n && r.iter().all(|(_, status, _)| status != "running")
        },
    )
    .await;
    runs(env).await
}

fn ids(runs: &[(String, String, String)]) -> Vec<&str> {
    runs.iter().map(|(id, _, _)| id.as_str()).collect()
}

async fn runs_at_its_time_once_across_three_workers(pg_state: bool) {
    let env = env(pg_state, false).await;
    let clock = ManualClock::new(local(28, 2, 0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&env, &clock).await);
    }
    let night1 = local(28, 2, 30);
    clock.advance(Duration::from_secs(29 * 60));
    // A minute before its time, nothing is queued (the workers' start-up has run: they answer).
    for w in &workers {
        let r = env
            .http
            .get(format!("http://{}/healthz", w.addr))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM campaign_jobs").await,
        0
    );

    clock.set(night1);
    let first = wait_finished(&env, 1).await;
    assert_eq!(ids(&first), [nightly_run_id(night1, "newsletter")]);
    assert_eq!(first[0].1, "succeeded", "{first:?}");
    // It started at its time (the clock stands at 02:30 while it runs).
    assert_eq!(DateTime::parse_from_rfc3339(&first[0].2).unwrap(), night1);

    let night2 = local(29, 2, 30);
    clock.set(night2);
    let second = wait_finished(&env, 2).await;
    assert_eq!(
        ids(&second),
        [
            nightly_run_id(night1, "newsletter"),
            nightly_run_id(night2, "newsletter")
        ],
        "each night once, whichever worker queued it"
    );
    assert!(
        second.iter().all(|(_, s, _)| s == "succeeded"),
        "{second:?}"
    );
    // Both jobs end `done` (the job is closed just after its run's row).
    env.wait_state_count(
        "both nightly jobs done",
        "SELECT COUNT(*) FROM campaign_jobs WHERE kind = 'sync' AND status = 'done'",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM campaign_jobs").await,
        2,
        "one job per night"
    );
    assert_eq!(env.sim.sim_members(&env.list).await.len(), 5);
    for w in workers {
        w.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_sync_runs_at_its_time_once_across_three_workers_sqlite() {
    runs_at_its_time_once_across_three_workers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_sync_runs_at_its_time_once_across_three_workers_postgres() {
    runs_at_its_time_once_across_three_workers(true).await;
}

/// Down at 02:30, started at 10:00 with `catch_up_missed`: the night's sync runs at once, and a
/// second worker started later does not run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_night_runs_at_start_up_when_configured() {
    let env = env(false, true).await;
    let clock = ManualClock::new(local(28, 10, 0));
    let first = worker(&env, &clock).await;
    let missed = local(28, 2, 30);
    let done = wait_finished(&env, 1).await;
    assert_eq!(ids(&done), [nightly_run_id(missed, "newsletter")]);
    assert_eq!(done[0].1, "succeeded", "{done:?}");
    // Started at 10:00, not at 02:30.
    assert_eq!(
        DateTime::parse_from_rfc3339(&done[0].2).unwrap(),
        local(28, 10, 0)
    );

    // A second worker starting (also catching up) and the next night: one more run only.
    let second = worker(&env, &clock).await;
    let night = local(29, 2, 30);
    clock.set(night);
    let done = wait_finished(&env, 2).await;
    assert_eq!(
        ids(&done),
        [
            nightly_run_id(missed, "newsletter"),
            nightly_run_id(night, "newsletter")
        ]
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// Without `catch_up_missed` (the default) a missed night stays missed: the next run is the
/// next night's. (Catching up would queue the missed night first, in the same task, so it
/// would show here before the next night's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_night_is_skipped_by_default() {
    let env = env(false, false).await;
    let clock = ManualClock::new(local(28, 10, 0));
    let server = worker(&env, &clock).await;
    let night = local(29, 2, 30);
    clock.set(night);
    let done = wait_finished(&env, 1).await;
    assert_eq!(ids(&done), [nightly_run_id(night, "newsletter")]);
    server.shutdown().await.unwrap();
}
