//! What the fault harnesses (tests/faults.rs, faults_sync.rs, faults_serve.rs) share: sizes
//! tunable from the environment for the full run, a seeded random source whose seed is printed
//! so that a failure replays, waits on observable state with a deadline, the delivery judge and
//! the relay's log readers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::smtp::Sink;

/// A number from the environment variable `name`, else `default` (CI's small size).
pub fn tunable(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's seed: `MAILBRIDGE_FAULT_SEED`, else a fresh one; printed so a failure replays.
pub fn seed(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("MAILBRIDGE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (MAILBRIDGE_FAULT_SEED={seed} replays it)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The verdict on what `sinks` received of `expected` (outbox id → Message-ID): panics on a lost
/// message or a stranger, or on a message received twice that is neither among `recorded`
/// (outbox ids the relay logged as possibly delivered twice, see [`recorded_duplicates`], or held
/// by a killed process) nor among `allowed` more. Returns (received, unique, duplicates).
pub fn judge_deliveries(
    expected: &HashMap<String, String>,
    sinks: &[&Sink],
    recorded: &HashSet<String>,
    allowed: usize,
) -> (usize, usize, usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for sink in sinks {
        for m in sink.messages() {
            *seen
                .entry(m.header("Message-ID").expect("Message-ID"))
                .or_default() += 1;
        }
    }
    let lost: Vec<&String> = expected
        .values()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} message(s) lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let known: HashSet<&String> = expected.values().collect();
    let strangers: Vec<&String> = seen.keys().filter(|id| !known.contains(id)).collect();
    assert!(strangers.is_empty(), "unexpected messages: {strangers:?}");
    let recorded_mids: HashSet<&String> =
        recorded.iter().filter_map(|id| expected.get(id)).collect();
    let total: usize = seen.values().sum();
    let unexplained: usize = seen
        .iter()
        .filter(|(id, _)| !recorded_mids.contains(id))
        .map(|(_, n)| n - 1)
        .sum();
    assert!(
        unexplained <= allowed,
        "{unexplained} duplicate(s) of messages the relay never recorded as possibly sent twice (at most {allowed} allowed)"
    );
    (total, seen.len(), total - seen.len())
}

/// The JSON log lines in `log` whose message contains `text`.
pub fn logged(log: &Path, text: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

/// The outbox ids the relay logged `text` for, in the logs at `logs`.
pub fn logged_ids(logs: &[PathBuf], text: &str) -> HashSet<String> {
    logs.iter()
        .flat_map(|log| logged(log, text))
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// The outbox ids the relay recorded as possibly delivered twice, in the logs at `logs`: an
/// ambiguous attempt (the SMTP server may have the message, its answer was lost), and a lease
/// that ran out before the outcome was recorded. Returns (all, ambiguous).
pub fn recorded_duplicates(logs: &[PathBuf]) -> (HashSet<String>, HashSet<String>) {
    let ambiguous = logged_ids(logs, "its answer was lost");
    let mut all = logged_ids(logs, "(it may be delivered twice)");
    all.extend(ambiguous.iter().cloned());
    (all, ambiguous)
}

/// The `[relay]` lines: the SMTP route to `port` without TLS, 4 connections, `lease_secs`, and
/// retries soon enough for a test (a second at most, and a route down for a second).
pub fn relay_lines(port: u16, lease_secs: u64) -> String {
    format!(
        "routes = [\"smtp\"]\nconcurrency = 4\nlease_secs = {lease_secs}\nretry_base_secs = 0\nretry_max_secs = 1\nroute_backoff_secs = 1\n{}",
        super::smtp::smtp_section(port, "none", None, None)
    )
}

/// Polls `check` until it holds, panicking with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
