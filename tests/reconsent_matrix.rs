//! The re-consent matrix (issue 24): after an unsubscribe at the provider, which later member
//! rows bring a member back (as `pending`, never `subscribed`) and which do not. Each row is one
//! member of the same member DB; the member DB is SQLite, PostgreSQL or MariaDB. Every decision is
//! read twice: from `sync --dry-run --json` and then from the real `sync --json`, which must agree.
//!
//! The mapping is the shipped one with `source.consent_at` mapped and without writeback statements
//! (so an unsubscribe leaves the member row as it was, and the row alone says what the club
//! knows).
//!
//! | member | after the unsubscribe                                   | pushed            |
//! |--------|---------------------------------------------------------|-------------------|
//! | 1      | never unsubscribed (control)                            | stays subscribed  |
//! | 2      | profile edit (name fixed, updated_at far in the future) | nothing           |
//! | 3      | consent false, seen by a sync; then true, seen by the next | `pending`      |
//! | 4      | `consent_at` later than the unsubscribe                 | `pending`         |
//! | 5      | `consent_at` earlier than the unsubscribe (+ a late updated_at) | nothing   |
//! | 6      | nothing changed                                         | nothing           |
//!
//! Last, the store of what runs saw in the consent column (`consent_seen`) on both state DBs.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use mailbridge::config::DbUrl;
use serde_json::Value;
use support::app::{self, SimApp};
use support::{Kind, db};

/// The application against the simulator, on a member DB whose six members have a `consent_at`
/// column and a mapping that reads it (see the file's comment).
type Env = SimApp;

