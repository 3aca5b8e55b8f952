//! What the fault harnesses (faults.rs, faults_sync.rs) share: sizes tunable from the
//! environment (CI runs the small default), a seeded random source whose seed is printed so a
//! failure replays, and waits on observable state with a deadline.

use std::time::{Duration, Instant};

use rand::SeedableRng;

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

/// Polls `check` until it holds, panicking with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
