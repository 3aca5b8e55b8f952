//! The relay against real SMTP servers on loopback (aiosmtpd via tests/support/smtp/sink.py, with STARTTLS
//! and AUTH like a smarthost): delivery and the bytes received, AUTH failure, 421/451 then accept,
//! 550 5.1.1 and suppression, a server that is down then comes back, implicit TLS, the sendmail
//! route with a stand-in binary, quotas, the HTTP API and CLI, and two workers on PostgreSQL.

mod support;

use std::path::Path;
use std::time::Duration;

use mailbridge::relay::outbox::{self, Claimed, Enqueued, MessageStatus};
use mailbridge::relay::{NewMessage, Status, verp};
use support::app;
use support::db;
use support::relay::Env;
use support::smtp::{self, Certs, Sink, SinkOptions};

const USER: &str = "ac12345";
const PASS: &str = "smarthost-secret-pw";

impl Env {
    async fn enqueue_as(&self, to: &str, category: &str) -> Enqueued {
        self.enqueue_message(&message(to, category)).await
    }

    /// `n` messages in `category`, to m0@example.org, m1@example.org, … in that order.
    async fn enqueue_many(&self, n: usize, category: &str) -> Vec<Enqueued> {
        let mut queued = Vec::with_capacity(n);
        for i in 0..n {
            queued.push(
                self.enqueue_as(&format!("m{i}@example.org"), category)
                    .await,
            );
        }
        queued
    }

    /// [`Env::enqueue_many`], keeping the outbox ids.
    async fn enqueue_ids(&self, n: usize, category: &str) -> Vec<String> {
        let queued = self.enqueue_many(n, category).await;
        queued.into_iter().map(|q| q.id).collect()
    }

    /// An outbox on `state_url` whose one route is SMTP: `relay_lines` go into `[relay]`, then
    /// `section` (the `[relay.smtp]` table and anything after it).
    async fn smtp_only(
        dir: tempfile::TempDir,
        state_url: &str,
        relay_lines: &str,
        section: &str,
    ) -> Env {
        let lines = format!("{}{relay_lines}{section}", routes("\"smtp\""));
        Env::in_dir(dir, state_url, None, &lines).await
    }

    /// How many messages are in any state but `sent`.
    async fn not_sent(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status <> 'sent'")
            .fetch_one(self.store.pool())
            .await
            .expect("count unsent");
        n
    }

    /// An outbox on `state_url` whose one route (SMTP to a port nobody listens on) the test never
    /// uses: for tests that claim and record outcomes themselves.
    async fn bookkeeping(dir: tempfile::TempDir, state_url: &str) -> Env {
        let section = smtp::smtp_section(smtp::free_port(), "none", None, None);
        Env::smtp_only(dir, state_url, "", &section).await
    }

    /// `outbox::claim` on this outbox (the same arguments after the store).
    async fn claim(
        &self,
        worker: &str,
        cutoff: &str,
        now: &str,
        lease_until: &str,
        limit: i64,
    ) -> Vec<Claimed> {
        outbox::claim(&self.store, worker, cutoff, now, lease_until, limit)
            .await
            .expect("claim")
    }

    async fn suppressed(&self, email: &str) -> bool {
        outbox::is_suppressed(&self.store, email)
            .await
            .expect("read suppressions")
    }

    /// How many bodies the message has stored (1, or 0 once purged).
    async fn bodies(&self, id: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox_bodies WHERE id = $1")
            .bind(id)
            .fetch_one(self.store.pool())
            .await
            .expect("count bodies");
        n
    }

