//! Databases for integration tests: a fresh PostgreSQL or MariaDB database per test (or a SQLite
//! file), the reference member rows, and the built binary. With `CI=true` a database server that
//! cannot be reached fails the test instead of skipping it.

use std::path::{Path, PathBuf};

use sqlx::Connection;

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_BASE: &str = "mysql://root@127.0.0.1:3306/test";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> Option<TestDb> {
    if in_ci() {
        panic!("{what} is not reachable and CI=true: {err}");
    }
    eprintln!("SKIPPED: {what} is not reachable here ({err}); CI=true makes this a failure");
    None
}

fn unique_name() -> String {
    format!(
        "mbtest_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A database created for one test, dropped (best effort) on drop.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
    kind: &'static str,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let kind = self.kind;
        // A separate thread with its own runtime: drop may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if kind == "pg" {
                    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                } else if let Ok(mut c) = sqlx::mysql::MySqlConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A fresh PostgreSQL database (server from `MAILBRIDGE_TEST_PG`, default the CI server).
pub async fn pg_database() -> Option<TestDb> {
    server_database("pg").await
}

/// The state DBs a test runs on in turn: a SQLite file in `dir`, and a fresh PostgreSQL database
/// when the server is reachable (a failure under CI). Keep the [`TestDb`]: dropping it drops the
/// database.
pub async fn state_urls(dir: &Path) -> (Vec<String>, Option<TestDb>) {
    let pg = pg_database().await;
    let mut urls = vec![format!("sqlite://{}/state.db", dir.display())];
    urls.extend(pg.as_ref().map(|db| db.url.clone()));
    (urls, pg)
}

/// Runs `check` on each state DB of [`state_urls`] in turn (SQLite, then PostgreSQL when it is
/// reachable), with the DB's URL for it to name in failure messages.
pub async fn on_each_state_db(check: impl AsyncFn(&str)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (urls, _pg) = state_urls(dir.path()).await;
    for url in urls {
        check(&url).await;
    }
}

/// A fresh MariaDB/MySQL database (server from `MAILBRIDGE_TEST_MYSQL`).
pub async fn mysql_database() -> Option<TestDb> {
    server_database("mysql").await
}

/// A fresh database on the PostgreSQL (`pg`) or MariaDB (`mysql`) server.
async fn server_database(kind: &'static str) -> Option<TestDb> {
    let (var, default, what) = if kind == "pg" {
        (
            "MAILBRIDGE_TEST_PG",
            PG_BASE,
            "PostgreSQL at 127.0.0.1:5432",
        )
    } else {
        (
            "MAILBRIDGE_TEST_MYSQL",
            MYSQL_BASE,
            "MariaDB at 127.0.0.1:3306",
        )
    };
    let admin_url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let name = unique_name();
    let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
    let created = if kind == "pg" {
        match sqlx::postgres::PgConnection::connect(&admin_url).await {
            Ok(mut c) => sqlx::query(create).execute(&mut c).await.map(|_| ()),
            Err(e) => return unavailable(what, e),
        }
    } else {
        match sqlx::mysql::MySqlConnection::connect(&admin_url).await {
            Ok(mut c) => sqlx::query(create).execute(&mut c).await.map(|_| ()),
            Err(e) => return unavailable(what, e),
        }
    };
    created.expect("create test database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("{var} must end with /<database>"),
    };
    Some(TestDb {
        url,
        admin_url,
        name,
        kind,
    })
}

/// The `mailbridge` binary built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailbridge"))
}

/// Runs `mailbridge --config <config> <args>` to the end without blocking the runtime (the
/// simulator or server it talks to may run on it).
pub async fn run_binary(config: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .expect("run the mailbridge binary")
}

/// [`run_binary`], which must exit 0; its stdout as JSON.
pub async fn run_binary_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_binary(config, args).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The shipped mapping file.
pub fn shipped_mapping() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/members.toml")
}

/// The shipped mapping with `source.consent_at` mapped to the column `consent_at` and read by the
/// query; with `writeback` its writeback statements are kept, without it they are cut.
pub fn consent_at_mapping(writeback: bool) -> String {
    let shipped = std::fs::read_to_string(shipped_mapping()).expect("read the shipped mapping");
    let cut = if writeback {
        shipped.len()
    } else {
        shipped
            .find("# Provider events written back")
            .expect("the shipped mapping's writeback section")
    };
    let text = shipped[..cut]
        .replace(
            "email_status, updated_at\nFROM members",
            "email_status, updated_at, consent_at\nFROM members",
        )
        .replace(
            "# consent_at = \"newsletter_since\"",
            "consent_at = \"consent_at\"",
        );
    assert!(text.contains("updated_at, consent_at\nFROM") && text.contains("\nconsent_at = "));
    text
}

