//! The state DB on SQLite and PostgreSQL: idempotent migrations, refusal to run unmigrated, and
//! contacts that make the next plan count changes only.

#![allow(clippy::unwrap_used)]

mod support;

use mailbridge::config::DbUrl;
use mailbridge::demo::sample;
use mailbridge::domain::SubscriptionStatus;
use mailbridge::mapping::Mapping;
use mailbridge::source::MemberSource;
use mailbridge::store::contacts::ContactRow;
use mailbridge::store::locks::LockHolder;
use mailbridge::store::{OpenMode, StoreError};
use mailbridge::sync::PlanOptions;
use mailbridge::sync::diff::{Action, Differ};
use support::{Kind, app, db};

async fn exercise(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = db::state_db(kind, dir.path()).await else {
        return;
    };
    let state = DbUrl::parse(&db.url, dir.path()).unwrap();
    let store = app::try_open_store(&state, OpenMode::ReadWrite)
        .await
        .unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    match store.ensure_migrated().await {
        Err(StoreError::NotMigrated { pending, .. }) => assert_eq!(pending, shipped),
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    assert_eq!(store.migrate().await.unwrap(), shipped);
    assert_eq!(store.migrate().await.unwrap(), 0, "migrate is idempotent");
    store.ensure_migrated().await.unwrap();

    // Plan once, record every create as synced, plan again: all unchanged.
    let members = DbUrl::parse("sqlite://members.db", dir.path()).unwrap();
    sample::create_member_db(&members, 300, 5).await.unwrap();
    let mapping = Mapping::load(&db::shipped_mapping()).unwrap();
    let source = app::member_source(&members, false).await;
    let first = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap();
    assert!(first.create > 100);

    let sql = MemberSource::ordered_query(&mapping.source.query, &mapping.source.key);
    let cols = source.columns(&sql).await.unwrap();
    let cs = mapping.compile_source(&cols).unwrap();
    let ca = mapping
        .compile_audience(mapping.audience("newsletter").unwrap(), &cols)
        .unwrap();
    let mut d = Differ::new(
        &cs,
        &ca,
        mailbridge::store::contacts::ContactMap::default(),
        false,
    );
    use futures::TryStreamExt;
    let rows: Vec<_> = source.stream(&sql).try_collect().await.unwrap();
    let contacts: Vec<_> = rows
        .iter()
        .filter_map(|r| match d.observe(r) {
            Action::Create(c) => Some(c),
            _ => None,
        })
        .collect();
    let hashes: Vec<String> = contacts.iter().map(|c| c.content_hash()).collect();
    let rows_to_write: Vec<ContactRow<'_>> = contacts
        .iter()
        .zip(&hashes)
        .map(|(c, h)| ContactRow {
            member_key: &c.member_key,
            email: c.email.as_str(),
            remote_id: None,
            content_hash: h,
            remote_status: SubscriptionStatus::Subscribed,
        })
        .collect();
    store
        .upsert_contacts("newsletter", &rows_to_write)
        .await
        .unwrap();
    store
        .upsert_contacts("newsletter", &rows_to_write)
        .await
        .unwrap();
    assert_eq!(
        store.contacts("newsletter").await.unwrap().len(),
        contacts.len()
    );

    let second = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap();
    assert_eq!(second.create, 0);
    assert_eq!(second.update, 0);
    assert_eq!(second.unchanged, first.create);
    assert_eq!(second.skipped_invalid, first.skipped_invalid);

    // One member changes, one withdraws consent, one is deleted.
    let pool = sqlx::SqlitePool::connect(members.expose()).await.unwrap();
    let ids: Vec<i64> = contacts
        .iter()
        .take(3)
        .map(|c| c.member_key.as_int().unwrap())
        .collect();
    sqlx::query("UPDATE members SET first_name = 'Changed' WHERE id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE members SET newsletter = FALSE WHERE id = $1")
        .bind(ids[1])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM members WHERE id = $1")
        .bind(ids[2])
        .execute(&pool)
        .await
        .unwrap();
    let third = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap();
    assert_eq!((third.create, third.update, third.archive()), (0, 1, 2));
    let reasons: Vec<&str> = third.archives.iter().map(|a| a.code.as_ref()).collect();
    assert_eq!(reasons, ["withdrew_consent", "removed_from_member_db"]);

    // --full plans an update for every live contact instead of trusting the hashes.
    let full = app::plan_newsletter(&mapping, &store, &source, PlanOptions { full: true })
        .await
        .unwrap();
    assert_eq!(full.unchanged, 0);
    assert_eq!(full.update, first.create - 2);

    // What the provider last said about consent: only status events count (a later profile
    // update does not hide an unsubscribe); at the same instant the one stored later wins.
    let event = |email: &str, kind: &str, at: &str| mailbridge::providers::NewEvent {
        provider: "mailchimp",
        audience: None,
        list_id: Some("list-marks".into()),
        event_type: kind.into(),
        email: Some(email.into()),
        member_key: None,
        reason: None,
        fired_at: format!("2026-11-01T10:00:{at}.000Z"),
        source_id: None,
        payload: "{}".into(),
        verified: true,
        ignored: None,
    };
    for e in [
        event("a@example.org", "unsubscribed", "01"),
        event("a@example.org", "profile", "02"),
        event("b@example.org", "subscribed", "03"),
        event("b@example.org", "unsubscribed", "03"),
        event("c@example.org", "unsubscribed", "04"),
        event("c@example.org", "subscribed", "05"),
    ] {
        assert!(
            mailbridge::events::insert_event(store.pool(), &e)
                .await
                .unwrap()
        );
    }
    let marks = mailbridge::events::provider_marks(&store, "mailchimp", "list-marks")
        .await
        .unwrap();
    let mark = |email: &str| marks[email].event_type.as_str();
    assert_eq!(mark("a@example.org"), "unsubscribed");
    assert_eq!(mark("b@example.org"), "unsubscribed");
    assert_eq!(mark("c@example.org"), "subscribed");

    // A lease refreshes while it is held and reports its loss once another holder has it.
    let me = LockHolder::this_process("lease-test-a");
    let other = LockHolder::this_process("lease-test-b");
    assert_eq!(store.try_lock("lease-test", &me, 60).await.unwrap(), None);
    store.refresh_lock("lease-test", &me, 60).await.unwrap();
    assert!(
        store
            .try_lock("lease-test", &other, 60)
            .await
            .unwrap()
            .is_some()
    );
    // Its lease runs out (expired at once) and the other holder takes it over.
    store.refresh_lock("lease-test", &me, -1).await.unwrap();
    assert_eq!(
        store.try_lock("lease-test", &other, 60).await.unwrap(),
        None
    );
    assert!(matches!(
        store.refresh_lock("lease-test", &me, 60).await,
        Err(StoreError::LockLost { name }) if name == "lease-test"
    ));
    store.close().await;
}

support::kind_tests!(exercise:
    sqlite_state_db => Sqlite,
    postgres_state_db => Postgres,
);

#[tokio::test]
async fn sqlite_state_db_is_created_in_wal_mode_and_read_only_never_creates() {
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://sub/state.db", dir.path()).unwrap();
    let err = app::try_open_store(&url, OpenMode::ReadOnly)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("mailbridge migrate"));
    assert!(!dir.path().join("sub/state.db").exists());
    let store = app::open_store(&url).await;
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode.0.to_lowercase(), "wal");
}

