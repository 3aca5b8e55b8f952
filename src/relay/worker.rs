//! The delivery worker: claims due messages with a lease, delivers each through the first healthy
//! route (the SMTP conversation runs outside any transaction), classifies failures in one place
//! ([`classify`]) and records the outcome. Several workers (processes) may share a PostgreSQL
//! state DB: claims never overlap, and a crashed worker's messages are taken over once its lease
//! runs out, so every message is delivered once normally and at least once after a crash. A
//! worker checks in the state DB that it still holds a message's lease right before its turn
//! (renewing a lease that is half gone), and renews it while the send lasts: a live worker's
//! message is never taken over, and a message taken over is never started by its old worker.
//!
//! Every time that decides something (what is due, back-off, leases, the hourly and monthly
//! windows, how long a route is skipped, when old bodies go) is read from the store's clock
//! ([`Store::clock`]), so a test on a [`crate::clock::ManualClock`] moves time instead of waiting.
//! Only pacing that decides nothing stays on the runtime's timer: the idle poll, the recorder's
//! few milliseconds of gathering, and the poll for another worker's lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::alerts::{Alerter, LimitKind, Usage};
use super::classify::{Verdict, backoff, classify};
use super::outbox::{self, Claimed, Outcome};
use super::quota;
use super::render::Category;
use super::routes::{self, Delivery, Route, RouteError};
use crate::clock::SharedClock;
use crate::config::{AlertsConfig, DbKind, RelayConfig};
use crate::store::{Store, StoreError, time_text as text};

/// How long the recorder gathers outcomes before committing them, and at most how many: on
/// SQLite, and on PostgreSQL, where a commit takes round trips and an fsync that a busy machine
/// stretches to 20 to 60 ms; at 256 per commit the recorder fell behind the senders there.
const RECORD_GATHER: Duration = Duration::from_millis(5);
const RECORD_BATCH: usize = 256;
const RECORD_BATCH_PG: usize = 1024;
/// How many messages one claim takes, per unit of concurrency: on SQLite, and on PostgreSQL. A
/// PostgreSQL claim costs round trips and a commit's fsync whatever its size (10 to 50 ms on a
/// busy machine), and the claimer must keep ahead of the senders: 256 messages, 16 ms of sending
/// at four connections, ran out before the next claim was in, and the senders waited (the relay
/// drained 4,200 msg/s where smtp-source sent 15,000).
const CLAIM_PER_SLOT: u32 = 64;
const CLAIM_PER_SLOT_PG: u32 = 256;
/// How often an idle continuous worker looks for due messages (other processes enqueue too).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often a continuous worker deletes the bytes of messages past `body_retention_days`.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn chrono_secs(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// What one `--once` run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub sent: u64,
    pub deferred: u64,
    /// Messages whose route's answer was lost after the handover (they may have been delivered):
    /// retried on the same route after the back-off, like deferred ones.
    pub ambiguous: u64,
    pub waiting: u64,
    pub bounced: u64,
    pub suppressed: u64,
    pub failed: u64,
    /// Messages whose bytes were deleted, done more than `body_retention_days` ago.
    pub purged: u64,
    /// Routes found misconfigured during the run (credentials, sender authorisation, policy).
    pub misconfigured_routes: Vec<String>,
}

