//! Graceful shutdown (issue 26) with a real SIGTERM to a child process: `mailbridge sync` stops
//! its run before the next provider write, records it `interrupted`, releases the audience's
//! lease (another worker takes it at once) and exits 0, and the next run resumes; `mailbridge
//! relay` finishes the messages being sent, hands back the ones it claimed but had not started
//! (with leases of ten minutes, a rerun at once delivers them) and exits 0, sending nothing twice.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailbridge::store::locks::LockHolder;
use serde_json::json;
use support::serve::*;
use support::{db, smtp};

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// Waits for `child` to exit (bounded: a failure must not hang the suite).
async fn exit_status(mut child: tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the process did not stop within 60 s of SIGTERM")
        .unwrap()
}

const MEMBERS: u64 = 5000;

/// Members 6..=MEMBERS beside the five the environment starts with.
async fn add_members(env: &Env) {
    db::insert_members(&env.members, (6..=MEMBERS).map(member_sql)).await;
}

/// The audience's sync lock is free: another worker takes it at once.
async fn sync_lock_is_free(config: &std::path::Path) {
    let url = support::app::load_config(config).state.url;
    let other = support::app::open_store(&url).await;
    let holder = LockHolder::this_process("next-worker");
    assert_eq!(
        other
            .try_lock("sync:newsletter", &holder, 60)
            .await
            .unwrap(),
        None,
        "the audience's lock is still held"
    );
    other.unlock("sync:newsletter", &holder).await.unwrap();
    other.close().await;
}

