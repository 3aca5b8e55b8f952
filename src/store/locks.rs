//! The `locks` table: named leases in the state DB, the same on SQLite and PostgreSQL. A lease is
//! taken with one atomic statement (insert, or take over a row whose lease expired). A holder is
//! alive exactly while it renews its lease: nothing else (no process table, no host name) is
//! taken as a sign of life or death, so a crashed holder blocks others until its lease runs out,
//! and a live one is never taken over.
//!
//! Long work holds a [`Lease`]: a background heartbeat renews it every third of its length, and
//! the work asks [`Lease::check`] before each side effect. A lease whose renewal found it taken
//! over, or that went unrenewed for its whole length (the state DB unreachable), is lost; the
//! work stops before its next side effect.
//!
//! Every time here is the store's clock ([`Store::clock`]): when a lease expires in the table,
//! how long the holder counts on it, and when the heartbeat renews it. A test on a
//! [`crate::clock::ManualClock`] lets a lease run out by moving the clock past it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Param, Store, StoreError, time_text};
use crate::clock::SharedClock;

/// How long a lease lasts without a renewal: the longest a crashed holder blocks the others.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// Overrides [`LEASE_TTL`] in milliseconds (tests that crash a holder on purpose; read once, in
/// [`default_lease_ttl`]).
pub const LEASE_TTL_ENV: &str = "MAILBRIDGE_LEASE_TTL_MS";

/// The lease length a newly opened [`Store`] uses: [`LEASE_TTL`], or `MAILBRIDGE_LEASE_TTL_MS`.
pub(crate) fn default_lease_ttl() -> Duration {
    std::env::var(LEASE_TTL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms >= 100)
        .map_or(LEASE_TTL, Duration::from_millis)
}

/// Who holds a lock: `host:pid:token`. The host and pid are for people reading the table; no
/// decision looks at them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder(String);

