//! `serve`'s writeback worker: drains unapplied provider events into the member DB, one process at
//! a time (the [`WritebackLease`], which `pull` and `sync` take too), and stops at its next step
//! once its shutdown token is cancelled; it never leaves a half-written event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::WRITEBACK_LOCK;
use super::apply::{self, ApplyContext, Scope, SoftBouncePolicy};
use crate::clock::SharedClock;
use crate::config::AudienceConfig;
use crate::domain::new_run_id;
use crate::mapping::Mapping;
use crate::providers::ProviderSet;
use crate::source::MemberPool;
use crate::store::locks::{Lease, LeaseWatch, LockHolder};
use crate::store::{Store, StoreError};

/// Events applied per round of the writeback worker.
const ROUND: i64 = 500;
/// The shortest time from the start of a round that applied events to the start of the next one,
/// unless the round was full. Under a stream of webhooks every commit wakes the worker: a round
/// at each wake applied a handful of events and cost three state DB writes for them (the lease
/// taken, the round's commit, the lease given back), each one a turn on SQLite's one writer
/// that the webhooks' group commits queued behind. Paced, a round gathers what arrived
/// meanwhile; an event waits at most this much longer to be written back.
const PACE: Duration = Duration::from_millis(100);

/// What a round of the writeback worker found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// A full round: more events may be due now.
    More,
    /// It applied (or tried) the events that were due; more may arrive soon.
    Drained,
    /// None were due, or another process applies them.
    Idle,
}

/// The writeback lease while this process holds it. A heartbeat renews it in the background, also
/// in the middle of a round; a round stops before its next writeback once the lease is lost.
#[derive(Default)]
pub(crate) struct WritebackLease(Option<Lease>);

impl WritebackLease {
    /// Holds the lease, taking it for a holder named `kind-<run id>` when this process does not
    /// hold it (or lost it): `Ok(None)` while held, `Ok(Some(holder))` when another process
    /// holds it.
    pub(crate) async fn hold(
        &mut self,
        store: &Store,
        kind: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(lease) = &self.0 {
            if lease.is_held() {
                return Ok(None);
            }
            tracing::warn!(
                "The writeback lease was lost (another process took it over after it ran out)"
            );
            self.0 = None;
        }
        let holder = LockHolder::this_process(&format!("{kind}-{}", new_run_id()));
        match store.lease(WRITEBACK_LOCK, holder).await? {
            Ok(lease) => {
                self.0 = Some(lease);
                Ok(None)
            }
            Err(current) => Ok(Some(current)),
        }
    }

    pub(crate) fn held(&self) -> bool {
        self.0.is_some()
    }

    /// What a round checks before each writeback (`None` when not held).
    pub(crate) fn watch(&self) -> Option<LeaseWatch> {
        self.0.as_ref().map(Lease::watch)
    }

    /// Gives the lease back (it expires by itself if that fails).
    pub(crate) async fn release(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.release().await;
        }
    }
}

/// What the writeback worker needs: the application's state DB, mapping, audiences, provider
/// client, member DB and clock.
pub struct WritebackWorker {
    pub store: Store,
    pub mapping: Arc<Mapping>,
    pub audiences: Vec<AudienceConfig>,
    pub soft_bounces: SoftBouncePolicy,
    /// The connected providers; they confirm unsigned webhook events.
    pub providers: ProviderSet,
    pub members: MemberPool,
    pub clock: SharedClock,
}

impl WritebackWorker {
    /// Runs until `shutdown` is cancelled; woken early by `wake` (new events committed).
    pub async fn run(self, shutdown: CancellationToken, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(500);
        let mut lease = WritebackLease::default();
        let mut first = true;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // The lease is taken while there are events to apply and given back once none are
            // left, so that a `pull` or `sync` (this server's own runs included) can take it in
            // between and apply its events itself. The first round runs whatever is due: it
            // also connects to the member DB.
            let due = std::mem::take(&mut first)
                || lease.held()
                || apply::any_due(&self.store).await.unwrap_or(true);
            let started = tokio::time::Instant::now();
            let round = if due {
                self.turn(&mut lease).await
            } else {
                Ok(Progress::Idle)
            };
            if matches!(round, Ok(Progress::Drained | Progress::Idle)) && lease.held() {
                lease.release().await;
            }
            let wait = match round {
                Ok(Progress::More) => continue,
                Ok(progress) => {
                    if progress == Progress::Drained {
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep_until(started + PACE) => {}
                        }
                    }
                    backoff = Duration::from_millis(500);
                    // Idle: wake on new events, or after a second for backed-off retries.
                    Duration::from_secs(1)
                }
                Err(()) => {
                    self.members.reset().await;
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    b
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = self.clock.sleep(wait) => {}
            }
        }
        lease.release().await;
    }

    /// Takes or keeps the lease and runs one round under it ([`Progress`]), `Err` when the
    /// member or state DB is unreachable (back off).
    async fn turn(&self, lease: &mut WritebackLease) -> Result<Progress, ()> {
        match lease.hold(&self.store, "writeback").await {
            // Another process applies events; look again later.
            Ok(Some(_)) => Ok(Progress::Idle),
            Ok(None) => match lease.watch() {
                Some(watch) => self.round(&watch).await,
                None => Ok(Progress::Idle),
            },
            Err(e) => {
                tracing::warn!(
                    "Cannot take the writeback lease: {}",
                    crate::error_chain(&e)
                );
                Err(())
            }
        }
    }

    /// One round under the writeback lease.
    async fn round(&self, lease: &LeaseWatch) -> Result<Progress, ()> {
        let source = match self.members.get().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "The member database is unreachable; events wait: {}",
                    crate::error_chain(&e)
                );
                self.suppress_ahead().await;
                return Err(());
            }
        };
        let ctx = ApplyContext {
            mapping: &self.mapping,
            store: &self.store,
            source: &source,
            audiences: &self.audiences,
            soft_bounces: self.soft_bounces,
            providers: &self.providers,
            lease: Some(lease),
        };
        match apply::apply_events(&ctx, Scope::All, ROUND).await {
            Ok(out) if out.member_db_down => {
                tracing::warn!("The member database is unreachable; events wait and are retried");
                self.suppress_ahead().await;
                Err(())
            }
            // Lost mid-round: the next turn of the loop sees it and takes the lease again when
            // free.
            Ok(out) if out.lease_lost => Ok(Progress::More),
            Ok(out) if out.seen as i64 == ROUND && out.failed < out.seen => Ok(Progress::More),
            Ok(out) if out.seen > 0 => Ok(Progress::Drained),
            Ok(_) => Ok(Progress::Idle),
            Err(e) => {
                tracing::error!(
                    "Applying provider events failed: {}",
                    crate::error_chain(&e)
                );
                Err(())
            }
        }
    }

    /// While the member DB is down, the suppressions that waiting events ask for go in anyway
    /// (they need only the state DB).
    async fn suppress_ahead(&self) {
        match apply::suppress_ahead(&self.store, &self.audiences).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "Suppressed {n} address(es) from events waiting for the member database"
            ),
            Err(e) => tracing::warn!(
                "Cannot add the suppressions of waiting events: {}",
                crate::error_chain(&e)
            ),
        }
    }
}
