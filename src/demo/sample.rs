//! A sample member database in the reference schema, with the mess real club data has: NULL,
//! blank, invalid, duplicate and mixed-case addresses. Deterministic for a given seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, QueryBuilder};
use std::str::FromStr;

use crate::config::{DbKind, DbUrl};

/// One row of the reference `members` table.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleMember {
    pub id: i64,
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub membership: &'static str,
    pub newsletter: bool,
    pub email_status: &'static str,
    pub updated_at: String,
}

const FIRST: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Isla", "Jack", "Kate",
    "Liam", "Mia", "Noah", "Olivia", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor",
    "Wendy", "Xavier", "Yara", "Zoe", "Åsa", "José",
];
const LAST: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "Thomas", "Roberts", "Walker",
    "Wright", "Hughes", "Green", "Hall", "Wood", "Clarke", "Patel", "O'Neill", "Müller",
    "van Dijk", "Nguyen",
];
const DOMAINS: &[&str] = &[
    "example.org",
    "example.com",
    "mail.example.net",
    "club.example",
    "post.example.co.uk",
];

/// The reference schema (issue 2); PostgreSQL, MySQL/MariaDB and SQLite all take it as written.
pub fn schema_sql(_kind: DbKind) -> &'static str {
    "CREATE TABLE members (
  id           INTEGER PRIMARY KEY,
  email        TEXT,
  first_name   TEXT,
  last_name    TEXT,
  membership   TEXT NOT NULL,
  newsletter   BOOLEAN NOT NULL,
  email_status TEXT NOT NULL DEFAULT 'ok',
  updated_at   TIMESTAMP NOT NULL
)"
}

/// `n` members with ids 1..=n. About 3% NULL, 2% blank and 4% invalid addresses, 3% that repeat
/// an earlier member's address in another case, a quarter in mixed case, some with spaces
/// around; memberships full/family/junior/lapsed; 85% consent; a few already opted out.
pub fn sample_members(n: u64, seed: u64) -> impl Iterator<Item = SampleMember> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut recent: Vec<String> = Vec::new();
    let base = chrono::NaiveDate::from_ymd_opt(2025, 1, 1)
        .and_then(|d| d.and_hms_opt(8, 0, 0))
        .unwrap_or_default();
    (1..=n as i64).map(move |id| {
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let local = format!(
            "{}.{}{}",
            first.to_lowercase().replace('å', "a").replace('é', "e"),
            last.to_lowercase()
                .replace(['\'', ' '], "")
                .replace('ü', "u"),
            id
        );
        let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
        let roll: f64 = rng.random();
        let email = if roll < 0.03 {
            None
        } else if roll < 0.05 {
            Some(if rng.random_bool(0.5) {
                String::new()
            } else {
                "   ".into()
            })
        } else if roll < 0.09 {
            Some(match rng.random_range(0..5) {
                0 => format!("{local}(at){domain}"),
                1 => format!("{local}@"),
                2 => format!("{local}@@{domain}"),
                3 => format!("{first} {last} <{local}@{domain}>"),
                _ => format!("{local}@localhost"),
            })
        } else if roll < 0.12 && !recent.is_empty() {
            let other = recent[rng.random_range(0..recent.len())].clone();
            Some(other.to_uppercase())
        } else {
            let plain = format!("{local}@{domain}");
            if recent.len() < 64 {
                recent.push(plain.clone());
            } else {
                let slot = rng.random_range(0..recent.len());
                recent[slot] = plain.clone();
            }
            let styled = if rng.random_bool(0.25) {
                let mut cased: Vec<char> = plain.chars().collect();
                cased[0] = cased[0].to_ascii_uppercase();
                let at = plain.find('@').unwrap_or(0);
                cased.iter().take(at).collect::<String>() + &plain[at..].to_uppercase()
            } else {
                plain
            };
            Some(if rng.random_bool(0.05) {
                format!(" {styled} ")
            } else {
                styled
            })
        };
        let m: f64 = rng.random();
        let membership = if m < 0.5 {
            "full"
        } else if m < 0.7 {
            "family"
        } else if m < 0.85 {
            "junior"
        } else {
            "lapsed"
        };
        let s: f64 = rng.random();
        let email_status = if s < 0.97 {
            "ok"
        } else if s < 0.99 {
            "unsubscribed"
        } else {
            "cleaned"
        };
        SampleMember {
            id,
            email,
            first_name: first.to_owned(),
            last_name: last.to_owned(),
            membership,
            newsletter: rng.random_bool(0.85),
            email_status,
            updated_at: (base + chrono::Duration::minutes(id))
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
        }
    })
}

