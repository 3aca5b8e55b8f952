//! The one rule for a state DB step that fails because of its connection, not its statement
//! ([`StoreError::is_transient`]: the server restarting, a reset socket, no connection in time):
//! run the step again on a new connection, pausing longer each time, within a budget the caller
//! sets (the lease that protects its work: past it, another worker may take that work over).
//! Any other failure, or one that outlasts the budget, is returned at once.
//!
//! The relay records delivery outcomes through it, and the sync commits applied batches
//! through it: both have made a side effect at the provider or the SMTP server that would be
//! made again if its record were given up.

use std::time::Duration;

use super::StoreError;

/// The first pause after a failure of the connection; doubled each time up to
/// [`RETRY_PAUSE_MAX`].
pub const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails for a reason other than the connection, or the next
/// pause would end past `budget` from now. `on_retry(failures, error)` is called before each
/// pause (to log the first and count them); the value comes back with the number of failed
/// attempts before it (more than 0: the state DB was reached again). The pauses are pacing on
/// the runtime's timer and decide nothing the store's clock must see.
pub async fn retry_transient<T, Fut>(
    budget: Duration,
    mut on_retry: impl FnMut(u32, &StoreError),
    mut attempt: impl FnMut() -> Fut,
) -> Result<(T, u32), StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let give_up = tokio::time::Instant::now() + budget;
    let mut pause = RETRY_PAUSE_MIN;
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(done) => return Ok((done, failures)),
            Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < give_up => {
                failures += 1;
                on_retry(failures, &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> StoreError {
        StoreError::Query {
            what: "test",
            source: sqlx::Error::PoolTimedOut,
        }
    }

    fn permanent() -> StoreError {
        StoreError::Query {
            what: "test",
            source: sqlx::Error::RowNotFound,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_until_the_step_succeeds() {
        let mut calls = 0;
        let mut seen = Vec::new();
        let (value, failures) = retry_transient(
            Duration::from_secs(10),
            |n, _| seen.push(n),
            || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err(transient()) } else { Ok(n) } }
            },
        )
        .await
        .unwrap();
        assert_eq!((value, failures), (4, 3));
        assert_eq!(seen, [1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn any_other_failure_is_returned_at_once() {
        let mut calls = 0;
        let r: Result<((), u32), _> = retry_transient(
            Duration::from_secs(10),
            |_, _| {},
            || {
                calls += 1;
                async { Err(permanent()) }
            },
        )
        .await;
        assert!(matches!(r, Err(e) if !e.is_transient()));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_outlasts_the_budget_is_returned() {
        let started = tokio::time::Instant::now();
        let mut calls = 0u32;
        let r: Result<((), u32), _> = retry_transient(
            Duration::from_secs(3),
            |_, _| {},
            || {
                calls += 1;
                async { Err(transient()) }
            },
        )
        .await;
        assert!(matches!(r, Err(e) if e.is_transient()));
        assert!(started.elapsed() <= Duration::from_secs(3));
        // 50 + 100 + 200 + 400 + 800 ms, then 1 s pauses: 6 attempts fit in 3 s.
        assert!(calls >= 5, "{calls} attempts");
    }
}
