//! Leases in the state DB, on SQLite and PostgreSQL: a holder is alive while it renews its lease,
//! whatever its host or process id; a lease is taken over only once it expired; a heartbeat keeps
//! a lease across many lengths of it; a holder whose lease was taken over (or that could not renew
//! it) learns so and stops. Time is a [`ManualClock`] the tests move: a lease runs out, and a
//! heartbeat comes round, when the clock is moved, not after a wait.

#![allow(clippy::unwrap_used)]

mod support;

use support::db as common;

use std::sync::Arc;
use std::time::Duration;

use mailbridge::clock::{Clock, ManualClock};
use mailbridge::config::DbUrl;
use mailbridge::store::locks::{Lease, LockHolder};
use mailbridge::store::{OpenMode, Store, StoreError, time_text};

/// A migrated state DB (SQLite in `dir`, or a fresh PostgreSQL database) with leases of `ttl`, on
/// a manual clock that starts at the machine's time (whole milliseconds, as the DB stores times).
async fn store(url: &str, dir: &std::path::Path, ttl: Duration) -> (Store, Arc<ManualClock>) {
    let clock = ManualClock::new(chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3));
    let store = Store::open_with_clock(
        &DbUrl::parse(url, dir).unwrap(),
        OpenMode::ReadWrite,
        clock.clone(),
    )
    .await
    .unwrap()
    .with_lease_ttl(ttl);
    store.migrate().await.unwrap();
    (store, clock)
}

/// Runs `case` on SQLite and on PostgreSQL (skipped when unreachable, a failure in CI).
macro_rules! on_both {
    ($case:ident, $ttl:expr) => {
        let dir = tempfile::tempdir().unwrap();
        let (s, clock) = store("sqlite://state.db", dir.path(), $ttl).await;
        $case(s, clock, "sqlite").await;
        if let Some(db) = common::pg_database().await {
            let (s, clock) = store(&db.url, dir.path(), $ttl).await;
            $case(s, clock, "postgres").await;
        }
    };
}

