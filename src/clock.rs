//! Time from one source that tests can steer.
//!
//! Everything that decides by the time of day or waits for a moment (relay back-off, quotas,
//! leases, the nightly schedule) asks a [`Clock`] instead of calling `Utc::now()` or
//! `tokio::time::sleep`. Production runs on [`SystemClock`]; tests hand in a [`ManualClock`] and
//! move it forward, so a back-off of an hour is tested by advancing the clock an hour, not by
//! waiting for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A future that [`Clock::sleep_until`] returns.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The time now, and a way to wait for a later time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`Clock::now`] has reached `at` (at once when it already has).
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep<'_>;

    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: std::time::Duration) -> Sleep<'_> {
        let at = self
            .now()
            .checked_add_signed(
                chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX),
            )
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.sleep_until(at)
    }
}

/// The clock handed around: cheap to clone, shared by every worker of one application.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// A [`SharedClock`] on the machine's time.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep<'_> {
        Box::pin(async move {
            // Wall-clock time can jump (NTP, suspend); sleep in bounded steps and look again, so
            // a jump forward is noticed within a minute rather than after the whole wait.
            const STEP: std::time::Duration = std::time::Duration::from_secs(60);
            loop {
                let left = at - Utc::now();
                let Ok(left) = left.to_std() else { return };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(STEP)).await;
            }
        })
    }
}

/// A clock that stands still until a test moves it. Sleepers wake as soon as the clock is moved
/// to or past the time they wait for.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: watch::Sender::new(start),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.now.send_modify(|now| {
            *now = now
                .checked_add_signed(by)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        });
    }

    /// Sets the clock to `to` (backwards too: a test of a clock that jumps back).
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep<'_> {
        let mut seen = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, so `changed` only fails once the clock is gone.
            while *seen.borrow_and_update() < at {
                if seen.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T02:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_the_manual_clock_reaches_its_time() {
        let clock = ManualClock::new(start());
        let woke = Arc::new(tokio::sync::Notify::new());
        let sleeper = {
            let clock = clock.clone();
            let woke = woke.clone();
            tokio::spawn(async move {
                clock.sleep(Duration::from_secs(3600)).await;
                woke.notify_one();
            })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3599));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke a second early");
        clock.advance(Duration::from_secs(1));
        woke.notified().await;
        assert_eq!(clock.now(), start() + chrono::Duration::hours(1));
    }

    #[tokio::test]
    async fn a_time_already_past_returns_at_once() {
        let clock = ManualClock::new(start());
        clock
            .sleep_until(start() - chrono::Duration::seconds(1))
            .await;
        clock.sleep(Duration::ZERO).await;
        SystemClock.sleep_until(Utc::now()).await;
    }
}
