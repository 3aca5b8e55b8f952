//! Leases in the state DB, on SQLite and PostgreSQL: a holder is alive while it renews its lease,
//! whatever its host or process id; a lease is taken over only once it expired; a heartbeat keeps
//! a lease across many lengths of it; a holder whose lease was taken over (or that could not renew
//! it) learns so and stops.

#![allow(clippy::unwrap_used)]

mod support;

use support::db as common;

use std::time::Duration;

use mailbridge::config::DbUrl;
use mailbridge::store::locks::LockHolder;
use mailbridge::store::{OpenMode, Store, StoreError};

/// A migrated state DB (SQLite in `dir`, or a fresh PostgreSQL database) with leases of `ttl`.
async fn store(url: &str, dir: &std::path::Path, ttl: Duration) -> Store {
    let store = Store::open(&DbUrl::parse(url, dir).unwrap(), OpenMode::ReadWrite)
        .await
        .unwrap()
        .with_lease_ttl(ttl);
    store.migrate().await.unwrap();
    store
}

/// Runs `case` on SQLite and on PostgreSQL (skipped when unreachable, a failure in CI).
macro_rules! on_both {
    ($case:ident, $ttl:expr) => {
        let dir = tempfile::tempdir().unwrap();
        $case(store("sqlite://state.db", dir.path(), $ttl).await, "sqlite").await;
        if let Some(db) = common::pg_database().await {
            $case(store(&db.url, dir.path(), $ttl).await, "postgres").await;
        }
    };
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

async fn holder_of(store: &Store, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM locks WHERE name = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

fn in_a_minute() -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn live_holder_with_a_gone_pid_keeps_its_lease(store: Store, db: &str) {
    // Same host name, a process id that no longer runs here: it may be another container with
    // the same host name, alive, renewing. Only expiry ends its lease.
    let theirs = format!("{}:{}:campaign-run", this_host(), dead_pid());
    insert_lease(&store, "campaign:k1", &theirs, &in_a_minute()).await;
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

    // Once it expired, it is taken over.
    sqlx::query(
        "UPDATE locks SET expires_at = '2000-01-01T00:00:00.000Z' WHERE name = 'campaign:k1'",
    )
    .execute(store.pool())
    .await
    .unwrap();
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

async fn heartbeat_keeps_the_lease(store: Store, db: &str) {
    let ttl = store.lease_ttl();
    let lease = store
        .lease("sync:newsletter", LockHolder::this_process("long-run"))
        .await
        .unwrap()
        .unwrap();
    let other = LockHolder::this_process("other-run");
    // Two and a half lease lengths of work: the heartbeat renews the lease all along.
    let started = std::time::Instant::now();
    let mut looks = 0;
    while started.elapsed() < ttl * 5 / 2 {
        tokio::time::sleep(ttl / 4).await;
        assert!(
            store
                .try_lock("sync:newsletter", &other, 60)
                .await
                .unwrap()
                .is_some(),
            "{db}: taken over after {:?}",
            started.elapsed()
        );
        lease.check().unwrap();
        looks += 1;
    }
    assert!(looks >= 6, "{db}: {looks}");
    lease.release().await;
    assert_eq!(
        store.try_lock("sync:newsletter", &other, 60).await.unwrap(),
        None,
        "{db}: given back"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_a_lease_alive_across_more_than_one_ttl() {
    on_both!(heartbeat_keeps_the_lease, Duration::from_secs(2));
}

async fn taken_over_lease_is_lost(store: Store, db: &str) {
    let lease = store
        .lease("events:writeback", LockHolder::this_process("worker"))
        .await
        .unwrap()
        .unwrap();
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
    on_both!(taken_over_lease_is_lost, Duration::from_millis(600));
}

async fn unrenewable_lease_runs_out(store: Store, db: &str) {
    let ttl = store.lease_ttl();
    let lease = store
        .lease("campaign:k2", LockHolder::this_process("push"))
        .await
        .unwrap()
        .unwrap();
    // The state DB becomes unreachable: no renewal succeeds, so after the lease's length the
    // holder must assume another has taken it over.
    let started = std::time::Instant::now();
    store.close().await;
    let lost = tokio::time::timeout(Duration::from_secs(20), lease.lost())
        .await
        .unwrap_or_else(|_| panic!("{db}: still held"));
    assert!(matches!(lost, StoreError::LockLost { .. }), "{db}");
    assert!(
        started.elapsed() < ttl,
        "{db}: counted as held for {:?}, longer than the lease",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lease_that_cannot_be_renewed_counts_as_lost_before_it_expires() {
    on_both!(unrenewable_lease_runs_out, Duration::from_secs(2));
}

/// The writeback round checks its lease before each event's writeback: with the lease lost, it
/// writes nothing back and leaves the events to the new holder.
#[tokio::test]
async fn a_writeback_round_whose_lease_was_lost_writes_nothing_back() {
    use mailbridge::config::{AudienceConfig, ProviderKind};
    use mailbridge::events::apply::{self, ApplyContext, Scope, SoftBouncePolicy};
    use mailbridge::events::{NewEvent, WRITEBACK_LOCK, insert_event};
    use mailbridge::mapping::Mapping;
    use mailbridge::source::MemberSource;

    let dir = tempfile::tempdir().unwrap();
    let store = store("sqlite://state.db", dir.path(), Duration::from_secs(60)).await;
    let members = DbUrl::parse("sqlite://members.db", dir.path()).unwrap();
    mailbridge::demo::sample::create_member_db(&members, 20, 7)
        .await
        .unwrap();
    let source = MemberSource::connect(&members, false).await.unwrap();
    let mapping = Mapping::load(&common::shipped_mapping()).unwrap();
    let audiences = [AudienceConfig {
        name: "newsletter".into(),
        provider: ProviderKind::Mailchimp,
        list_id: "list1".into(),
        webhook_signing_secret: None,
        max_archive_percent: 10.0,
        from_name: None,
        reply_to: None,
    }];
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

    let lease = store
        .lease(WRITEBACK_LOCK, LockHolder::this_process("worker"))
        .await
        .unwrap()
        .unwrap();
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
        mailchimp: None,
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
    let lease = store
        .lease(WRITEBACK_LOCK, LockHolder::this_process("worker-2"))
        .await
        .unwrap()
        .unwrap();
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