    /// Records the message as sent at `at`, and created and last updated then too.
    async fn sent_at(&self, id: &str, at: &str) {
        sqlx::query(
            "UPDATE outbox SET status = 'sent', created_at = $1, updated_at = $1, sent_at = $1
             WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(self.store.pool())
        .await
        .expect("date the message");
    }

    async fn raw(&self, id: &str) -> Vec<u8> {
        let (raw,): (Vec<u8>,) = sqlx::query_as("SELECT raw FROM outbox_bodies WHERE id = $1")
            .bind(id)
            .fetch_one(self.store.pool())
            .await
            .expect("read raw");
        raw
    }
}

/// The message's last reply, empty when it has none.
fn reply(st: &MessageStatus) -> &str {
    st.last_reply.as_deref().unwrap_or("")
}

fn message(to: &str, category: &str) -> NewMessage {
    NewMessage {
        to: to.into(),
        subject: "Bitte bestätigen Sie Ihre Anmeldung".into(),
        text: "Hallo,\n\nbitte bestätigen: https://club.example/confirm/abc\n".into(),
        html: Some(
            "<p>Hallo, <a href=\"https://club.example/confirm/abc\">bestätigen</a></p>".into(),
        ),
        reply_to: Some("office@club.example".into()),
        headers: [("X-Club-Ref".to_owned(), "reg-42".to_owned())].into(),
        category: category.into(),
    }
}

/// A sink that requires STARTTLS and AUTH, with `extra` options, and the `[relay]` lines for it.
fn smarthost(dir: &Path, certs: &Certs, extra: SinkOptions) -> (Sink, String) {
    smtp::smarthost(dir, certs, (USER, PASS), extra)
}

const FAST_RETRY: &str = "retry_base_secs = 0\nroute_backoff_secs = 0\n";

fn routes(list: &str) -> String {
    format!("routes = [{list}]\n{FAST_RETRY}")
}

/// A directory with a private CA and a server certificate signed by it ([`smtp::certs`]), for
/// an aiosmtpd server; `None` (the test is skipped) when aiosmtpd is missing outside CI.
fn tls_dir() -> Option<(tempfile::TempDir, Certs)> {
    if !smtp::aiosmtpd_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = smtp::certs(dir.path());
    Some((dir, certs))
}

/// An aiosmtpd smarthost requiring STARTTLS and AUTH, and the path of a config with SQLite state
/// whose relay sends through it, in the returned directory; `None` as for [`tls_dir`].
fn smarthost_config() -> Option<(tempfile::TempDir, Sink, std::path::PathBuf)> {
    let (dir, certs) = tls_dir()?;
    let (sink, section) = smarthost(dir.path(), &certs, SinkOptions::default());
    let config = smtp::relay_config(
        dir.path(),
        "sqlite://state.db",
        &format!("{}{section}", routes("\"smtp\"")),
    );
    Some((dir, sink, config))
}

/// The usual set-up: an aiosmtpd smarthost requiring STARTTLS and AUTH (with `opts`) and a
/// relay with SQLite state sending through it; `relay_lines` go into `[relay]`, `smtp_lines` into
/// `[relay.smtp]`. `None` (the test is skipped) when aiosmtpd is missing outside CI.
async fn smarthost_env(
    opts: SinkOptions,
    relay_lines: &str,
    smtp_lines: &str,
) -> Option<(Env, Sink)> {
    smarthost_env_on("sqlite://state.db", opts, relay_lines, smtp_lines).await
}

/// [`smarthost_env`] on the state DB `state_url`.
async fn smarthost_env_on(
    state_url: &str,
    opts: SinkOptions,
    relay_lines: &str,
    smtp_lines: &str,
) -> Option<(Env, Sink)> {
    let (dir, certs) = tls_dir()?;
    let (sink, section) = smarthost(dir.path(), &certs, opts);
    let section = format!("{section}{smtp_lines}");
    Some((
        Env::smtp_only(dir, state_url, relay_lines, &section).await,
        sink,
    ))
}

/// [`smarthost_env`] with its state on a fresh PostgreSQL database (kept alive by the returned
/// guard); `None` when aiosmtpd or PostgreSQL is missing outside CI.
async fn pg_smarthost_env() -> Option<(db::TestDb, Env, Sink)> {
    if !smtp::aiosmtpd_available() {
        return None;
    }
    let db = db::pg_database().await?;
    let (env, sink) = smarthost_env_on(&db.url, SinkOptions::default(), "", "").await?;
    Some((db, env, sink))
}

/// Runs `check` on a bookkeeping outbox ([`Env::bookkeeping`]) on each state DB in turn: SQLite,
/// and PostgreSQL when it is reachable (a failure under CI), with its URL for failure messages;
/// the store is closed after each.
async fn on_each_bookkeeping_env(check: impl AsyncFn(&str, &Env)) {
    db::on_each_state_db(async |url| {
        let env = Env::bookkeeping(tempfile::tempdir().expect("temp dir"), url).await;
        check(url, &env).await;
        env.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn delivers_over_starttls_with_auth_and_the_bytes_arrive_unchanged() {
    let verp = "bounce_domain = \"bounces.club.example\"\nverp_secret = \"verp-key\"\n";
    let Some((env, sink)) = smarthost_env(SinkOptions::default(), verp, "").await else {
        return;
    };
    let q = env
        .enqueue_as("Ana.Example@Example.org", "registration")
        .await;
    assert_eq!(env.status(&q.id).await.status, Status::Queued);

    let summary = env.run_once().await;
    assert_eq!(summary.sent, 1, "{summary:?}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let stored = env.raw(&q.id).await;
    assert!(
        m.raw == stored || m.raw == [stored.as_slice(), b"\r\n"].concat(),
        "received bytes differ from the stored rendering:\n{}\n---\n{}",
        m.text(),
        String::from_utf8_lossy(&stored)
    );
    assert_eq!(
        m.header("Message-ID").as_deref(),
        Some(q.message_id.as_str())
    );
    assert!(q.message_id.ends_with("@club.example>"), "{}", q.message_id);
    assert_eq!(m.header("To").as_deref(), Some("Ana.Example@Example.org"));
    assert!(m.header("From").unwrap().contains("<club@club.example>"));
    assert!(
        m.header("Subject").unwrap().contains("=?utf-8?"),
        "encoded subject"
    );
    assert_eq!(m.header("X-Club-Ref").as_deref(), Some("reg-42"));
    assert!(m.header("Date").is_some());
    assert!(m.text().contains("multipart/alternative"));
    assert_eq!(m.rcpt_tos, vec!["ana.example@example.org".to_owned()]);
    // The sink offers PIPELINING: MAIL, RCPT and DATA came in one write.
    assert!(m.pipelined, "MAIL, RCPT and DATA were not pipelined");
    // VERP Return-Path names this message and verifies under the secret.
    assert_eq!(
        verp::decode(&m.mail_from, "bounces.club.example", b"verp-key").unwrap(),
        q.id
    );
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.attempts, 1);
    assert_eq!(st.route.as_deref(), Some("smtp"));
    assert!(reply(&st).starts_with("250"), "{st:?}");
}

#[tokio::test]
async fn wrong_password_keeps_the_message_queued_and_suppresses_nothing() {
    let Some((dir, certs)) = tls_dir() else {
        return;
    };
    let (sink, _) = smarthost(dir.path(), &certs, SinkOptions::default());
    let section = smtp::smtp_section(
        sink.port,
        "starttls",
        Some(&certs),
        Some((USER, "wrong-password-xyz")),
    );
    // The route stays skipped for a minute after the failure: the second message meets a route
    // already known to be misconfigured, and must stay queued too (not deferred toward failure).
    let env = Env::in_dir(
        dir,
        "sqlite://state.db", None,
        &format!("routes = [\"smtp\"]\nconcurrency = 1\nretry_base_secs = 0\nroute_backoff_secs = 60\n{section}"),
    )
    .await;
    let q = env.enqueue_as("ana@example.org", "password").await;
    let q2 = env.enqueue_as("ben@example.org", "registration").await;
    let summary = env.run_once().await;
    assert_eq!(summary.sent, 0);
    assert_eq!(summary.waiting, 2, "{summary:?}");
    assert_eq!(summary.deferred, 0, "{summary:?}");
    assert_eq!(summary.misconfigured_routes, ["smtp"]);
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Queued, "{st:?}");
    assert!(reply(&st).starts_with("535"), "{st:?}");
    assert!(!st.last_reply.unwrap().contains("wrong-password-xyz"));
    let st2 = env.status(&q2.id).await;
    assert_eq!(st2.status, Status::Queued, "{st2:?}");
    assert!(!env.suppressed("ana@example.org").await);
    assert!(!env.suppressed("ben@example.org").await);
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn a_451_defers_and_the_retry_sends_the_same_message_once() {
    let opts = SinkOptions {
        rcpt_fail: Some(("451 4.3.0 Try again later".into(), 1)),
        ..Default::default()
    };
    let Some((env, sink)) = smarthost_env(opts, "", "").await else {
        return;
    };
    let q = env.enqueue_as("ana@example.org", "registration").await;
    let first = env.run_once().await;
    assert_eq!(first.deferred, 1, "{first:?}");
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Deferred);
    assert_eq!(st.attempts, 1);
    assert!(reply(&st).starts_with("451"), "{st:?}");
    assert!(st.next_attempt_at.is_some());
    assert_eq!(sink.count(), 0);

    let second = env.run_once().await;
    assert_eq!(second.sent, 1, "{second:?}");
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.attempts, 2);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("Message-ID").as_deref(),
        Some(q.message_id.as_str())
    );
}

#[tokio::test]
async fn a_421_takes_the_route_down_then_the_message_goes_through() {
    let opts = SinkOptions {
        mail_fail: Some(("421 4.3.2 Service shutting down".into(), 1)),
        ..Default::default()
    };
    let Some((env, sink)) = smarthost_env(opts, "", "").await else {
        return;
    };
    let q = env.enqueue_as("ana@example.org", "notification").await;
    assert_eq!(env.run_once().await.deferred, 1);
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Deferred);
    assert!(reply(&st).starts_with("421"), "{st:?}");
    assert_eq!(env.run_once().await.sent, 1);
    assert_eq!(env.status(&q.id).await.status, Status::Sent);
    assert_eq!(sink.count(), 1);
}