impl LockHolder {
    /// A holder for this process, with a token unique to the caller (e.g. the run id).
    pub fn this_process(token: &str) -> LockHolder {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        LockHolder(format!("{host}:{}:{token}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `at + d`, saturating at the end of time.
fn plus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn secs(ttl_secs: i64) -> Duration {
    Duration::from_secs(ttl_secs.max(0).unsigned_abs())
}

impl Store {
    /// Takes the lock `name` for `ttl_secs`. `Ok(None)` when taken; `Ok(Some(holder))` names the
    /// holder whose lease has not expired.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl_secs: i64,
    ) -> Result<Option<String>, StoreError> {
        self.try_lock_for(name, holder, secs(ttl_secs)).await
    }

    async fn try_lock_for(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let q_err = StoreError::query("take a lock");
        // Twice at most: a lock released between the two statements is free the second time.
        for _ in 0..2 {
            let now = self.now();
            let taken = self
                .write(
                    "take a lock",
                    "INSERT INTO locks (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                       acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
                     WHERE locks.expires_at < excluded.acquired_at",
                    vec![
                        name.into(),
                        holder.as_str().into(),
                        Param::Text(time_text(now)),
                        Param::Text(time_text(plus(now, ttl))),
                    ],
                )
                .await?;
            if taken == 1 {
                return Ok(None);
            }
            let current: Option<(String,)> =
                sqlx::query_as("SELECT holder FROM locks WHERE name = $1")
                    .bind(name)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(q_err)?;
            if let Some((current,)) = current {
                return Ok(Some(current));
            }
        }
        Ok(Some(
            "(a holder that keeps taking and releasing it)".to_owned(),
        ))
    }

    /// Extends a lease this holder has by `ttl_secs` from now. [`StoreError::LockLost`] when it
    /// no longer has it: whatever the lease protects must stop.
    pub async fn refresh_lock(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        if ttl_secs < 0 {
            // Backwards: ends the lease now (tests age a lease this way).
            return self.expire_lock(name, holder).await;
        }
        self.refresh_lock_for(name, holder, secs(ttl_secs)).await
    }

    async fn refresh_lock_for(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let until = time_text(plus(self.now(), ttl));
        self.set_expiry(name, holder, until, "refresh a lock").await
    }

    async fn expire_lock(&self, name: &str, holder: &LockHolder) -> Result<(), StoreError> {
        let past = time_text(self.now() - chrono::Duration::seconds(1));
        self.set_expiry(name, holder, past, "expire a lock").await
    }

    async fn set_expiry(
        &self,
        name: &str,
        holder: &LockHolder,
        expires_at: String,
        what: &'static str,
    ) -> Result<(), StoreError> {
        let held = self
            .write(
                what,
                "UPDATE locks SET expires_at = $1 WHERE name = $2 AND holder = $3",
                vec![Param::Text(expires_at), name.into(), holder.as_str().into()],
            )
            .await?
            == 1;
        if held {
            Ok(())
        } else {
            Err(StoreError::LockLost {
                name: name.to_owned(),
            })
        }
    }

    /// Releases a lock this holder has (a no-op otherwise).
    pub async fn unlock(&self, name: &str, holder: &LockHolder) -> Result<(), StoreError> {
        self.write(
            "release a lock",
            "DELETE FROM locks WHERE name = $1 AND holder = $2",
            vec![name.into(), holder.as_str().into()],
        )
        .await
        .map(drop)
    }

    /// Takes the lock `name` as a [`Lease`] of this store's length ([`Store::lease_ttl`]), kept
    /// alive by a heartbeat until it is released or dropped. `Ok(Err(holder))` names the holder
    /// whose lease has not expired.
    pub async fn lease(
        &self,
        name: &str,
        holder: LockHolder,
    ) -> Result<Result<Lease, String>, StoreError> {
        let ttl = self.lease_ttl();
        let asked = self.now();
        if let Some(current) = self.try_lock_for(name, &holder, ttl).await? {
            return Ok(Err(current));
        }
        let watch = LeaseWatch {
            name: Arc::from(name),
            state: Arc::new(LeaseState {
                valid_until: std::sync::Mutex::new(plus(asked, valid_for(ttl))),
                lost: AtomicBool::new(false),
                lost_signal: CancellationToken::new(),
            }),
            clock: self.clock().clone(),
            stop: self.stop_token().clone(),
        };
        let stop = CancellationToken::new();
        tokio::spawn(heartbeat(
            self.clone(),
            holder.clone(),
            ttl,
            watch.clone(),
            stop.clone(),
            asked,
        ));
        Ok(Ok(Lease {
            store: self.clone(),
            holder,
            ttl,
            watch,
            stop,
        }))
    }
}

/// How long after a renewal was sent the holder may count on its lease: a fifth less than the
/// lease, for clocks that disagree a little and statements that take a while. With renewals every
/// third of the lease, two in a row must fail before the holder gives up.
fn valid_for(ttl: Duration) -> Duration {
    ttl - ttl / 5
}

/// A lease held by this process, renewed in the background every third of its length. Released
/// with [`Lease::release`]; dropping it stops the heartbeat and lets the lease expire.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    holder: LockHolder,
    ttl: Duration,
    watch: LeaseWatch,
    stop: CancellationToken,
}

/// What a [`Lease`]'s heartbeat knows, shared with the work it protects (cheap to clone, for
/// tasks the work spawns).
#[derive(Clone, Debug)]
pub struct LeaseWatch {
    name: Arc<str>,
    state: Arc<LeaseState>,
    clock: SharedClock,
    /// The store's shutdown: the work stops and hands the lease back.
    stop: CancellationToken,
}

#[derive(Debug)]
struct LeaseState {
    /// Until when the last successful renewal keeps the lease ours.
    valid_until: std::sync::Mutex<DateTime<Utc>>,
    /// A renewal found another holder.
    lost: AtomicBool,
    lost_signal: CancellationToken,
}

impl LeaseWatch {
    /// `Ok` while the lease is ours: no renewal found another holder, and the last successful
    /// one is recent enough. [`StoreError::LockLost`] otherwise: stop before the next side effect.
    /// [`StoreError::Stopped`] once the process is shutting down.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.stop.is_cancelled() {
            return Err(StoreError::Stopped {
                name: self.name.to_string(),
            });
        }
        if self.is_held() {
            Ok(())
        } else {
            self.lose();
            Err(StoreError::LockLost {
                name: self.name.to_string(),
            })
        }
    }

    /// How long the lease stays ours without another successful renewal (zero once lost): the
    /// budget of a step retried while the state DB cannot be reached.
    pub fn remaining(&self) -> Duration {
        if self.state.lost.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.state
            .valid_until
            .lock()
            .ok()
            .and_then(|until| (*until - self.clock.now()).to_std().ok())
            .unwrap_or(Duration::ZERO)
    }