#[tokio::test]
async fn mysql_is_refused_as_a_state_db_with_a_clear_message() {
    let url = DbUrl::parse(
        "mysql://root@127.0.0.1:3306/test",
        std::path::Path::new("."),
    )
    .unwrap();
    let err = app::try_open_store(&url, OpenMode::ReadWrite)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SQLite or PostgreSQL"), "{err}");
}

/// A message queued before the message bytes moved to `outbox_bodies` (migration
/// 20261128300100) is claimed after it with the same bytes: the migration copies them, and
/// nothing queued is lost.
async fn queued_messages_survive_the_outbox_bodies_migration(kind: Kind) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(db) = db::state_db(kind, tmp.path()).await else {
        return;
    };
    let state = DbUrl::parse(&db.url, tmp.path()).unwrap();
    let dir = match kind {
        Kind::Postgres => "migrations/postgres",
        _ => "migrations/sqlite",
    };
    let store = app::try_open_store(&state, OpenMode::ReadWrite)
        .await
        .unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    sqlx::migrate::Migrator::new(migrations.clone())
        .await
        .unwrap()
        .run_to(20261128200200, store.pool())
        .await
        .unwrap();
    let at = "2026-11-01T00:00:00.000Z";
    for (id, raw) in [
        ("m1", b"Subject: one\r\n\r\nfirst".to_vec()),
        ("m2", vec![0, 159, 255]),
    ] {
        sqlx::query(
            "INSERT INTO outbox (id, message_id, recipient, category, raw, status, attempts,
                 next_attempt_at, envelope_from, created_at, updated_at)
             VALUES ($1, $2, $3, 'registration', $4, 'queued', 0, $5, 'club@club.example', $5, $5)",
        )
        .bind(id)
        .bind(format!("<{id}@club.example>"))
        .bind(format!("{id}@example.org"))
        .bind(raw)
        .bind(at)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let later = std::fs::read_dir(&migrations)
        .unwrap()
        .filter(|f| {
            let name = f.as_ref().unwrap().file_name();
            let version = name.to_string_lossy().split('_').next().unwrap().to_owned();
            version.parse::<i64>().unwrap() > 20261128200200
        })
        .count();
    assert_eq!(
        store.migrate().await.unwrap(),
        later,
        "the later migrations"
    );
    let (now, lease) = ("2026-11-02T00:00:00.000Z", "2026-11-02T00:05:00.000Z");
    let mut claimed = mailbridge::relay::outbox::claim(&store, "w1", now, now, lease, 10)
        .await
        .unwrap();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<(&str, &[u8])> = claimed
        .iter()
        .map(|c| (c.id.as_str(), c.raw.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("m1", b"Subject: one\r\n\r\nfirst".as_slice()),
            ("m2", [0u8, 159, 255].as_slice())
        ]
    );
    store.close().await;
}

support::kind_tests!(queued_messages_survive_the_outbox_bodies_migration:
    sqlite_queued_messages_survive_the_outbox_bodies_migration => Sqlite,
    postgres_queued_messages_survive_the_outbox_bodies_migration => Postgres,
);
