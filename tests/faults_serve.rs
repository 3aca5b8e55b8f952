//! Fault harness of `mailbridge serve` (issue 26), on loopback only, with real processes:
//!
//! - a webhook storm (signed Mailchimp form posts over many connections, each event retried by
//!   the sender until it gets its 200, as Mailchimp does) while `serve` is SIGKILLed at seeded
//!   random points and started again on the same port;
//! - three `serve` processes on one PostgreSQL state DB with the nightly schedule, the Constant
//!   Contact poller and the relay running, one of them SIGKILLed mid-way.
//!
//! The judges are what the processes leave behind: the member DB (a trigger logs each change of
//! a member's status), the suppression list (a trigger logs each change), `provider_events` (no
//! duplicate, all applied), `sync_runs`, and the SMTP server's maildir. Every wait is on observable
//! state with a deadline. Sizes are tunable for the full run: `MAILBRIDGE_FAULT_EVENTS`,
//! `MAILBRIDGE_FAULT_KILLS`, `MAILBRIDGE_FAULT_MESSAGES`; `MAILBRIDGE_FAULT_SEED` replays a run
//! (each test prints its seed).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailbridge::providers::mailchimp::webhook::mailchimp_signature;
use rand::Rng;
use reqwest::StatusCode;
use support::fault::{seed, tunable};
use support::serve::*;
use tokio::sync::watch;

/// A lease a SIGKILLed `serve` holds (the writeback lease) runs out this soon, so that the next
/// process takes its work over within a test's time (milliseconds).
const CRASH_LEASE_MS: &str = "1500";

/// What member `i` of the storm receives, and what it must leave behind.
struct StormEvent {
    /// The delivery's form body.
    form: String,
    /// The event type stored.
    event_type: &'static str,
    /// The member's `email_status` after it.
    status: &'static str,
    /// The suppression it adds.
    suppression: Option<&'static str>,
}

fn storm_event(list: &str, i: u64) -> StormEvent {
    let email = format!("m{i}@example.org");
    let fired_at = "2026-11-28 10:00:00";
    let (form, event_type, suppression) = match i % 3 {
        0 => (
            unsubscribe_form(list, &email, fired_at, "manual"),
            "unsubscribed",
            None,
        ),
        1 => (
            unsubscribe_form(list, &email, fired_at, "abuse"),
            "complained",
            Some("spam_complaint"),
        ),
        _ => (
            cleaned_form(list, &email, fired_at),
            "cleaned",
            Some("hard_bounce"),
        ),
    };
    StormEvent {
        form,
        event_type,
        status: event_type,
        suppression,
    }
}

