//! Fault harness (issue 26), on loopback only: a real `mailbridge relay` process drains an outbox
//! into a real SMTP server (aiosmtpd, tests/support/smtp) while something breaks under it.
//!
//! - the SMTP server is killed (SIGKILL) mid-drain and started again on the same port;
//! - the test's own PostgreSQL server (not the shared one) is restarted mid-drain;
//! - the relay itself is killed (SIGKILL) at seeded random points and started again.
//!
//! The judges are the SMTP server's maildirs and the outbox: 0 messages lost (every message
//! `sent`, every Message-ID received), and no message received twice unless the relay recorded an
//! attempt at it as ambiguous (the server may have taken the message and lost its answer: SMTP
//! cannot tell, so a resend is allowed) or a killed relay held it. Every wait is on observable
//! state with a deadline. Sizes and kills are tunable: `MAILBRIDGE_FAULT_MESSAGES`,
//! `MAILBRIDGE_FAULT_KILLS`; `MAILBRIDGE_FAULT_SEED` replays a run (each test prints its seed).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailbridge::store::Store;
use rand::Rng;
use smtp::{Sink, SinkOptions};
use support::app::RelayParts;
use support::fault::{recorded_duplicates, relay_lines, seed, tunable, wait_until};
use support::pg_server::PgServer;
use support::{db, smtp};

/// The lease of the tests whose relay is not killed: long enough that a loaded 2-core machine
/// never lets one run out mid-send.
const LEASE_SECS: u64 = 10;

/// An outbox of `n` queued messages on `state_url`, with the relay configured for the SMTP
/// server on `port`.
struct Drain {
    config: PathBuf,
    store: Store,
    /// Outbox id → Message-ID of every queued message.
    expected: HashMap<String, String>,
}

impl Drain {
    async fn queue(dir: &Path, state_url: &str, port: u16, n: usize, lease_secs: u64) -> Drain {
        let config = smtp::relay_config(dir, state_url, &relay_lines(port, lease_secs));
        let RelayParts { relay, store, .. } = RelayParts::open(&config).await;
        let expected: HashMap<String, String> =
            support::relay::queue_registrations(&store, &relay, n)
                .await
                .into_iter()
                .map(|q| (q.id, q.message_id))
                .collect();
        Drain {
            config,
            store,
            expected,
        }
    }

    /// How many messages have each status.
    async fn statuses(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            .fetch_all(self.store.pool())
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default()
    }

    async fn count(&self, status: &str) -> i64 {
        self.statuses().await.get(status).copied().unwrap_or(0)
    }

    /// Starts `mailbridge relay` (the continuous worker loop), logging JSON lines to `log`.
    fn spawn(&self, log: &Path) -> Relay {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(db::binary())
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json", "relay"])
            // The store logs each connection it opens at debug: a reconnect shows.
            .env("MAILBRIDGE_LOG", "info,mailbridge::store=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start mailbridge relay");
        Relay {
            child,
            log: log.to_owned(),
        }
    }

    /// Waits until every message is `sent`, checking that `relay` keeps running meanwhile.
    async fn wait_all_sent(&self, relay: &mut Relay, timeout: Duration) {
        let n = self.expected.len() as i64;
        wait_until("every message sent", timeout, async || {
            relay.assert_running();
            let statuses = self.statuses().await;
            for bad in ["failed", "bounced", "suppressed"] {
                assert_eq!(statuses.get(bad), None, "{statuses:?}");
            }
            statuses.get("sent").copied() == Some(n)
        })
        .await;
    }

    /// The verdict on what `sinks` received: panics on a lost message, or on a message received
    /// twice that is neither among `recorded` (outbox ids the relay logged as possibly delivered
    /// twice, see [`recorded_duplicates`]) nor among `allowed` more (messages a killed relay held). Returns (received, unique,
    /// duplicates).
    fn judge(
        &self,
        sinks: &[&Sink],
        recorded: &HashSet<String>,
        allowed: usize,
    ) -> (usize, usize, usize) {
        support::fault::judge_deliveries(&self.expected, sinks, recorded, allowed)
    }
}

/// A running `mailbridge relay`; killed on drop.
struct Relay {
    child: Child,
    log: PathBuf,
}

