//! Retention: `serve` deletes what it no longer needs, past the ages of `[retention]`: applied
//! provider events, the raw bytes of processed bounce mails, and finished sync runs with their
//! member errors. Each table's owner writes the SQL; this module schedules it on the app's clock
//! (a pass at start, then hourly) and runs it in small batches with a pause between them, so the
//! relay, the webhooks and the writeback never wait long behind it. The bytes of sent outbox
//! messages, and their history of attempts (`outbox_attempts`), are deleted by the relay worker,
//! which owns the outbox, after `[retention] outbox_body_days`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::RetentionConfig;
use crate::store::{Store, StoreError, time_text};

/// How often `serve` prunes.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Rows one statement deletes at most.
pub const BATCH: i64 = 500;
/// The pause between two statements: other writers (the SQLite writer above all) get their turn.
const PAUSE: Duration = Duration::from_millis(20);

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub provider_events: u64,
    pub bounce_mails: u64,
    pub sync_runs: u64,
    pub sync_errors: u64,
}

/// The pruner of one `serve` process. Several processes on one PostgreSQL state DB may prune at
/// once: each statement deletes rows that are past their age whoever deletes them.
pub struct Pruner {
    pub store: Store,
    pub config: RetentionConfig,
    pub clock: SharedClock,
    /// Rows per statement ([`BATCH`] in `serve`; tests make it small to see the batches).
    pub batch: i64,
}

/// `now` minus `days`, as the state DB stores times; `None` when that is before the calendar
/// starts (nothing is that old).
fn cutoff(now: DateTime<Utc>, days: u64) -> Option<String> {
    let days = chrono::Duration::try_days(i64::try_from(days).ok()?)?;
    now.checked_sub_signed(days).map(time_text)
}

impl Pruner {
    /// A pruner of `store` by `config` on `clock`, [`BATCH`] rows per statement.
    pub fn new(store: Store, config: RetentionConfig, clock: SharedClock) -> Pruner {
        Pruner {
            store,
            config,
            clock,
            batch: BATCH,
        }
    }

    /// One pass over every table, each in batches until nothing past its age is left.
    pub async fn prune(&self) -> Result<Pruned, StoreError> {
        let now = self.clock.now();
        let mut pruned = Pruned::default();
        if let Some(before) = cutoff(now, self.config.provider_event_days) {
            pruned.provider_events = self
                .batches(|limit| {
                    let before = before.clone();
                    async move { crate::events::prune_processed(&self.store, &before, limit).await }
                })
                .await?;
        }
        if let Some(before) = cutoff(now, self.config.bounce_mail_days) {
            pruned.bounce_mails = self
                .batches(|limit| {
                    let before = before.clone();
                    async move {
                        crate::bounces::ingest::prune_raw(&self.store, &before, limit).await
                    }
                })
                .await?;
        }
        if let Some(before) = cutoff(now, self.config.sync_run_days) {
            loop {
                let step =
                    crate::sync::report::prune_runs(&self.store, &before, self.batch).await?;
                pruned.sync_runs += step.runs;
                pruned.sync_errors += step.errors;
                if step.runs + step.errors == 0 {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
        Ok(pruned)
    }

    /// Runs `step` with [`Pruner::batch`] until a statement deletes fewer; returns the total.
    async fn batches<F, Fut>(&self, step: F) -> Result<u64, StoreError>
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let mut total = 0;
        loop {
            let n = step(self.batch).await?;
            total += n;
            if n < u64::try_from(self.batch).unwrap_or(0) {
                return Ok(total);
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Prunes at once and then every [`EVERY`] on the clock, until `shutdown`. Each pass's
    /// counts go to `passes` when given (tests follow the schedule by them).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        passes: Option<tokio::sync::mpsc::UnboundedSender<Pruned>>,
    ) {
        loop {
            match self.prune().await {
                Ok(pruned) => {
                    if pruned != Pruned::default() {
                        tracing::info!(
                            provider_events = pruned.provider_events,
                            bounce_mails = pruned.bounce_mails,
                            sync_runs = pruned.sync_runs,
                            sync_errors = pruned.sync_errors,
                            "Deleted data older than [retention] keeps it"
                        );
                        metrics::counter!("mailbridge_retention_pruned_total", "table" => "provider_events")
                            .increment(pruned.provider_events);
                        metrics::counter!("mailbridge_retention_pruned_total", "table" => "bounce_messages")
                            .increment(pruned.bounce_mails);
                        metrics::counter!("mailbridge_retention_pruned_total", "table" => "sync_runs")
                            .increment(pruned.sync_runs);
                    }
                    if let Some(tx) = &passes {
                        let _ = tx.send(pruned);
                    }
                }
                Err(e) => tracing::warn!(
                    "Deleting old data failed; the next pass tries again: {}",
                    crate::error_chain(&e)
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.clock.sleep(EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_days_before_now_in_the_stored_form() {
        let now = DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(cutoff(now, 30).as_deref(), Some("2026-03-01T12:00:00.000Z"));
        assert_eq!(cutoff(now, u64::MAX), None);
        assert_eq!(cutoff(now, 36_500_000_000), None);
    }
}
