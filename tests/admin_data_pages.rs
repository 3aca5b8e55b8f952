//! The admin pages over the data of tests/admin_data.rs, through a real `serve` and its login
//! form (issue 21): the outbox paged through its links, filtered and searched, a message's
//! history and "Retry now"; the suppression list and lifting a bounce (never an opt-out); the
//! members needing attention. Forms without their CSRF token change nothing; what a server or a
//! member DB wrote is escaped. The same flows in a real browser are in tests/admin_browser.rs.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use support::admin::{self, Session, next_link};
use support::serve::{Env, Options};

async fn env(pg_state: bool) -> Env {
    Env::start(Options {
        pg_state,
        extra_server: admin::section(),
        ..Options::default()
    })
    .await
}

/// Stores message `i` (id `m{i:03}`) to `to` in `status`, `minutes` past ten.
async fn message(env: &Env, i: u32, to: &str, status: &str, reply: &str) {
    sqlx::query(
        "INSERT INTO outbox (id, message_id, recipient, category, status, attempts,
             next_attempt_at, last_reply, route, created_at, updated_at, sent_at)
         VALUES ($1, $2, $3, 'registration', $4, 1, $5, $6, 'smtp', $5, $5,
             CASE WHEN $4 = 'sent' THEN $5 END)",
    )
    .bind(format!("m{i:03}"))
    .bind(format!("<m{i:03}@club.example>"))
    .bind(to)
    .bind(status)
    .bind(format!("2026-12-13T10:{:02}:{:02}.000Z", i / 60, i % 60))
    .bind(reply)
    .execute(&env.state)
    .await
    .unwrap();
}

