//! Ambiguous outcomes (issue 24): a smarthost that took the whole message and then lost its answer
//! (closed the connection, or never replied) may have queued it. Such a message is retried on the
//! same route after the back-off, never handed to the next route in the same pass, keeps its
//! Message-ID, and is counted in `mailbridge_relay_ambiguous_total`. A real aiosmtpd server does
//! the dropping and stalling (`tests/support/smtp/sink.py --after-data`), on SQLite and PostgreSQL state.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use mailbridge::relay::Status;
use smtp::{Sink, SinkOptions};
use support::relay::{Env, counter};
use support::{db, smtp};

/// The counters are process-wide and the tests in this file run in parallel: each test that sends
/// holds this for its whole run, so one test's increments never land between another's readings.
static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AMBIGUOUS_SMTP: &str = "mailbridge_relay_ambiguous_total{route=\"smtp\"}";
const DOWN_SMTP: &str = "mailbridge_relay_route_down_total{route=\"smtp\"}";

/// A fake `sendmail` that logs each recipient to `sendmail.log`; while the file `down` exists
/// beside it, it exits with EX_UNAVAILABLE (69: the local MTA is down) instead.
fn fake_sendmail(dir: &Path) -> PathBuf {
    smtp::stand_in(
        &dir.join("sendmail"),
        &format!(
            "cat > /dev/null\n[ -e '{}' ] && exit 69\nprintf '%s\\n' \"$5\" >> '{}'\n",
            dir.join("down").display(),
            dir.join("sendmail.log").display()
        ),
    )
}

/// A sink in `dir` that keeps the first message and then loses its answer: closes the connection
/// (`drop`) or never replies (`stall`).
fn losing_sink(dir: &Path, mode: &'static str) -> Sink {
    Sink::start(
        dir,
        None,
        &SinkOptions {
            after_data: Some((mode, 1)),
            ..SinkOptions::default()
        },
    )
}

/// A relay with the routes `routes` (TOML list), an SMTP route to `sink` with a 1 s timeout
/// (4 s for a whole transaction), the fake sendmail, and retries due at once.
async fn ambiguous_env(state_url: &str, sink: &Sink, routes: &str) -> Env {
    Env::start(state_url, None, |dir| {
        format!(
            "routes = [{routes}]\nretry_base_secs = 0\nroute_backoff_secs = 0\nsendmail_path = \"{}\"\n[relay.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout_secs = 1\n",
            fake_sendmail(dir).display(),
            sink.port
        )
    })
    .await
    .with_message(
        "Your new password",
        "Follow https://club.example/reset/abc within an hour.\n",
        "password",
    )
}

/// The smarthost keeps the message and then drops the connection (`drop`) or never answers
/// (`stall`): the attempt is ambiguous. Nothing goes out through sendmail in that pass (the
/// likely duplicate); the next pass retries on smtp, with the same Message-ID.
async fn lost_answer_is_retried_on_the_same_route(state_url: &str, mode: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let sink = losing_sink(dir.path(), mode);
    let env = ambiguous_env(state_url, &sink, "\"smtp\", \"sendmail\"").await;
    let q = env.enqueue("ana@example.org").await;
    let (ambiguous_before, down_before) = (counter(AMBIGUOUS_SMTP), counter(DOWN_SMTP));

    let first = env.run_once().await;
    assert_eq!(
        (first.ambiguous, first.sent, first.deferred),
        (1, 0, 0),
        "{mode} on {state_url}: {first:?}"
    );
    assert!(
        env.lines("sendmail.log").is_empty(),
        "{mode}: the next route must not get the message in the same pass"
    );
    assert_eq!(sink.count(), 1, "{mode}: the smarthost kept the message");
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Deferred, "{mode}: {st:?}");
    assert_eq!(st.route.as_deref(), Some("smtp"), "{mode}");
    assert_eq!(st.attempts, 1, "{mode}");
    let reply = st.last_reply.unwrap_or_default();
    assert!(reply.starts_with("outcome unknown: "), "{mode}: {reply}");
    assert_eq!(counter(AMBIGUOUS_SMTP), ambiguous_before + 1.0, "{mode}");
    assert_eq!(
        counter(DOWN_SMTP),
        down_before,
        "{mode}: an ambiguous answer does not take the route down"
    );

    let second = env.run_once().await;
    assert_eq!(
        (second.sent, second.ambiguous),
        (1, 0),
        "{mode}: {second:?}"
    );
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Sent, "{mode}");
    assert_eq!(st.route.as_deref(), Some("smtp"), "{mode}");
    assert_eq!(st.attempts, 2, "{mode}");
    assert!(env.lines("sendmail.log").is_empty(), "{mode}");
    let received = sink.messages();
    assert_eq!(received.len(), 2, "{mode}");
    for m in &received {
        assert_eq!(
            m.header("Message-ID").as_deref(),
            Some(q.message_id.as_str()),
            "{mode}: one Message-ID across the retry"
        );
    }
    env.store.close().await;
}

#[tokio::test]
async fn an_answer_lost_after_data_is_retried_on_the_same_route_not_failed_over() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let _counters = COUNTERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pg = db::pg_database().await;
    let mut urls = vec![format!("sqlite://{}/state.db", dir.path().display())];
    urls.extend(pg.as_ref().map(|db| db.url.clone()));
    let _ = mailbridge::http::metrics::handle();
    for url in &urls {
        for mode in ["drop", "stall"] {
            // A fresh SQLite file per case.
            let url = url.replace("state.db", &format!("state-{mode}.db"));
            lost_answer_is_retried_on_the_same_route(&url, mode).await;
        }
    }
}

/// The route whose answer was lost goes first on the retry, even when an earlier route in the
/// list is back: sendmail was down when smtp lost its answer, and is up again for the retry.
#[tokio::test]
async fn the_retry_goes_to_the_route_that_lost_the_answer_first() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    let _counters = COUNTERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = losing_sink(dir.path(), "drop");
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let env = ambiguous_env(&state, &sink, "\"sendmail\", \"smtp\"").await;
    let down = env.dir.join("down");
    std::fs::write(&down, "").unwrap();
    let q = env.enqueue("ana@example.org").await;
    let first = env.run_once().await;
    assert_eq!(first.ambiguous, 1, "{first:?}");
    assert_eq!(sink.count(), 1);
    std::fs::remove_file(&down).unwrap();
    let second = env.run_once().await;
    assert_eq!(second.sent, 1, "{second:?}");
    let st = env.status(&q.id).await;
    assert_eq!(st.route.as_deref(), Some("smtp"));
    assert_eq!(sink.count(), 2);
    assert!(
        env.lines("sendmail.log").is_empty(),
        "sendmail is back, but the retry belongs to smtp"
    );
    // The next message, with no lost answer behind it, takes the routes in order again.
    let next = env.enqueue("ben@example.org").await;
    assert_eq!(env.run_once().await.sent, 1);
    assert_eq!(
        env.status(&next.id).await.route.as_deref(),
        Some("sendmail")
    );
    assert_eq!(env.lines("sendmail.log"), ["ben@example.org"]);
}
