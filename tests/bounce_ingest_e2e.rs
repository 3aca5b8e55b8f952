//! Bounce ingest end to end, through the real parser (`bounces::parse`): bounce mail as an MTA
//! writes it (a Postfix DSN, an ARF complaint, an auto-reply) goes in through the command's
//! stdin (an MTA pipe alias) or `POST /v1/bounces`, and the outbox, the suppression list and the
//! member DB change, or not.

#![allow(clippy::unwrap_used)]

mod support;

use mailbridge::relay::outbox;
use mailbridge::relay::verp;
use support::Kind;
use support::bounces::{DOMAIN, SECRET, TOKEN, command, postfix_dsn, start, wait_count};

/// A test per state DB kind.
macro_rules! parser_tests {
    ($check:ident: $($name:ident => $kind:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $check(Kind::$kind).await;
            }
        )+
    };
}

/// An ARF (RFC 5965) abuse report about `message_id`, sent to `verp_to`, the recipient redacted.
fn arf_complaint(verp_to: &str, message_id: &str) -> String {
    format!(
        "From: feedback@fbl.example.net\r
To: {verp_to}\r
Subject: FW: Welcome\r
Date: Mon, 7 Dec 2026 12:00:00 +0000\r
Message-ID: <fbl-1@fbl.example.net>\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r
\r
--arf\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is an email abuse report for an email message received from IP 192.0.2.1.\r
\r
--arf\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: SomeGenerator/1.0\r
Version: 1\r
Original-Mail-From: <{verp_to}>\r
Arrival-Date: Mon, 7 Dec 2026 10:00:00 +0000\r
Source-IP: 192.0.2.1\r
Reported-Domain: club.example\r
\r
--arf\r
Content-Type: text/rfc822-headers\r
\r
Return-Path: <{verp_to}>\r
From: Riverside Rowing Club <club@club.example>\r
Subject: Welcome\r
Message-ID: {message_id}\r
Date: Mon, 7 Dec 2026 10:00:00 +0000\r
\r
--arf--\r
"
    )
}

fn vacation_reply(verp_to: &str) -> String {
    format!(
        "From: m1@example.org\r
To: {verp_to}\r
Subject: Out of office: Welcome\r
Auto-Submitted: auto-replied\r
X-Autoreply: yes\r
Date: Mon, 7 Dec 2026 10:05:00 +0000\r
Message-ID: <ooo-1@example.org>\r
\r
I am on holiday until January and will read your mail when I am back.\r
"
    )
}

fn verp_of(id: &str) -> String {
    verp::encode(id, DOMAIN, SECRET.as_bytes())
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn a_postfix_dsn_through_the_pipe(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    let dsn = postfix_dsn(&verp_of(&msg.id), "m2@example.org", &msg.message_id);

    // A forged VERP address (another message's id under this tag) is refused: exit 1.
    let forged = dsn.replace(&msg.id, &"0".repeat(msg.id.len()));
    let before = env.snapshot().await;
    let (code, out, err) = command(&env, &["bounce", "ingest", "--json"], forged.as_bytes());
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(json(&out)["outcome"], "refused");
    assert_eq!(env.snapshot().await, before);

    // The dry run says what the real one does.
    let (code, out, err) = command(
        &env,
        &["bounce", "ingest", "--dry-run", "--json"],
        dsn.as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let dry = json(&out);
    assert_eq!(dry["outcome"], "applied", "{dry}");
    assert_eq!(env.snapshot().await, before);

    let (code, out, err) = command(&env, &["bounce", "ingest", "-", "--json"], dsn.as_bytes());
    assert_eq!(code, 0, "{err}");
    let real = json(&out);
    assert_eq!(real["outcome"], "applied", "{real}");
    assert_eq!(real["found"]["by"], "verp");
    assert_eq!(real["effects"][0]["action"], "hard_bounce");
    assert_eq!(real["effects"][0]["reason"], "userunknown");
    assert_eq!(real["writeback"]["suppressed"], 1, "{real}");
    assert_eq!(dry["effects"], real["effects"]);

    let status = env.status(&msg.id).await;
    assert_eq!(status.status, outbox::Status::Bounced);
    assert!(status.last_reply.unwrap().contains("userunknown"));
    assert_eq!(
        env.suppression("m2@example.org").await.map(|s| s.0),
        Some("hard_bounce".into())
    );
    assert_eq!(env.member_status(2).await, "cleaned");

    // The MTA delivers it again: nothing changes.
    let after = env.snapshot().await;
    let (code, out, _) = command(&env, &["bounce", "ingest", "--json"], dsn.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(json(&out)["outcome"], "duplicate");
    assert_eq!(env.snapshot().await, after);

    // The same bounce with CRLF turned into LF (other bytes, so another mail) reads the same.
    let lf = dsn.replace("\r\n", "\n");
    let (code, out, _) = command(&env, &["bounce", "ingest", "--json"], lf.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(json(&out)["effects"][0]["action"], "hard_bounce");
}

parser_tests!(a_postfix_dsn_through_the_pipe:
    postfix_dsn_pipe_sqlite => Sqlite,
    postfix_dsn_pipe_postgres => Postgres);

async fn complaints_auto_replies_and_http(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let m4 = env.sent_to("m4@example.org").await;
    let (code, out, err) = command(
        &env,
        &["bounce", "ingest", "--json"],
        arf_complaint(&verp_of(&m4.id), &m4.message_id).as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["kind"], "arf", "{v}");
    assert_eq!(v["effects"][0]["action"], "complained", "{v}");
    assert_eq!(
        env.suppression("m4@example.org").await.map(|s| s.0),
        Some("spam_complaint".into())
    );
    assert_eq!(env.member_status(4).await, "complained");

    let m1 = env.sent_to("m1@example.org").await;
    let before = env.snapshot().await;
    let (code, out, _) = command(
        &env,
        &["bounce", "ingest", "--json"],
        vacation_reply(&verp_of(&m1.id)).as_bytes(),
    );
    assert_eq!(code, 0);
    assert_eq!(json(&out)["kind"], "autoreply");
    assert_eq!(json(&out)["outcome"], "ignored");
    assert_eq!(env.snapshot().await, before);

    // Over HTTP, posted twice: stored before 202, applied once.
    let m3 = env.sent_to("m3@example.org").await;
    let server = support::app::start_serve(env.config.clone(), Some("127.0.0.1:0")).await;
    let dsn = postfix_dsn(&verp_of(&m3.id), "m3@example.org", &m3.message_id);
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(format!("http://{}/v1/bounces", server.addr))
            .bearer_auth(TOKEN)
            .header("content-type", "message/rfc822")
            .body(dsn.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    wait_count(
        &env,
        "SELECT COUNT(*) FROM suppressions WHERE email = 'm3@example.org'",
        1,
    )
    .await;
    wait_count(
        &env,
        "SELECT COUNT(*) FROM provider_events WHERE email = 'm3@example.org' AND applied_at IS NOT NULL",
        1,
    )
    .await;
    assert_eq!(env.status(&m3.id).await.status, outbox::Status::Bounced);
    server.shutdown().await.unwrap();
    assert_eq!(env.member_status(3).await, "cleaned");
}

parser_tests!(complaints_auto_replies_and_http:
    complaints_autoreplies_http_sqlite => Sqlite,
    complaints_autoreplies_http_postgres => Postgres);