macro_rules! insert_batch {
    ($conn:expr, $db:ty, $batch:expr) => {{
        let mut qb = QueryBuilder::<$db>::new(
            "INSERT INTO members (id, email, first_name, last_name, membership, newsletter, email_status, updated_at) ",
        );
        qb.push_values($batch, |mut b, m| {
            let ts = chrono::NaiveDateTime::parse_from_str(&m.updated_at, "%Y-%m-%d %H:%M:%S").unwrap_or_default();
            b.push_bind(m.id)
                .push_bind(m.email.clone())
                .push_bind(m.first_name.clone())
                .push_bind(m.last_name.clone())
                .push_bind(m.membership)
                .push_bind(m.newsletter)
                .push_bind(m.email_status)
                .push_bind(ts);
        });
        qb.build().execute(&mut *$conn).await?;
    }};
}

/// Runs the DDL statements `$ddl` (inside the transaction when `$ddl_in_tx`, else before it),
/// then inserts `$members` in batches of `BATCH` in one transaction, and closes `$conn`.
macro_rules! fill_members {
    ($conn:expr, $db:ty, $ddl_in_tx:expr, [$($ddl:expr),*], $members:expr) => {{
        let mut conn = $conn;
        if !$ddl_in_tx {
            $(sqlx::query($ddl).execute(&mut conn).await?;)*
        }
        let mut tx = conn.begin().await?;
        if $ddl_in_tx {
            $(sqlx::query($ddl).execute(&mut *tx).await?;)*
        }
        while $members.peek().is_some() {
            let batch: Vec<SampleMember> = $members.by_ref().take(BATCH).collect();
            insert_batch!(tx, $db, batch.iter());
        }
        tx.commit().await?;
        conn.close().await?;
    }};
}

/// (Re)creates the `members` table at `url` and fills it with [`sample_members`].
pub async fn create_member_db(url: &DbUrl, n: u64, seed: u64) -> Result<(), sqlx::Error> {
    const BATCH: usize = 500;
    let drop = "DROP TABLE IF EXISTS members";
    let schema = schema_sql(url.kind());
    let mut members = sample_members(n, seed).peekable();
    match url.kind() {
        DbKind::Sqlite => {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url.expose())?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
            let conn = sqlx::sqlite::SqliteConnection::connect_with(&opts).await?;
            fill_members!(conn, sqlx::Sqlite, true, [drop, schema], members);
        }
        DbKind::Postgres => {
            let conn = sqlx::postgres::PgConnection::connect(url.expose()).await?;
            fill_members!(conn, sqlx::Postgres, true, [drop, schema], members);
        }
        DbKind::MySql => {
            // MySQL commits DDL implicitly: it runs before the transaction.
            let conn = sqlx::mysql::MySqlConnection::connect(url.expose()).await?;
            fill_members!(conn, sqlx::MySql, false, [drop, schema], members);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;
    use std::collections::HashSet;

    #[test]
    fn sample_is_deterministic_and_messy() {
        let a: Vec<_> = sample_members(2000, 7).collect();
        let b: Vec<_> = sample_members(2000, 7).collect();
        assert_eq!(a, b);
        let null = a.iter().filter(|m| m.email.is_none()).count();
        let blank = a
            .iter()
            .filter(|m| m.email.as_deref().is_some_and(|e| e.trim().is_empty()))
            .count();
        let invalid = a
            .iter()
            .filter(|m| matches!(m.email.as_deref(), Some(e) if !e.trim().is_empty() && Email::parse(e).is_err()))
            .count();
        let mut seen = HashSet::new();
        let dup = a
            .iter()
            .filter_map(|m| m.email.as_deref().and_then(|e| Email::parse(e).ok()))
            .filter(|e| !seen.insert(e.as_str().to_owned()))
            .count();
        let mixed = a
            .iter()
            .filter(|m| m.email.as_deref().is_some_and(|e| e != e.to_lowercase()))
            .count();
        for (what, n) in [
            ("null", null),
            ("blank", blank),
            ("invalid", invalid),
            ("duplicate", dup),
            ("mixed case", mixed),
        ] {
            assert!(n >= 10, "only {n} {what} addresses in 2000");
        }
    }
}