/// A smarthost that ends each connection after one message, as Exim does after
/// `smtp_accept_max_per_connection` (a 421 to the next MAIL FROM) or a server that closes it
/// silently: the pooled connection's failure is not the route's. Every message goes out in the
/// one run, on a new connection, with nothing deferred and the route never taken down.
#[tokio::test]
async fn a_connection_the_server_ended_is_replaced_without_deferring_the_message() {
    for reply in ["", "421 4.7.0 Too many messages on this connection"] {
        let opts = SinkOptions {
            per_connection: Some((1, reply.into())),
            ..Default::default()
        };
        // One connection: every message after the first finds the pooled one ended.
        let Some((env, sink)) = smarthost_env(opts, "concurrency = 1\n", "").await else {
            return;
        };
        let mut ids = Vec::new();
        for to in ["ana@example.org", "ben@example.org", "cy@example.org"] {
            ids.push(env.enqueue_as(to, "notification").await.id);
        }
        let run = env.run_once().await;
        assert_eq!((run.sent, run.deferred), (3, 0), "reply {reply:?}: {run:?}");
        for id in &ids {
            assert_eq!(env.status(id).await.status, Status::Sent, "reply {reply:?}");
        }
        assert_eq!(sink.count(), 3, "reply {reply:?}");
    }
}