    pub fn is_held(&self) -> bool {
        !self.state.lost.load(Ordering::SeqCst)
            && self
                .state
                .valid_until
                .lock()
                .is_ok_and(|until| self.clock.now() < *until)
    }

    /// Resolves once the lease is known to be lost, or the process is shutting down (for
    /// `select!` around long steps), with the error that says so.
    pub async fn lost(&self) -> StoreError {
        loop {
            let until = self.state.valid_until.lock().map(|u| *u).ok();
            if let (Some(until), true) = (until, self.is_held() && !self.stop.is_cancelled()) {
                tokio::select! {
                    () = self.state.lost_signal.cancelled() => {}
                    () = self.stop.cancelled() => {}
                    () = self.clock.sleep_until(until) => {}
                }
            }
            if let Err(e) = self.check() {
                return e;
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lose(&self) {
        self.state.lost.store(true, Ordering::SeqCst);
        self.state.lost_signal.cancel();
    }

    fn renewed(&self, sent_at: DateTime<Utc>, ttl: Duration) {
        if let Ok(mut until) = self.state.valid_until.lock() {
            *until = (*until).max(plus(sent_at, valid_for(ttl)));
        }
    }
}

impl Lease {
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    pub fn name(&self) -> &str {
        self.watch.name()
    }

    /// See [`LeaseWatch::check`].
    pub fn check(&self) -> Result<(), StoreError> {
        self.watch.check()
    }

    pub fn is_held(&self) -> bool {
        self.watch.is_held()
    }

    /// See [`LeaseWatch::lost`].
    pub async fn lost(&self) -> StoreError {
        self.watch.lost().await
    }

    /// A handle for tasks that must stop when the lease is lost.
    pub fn watch(&self) -> LeaseWatch {
        self.watch.clone()
    }

    /// Renews the lease now and confirms it is still ours (before a step that must not run
    /// twice, such as a campaign's send).
    pub async fn renew_now(&self) -> Result<(), StoreError> {
        self.check()?;
        let sent_at = self.store.now();
        match self
            .store
            .refresh_lock_for(self.name(), &self.holder, self.ttl)
            .await
        {
            Ok(()) => {
                self.watch.renewed(sent_at, self.ttl);
                Ok(())
            }
            Err(e @ StoreError::LockLost { .. }) => {
                self.watch.lose();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Stops the heartbeat and gives the lease back (it expires by itself if that fails).
    pub async fn release(self) {
        self.stop.cancel();
        if let Err(e) = self.store.unlock(self.name(), &self.holder).await {
            tracing::warn!(
                lock = self.name(),
                "Could not give the lease back (it expires by itself): {}",
                crate::error_chain(&e)
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Renews the lease a third of its length after it was taken (`taken`) or last renewed, until
/// stopped or lost. A renewal that fails for another reason (the state DB unreachable) is tried
/// again sooner; the lease counts as held only until the last successful renewal runs out.
async fn heartbeat(
    store: Store,
    holder: LockHolder,
    ttl: Duration,
    watch: LeaseWatch,
    stop: CancellationToken,
    taken: DateTime<Utc>,
) {
    let period = ttl / 3;
    let mut next = plus(taken, period);
    loop {
        // `biased`: a lease released or dropped while its renewal came due is not renewed.
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = watch.clock.sleep_until(next) => {}
        }
        if watch.state.lost.load(Ordering::SeqCst) {
            return;
        }
        let sent_at = watch.clock.now();
        let renewal = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = store.refresh_lock_for(&watch.name, &holder, ttl) => r,
        };
        match renewal {
            Ok(()) => {
                watch.renewed(sent_at, ttl);
                next = plus(sent_at, period);
            }
            Err(StoreError::LockLost { .. }) => {
                tracing::warn!(
                    lock = %watch.name,
                    "The lease ran out and another process took it over; the work it protected stops"
                );
                watch.lose();
                return;
            }
            Err(e) => {
                tracing::warn!(
                    lock = %watch.name,
                    "Renewing the lease failed (retried): {}",
                    crate::error_chain(&e)
                );
                next = plus(sent_at, (ttl / 10).max(Duration::from_millis(50)));
            }
        }
    }
}
