//! The one place that decides whether a failed provider call is tried again, and how long to wait.
//!
//! Clients describe what went wrong as a [`Failure`] (an HTTP status with its `Retry-After`, or a
//! transport error kind); [`classify`] turns it into a [`Disposition`]; [`RetryPolicy::run`] drives
//! the attempts with capped exponential backoff and full jitter, a per-request attempt limit and a
//! [`RetryBudget`] shared by every request of a run, so a run against a broken provider ends.
//!
//! Partial success (a batch call that answers 200 with per-member errors) is not a failure here:
//! it is data the caller reports.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// What went wrong on one attempt, in terms the policy understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with a non-2xx status.
    Status {
        status: u16,
        /// The server's `Retry-After`, already parsed (see [`parse_retry_after`]).
        retry_after: Option<Duration>,
    },
    /// No connection could be made: the request never reached the server.
    Connect,
    /// No complete answer within the client timeout. The server may still have run the request.
    Timeout,
    /// The connection was reset or closed before a complete answer. The server may have run it.
    ConnectionClosed,
    /// A 2xx answer whose body does not parse: a bug or a provider change; trying again will not
    /// help.
    MalformedBody,
    /// Refused before anything was sent (bad arguments, request building): never retried.
    NotSent,
}

/// Whether to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Try again, after the server's `Retry-After` when it gave one, else after a backoff.
    Retry { after: Option<Duration> },
    /// Give up: trying again cannot succeed, or could repeat a side effect.
    Fail,
}

/// Decides retry or not. `idempotent` says whether running the request twice is harmless
/// (GET; PUT/PATCH/DELETE of a member; batch-subscribe, which upserts): only such requests are
/// retried when the server may already have acted on them (timeouts, dropped connections, 5xx).
/// A non-idempotent request (creating a merge field, sending a campaign) is retried only when the
/// server certainly did not act: the connection was never made, or it answered 429.
pub fn classify(failure: &Failure, idempotent: bool) -> Disposition {
    match *failure {
        Failure::Status {
            status: 429,
            retry_after,
        } => Disposition::Retry { after: retry_after },
        Failure::Status {
            status,
            retry_after,
        } if (500..=599).contains(&status) => {
            if idempotent {
                Disposition::Retry { after: retry_after }
            } else {
                Disposition::Fail
            }
        }
        Failure::Status { .. } => Disposition::Fail,
        Failure::Connect => Disposition::Retry { after: None },
        Failure::Timeout | Failure::ConnectionClosed => {
            if idempotent {
                Disposition::Retry { after: None }
            } else {
                Disposition::Fail
            }
        }
        Failure::MalformedBody | Failure::NotSent => Disposition::Fail,
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (then relative to `now`; a date
/// in the past means "now"). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// A count of retries (attempts beyond each request's first) that all requests of one run share.
/// Clones share the count. When it is spent, failing requests give up at once, so a run against a
/// provider that keeps failing ends instead of backing off for hours.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    remaining: Arc<AtomicU32>,
}

impl RetryBudget {
    pub fn new(retries: u32) -> RetryBudget {
        RetryBudget {
            remaining: Arc::new(AtomicU32::new(retries)),
        }
    }

    pub fn remaining(&self) -> u32 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Takes one retry from the budget; false when none is left.
    pub fn try_take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

type SleepFn = dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// How the policy waits. [`Sleeper::tokio`] in production; tests inject one that records the
/// delays and returns at once (paused tokio time would also fire HTTP timeouts early, so tests
/// that talk to a mock server cannot use it), or wait on the application's clock
/// ([`Sleeper::on`]).
///
/// It stays a hook of its own rather than a [`crate::clock::Clock`]: a retry's wait is a pause
/// between two HTTP requests, which nothing compares with a stored time, and the tests that drive
/// the policy want the list of delays asked for without any time passing at all; a clock would
/// make each of them advance it from another task, in step with the requests.
#[derive(Clone)]
pub struct Sleeper(Arc<SleepFn>);

impl Sleeper {
    pub fn tokio() -> Sleeper {
        Sleeper(Arc::new(|d| Box::pin(tokio::time::sleep(d))))
    }

    /// Waits on `clock`: on a [`crate::clock::ManualClock`], a back-off ends when the test moves
    /// the clock past it.
    pub fn on(clock: crate::clock::SharedClock) -> Sleeper {
        Sleeper(Arc::new(move |d| {
            let clock = clock.clone();
            Box::pin(async move { clock.sleep(d).await })
        }))
    }

    pub fn from_fn<F, Fut>(f: F) -> Sleeper
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Sleeper(Arc::new(move |d| Box::pin(f(d))))
    }

    pub async fn sleep(&self, d: Duration) {
        (self.0)(d).await
    }
}

impl fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sleeper")
    }
}