impl Relay {
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the relay exited ({status}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGTERM, then waits for the relay to stop; it must exit 0.
    async fn terminate(mut self) {
        self.assert_running();
        support::run_ok(
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]),
            "kill -TERM the relay",
        );
        let mut status = None;
        wait_until(
            "the relay stops on SIGTERM",
            Duration::from_secs(30),
            async || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            },
        )
        .await;
        assert!(
            status.is_some_and(|s| s.success()),
            "the relay did not exit 0 on SIGTERM: {status:?}"
        );
    }
}

impl Relay {
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The JSON log lines whose message contains `text`.
    fn logged(&self, text: &str) -> Vec<serde_json::Value> {
        support::fault::logged(&self.log, text)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SMTP server is SIGKILLed once it has received some of the messages and started again on
/// the same port once the relay has seen it gone: the running relay delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_server_killed_and_restarted_mid_drain_loses_nothing() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let started = Instant::now();
    let n = tunable("MAILBRIDGE_FAULT_MESSAGES", 2000);
    let mut rng = seed("smtp_server_killed");
    let kill_at = rng.random_range(n / 10..n / 2).max(1);
    let dir = tempfile::tempdir().unwrap();
    let mut first = Sink::start(dir.path(), None, &SinkOptions::default());
    let port = first.port;
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let drain = Drain::queue(dir.path(), &state, port, n, LEASE_SECS).await;
    let mut relay = drain.spawn(&dir.path().join("relay.log"));

    first.wait_for_async(kill_at, Duration::from_secs(60)).await;
    first.kill();
    let at_kill = first.count();
    assert!(at_kill < n, "the drain ended before the kill ({at_kill})");
    // The relay has seen the server gone: messages wait for their retry.
    wait_until(
        "messages deferred while the server is down",
        Duration::from_secs(30),
        async || {
            relay.assert_running();
            drain.count("deferred").await > 0
        },
    )
    .await;
    let second = Sink::start(
        dir.path(),
        None,
        &SinkOptions {
            port,
            ..SinkOptions::default()
        },
    );
    drain
        .wait_all_sent(&mut relay, Duration::from_secs(120))
        .await;
    let log = relay.log.clone();
    relay.terminate().await;

    let (recorded, ambiguous) = recorded_duplicates(std::slice::from_ref(&log));
    let (total, unique, duplicates) = drain.judge(&[&first, &second], &ambiguous, 0);
    eprintln!(
        "smtp server killed: {n} messages, killed after {at_kill} received, {} after the restart; \
         {total} received, {unique} unique, {duplicates} duplicate(s), {} recorded ambiguous ({} as possible duplicates); {:.1} s",
        second.count(),
        ambiguous.len(),
        recorded.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(second.count() > 0, "the restarted server received the rest");
    drain.store.close().await;
}

/// What the relay logs when it reaches the state DB again after failing to (see the worker).
const RECONNECTED: &str = "reached the state database again";
/// What the store logs (debug) for each connection it opens.
const CONNECTED: &str = "Opened a connection to the state database";

/// The test's own PostgreSQL server (the state DB) is restarted mid-drain, by `pg_ctl stop -m
/// fast` or by SIGKILL to the postmaster (seeded): the relay keeps running, reconnects (and says
/// so), and every message is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_mid_drain_the_relay_reconnects_and_sends_each_message_once() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let Some(server) = PgServer::start(|_| String::new()) else {
        return;
    };
    let started = Instant::now();
    // Enough that the drain is still going when the server stops: a PostgreSQL claim takes
    // 1,024 messages at this concurrency, and 2,000 were all sent before a restart could land.
    let n = tunable("MAILBRIDGE_FAULT_MESSAGES", 10_000);
    let mut rng = seed("postgresql_restarted");
    let restart_at = rng.random_range(n / 10..n / 2).max(1);
    let kill_postmaster = rng.random_bool(0.5);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), None, &SinkOptions::default());
    let state = server.url("127.0.0.1", "postgres", "sslmode=disable");
    let drain = Drain::queue(dir.path(), &state, sink.port, n, LEASE_SECS).await;
    let mut relay = drain.spawn(&dir.path().join("relay.log"));

    sink.wait_for_async(restart_at, Duration::from_secs(60))
        .await;
    if kill_postmaster {
        server.kill_postmaster();
    } else {
        server.stop_fast();
    }
    let at_restart = sink.count();
    let restarted_at = chrono::Utc::now();
    server.pg_ctl_start();
    assert!(
        at_restart < n,
        "the drain ended before the restart ({at_restart})"
    );
    drain
        .wait_all_sent(&mut relay, Duration::from_secs(120))
        .await;
    // The pool replaced its dead connections: new ones were opened after the restart.
    let opened_since = relay
        .logged(CONNECTED)
        .iter()
        .filter(|v| {
            v["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > restarted_at)
        })
        .count();
    // A step that failed on the restart is followed by one that got through again, said so.
    let failures = relay
        .logged("state database")
        .iter()
        .filter(|v| v["level"] == "WARN")
        .count();
    let reconnects = relay.logged(RECONNECTED);
    let log = relay.log.clone();
    relay.terminate().await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        opened_since > 0,
        "the relay opened no state DB connection after the restart: {}",
        log_text()
    );
    assert!(
        failures == 0 || !reconnects.is_empty(),
        "{failures} state DB failure(s) logged but no reconnect: {}",
        log_text()
    );
    let (recorded, ambiguous) = recorded_duplicates(std::slice::from_ref(&log));
    let (total, unique, duplicates) = drain.judge(&[&sink], &ambiguous, 0);
    eprintln!(
        "postgresql restarted ({}): {n} messages, restarted after {at_restart} received; \
         {total} received, {unique} unique, {duplicates} duplicate(s), {} recorded ambiguous ({} as possible duplicates), \
         {failures} failure(s) on it logged, {} reconnect(s) logged, \
         {opened_since} connection(s) opened since; {:.1} s",
        if kill_postmaster {
            "postmaster SIGKILLed"
        } else {
            "pg_ctl stop -m fast"
        },
        ambiguous.len(),
        recorded.len(),
        reconnects.len(),
        started.elapsed().as_secs_f64()
    );
    drain.store.close().await;
}

