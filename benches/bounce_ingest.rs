//! Benchmark: ingesting 10,000 bounces into SQLite and PostgreSQL state (issue 18 figures).
//!
//!     cargo bench --bench bounce_ingest                      # SQLite and PostgreSQL state
//!     BENCH_BOUNCES=2000 cargo bench --bench bounce_ingest   # fewer bounces
//!     BENCH_STATE=sqlite cargo bench --bench bounce_ingest   # one backend only
//!
//! The relay's outbox holds N sent messages (VERP on); N hard bounces, one per message, each a
//! distinct mail, are ingested one after another as an MTA pipe alias hands them over (`ingest`:
//! find the message by its VERP address, record the mail, its event and the outbox change in one
//! transaction), then the events engine applies them (suppression list; the addresses are no
//! synced member's, so there is no member-DB write-back). Reports are built here: the parser's
//! cost is `bounce parse`'s own benchmark. PostgreSQL: a fresh database on `MAILBRIDGE_TEST_PG`
//! (default the local server), skipped when unreachable.

use std::path::Path;
use std::time::Instant;

use mailbridge::app::App;
use mailbridge::bounces::ingest::{self, Ingest, Outcome};
use mailbridge::bounces::{BounceKind, BounceReport, Reason, Recipient};
use mailbridge::events::apply::SoftBouncePolicy;
use mailbridge::relay::{NewMessage, outbox, verp};
use sqlx::Connection;

const DOMAIN: &str = "bounces.bench.example";
const SECRET: &str = "bench-verp-secret";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(dir: &Path, state_url: &str) -> std::path::PathBuf {
    let members = dir.join("members.db");
    let conn = rusqlite::Connection::open(&members).expect("open members");
    conn.execute_batch(mailbridge::demo::sample::schema_sql(
        mailbridge::config::DbKind::Sqlite,
    ))
    .expect("schema");
    let path = dir.join("mailbridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"[state]
url = "{state_url}"

[members]
url = "sqlite://{members}"
mapping = "{mapping}"

[relay]
from = "Bench Club <club@bench.example>"
routes = ["sendmail"]
sendmail_path = "/bin/true"
bounce_domain = "{DOMAIN}"
verp_secret = "{SECRET}"
"#,
            members = members.display(),
            mapping = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/members.toml"),
        ),
    )
    .expect("write config");
    path
}

struct Figures {
    ingest_secs: f64,
    apply_secs: f64,
    n: usize,
}

async fn run(state_url: &str, dir: &Path, n: usize) -> Figures {
    let app = App::load(&write_config(dir, state_url)).expect("config");
    let store = app.migrated_store().await.expect("state DB").clone();
    let relay = app.relay().expect("[relay]");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let msg = NewMessage {
            to: format!("r{i}@example.org"),
            subject: "Welcome".into(),
            text: "Welcome to the club.\n".into(),
            html: None,
            reply_to: None,
            headers: Default::default(),
            category: "registration".into(),
        };
        ids.push(
            outbox::enqueue(&store, &relay, &msg)
                .await
                .expect("enqueue")
                .id,
        );
    }
    sqlx::query("UPDATE outbox SET status = 'sent'")
        .execute(store.pool())
        .await
        .expect("mark sent");

    let ctx = Ingest {
        store: &store,
        relay: Some(&relay),
    };
    let mut events = Vec::with_capacity(n);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let report = BounceReport {
            kind: BounceKind::Dsn,
            recipients: vec![Recipient {
                email: format!("r{i}@example.org"),
                action: Some("failed".into()),
                status: Some("5.1.1".into()),
                reply_code: Some(550),
                reason: Reason::UserUnknown,
                hard: Some(true),
                diagnostic: Some("550 5.1.1 user unknown".into()),
            }],
            feedback_type: None,
            original_message_id: None,
            verp: Some(verp::encode(id, DOMAIN, SECRET.as_bytes())),
            unsubscribe: None,
            not_bounce_reason: None,
        };
        let raw = format!("bounce mail {i} about {id}\r\n");
        let result = ingest::ingest_report(ctx, &report, raw.as_bytes(), false)
            .await
            .expect("ingest");
        assert_eq!(result.outcome, Outcome::Applied);
        events.extend(result.event_ids);
    }
    let ingest_secs = started.elapsed().as_secs_f64();

    let mapping = app.mapping().expect("mapping");
    let source = app.member_source().await.expect("member DB");
    let started = Instant::now();
    let mut suppressed = 0;
    for chunk in events.chunks(500) {
        let done = mailbridge::events::apply_now(
            mapping,
            &store,
            &source,
            SoftBouncePolicy::default(),
            chunk,
        )
        .await
        .expect("apply");
        suppressed += done.suppressed;
    }
    let apply_secs = started.elapsed().as_secs_f64();
    assert_eq!(suppressed as usize, n, "every address suppressed");
    let (bounced,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'bounced'")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(bounced as usize, n);
    app.close().await;
    Figures {
        ingest_secs,
        apply_secs,
        n,
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<10} ingest {} bounces: {:.2} s ({:.0} msg/s); apply their events: {:.2} s ({:.0} events/s); total {:.0} msg/s",
        f.n,
        f.ingest_secs,
        f.n as f64 / f.ingest_secs,
        f.apply_secs,
        f.n as f64 / f.apply_secs,
        f.n as f64 / (f.ingest_secs + f.apply_secs)
    );
}

async fn pg_state() -> Option<(String, String, String)> {
    let admin = std::env::var("MAILBRIDGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.ok()?;
    let name = format!("mbbench_bounces_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await
    .ok()?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .ok()?;
    let (base, _) = admin.rsplit_once('/')?;
    Some((format!("{base}/{name}"), admin, name))
}

#[tokio::main]
async fn main() {
    let n: usize = env_or("BENCH_BOUNCES", 10_000);
    let which = std::env::var("BENCH_STATE").unwrap_or_default();
    println!("bounce ingest: {n} hard bounces, one mail at a time, release build");
    if which.is_empty() || which == "sqlite" {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        let f = run(&state, dir.path(), n).await;
        print("sqlite", &f);
    }
    if which.is_empty() || which == "postgres" {
        match pg_state().await {
            Some((url, admin, name)) => {
                let dir = tempfile::tempdir().expect("tempdir");
                let f = run(&url, dir.path(), n).await;
                print("postgres", &f);
                if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            }
            None => println!("postgres   skipped: no PostgreSQL at MAILBRIDGE_TEST_PG"),
        }
    }
}
