//! Bounce ingest's environment: members 1 to 4 synced to the simulator's list, a relay with VERP
//! on, `[server]` with the API token and the soft-bounce rule, and the helpers the bounce tests
//! repeat (a sent message, ingest and write-back, what changed).

use mailbridge::bounces::BounceReport;
use mailbridge::bounces::ingest::{self, Ingest, IngestResult};
use mailbridge::events::apply::SoftBouncePolicy;
use mailbridge::relay::outbox;
use mailbridge::sync::apply::SyncOptions;

use super::app::SimApp;
use super::{Kind, db};

pub const DOMAIN: &str = "bounces.club.example";
pub const SECRET: &str = "verp-test-secret";
pub const TOKEN: &str = "test-token";

pub struct Env {
    pub app: SimApp,
}

impl std::ops::Deref for Env {
    type Target = SimApp;
    fn deref(&self) -> &SimApp {
        &self.app
    }
}

/// Members 1 to 4 synced to the simulator's list, a relay with VERP on, and (with `writeback`)
/// the shipped mapping's writeback statements.
pub async fn start(kind: Kind, writeback: bool) -> Option<Env> {
    start_with(kind, writeback, "").await
}

/// [`start`], with `sections` appended to the config (`[bounces.imap]`, say).
pub async fn start_with(kind: Kind, writeback: bool, sections: &str) -> Option<Env> {
    let relay = format!(
        "routes = [\"sendmail\"]\nsendmail_path = \"/bin/true\"\nbounce_domain = \"{DOMAIN}\"\nverp_secret = \"{SECRET}\"\n"
    );
    let shipped = std::fs::read_to_string(db::shipped_mapping()).unwrap();
    let mapping = if writeback {
        shipped
    } else {
        let cut = shipped.find("# Provider events written back").unwrap();
        shipped[..cut].to_owned()
    };
    let app = SimApp::start(
        kind,
        Kind::Sqlite,
        false,
        (1..=4).map(|i| db::member_row(i, "full", true)),
        |c| {
            c.mapping_text(mapping)
                .relay(&relay)
                .server(&format!(
                    "api_token = \"{TOKEN}\"\nsoft_bounce_threshold = 3\nsoft_bounce_window_days = 30\n"
                ))
                .extra(sections)
        },
    )
    .await?;
    let env = Env { app };
    let first = env.sync().await;
    assert_eq!(first.created, 4, "{first:?}");
    Some(env)
}

impl Env {
    pub fn ctx(&self) -> Ingest<'_> {
        Ingest {
            store: &self.store,
            relay: self.config.relay.as_ref(),
        }
    }

    pub async fn sync(&self) -> mailbridge::sync::report::RunReport {
        let parts: &super::app::Parts = &self.app.app;
        parts
            .sync_with(&parts.fast_client(), SyncOptions::default())
            .await
            .unwrap()
    }

    /// A message to `to`, handed to the relay's route (marked sent: delivery is the relay's
    /// tests' subject).
    pub async fn sent_to(&self, to: &str) -> outbox::Enqueued {
        let msg = mailbridge::relay::NewMessage {
            to: to.into(),
            subject: "Welcome".into(),
            text: "Welcome to the club.\n".into(),
            html: None,
            reply_to: None,
            headers: Default::default(),
            category: "registration".into(),
        };
        let queued = outbox::enqueue(&self.store, self.config.relay.as_ref().unwrap(), &msg)
            .await
            .unwrap();
        sqlx::query("UPDATE outbox SET status = 'sent' WHERE id = $1")
            .bind(&queued.id)
            .execute(self.store.pool())
            .await
            .unwrap();
        queued
    }

    pub async fn ingest(&self, report: &BounceReport, raw: &str) -> IngestResult {
        ingest::ingest_report(self.ctx(), report, raw.as_bytes(), false)
            .await
            .unwrap()
    }

    /// Writes the stored events `ids` back, as `bounce ingest` and `bounce fetch` do.
    pub async fn apply(&self, ids: &[i64]) {
        let applied = mailbridge::events::apply_now(
            &self.mapping,
            &self.store,
            &self.source,
            SoftBouncePolicy::of_config(&self.config),
            ids,
        )
        .await
        .unwrap();
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    }

    /// Ingests and writes the events back, as `bounce ingest` does.
    pub async fn ingest_and_apply(&self, report: &BounceReport, raw: &str) -> IngestResult {
        let result = self.ingest(report, raw).await;
        let applied = mailbridge::events::apply_now(
            &self.mapping,
            &self.store,
            &self.source,
            SoftBouncePolicy::of_config(&self.config),
            &result.event_ids,
        )
        .await
        .unwrap();
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
        result
    }

    pub async fn status(&self, id: &str) -> outbox::MessageStatus {
        outbox::get(&self.store, id).await.unwrap().unwrap()
    }

    pub async fn suppression(&self, email: &str) -> Option<(String, String)> {
        sqlx::query_as("SELECT reason, source FROM suppressions WHERE email = $1")
            .bind(email)
            .fetch_optional(self.store.pool())
            .await
            .unwrap()
    }

    pub async fn member_status(&self, id: i64) -> String {
        let (s,): (String,) = sqlx::query_as("SELECT email_status FROM members WHERE id = $1")
            .bind(id)
            .fetch_one(&self.members)
            .await
            .unwrap();
        s
    }

    /// How many bounce mails are recorded.
    pub async fn mails(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bounce_messages")
            .fetch_one(self.store.pool())
            .await
            .unwrap();
        n
    }

    /// Everything a bounce may change (the record of the mail itself aside), to compare before
    /// and after.
    pub async fn snapshot(&self) -> String {
        let q = |sql: &'static str| async move {
            let rows: Vec<(String,)> = sqlx::query_as(sql)
                .fetch_all(self.store.pool())
                .await
                .unwrap();
            rows.into_iter().map(|(r,)| r).collect::<Vec<_>>().join("|")
        };
        let members: Vec<(String,)> =
            sqlx::query_as("SELECT email_status FROM members ORDER BY id")
                .fetch_all(&self.members)
                .await
                .unwrap();
        format!(
            "outbox={} suppressions={} events={} members={:?}",
            q("SELECT id || ':' || status || ':' || COALESCE(last_reply, '') FROM outbox ORDER BY id").await,
            q("SELECT email || ':' || reason FROM suppressions ORDER BY email").await,
            q("SELECT CAST(id AS TEXT) || ':' || event_type FROM provider_events ORDER BY id").await,
            members
        )
    }
}