/// A `serve` child process on a fixed port, its log in a file; killed on drop.
struct Serve {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Serve {
    /// Starts `serve` with `config` on `port` (the lease short, see [`CRASH_LEASE_MS`]) and waits
    /// until it answers.
    async fn start(config: &Path, port: u16, log: PathBuf) -> Serve {
        let file = std::fs::File::create(&log).unwrap();
        let child = serve_command(
            config,
            port,
            "warn",
            &[(mailbridge::store::locks::LEASE_TTL_ENV, CRASH_LEASE_MS)],
        )
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
        let mut serve = Serve { child, log };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{base}/healthz")).await.is_err() {
            serve.assert_running();
            assert!(Instant::now() < deadline, "serve did not answer on {base}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        serve
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "serve exited ({status}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    async fn kill(mut self) {
        self.assert_running();
        self.child.kill().await.unwrap();
    }
}

/// One sender of the storm: takes the next event from `queue` and posts it, signed afresh, until
/// it gets a 200 (a refused connection, a reset or any other status is retried after a short
/// pause, as Mailchimp retries a delivery that was not answered 200). Keeps what each event's
/// 200 said (`stored`, or `duplicate` when a post of it before a kill was stored).
async fn sender(
    url: String,
    queue: Arc<Mutex<Vec<(u64, String)>>>,
    acked: watch::Sender<usize>,
    oks: Arc<Mutex<HashMap<u64, String>>>,
    attempts: Arc<std::sync::atomic::AtomicU64>,
) {
    // One client per sender: its own keep-alive connection.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let Some((i, form)) = queue.lock().unwrap().pop() else {
            return;
        };
        loop {
            assert!(Instant::now() < deadline, "event {i} never got its 200");
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let signature = mailchimp_signature(
                SIGNING.as_bytes(),
                chrono::Utc::now().timestamp(),
                form.as_bytes(),
            );
            let answer = http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-mailchimp-signature", signature)
                .body(form.clone())
                .send()
                .await;
            if let Ok(r) = answer
                && r.status() == StatusCode::OK
            {
                // "duplicate": an earlier post of it was committed, its 200 lost to a kill.
                let said = r.json::<serde_json::Value>().await.unwrap_or_default();
                let status = said["status"].as_str().unwrap_or_default().to_owned();
                assert!(
                    status == "stored" || status == "duplicate",
                    "event {i} answered {said}"
                );
                oks.lock().unwrap().insert(i, status);
                acked.send_modify(|n| *n += 1);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Rows of a `SELECT key, COUNT(*) … GROUP BY key` on `pool`.
async fn counts(pool: &sqlx::AnyPool, sql: &'static str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// `serve` SIGKILLed at seeded random points of a webhook storm (`MAILBRIDGE_FAULT_KILLS`,
/// default 5; `MAILBRIDGE_FAULT_EVENTS` events, default 900, one per member) and started again
/// on the same port each time, while the senders retry what did not get a 200. At the end every
/// event got its 200, is stored once and applied once: each member's status changed once (to
/// what its event says), each suppression was written once, and nothing is left unapplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_storm_with_serve_killed_at_random_points_applies_each_event_once() {
    let started = Instant::now();
    let n = tunable("MAILBRIDGE_FAULT_EVENTS", 900) as u64;
    let kills = tunable("MAILBRIDGE_FAULT_KILLS", 5);
    let connections = tunable("MAILBRIDGE_FAULT_CONNECTIONS", 16);
    let mut rng = seed("webhook_storm");
    let mut env = Env::start(Options {
        signing_secret: Some(SIGNING.into()),
        members: Some(n),
        ..Options::default()
    })
    .await;
    // Only the child processes serve: the in-process server would apply events no kill reaches.
    env.server.take().unwrap().shutdown().await.unwrap();
    env.sync_plain();
    // The judges' logs: each change of a member's status, each change of the suppression list.
    // (And every write, a change or not: how often an event's writeback ran again.)
    for sql in [
        "CREATE TABLE member_writes (id INTEGER PRIMARY KEY, member_id INTEGER NOT NULL)",
        "CREATE TRIGGER member_written AFTER UPDATE ON members
         BEGIN INSERT INTO member_writes (member_id) VALUES (NEW.id); END",
        "CREATE TABLE member_changes (id INTEGER PRIMARY KEY, member_id INTEGER NOT NULL, status TEXT NOT NULL)",
        "CREATE TRIGGER member_changed AFTER UPDATE ON members
         WHEN OLD.email_status IS NOT NEW.email_status OR OLD.newsletter IS NOT NEW.newsletter
         BEGIN INSERT INTO member_changes (member_id, status) VALUES (NEW.id, NEW.email_status); END",
    ] {
        sqlx::query(sql).execute(&env.members).await.unwrap();
    }
    for sql in [
        "CREATE TABLE suppression_changes (id INTEGER PRIMARY KEY, email TEXT NOT NULL, reason TEXT NOT NULL)",
        "CREATE TRIGGER suppression_added AFTER INSERT ON suppressions
         BEGIN INSERT INTO suppression_changes (email, reason) VALUES (NEW.email, NEW.reason); END",
        "CREATE TRIGGER suppression_changed AFTER UPDATE ON suppressions
         WHEN OLD.reason IS NOT NEW.reason OR OLD.lifted_at IS NOT NEW.lifted_at
         BEGIN INSERT INTO suppression_changes (email, reason) VALUES (NEW.email, NEW.reason); END",
    ] {
        sqlx::query(sql).execute(&env.state).await.unwrap();
    }

    let expected: HashMap<u64, _> = (1..=n).map(|i| (i, storm_event(&env.list, i))).collect();
    let mut queue: Vec<(u64, String)> =
        expected.iter().map(|(i, e)| (*i, e.form.clone())).collect();
    queue.sort_unstable();
    let queue = Arc::new(Mutex::new(queue));
    // The points, as counts of events answered 200, spread over the first 90% of the storm.
    let mut points: Vec<usize> = (0..kills)
        .map(|_| rng.random_range(1..(n as usize * 9 / 10).max(2)))
        .collect();
    points.sort_unstable();

    let config = env.dir.join("mailbridge.toml");
    let port = support::smtp::free_port();
    let url = format!("http://127.0.0.1:{port}/webhooks/mailchimp/{SECRET}");
    let mut serve = Serve::start(&config, port, env.dir.join("serve-0.log")).await;
    let (acked, mut acked_rx) = watch::channel(0usize);
    let oks = Arc::new(Mutex::new(HashMap::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(sender(
                url.clone(),
                queue.clone(),
                acked.clone(),
                oks.clone(),
                attempts.clone(),
            ))
        })
        .collect();
    let mut at_kills = Vec::new();
    for (k, point) in points.iter().enumerate() {
        tokio::time::timeout(
            Duration::from_secs(120),
            acked_rx.wait_for(|got| *got >= *point),
        )
        .await
        .unwrap_or_else(|_| panic!("{point} events answered 200 within 120 s"))
        .unwrap();
        serve.kill().await;
        at_kills.push(*acked.borrow());
        serve = Serve::start(&config, port, env.dir.join(format!("serve-{}.log", k + 1))).await;
    }
    for s in senders {
        s.await.unwrap();
    }
    // The storm is over: everything stored must be applied by the last process.
    let deadline = Instant::now() + Duration::from_secs(120);
    while env
        .state_count("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL")
        .await
        > 0
    {
        serve.assert_running();
        assert!(
            Instant::now() < deadline,
            "events left unapplied after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve.kill().await;

    // Every event got its 200 (some more than once: a 200 lost to a kill, the event resent).
    let oks = oks.lock().unwrap().clone();
    assert_eq!(oks.len() as u64, n, "events answered 200");
    let lost_200s = oks.values().filter(|s| *s == "duplicate").count();
    // Stored once each.
    let stored = counts(
        &env.state,
        "SELECT email || ' ' || event_type, COUNT(*) FROM provider_events GROUP BY email, event_type",
    )
    .await;
    let want: BTreeMap<String, i64> = expected
        .iter()
        .map(|(i, e)| (format!("m{i}@example.org {}", e.event_type), 1))
        .collect();
    assert_eq!(stored, want, "each event stored once");
    let outcomes = counts(
        &env.state,
        "SELECT COALESCE(outcome, 'none'), COUNT(*) FROM provider_events GROUP BY outcome",
    )
    .await;
    assert_eq!(outcomes, BTreeMap::from([("applied".to_owned(), n as i64)]));
    // Applied once each: one change per member, to what its event says.
    let changes: Vec<(i64, String)> =
        sqlx::query_as("SELECT member_id, status FROM member_changes ORDER BY id")
            .fetch_all(&env.members)
            .await
            .unwrap();
    let mut by_member: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (id, status) in changes {
        by_member.entry(id as u64).or_default().push(status);
    }
    let want: BTreeMap<u64, Vec<String>> = expected
        .iter()
        .map(|(i, e)| (*i, vec![e.status.to_owned()]))
        .collect();
    assert_eq!(by_member, want, "each member's status changed once");
    let suppressions: Vec<(String, String)> =
        sqlx::query_as("SELECT email, reason FROM suppression_changes ORDER BY email, id")
            .fetch_all(&env.state)
            .await
            .unwrap();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .filter_map(|(i, e)| {
            e.suppression
                .map(|r| (format!("m{i}@example.org"), r.to_owned()))
        })
        .collect();
    want.sort();
    assert_eq!(suppressions, want, "each suppression written once");
    let writes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM member_writes")
        .fetch_one(&env.members)
        .await
        .unwrap();
    eprintln!(
        "webhook storm: {n} events over {connections} connections, serve killed {kills} time(s) \
         (after {at_kills:?} answered 200); {} posts for {n} events, each stored once, \
         {lost_200s} of them stored before a kill took their 200 (answered duplicate); {} \
         writeback(s) run again after a kill (each member changed once); {:.1} s",
        attempts.load(std::sync::atomic::Ordering::Relaxed),
        writes - n as i64,
        started.elapsed().as_secs_f64()
    );
}