/// When the lock `name` expires in the table.
async fn expires_at(store: &Store, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT expires_at FROM locks WHERE name = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

/// Waits (in real time, at most 20 s) until the heartbeat has renewed `name` to `ttl` after the
/// clock's present time: the renewal the clock's last move was due to bring.
async fn renewed(store: &Store, clock: &ManualClock, name: &str, ttl: Duration) {
    let want = time_text(clock.now() + chrono::Duration::from_std(ttl).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while expires_at(store, name).await.as_deref() != Some(want.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal to {want}: {:?}",
            expires_at(store, name).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A process id no process has any more: a child that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn this_host() -> String {
    let me = LockHolder::this_process("probe");
    me.as_str().split(':').next().unwrap().to_owned()
}

async fn insert_lease(store: &Store, name: &str, holder: &str, expires_at: &str) {
    sqlx::query(
        "INSERT INTO locks (name, holder, acquired_at, expires_at) VALUES ($1, $2, '2026-01-01T00:00:00.000Z', $3)",
    )
    .bind(name)
    .bind(holder)
    .bind(expires_at)
    .execute(store.pool())
    .await
    .unwrap();
}

/// A fresh lease on `name` for a holder in this process called `who`, which must be free.
async fn take(store: &Store, name: &str, who: &str) -> Lease {
    store
        .lease(name, LockHolder::this_process(who))
        .await
        .unwrap()
        .unwrap_or_else(|h| panic!("{name} is still {h}'s"))
}

/// Whether `other` is kept from locking `name` (someone else holds it).
async fn kept_from(store: &Store, name: &str, other: &LockHolder) -> bool {
    store.try_lock(name, other, 60).await.unwrap().is_some()
}

async fn holder_of(store: &Store, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM locks WHERE name = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

async fn live_holder_with_a_gone_pid_keeps_its_lease(
    store: Store,
    clock: Arc<ManualClock>,
    db: &str,
) {
    // Same host name, a process id that no longer runs here: it may be another container with
    // the same host name, alive, renewing. Only expiry ends its lease.
    let theirs = format!("{}:{}:campaign-run", this_host(), dead_pid());
    let end = clock.now() + chrono::Duration::seconds(60);
    insert_lease(&store, "campaign:k1", &theirs, &time_text(end)).await;
    let me = LockHolder::this_process("rerun");
    assert_eq!(
        store.try_lock("campaign:k1", &me, 60).await.unwrap(),
        Some(theirs.clone()),
        "{db}"
    );
    match store.lease("campaign:k1", me.clone()).await.unwrap() {
        Err(current) => assert_eq!(current, theirs, "{db}"),
        Ok(_) => panic!("{db}: a live lease was taken over"),
    }
    assert_eq!(
        holder_of(&store, "campaign:k1").await.as_deref(),
        Some(theirs.as_str())
    );

    // At its last millisecond it is still theirs; once it expired, it is taken over.
    clock.set(end);
    assert_eq!(
        store.try_lock("campaign:k1", &me, 60).await.unwrap(),
        Some(theirs.clone()),
        "{db}: taken over at its last millisecond"
    );
    clock.advance(Duration::from_millis(1));
    let lease = store
        .lease("campaign:k1", me.clone())
        .await
        .unwrap()
        .unwrap_or_else(|h| panic!("{db}: the expired lease is still {h}'s"));
    assert_eq!(
        holder_of(&store, "campaign:k1").await.as_deref(),
        Some(me.as_str()),
        "{db}"
    );
    lease.release().await;
    assert_eq!(holder_of(&store, "campaign:k1").await, None, "{db}");
    store.close().await;
}

#[tokio::test]
async fn a_live_holder_is_not_taken_over_before_expiry_and_an_expired_one_is() {
    on_both!(
        live_holder_with_a_gone_pid_keeps_its_lease,
        Duration::from_secs(60)
    );
}

async fn heartbeat_keeps_the_lease(store: Store, clock: Arc<ManualClock>, db: &str) {
    let ttl = store.lease_ttl();
    let lease = take(&store, "sync:newsletter", "long-run").await;
    let other = LockHolder::this_process("other-run");
    // Three lease lengths of work, a third of a lease at a time: the heartbeat renews the lease
    // at each step, and nobody else can take it.
    let started = clock.now();
    for _ in 0..9 {
        clock.advance(ttl / 3);
        renewed(&store, &clock, "sync:newsletter", ttl).await;
        assert!(
            kept_from(&store, "sync:newsletter", &other).await,
            "{db}: taken over after {}",
            clock.now() - started
        );
        lease.check().unwrap();
    }
    // A holder that stops renewing (dropped without giving the lease back) keeps it until its
    // end, and loses it then.
    let end = clock.now() + chrono::Duration::from_std(ttl).unwrap();
    drop(lease);
    clock.set(end);
    assert!(
        kept_from(&store, "sync:newsletter", &other).await,
        "{db}: taken over before its end"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.try_lock("sync:newsletter", &other, 60).await.unwrap(),
        None,
        "{db}: not taken over after its end"
    );
    store.unlock("sync:newsletter", &other).await.unwrap();
    let lease = take(&store, "sync:newsletter", "long-run").await;
    lease.release().await;
    assert_eq!(
        store.try_lock("sync:newsletter", &other, 60).await.unwrap(),
        None,
        "{db}: given back"
    );
    store.close().await;
}

#[tokio::test]
async fn a_heartbeat_keeps_a_lease_alive_across_more_than_one_ttl() {
    on_both!(heartbeat_keeps_the_lease, Duration::from_secs(60));
}

async fn taken_over_lease_is_lost(store: Store, clock: Arc<ManualClock>, db: &str) {
    let lease = take(&store, "events:writeback", "worker").await;
    let watch = lease.watch();
    assert!(watch.is_held());
    // This holder stalled past its lease and another process took it over.
    sqlx::query(
        "UPDATE locks SET holder = 'elsewhere:1:other-worker', expires_at = '9999-01-01T00:00:00.000Z' WHERE name = 'events:writeback'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // The next heartbeat finds out.
    clock.advance(store.lease_ttl() / 3);
    let lost = tokio::time::timeout(Duration::from_secs(20), watch.lost())
        .await
        .unwrap_or_else(|_| panic!("{db}: the heartbeat never noticed"));
    assert!(
        matches!(&lost, StoreError::LockLost { name } if name == "events:writeback"),
        "{db}: {lost:?}"
    );
    assert!(!lease.is_held(), "{db}");
    assert!(lease.check().is_err(), "{db}");
    assert!(
        matches!(lease.renew_now().await, Err(StoreError::LockLost { .. })),
        "{db}"
    );
    // Giving it back leaves the new holder's lease alone.
    lease.release().await;
    assert_eq!(
        holder_of(&store, "events:writeback").await.as_deref(),
        Some("elsewhere:1:other-worker"),
        "{db}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_over_learns_it_from_the_heartbeat() {
    on_both!(taken_over_lease_is_lost, Duration::from_secs(60));
}

async fn unrenewable_lease_runs_out(store: Store, clock: Arc<ManualClock>, db: &str) {
    let ttl = store.lease_ttl();
    let lease = take(&store, "campaign:k2", "push").await;
    // The state DB becomes unreachable: no renewal succeeds, so the holder counts on its lease
    // for four fifths of its length (the last renewal's margin), then assumes another has taken
    // it over, before the lease has expired in the table.
    let started = clock.now();
    store.close().await;
    clock.advance(ttl * 4 / 5 - Duration::from_millis(1));
    assert!(
        lease.is_held(),
        "{db}: lost before four fifths of the lease"
    );
    clock.advance(Duration::from_millis(1));
    let lost = tokio::time::timeout(Duration::from_secs(20), lease.lost())
        .await
        .unwrap_or_else(|_| panic!("{db}: still held"));
    assert!(matches!(lost, StoreError::LockLost { .. }), "{db}");
    assert!(
        clock.now() - started < chrono::Duration::from_std(ttl).unwrap(),
        "{db}: counted as held for longer than the lease"
    );
}

#[tokio::test]
async fn a_lease_that_cannot_be_renewed_counts_as_lost_before_it_expires() {
    on_both!(unrenewable_lease_runs_out, Duration::from_secs(60));
}

/// The writeback round checks its lease before each event's writeback: with the lease lost, it
/// writes nothing back and leaves the events to the new holder.
#[tokio::test]
async fn a_writeback_round_whose_lease_was_lost_writes_nothing_back() {
    use mailbridge::events::apply::{self, ApplyContext, Scope, SoftBouncePolicy};
    use mailbridge::events::{WRITEBACK_LOCK, insert_event};
    use mailbridge::mapping::Mapping;
    use mailbridge::providers::NewEvent;
    use mailbridge::source::MemberSource;

    let dir = tempfile::tempdir().unwrap();
    let (store, _clock) = store("sqlite://state.db", dir.path(), Duration::from_secs(60)).await;
    let members = DbUrl::parse("sqlite://members.db", dir.path()).unwrap();
    mailbridge::demo::sample::create_member_db(&members, 20, 7)
        .await
        .unwrap();
    let source = MemberSource::connect(&members, false).await.unwrap();
    let mapping = Mapping::load(&common::shipped_mapping()).unwrap();
    let audiences = [support::app::newsletter_audience()];
    for n in 1..=3 {
        let event = NewEvent {
            provider: "mailchimp",
            audience: Some("newsletter".into()),
            list_id: Some("list1".into()),
            event_type: "unsubscribed".into(),
            email: Some(format!("nobody{n}@example.org")),
            member_key: None,
            reason: Some("manual".into()),
            fired_at: format!("2026-11-28T10:00:0{n}.000Z"),
            source_id: None,
            payload: "{}".into(),
            verified: true,
            ignored: None,
        };
        assert!(insert_event(store.pool(), &event).await.unwrap());
    }
    let unapplied = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    };

    let lease = take(&store, WRITEBACK_LOCK, "worker").await;
    sqlx::query("UPDATE locks SET holder = 'elsewhere:1:other-worker' WHERE name = $1")
        .bind(WRITEBACK_LOCK)
        .execute(store.pool())
        .await
        .unwrap();
    assert!(lease.renew_now().await.is_err(), "taken over");
    let watch = lease.watch();
    let ctx = ApplyContext {
        mapping: &mapping,
        store: &store,
        source: &source,
        audiences: &audiences,
        soft_bounces: SoftBouncePolicy::default(),
        providers: &mailbridge::providers::ProviderSet::default(),
        lease: Some(&watch),
    };
    let round = apply::apply_events(&ctx, Scope::All, 100).await.unwrap();
    assert!(round.lease_lost);
    assert_eq!((round.seen, round.applied), (0, 0));
    assert_eq!(unapplied().await, 3);
    lease.release().await;

    // The holder that has the lease applies them.
    sqlx::query("DELETE FROM locks")
        .execute(store.pool())
        .await
        .unwrap();
    let lease = take(&store, WRITEBACK_LOCK, "worker-2").await;
    let watch = lease.watch();
    let ctx = ApplyContext {
        lease: Some(&watch),
        ..ctx
    };
    let round = apply::apply_events(&ctx, Scope::All, 100).await.unwrap();
    assert!(!round.lease_lost);
    assert_eq!(round.seen, 3);
    assert_eq!(unapplied().await, 0);
    lease.release().await;
}
