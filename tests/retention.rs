//! `[retention]` on a manual clock, on SQLite and PostgreSQL state: the pruner `serve` runs
//! deletes applied provider events, the raw bytes of processed bounce mails and finished sync
//! runs past their ages, in batches, at start and again when the clock has moved an hour on; it
//! keeps young rows, unapplied events, the newest status event of an address (the consent rule
//! reads it), unprocessed bounce mails, running syncs and the member errors that hold an address
//! back.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mailbridge::clock::{Clock, ManualClock};
use mailbridge::config::{DbUrl, RetentionConfig};
use mailbridge::retention::{EVERY, Pruned, Pruner};
use mailbridge::store::{OpenMode, Store, time_text};
use support::{clock, db};
use tokio_util::sync::CancellationToken;

fn days_ago(now: DateTime<Utc>, days: i64) -> String {
    time_text(now - chrono::Duration::days(days))
}

/// An event of `kind` about `email`, fired `fired` days ago, applied `applied` days ago (or not).
async fn event(
    store: &Store,
    key: &str,
    kind: &str,
    email: &str,
    fired: i64,
    applied: Option<i64>,
    outcome: Option<&str>,
) {
    let now = store.now();
    sqlx::query(
        "INSERT INTO provider_events (dedupe_key, provider, list_id, event_type, email, fired_at,
             payload, received_at, applied_at, outcome, verified)
         VALUES ($1, 'mailchimp', 'l1', $2, $3, $4, '{}', $4, $5, $6, 1)",
    )
    // Stored keys start with the address and U+001F, as `NewEvent::dedupe_key` makes them: on a
    // SQLite state DB that is how an address's events are found.
    .bind(format!("{email}\u{1f}{key}"))
    .bind(kind)
    .bind(email)
    .bind(days_ago(now, fired))
    .bind(applied.map(|d| days_ago(now, d)))
    .bind(outcome)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn bounce(store: &Store, hash: &str, received: i64, processed: Option<i64>) {
    let now = store.now();
    sqlx::query(
        "INSERT INTO bounce_messages (hash, raw, received_at, processed_at, outcome)
         VALUES ($1, $2, $3, $4, 'applied')",
    )
    .bind(hash)
    .bind(b"Return-Path: <>\r\n\r\nthe raw bounce".to_vec())
    .bind(days_ago(now, received))
    .bind(processed.map(|d| days_ago(now, d)))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn run(store: &Store, id: &str, status: &str, finished: Option<i64>, errors: &[bool]) {
    let now = store.now();
    sqlx::query(
        "INSERT INTO sync_runs (run_id, audience, provider, status, started_at, finished_at, report)
         VALUES ($1, 'news', 'mailchimp', $2, $3, $4, '{}')",
    )
    .bind(id)
    .bind(status)
    .bind(days_ago(now, 200))
    .bind(finished.map(|d| days_ago(now, d)))
    .execute(store.pool())
    .await
    .unwrap();
    for (i, holds_back) in errors.iter().enumerate() {
        sqlx::query(
            "INSERT INTO sync_errors (run_id, audience, member_key, code, message, created_at, content_hash)
             VALUES ($1, 'news', $2, 'invalid', 'refused', $3, $4)",
        )
        .bind(id)
        .bind(format!("{id}-m{i}"))
        .bind(days_ago(now, 200))
        .bind(holds_back.then_some("hash"))
        .execute(store.pool())
        .await
        .unwrap();
    }
}

async fn strings(store: &Store, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(store.pool())
        .await
        .unwrap();
    out.sort();
    out
}

/// The keys of the stored events, as the fixtures name them (after the address).
async fn keys(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = strings(store, "SELECT dedupe_key FROM provider_events")
        .await
        .into_iter()
        .map(|k| {
            k.split_once('\u{1f}')
                .map_or(k.clone(), |(_, key)| key.to_owned())
        })
        .collect();
    keys.sort();
    keys
}

async fn case(store: Store, clock: Arc<ManualClock>, db: &str) {
    store.migrate().await.unwrap();
    // Provider events (kept 90 days).
    event(
        &store,
        "old-soft",
        "soft_bounce",
        "a@x.example",
        101,
        Some(100),
        Some("applied"),
    )
    .await;
    event(
        &store,
        "old-ignored",
        "hard_bounce",
        "a@x.example",
        101,
        Some(100),
        Some("ignored"),
    )
    .await;
    event(
        &store,
        "old-unmatched",
        "hard_bounce",
        "z@x.example",
        301,
        Some(300),
        Some("unmatched"),
    )
    .await;
    event(
        &store,
        "young-soft",
        "soft_bounce",
        "a@x.example",
        89,
        Some(89),
        Some("applied"),
    )
    .await;
    event(
        &store,
        "only-word-on-b",
        "unsubscribed",
        "b@x.example",
        101,
        Some(100),
        Some("applied"),
    )
    .await;
    event(
        &store,
        "c-subscribed",
        "subscribed",
        "c@x.example",
        120,
        Some(119),
        Some("applied"),
    )
    .await;
    event(
        &store,
        "c-unsubscribed",
        "unsubscribed",
        "c@x.example",
        110,
        Some(109),
        Some("applied"),
    )
    .await;
    event(
        &store,
        "never-applied",
        "cleaned",
        "d@x.example",
        200,
        None,
        None,
    )
    .await;
    // Bounce mails (bytes kept 30 days).
    bounce(&store, "old-processed", 41, Some(40)).await;
    bounce(&store, "young-processed", 11, Some(10)).await;
    bounce(&store, "old-unprocessed", 100, None).await;
    // Sync runs (kept 90 days).
    run(&store, "old-run", "succeeded", Some(100), &[false, true]).await;
    run(&store, "young-run", "succeeded", Some(10), &[false]).await;
    run(&store, "stuck-run", "running", None, &[false]).await;

    let pruner = Pruner {
        batch: 2,
        ..Pruner::new(store.clone(), RetentionConfig::default(), clock.clone())
    };
    let shutdown = CancellationToken::new();
    let (tx, mut passes) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(pruner.run(shutdown.clone(), Some(tx)));

    let first = passes.recv().await.unwrap();
    assert_eq!(
        first,
        Pruned {
            provider_events: 4,
            bounce_mails: 1,
            sync_runs: 1,
            sync_errors: 1,
        },
        "{db}"
    );
    assert_eq!(
        keys(&store).await,
        [
            "c-unsubscribed",
            "never-applied",
            "only-word-on-b",
            "young-soft"
        ],
        "{db}: the young, the unapplied and each address's newest status stay"
    );
    let raw: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT hash, raw FROM bounce_messages ORDER BY hash")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let emptied: Vec<(&str, bool)> = raw
        .iter()
        .map(|(h, r)| (h.as_str(), r.is_empty()))
        .collect();
    assert_eq!(
        emptied,
        [
            ("old-processed", true),
            ("old-unprocessed", false),
            ("young-processed", false)
        ],
        "{db}: only the old processed mail loses its bytes, and keeps its row"
    );
    assert_eq!(
        strings(&store, "SELECT run_id FROM sync_runs").await,
        ["stuck-run", "young-run"],
        "{db}"
    );
    assert_eq!(
        strings(&store, "SELECT member_key FROM sync_errors").await,
        ["old-run-m1", "stuck-run-m0", "young-run-m0"],
        "{db}: the error holding a member back stays"
    );

    // Nothing more until the clock moves on: the next pass comes an hour later, and then the
    // event that was 89 days old is past 90.
    assert!(passes.try_recv().is_err(), "{db}");
    clock.advance(std::time::Duration::from_secs(2 * 86_400));
    let second = passes.recv().await.unwrap();
    assert_eq!(
        second,
        Pruned {
            provider_events: 1,
            ..Pruned::default()
        },
        "{db}"
    );
    assert!(
        !keys(&store).await.contains(&"young-soft".to_owned()),
        "{db}"
    );
    clock.advance(EVERY);
    assert_eq!(passes.recv().await.unwrap(), Pruned::default(), "{db}");
    shutdown.cancel();
    task.await.unwrap();
}

async fn store_at(url: &str, dir: &std::path::Path) -> (Store, Arc<ManualClock>) {
    let (manual, shared) = clock::manual();
    let store = Store::open_with_clock(
        &DbUrl::parse(url, dir).unwrap(),
        OpenMode::ReadWrite,
        shared,
    )
    .await
    .unwrap();
    (store, manual)
}

#[tokio::test]
async fn old_rows_go_young_ones_and_unapplied_events_stay_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = store_at("sqlite://state.db", dir.path()).await;
    assert_eq!(clock.now(), support::clock::start());
    case(s, clock, "sqlite").await;
    if let Some(pg) = db::pg_database().await {
        let (s, clock) = store_at(&pg.url, dir.path()).await;
        case(s, clock, "postgres").await;
    }
}