/// Adds the nullable column `consent_at` (a timestamp) to the reference `members` table at `url`.
pub async fn add_consent_at(members: &sqlx::AnyPool, url: &mailbridge::config::DbUrl) {
    let column = match url.kind() {
        mailbridge::config::DbKind::MySql => "DATETIME NULL",
        _ => "TIMESTAMP NULL",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE members ADD COLUMN consent_at {column}"
    )))
    .execute(members)
    .await
    .expect("add the consent_at column");
}

/// Writes a config for `members_url` / `state_url` into `dir` and returns its path: Mailchimp
/// with the key from `MB_TEST_MC_KEY`, the audience on `list1`.
pub fn write_config(dir: &Path, state_url: &str, members_url: &str) -> PathBuf {
    super::ConfigFile::new(state_url, members_url)
        .mailchimp("${MB_TEST_MC_KEY}", None, "")
        .audience("list1", "")
        .write(dir)
}

/// The kinds of database a test can run on. The state DB is SQLite or PostgreSQL; the member DB
/// any of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MariaDb,
}

/// A database for one test: its URL and, for a server database, the guard that drops it.
pub struct Db {
    pub url: String,
    pub kind: Kind,
    pub guard: Option<TestDb>,
}

/// A fresh database of `kind`: the file `{name}.db` in `dir` for SQLite, a new database on the
/// server otherwise. `None` when the server is unreachable and CI is not set (the test skips;
/// under CI it fails).
pub async fn database(kind: Kind, dir: &Path, name: &str) -> Option<Db> {
    let guard = match kind {
        Kind::Sqlite => {
            return Some(Db {
                url: format!("sqlite://{}/{name}.db", dir.display()),
                kind,
                guard: None,
            });
        }
        Kind::Postgres => pg_database().await?,
        Kind::MariaDb => mysql_database().await?,
    };
    Some(Db {
        url: guard.url.clone(),
        kind,
        guard: Some(guard),
    })
}

/// A fresh state DB of `kind` (SQLite or PostgreSQL).
pub async fn state_db(kind: Kind, dir: &Path) -> Option<Db> {
    assert_ne!(kind, Kind::MariaDb, "the state DB is SQLite or PostgreSQL");
    database(kind, dir, "state").await
}

/// A fresh member DB of `kind`.
pub async fn member_db(kind: Kind, dir: &Path) -> Option<Db> {
    database(kind, dir, "members").await
}

/// One row of the reference `members` table (`VALUES` syntax): `m{i}@example.org`, `F{i}`,
/// `L{i}`, email status `ok`.
pub fn member_row(i: u64, membership: &str, newsletter: bool) -> String {
    let consent = if newsletter { "TRUE" } else { "FALSE" };
    format!(
        "({i}, 'm{i}@example.org', 'F{i}', 'L{i}', '{membership}', {consent}, 'ok', '2026-01-01 00:00:00')"
    )
}

/// The lower-cased addresses a reference `members` table wants in the audience (newsletter
/// consent, status `ok`, membership not lapsed: what the shipped mapping selects).
pub async fn expected_audience(members: &sqlx::AnyPool) -> std::collections::BTreeSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT email FROM members WHERE newsletter = TRUE AND email_status = 'ok' AND membership <> 'lapsed'",
    )
    .fetch_all(members)
    .await
    .unwrap()
    .into_iter()
    .map(|e| e.to_lowercase())
    .collect()
}

/// Membership cycling full, family, junior by id.
pub fn cycling_membership(i: u64) -> &'static str {
    ["full", "family", "junior"][(i % 3) as usize]
}

/// Creates the reference `members` table (dropping one left over) at `url` and inserts `rows`
/// ([`member_row`]s) 500 at a time; returns a pool on it.
pub async fn create_members(
    url: &mailbridge::config::DbUrl,
    rows: impl IntoIterator<Item = String>,
) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    if let Some(p) = url.sqlite_path() {
        std::fs::File::create(p).expect("create the SQLite member DB");
    }
    let members = sqlx::AnyPool::connect(url.expose())
        .await
        .expect("connect to the member DB");
    for sql in [
        "DROP TABLE IF EXISTS members".to_owned(),
        mailbridge::demo::sample::schema_sql(url.kind()).to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&members)
            .await
            .expect("create the members table");
    }
    insert_members(&members, rows).await;
    members
}

/// Inserts `rows` ([`member_row`]s) into the reference `members` table, 500 at a time.
pub async fn insert_members(members: &sqlx::AnyPool, rows: impl IntoIterator<Item = String>) {
    let rows: Vec<String> = rows.into_iter().collect();
    for chunk in rows.chunks(500) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO members (id, email, first_name, last_name, membership, newsletter, email_status, updated_at) VALUES {}",
            chunk.join(", ")
        )))
        .execute(members)
        .await
        .expect("insert members");
    }
}
