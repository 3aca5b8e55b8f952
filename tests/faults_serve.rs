//! Fault harness of `mailbridge serve` (issue 26), on loopback only, with real processes:
//!
//! - a webhook storm (signed Mailchimp form posts over many connections, each event retried by
//!   the sender until it gets its 200, as Mailchimp does) while `serve` is SIGKILLed at seeded
//!   random points and started again on the same port;
//! - three `serve` processes on one PostgreSQL state DB with the nightly schedule, the Constant
//!   Contact poller and the relay running: the one running the night's sync SIGKILLed mid-run,
//!   then one SIGKILLed mid-drain.
//!
//! The judges are what the processes leave behind: the member DB (a trigger logs each change of
//! a member's status), the suppression list (a trigger logs each change), `provider_events` (no
//! duplicate, all applied), `sync_runs`, and the SMTP server's maildir. Every wait is on observable
//! state with a deadline. Sizes are tunable for the full run: `MAILBRIDGE_FAULT_EVENTS`,
//! `MAILBRIDGE_FAULT_KILLS`, `MAILBRIDGE_FAULT_CONNECTIONS`, `MAILBRIDGE_FAULT_MESSAGES`,
//! `MAILBRIDGE_FAULT_OPT_OUTS`; `MAILBRIDGE_FAULT_SEED` replays a run (each test prints its seed).
//!
//!     MAILBRIDGE_FAULT_KILLS=20 MAILBRIDGE_FAULT_EVENTS=5000 MAILBRIDGE_FAULT_MESSAGES=5000 \
//!       MAILBRIDGE_FAULT_OPT_OUTS=200 cargo test --test faults_serve -- --nocapture

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
        Serve::start_env(config, port, log, &[]).await
    }

    /// [`Serve::start`] with these environment variables set too.
    async fn start_env(config: &Path, port: u16, log: PathBuf, vars: &[(&str, &str)]) -> Serve {
        let file = std::fs::File::create(&log).unwrap();
        let mut vars = vars.to_vec();
        vars.push((mailbridge::store::locks::LEASE_TTL_ENV, CRASH_LEASE_MS));
        let child = serve_command(config, port, "warn", &vars)
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

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// SIGKILL, and waits for the process to be gone.
    async fn kill(mut self) {
        self.assert_running();
        self.child.kill().await.unwrap();
    }
}