impl Env {
    /// `None` (the test skips) when a database server is unreachable outside CI.
    async fn new(state: Kind, members: Kind) -> Option<Env> {
        SimApp::start_consent_at(
            state,
            members,
            false,
            (1..=6).map(|i| db::member_row(i, "full", true)),
        )
        .await
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.members)
            .await
            .unwrap();
    }

    async fn cli(&self, args: &[&str]) -> Value {
        db::run_binary_json(&self.config_path, args).await
    }

    /// The dry run, then the real run: the same decisions, or this fails. Returns them.
    async fn sync_both(&self, step: &str) -> Decisions {
        let seen_before = self.consent_seen().await;
        let dry = self.cli(&["sync", "--dry-run", "--json"]).await;
        assert_eq!(dry["dry_run"], true);
        assert_eq!(
            self.consent_seen().await,
            seen_before,
            "{step}: the dry run wrote consent observations"
        );
        let real = self.cli(&["sync", "--json"]).await;
        assert_eq!(real["dry_run"], false);
        assert_eq!(real["failed"], 0, "{step}: {real:#}");
        let (dry, real) = (Decisions::of(&dry), Decisions::of(&real));
        assert_eq!(dry, real, "{step}: the dry run and the run disagree");
        real
    }

    async fn unsubscribe(&self, email: &str) {
        self.provider_action(email, "unsubscribe").await;
    }

    /// The provider's status per member number.
    async fn remote(&self) -> BTreeMap<u32, String> {
        self.sim
            .sim_members(&self.list)
            .await
            .iter()
            .map(|m| {
                let email = m["email_address"].as_str().unwrap();
                let n = email
                    .trim_start_matches('m')
                    .trim_end_matches("@example.org")
                    .parse()
                    .unwrap();
                (n, m["status"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// The recorded unsubscribe time of an address, as the provider dated it.
    async fn unsubscribed_at(&self, email: &str) -> DateTime<Utc> {
        let (fired_at,): (String,) = sqlx::query_as(
            "SELECT fired_at FROM provider_events WHERE email = $1 AND event_type = 'unsubscribed'",
        )
        .bind(email)
        .fetch_one(self.store.pool())
        .await
        .unwrap();
        mailbridge::domain::parse_time(&fired_at).unwrap()
    }

    async fn consent_seen(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT member_key, consent FROM consent_seen ORDER BY member_key")
            .fetch_all(self.store.pool())
            .await
            .unwrap()
    }
}

/// What a run report says was (or would be) done, member by member.
#[derive(Debug, PartialEq, Eq)]
struct Decisions {
    created: u64,
    updated: u64,
    archived: u64,
    skipped_opted_out: u64,
    /// Members updated (named in the samples, all of them here).
    update: Vec<String>,
    /// (member, code) of every skipped member.
    skipped: Vec<(String, String)>,
}

impl Decisions {
    fn of(report: &Value) -> Decisions {
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["member_key"].as_str().unwrap().to_owned())
                .collect();
            k.sort();
            k
        };
        let mut skipped: Vec<(String, String)> = report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["member_key"].as_str().unwrap().to_owned(),
                    n["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        skipped.sort();
        Decisions {
            created: report["created"].as_u64().unwrap(),
            updated: report["updated"].as_u64().unwrap(),
            archived: report["archived"].as_u64().unwrap(),
            skipped_opted_out: report["skipped_opted_out"].as_u64().unwrap(),
            update: keys(&report["samples"]["update"]),
            skipped,
        }
    }
}

fn opted_out(keys: &[&str]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (k.to_string(), "opted_out".to_owned()))
        .collect()
}

/// What a step decides once 2, 5 and 6 are held for good: member `key` is updated, nothing else.
fn updates_one_holds_2_5_6(key: &str) -> Decisions {
    Decisions {
        created: 0,
        updated: 1,
        archived: 0,
        skipped_opted_out: 3,
        update: vec![key.to_owned()],
        skipped: opted_out(&["2", "5", "6"]),
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

async fn matrix(env: Env) {
    // Everyone subscribed; then five of them unsubscribe at the provider.
    let first = env.sync_both("first sync").await;
    assert_eq!((first.created, first.updated), (6, 0));
    for i in 2..=6 {
        env.unsubscribe(&format!("m{i}@example.org")).await;
    }
    // The pull records the unsubscribes; the rows still say consent given, but nothing later
    // than the unsubscribes says so again: all five are held.
    let real = env.cli(&["sync", "--json"]).await;
    assert_eq!(real["unsubscribes_pulled"], 5, "{real:#}");
    assert_eq!(
        Decisions::of(&real).skipped,
        opted_out(&["2", "3", "4", "5", "6"])
    );

    let unsubscribed = env.unsubscribed_at("m4@example.org").await;
    assert_eq!(env.unsubscribed_at("m5@example.org").await, unsubscribed);
    // 2: a profile edit after the unsubscribe (its updated_at moves far past it; MariaDB's
    // TIMESTAMP ends in 2038).
    env.exec(
        "UPDATE members SET first_name = 'Fixed typo', updated_at = '2037-12-31 00:00:00' WHERE id = 2",
    )
    .await;
    // 3: consent withdrawn in the member DB (first half of false-then-true).
    env.exec("UPDATE members SET newsletter = FALSE WHERE id = 3")
        .await;
    // 4: consent given again, dated after the unsubscribe.
    env.exec(&format!(
        "UPDATE members SET consent_at = '{}' WHERE id = 4",
        ts(unsubscribed + Duration::minutes(1))
    ))
    .await;
    // 5: a consent dated before the unsubscribe, and a late updated_at that proves nothing.
    env.exec(&format!(
        "UPDATE members SET consent_at = '{}', updated_at = '2037-12-31 00:00:00' WHERE id = 5",
        ts(unsubscribed - Duration::minutes(1))
    ))
    .await;

    let d = env.sync_both("after the edits").await;
    assert_eq!(d, updates_one_holds_2_5_6("4"));
    // The run saw 3's consent withheld (after the unsubscribe) and recorded it.
    assert_eq!(
        env.consent_seen().await,
        vec![("3".to_owned(), "withheld".to_owned())]
    );

    // 3: consent given again; the next sync sees it true.
    env.exec("UPDATE members SET newsletter = TRUE WHERE id = 3")
        .await;
    let d = env.sync_both("consent true again").await;
    assert_eq!(d, updates_one_holds_2_5_6("3"));
    assert_eq!(
        env.consent_seen().await,
        vec![("3".to_owned(), "given".to_owned())]
    );

    // Re-consent is pending (the person confirms at the provider), never subscribed.
    let remote = env.remote().await;
    let want: BTreeMap<u32, String> = [
        (1, "subscribed"),
        (2, "unsubscribed"),
        (3, "pending"),
        (4, "pending"),
        (5, "unsubscribed"),
        (6, "unsubscribed"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    assert_eq!(remote, want);

    // And a run with nothing new decides nothing new.
    let d = env.sync_both("nothing changed").await;
    assert_eq!((d.created, d.updated, d.archived), (0, 0, 0));
    assert_eq!(d.skipped, opted_out(&["2", "5", "6"]));
    assert_eq!(env.remote().await, want);
}

#[tokio::test]
async fn reconsent_matrix_sqlite_members() {
    matrix(Env::new(Kind::Sqlite, Kind::Sqlite).await.unwrap()).await;
}

#[tokio::test]
async fn reconsent_matrix_postgres_members_and_state() {
    if let Some(env) = Env::new(Kind::Postgres, Kind::Postgres).await {
        matrix(env).await;
    }
}

#[tokio::test]
async fn reconsent_matrix_mariadb_members() {
    if let Some(env) = Env::new(Kind::Sqlite, Kind::MariaDb).await {
        matrix(env).await;
    }
}

/// `consent_seen` on a state DB: many rows in one call (several statements), replaced per
/// member, kept per audience.
async fn observations_round_trip(kind: Kind) {
    use mailbridge::domain::{Consent, MemberKey};
    use mailbridge::store::consent_seen::SeenConsent;
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = db::state_db(kind, dir.path()).await else {
        return;
    };
    let store = app::open_store(&DbUrl::parse(&db.url, dir.path()).unwrap()).await;
    let t = |s: &str| mailbridge::domain::parse_time(s).unwrap();
    let rows: Vec<(MemberKey, SeenConsent)> = (1..=250)
        .map(|i| {
            let consent = if i % 3 == 0 {
                Consent::Given
            } else {
                Consent::Withheld
            };
            (
                MemberKey::from_int(i),
                SeenConsent {
                    consent,
                    seen_at: t("2026-06-02T10:00:00.123Z"),
                    withheld_at: t("2026-06-01T10:00:00.456Z"),
                },
            )
        })
        .collect();
    store
        .record_consent_seen("newsletter", &rows)
        .await
        .unwrap();
    store
        .record_consent_seen("other", &rows[..1])
        .await
        .unwrap();
    let read = store.consent_seen("newsletter").await.unwrap();
    assert_eq!(read.len(), 250);
    for (k, s) in &rows {
        assert_eq!(read[k], *s, "member {k}");
    }
    // A later observation replaces the member's row.
    let later = SeenConsent {
        consent: Consent::Given,
        seen_at: t("2026-07-01T00:00:00Z"),
        withheld_at: t("2026-06-01T10:00:00.456Z"),
    };
    store
        .record_consent_seen("newsletter", &[(MemberKey::from_int(7), later)])
        .await
        .unwrap();
    let read = store.consent_seen("newsletter").await.unwrap();
    assert_eq!((read.len(), read[&MemberKey::from_int(7)]), (250, later));
    assert_eq!(store.consent_seen("other").await.unwrap().len(), 1);
    assert!(store.consent_seen("none").await.unwrap().is_empty());
    // The table refuses what the code never writes.
    let bad = sqlx::query(
        "INSERT INTO consent_seen (audience, member_key, consent, seen_at, withheld_at) VALUES ('x', '1', 'maybe', 'a', 'b')",
    )
    .execute(store.pool())
    .await;
    assert!(bad.is_err());
}

support::kind_tests!(observations_round_trip:
    consent_observations_on_sqlite_state => Sqlite,
    consent_observations_on_postgres_state => Postgres,
);
