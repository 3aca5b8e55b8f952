//! The steerable clock for code that accepts one (`mailbridge::clock`): a test starts it at a
//! fixed instant and moves it forward instead of waiting.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
pub use mailbridge::clock::{Clock, ManualClock, SharedClock};

/// The instant every manual clock in the tests starts at (2026-01-01 12:00:00 UTC, a Thursday).
pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
        .single()
        .expect("a valid instant")
}

/// A manual clock standing at [`start`], and the same clock as the [`SharedClock`] code takes.
pub fn manual() -> (Arc<ManualClock>, SharedClock) {
    let clock = ManualClock::new(start());
    let shared: SharedClock = clock.clone();
    (clock, shared)
}
