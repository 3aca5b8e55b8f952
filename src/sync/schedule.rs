//! Sync runs in a long-running process: [`SyncRunner`] runs one audience's sync the way `serve`
//! does (webhook registration, metrics, one run at a time per process), for the queued syncs of
//! the job queue (`campaigns/jobs.rs`: runs asked for over HTTP and the nightly ones), and the
//! nightly schedule's timing ([`nightly`], on the application's clock; what it queues is the job
//! queue's `Nightly`).

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Local, NaiveTime, TimeZone, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::SyncError;
use super::apply::{SyncContext, SyncOptions, sync_audience_with_id};
use crate::clock::SharedClock;
use crate::config::{AudienceConfig, Config};
use crate::mapping::Mapping;
use crate::progress::Progress;
use crate::providers::ProviderSet;
use crate::source::MemberPool;
use crate::store::Store;

/// Why [`SyncRunner::run_one`] did not complete a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunFailed {
    /// Another run of the audience holds its lock (here or in another process): nothing was
    /// done and no run was recorded; a queued sync waits for it.
    #[error("{0}")]
    Locked(String),
    /// The process is shutting down: the run stopped before its next side effect and is
    /// recorded `interrupted`; the next run of the audience resumes it.
    #[error("{0}")]
    Stopped(String),
    /// The run failed (or could not start); the message says why.
    #[error("{0}")]
    Other(String),
}

/// What a sync run of a long-running process needs; cheap to clone (clones share the gate).
#[derive(Clone)]
pub struct SyncRunner {
    pub config: Arc<Config>,
    pub mapping: Arc<Mapping>,
    pub store: Store,
    /// The connected providers; an audience whose provider is not among them fails, saying so.
    pub providers: ProviderSet,
    pub members: MemberPool,
    /// One sync at a time in this process (HTTP-started and nightly).
    pub gate: Arc<tokio::sync::Mutex<()>>,
    /// Woken after a successful run: its pull stored events for the writeback worker.
    pub events_ready: Arc<Notify>,
}

impl SyncRunner {
    /// Syncs one audience under the run id `run_id` (the caller holds [`SyncRunner::gate`]).
    pub async fn run_one(
        &self,
        audience: &AudienceConfig,
        run_id: &str,
        full: bool,
    ) -> Result<(), RunFailed> {
        let failed = |e: &dyn std::fmt::Display| RunFailed::Other(e.to_string());
        let client = self
            .providers
            .require(audience.provider)
            .map_err(|e| failed(&e))?;
        let source = self.members.get().await.map_err(|e| failed(&e))?;
        if let Some(endpoint) = crate::providers::WebhookEndpoint::of_config(&self.config) {
            client
                .ensure_webhook(&self.store, audience, &endpoint)
                .await
                .map_err(|e| failed(&e))?;
        }
        let ctx = SyncContext {
            mapping: &self.mapping,
            store: &self.store,
            source: &source,
            providers: &self.providers,
        };
        let options = SyncOptions {
            full,
            allow_mass_archive: false,
            pull_only: false,
        };
        let started = std::time::Instant::now();
        let result = sync_audience_with_id(
            &ctx,
            audience,
            options,
            &Progress::hidden(),
            run_id.to_owned(),
        )
        .await;
        let outcome = match &result {
            Ok(r) if r.failed > 0 => "partial",
            Ok(_) => "succeeded",
            Err(SyncError::Locked { .. }) => "skipped_locked",
            Err(_) => "failed",
        };
        metrics::counter!("mailbridge_sync_runs_total", "audience" => audience.name.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("mailbridge_sync_run_seconds", "audience" => audience.name.clone())
            .record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            // A sync's pull stores events too; let the worker see them at once.
            self.events_ready.notify_one();
        }
        match result {
            Ok(_) => Ok(()),
            Err(e @ SyncError::Locked { .. }) => Err(RunFailed::Locked(e.to_string())),
            Err(e @ SyncError::Store(crate::store::StoreError::Stopped { .. })) => {
                Err(RunFailed::Stopped(e.to_string()))
            }
            Err(e) => Err(RunFailed::Other(crate::error_chain(&e))),
        }
    }
}

/// `[server] nightly_sync` as a time of day.
pub fn nightly_time(config: &Config) -> Option<NaiveTime> {
    config
        .server
        .as_ref()
        .and_then(|s| s.nightly_sync.as_deref())
        .and_then(|t| NaiveTime::parse_from_str(t, "%H:%M").ok())
}

/// Waits on `clock` for each next `at` (local wall clock) after `start` and calls `run` with that
/// night's time (its slot), until `shutdown` is cancelled. `start` is taken by the caller when
/// the process starts, so a night whose time comes while the task is being spawned is not
/// skipped; each slot is run at most once, even when the clock stands still or jumps back.
pub async fn nightly<F, Fut>(
    at: NaiveTime,
    clock: &SharedClock,
    shutdown: &CancellationToken,
    start: DateTime<Utc>,
    mut run: F,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = ()>,
{
    // Each next night is the first after the last one run (after `start` at first), not after
    // "now": a task that looks late (busy, or a test that moved the clock at once) still runs a
    // night whose time has just come. A night long gone (the machine slept for days) is not run
    // late: the schedule goes on from now (a missed night is the business of catch-up at start).
    let mut after = start;
    loop {
        let now = clock.now();
        let mut next = next_occurrence(after.with_timezone(&Local), at);
        if next.with_timezone(&Utc) < now - chrono::Duration::hours(1) {
            next = next_occurrence(now.with_timezone(&Local), at);
        }
        tracing::info!("Next nightly sync at {}", next.format("%Y-%m-%d %H:%M %Z"));
        let slot = next.with_timezone(&Utc);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = clock.sleep_until(slot) => {}
        }
        run(slot).await;
        after = slot;
    }
}

