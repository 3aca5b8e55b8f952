//! `serve`'s background work: the writeback worker (drains unapplied provider events into the
//! member DB), sync runs started over HTTP, and the nightly sync schedule. Each loop stops at its
//! next step once `state.shutdown` is cancelled; none leaves a half-written event or run.

use std::time::Duration;

use chrono::{DateTime, Local, NaiveTime, TimeZone};

use super::Shared;
use crate::config::AudienceConfig;
use crate::events::apply::{self, ApplyContext, Scope, SoftBouncePolicy};
// One process at a time applies events (several `serve` processes may share a PostgreSQL state
// DB, and `pull` and `sync` apply them too).
use crate::events::WRITEBACK_LOCK;
use crate::progress::Progress;
use crate::store::locks::{Lease, LeaseWatch, LockHolder};
use crate::sync::SyncError;
use crate::sync::apply::{SyncContext, SyncOptions, sync_audience_with_id};
use crate::sync::report::new_run_id;

/// What the server knows about a sync run that has no finished row yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Queued { audience: String },
    Running,
    Failed(String),
    Done,
}

pub fn job_state(state: &Shared, run_id: &str) -> Option<JobState> {
    state.jobs().get(run_id).cloned()
}

fn set_job(state: &Shared, run_id: &str, job: JobState) {
    state.jobs().insert(run_id.to_owned(), job);
}

/// Events applied per round of the writeback worker.
const ROUND: i64 = 500;

/// The writeback lease while this worker holds it. A heartbeat renews it in the background, also
/// in the middle of a round; a round stops before its next writeback once the lease is lost.
struct WritebackLease(Option<Lease>);

impl WritebackLease {
    /// Whether this worker holds the lease, taking it when free. `Err` when the state DB cannot
    /// be asked.
    async fn hold(&mut self, state: &Shared) -> Result<bool, ()> {
        if let Some(lease) = &self.0 {
            if lease.is_held() {
                return Ok(true);
            }
            tracing::warn!(
                "The writeback lease was lost (another process took it over after it ran out)"
            );
            self.0 = None;
        }
        let holder = LockHolder::this_process(&format!("writeback-{}", new_run_id()));
        match state.store.lease(WRITEBACK_LOCK, holder).await {
            Ok(Ok(lease)) => {
                self.0 = Some(lease);
                Ok(true)
            }
            // Another process applies events; look again later.
            Ok(Err(_)) => Ok(false),
            Err(e) => {
                tracing::warn!(
                    "Cannot take the writeback lease: {}",
                    crate::error_chain(&e)
                );
                Err(())
            }
        }
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the lease back (it expires by itself if that fails).
    async fn release(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.release().await;
        }
    }
}

/// Starts the writeback worker.
pub fn spawn_writeback(state: &Shared) {
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let mut lease = WritebackLease(None);
        let mut first = true;
        loop {
            if state.shutdown.is_cancelled() {
                break;
            }
            // The lease is taken while there are events to apply and given back once none are
            // left, so that a `pull` or `sync` (this server's own runs included) can take it in
            // between and apply its events itself. The first round runs whatever is due: it
            // also connects to the member DB.
            let due = std::mem::take(&mut first)
                || lease.held()
                || apply::any_due(&state.store).await.unwrap_or(true);
            let round = if !due {
                Ok(false)
            } else {
                match lease.hold(&state).await {
                    // Another process applies events; look again later.
                    Ok(false) => Ok(false),
                    Ok(true) => match lease.0.as_ref() {
                        Some(l) => writeback_round(&state, &l.watch()).await,
                        None => Ok(false),
                    },
                    Err(()) => Err(()),
                }
            };
            if matches!(round, Ok(false)) && lease.held() {
                lease.release().await;
            }
            let wait = match round {
                Ok(more) if more => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    // Idle: wake on new events, or after a second for backed-off retries.
                    Duration::from_secs(1)
                }
                Err(()) => {
                    state.reset_member_source().await;
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    b
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = state.shutdown.cancelled() => break,
                () = state.events_ready.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        lease.release().await;
    });
}

/// While the member DB is down, the suppressions that waiting events ask for go in anyway
/// (they need only the state DB).
async fn suppress_ahead(state: &Shared) {
    match apply::suppress_ahead(&state.store, &state.config.audiences).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!("Suppressed {n} address(es) from events waiting for the member database")
        }
        Err(e) => tracing::warn!(
            "Cannot add the suppressions of waiting events: {}",
            crate::error_chain(&e)
        ),
    }
}