impl RunSummary {
    /// Adds another summary's counts (not its misconfigured routes, which the worker collects).
    fn add(&mut self, other: &RunSummary) {
        self.sent += other.sent;
        self.deferred += other.deferred;
        self.ambiguous += other.ambiguous;
        self.waiting += other.waiting;
        self.bounced += other.bounced;
        self.suppressed += other.suppressed;
        self.failed += other.failed;
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Sent { .. } => self.sent += 1,
            Outcome::Deferred { .. } => self.deferred += 1,
            Outcome::Ambiguous { .. } => self.ambiguous += 1,
            Outcome::Waiting { .. } => self.waiting += 1,
            Outcome::Bounced { .. } => self.bounced += 1,
            Outcome::Suppressed { .. } => self.suppressed += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

/// Per-claim room left under the limits (shared by the messages of one batch).
struct Rooms {
    hourly: Option<AtomicI64>,
    monthly: Option<(u64, AtomicI64)>,
}

/// A claimed message handed to a sender: whether its address is suppressed, the room under the
/// limits shared by its pass, and when the lease its claim took ends.
/// A claimed message, why it is held back (if it is), its limits' rooms and its lease's end.
type Work = (Claimed, Option<&'static str>, Arc<Rooms>, DateTime<Utc>);

/// One delivery worker.
pub struct Worker {
    core: Arc<Core>,
}

/// What the worker's tasks share: the claimer, the senders and the recorder of a pass run as
/// tasks of their own, so that the senders' connections are served by every runtime thread and
/// never wait for the bookkeeping.
struct Core {
    store: Store,
    /// The store's clock.
    clock: SharedClock,
    config: Arc<RelayConfig>,
    routes: Vec<Route>,
    id: String,
    /// Routes that are down or misconfigured, until when they are skipped.
    unhealthy: std::sync::Mutex<HashMap<&'static str, (DateTime<Utc>, Verdict)>>,
    /// Routes found misconfigured since the last report.
    misconfigured: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Quota alerts on the limits this worker counts.
    alerts: Alerter,
}

impl Worker {
    /// A worker delivering from `store`'s outbox, on `store`'s clock ([`Store::open_with_clock`]):
    /// one clock for the rows the worker writes and the times it compares them with.
    pub fn new(store: Store, config: Arc<RelayConfig>) -> Result<Worker, RouteError> {
        Worker::with_alerts(store, config, AlertsConfig::default())
    }

    /// [`Worker::new`] raising quota alerts as `[alerts]` says (without it: the default
    /// thresholds, logged and counted, not mailed).
    pub fn with_alerts(
        store: Store,
        config: Arc<RelayConfig>,
        alerts: AlertsConfig,
    ) -> Result<Worker, RouteError> {
        let routes = routes::build(&config)?;
        let alerts = Alerter::new(store.clone(), alerts, Some(config.clone()));
        Ok(Worker {
            core: Arc::new(Core {
                clock: store.clock().clone(),
                store,
                config,
                routes,
                id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
                unhealthy: std::sync::Mutex::new(HashMap::new()),
                misconfigured: std::sync::Mutex::new(Default::default()),
                alerts,
            }),
        })
    }

    /// This worker's lease owner name.
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// Delivers until the outbox is empty or only messages waiting for a later retry remain
    /// (`relay --once`). Messages another live worker holds are waited for until its lease ends.
    /// The pooled connections stay open for the next run; [`Worker::close`] ends them.
    pub async fn run_once(&self) -> Result<RunSummary, StoreError> {
        let cutoff = self.core.store.now_text();
        let mut summary = RunSummary::default();
        loop {
            let claimed = self.pass(Some(&cutoff), &mut summary).await?;
            if claimed > 0 {
                continue;
            }
            let pending = outbox::pending(&self.core.store, &self.core.store.now_text()).await?;
            if pending.expired > 0 {
                // A lease ran out between the last claim and this check: claim those now (the
                // run must not end with them in `sending`).
                continue;
            }
            if pending.leased == 0 {
                break;
            }
            // Another worker holds messages; they come back to us if it dies. Poll the table.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The deliveries are recorded whatever happens here: a purge that fails is retried by
        // the next run and does not fail this one.
        summary.purged = self.purge().await.unwrap_or_else(|e| {
            tracing::warn!(
                "Could not delete old message bodies; the next run tries again: {}",
                crate::error_chain(&e)
            );
            0
        });
        summary.misconfigured_routes = std::mem::take(
            &mut *self
                .core
                .misconfigured
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
        .into_iter()
        .map(str::to_owned)
        .collect();
        Ok(summary)
    }

    /// Delivers continuously until `shutdown` is cancelled; `wake` (notified after an enqueue in
    /// the same process) cuts the idle wait short.
    pub async fn run(&self, shutdown: CancellationToken, wake: Option<&Notify>) {
        let mut summary = RunSummary::default();
        tracing::info!(worker = %self.core.id, routes = ?self.core.config.routes, "The relay worker is delivering");
        let clock = &self.core.clock;
        let mut purged_at: Option<DateTime<Utc>> = None;
        // Passes in a row that failed on the state DB (it is down or restarting): the one that
        // gets through again says so.
        let mut failed_passes = 0u32;
        while !shutdown.is_cancelled() {
            let busy = match self.pass(None, &mut summary).await {
                Ok(n) => {
                    if failed_passes > 0 {
                        reconnected("claim", std::mem::take(&mut failed_passes));
                    }
                    n > 0
                }
                Err(e) => {
                    failed_passes += 1;
                    tracing::warn!(
                        "The relay worker cannot reach the state database; retrying: {}",
                        crate::error_chain(&e)
                    );
                    false
                }
            };
            if busy {
                continue;
            }
            // Old bodies go when there is nothing to deliver, at most once per PURGE_EVERY.
            let now = clock.now();
            if purged_at.is_none_or(|t| now - t >= chrono_secs(PURGE_EVERY.as_secs())) {
                purged_at = Some(now);
                if let Err(e) = self.purge().await {
                    tracing::warn!(
                        "The relay worker could not delete old message bodies; it tries again later: {}",
                        crate::error_chain(&e)
                    );
                }
            }
            let wake_fut = async {
                match wake {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake_fut => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        self.shutdown_routes().await;
        tracing::info!(worker = %self.core.id, sent = summary.sent, "The relay worker stopped");
    }

    /// Deletes the bytes of messages done more than `body_retention_days` ago (returns how many),
    /// and idempotency keys past their lifetime.
    async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.core.clock.now();
        let keys_before = now - chrono::Duration::hours(outbox::KEY_LIFETIME_HOURS);
        outbox::purge_keys(&self.core.store, &text(keys_before)).await?;
        let days = self.core.config.body_retention_days;
        let before = i64::try_from(days)
            .ok()
            .and_then(chrono::Duration::try_days)
            .and_then(|d| now.checked_sub_signed(d));
        let Some(before) = before else {
            // Longer than the calendar reaches: everything is kept.
            return Ok(0);
        };
        let purged = outbox::purge_bodies(&self.core.store, &text(before)).await?;
        outbox::purge_attempts(&self.core.store, &text(before)).await?;
        if purged > 0 {
            metrics::counter!("mailbridge_relay_bodies_purged_total").increment(purged);
            tracing::info!(
                purged,
                days,
                "Deleted the bytes of messages done more than {days} days ago (their status stays)"
            );
        }
        Ok(purged)
    }

    /// Closes the routes' pooled connections (SMTP QUIT). The worker cannot send afterwards.
    pub async fn close(&self) {
        self.shutdown_routes().await;
    }

    async fn shutdown_routes(&self) {
        for r in &self.core.routes {
            r.shutdown().await;
        }
    }

    /// Claims and delivers messages due by `fixed_cutoff` (or by the time of each claim when
    /// `None`) until a claim comes back short; returns how many it claimed. Three parts run
    /// together, each a task: the claimer (claims the next batch while the previous one is still
    /// being sent), `concurrency` senders, and the recorder (group-commits the outcomes that are
    /// ready).
    async fn pass(
        &self,
        fixed_cutoff: Option<&str>,
        summary: &mut RunSummary,
    ) -> Result<usize, StoreError> {
        let core = &self.core;
        let slots = core.config.concurrency as usize;
        let per_slot = match core.store.kind() {
            DbKind::Postgres => CLAIM_PER_SLOT_PG,
            DbKind::Sqlite | DbKind::MySql => CLAIM_PER_SLOT,
        };
        let limit = i64::from(core.config.concurrency.saturating_mul(per_slot));
        // Room for a whole claim: the claimer hands it over without waking for every message.
        let (work_tx, work_rx) = tokio::sync::mpsc::channel::<Work>(limit.max(1) as usize);
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel::<(Claimed, Outcome)>();
        let claimer = tokio::spawn(core.clone().claim_all(
            fixed_cutoff.map(str::to_owned),
            limit,
            work_tx,
        ));
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
        let senders: Vec<_> = (0..slots)
            .map(|_| {
                let core = core.clone();
                let work_rx = work_rx.clone();
                let out_tx = out_tx.clone();
                tokio::spawn(async move {
                    loop {
                        let next = work_rx.lock().await.recv().await;
                        let Some((msg, held, rooms, lease_until)) = next else {
                            break;
                        };
                        // Shutting down: a message not started yet is handed back, not sent.
                        if core.store.is_stopping() {
                            let now = text(core.clock.now());
                            if let Err(e) = outbox::hand_back(&core.store, &core.id, &msg, &now).await {
                                tracing::warn!(id = %msg.id, "Cannot hand a message back at shutdown (it is claimed again once its lease is over): {}", crate::error_chain(&e));
                            }
                            continue;
                        }
                        // Never start on a message whose lease this worker no longer holds: it
                        // may have waited in the queue past its lease, and another worker's claim
                        // may have taken it over. That claim delivers it.
                        if !core.hold(&msg, lease_until).await {
                            continue;
                        }
                        let outcome = core.deliver_holding(&msg, &rooms, held).await;
                        if out_tx.send((msg, outcome)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        // Only the senders hold the work queue: if they all stopped, the claimer stops too.
        drop(work_rx);
        drop(out_tx);
        let recorder = tokio::spawn(core.clone().record_all(out_rx));
        let claimed = claimer.await.map_err(task_failed);
        for sender in senders {
            // A sender that panicked loses only its current message, which stays leased and is
            // retried after the lease (at least once).
            if let Err(e) = sender.await {
                tracing::error!("A relay sender stopped: {e}");
            }
        }
        let (recorded, error) = recorder.await.map_err(task_failed)?;
        summary.add(&recorded);
        if let Some(e) = error {
            return Err(e);
        }
        claimed?
    }
}

/// Logs and counts that the state DB answers again after `failures` failed attempts at `step`.
fn reconnected(step: &'static str, failures: u32) {
    metrics::counter!("mailbridge_relay_state_db_reconnects_total", "step" => step).increment(1);
    tracing::info!(
        step,
        failures,
        "The relay worker reached the state database again ({step}) after {failures} failed attempt(s)"
    );
}

/// A claimer or recorder task that did not finish: a panic is a bug and is passed on as such;
/// a task cancelled because the runtime is shutting down ends the pass with an error (its
/// messages stay leased and are retried after the lease).
fn task_failed(e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    StoreError::Read {
        what: "relay worker task",
        message: e.to_string(),
    }
}

impl Core {
    /// The claimer of a pass: claims batches and hands their messages to the senders until a
    /// claim comes back short; returns how many it claimed.
    async fn claim_all(
        self: Arc<Self>,
        fixed_cutoff: Option<String>,
        limit: i64,
        work_tx: tokio::sync::mpsc::Sender<Work>,
    ) -> Result<usize, StoreError> {
        let mut total = 0usize;
        // The room under the hourly and monthly limits is read once per pass and shared by all
        // of its claims: a claim made while the previous one is still being sent must count
        // those messages too (read per claim, the limit was overshot by up to a claim). A pass
        // that outlasts the hour errs on the safe side: the room it read only shrinks.
        let mut rooms: Option<Arc<Rooms>> = None;
        // Shutting down: no new claims (what is claimed is sent or handed back).
        while !self.store.is_stopping() {
            let now = self.clock.now();
            let cutoff = fixed_cutoff.clone().unwrap_or_else(|| text(now));
            let lease_until = now + chrono_secs(self.config.lease_secs);
            let claimed = outbox::claim(
                &self.store,
                &self.id,
                &cutoff,
                &text(now),
                &text(lease_until),
                limit,
            )
            .await?;
            let n = claimed.len();
            if n == 0 {
                break;
            }
            total += n;
            let rooms = match &rooms {
                Some(r) => r.clone(),
                None => rooms.insert(Arc::new(self.rooms(now).await?)).clone(),
            };
            // One read per claim, just before its messages are sent (invariant 8).
            let recipients: Vec<&str> = claimed.iter().map(|m| m.recipient.as_str()).collect();
            let suppressed = outbox::suppressed_among(&self.store, &recipients).await?;
            let opted_out = outbox::opted_out_among(&self.store, &recipients).await?;
            for msg in claimed {
                // Decided where enqueue decides it ([`outbox::held_back`]): a message queued
                // before its address was suppressed or opted out is held back too.
                let is_suppressed = suppressed.contains(&msg.recipient);
                let held = match Category::parse(&msg.category) {
                    Some(category) => outbox::held_back(
                        category,
                        is_suppressed,
                        opted_out.contains(&(msg.recipient.clone(), msg.category.clone())),
                        &self.config,
                    ),
                    // Not a category enqueue writes; the suppression list still holds.
                    None => (is_suppressed
                        && outbox::blocked_by_suppression(&msg.category, &self.config))
                    .then_some(outbox::SUPPRESSED_REPLY),
                };
                if work_tx
                    .send((msg, held, rooms.clone(), lease_until))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if (n as i64) < limit {
                break;
            }
        }
        Ok(total)
    }

    /// The recorder of a pass: gathers the outcomes that are ready and commits them together;
    /// returns the counts of the outcomes recorded and the first error. On an error the messages stay leased
    /// and are retried after the lease: at least once.
    async fn record_all(
        self: Arc<Self>,
        mut out_rx: tokio::sync::mpsc::UnboundedReceiver<(Claimed, Outcome)>,
    ) -> (RunSummary, Option<StoreError>) {
        let mut recorded = RunSummary::default();
        let mut first_error = None;
        let batch = match self.store.kind() {
            DbKind::Postgres => RECORD_BATCH_PG,
            DbKind::Sqlite | DbKind::MySql => RECORD_BATCH,
        };
        while let Some(first) = out_rx.recv().await {
            // Gather outcomes for a few milliseconds: one commit then covers many messages
            // (each commit is several hand-offs to the database thread and an fsync). The
            // recorder sleeps through the window and then takes what arrived, rather than
            // being woken for every outcome.
            let mut ready = vec![first];
            let deadline = tokio::time::Instant::now() + RECORD_GATHER;
            while ready.len() < batch {
                match out_rx.try_recv() {
                    Ok(more) => ready.push(more),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(deadline).await;
                    }
                }
            }
            let pairs: Vec<(&Claimed, &Outcome)> = ready.iter().map(|(m, o)| (m, o)).collect();
            let recording = self
                .retrying("record", || {
                    outbox::finish_many(&self.store, &self.id, &pairs)
                })
                .await;
            match recording {
                Ok(kept) => {
                    for ((msg, outcome), kept) in ready.into_iter().zip(kept) {
                        if !kept {
                            tracing::warn!(id = %msg.id, "The lease on a message ran out before its outcome was recorded; another worker took it over (it may be delivered twice)");
                        }
                        recorded.count(&outcome);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (recorded, first_error)
    }

    /// Runs `step`, a write of outcomes to the state DB, again after a failure of the connection
    /// ([`StoreError::is_transient`]: the server is restarting, a new connection may get through),
    /// pausing longer each time, for up to a lease: the deliveries it records were made, and
    /// given up, they would be sent again once their leases ran out. Any other failure, or one
    /// that outlasts the lease, is returned (the messages are then retried after their leases: at
    /// least once). The pauses are pacing on the runtime's timer and decide nothing the store's
    /// clock must see; the outcome's row is only written while this worker still holds its lease.
    async fn retrying<T, Fut>(
        &self,
        step: &'static str,
        attempt: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let budget = self.lease().to_std().unwrap_or_default();
        let on_retry = |failures: u32, e: &StoreError| {
            metrics::counter!("mailbridge_relay_state_db_retries_total", "step" => step)
                .increment(1);
            if failures == 1 {
                tracing::warn!(
                    step,
                    "The state database's connection failed while recording delivery outcomes; retrying on a new connection for up to a lease: {}",
                    crate::error_chain(e)
                );
            }
        };
        let (done, failures) =
            crate::store::retry::retry_transient(budget, on_retry, attempt).await?;
        if failures > 0 {
            reconnected(step, failures);
        }
        Ok(done)
    }

    async fn rooms(&self, now: DateTime<Utc>) -> Result<Rooms, StoreError> {
        let hourly = match self.config.hourly_limit {
            None => None,
            Some(limit) => {
                let used =
                    outbox::sent_since(&self.store, None, &text(now - chrono::Duration::hours(1)))
                        .await?;
                Some(AtomicI64::new(limit as i64 - used as i64))
            }
        };
        let monthly = match self.config.smtp.as_ref().and_then(|s| s.monthly_quota) {
            Some(limit) if self.config.routes.iter().any(|r| r == "smtp") => {
                let used =
                    outbox::sent_since(&self.store, Some("smtp"), &text(quota::month_start(now)))
                        .await?;
                metrics::gauge!("mailbridge_relay_quota_used", "route" => "smtp").set(used as f64);
                metrics::gauge!("mailbridge_relay_quota_limit", "route" => "smtp")
                    .set(limit as f64);
                Some((limit, AtomicI64::new(limit as i64 - used as i64)))
            }
            _ => None,
        };
        Ok(Rooms { hourly, monthly })
    }

    /// Hands the limits' usage after a send through `route` to the quota alerts: the route's
    /// monthly quota (`monthly`: used, limit) and the hourly limit over all routes.
    async fn alert_after_send(&self, route: &str, rooms: &Rooms, monthly: Option<(u64, u64)>) {
        if let Some((used, limit)) = monthly {
            let kind = LimitKind::MonthlyQuota;
            let subject = route;
            self.alerts
                .observe(Usage {
                    kind,
                    subject,
                    used,
                    limit,
                })
                .await;
        }
        if let (Some(limit), Some(room)) = (self.config.hourly_limit, &rooms.hourly) {
            let used = limit.saturating_sub(room.load(Ordering::SeqCst).max(0) as u64);
            let (kind, subject) = (LimitKind::HourlyLimit, "relay");
            self.alerts
                .observe(Usage {
                    kind,
                    subject,
                    used,
                    limit,
                })
                .await;
        }
    }

    /// Why `route` is being skipped (down or misconfigured), while its back-off lasts.
    fn unhealthy(&self, route: &'static str) -> Option<Verdict> {
        let map = self.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
        map.get(route)
            .filter(|(until, _)| *until > self.clock.now())
            .map(|(_, verdict)| *verdict)
    }

    fn mark_unhealthy(&self, route: &'static str, verdict: Verdict) {
        let mut map = self.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            route,
            (
                self.clock.now() + chrono_secs(self.config.route_backoff_secs),
                verdict,
            ),
        );
    }

    fn retry_at(&self, attempts: u64) -> DateTime<Utc> {
        let delay = backoff(
            attempts,
            self.config.retry_base_secs,
            self.config.retry_max_secs,
            0.5 + rand::random::<f64>() / 2.0,
        );
        self.clock.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero())
    }

    fn count(route: impl Into<metrics::SharedString>, outcome: &'static str) {
        metrics::counter!("mailbridge_relay_messages_total", "route" => route.into(), "outcome" => outcome)
            .increment(1);
    }

    fn lease(&self) -> chrono::Duration {
        chrono_secs(self.config.lease_secs)
    }

    /// Whether this worker still holds its lease on `msg`, right before the message's turn. A
    /// lease is taken over only once it has run out, so while the lease its claim took
    /// (`claimed_until`) has at least half its length left no other worker can hold it, and no
    /// read is needed. Past that it is renewed in the state DB first (one UPDATE that holds only
    /// while the lease is still this worker's), so the turn starts with room to finish; a lease
    /// another worker took over once it ran out is left to that worker.
    async fn hold(&self, msg: &Claimed, claimed_until: DateTime<Utc>) -> bool {
        let now = self.clock.now();
        if claimed_until - now >= self.lease() / 2 {
            return true;
        }
        match outbox::renew_lease(&self.store, &self.id, msg, &text(now + self.lease())).await {
            Ok(true) => true,
            Ok(false) => {
                metrics::counter!("mailbridge_relay_lease_lost_total", "stage" => "before_send")
                    .increment(1);
                tracing::warn!(id = %msg.id, "Not sending a message whose lease ran out while it waited and another worker took over; that worker delivers it");
                false
            }
            Err(e) => {
                tracing::warn!(id = %msg.id, "Cannot renew the lease on a message, so it is not sent now (it is claimed again once the lease is over): {}", crate::error_chain(&e));
                false
            }
        }
    }

    /// [`Core::deliver`], renewing the lease on `msg` every third of its length while the turn
    /// lasts: a slow route (a large message, a smarthost that answers late) must not let the lease
    /// run out mid-send, or another worker's claim would send the message again.
    async fn deliver_holding(
        &self,
        msg: &Claimed,
        rooms: &Rooms,
        held: Option<&'static str>,
    ) -> Outcome {
        let every = Duration::from_millis(self.config.lease_secs.saturating_mul(1000) / 3)
            .max(Duration::from_millis(100));
        let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
        // The next renewal is due a third of a lease after the last one, counted from the time
        // that renewal used (not from when this loop comes round again), so a clock that moves
        // between the two does not push the renewal a step further out.
        let after = |t: chrono::DateTime<chrono::Utc>| {
            t.checked_add_signed(every)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        };
        let mut next = after(self.clock.now());
        let turn = self.deliver(msg, rooms, held);
        tokio::pin!(turn);
        loop {
            tokio::select! {
                outcome = &mut turn => return outcome,
                () = self.clock.sleep_until(next) => {
                    let now = self.clock.now();
                    next = after(now);
                    let until = text(now + self.lease());
                    match outbox::renew_lease(&self.store, &self.id, msg, &until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            metrics::counter!("mailbridge_relay_lease_lost_total", "stage" => "in_send")
                                .increment(1);
                            tracing::warn!(id = %msg.id, "The lease on a message was lost while it was being sent (it may be delivered twice)");
                        }
                        Err(e) => tracing::warn!(id = %msg.id, "Cannot renew the lease on a message being sent; trying again: {}", crate::error_chain(&e)),
                    }
                }
            }
        }
    }

    /// One message's turn: suppression, limits, then the routes in order.
    async fn deliver(&self, msg: &Claimed, rooms: &Rooms, held: Option<&'static str>) -> Outcome {
        let now = self.clock.now();
        let deadline = parse(&msg.created_at).map(|c| {
            c + chrono::Duration::hours(i64::try_from(self.config.max_age_hours).unwrap_or(72))
        });
        let gave_up = |route: Option<String>, reply: String, attempted: bool| Outcome::Failed {
            route,
            reply: format!(
                "gave up after {} hours without delivery; last: {reply}",
                self.config.max_age_hours
            ),
            attempted,
        };
        if let Some(reply) = held {
            Self::count("none", "suppressed");
            tracing::info!(id = %msg.id, "Not sending: {reply}");
            return Outcome::Suppressed { reply };
        }
        if let Some(room) = &rooms.hourly
            && room.fetch_sub(1, Ordering::SeqCst) <= 0
        {
            room.fetch_add(1, Ordering::SeqCst);
            return Outcome::Waiting {
                route: None,
                reply: "waiting: [relay] hourly_limit reached".into(),
                next_attempt_at: text(now + chrono::Duration::minutes(1)),
                attempted: false,
            };
        }
        let attempts = u64::try_from(msg.attempts).unwrap_or(0) + 1;
        let mut last: Option<(&'static str, String, Verdict)> = None;
        let mut tried = false;
        let mut over_quota = false;
        // After an attempt whose answer was lost, its route goes first: the message is retried
        // where it may already be, not moved to another route while that one is healthy.
        let retry_route = msg.retry_route.as_deref();
        let first = self.routes.iter().filter(|r| Some(r.name()) == retry_route);
        let rest = self.routes.iter().filter(|r| Some(r.name()) != retry_route);
        // A quota alert tries routes without a monthly quota first: it must not be what spends
        // the quota it warns about (see `alerts`).
        let quota_last = msg.category == Category::Alert.as_str() && rooms.monthly.is_some();
        let has_quota = |r: &&Route| quota_last && r.name() == "smtp";
        let order = first
            .chain(rest)
            .filter(|r| !has_quota(r))
            .chain(self.routes.iter().filter(has_quota));
        for route in order {
            let name = route.name();
            if let Some(verdict) = self.unhealthy(name) {
                // A misconfigured route keeps its messages queued (`Waiting`), as on the attempt
                // that found it out; a route that is down defers them. Down wins over
                // misconfigured when both are skipped, as below.
                let (why, verdict) = match verdict {
                    Verdict::Misconfigured => ("misconfigured", Verdict::Misconfigured),
                    _ => ("down", Verdict::RouteDown),
                };
                if last.is_none() || verdict == Verdict::RouteDown {
                    last = Some((
                        name,
                        format!("route {name} is skipped for now ({why})"),
                        verdict,
                    ));
                }
                continue;
            }
            let monthly = if name == "smtp" {
                rooms.monthly.as_ref()
            } else {
                None
            };
            if let Some((_, room)) = monthly
                && room.fetch_sub(1, Ordering::SeqCst) <= 0
            {
                room.fetch_add(1, Ordering::SeqCst);
                over_quota = true;
                continue;
            }
            tried = true;
            let result = route
                .send(Delivery {
                    envelope_from: &msg.envelope_from,
                    recipient: &msg.recipient,
                    raw: &msg.raw,
                })
                .await;
            match result {
                Ok(reply) => {
                    let monthly = monthly.map(|(limit, room)| {
                        let after = limit.saturating_sub(room.load(Ordering::SeqCst).max(0) as u64);
                        quota::record(name, after, *limit);
                        (after, *limit)
                    });
                    self.alert_after_send(name, rooms, monthly).await;
                    Self::count(name, "sent");
                    return Outcome::Sent {
                        route: name.to_owned(),
                        reply,
                    };
                }
                Err(failure) => {
                    if let Some((_, room)) = monthly {
                        room.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = failure.reply();
                    let verdict = classify(&failure);
                    match verdict {
                        Verdict::Bounce { suppress } => {
                            Self::count(name, "bounced");
                            tracing::info!(id = %msg.id, route = name, suppress, "The recipient was refused: {reply}");
                            return Outcome::Bounced {
                                route: name.to_owned(),
                                reply,
                                suppress,
                            };
                        }
                        Verdict::Defer => {
                            Self::count(name, "deferred");
                            let next = self.retry_at(attempts);
                            if deadline.is_some_and(|d| next > d) {
                                Self::count(name, "failed");
                                return gave_up(Some(name.to_owned()), reply, true);
                            }
                            tracing::warn!(id = %msg.id, route = name, attempts, "Delivery deferred: {reply}");
                            return Outcome::Deferred {
                                route: Some(name.to_owned()),
                                reply,
                                next_attempt_at: text(next),
                                attempted: true,
                            };
                        }
                        Verdict::Ambiguous => {
                            // Not the route's failure and not the message's: the route may have
                            // it. No other route gets it in this pass (a likely duplicate); the
                            // route is not marked down.
                            Self::count(name, "ambiguous");
                            metrics::counter!("mailbridge_relay_ambiguous_total", "route" => name)
                                .increment(1);
                            let next = self.retry_at(attempts);
                            if deadline.is_some_and(|d| next > d) {
                                Self::count(name, "failed");
                                return gave_up(Some(name.to_owned()), reply, true);
                            }
                            tracing::warn!(
                                id = %msg.id,
                                route = name,
                                attempts,
                                "The {name} route may have accepted the message but its answer was lost; it is retried on {name} after the back-off, not sent through another route now: {reply}"
                            );
                            return Outcome::Ambiguous {
                                route: name.to_owned(),
                                reply,
                                next_attempt_at: text(next),
                            };
                        }
                        Verdict::RouteDown => {
                            metrics::counter!("mailbridge_relay_route_down_total", "route" => name)
                                .increment(1);
                            tracing::warn!(
                                route = name,
                                "The {name} route is down; trying the next route: {reply}"
                            );
                            self.mark_unhealthy(name, Verdict::RouteDown);
                            last = Some((name, reply, verdict));
                        }
                        Verdict::Misconfigured => {
                            metrics::counter!("mailbridge_relay_route_misconfigured_total", "route" => name)
                                .increment(1);
                            tracing::error!(
                                route = name,
                                "The {name} route is misconfigured (credentials, sender authorisation or policy); messages stay queued until it is fixed: {reply}"
                            );
                            self.mark_unhealthy(name, Verdict::Misconfigured);
                            self.misconfigured
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(name);
                            if !matches!(last, Some((_, _, Verdict::RouteDown))) {
                                last = Some((name, reply, verdict));
                            }
                        }
                    }
                }
            }
        }
        // No route took the message.
        let (route, reply, verdict) = match last {
            Some((r, reply, v)) => (Some(r.to_owned()), reply, v),
            None if over_quota => (
                None,
                "waiting: the smtp route's monthly_quota is used up".to_owned(),
                Verdict::Misconfigured,
            ),
            None => (
                None,
                "no route is configured".to_owned(),
                Verdict::Misconfigured,
            ),
        };
        match verdict {
            Verdict::RouteDown => {
                let next = self.retry_at(attempts).max(
                    now + chrono_secs(
                        self.config
                            .route_backoff_secs
                            .min(self.config.retry_max_secs),
                    ),
                );
                if deadline.is_some_and(|d| next > d) {
                    Self::count(route.clone().unwrap_or_else(|| "none".into()), "failed");
                    return gave_up(route, reply, tried);
                }
                Self::count(route.clone().unwrap_or_else(|| "none".into()), "deferred");
                Outcome::Deferred {
                    route,
                    reply,
                    next_attempt_at: text(next),
                    attempted: tried,
                }
            }
            _ => {
                let next = if over_quota && route.is_none() {
                    quota::next_month_start(now)
                } else {
                    now + chrono_secs(self.config.route_backoff_secs)
                };
                Outcome::Waiting {
                    route,
                    reply,
                    next_attempt_at: text(next),
                    attempted: tried,
                }
            }
        }
    }
}