/// Polls `check` until it holds, panicking with `what` after `timeout`, or at once when one of
/// `workers` has exited (with its log).
async fn wait_running(
    workers: &mut [Serve],
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        for w in workers.iter_mut() {
            w.assert_running();
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Triggers on the SQLite member DB at `members` that log each change of a member's status or
/// consent (`member_changes`: the judge of "applied once") and every write, a change or not
/// (`member_writes`: how often a writeback ran again, which its idempotence makes harmless).
async fn log_member_changes(members: &sqlx::AnyPool) {
    for sql in [
        "CREATE TABLE member_writes (id INTEGER PRIMARY KEY, member_id INTEGER NOT NULL)",
        "CREATE TRIGGER member_written AFTER UPDATE ON members
         BEGIN INSERT INTO member_writes (member_id) VALUES (NEW.id); END",
        "CREATE TABLE member_changes (id INTEGER PRIMARY KEY, member_id INTEGER NOT NULL, status TEXT NOT NULL)",
        "CREATE TRIGGER member_changed AFTER UPDATE ON members
         WHEN OLD.email_status IS NOT NEW.email_status OR OLD.newsletter IS NOT NEW.newsletter
         BEGIN INSERT INTO member_changes (member_id, status) VALUES (NEW.id, NEW.email_status); END",
    ] {
        sqlx::query(sql).execute(members).await.unwrap();
    }
}

/// The member DB's logged changes, per member, in order.
async fn member_changes(members: &sqlx::AnyPool) -> BTreeMap<u64, Vec<String>> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT member_id, status FROM member_changes ORDER BY id")
            .fetch_all(members)
            .await
            .unwrap();
    let mut by_member: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (id, status) in rows {
        by_member.entry(id as u64).or_default().push(status);
    }
    by_member
}

/// How many writes of a member the member DB logged.
async fn member_writes(members: &sqlx::AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM member_writes")
        .fetch_one(members)
        .await
        .unwrap()
}

/// Triggers on the state DB at `state` (SQLite or PostgreSQL) that log each change of the
/// suppression list (`suppression_changes`): an address added, its reason changed, lifted.
async fn log_suppression_changes(state: &sqlx::AnyPool) {
    let postgres = state.acquire().await.unwrap().backend_name() == "PostgreSQL";
    let statements: &[&str] = if postgres {
        &[
            "CREATE TABLE suppression_changes (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, reason TEXT NOT NULL)",
            "CREATE FUNCTION log_suppression() RETURNS trigger AS $$ BEGIN
               IF TG_OP = 'INSERT' OR OLD.reason IS DISTINCT FROM NEW.reason
                  OR OLD.lifted_at IS DISTINCT FROM NEW.lifted_at THEN
                 INSERT INTO suppression_changes (email, reason) VALUES (NEW.email, NEW.reason);
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER suppression_logged AFTER INSERT OR UPDATE ON suppressions
             FOR EACH ROW EXECUTE FUNCTION log_suppression()",
        ]
    } else {
        &[
            "CREATE TABLE suppression_changes (id INTEGER PRIMARY KEY, email TEXT NOT NULL, reason TEXT NOT NULL)",
            "CREATE TRIGGER suppression_added AFTER INSERT ON suppressions
             BEGIN INSERT INTO suppression_changes (email, reason) VALUES (NEW.email, NEW.reason); END",
            "CREATE TRIGGER suppression_changed AFTER UPDATE ON suppressions
             WHEN OLD.reason IS NOT NEW.reason OR OLD.lifted_at IS NOT NEW.lifted_at
             BEGIN INSERT INTO suppression_changes (email, reason) VALUES (NEW.email, NEW.reason); END",
        ]
    };
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(state)
            .await
            .unwrap();
    }
}

