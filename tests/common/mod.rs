//! Shared helpers for integration tests: a fresh PostgreSQL or MariaDB database per test, and the
//! built binary. With `CI=true` a database server that cannot be reached fails the test instead of
//! skipping it.

#![allow(dead_code)]

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
    let admin_url = std::env::var("MAILBRIDGE_TEST_PG").unwrap_or_else(|_| PG_BASE.to_owned());
    let mut conn = match sqlx::postgres::PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => return unavailable("PostgreSQL at 127.0.0.1:5432", e),
    };
    let name = unique_name();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("MAILBRIDGE_TEST_PG must end with /<database>"),
    };
    Some(TestDb {
        url,
        admin_url,
        name,
        kind: "pg",
    })
}

/// A fresh MariaDB/MySQL database (server from `MAILBRIDGE_TEST_MYSQL`).
pub async fn mysql_database() -> Option<TestDb> {
    let admin_url =
        std::env::var("MAILBRIDGE_TEST_MYSQL").unwrap_or_else(|_| MYSQL_BASE.to_owned());
    let mut conn = match sqlx::mysql::MySqlConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => return unavailable("MariaDB at 127.0.0.1:3306", e),
    };
    let name = unique_name();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("MAILBRIDGE_TEST_MYSQL must end with /<database>"),
    };
    Some(TestDb {
        url,
        admin_url,
        name,
        kind: "mysql",
    })
}

/// The `mailbridge` binary built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailbridge"))
}

/// The shipped mapping file.
pub fn shipped_mapping() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/members.toml")
}

/// Writes a config for `members_url` / `state_url` into `dir` and returns its path.
pub fn write_config(dir: &Path, state_url: &str, members_url: &str) -> PathBuf {
    let path = dir.join("mailbridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"[state]
url = "{state_url}"

[members]
url = "{members_url}"
mapping = "{mapping}"

[providers.mailchimp]
api_key = "${{MB_TEST_MC_KEY}}"

[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "list1"
"#,
            mapping = shipped_mapping().display()
        ),
    )
    .expect("write config");
    path
}