/// The last time `at` (local wall clock) came at or before `now`: the night a `serve` starting at
/// `now` may have missed.
pub fn previous_occurrence(now: DateTime<Local>, at: NaiveTime) -> DateTime<Local> {
    let mut day = now.date_naive();
    for _ in 0..3 {
        if let Some(t) = occurrence_on(day, at)
            && t <= now
        {
            return t;
        }
        day = day.pred_opt().unwrap_or(day);
    }
    now - chrono::Duration::days(1)
}

/// `at` on `day`; across a DST gap, an hour later.
fn occurrence_on(day: chrono::NaiveDate, at: NaiveTime) -> Option<DateTime<Local>> {
    let naive = day.and_time(at);
    Local.from_local_datetime(&naive).earliest().or_else(|| {
        Local
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
    })
}

/// The next time `at` (local wall clock) comes after `now`; across a DST gap, the first valid
/// instant after it.
pub fn next_occurrence(now: DateTime<Local>, at: NaiveTime) -> DateTime<Local> {
    let mut day = now.date_naive();
    for _ in 0..3 {
        if let Some(t) = occurrence_on(day, at)
            && t > now
        {
            return t;
        }
        day = day.succ_opt().unwrap_or(day);
    }
    now + chrono::Duration::days(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::NaiveDate;
    use std::time::Duration;

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Local> {
        Local
            .from_local_datetime(
                &NaiveDate::from_ymd_opt(y, m, d)
                    .unwrap()
                    .and_hms_opt(h, min, 0)
                    .unwrap(),
            )
            .earliest()
            .unwrap()
    }

    #[test]
    fn next_occurrence_is_today_or_tomorrow() {
        let at = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        assert_eq!(
            next_occurrence(local(2026, 11, 28, 1, 0), at),
            local(2026, 11, 28, 2, 30)
        );
        assert_eq!(
            next_occurrence(local(2026, 11, 28, 2, 30), at),
            local(2026, 11, 29, 2, 30)
        );
        assert_eq!(
            next_occurrence(local(2026, 11, 28, 23, 59), at),
            local(2026, 11, 29, 2, 30)
        );
    }

    #[test]
    fn previous_occurrence_is_today_or_yesterday() {
        let at = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        assert_eq!(
            previous_occurrence(local(2026, 11, 28, 10, 0), at),
            local(2026, 11, 28, 2, 30)
        );
        assert_eq!(
            previous_occurrence(local(2026, 11, 28, 2, 30), at),
            local(2026, 11, 28, 2, 30)
        );
        assert_eq!(
            previous_occurrence(local(2026, 11, 28, 2, 29), at),
            local(2026, 11, 27, 2, 30)
        );
    }

    #[tokio::test]
    async fn the_schedule_runs_when_the_clock_passes_the_nightly_time() {
        let at = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        let manual = ManualClock::new(local(2026, 11, 28, 1, 0).with_timezone(&Utc));
        let clock: SharedClock = manual.clone();
        let shutdown = CancellationToken::new();
        let (started, mut runs) = tokio::sync::mpsc::unbounded_channel();
        let schedule = {
            let clock = clock.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let start = clock.now();
                nightly(at, &clock, &shutdown, start, |slot| {
                    let started = started.clone();
                    let now = clock.now();
                    async move {
                        let _ = started.send((slot, now));
                    }
                })
                .await;
            })
        };
        // Let the schedule reach its wait; an hour and 29 minutes later it still waits.
        tokio::task::yield_now().await;
        manual.advance(Duration::from_secs(89 * 60));
        tokio::task::yield_now().await;
        assert!(runs.try_recv().is_err(), "ran before 02:30");

        manual.advance(Duration::from_secs(2 * 60));
        // The timeout only bounds a failure (a schedule that waits on the wall clock).
        let bound = Duration::from_secs(10);
        let first = tokio::time::timeout(bound, runs.recv())
            .await
            .expect("no run although the clock passed 02:30")
            .expect("a run at 02:30");
        assert_eq!(
            first,
            (
                local(2026, 11, 28, 2, 30).with_timezone(&Utc),
                local(2026, 11, 28, 2, 31).with_timezone(&Utc)
            )
        );

        // The next night, once more. (On this single-threaded test runtime the schedule has
        // computed its next wait before this task runs again.)
        manual.set(local(2026, 11, 29, 2, 30).with_timezone(&Utc));
        let second = tokio::time::timeout(bound, runs.recv())
            .await
            .expect("no run the next night")
            .expect("a run the next night");
        assert_eq!(second.0, local(2026, 11, 29, 2, 30).with_timezone(&Utc));

        shutdown.cancel();
        schedule.await.expect("the schedule stops on shutdown");
    }
}