async fn status_of(env: &Env, id: &str) -> String {
    let (s,): (String,) = sqlx::query_as("SELECT status FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&env.state)
        .await
        .unwrap();
    s
}

/// The message ids linked from a page of the outbox, in order.
fn listed(html: &str) -> Vec<String> {
    html.split("href=\"/admin/outbox/m")
        .skip(1)
        .map(|s| format!("m{}", &s[..3]))
        .collect()
}

async fn outbox_pages(pg_state: bool) {
    let env = env(pg_state).await;
    for i in 0..120 {
        let (to, status) = match i % 6 {
            0 => ("anna@example.org", "deferred"),
            1 => ("anna@other.net", "sent"),
            2 => ("bob@example.org", "failed"),
            3 => ("bob@example.org", "sent"),
            4 => ("cleo@example.org", "bounced"),
            _ => ("dan@example.org", "sent"),
        };
        message(&env, i, to, status, "250 2.0.0 <b>queued</b>").await;
    }
    sqlx::query(
        "INSERT INTO outbox_attempts (outbox_id, attempt, at, outcome, route, reply)
         VALUES ('m006', 1, '2026-12-13T10:00:07.000Z', 'deferred', 'smtp', '451 4.7.1 <greylisted>')",
    )
    .execute(&env.state)
    .await
    .unwrap();
    let s = admin::login(&env.base).await;

    // Every message once, 50 to a page, newest first, through the pages' own links.
    let mut pages = vec![s.page("/admin/outbox").await];
    while let Some(next) = next_link(pages.last().unwrap()) {
        assert!(next.starts_with("/admin/outbox?after="), "{next}");
        pages.push(s.page(&next).await);
        assert!(pages.len() < 10, "the pages never end");
    }
    let ids: Vec<String> = pages.iter().flat_map(|p| listed(p)).collect();
    assert_eq!(
        pages.iter().map(|p| listed(p).len()).collect::<Vec<_>>(),
        [50, 50, 20]
    );
    let mut want: Vec<String> = (0..120).map(|i| format!("m{i:03}")).collect();
    want.reverse();
    assert_eq!(ids, want);
    let first = &pages[0];
    assert!(
        first.contains("deferred (20)") && first.contains("queued (0)"),
        "the counts"
    );
    assert!(
        first.contains(">All</a>") && first.contains(">sent</a>"),
        "all and sent are not counted"
    );
    assert!(
        first.contains("&lt;b&gt;queued&lt;/b&gt;") && !first.contains("<b>queued"),
        "a server's reply is escaped"
    );
    // Retry buttons on deferred and failed messages only.
    assert_eq!(
        first.matches("Retry now").count(),
        16,
        "8 deferred and 8 failed of the first 50"
    );

    // A status.
    let deferred = s.page("/admin/outbox?status=deferred").await;
    let ids = listed(&deferred);
    assert_eq!(ids.len(), 20);
    assert!(
        ids.iter()
            .all(|id| id[1..].parse::<u32>().unwrap() % 6 == 0)
    );
    // A recipient search: by address, then newest first; the status stays in the links.
    let search = s.page("/admin/outbox?q=BOB%40&status=sent").await;
    let ids = listed(&search);
    assert_eq!(ids.len(), 20, "bob's sent messages");
    assert!(
        ids.iter()
            .all(|id| id[1..].parse::<u32>().unwrap() % 6 == 3)
    );
    let anna = s.page("/admin/outbox?q=anna").await;
    let ids = listed(&anna);
    assert_eq!(ids.len(), 40);
    let (first_half, second_half) = ids.split_at(20);
    assert!(
        first_half
            .iter()
            .all(|id| id[1..].parse::<u32>().unwrap() % 6 == 0),
        "anna@example.org first"
    );
    assert!(
        second_half
            .iter()
            .all(|id| id[1..].parse::<u32>().unwrap() % 6 == 1)
    );
    for bad in ["/admin/outbox?status=lost", "/admin/outbox?after=nonsense"] {
        assert_eq!(s.get(bad).await.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // A message: its history, escaped, and "Retry now".
    let page = s.page("/admin/outbox/m006").await;
    assert!(page.contains("451 4.7.1 &lt;greylisted&gt;"), "{page}");
    assert!(page.contains("action=\"/admin/outbox/m006/retry\""));
    let refused = s.post("/admin/outbox/m006/retry", &[], false).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        status_of(&env, "m006").await,
        "deferred",
        "nothing done without the token"
    );
    let retried = s.post("/admin/outbox/m006/retry", &[], true).await;
    assert_eq!(retried.status(), StatusCode::SEE_OTHER);
    assert_eq!(retried.headers()[LOCATION], "/admin/outbox/m006?retried=1");
    assert_eq!(status_of(&env, "m006").await, "queued");
    let page = s.page("/admin/outbox/m006?retried=1").await;
    assert!(page.contains("Back in the queue"));
    assert!(page.contains("requeued"), "the history says so");
    // Twice, a sent message, a bounced one whose address is suppressed, an unknown one.
    assert_eq!(
        s.post("/admin/outbox/m006/retry", &[], true).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        s.post("/admin/outbox/m001/retry", &[], true).await.status(),
        StatusCode::CONFLICT
    );
    sqlx::query(
        "INSERT INTO suppressions (email, reason, source, created_at) VALUES ('cleo@example.org', 'hard_bounce', 'relay:smtp', 't')",
    )
    .execute(&env.state)
    .await
    .unwrap();
    let bounced = s.post("/admin/outbox/m004/retry", &[], true).await;
    assert_eq!(bounced.status(), StatusCode::CONFLICT);
    assert!(
        bounced
            .text()
            .await
            .unwrap()
            .contains("suppression list (hard_bounce)")
    );
    assert_eq!(
        s.post("/admin/outbox/nope/retry", &[], true).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/admin/outbox/nope").await.status(),
        StatusCode::NOT_FOUND
    );

    // Logged out: the pages send to the login.
    let out = admin::client()
        .get(format!("{}/admin/outbox", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/admin/login")
    );
}

#[tokio::test]
async fn outbox_pages_sqlite_state_db() {
    outbox_pages(false).await;
}

#[tokio::test]
async fn outbox_pages_postgres_state_db() {
    outbox_pages(true).await;
}

async fn suppress(env: &Env, email: &str, reason: &str) {
    sqlx::query(
        "INSERT INTO suppressions (email, reason, source, detail, created_at)
         VALUES ($1, $2, 'relay:smtp', '550 <no such user>', '2026-12-13T10:00:00.000Z')",
    )
    .bind(email)
    .bind(reason)
    .execute(&env.state)
    .await
    .unwrap();
}

async fn is_suppressed(env: &Env, email: &str) -> bool {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT email FROM suppressions WHERE email = $1 AND lifted_at IS NULL")
            .bind(email)
            .fetch_optional(&env.state)
            .await
            .unwrap();
    row.is_some()
}

/// Lifts `email` with `why`; the response.
async fn lift(s: &Session, email: &str, why: &str, with_csrf: bool) -> reqwest::Response {
    s.post(
        "/admin/suppressions/lift",
        &[("email", email), ("why", why)],
        with_csrf,
    )
    .await
}

#[tokio::test]
async fn the_suppression_list_lifts_a_bounce_with_a_reason_and_never_an_opt_out() {
    let env = env(false).await;
    suppress(&env, "gone@example.org", "hard_bounce").await;
    suppress(&env, "full@example.org", "soft_bounce").await;
    suppress(&env, "angry@example.org", "spam_complaint").await;
    for i in 0..60 {
        suppress(&env, &format!("z{i:02}@example.org"), "hard_bounce").await;
    }
    let s = admin::login(&env.base).await;
    let page = s.page("/admin/suppressions").await;
    assert!(page.contains("angry@example.org") && page.contains("An opt-out: not lifted here"));
    assert_eq!(
        page.matches("action=\"/admin/suppressions/lift\"").count(),
        49,
        "a lift form per bounce of the first 50"
    );
    assert!(page.contains("550 &lt;no such user&gt;"));
    let second = s.page(&next_link(&page).expect("a second page")).await;
    assert!(second.contains("z59@example.org") && !second.contains("angry@"));
    let search = s.page("/admin/suppressions?q=GONE").await;
    assert!(search.contains("gone@example.org") && !search.contains("full@example.org"));

    // Without the token, without a reason, or an opt-out: refused, nothing changes.
    assert_eq!(
        lift(&s, "gone@example.org", "fixed", false).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        lift(&s, "gone@example.org", "  ", true).await.status(),
        StatusCode::BAD_REQUEST
    );
    let opt_out = lift(&s, "angry@example.org", "they asked", true).await;
    assert_eq!(opt_out.status(), StatusCode::CONFLICT);
    assert!(opt_out.text().await.unwrap().contains("consent opt-out"));
    assert!(is_suppressed(&env, "gone@example.org").await);
    assert!(is_suppressed(&env, "angry@example.org").await);

    let lifted = lift(&s, "gone@example.org", "the member fixed the mailbox", true).await;
    assert_eq!(lifted.status(), StatusCode::SEE_OTHER);
    let to = lifted.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(to, "/admin/suppressions?lifted=gone%40example.org");
    assert!(!is_suppressed(&env, "gone@example.org").await);
    let page = s.page(&to).await;
    assert!(page.contains("Lifted: gone@example.org gets mail again"));
    assert!(
        !page.contains(">gone@example.org</td>"),
        "no longer in force"
    );
    let history = s.page("/admin/suppressions?show=lifted").await;
    assert!(
        history.contains("gone@example.org") && history.contains("the member fixed the mailbox")
    );
    assert!(
        history.contains("admin (password login from 127.0.0.1)"),
        "who lifted it"
    );
    // The notice names an address only when it was lifted.
    let forged = s
        .page("/admin/suppressions?lifted=angry%40example.org")
        .await;
    assert!(!forged.contains("Lifted: angry"));
    assert_eq!(
        lift(&s, "gone@example.org", "again", true).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_attention_page_says_why_and_what_to_do() {
    let env = env(false).await;
    for sql in [
        "INSERT INTO audiences (name, provider, list_id, created_at) VALUES ('news', 'mailchimp', 'l1', 't')",
        "INSERT INTO sync_runs (run_id, audience, provider, status, started_at, finished_at, report)
         VALUES ('run-1', 'news', 'mailchimp', 'partial', '2026-12-13T09:00:00.000Z', '2026-12-13T09:01:00.000Z',
                 '{\"skipped\": [{\"member_key\": \"7\", \"email\": \"<seven>\", \"code\": \"invalid_email\", \"message\": \"not an address\"}]}')",
        "INSERT INTO sync_errors (run_id, audience, member_key, email, code, message, created_at)
         VALUES ('run-1', 'news', '4', 'four@example.org', 'invalid_resource', 'refused the field <BIRTHDAY>', '2026-12-13T09:00:30.000Z')",
        "INSERT INTO contacts (audience, member_key, email, content_hash, remote_status, synced_at)
         VALUES ('news', '2', 'two@example.org', 'h', 'subscribed', '2026-12-13T08:00:00.000Z')",
        "INSERT INTO suppressions (email, reason, source, created_at) VALUES ('two@example.org', 'hard_bounce', 'relay:smtp', '2026-12-13T10:00:00.000Z')",
    ] {
        sqlx::query(sql).execute(&env.state).await.unwrap();
    }
    let s = admin::login(&env.base).await;
    let page = s.page("/admin/attention").await;
    for text in [
        "All (3)",
        "Last push failed (1)",
        "Invalid address (1)",
        "Address bounced (1)",
        "refused the field &lt;BIRTHDAY&gt;",
        "&lt;seven&gt;",
        "href=\"/admin/runs/run-1\"",
        "href=\"/admin/suppressions?q=two%40example.org\"",
        "lift its suppression",
    ] {
        assert!(page.contains(text), "{text} missing:\n{page}");
    }
    let rows: BTreeSet<&str> = ["four@example.org", "two@example.org"].into();
    assert!(rows.iter().all(|e| page.contains(e)));
    let one = s.page("/admin/attention?concern=bounced").await;
    assert!(one.contains("two@example.org") && !one.contains("four@example.org"));
    assert!(one.contains("What to do:"));
    assert_eq!(
        s.get("/admin/attention?concern=nonsense").await.status(),
        StatusCode::BAD_REQUEST
    );
}
