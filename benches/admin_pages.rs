//! Benchmark: the admin pages' outbox with 1,000,000 messages in a SQLite state DB (issue 21:
//! each page renders in under 100 ms).
//!
//!     cargo bench --bench admin_pages
//!     BENCH_ADMIN_ROWS=200000 BENCH_ADMIN_REQUESTS=50 cargo bench --bench admin_pages
//!
//! `serve` runs in this process on a real TCP port (its router, its SQLite state DB, no relay
//! worker: nothing moves the messages meanwhile), the outbox is filled with SQLite's own row
//! generator in one statement (about 98% sent; 5,000 each deferred, bounced, suppressed and failed;
//! 500 queued, 200 being sent; 200,000 recipients), the benchmark logs in through the real login
//! form, then times GET of the outbox page (50 messages) with no filter, with each status, with a
//! recipient prefix and a whole address (the middle message's), and deep in the list (a cursor half-way down), each
//! BENCH_ADMIN_REQUESTS times (20) after one untimed request. Prints, per page, the median and the
//! slowest response (the whole page: the listing, the counts, the HTML, the round trip) and
//! whether it is under 100 ms. Then the newest BENCH_ADMIN_BACKLOG (100,000) sent messages are
//! made a queued backlog (a route down for hours) and the sent and queued pages are timed again.
//! Asserts nothing about time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::admin;
use support::serve::{Env, Options};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` messages, oldest first two seconds apart: `m{k}@example.org` for 200,000 values of k; the
/// newest 500 queued, every 5,000th being sent, every 200th of the rest deferred, bounced, failed
/// or suppressed, the others sent.
const FILL_SQL: &str =
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
INSERT INTO outbox (id, message_id, recipient, category, status, attempts, next_attempt_at,
    lease_until, last_reply, route, envelope_from, created_at, updated_at, sent_at)
SELECT printf('%032x', i), printf('<%032x@club.example>', i),
    printf('m%d@example.org', (i * 7919) % 200000), 'registration',
    CASE WHEN i > $1 - 500 THEN 'queued'
         WHEN i % 5000 = 7 THEN 'sending'
         WHEN i % 200 = 1 THEN 'deferred'
         WHEN i % 200 = 2 THEN 'bounced'
         WHEN i % 200 = 3 THEN 'failed'
         WHEN i % 200 = 4 THEN 'suppressed'
         ELSE 'sent' END,
    1, strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || (i * 2) || ' seconds'),
    CASE WHEN i % 5000 = 7 THEN '2999-01-01T00:00:00.000Z' END,
    '250 2.0.0 Ok: queued as ' || printf('%X', i), 'smtp', 'bounces@club.example',
    strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || (i * 2) || ' seconds'),
    strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || (i * 2 + 1) || ' seconds'),
    CASE WHEN i % 200 > 4 AND i % 5000 <> 7 AND i <= $1 - 500
         THEN strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || (i * 2 + 1) || ' seconds') END
FROM n";

fn main() {
    let rows = env_u64("BENCH_ADMIN_ROWS", 1_000_000);
    let requests = env_u64("BENCH_ADMIN_REQUESTS", 20).max(1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(bench(rows, requests));
}

async fn bench(rows: u64, requests: usize) {
    let env = Env::start(Options {
        extra_server: admin::section(),
        ..Options::default()
    })
    .await;
    let filled = Instant::now();
    sqlx::query(FILL_SQL)
        .bind(i64::try_from(rows).expect("BENCH_ADMIN_ROWS fits in an i64"))
        .execute(&env.state)
        .await
        .expect("fill the outbox");
    println!(
        "{rows} outbox messages stored in {:.1} s (SQLite state DB, serve on {})",
        filled.elapsed().as_secs_f64(),
        env.base
    );
    let session = admin::login(&env.base).await;

    // A cursor half-way down: the message stored at rows / 2, as the page's own links spell it.
    let middle = rows / 2;
    let (created_at, sent_at, recipient): (String, Option<String>, String) = sqlx::query_as(
        "SELECT created_at, sent_at, recipient FROM outbox WHERE id = printf('%032x', $1)",
    )
    .bind(i64::try_from(middle).unwrap_or(0))
    .fetch_one(&env.state)
    .await
    .expect("the middle message");
    let cursor = format!("{created_at}~{middle:032x}~{recipient}");
    // The sent messages are listed by the time they were sent.
    let sent_cursor = format!(
        "{}~{middle:032x}~{recipient}",
        sent_at.as_deref().unwrap_or(&created_at)
    );
    let deep: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("after", &cursor)
        .finish();
    let whole: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("q", &recipient)
        .finish();
    let deep_sent: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("status", "sent")
        .append_pair("after", &sent_cursor)
        .finish();

    let mut pages: Vec<(String, String)> = vec![("no filter".into(), "/admin/outbox".into())];
    for status in [
        "queued",
        "sending",
        "deferred",
        "sent",
        "bounced",
        "suppressed",
        "failed",
    ] {
        pages.push((
            format!("status {status}"),
            format!("/admin/outbox?status={status}"),
        ));
    }
    pages.extend([
        (
            "recipient prefix m12".into(),
            "/admin/outbox?q=m12".to_owned(),
        ),
        ("whole address".into(), format!("/admin/outbox?{whole}")),
        (
            "prefix m1, bounced".into(),
            "/admin/outbox?q=m1&status=bounced".to_owned(),
        ),
        (
            format!("deep page (after message {middle})"),
            format!("/admin/outbox?{deep}"),
        ),
        (
            "deep page, sent".into(),
            format!("/admin/outbox?{deep_sent}"),
        ),
    ]);

    println!(
        "\n{:<40} {:>6} {:>10} {:>10}  under 100 ms",
        "GET /admin/outbox", "rows", "median", "max"
    );
    let mut all_under = true;
    for (name, path) in &pages {
        let (shown, median, max) = time(&session, path, requests).await;
        all_under &= max < Duration::from_millis(100);
        line(name, shown, median, max);
    }
    // A backlog newer than every sent message (a route down for hours): the newest
    // BENCH_ADMIN_BACKLOG sent messages queued again. A listing that walked all messages newest
    // first to find the sent ones read the whole backlog first.
    let backlog = env_u64("BENCH_ADMIN_BACKLOG", 100_000).min(rows / 2);
    if backlog > 0 {
        sqlx::query(
            "UPDATE outbox SET status = 'queued', sent_at = NULL
             WHERE status = 'sent' AND id > printf('%032x', $1)",
        )
        .bind(i64::try_from(rows - backlog).unwrap_or(0))
        .execute(&env.state)
        .await
        .expect("make a backlog");
        for (name, path) in [
            (
                format!("status sent, {backlog} queued newer"),
                "/admin/outbox?status=sent".to_owned(),
            ),
            (
                format!("status queued, {backlog} of them"),
                "/admin/outbox?status=queued".to_owned(),
            ),
        ] {
            let (shown, median, max) = time(&session, &path, requests).await;
            all_under &= max < Duration::from_millis(100);
            line(&name, shown, median, max);
        }
    }
    // For comparison: a page that reads nothing of the outbox (the session, the layout, HTTP).
    let (shown, median, max) = time(&session, "/admin/suppressions", requests).await;
    line("(an empty /admin/suppressions)", shown, median, max);
    println!(
        "\n{requests} requests per page after one untimed; {}",
        if all_under {
            "every page's slowest response was under 100 ms"
        } else {
            "some page's slowest response was not under 100 ms"
        }
    );
}

/// GETs `path` once untimed, then `requests` times: the rows it lists, the median and the slowest
/// response.
async fn time(
    session: &admin::Session,
    path: &str,
    requests: usize,
) -> (usize, Duration, Duration) {
    let shown = listed(&session.page(path).await);
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let html = session.page(path).await;
        times.push(started.elapsed());
        assert_eq!(
            listed(&html),
            shown,
            "{path}: the page changed between requests"
        );
    }
    times.sort();
    (shown, times[times.len() / 2], times[times.len() - 1])
}

fn line(name: &str, shown: usize, median: Duration, max: Duration) {
    let under = max < Duration::from_millis(100);
    println!(
        "{name:<40} {shown:>6} {:>8.1} ms {:>7.1} ms  {}",
        ms(median),
        ms(max),
        if under { "yes" } else { "NO" }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How many messages a page of the outbox lists.
fn listed(html: &str) -> usize {
    html.matches("href=\"/admin/outbox/").count()
}