/// `serve` SIGKILLed at seeded random points of a webhook storm (`MAILBRIDGE_FAULT_KILLS`,
/// default 5; `MAILBRIDGE_FAULT_EVENTS` events, default 600, one per member) and started again
/// on the same port each time, while the senders retry what did not get a 200. At the end every
/// event got its 200, is stored once and applied once: each member's status changed once (to
/// what its event says), each suppression was written once, and nothing is left unapplied.
async fn webhook_storm(pg_state: bool) {
    let started = Instant::now();
    let n = tunable("MAILBRIDGE_FAULT_EVENTS", 600) as u64;
    let kills = tunable("MAILBRIDGE_FAULT_KILLS", 5);
    let connections = tunable("MAILBRIDGE_FAULT_CONNECTIONS", 16);
    let mut rng = seed("webhook_storm");
    let mut env = Env::start(Options {
        pg_state,
        signing_secret: Some(SIGNING.into()),
        members: Some(n),
        ..Options::default()
    })
    .await;
    // Only the child processes serve: the in-process server would apply events no kill reaches.
    env.server.take().unwrap().shutdown().await.unwrap();
    env.sync_plain();
    // The judges' logs: each change of a member's status, each change of the suppression list.
    log_member_changes(&env.members).await;
    log_suppression_changes(&env.state).await;

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
    wait_running(
        std::slice::from_mut(&mut serve),
        "every event applied",
        Duration::from_secs(120),
        async || {
            env.state_count("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL")
                .await
                == 0
        },
    )
    .await;
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
    let by_member = member_changes(&env.members).await;
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
    let writes = member_writes(&env.members).await;
    eprintln!(
        "webhook storm ({}): {n} events over {connections} connections, serve killed {kills} time(s) \
         (after {at_kills:?} answered 200); {} posts for {n} events, each stored once, \
         {lost_200s} of them stored before a kill took their 200 (answered duplicate); {} \
         writeback(s) run again after a kill (each member changed once); {:.1} s",
        env.state.acquire().await.unwrap().backend_name(),
        attempts.load(std::sync::atomic::Ordering::Relaxed),
        writes - n as i64,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_storm_with_serve_killed_at_random_points_applies_each_event_once_sqlite() {
    webhook_storm(false).await;
}

/// The same on a PostgreSQL state DB (SQLite when PostgreSQL is unreachable outside CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_storm_with_serve_killed_at_random_points_applies_each_event_once_postgres() {
    webhook_storm(true).await;
}

/// The local time of day the three workers' schedule names (`[server] nightly_sync`).
const NIGHT: &str = "03:00";

/// A POSIX `TZ` value under which the local time is [`NIGHT`] at `at` (whole seconds): the
/// nightly schedule, which reads the local time, comes due at `at` in a process started with it.
/// The offset is kept within ±12 h (POSIX writes east of UTC with a minus sign).
fn tz_with_night_at(at: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    let night = chrono::NaiveTime::parse_from_str(NIGHT, "%H:%M").unwrap();
    let mut offset = (i64::from(night.num_seconds_from_midnight())
        - i64::from(at.num_seconds_from_midnight()))
    .rem_euclid(86_400);
    if offset > 43_200 {
        offset -= 86_400;
    }
    let sign = if offset >= 0 { '-' } else { '+' };
    let abs = offset.abs();
    format!(
        "MBT{sign}{:02}:{:02}:{:02}",
        abs / 3600,
        abs % 3600 / 60,
        abs % 60
    )
}

/// Three `serve` processes on one PostgreSQL state DB, each with the nightly schedule, the
/// Constant Contact poller and the relay: the night's sync runs once, every outbox message
/// reaches the SMTP server once, and every opt-out the pollers read is applied once. The worker
/// that runs the night's sync is SIGKILLed mid-run (when the run is seen running) and started
/// again: another takes the job over and resumes the run. Then one of the three is SIGKILLed at
/// a seeded point of the relay's drain and started again.
///
/// The night comes through the time zone: each process runs with a `TZ` whose local time reaches
/// [`NIGHT`] 15 s after the start (the schedule reads the local time; no process can be
/// handed a test's clock). Sizes: `MAILBRIDGE_FAULT_MESSAGES` (default 1000), `MAILBRIDGE_FAULT_OPT_OUTS`
/// (default 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_on_one_postgres_run_each_night_send_each_message_and_apply_each_event_once()
 {
    use support::cc::{CcApp, Setup, row};
    use support::smtp::{Sink, SinkOptions};

    if !support::smtp::aiosmtpd_available() {
        return;
    }
    let started = Instant::now();
    let members = 60u64.max(tunable("MAILBRIDGE_FAULT_OPT_OUTS", 30) as u64 * 2);
    let opt_outs = tunable("MAILBRIDGE_FAULT_OPT_OUTS", 30) as u64;
    let messages = tunable("MAILBRIDGE_FAULT_MESSAGES", 1000);
    let mut rng = seed("three_serve");
    let setup = Setup {
        // Constant Contact takes a while over the import: the night's run is seen running.
        sim: mailbridge::simulator::SimConfig {
            cc_activity_delay: Duration::from_millis(1500),
            ..support::cc::fast_sim()
        },
        provider: "requests_per_second = 100\npoll_every = \"1s\"\n".to_owned(),
        server: Some(format!(
            "bind = \"127.0.0.1:0\"\napi_token = \"{TOKEN}\"\nnightly_sync = \"{NIGHT}\"\n"
        )),
        ..Setup::default()
    };
    let Some(cc) = CcApp::start(support::Kind::Postgres, setup, (1..=members).map(row)).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), None, &SinkOptions::default());
    // The relay (its lease short: a killed worker's messages are taken over soon) and JSON logs,
    // in which the relay names each message it may have delivered twice.
    let mut text = std::fs::read_to_string(&cc.config_path).unwrap();
    text.push_str(&format!(
        "\n[relay]\nfrom = \"Riverside Rowing Club <club@club.example>\"\n{}\n[log]\nformat = \"json\"\n",
        support::fault::relay_lines(sink.port, 3)
    ));
    std::fs::write(&cc.config_path, &text).unwrap();
    log_member_changes(&cc.members).await;
    // The night comes 15 s after now (on the second): time for three processes to start.
    let night_at =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 15, 0).unwrap();
    let tz = tz_with_night_at(night_at);
    let vars = [("TZ", tz.as_str())];
    let mut logs = Vec::new();
    let mut workers = Vec::new();
    for w in 0..3 {
        logs.push(dir.path().join(format!("serve-{w}.log")));
        workers.push(
            Serve::start_env(
                &cc.config_path,
                support::smtp::free_port(),
                logs[w].clone(),
                &vars,
            )
            .await,
        );
    }
    assert!(
        chrono::Utc::now() < night_at,
        "the three workers took longer to start than the 15 s before the night"
    );

    // The night's sync: its worker SIGKILLed mid-run (when the run is seen `running`), and
    // started again; the job is taken over and a run resumes the interrupted one.
    let runs = async || -> Vec<(String, String, Option<String>)> {
        sqlx::query_as("SELECT run_id, status, resumed_by FROM sync_runs ORDER BY started_at")
            .fetch_all(&cc.state)
            .await
            .unwrap()
    };
    let night_id = mailbridge::campaigns::jobs::nightly_run_id(night_at, "newsletter");
    let mut holder: Option<String> = None;
    wait_running(
        &mut workers,
        "the night's run started",
        Duration::from_secs(60),
        async || {
            // One read: the run's row as it first shows, and its holder while it runs.
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, holder FROM sync_runs WHERE run_id = $1")
                    .bind(&night_id)
                    .fetch_optional(&cc.state)
                    .await
                    .unwrap();
            holder = row
                .as_ref()
                .filter(|(status, _)| status == "running")
                .and_then(|(_, h)| h.clone());
            row.is_some()
        },
    )
    .await;
    // The holder is `host:pid:token`.
    let run_pid: Option<u32> = holder
        .as_deref()
        .and_then(|h| h.split(':').nth(1))
        .and_then(|p| p.parse().ok());
    let run_killed = match workers.iter().position(|w| Some(w.pid()) == run_pid) {
        Some(at) => {
            workers.swap_remove(at).kill().await;
            logs.push(dir.path().join("serve-after-run-kill.log"));
            workers.push(
                Serve::start_env(
                    &cc.config_path,
                    support::smtp::free_port(),
                    logs.last().unwrap().clone(),
                    &vars,
                )
                .await,
            );
            true
        }
        // The run ended before it was seen running: no kill.
        None => false,
    };
    wait_running(
        &mut workers,
        "a finished nightly run",
        Duration::from_secs(60),
        async || {
            let runs = runs().await;
            runs.iter().any(|(_, s, _)| s == "succeeded")
                && runs.iter().all(|(_, s, _)| s != "running")
        },
    )
    .await;
    let runs = runs().await;
    if run_killed {
        // The night's run interrupted, and one run that resumed it.
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!((&runs[0].0, runs[0].1.as_str()), (&night_id, "interrupted"));
        assert_eq!(runs[0].2.as_ref(), Some(&runs[1].0), "{runs:?}");
        assert_eq!(runs[1].1, "succeeded", "{runs:?}");
    } else {
        assert_eq!(
            runs,
            [(night_id.clone(), "succeeded".to_owned(), None)],
            "the night's sync, once"
        );
    }
    // One job for the night, done (closed just after its run's row).
    let jobs = async || -> Vec<(String, String)> {
        sqlx::query_as("SELECT kind, status FROM campaign_jobs")
            .fetch_all(&cc.state)
            .await
            .unwrap()
    };
    wait_running(
        &mut workers,
        "the night's job done",
        Duration::from_secs(20),
        async || jobs().await.iter().all(|(_, s)| s == "done"),
    )
    .await;
    assert_eq!(jobs().await, [("sync".to_owned(), "done".to_owned())]);
    assert_eq!(cc.sim.contacts(cc.list()).await.len() as u64, members);

    // The outbox, queued while the three relays run (and drain it).
    let parts = support::app::RelayParts::open(&cc.config_path).await;
    let queueing = tokio::spawn({
        let (store, relay) = (parts.store.clone(), parts.relay.clone());
        async move { support::relay::queue_registrations(&store, &relay, messages).await }
    });
    // One worker SIGKILLed at a seeded point of the drain, and started again.
    let kill_at = rng.random_range(messages / 10..messages / 2).max(1);
    let victim = rng.random_range(0..3usize);
    sink.wait_for_async(kill_at, Duration::from_secs(60)).await;
    let serve = workers.swap_remove(victim);
    let pid = serve.pid();
    serve.kill().await;
    let at_kill = sink.count();
    assert!(at_kill < messages, "the drain ended before the kill");
    // What it held (leased, maybe sent, not recorded): another worker sends it again.
    let held: std::collections::HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT id FROM outbox WHERE status = 'sending' AND leased_by LIKE $1",
    )
    .bind(format!("{pid}-%"))
    .fetch_all(&cc.state)
    .await
    .unwrap()
    .into_iter()
    .collect();
    logs.push(dir.path().join("serve-after-drain-kill.log"));
    workers.push(
        Serve::start_env(
            &cc.config_path,
            support::smtp::free_port(),
            logs.last().unwrap().clone(),
            &vars,
        )
        .await,
    );

    let expected: HashMap<String, String> = queueing
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.id, q.message_id))
        .collect();

    // Opt-outs at Constant Contact, which the three pollers read.
    for i in 1..=opt_outs {
        cc.sim.unsubscribe(&format!("m{i}@example.org")).await;
    }
    let count = async |sql: &'static str| -> i64 {
        sqlx::query_scalar(sql).fetch_one(&cc.state).await.unwrap()
    };
    wait_running(
        &mut workers,
        "every opt-out applied and every message sent",
        Duration::from_secs(60),
        async || {
            count("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NOT NULL").await as u64
                >= opt_outs
                && count("SELECT COUNT(*) FROM outbox WHERE status = 'sent'").await as usize
                    == messages
        },
    )
    .await;
    for w in workers {
        w.kill().await;
    }

    // Each event stored once, applied once; each member changed once.
    let stored = counts(
        &cc.state,
        "SELECT email || ' ' || event_type || ' ' || COALESCE(outcome, 'none'), COUNT(*) FROM provider_events GROUP BY email, event_type, outcome",
    )
    .await;
    let want: BTreeMap<String, i64> = (1..=opt_outs)
        .map(|i| (format!("m{i}@example.org unsubscribed applied"), 1))
        .collect();
    assert_eq!(stored, want, "each opt-out stored once and applied");
    let want: BTreeMap<u64, Vec<String>> = (1..=opt_outs)
        .map(|i| (i, vec!["unsubscribed".to_owned()]))
        .collect();
    assert_eq!(
        member_changes(&cc.members).await,
        want,
        "each member changed once"
    );
    // Each message received once, but for one the killed worker held or a worker recorded as
    // possibly sent twice.
    let (mut recorded, ambiguous) = support::fault::recorded_duplicates(&logs);
    recorded.extend(held.iter().cloned());
    let (total, unique, duplicates) =
        support::fault::judge_deliveries(&expected, &[&sink], &recorded, 0);
    let polls = cc.sim.operations("getAllContacts").await;
    eprintln!(
        "three serve processes: the night's sync once ({}); {members} members, {opt_outs} opt-outs \
         applied once ({} member write(s)); {messages} messages, worker {victim} killed after \
         {at_kill} received ({} held), {total} received, {unique} unique, {duplicates} \
         duplicate(s), {} recorded ambiguous; {polls} contact reads at Constant Contact; {:.1} s",
        if run_killed {
            "its worker killed mid-run, resumed by another"
        } else {
            "it ended before a kill could land"
        },
        member_writes(&cc.members).await,
        held.len(),
        ambiguous.len(),
        started.elapsed().as_secs_f64()
    );
    parts.store.close().await;
}