/// A smarthost that does not offer PIPELINING (RFC 2920) gets MAIL, RCPT and DATA one at a time;
/// a message goes through and a refused recipient bounces with the server's own reply, as with
/// pipelining.
#[tokio::test]
async fn a_server_without_pipelining_gets_one_command_at_a_time() {
    let opts = SinkOptions {
        no_pipelining: true,
        reject: vec![(
            "gone@example.org".into(),
            "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown".into(),
        )],
        ..Default::default()
    };
    let Some((env, sink)) = smarthost_env(opts, "concurrency = 1\n", "").await else {
        return;
    };
    let ok = env.enqueue_as("ana@example.org", "notification").await;
    let gone = env.enqueue_as("gone@example.org", "notification").await;
    let run = env.run_once().await;
    assert_eq!((run.sent, run.bounced), (1, 1), "{run:?}");
    assert_eq!(env.status(&ok.id).await.status, Status::Sent);
    let st = env.status(&gone.id).await;
    assert_eq!(st.status, Status::Bounced);
    assert!(reply(&st).contains("5.1.1"), "{st:?}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, vec!["ana@example.org".to_owned()]);
    assert!(
        !got[0].pipelined,
        "commands were pipelined to a server that did not offer it"
    );
}

/// An operator lifted an address's suppression (`lifted_at`); a new hard bounce suppresses it
/// again rather than leaving it lifted behind the old entry.
#[tokio::test]
async fn a_hard_bounce_reinstates_a_lifted_suppression() {
    let opts = SinkOptions {
        reject: vec![(
            "gone@example.org".into(),
            "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown".into(),
        )],
        ..Default::default()
    };
    let Some((env, _sink)) = smarthost_env(opts, "", "").await else {
        return;
    };
    sqlx::query(
        "INSERT INTO suppressions (email, reason, source, detail, created_at, lifted_at)
         VALUES ('gone@example.org', 'spam_complaint', 'mailchimp', NULL,
                 '2026-01-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z')",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    assert!(!env.suppressed("gone@example.org").await);
    env.enqueue_as("gone@example.org", "notification").await;
    assert_eq!(env.run_once().await.bounced, 1);
    assert!(env.suppressed("gone@example.org").await);
    let (reason, lifted): (String, Option<String>) = sqlx::query_as(
        "SELECT reason, lifted_at FROM suppressions WHERE email = 'gone@example.org'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!((reason.as_str(), lifted), ("hard_bounce", None));
}

#[tokio::test]
async fn a_hard_bounce_suppresses_the_address_and_the_next_message_is_not_sent() {
    let opts = SinkOptions {
        reject: vec![(
            "gone@example.org".into(),
            "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown".into(),
        )],
        ..Default::default()
    };
    let Some((env, sink)) = smarthost_env(opts, "allow_password_to_suppressed = true\n", "").await
    else {
        return;
    };
    let q = env.enqueue_as("gone@example.org", "registration").await;
    let ok = env.enqueue_as("ana@example.org", "registration").await;
    let summary = env.run_once().await;
    assert_eq!((summary.bounced, summary.sent), (1, 1), "{summary:?}");
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Bounced);
    assert!(reply(&st).contains("5.1.1"), "{st:?}");
    assert!(env.suppressed("gone@example.org").await);
    assert!(!env.suppressed("ana@example.org").await);
    assert_eq!(env.status(&ok.id).await.status, Status::Sent);

    // The next message to that address is not sent: suppressed at enqueue.
    let next = env.enqueue_as("Gone@Example.org", "notification").await;
    assert_eq!(env.status(&next.id).await.status, Status::Suppressed);
    // A password mail is allowed through by the operator setting (and bounces again here).
    let pw = env.enqueue_as("gone@example.org", "password").await;
    assert_eq!(env.status(&pw.id).await.status, Status::Queued);
    let summary = env.run_once().await;
    assert_eq!(summary.bounced, 1, "{summary:?}");
    assert_eq!(env.status(&next.id).await.status, Status::Suppressed);
    assert_eq!(sink.count(), 1, "only the good address received mail");
}

/// A one-click opt-out recorded after a notification was queued holds it back at send time
/// (the worker reads opt-outs with the suppression list); a password mail to the same address
/// still goes.
#[tokio::test]
async fn a_notification_queued_before_its_recipient_opted_out_is_not_sent() {
    let Some((env, sink)) = smarthost_env(
        SinkOptions::default(),
        "unsubscribe_secret = \"one-click-secret\"\n",
        "",
    )
    .await
    else {
        return;
    };
    let news = env.enqueue_as("ana@example.org", "notification").await;
    let pw = env.enqueue_as("ana@example.org", "password").await;
    let other = env.enqueue_as("ben@example.org", "notification").await;
    assert_eq!(env.status(&news.id).await.status, Status::Queued);
    let email = mailbridge::domain::Email::parse("ana@example.org").unwrap();
    let token = mailbridge::relay::unsubscribe::token(
        b"one-click-secret",
        &email,
        mailbridge::relay::Category::Notification,
    )
    .unwrap();
    mailbridge::events::opt_out::opt_out(
        &env.store,
        Some(&env.relay),
        &token,
        mailbridge::relay::unsubscribe::Via::Https,
    )
    .await
    .unwrap();
    let summary = env.run_once().await;
    assert_eq!((summary.sent, summary.suppressed), (2, 1), "{summary:?}");
    let st = env.status(&news.id).await;
    assert_eq!(st.status, Status::Suppressed);
    assert!(reply(&st).contains("unsubscribed"), "{st:?}");
    assert_eq!(env.status(&pw.id).await.status, Status::Sent);
    assert_eq!(env.status(&other.id).await.status, Status::Sent);
    assert_eq!(sink.count(), 2);
}

#[tokio::test]
async fn a_server_that_is_down_defers_and_delivery_resumes_when_it_is_back() {
    let Some((dir, certs)) = tls_dir() else {
        return;
    };
    let port = smtp::free_port();
    let section = smtp::smtp_section(port, "starttls", Some(&certs), Some((USER, PASS)));
    let sink_dir = dir.path().to_owned();
    let env = Env::smtp_only(dir, "sqlite://state.db", "", &section).await;
    let q = env.enqueue_as("ana@example.org", "registration").await;
    assert_eq!(env.run_once().await.deferred, 1);
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Deferred);
    assert!(reply(&st).starts_with("unreachable"), "{st:?}");

    let sink = Sink::start(
        &sink_dir,
        Some(&certs),
        &SinkOptions {
            port,
            starttls: true,
            auth: Some((USER.into(), PASS.into())),
            ..Default::default()
        },
    );
    assert_eq!(env.run_once().await.sent, 1);
    assert_eq!(env.status(&q.id).await.status, Status::Sent);
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn implicit_tls_route_delivers() {
    let Some((dir, certs)) = tls_dir() else {
        return;
    };
    let sink = Sink::start(
        dir.path(),
        Some(&certs),
        &SinkOptions {
            implicit_tls: true,
            auth: Some((USER.into(), PASS.into())),
            ..Default::default()
        },
    );
    let section = smtp::smtp_section(sink.port, "tls", Some(&certs), Some((USER, PASS)));
    let env = Env::smtp_only(dir, "sqlite://state.db", "", &section).await;
    let q = env.enqueue_as("ana@example.org", "password").await;
    assert_eq!(env.run_once().await.sent, 1);
    assert_eq!(env.status(&q.id).await.status, Status::Sent);
    assert_eq!(sink.messages()[0].header("Message-ID"), Some(q.message_id));
}

#[tokio::test]
async fn an_untrusted_certificate_is_not_accepted() {
    let Some((dir, certs)) = tls_dir() else {
        return;
    };
    let (sink, _) = smarthost(dir.path(), &certs, SinkOptions::default());
    // No ca_file: the private CA is not trusted, so STARTTLS fails and nothing is sent in clear.
    let section = smtp::smtp_section(sink.port, "starttls", None, Some((USER, PASS)));
    let env = Env::smtp_only(dir, "sqlite://state.db", "", &section).await;
    let q = env.enqueue_as("ana@example.org", "registration").await;
    env.run_once().await;
    let st = env.status(&q.id).await;
    assert_ne!(st.status, Status::Sent, "{st:?}");
    assert_eq!(sink.count(), 0);
}

/// A stand-in sendmail that records its arguments and input, then exits with `code`.
fn fake_sendmail(dir: &Path, code: i32) -> std::path::PathBuf {
    smtp::stand_in(
        &dir.join("sendmail"),
        &format!(
            "printf '%s\\n' \"$@\" > '{d}/sendmail.args'\ncat > '{d}/sendmail.input'\necho 'stand-in sendmail' >&2\nexit {code}\n",
            d = dir.display()
        ),
    )
}

/// A SQLite-state environment whose `sendmail` route is the stand-in above (exit 0), with
/// `routes` in that order and `extra` appended to `[relay]`. Returns the env and the directory
/// the stand-in writes its arguments and input to.
async fn sendmail_env(routes_list: &str, extra: &str) -> (Env, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = fake_sendmail(dir.path(), 0);
    let d = dir.path().to_owned();
    let env = Env::in_dir(
        dir,
        "sqlite://state.db",
        None,
        &format!(
            "{}sendmail_path = \"{}\"\n{extra}",
            routes(routes_list),
            bin.display()
        ),
    )
    .await;
    (env, d)
}

#[tokio::test]
async fn the_sendmail_route_pipes_the_message_to_the_local_mta() {
    let (env, d) = sendmail_env("\"sendmail\"", "").await;
    let q = env.enqueue_as("ana@example.org", "registration").await;
    assert_eq!(env.run_once().await.sent, 1);
    let st = env.status(&q.id).await;
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.route.as_deref(), Some("sendmail"));
    let args = std::fs::read_to_string(d.join("sendmail.args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        ["-i", "-f", "club@club.example", "--", "ana@example.org"]
    );
    let input = std::fs::read(d.join("sendmail.input")).unwrap();
    let stored = String::from_utf8(env.raw(&q.id).await).unwrap();
    assert_eq!(
        String::from_utf8(input).unwrap(),
        stored.replace("\r\n", "\n")
    );
}

#[tokio::test]
async fn a_down_smarthost_fails_over_to_sendmail_but_a_refused_recipient_does_not() {
    let port = smtp::free_port();
    let section = smtp::smtp_section(port, "none", None, None);
    let (env, d) = sendmail_env("\"smtp\", \"sendmail\"", &section).await;
    let q = env.enqueue_as("ana@example.org", "registration").await;
    assert_eq!(env.run_once().await.sent, 1);
    let st = env.status(&q.id).await;
    assert_eq!(st.route.as_deref(), Some("sendmail"), "{st:?}");
    assert!(d.join("sendmail.input").exists());

    // sendmail exit 67 (EX_NOUSER) is a recipient refusal: bounced and suppressed.
    let dir2 = tempfile::tempdir().unwrap();
    let bin = fake_sendmail(dir2.path(), 67);
    let env = Env::in_dir(
        dir2,
        "sqlite://state.db",
        None,
        &format!(
            "{}sendmail_path = \"{}\"\n",
            routes("\"sendmail\""),
            bin.display()
        ),
    )
    .await;
    let q = env.enqueue_as("nobody@example.org", "registration").await;
    assert_eq!(env.run_once().await.bounced, 1);
    assert_eq!(env.status(&q.id).await.status, Status::Bounced);
    assert!(env.suppressed("nobody@example.org").await);
}

#[tokio::test]
async fn messages_over_the_monthly_quota_wait_and_alerts_are_counted() {
    let _ = mailbridge::http::metrics::handle();
    let Some((env, sink)) = smarthost_env(SinkOptions::default(), "", "monthly_quota = 2\n").await
    else {
        return;
    };
    let ids = env.enqueue_ids(3, "notification").await;
    let summary = env.run_once().await;
    assert_eq!((summary.sent, summary.waiting), (2, 1), "{summary:?}");
    assert_eq!(sink.count(), 2);
    let mut waiting = 0;
    for id in &ids {
        let st = env.status(id).await;
        if st.status == Status::Queued {
            waiting += 1;
            assert!(reply(&st).contains("monthly_quota"), "{st:?}");
        }
    }
    assert_eq!(waiting, 1);
    let text = mailbridge::http::metrics::render();
    assert!(
        text.contains(
            "mailbridge_quota_alerts_total{kind=\"monthly_quota\",limit=\"smtp\",threshold=\"95\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("mailbridge_relay_quota_used{route=\"smtp\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_hourly_limit_holds_messages_back() {
    let (env, _) = sendmail_env("\"sendmail\"", "hourly_limit = 1\n").await;
    env.enqueue_as("a@example.org", "notification").await;
    env.enqueue_as("b@example.org", "notification").await;
    let summary = env.run_once().await;
    assert_eq!((summary.sent, summary.waiting), (1, 1), "{summary:?}");
}

/// Two workers, leases shorter than one worker's queue: the messages a worker could not reach
/// within its lease are left to the other's claim instead of being sent by both. Only a send
/// that straddles the end of its lease can go out twice (at least once allows it).
#[tokio::test]
async fn a_message_whose_lease_ran_out_in_the_queue_is_not_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.log");
    let bin = smtp::stand_in(
        &dir.path().join("slow-sendmail"),
        &format!(
            "sleep 0.05\ncat > /dev/null\nprintf '%s\\n' \"$5\" >> '{}'\n",
            log.display()
        ),
    );
    let env = Env::in_dir(
        dir,
        "sqlite://state.db",
        None,
        &format!(
            "{}sendmail_path = \"{}\"\nconcurrency = 1\nlease_secs = 1\n",
            routes("\"sendmail\""),
            bin.display()
        ),
    )
    .await;
    let n = 40;
    env.enqueue_many(n, "notification").await;
    let a = env.worker();
    let b = env.worker();
    let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for line in lines.lines() {
        *seen.entry(line).or_default() += 1;
    }
    assert_eq!(seen.len(), n, "every message delivered: {ra:?} {rb:?}");
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= 2,
        "{duplicates} duplicate(s); only sends straddling a lease's end may repeat"
    );
    assert_eq!(env.not_sent().await, 0, "every message is recorded as sent");
}

/// The hourly limit holds across claims: the next batch is claimed while the previous one is
/// still being sent, and its room must count those messages too.
#[tokio::test]
async fn the_hourly_limit_holds_across_claims() {
    let (env, _) = sendmail_env("\"sendmail\"", "hourly_limit = 70\nconcurrency = 1\n").await;
    // Claims are 64 messages per unit of concurrency: 150 messages take three claims.
    env.enqueue_many(150, "notification").await;
    let summary = env.run_once().await;
    assert_eq!((summary.sent, summary.waiting), (70, 80), "{summary:?}");
}

#[tokio::test]
async fn http_api_queues_reports_status_and_refuses_bad_input() {
    let Some((_dir, sink, path)) = smarthost_config() else {
        return;
    };
    let state = app::app_state(app::load_config(&path)).await;
    let server = app::start_http(state.clone()).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let count = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(state.store.pool())
            .await
            .unwrap();
        n
    };

    // POST /v1/messages with the API token.
    let send = |body: &serde_json::Value| {
        let request = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth("test-token")
            .json(body);
        async move { request.send().await.unwrap() }
    };
    let body = serde_json::json!({
        "to": "ana@example.org",
        "subject": "Your password",
        "text": "Your new password link: https://club.example/pw/xyz",
        "category": "password",
    });
    let r = http
        .post(format!("{base}/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(count().await, 0);

    for (bad, field) in [
        (
            serde_json::json!({"to": "nope", "subject": "s", "text": "t", "category": "password"}),
            "to",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s\r\nBcc: x@evil.example", "text": "t", "category": "password"}),
            "subject",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s", "text": "t", "category": "password", "headers": {"X-A": "1\nBcc: x@evil.example"}}),
            "headers.X-A",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s", "text": "x".repeat(1_000_001), "category": "password"}),
            "text",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s", "text": "t", "category": "newsletter"}),
            "category",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s", "text": "t"}),
            "category",
        ),
        (
            serde_json::json!({"to": 5, "subject": "s", "text": "t", "category": "password"}),
            "to",
        ),
        (
            serde_json::json!({"to": "a@example.org", "subject": "s", "text": "t", "category": "password", "headers": {"X-A": 1}}),
            "headers.X-A",
        ),
    ] {
        let r = send(&bad).await;
        let status = r.status();
        let err: serde_json::Value = r.json().await.unwrap_or_default();
        // Every one reaches the field checks: a part over max_message_bytes is named too.
        assert_eq!(status, 400, "{field}: {err}");
        let msg = err["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("`{field}`")), "{field}: {err}");
    }
    // A body over the route's limit (a text and an HTML part of max_message_bytes each, JSON
    // escaped) is refused before it is read, in the same JSON shape.
    let huge = serde_json::json!({"to": "a@example.org", "subject": "s", "text": "x".repeat(7 << 20), "category": "password"});
    let r = send(&huge).await;
    assert_eq!(r.status(), 413);
    let err: serde_json::Value = r.json().await.expect("a JSON error body");
    assert_eq!(err["error"]["code"], "body_too_large", "{err}");
    assert_eq!(count().await, 0, "nothing was queued for bad input");

    let r = send(&body).await;
    assert_eq!(r.status(), 202);
    let created: serde_json::Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["message_id"].as_str().unwrap().starts_with('<'));
    assert_eq!(count().await, 1, "committed before the 202");

    let get = || async {
        http.get(format!("{base}/v1/messages/{id}"))
            .bearer_auth("test-token")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(get().await["status"], "queued");

    // serve's worker, woken by the enqueue.
    mailbridge::http::serve::spawn_background(&state);
    let r = send(&body).await;
    assert_eq!(r.status(), 202);
    sink.wait_for_async(2, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = get().await;
        if s["status"] == "sent" {
            assert_eq!(s["route"], "smtp");
            assert_eq!(s["attempts"], 1);
            assert!(s["last_reply"].as_str().unwrap().starts_with("250"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not sent: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http
        .get(format!("{base}/v1/messages/unknown"))
        .bearer_auth("test-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = app::metrics_text(&base).await;
    assert!(
        metrics.contains("mailbridge_relay_messages_total{route=\"smtp\",outcome=\"sent\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(PASS));
    // A text and an HTML part just under max_message_bytes each: together over the server's
    // general 1 MiB body limit, and still a valid message.
    let before = count().await;
    let r = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth("test-token")
        .json(&serde_json::json!({
            "to": "big@example.org", "subject": "A long newsletter", "category": "notification",
            "text": "é".repeat(499_999), "html": format!("<p>{}</p>", "x".repeat(999_990)),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    assert_eq!(count().await, before + 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cli_send_and_relay_once() {
    let Some((_dir, sink, config)) = smarthost_config() else {
        return;
    };
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(db::binary())
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &[
            "send",
            "--to",
            "ana@example.org",
            "--subject",
            "Ihr Benutzername",
            "--text",
            "-",
            "--category",
            "password",
            "--json",
        ],
        "Ihr Benutzername ist: ana\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        sent["id"].is_string() && sent["message_id"].is_string(),
        "{sent}"
    );

    let bad = run(
        &[
            "send",
            "--to",
            "ana@example.org",
            "--subject",
            "a\nb",
            "--text",
            "-",
        ],
        "x",
    );
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--subject"));

    let out = run(&["relay", "--once", "--json"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["sent"], 1,
        "only the good message was queued: {summary}"
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("Message-ID").as_deref(),
        sent["message_id"].as_str()
    );
    assert!(got[0].text().contains("Ihr Benutzername ist: ana"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASS));

    // A wrong password: relay --once exits 1, names the route, and keeps the message queued.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(PASS, "wrong-pw-123")).unwrap();
    let out = run(
        &[
            "send",
            "--to",
            "bob@example.org",
            "--subject",
            "Hi",
            "--text",
            "-",
        ],
        "x\n",
    );
    assert!(out.status.success());
    let out = run(&["relay", "--once"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("misconfigured route(s): smtp"), "{stderr}");
    assert!(!stderr.contains("wrong-pw-123"), "{stderr}");
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn two_workers_on_postgresql_deliver_every_message_exactly_once() {
    let Some((_db, env, sink)) = pg_smarthost_env().await else {
        return;
    };
    // Several claims' worth, so both workers get some: on PostgreSQL a claim is 256 per unit of
    // concurrency (1,024 at this environment's 4).
    let n = 2500;
    let ids: std::collections::HashSet<String> = env
        .enqueue_many(n, "notification")
        .await
        .into_iter()
        .map(|q| q.message_id)
        .collect();
    let w1 = env.worker();
    let w2 = env.worker();
    let (a, b) = tokio::join!(w1.run_once(), w2.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.sent + b.sent, n as u64, "{a:?} {b:?}");
    assert!(
        a.sent > 0 && b.sent > 0,
        "both workers took a share: {a:?} {b:?}"
    );
    let got = sink.messages();
    let received: Vec<String> = got.iter().filter_map(|m| m.header("Message-ID")).collect();
    let unique: std::collections::HashSet<_> = received.iter().cloned().collect();
    assert_eq!(received.len(), n, "no duplicates");
    assert_eq!(unique, ids, "every message arrived");
    assert_eq!(env.not_sent().await, 0);
    env.store.close().await;
}

#[tokio::test]
async fn a_message_undelivered_past_max_age_fails() {
    let port = smtp::free_port();
    let section = smtp::smtp_section(port, "none", None, None);
    let dir = tempfile::tempdir().unwrap();
    let relay_lines = "max_age_hours = 72\nconcurrency = 1\n";
    let env = Env::smtp_only(dir, "sqlite://state.db", relay_lines, &section).await;
    // One at a time, the old message first: its turn is a real attempt at the route.
    let old = env.enqueue_as("ana@example.org", "registration").await;
    let fresh = env.enqueue_as("bob@example.org", "registration").await;
    sqlx::query("UPDATE outbox SET created_at = '2000-01-01T00:00:00.000Z' WHERE id = $1")
        .bind(&old.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let summary = env.run_once().await;
    assert_eq!((summary.failed, summary.deferred), (1, 1), "{summary:?}");
    let st = env.status(&old.id).await;
    assert_eq!(st.status, Status::Failed);
    assert!(st.last_reply.unwrap().contains("gave up after 72 hours"));
    assert_eq!(st.attempts, 1, "the last attempt counts");
    assert_eq!(st.route.as_deref(), Some("smtp"));
    assert_eq!(env.status(&fresh.id).await.status, Status::Deferred);
}

#[tokio::test]
async fn a_dead_workers_expired_lease_is_taken_over_on_postgresql() {
    let Some((_db, env, sink)) = pg_smarthost_env().await else {
        return;
    };
    let q = env.enqueue_as("ana@example.org", "registration").await;
    let now = mailbridge_now();
    // A worker claims the message and dies; its lease is already over.
    let claimed = env
        .claim("dead-worker", &now, &now, "2000-01-01T00:00:00.000Z", 10)
        .await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(env.status(&q.id).await.status, Status::Sending);
    // A live worker does not see a leased message twice while the lease holds…
    let again = env
        .claim(
            "other",
            &now,
            "1999-01-01T00:00:00.000Z",
            "2100-01-01T00:00:00.000Z",
            10,
        )
        .await;
    assert!(again.is_empty());
    // …and takes it over once it ran out.
    assert_eq!(env.run_once().await.sent, 1);
    assert_eq!(sink.count(), 1);
    // The dead worker's late outcome is not recorded over the new one.
    let late = outbox::finish(
        &env.store,
        "dead-worker",
        &claimed[0],
        &outbox::Outcome::Failed {
            route: None,
            reply: "late".into(),
            attempted: false,
        },
    )
    .await
    .unwrap();
    assert!(!late);
    assert_eq!(env.status(&q.id).await.status, Status::Sent);
    env.store.close().await;
}

fn mailbridge_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A worker records a batch of sent messages while another worker has taken one of them over:
/// the batch records the others, not the taken one (whose lease the other worker holds), and the
/// other worker's outcome is then recorded. Runs on SQLite and, when it is reachable, PostgreSQL.
#[tokio::test]
async fn a_batch_of_outcomes_skips_the_message_another_worker_took_over() {
    on_each_bookkeeping_env(async |url, env| {
        let ids = env.enqueue_ids(3, "registration").await;
        let now = mailbridge_now();
        // Worker A claims all three; its lease is already over.
        let a = env
            .claim("worker-a", &now, &now, "2000-01-01T00:00:00.000Z", 10)
            .await;
        assert_eq!(a.len(), 3, "{url}");
        // Worker B takes one of them over.
        let b = env
            .claim("worker-b", &now, &now, "2100-01-01T00:00:00.000Z", 1)
            .await;
        assert_eq!(b.len(), 1, "{url}");
        let taken = b[0].id.clone();
        let sent = outbox::Outcome::Sent {
            route: "smtp".into(),
            reply: "250 2.0.0 Ok: queued".into(),
        };
        // A smarthost's reply names its queue id: each message has its own, recorded as is
        // (quotes, backslashes and non-ASCII included). PostgreSQL's text cannot hold NUL: it
        // is stored as U+FFFD.
        let on_pg = url.starts_with("postgres");
        let replies: Vec<(String, String)> = (0..a.len())
            .map(|i| {
                let sent = format!("250 2.0.0 Ok: queued as 4F1A{i:04X} \"ü\\\"");
                if on_pg && i == 0 {
                    (format!("{sent}\0"), format!("{sent}\u{FFFD}"))
                } else {
                    (sent.clone(), sent)
                }
            })
            .collect();
        let outcomes: Vec<outbox::Outcome> = replies
            .iter()
            .map(|(reply, _)| outbox::Outcome::Sent {
                route: "smtp".into(),
                reply: reply.clone(),
            })
            .collect();
        let batch: Vec<(&outbox::Claimed, &outbox::Outcome)> = a.iter().zip(&outcomes).collect();
        let kept = outbox::finish_many(&env.store, "worker-a", &batch)
            .await
            .unwrap();
        for ((msg, kept), (_, stored)) in a.iter().zip(&kept).zip(&replies) {
            assert_eq!(*kept, msg.id != taken, "{url}: {}", msg.id);
            let status = env.status(&msg.id).await;
            if msg.id == taken {
                assert_eq!(status.status, Status::Sending, "{url}: {}", msg.id);
            } else {
                assert_eq!(status.status, Status::Sent, "{url}: {}", msg.id);
                assert_eq!(status.last_reply.as_deref(), Some(stored.as_str()), "{url}");
                assert_eq!(status.route.as_deref(), Some("smtp"), "{url}");
                assert!(status.sent_at.is_some(), "{url}");
            }
        }
        // Worker B still holds its lease and records its own outcome.
        assert!(
            outbox::finish(&env.store, "worker-b", &b[0], &sent)
                .await
                .unwrap(),
            "{url}"
        );
        for id in &ids {
            let status = env.status(id).await;
            assert_eq!(status.status, Status::Sent, "{url}: {id}");
            assert_eq!(status.attempts, 1, "{url}: {id}");
        }
    })
    .await;
}

/// A claim takes due messages oldest first across queued, deferred and expired-lease ones, takes
/// no more than its limit, and leaves messages that are not yet due or leased to a live worker.
#[tokio::test]
async fn a_claim_takes_due_messages_oldest_first_whatever_their_state() {
    on_each_bookkeeping_env(async |url, env| {
        let ids = env.enqueue_ids(6, "registration").await;
        // Give each message its own state and due time (minutes after 10:00).
        let set = |id: &str, status: &str, minute: u32, lease: Option<&str>| {
            let (id, status, lease) = (id.to_owned(), status.to_owned(), lease.map(str::to_owned));
            let store = env.store.clone();
            async move {
                sqlx::query(
                    "UPDATE outbox SET status = $1, next_attempt_at = $2, lease_until = $3,
                         leased_by = CASE WHEN $3 IS NULL THEN NULL ELSE 'someone' END
                     WHERE id = $4",
                )
                .bind(status)
                .bind(format!("2026-01-01T10:{minute:02}:00.000Z"))
                .bind(lease)
                .bind(id)
                .execute(store.pool())
                .await
                .unwrap();
            }
        };
        set(&ids[0], "deferred", 5, None).await; // due, 3rd oldest
        set(&ids[1], "queued", 9, None).await; // due, 4th
        set(&ids[2], "sending", 1, Some("2026-01-01T10:30:00.000Z")).await; // lease over: 1st
        set(&ids[3], "sending", 0, Some("2099-01-01T00:00:00.000Z")).await; // live lease: never
        set(&ids[4], "queued", 3, None).await; // due, 2nd
        set(&ids[5], "deferred", 50, None).await; // not due before 10:50
        let cutoff = "2026-01-01T10:40:00.000Z";
        let first = env
            .claim("w", cutoff, cutoff, "2099-01-01T00:00:00.000Z", 3)
            .await;
        let mut got: Vec<&str> = first.iter().map(|m| m.id.as_str()).collect();
        got.sort();
        let mut want = vec![ids[2].as_str(), ids[4].as_str(), ids[0].as_str()];
        want.sort();
        assert_eq!(got, want, "{url}: the three oldest due messages");
        let rest = env
            .claim("w", cutoff, cutoff, "2099-01-01T00:00:00.000Z", 10)
            .await;
        let rest: Vec<&str> = rest.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            rest,
            vec![ids[1].as_str()],
            "{url}: then the last due one, and only it"
        );
    })
    .await;
}

/// `relay --once` ends only when no message is left in `sending`: one whose lease ran out between
/// its last claim and its idle check is claimed again, not left behind (the crash test once lost
/// a whole batch that way). `pending` tells live and expired leases apart.
#[tokio::test]
async fn pending_tells_live_leases_from_expired_ones() {
    on_each_bookkeeping_env(async |url, env| {
        env.enqueue_as("dead@example.org", "registration").await;
        env.enqueue_as("live@example.org", "registration").await;
        let now = mailbridge_now();
        let early = "1999-01-01T00:00:00.000Z";
        let dead = env
            .claim("dead", &now, early, "2000-01-01T00:00:00.000Z", 1)
            .await;
        let live = env
            .claim("live", &now, early, "2100-01-01T00:00:00.000Z", 1)
            .await;
        assert_eq!((dead.len(), live.len()), (1, 1), "{url}");
        assert_ne!(dead[0].id, live[0].id, "{url}");
        let pending = outbox::pending(&env.store, &mailbridge_now())
            .await
            .unwrap();
        assert_eq!(pending.waiting, 0, "{url}");
        assert_eq!(pending.leased, 1, "{url}: the live lease");
        assert_eq!(pending.expired, 1, "{url}: the dead worker's lease");
        assert_eq!(
            pending.lease_end.as_deref(),
            Some("2100-01-01T00:00:00.000Z"),
            "{url}"
        );
    })
    .await;
}

/// `purge_bodies` deletes the bytes of messages that are done (sent, bounced, suppressed,
/// failed) with an outcome before the cutoff, and nothing else: not a pending message's (it would
/// be sent without them), not one whose outcome is recent. The rows stay, so the status API
/// still answers. 2,500 old messages in front make the SQLite purge take several batches.
#[tokio::test]
async fn purge_deletes_only_the_bytes_of_messages_done_before_the_cutoff() {
    on_each_bookkeeping_env(async |url, env| {
        let old = "2026-10-01T00:00:00.000Z";
        sqlx::query(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
             INSERT INTO outbox (id, message_id, recipient, category, status, attempts,
                 next_attempt_at, envelope_from, route, sent_at, created_at, updated_at)
             SELECT 'bulk' || i, '<bulk' || i || '@club.example>', 'bulk' || i || '@example.org',
                 'notification', 'sent', 1, $1, 'club@club.example', 'smtp', $1, $1, $1
             FROM n",
        )
        .bind(old)
        .execute(env.store.pool())
        .await
        .unwrap();
        sqlx::query("INSERT INTO outbox_bodies (id, raw) SELECT id, $1 FROM outbox")
            .bind(b"Subject: bulk\r\n\r\nold".to_vec())
            .execute(env.store.pool())
            .await
            .unwrap();
        let ids = env.enqueue_ids(7, "password").await;
        let set = |id: &str, status: &str, created: &str, updated: &str| {
            let (id, status, created, updated) = (
                id.to_owned(),
                status.to_owned(),
                created.to_owned(),
                updated.to_owned(),
            );
            let store = env.store.clone();
            async move {
                sqlx::query(
                    "UPDATE outbox SET status = $1, created_at = $2, updated_at = $3,
                         next_attempt_at = $3 WHERE id = $4",
                )
                .bind(status)
                .bind(created)
                .bind(updated)
                .bind(id)
                .execute(store.pool())
                .await
                .unwrap();
            }
        };
        let recent = "2026-11-05T00:00:00.000Z";
        set(&ids[0], "deferred", old, old).await; // pending: kept
        set(&ids[1], "sent", old, old).await; // purged
        set(&ids[2], "sent", "2026-10-20T00:00:00.000Z", recent).await; // recent outcome: kept
        set(&ids[3], "bounced", old, old).await; // purged
        set(&ids[4], "failed", old, old).await; // purged
        set(&ids[5], "suppressed", old, old).await; // purged
        set(&ids[6], "queued", "2026-11-10T00:00:00.000Z", recent).await; // kept
        let mut pending_bytes = std::collections::HashMap::new();
        for id in [&ids[0], &ids[6]] {
            pending_bytes.insert(id.clone(), env.raw(id).await);
        }
        let cutoff = "2026-11-01T00:00:00.000Z";
        let purged = outbox::purge_bodies(&env.store, cutoff).await.unwrap();
        assert_eq!(purged, 2504, "{url}");
        let mut left: Vec<(String,)> = sqlx::query_as("SELECT id FROM outbox_bodies")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
        left.sort();
        let mut want = vec![ids[0].clone(), ids[2].clone(), ids[6].clone()];
        want.sort();
        assert_eq!(
            left.into_iter().map(|(id,)| id).collect::<Vec<_>>(),
            want,
            "{url}"
        );
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 2507, "{url}: every row stays");
        assert_eq!(env.status(&ids[1]).await.status, Status::Sent, "{url}");
        assert_eq!(
            outbox::purge_bodies(&env.store, cutoff).await.unwrap(),
            0,
            "{url}: nothing left to purge"
        );
        // The pending messages still have their bytes: a claim reads them.
        let later = "2026-12-01T00:00:00.000Z";
        let mut claimed = env.claim("w", later, later, later, 10).await;
        claimed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = vec![ids[0].clone(), ids[6].clone()];
        want.sort();
        assert_eq!(
            claimed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            want,
            "{url}"
        );
        for c in &claimed {
            assert_eq!(c.raw, pending_bytes[&c.id], "{url}: {}'s bytes", c.id);
        }
    })
    .await;
}

/// `relay --once` deletes the bytes of messages done more than `body_retention_days` ago and
/// says how many; a message sent since keeps them.
#[tokio::test]
async fn relay_once_purges_bodies_past_the_retention() {
    let Some((env, sink)) =
        smarthost_env(SinkOptions::default(), "body_retention_days = 7\n", "").await
    else {
        return;
    };
    let old = env.enqueue_as("old@example.org", "registration").await;
    let first = env.run_once().await;
    assert_eq!((first.sent, first.purged), (1, 0), "{first:?}");
    // Sent eight days ago, as far as the outbox knows.
    let eight_days_ago = (chrono::Utc::now() - chrono::Duration::days(8))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    env.sent_at(&old.id, &eight_days_ago).await;
    let new = env.enqueue_as("new@example.org", "registration").await;
    let second = env.run_once().await;
    assert_eq!((second.sent, second.purged), (1, 1), "{second:?}");
    assert_eq!(sink.count(), 2);
    let left = env.bodies(&old.id).await;
    assert_eq!(left, 0, "the old message's bytes are gone");
    assert!(!env.raw(&new.id).await.is_empty(), "the new one keeps them");
    assert_eq!(env.status(&old.id).await.status, Status::Sent);
}

/// The continuous worker (`mailbridge relay`, `serve`) deletes old bodies too, once it has
/// nothing to deliver.
#[tokio::test]
async fn the_continuous_worker_purges_bodies_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::bookkeeping(dir, "sqlite://state.db").await;
    let done = env.enqueue_as("old@example.org", "registration").await;
    env.sent_at(&done.id, "2020-01-01T00:00:00.000Z").await;
    let worker = env.worker();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(stop, None).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = env.bodies(&done.id).await;
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle worker did not delete the old body"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(env.status(&done.id).await.status, Status::Sent);
}

/// A server's reply is recorded whatever bytes it holds: on PostgreSQL, whose text cannot hold
/// NUL, a NUL becomes U+FFFD instead of failing the outcome (and the message's every retry).
#[tokio::test]
async fn a_reply_with_a_nul_is_recorded() {
    on_each_bookkeeping_env(async |url, env| {
        let id = env.enqueue_as("ana@example.org", "registration").await.id;
        let now = mailbridge_now();
        let claimed = env
            .claim("w", &now, &now, "2100-01-01T00:00:00.000Z", 1)
            .await;
        assert_eq!(claimed.len(), 1, "{url}");
        let deferred = outbox::Outcome::Deferred {
            route: Some("smtp".into()),
            reply: "451 4.3.0 try\0 later".into(),
            next_attempt_at: "2100-01-01T00:00:00.000Z".into(),
            attempted: true,
        };
        assert!(
            outbox::finish(&env.store, "w", &claimed[0], &deferred)
                .await
                .unwrap(),
            "{url}"
        );
        let status = env.status(&id).await;
        assert_eq!(status.status, Status::Deferred, "{url}");
        let want = if url.starts_with("postgres") {
            "451 4.3.0 try\u{FFFD} later"
        } else {
            "451 4.3.0 try\0 later"
        };
        assert_eq!(status.last_reply.as_deref(), Some(want), "{url}");
    })
    .await;
}
