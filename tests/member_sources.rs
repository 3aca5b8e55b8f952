//! The member source against the three real databases: the shipped mapping works unchanged on
//! the reference schema on SQLite, PostgreSQL and MariaDB, the plan is the same on all three, and
//! writeback statements bind their named parameters per driver.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use mailbridge::config::DbUrl;
use mailbridge::demo::sample;
use mailbridge::mapping::Mapping;
use mailbridge::source::{MemberSource, Param, Value};
use mailbridge::sync::{PlanOptions, plan::Plan};
use support::{Kind, app, db};

const N: u64 = 600;

/// Fills the member DB at `url` with the sample and plans against an empty SQLite state DB.
async fn plan_for(url: &str) -> (Plan, MemberSource) {
    let dir = tempfile::tempdir().unwrap();
    let members = DbUrl::parse(url, dir.path()).unwrap();
    sample::create_member_db(&members, N, 11).await.unwrap();
    let state = DbUrl::parse("sqlite://state.db", dir.path()).unwrap();
    let store = app::open_store(&state).await;
    let mapping = Mapping::load(&db::shipped_mapping()).unwrap();
    let source = app::member_source(&members, false).await;
    let plan = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap();
    (plan, source)
}

/// What the plan must be for the sample, computed independently of the source module.
fn expected() -> (u64, u64) {
    use mailbridge::domain::Email;
    let mut seen = std::collections::HashSet::new();
    let (mut create, mut invalid) = (0, 0);
    for m in sample::sample_members(N, 11) {
        if !(m.newsletter && m.membership != "lapsed" && m.email_status == "ok") {
            continue;
        }
        match m.email.as_deref().map(Email::parse) {
            Some(Ok(e)) if seen.insert(e.as_str().to_owned()) => create += 1,
            _ => invalid += 1,
        }
    }
    (create, invalid)
}

fn check(plan: &Plan) {
    let (create, invalid) = expected();
    assert_eq!(plan.members_read, N);
    assert_eq!(plan.create, create, "creates");
    assert_eq!(plan.skipped_invalid, invalid, "skipped as invalid");
    assert!(invalid > 0 && create > 0);
    assert_eq!(plan.update + plan.unchanged + plan.archive(), 0);
    let codes: std::collections::BTreeSet<&str> =
        plan.skipped.iter().map(|s| s.code.as_ref()).collect();
    for code in [
        "missing_email",
        "blank_email",
        "invalid_email",
        "duplicate_email",
    ] {
        assert!(codes.contains(code), "no {code} in {codes:?}");
    }
    assert!(plan.skipped.iter().all(|s| s.member_key.is_some()));
}

async fn writeback_binds_named_parameters(source: &MemberSource) {
    let mapping = Mapping::load(&db::shipped_mapping()).unwrap();
    let stmt = mapping.writeback.unsubscribed.as_ref().unwrap();
    let params = HashMap::from([("member_key", Param::Int(5))]);
    assert_eq!(
        source.execute("unsubscribed", stmt, &params).await.unwrap(),
        1
    );
    let change = mapping.writeback.email_changed.as_ref().unwrap();
    let params = HashMap::from([
        ("member_key", Param::Int(6)),
        (
            "new_email",
            Param::Text("it's; DROP TABLE members; --@example.org".into()),
        ),
    ]);
    assert_eq!(
        source
            .execute("email_changed", change, &params)
            .await
            .unwrap(),
        1
    );

    let sql = MemberSource::ordered_query(
        "SELECT id, email, newsletter, email_status FROM members WHERE id IN (5, 6)",
        "id",
    );
    use futures::TryStreamExt;
    let rows: Vec<Vec<Value>> = source.stream(&sql).try_collect().await.unwrap();
    assert_eq!(rows[0][2], Value::Bool(false));
    assert_eq!(rows[0][3], Value::Text("unsubscribed".into()));
    // The hostile value was bound, not spliced: it is stored as text and the table still exists.
    assert_eq!(
        rows[1][1],
        Value::Text("it's; DROP TABLE members; --@example.org".into())
    );
}

/// The sample on a member DB of `kind`: the plan is the expected one and writeback binds.
async fn plans_and_writes_back_on(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = db::member_db(kind, dir.path()).await else {
        return;
    };
    let (plan, source) = plan_for(&db.url).await;
    check(&plan);
    writeback_binds_named_parameters(&source).await;
    source.close().await;
}

support::kind_tests!(plans_and_writes_back_on:
    sqlite_member_db => Sqlite,
    postgres_member_db => Postgres,
    mariadb_member_db => MariaDb,
);