/// Polls `sql` (a count) on the state DB until it is `want`, for at most 10 s: the bounce worker
/// runs beside the request.
pub async fn wait_count(env: &Env, sql: &'static str, want: i64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
        if n == want {
            return;
        }
        assert!(std::time::Instant::now() < until, "{sql}: {n}, not {want}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn command(env: &Env, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(db::binary())
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Postfix DSN (RFC 3464) for `rcpt`, to the envelope sender `verp_to`, returning the headers
/// of `message_id`.
pub fn postfix_dsn(verp_to: &str, rcpt: &str, message_id: &str) -> String {
    format!(
        "Return-Path: <>\r
Delivered-To: {verp_to}\r
Received: by mail.club.example (Postfix) id 4F1A2B3C4D; Mon,  7 Dec 2026 10:00:05 +0000 (UTC)\r
Date: Mon,  7 Dec 2026 10:00:05 +0000 (UTC)\r
From: MAILER-DAEMON@mail.club.example (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: {verp_to}\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"4F1A2B3C4D.1796637605/mail.club.example\"\r
Message-Id: <20261207100005.4F1A2B3C4D@mail.club.example>\r
\r
This is a MIME-encapsulated message.\r
\r
--4F1A2B3C4D.1796637605/mail.club.example\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is the mail system at host mail.club.example.\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients. It's attached below.\r
\r
<{rcpt}>: host mx.example.org[192.0.2.10] said: 550 5.1.1 <{rcpt}>:\r
    Recipient address rejected: User unknown in virtual mailbox table (in reply\r
    to RCPT TO command)\r
\r
--4F1A2B3C4D.1796637605/mail.club.example\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mail.club.example\r
X-Postfix-Queue-ID: 4F1A2B3C4D\r
X-Postfix-Sender: rfc822; {verp_to}\r
Arrival-Date: Mon,  7 Dec 2026 10:00:04 +0000 (UTC)\r
\r
Final-Recipient: rfc822; {rcpt}\r
Original-Recipient: rfc822;{rcpt}\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mx.example.org\r
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User\r
    unknown in virtual mailbox table\r
\r
--4F1A2B3C4D.1796637605/mail.club.example\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Return-Path: <{verp_to}>\r
From: Riverside Rowing Club <club@club.example>\r
To: {rcpt}\r
Subject: Welcome\r
Message-ID: {message_id}\r
Date: Mon,  7 Dec 2026 10:00:00 +0000\r
\r
--4F1A2B3C4D.1796637605/mail.club.example--\r
"
    )
}