/// Attempts, backoff and budget for one run.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The backoff before the first retry is drawn from `0..=base`, doubling each retry.
    pub base: Duration,
    /// No wait is longer than this, a server's `Retry-After` included.
    pub cap: Duration,
    /// Retries shared by every request made with this policy (and its clones).
    pub budget: RetryBudget,
    pub sleeper: Sleeper,
}

impl Default for RetryPolicy {
    /// 5 attempts per request, 0.5 s base, 30 s cap, 100 retries per run.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            budget: RetryBudget::new(100),
            sleeper: Sleeper::tokio(),
        }
    }
}

/// Why [`RetryPolicy::run`] stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The failure is not worth retrying (see [`classify`]).
    Permanent,
    /// The request used all of `max_attempts`.
    MaxAttempts,
    /// The run's shared retry budget is spent.
    BudgetExhausted,
}

/// A value that can say which [`Failure`] it is.
pub trait Classify {
    fn failure(&self) -> Failure;
}

/// A success, with the attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    pub value: T,
    pub attempts: u32,
}

/// The last error, with the attempts made and why they stopped.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
    pub stop: Stop,
}

impl RetryPolicy {
    /// The full-jitter backoff before retry number `retry` (0 for the first retry): uniform in
    /// `0..=min(cap, base·2^retry)`.
    pub fn backoff(&self, retry: u32) -> Duration {
        full_jitter(self.base, self.cap, retry, rand::rng().random::<f64>())
    }

    /// The wait before retry number `retry`: the server's `Retry-After` (capped) when it gave
    /// one, else [`RetryPolicy::backoff`].
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(self.cap),
            None => self.backoff(retry),
        }
    }

    /// Runs `attempt` (given the attempt number, from 1) until it succeeds or the policy stops.
    /// Each retry is logged at WARN with the attempt number, the wait and the reason.
    pub async fn run<T, E, F, Fut>(
        &self,
        operation: &str,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<Attempted<T>, GaveUp<E>>
    where
        E: Classify + fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let max_attempts = self.max_attempts.max(1);
        let mut n = 1;
        loop {
            let error = match attempt(n).await {
                Ok(value) => return Ok(Attempted { value, attempts: n }),
                Err(e) => e,
            };
            let after = match classify(&error.failure(), idempotent) {
                Disposition::Fail => return Err(gave_up(error, n, Stop::Permanent)),
                Disposition::Retry { after } => after,
            };
            if n >= max_attempts {
                return Err(gave_up(error, n, Stop::MaxAttempts));
            }
            if !self.budget.try_take() {
                return Err(gave_up(error, n, Stop::BudgetExhausted));
            }
            let wait = self.delay(n - 1, after);
            tracing::warn!(
                operation,
                attempt = n,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                reason = %error,
                "Attempt {n} of {operation} failed; retrying"
            );
            self.sleeper.sleep(wait).await;
            n += 1;
        }
    }
}

fn gave_up<E>(error: E, attempts: u32, stop: Stop) -> GaveUp<E> {
    GaveUp {
        error,
        attempts,
        stop,
    }
}