#[tokio::test]
async fn rows_stream_in_member_key_order_whatever_the_query_says() {
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://m.db", dir.path()).unwrap();
    sample::create_member_db(&url, 50, 3).await.unwrap();
    let source = app::member_source(&url, true).await;
    let sql = MemberSource::ordered_query("SELECT id, email FROM members ORDER BY id DESC", "id");
    use futures::TryStreamExt;
    let ids: Vec<i64> = source
        .stream(&sql)
        .map_ok(|r| match r[0] {
            Value::Int(i) => i,
            _ => panic!("id is not an integer"),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_mapping_column_missing_from_the_query_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://m.db", dir.path()).unwrap();
    sample::create_member_db(&url, 5, 3).await.unwrap();
    let text = std::fs::read_to_string(db::shipped_mapping())
        .unwrap()
        .replace("SELECT id, email, first_name,", "SELECT id, email,");
    let mapping = Mapping::from_str(Path::new("members.toml"), &text).unwrap();
    let state = DbUrl::parse("sqlite://state.db", dir.path()).unwrap();
    let store = app::open_store(&state).await;
    let source = app::member_source(&url, true).await;
    let err = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("members.toml")
            && err.contains("merge_fields[0].column")
            && err.contains("first_name"),
        "{err}"
    );
}

#[tokio::test]
async fn a_row_with_undecodable_bytes_is_skipped_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://m.db", dir.path()).unwrap();
    sample::create_member_db(&url, 20, 3).await.unwrap();
    let pool = sqlx::SqlitePool::connect(url.expose()).await.unwrap();
    sqlx::query("UPDATE members SET email = X'616e6ef840782e6f7267', newsletter = TRUE, membership = 'full', email_status = 'ok' WHERE id = 4")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let state = DbUrl::parse("sqlite://state.db", dir.path()).unwrap();
    let store = app::open_store(&state).await;
    let mapping = Mapping::load(&db::shipped_mapping()).unwrap();
    let source = app::member_source(&url, true).await;
    let plan = app::plan_newsletter(&mapping, &store, &source, PlanOptions::default())
        .await
        .unwrap();
    assert_eq!(plan.members_read, 20);
    let bad = plan
        .skipped
        .iter()
        .find(|s| s.member_key.as_deref() == Some("4"))
        .expect("member 4 reported");
    assert_eq!(bad.code, "invalid_email");
}

/// The SQLite reader writes each chunk into the buffers of chunks already read: what a chunk
/// holds is exactly its rows, whatever longer text, NULL or number the buffers held before.
#[tokio::test]
async fn recycled_chunks_hold_exactly_the_rows_read() {
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::parse("sqlite://m.db", dir.path()).unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", url.expose()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b)")
        .execute(&pool)
        .await
        .unwrap();
    // Lengths and kinds that change from row to row, over several chunks of 1,024.
    let n = 5_000i64;
    let expected: Vec<Vec<Value>> = (1..=n)
        .map(|i| {
            let a = match i % 4 {
                0 => Value::Null,
                1 => Value::Text("x".repeat((i % 97) as usize)),
                2 => Value::Text(format!("member-{i}")),
                _ => Value::Text(String::new()),
            };
            let b = match i % 3 {
                0 => Value::Int(i * 7),
                1 => Value::Text("y".repeat((i % 13) as usize)),
                _ => Value::Null,
            };
            vec![Value::Int(i), a, b]
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for row in &expected {
        let q = sqlx::query("INSERT INTO t (id, a, b) VALUES (?, ?, ?)").bind(match &row[0] {
            Value::Int(i) => *i,
            _ => unreachable!(),
        });
        let q = match &row[1] {
            Value::Text(t) => q.bind(Some(t.clone())),
            _ => q.bind(None::<String>),
        };
        let q = match &row[2] {
            Value::Int(i) => q.bind(*i),
            Value::Text(t) => q.bind(t.clone()),
            _ => q.bind(None::<i64>),
        };
        q.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;

    let source = app::member_source(&url, true).await;
    let sql = MemberSource::ordered_query("SELECT id, a, b FROM t", "id");
    let mut chunks = source.stream_chunks(&sql);
    let mut read = Vec::new();
    let mut sizes = Vec::new();
    while let Some(chunk) = chunks.try_next().await.unwrap() {
        sizes.push(chunk.len());
        read.extend(chunk.rows().iter().cloned());
        // Dropped here: its buffers go back to the reader for the chunks after the next ones.
    }
    assert!(sizes.len() >= 5, "several chunks: {sizes:?}");
    assert_eq!(read.len(), expected.len());
    for (got, want) in read.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}