/// Waits until the run has committed a first batch, sends SIGTERM to `child`, and returns its
/// exit status and stderr once it stopped (within 60 s).
async fn sigterm_after_first_batch(
    env: &Env,
    child: tokio::process::Child,
) -> (std::process::ExitStatus, String) {
    wait_until(
        "the first batch committed",
        Duration::from_secs(60),
        || async {
            env.state_count(
                "SELECT COUNT(*) FROM sync_runs WHERE status = 'running' AND committed > 0",
            )
            .await
                == 1
        },
    )
    .await;
    sigterm(child.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the process did not stop within 60 s of SIGTERM")
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The run `run_id` is `interrupted` with part of the audience committed, and the next run
/// (`resumed_by`) finished it: every member is at the provider.
async fn interrupted_mid_run_then_resumed(env: &Env, run_id: &str, status: &str, committed: i64) {
    assert_eq!(status, "interrupted");
    assert!(
        committed > 0 && committed < MEMBERS as i64,
        "committed {committed}: the run was not stopped in the middle"
    );
    let (resumed_by,): (Option<String>,) =
        sqlx::query_as("SELECT resumed_by FROM sync_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.state)
            .await
            .unwrap();
    assert!(
        resumed_by.is_some(),
        "the next run did not resume the interrupted one"
    );
    assert_eq!(env.sim.sim_members(&env.list).await.len(), MEMBERS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_sync_between_batches_releases_its_lease_and_exits_0() {
    let mut env = Env::start(Options::default()).await;
    env.server.take().unwrap().shutdown().await.unwrap();
    add_members(&env).await;
    // Slow calls, so the run is caught between its batches.
    env.sim.set_faults(json!({"latency_ms": 300})).await;
    let config = env.dir.join("mailbridge.toml");
    let child = tokio::process::Command::new(db::binary())
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .env("MAILBRIDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (exit, log) = sigterm_after_first_batch(&env, child).await;
    assert!(exit.success(), "exit {exit:?}: {log}");
    assert!(log.contains("stopped for the shutdown"), "{log}");
    let (run_id, status, committed): (String, String, i64) =
        sqlx::query_as("SELECT run_id, status, committed FROM sync_runs")
            .fetch_one(&env.state)
            .await
            .unwrap();
    // The lease is released: another worker takes the audience at once (its lease would
    // otherwise last a minute).
    sync_lock_is_free(&config).await;

    // The next run resumes from what was committed and finishes the audience.
    env.sim.set_faults(json!({"latency_ms": 0})).await;
    env.sync_plain();
    interrupted_mid_run_then_resumed(&env, &run_id, &status, committed).await;
}

const N: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_relay_hands_back_its_claims_and_exits_0() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Ten-minute leases: a claim left behind would keep its message from the rerun below.
    let support::relay::SmarthostDrain {
        sink,
        config_path,
        store,
        expected,
        ..
    } = support::relay::SmarthostDrain::queue(dir.path(), 600, N).await;
    let child = tokio::process::Command::new(db::binary())
        .arg("--config")
        .arg(&config_path)
        .arg("relay")
        .env("MAILBRIDGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    sink.wait_for_async(100, Duration::from_secs(120)).await;
    sigterm(child.id().unwrap());
    let status = exit_status(child).await;
    assert!(status.success(), "relay exit {status:?}");
    let at_term = sink.count();
    assert!(at_term < N, "the relay finished before SIGTERM ({at_term})");
    // Nothing is left leased to the stopped worker.
    let now = store.now_text();
    let (leased,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'sending' AND lease_until > $1")
            .bind(&now)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(leased, 0, "claims still held after the relay stopped");

    support::run_ok(
        Command::new(db::binary())
            .arg("--config")
            .arg(&config_path)
            .args(["relay", "--once", "--json"]),
        "mailbridge relay --once",
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        *seen.entry(m.header("Message-ID").unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "every message delivered");
    assert!(expected.iter().all(|id| seen.contains_key(id)));
    // A graceful stop records every message it sent: none goes twice.
    assert!(seen.values().all(|&n| n == 1), "a message was sent twice");
    store.close().await;
}

/// Past `[server] shutdown_grace_secs` the command gives up: exit 1, and an ERROR line names what
/// it abandoned. (The provider answers each call after 3 s; the grace is 1 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_sync_exits_1_saying_what_it_abandoned() {
    let mut env = Env::start(Options {
        extra_server: "shutdown_grace_secs = 1\n".into(),
        ..Options::default()
    })
    .await;
    env.server.take().unwrap().shutdown().await.unwrap();
    env.sim.set_faults(json!({"latency_ms": 3000})).await;
    let child = tokio::process::Command::new(db::binary())
        .arg("--config")
        .arg(env.dir.join("mailbridge.toml"))
        .arg("sync")
        .env("MAILBRIDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The run has started (its first provider call is under way).
    wait_until("the run to start", Duration::from_secs(30), || async {
        env.state_count("SELECT COUNT(*) FROM sync_runs WHERE status = 'running'")
            .await
            == 1
    })
    .await;
    sigterm(child.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sync did not stop after its grace period")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("ERROR") && log.contains("abandoned the sync of audience `newsletter`"),
        "{log}"
    );
    env.sim.set_faults(json!({"latency_ms": 0})).await;
}

/// `serve` on SIGTERM while its job worker runs a sync asked for over HTTP: the run stops
/// before its next provider write (`interrupted`, part committed), the job is not left
/// `syncing`, every lease is released, the process exits 0; the next `serve` takes the job
/// again, resumes the run, and the audience ends complete with each member written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_serve_mid_sync_job_hands_the_job_back_and_exits_0() {
    let mut env = Env::start(Options::default()).await;
    env.server.take().unwrap().shutdown().await.unwrap();
    add_members(&env).await;
    env.sim.set_faults(json!({"latency_ms": 300})).await;
    let config = env.dir.join("mailbridge.toml");
    let (child, base) = env.spawn_serve(&config, "info").await;
    let run_id = env.post_sync_at(&base).await;
    let (exit, log) = sigterm_after_first_batch(&env, child).await;
    assert!(exit.success(), "serve exit {exit:?}: {log}");
    let (status, committed): (String, i64) =
        sqlx::query_as("SELECT status, committed FROM sync_runs WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&env.state)
            .await
            .unwrap();
    let (job_status,): (String,) = sqlx::query_as(
        "SELECT status FROM campaign_jobs WHERE kind = 'sync' AND idempotency_key = $1",
    )
    .bind(&run_id)
    .fetch_one(&env.state)
    .await
    .unwrap();
    assert_ne!(
        job_status, "done",
        "the job was closed though its run did not finish"
    );
    assert_ne!(job_status, "failed", "a shutdown is not a failure: {log}");
    sync_lock_is_free(&config).await;
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM locks").await,
        0,
        "serve left leases behind: {log}"
    );

    // The next server takes the job again and finishes the audience, resuming the run.
    env.sim.set_faults(json!({"latency_ms": 0})).await;
    let (mut second, _base) = env.spawn_serve(&config, "warn").await;
    env.wait_state_count(
        "the job done",
        "SELECT COUNT(*) FROM campaign_jobs WHERE kind = 'sync' AND status = 'done'",
        1,
        Duration::from_secs(60),
    )
    .await;
    second.kill().await.unwrap();
    interrupted_mid_run_then_resumed(&env, &run_id, &status, committed).await;
}