/// One round under the writeback lease; `Ok(true)` when more events may be due, `Err` when the
/// member or state DB is unreachable (back off).
async fn writeback_round(state: &Shared, lease: &LeaseWatch) -> Result<bool, ()> {
    let source = match state.member_source().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "The member database is unreachable; events wait: {}",
                crate::error_chain(&e)
            );
            suppress_ahead(state).await;
            return Err(());
        }
    };
    let server = state.config.server.as_ref();
    let ctx = ApplyContext {
        mapping: &state.mapping,
        store: &state.store,
        source: &source,
        audiences: &state.config.audiences,
        soft_bounces: SoftBouncePolicy {
            threshold: server.map_or(3, |s| s.soft_bounce_threshold),
            window_days: server.map_or(30, |s| s.soft_bounce_window_days),
        },
        mailchimp: state.mailchimp.as_ref(),
        lease: Some(lease),
    };
    match apply::apply_events(&ctx, Scope::All, ROUND).await {
        Ok(out) if out.member_db_down => {
            tracing::warn!("The member database is unreachable; events wait and are retried");
            suppress_ahead(state).await;
            Err(())
        }
        // Lost mid-round: the next turn of the loop sees it and takes the lease again when free.
        Ok(out) if out.lease_lost => Ok(true),
        Ok(out) => Ok(out.seen as i64 == ROUND && out.failed < out.seen),
        Err(e) => {
            tracing::error!(
                "Applying provider events failed: {}",
                crate::error_chain(&e)
            );
            Err(())
        }
    }
}

/// Runs the given syncs one after another in the background (one at a time per process; the
/// audience lock keeps other processes out).
pub fn spawn_syncs(state: &Shared, runs: Vec<(AudienceConfig, String)>, full: bool) {
    for (audience, run_id) in &runs {
        set_job(
            state,
            run_id,
            JobState::Queued {
                audience: audience.name.clone(),
            },
        );
    }
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        let _gate = state.sync_gate.lock().await;
        for (audience, run_id) in runs {
            if state.shutdown.is_cancelled() {
                set_job(&state, &run_id, JobState::Failed("the server shut down before the run started".into()));
                continue;
            }
            set_job(&state, &run_id, JobState::Running);
            match run_one(&state, &audience, &run_id, full).await {
                Ok(()) => set_job(&state, &run_id, JobState::Done),
                Err(message) => {
                    tracing::warn!(audience = %audience.name, "Sync run {run_id} did not complete: {message}");
                    set_job(&state, &run_id, JobState::Failed(message));
                }
            }
        }
    });
}

async fn run_one(
    state: &Shared,
    audience: &AudienceConfig,
    run_id: &str,
    full: bool,
) -> Result<(), String> {
    let Some(client) = state.mailchimp.as_ref() else {
        return Err("[providers.mailchimp] is not configured".into());
    };
    let source = state.member_source().await.map_err(|e| format!("{e}"))?;
    if let Some(target) = crate::sync::webhooks::target(&state.config) {
        crate::sync::webhooks::ensure(client, &state.store, audience, &target)
            .await
            .map_err(|e| e.to_string())?;
    }
    let ctx = SyncContext {
        mapping: &state.mapping,
        store: &state.store,
        source: &source,
        client,
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
        state.events_ready.notify_one();
    }
    result.map(|_| ()).map_err(|e| crate::error_chain(&e))
}

/// The next time `at` (local wall clock) comes after `now`; across a DST gap, the first valid
/// instant after it.
pub fn next_occurrence(now: DateTime<Local>, at: NaiveTime) -> DateTime<Local> {
    let mut day = now.date_naive();
    for _ in 0..3 {
        let naive = day.and_time(at);
        let candidate = Local.from_local_datetime(&naive).earliest().or_else(|| {
            Local
                .from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        });
        if let Some(t) = candidate
            && t > now
        {
            return t;
        }
        day = day.succ_opt().unwrap_or(day);
    }
    now + chrono::Duration::days(1)
}

/// Starts the nightly schedule when `[server] nightly_sync` is set: every audience, one at a time;
/// an audience whose lock another process holds is skipped (logged, counted).
pub fn spawn_nightly(state: &Shared) {
    let Some(at) = state
        .config
        .server
        .as_ref()
        .and_then(|s| s.nightly_sync.as_deref())
        .and_then(|t| NaiveTime::parse_from_str(t, "%H:%M").ok())
    else {
        return;
    };
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        loop {
            let now = Local::now();
            let next = next_occurrence(now, at);
            let wait = (next - now).to_std().unwrap_or(Duration::from_secs(60));
            tracing::info!("Next nightly sync at {}", next.format("%Y-%m-%d %H:%M %Z"));
            tokio::select! {
                () = state.shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let runs: Vec<(AudienceConfig, String)> = state
                .config
                .audiences
                .iter()
                .map(|a| (a.clone(), new_run_id()))
                .collect();
            let _gate = state.sync_gate.lock().await;
            for (audience, run_id) in runs {
                if state.shutdown.is_cancelled() {
                    break;
                }
                match run_one(&state, &audience, &run_id, false).await {
                    Ok(()) => tracing::info!(audience = %audience.name, "Nightly sync {run_id} finished"),
                    Err(message) => tracing::warn!(audience = %audience.name, "Nightly sync skipped or failed: {message}"),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

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
}