/// The lease of the crash test's relays: what a restarted relay waits before it takes over the
/// messages a killed one held.
const CRASH_LEASE_SECS: u64 = 3;

/// `mailbridge relay` SIGKILLed at seeded random points of a drain (`MAILBRIDGE_FAULT_KILLS`,
/// default 5) and started again each time: at the end every message is sent, and a message came
/// twice only if a killed relay held it (leased, maybe sent, not yet recorded) or the relay
/// recorded it as possibly sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_at_random_points_converges_with_nothing_lost() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let started = Instant::now();
    let n = tunable("MAILBRIDGE_FAULT_MESSAGES", 2000);
    let kills = tunable("MAILBRIDGE_FAULT_KILLS", 5);
    let mut rng = seed("relay_killed");
    // The points, as counts of messages received, spread over the first 90% of the drain.
    let mut points: Vec<usize> = (0..kills)
        .map(|_| rng.random_range(1..(n * 9 / 10).max(2)))
        .collect();
    points.sort_unstable();
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), None, &SinkOptions::default());
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let drain = Drain::queue(dir.path(), &state, sink.port, n, CRASH_LEASE_SECS).await;
    let mut logs = Vec::new();
    let mut held: HashSet<String> = HashSet::new();
    let mut received_at_kills = Vec::new();
    for (i, point) in points.iter().enumerate() {
        logs.push(dir.path().join(format!("relay-{i}.log")));
        let mut relay = drain.spawn(logs.last().unwrap());
        sink.wait_for_async(*point, Duration::from_secs(120)).await;
        relay.assert_running();
        relay.kill();
        received_at_kills.push(sink.count());
        // What the killed relay held: maybe sent, not recorded; a later relay sends it again.
        let leased: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM outbox WHERE status = 'sending'")
                .fetch_all(drain.store.pool())
                .await
                .unwrap();
        held.extend(leased.into_iter().map(|(id,)| id));
    }
    logs.push(dir.path().join("relay-last.log"));
    let mut relay = drain.spawn(logs.last().unwrap());
    drain
        .wait_all_sent(&mut relay, Duration::from_secs(120))
        .await;
    relay.terminate().await;

    let (mut recorded, ambiguous) = recorded_duplicates(&logs);
    let recorded_only = recorded.len();
    recorded.extend(held.iter().cloned());
    let (total, unique, duplicates) = drain.judge(&[&sink], &recorded, 0);
    eprintln!(
        "relay killed {kills} time(s) (after {received_at_kills:?} received): {n} messages; \
         {total} received, {unique} unique, {duplicates} duplicate(s); {} held by a killed relay, \
         {} recorded ambiguous, {recorded_only} recorded as possible duplicates; {:.1} s",
        held.len(),
        ambiguous.len(),
        started.elapsed().as_secs_f64()
    );
    drain.store.close().await;
}
