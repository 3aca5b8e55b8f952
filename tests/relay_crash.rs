//! Crash test of the relay: 1,000 queued messages, a real `mailbridge relay` process killed with
//! SIGKILL once the SMTP sink has received some of them, then `mailbridge relay --once`: every
//! message must arrive at least once; duplicates (messages in flight at the kill) are counted and
//! reported.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{db, smtp};

const N: usize = 1000;
const KILL_AFTER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_loses_nothing_and_the_rerun_delivers_the_rest() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let support::relay::SmarthostDrain {
        sink,
        config_path,
        store,
        expected,
        ..
    } = support::relay::SmarthostDrain::queue(dir.path(), 2, N).await;

    let mut child = Command::new(db::binary())
        .arg("--config")
        .arg(&config_path)
        .arg("relay")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mailbridge relay");
    // Kill as soon as the sink has observed KILL_AFTER messages (no sleeps as synchronisation).
    sink.wait_for_async(KILL_AFTER, Duration::from_secs(120))
        .await;
    child.kill().expect("SIGKILL the relay");
    let killed = child.wait().unwrap();
    assert!(
        !killed.success(),
        "the relay was killed, not finished: {killed:?}"
    );
    let at_kill = sink.count();
    assert!(
        at_kill < N,
        "the relay finished before it could be killed ({at_kill})"
    );
    let (in_flight,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'sending'")
            .fetch_one(store.pool())
            .await
            .unwrap();

    support::run_ok(
        Command::new(db::binary())
            .arg("--config")
            .arg(&config_path)
            .args(["relay", "--once", "--json"]),
        "mailbridge relay --once",
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        let id = m.header("Message-ID").expect("Message-ID");
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} message(s) lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let total: usize = seen.values().sum();
    let duplicates = total - seen.len();
    eprintln!(
        "crash test: {N} messages, killed after {at_kill} received ({in_flight} leased at the kill); \
         after the rerun {total} received, {} unique, {duplicates} duplicate(s)",
        seen.len()
    );
    assert_eq!(seen.len(), N);
    // Only messages the killed worker held (leased, sent but not yet recorded) can come twice.
    assert!(
        duplicates as i64 <= in_flight,
        "{duplicates} duplicates, but only {in_flight} messages were leased at the kill"
    );
    let (not_sent,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status <> 'sent'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(not_sent, 0);
    store.close().await;
}
