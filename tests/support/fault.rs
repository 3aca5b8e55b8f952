//! What the fault harnesses (tests/faults.rs, tests/faults_serve.rs) share: sizes tunable from
//! the environment for the full run, and a seeded random source whose seed is printed so that a
//! failure replays.

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