/// `unit` in `[0, 1]` picks the point in `0..=min(cap, base·2^retry)`; pure so it can be tested.
pub fn full_jitter(base: Duration, cap: Duration, retry: u32, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    fn status(status: u16) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
        }
    }

    const RETRY: Disposition = Disposition::Retry { after: None };

    #[test]
    fn rate_limits_and_server_errors_are_retried_for_idempotent_requests() {
        for s in [429, 500, 502, 503, 504] {
            assert_eq!(classify(&status(s), true), RETRY, "{s}");
        }
        let with_after = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            classify(&with_after, false),
            Disposition::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn other_client_errors_are_not_retried() {
        for s in [400, 401, 403, 404, 405, 409, 414, 422, 426] {
            assert_eq!(classify(&status(s), true), Disposition::Fail, "{s}");
        }
    }

    #[test]
    fn transport_failures_depend_on_whether_the_server_may_have_acted() {
        assert_eq!(classify(&Failure::Connect, true), RETRY);
        assert_eq!(classify(&Failure::Connect, false), RETRY);
        assert_eq!(classify(&Failure::Timeout, true), RETRY);
        assert_eq!(classify(&Failure::Timeout, false), Disposition::Fail);
        assert_eq!(classify(&Failure::ConnectionClosed, true), RETRY);
        assert_eq!(
            classify(&Failure::ConnectionClosed, false),
            Disposition::Fail
        );
        assert_eq!(classify(&status(500), false), Disposition::Fail);
        assert_eq!(classify(&status(429), false), RETRY);
    }

    #[test]
    fn malformed_success_bodies_and_local_refusals_are_not_retried() {
        assert_eq!(classify(&Failure::MalformedBody, true), Disposition::Fail);
        assert_eq!(classify(&Failure::NotSent, true), Disposition::Fail);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn budget_is_shared_by_clones_and_never_goes_below_zero() {
        let b = RetryBudget::new(2);
        let c = b.clone();
        assert!(b.try_take());
        assert!(c.try_take());
        assert!(!b.try_take());
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn jitter_bounds_at_the_edges() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        assert_eq!(full_jitter(base, cap, 0, 1.0), base);
        assert_eq!(full_jitter(base, cap, 2, 1.0), Duration::from_millis(400));
        assert_eq!(full_jitter(base, cap, 10, 1.0), cap);
        assert_eq!(full_jitter(base, cap, u32::MAX, 1.0), cap);
        assert_eq!(full_jitter(base, cap, 3, 0.0), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn backoff_is_never_above_the_cap_nor_the_exponential_ceiling(
            base_ms in 0u64..10_000,
            cap_ms in 0u64..600_000,
            retry in 0u32..100,
            unit in 0.0f64..=1.0,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            let d = full_jitter(base, cap, retry, unit);
            prop_assert!(d <= cap);
            let exp = base.saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX));
            prop_assert!(d <= exp);
        }

        #[test]
        fn retry_after_is_used_as_given_up_to_the_cap(secs in 0u64..1_000, retry in 0u32..10) {
            let policy = RetryPolicy { cap: Duration::from_secs(120), ..RetryPolicy::default() };
            let d = policy.delay(retry, Some(Duration::from_secs(secs)));
            prop_assert_eq!(d, Duration::from_secs(secs.min(120)));
        }

        #[test]
        fn random_backoff_stays_within_bounds(retry in 0u32..40) {
            let policy = RetryPolicy::default();
            prop_assert!(policy.backoff(retry) <= policy.cap);
        }
    }

    #[derive(Debug)]
    struct E(Failure);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl Classify for E {
        fn failure(&self) -> Failure {
            self.0
        }
    }

    fn recording_policy(
        max_attempts: u32,
        budget: u32,
    ) -> (RetryPolicy, Arc<Mutex<Vec<Duration>>>) {
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let policy = RetryPolicy {
            max_attempts,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            budget: RetryBudget::new(budget),
            sleeper: Sleeper::from_fn(move |d| {
                w.lock().unwrap().push(d);
                async {}
            }),
        };
        (policy, waits)
    }

    #[tokio::test]
    async fn run_retries_until_success_and_reports_attempts() {
        let (policy, waits) = recording_policy(5, 10);
        let got = policy
            .run("op", true, |n| async move {
                if n < 3 { Err(E(status(503))) } else { Ok(n) }
            })
            .await
            .unwrap();
        assert_eq!((got.value, got.attempts), (3, 3));
        let waits = waits.lock().unwrap();
        assert_eq!(waits.len(), 2);
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits[1] <= Duration::from_millis(200));
        assert_eq!(policy.budget.remaining(), 8);
    }

    #[tokio::test]
    async fn run_stops_at_once_on_a_permanent_failure() {
        let (policy, waits) = recording_policy(5, 10);
        let err = policy
            .run("op", true, |_| async { Err::<(), _>(E(status(400))) })
            .await
            .unwrap_err();
        assert_eq!((err.attempts, err.stop), (1, Stop::Permanent));
        assert!(waits.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn run_honours_retry_after_and_stops_at_max_attempts() {
        let (policy, waits) = recording_policy(3, 10);
        let err = policy
            .run("op", true, |_| async {
                Err::<(), _>(E(Failure::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(2)),
                }))
            })
            .await
            .unwrap_err();
        assert_eq!((err.attempts, err.stop), (3, Stop::MaxAttempts));
        assert_eq!(*waits.lock().unwrap(), vec![Duration::from_secs(2); 2]);
    }

    #[tokio::test]
    async fn the_budget_ends_a_run_across_requests() {
        let (policy, _) = recording_policy(4, 5);
        let mut attempts = Vec::new();
        for _ in 0..3 {
            let err = policy
                .run("op", true, |_| async { Err::<(), _>(E(status(500))) })
                .await
                .unwrap_err();
            attempts.push((err.attempts, err.stop));
        }
        assert_eq!(
            attempts,
            vec![
                (4, Stop::MaxAttempts),
                (3, Stop::BudgetExhausted),
                (1, Stop::BudgetExhausted)
            ]
        );
    }

    /// An attempt that is answered 429 with `Retry-After: 7` the first time and succeeds after.
    async fn rate_limited_once(n: u32) -> Result<(), E> {
        if n == 1 {
            Err(E(Failure::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
            }))
        } else {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_sleeper_waits_in_paused_time() {
        let policy = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let start = tokio::time::Instant::now();
        let got = policy.run("op", true, rate_limited_once).await.unwrap();
        assert_eq!(got.attempts, 2);
        assert!(start.elapsed() >= Duration::from_secs(7));
    }

    /// On a manual clock the retry waits until the clock is moved past its back-off, and not a
    /// moment before.
    #[tokio::test]
    async fn a_sleeper_on_a_manual_clock_retries_once_the_clock_is_moved() {
        let start = DateTime::parse_from_rfc3339("2026-12-06T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = crate::clock::ManualClock::new(start);
        let policy = RetryPolicy {
            max_attempts: 2,
            sleeper: Sleeper::on(clock.clone()),
            ..RetryPolicy::default()
        };
        let calls = Arc::new(AtomicU32::new(0));
        let run = {
            let calls = calls.clone();
            tokio::spawn(async move {
                policy
                    .run("op", true, |n| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        rate_limited_once(n)
                    })
                    .await
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(Duration::from_secs(6));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "retried before its back-off"
        );
        assert!(!run.is_finished());
        clock.advance(Duration::from_secs(1));
        let got = run.await.unwrap().unwrap();
        assert_eq!((got.attempts, calls.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn timeouts_of_non_idempotent_requests_are_not_retried() {
        let (policy, _) = recording_policy(5, 10);
        let err = policy
            .run("op", false, |_| async { Err::<(), _>(E(Failure::Timeout)) })
            .await
            .unwrap_err();
        assert_eq!((err.attempts, err.stop), (1, Stop::Permanent));
    }
}
