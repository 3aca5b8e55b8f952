//! Bounce ingest (issue 18): a bounce report tied to an outbox message by its VERP address or its
//! Message-ID changes the outbox, the suppression list and the member DB once; anything else
//! changes nothing. Reports are built by hand here (the parser has tests of its own); the raw
//! bytes only give each mail its identity. Every test runs on SQLite and PostgreSQL state DBs.

#![allow(clippy::unwrap_used)]

mod support;

use mailbridge::bounces::ingest::{self, Outcome};
use mailbridge::bounces::{BounceKind, BounceReport, Reason, Recipient};
use mailbridge::relay::outbox;
use mailbridge::relay::verp;
use support::bounces::{DOMAIN, SECRET, TOKEN, command, start, wait_count};
use support::{Kind, kind_tests};

fn recipient(email: &str, reason: Reason, hard: bool) -> Recipient {
    Recipient {
        email: email.into(),
        action: Some("failed".into()),
        status: Some(if hard { "5.1.1" } else { "4.2.2" }.into()),
        reply_code: Some(if hard { 550 } else { 452 }),
        reason,
        hard: Some(hard),
        diagnostic: Some("550 5.1.1 no such user".into()),
    }
}

fn dsn(recipients: Vec<Recipient>) -> BounceReport {
    BounceReport {
        kind: BounceKind::Dsn,
        recipients,
        feedback_type: None,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    }
}

fn verp_of(id: &str) -> String {
    verp::encode(id, DOMAIN, SECRET.as_bytes())
}

fn hard_bounce_of(id: &str, email: &str) -> BounceReport {
    BounceReport {
        verp: Some(verp_of(id)),
        ..dsn(vec![recipient(email, Reason::UserUnknown, true)])
    }
}

// ---- a hard bounce, once ----

async fn hard_bounce_applies_once(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    let report = hard_bounce_of(&msg.id, "M2@Example.org");
    let first = env.ingest_and_apply(&report, "mail 1").await;
    assert_eq!(first.outcome, Outcome::Applied, "{first:?}");
    assert_eq!(first.found.as_ref().unwrap().by, "verp");
    assert_eq!(first.outbox_status, Some("bounced"));
    assert_eq!(first.event_ids.len(), 1);

    let status = env.status(&msg.id).await;
    assert_eq!(status.status, outbox::Status::Bounced);
    let reply = status.last_reply.unwrap();
    assert!(
        reply.contains("userunknown") && reply.contains("5.1.1"),
        "{reply}"
    );
    assert_eq!(
        env.suppression("m2@example.org").await,
        Some(("hard_bounce".into(), "relay".into()))
    );
    assert_eq!(env.member_status(2).await, "cleaned");
    let (provider, kind_, member, outcome, reason): (String, String, String, String, String) =
        sqlx::query_as(
            "SELECT provider, event_type, member_key, outcome, reason FROM provider_events",
        )
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(
        (
            provider.as_str(),
            kind_.as_str(),
            member.as_str(),
            outcome.as_str(),
            reason.as_str()
        ),
        ("relay", "hard_bounce", "2", "applied", "userunknown")
    );

    // The same mail again: nothing changes, the answer says so.
    let before = env.snapshot().await;
    let again = ingest::ingest(env.ctx(), b"mail 1", false).await.unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate, "{again:?}");
    let again = env.ingest(&report, "mail 1").await;
    assert_eq!(again.outcome, Outcome::Duplicate, "{again:?}");
    assert!(again.event_ids.is_empty());
    assert_eq!(env.snapshot().await, before);

    // The next sync takes the member off the list (the shipped mapping's audience leaves out a
    // cleaned address), and never puts it back.
    let run = env.sync().await;
    assert_eq!(run.archived, 1, "{run:?}");
    assert_eq!(run.archives[0].email.as_deref(), Some("m2@example.org"));
    let remote = env.sim.member_json(&env.list, "m2@example.org").await;
    assert_eq!(remote["status"], "archived", "{remote}");
    let run = env.sync().await;
    assert_eq!(
        (run.archived, run.created, run.updated),
        (0, 0, 0),
        "{run:?}"
    );
}

kind_tests!(hard_bounce_applies_once:
    hard_bounce_applies_once_sqlite => Sqlite,
    hard_bounce_applies_once_postgres => Postgres);

// ---- a relay hard bounce leaves every provider audience at the next sync ----

async fn suppressed_address_is_archived_by_the_next_sync(kind: Kind) {
    // No writeback statements: the suppression alone must take the member off the list.
    let Some(env) = start(kind, false).await else {
        return;
    };
    let msg = env.sent_to("m3@example.org").await;
    let result = env
        .ingest_and_apply(&hard_bounce_of(&msg.id, "m3@example.org"), "mail 3")
        .await;
    assert_eq!(result.outcome, Outcome::Applied);
    assert_eq!(env.member_status(3).await, "ok", "no writeback configured");
    assert!(env.suppression("m3@example.org").await.is_some());

    let remote = env.sim.member_json(&env.list, "m3@example.org").await;
    assert_eq!(remote["status"], "subscribed", "before the sync: {remote}");
    let run = env.sync().await;
    assert_eq!(run.archived, 1, "{run:?}");
    let note = &run.archives[0];
    assert_eq!(note.email.as_deref(), Some("m3@example.org"));
    assert_eq!(note.code, "suppressed", "{note:?}");
    assert!(note.message.contains("hard_bounce"), "{note:?}");
    let remote = env.sim.member_json(&env.list, "m3@example.org").await;
    assert_eq!(remote["status"], "archived", "{remote}");
    // The other members stay, and the next run does nothing.
    let run = env.sync().await;
    assert_eq!(
        (run.archived, run.created, run.updated),
        (0, 0, 0),
        "{run:?}"
    );
    assert_eq!(
        env.sim.member_json(&env.list, "m1@example.org").await["status"],
        "subscribed"
    );
}

kind_tests!(suppressed_address_is_archived_by_the_next_sync:
    suppressed_archived_sqlite => Sqlite,
    suppressed_archived_postgres => Postgres);

// ---- refused and unknown: nothing changes ----

async fn forged_or_unknown_changes_nothing(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    let before = env.snapshot().await;
    let genuine = verp_of(&msg.id);
    let forged_tag = {
        let (local, domain) = genuine.rsplit_once('@').unwrap();
        let flipped = if local.ends_with('0') { '1' } else { '0' };
        format!("{}{flipped}@{domain}", &local[..local.len() - 1])
    };
    /// What, VERP address, returned Message-ID, outcome, words of the answer.
    type Case<'a> = (&'a str, Option<String>, Option<String>, Outcome, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "forged tag",
            Some(forged_tag),
            None,
            Outcome::Refused,
            "signature",
        ),
        (
            "another message's id with this one's tag",
            Some(genuine.replacen(&msg.id, &"0".repeat(msg.id.len()), 1)),
            None,
            Outcome::Refused,
            "signature",
        ),
        (
            "a genuine address of a message the outbox lacks",
            Some(verp_of("00000000000000000000000000000000")),
            None,
            Outcome::Refused,
            "does not have",
        ),
        (
            "another relay's domain",
            Some(genuine.replace(DOMAIN, "bounces.other.example")),
            None,
            Outcome::Refused,
            "not a VERP bounce address",
        ),
        (
            "a Message-ID we never sent",
            None,
            Some("nope@elsewhere.example".into()),
            Outcome::UnknownMessage,
            "not one the relay sent",
        ),
        (
            "no VERP address, no Message-ID",
            None,
            None,
            Outcome::UnknownMessage,
            "names no message",
        ),
    ];
    for (n, (what, verp, mid, want, says)) in cases.into_iter().enumerate() {
        let report = BounceReport {
            verp,
            original_message_id: mid,
            ..dsn(vec![recipient("m2@example.org", Reason::UserUnknown, true)])
        };
        let result = env.ingest(&report, &format!("refused mail {n}")).await;
        assert_eq!(result.outcome, want, "{what}: {result:?}");
        assert!(result.message.contains(says), "{what}: {}", result.message);
        assert!(result.event_ids.is_empty(), "{what}");
        assert_eq!(env.snapshot().await, before, "{what}");
        if want == Outcome::Refused {
            assert_eq!(
                env.mails().await,
                0,
                "{what}: a refused mail is not even recorded"
            );
        }
    }
    // The message was sent to m2: a report about another address of it changes nothing.
    let other = BounceReport {
        verp: Some(verp_of(&msg.id)),
        ..dsn(vec![recipient("m4@example.org", Reason::UserUnknown, true)])
    };
    let result = env.ingest(&other, "about someone else").await;
    assert_eq!(result.outcome, Outcome::Ignored, "{result:?}");
    assert_eq!(result.effects[0].action, "none");
    assert!(env.suppression("m4@example.org").await.is_none());
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Sent);
    // An auto-reply and a message that is no bounce change nothing either.
    for kind in [BounceKind::Autoreply, BounceKind::NotBounce] {
        let report = BounceReport {
            kind,
            verp: Some(verp_of(&msg.id)),
            ..dsn(vec![recipient("m2@example.org", Reason::Vacation, false)])
        };
        let result = env.ingest(&report, &format!("{kind:?}")).await;
        assert_eq!(result.outcome, Outcome::Ignored, "{result:?}");
        assert!(result.event_ids.is_empty());
    }
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Sent);
    assert!(env.suppression("m2@example.org").await.is_none());
    assert_eq!(env.member_status(2).await, "ok");
}

kind_tests!(forged_or_unknown_changes_nothing:
    forged_or_unknown_sqlite => Sqlite,
    forged_or_unknown_postgres => Postgres);

// ---- Message-ID fallback, complaints, dry run ----

async fn message_id_complaint_and_dry_run(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m1@example.org").await;
    let by_mid = BounceReport {
        original_message_id: Some(
            msg.message_id
                .trim_start_matches('<')
                .trim_end_matches('>')
                .into(),
        ),
        ..dsn(vec![recipient("m1@example.org", Reason::HostUnknown, true)])
    };
    // Dry run: says what it would do, changes nothing.
    let before = env.snapshot().await;
    let dry = ingest::ingest_report(env.ctx(), &by_mid, b"by message id", true)
        .await
        .unwrap();
    assert_eq!((dry.outcome, dry.dry_run), (Outcome::Applied, true));
    assert_eq!(dry.found.as_ref().unwrap().by, "message_id");
    assert_eq!(dry.effects[0].action, "hard_bounce");
    assert_eq!(env.snapshot().await, before);

    let real = env.ingest_and_apply(&by_mid, "by message id").await;
    assert_eq!(real.outcome, Outcome::Applied);
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(env.member_status(1).await, "cleaned");

    // A complaint (ARF, recipient redacted) about a message to m4.
    let msg4 = env.sent_to("m4@example.org").await;
    let complaint = BounceReport {
        kind: BounceKind::Arf,
        feedback_type: Some("abuse".into()),
        verp: Some(verp_of(&msg4.id)),
        ..dsn(vec![])
    };
    let result = env.ingest_and_apply(&complaint, "complaint").await;
    assert_eq!(result.outcome, Outcome::Applied, "{result:?}");
    assert_eq!(result.effects[0].action, "complained");
    assert_eq!(
        env.suppression("m4@example.org").await.map(|s| s.0),
        Some("spam_complaint".into())
    );
    assert_eq!(env.member_status(4).await, "complained");
    // Delivered, so the message stays sent.
    assert_eq!(env.status(&msg4.id).await.status, outbox::Status::Sent);
}

kind_tests!(message_id_complaint_and_dry_run:
    message_id_complaint_dry_run_sqlite => Sqlite,
    message_id_complaint_dry_run_postgres => Postgres);

// ---- soft bounces: the one threshold rule ----

async fn soft_bounces_count_as_hard_at_the_threshold(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    for n in 1..=3 {
        let msg = env.sent_to("m3@example.org").await;
        let report = BounceReport {
            verp: Some(verp_of(&msg.id)),
            ..dsn(vec![recipient(
                "m3@example.org",
                Reason::MailboxFull,
                false,
            )])
        };
        let result = env.ingest_and_apply(&report, &format!("soft {n}")).await;
        assert_eq!(result.effects[0].action, "soft_bounce", "{result:?}");
        assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
        let suppressed = env.suppression("m3@example.org").await;
        if n < 3 {
            assert_eq!(suppressed, None, "after {n} soft bounces");
            assert_eq!(env.member_status(3).await, "ok", "after {n}");
        } else {
            assert_eq!(suppressed.map(|s| s.0), Some("soft_bounce".into()));
            assert_eq!(env.member_status(3).await, "cleaned", "counted as hard");
        }
    }
    // A queued message to a suppressed address is held back.
    let held = env.sent_to("m3@example.org").await;
    assert_eq!(held.status, outbox::Status::Suppressed);
}

kind_tests!(soft_bounces_count_as_hard_at_the_threshold:
    soft_bounces_threshold_sqlite => Sqlite,
    soft_bounces_threshold_postgres => Postgres);

// ---- posted over HTTP: stored, then processed once ----

async fn stored_mail_is_processed_once(kind: Kind) {
    let Some(env) = start(kind, true).await else {
        return;
    };
    let (id, new) = ingest::receive(&env.store, b"posted twice").await.unwrap();
    assert!(new);
    let (again, new) = ingest::receive(&env.store, b"posted twice").await.unwrap();
    assert_eq!((again.as_str(), new), (id.as_str(), false));
    let done = ingest::process_pending(env.ctx(), 10).await.unwrap();
    assert_eq!(done.len(), 1);
    assert!(
        ingest::process_pending(env.ctx(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (processed,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM bounce_messages WHERE processed_at IS NOT NULL")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(processed, 1);
    let dup = ingest::ingest(env.ctx(), b"posted twice", false)
        .await
        .unwrap();
    assert_eq!(dup.outcome, Outcome::Duplicate);
}

kind_tests!(stored_mail_is_processed_once:
    stored_mail_processed_once_sqlite => Sqlite,
    stored_mail_processed_once_postgres => Postgres);

// ---- over HTTP: GET /v1/events, /metrics, POST /v1/bounces ----

async fn http_shows_and_takes_bounces(kind: Kind) {
    mailbridge::http::metrics::handle();
    let Some(env) = start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    env.ingest_and_apply(&hard_bounce_of(&msg.id, "m2@example.org"), "over http")
        .await;
    let server = support::app::start_serve(env.config.clone(), Some("127.0.0.1:0")).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    // Beside webhook events in GET /v1/events.
    let events: serde_json::Value = http
        .get(format!("{base}/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bounce = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == "relay")
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(bounce["type"], "hard_bounce");
    assert_eq!(bounce["reason"], "userunknown");
    assert_eq!(bounce["email"], "m2@example.org");
    assert_eq!(bounce["member_key"], "2");
    assert_eq!(bounce["outcome"], "applied");
    // Counted by kind and reason in /metrics.
    let metrics = support::app::metrics_text(&base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mailbridge_bounces_total{")
                && l.contains("reason=\"userunknown\"")
                && l.contains("kind=\"dsn\"")
                && l.contains("action=\"hard_bounce\"")),
        "{metrics}"
    );

    let post = |body: Vec<u8>, token: Option<&str>, media: &str| {
        let mut req = http
            .post(format!("{base}/v1/bounces"))
            .header("content-type", media)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let mail = b"From: someone@example.org\r\nSubject: hello\r\n\r\nNot a bounce.\r\n".to_vec();
    let r = post(mail.clone(), None, "message/rfc822").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(mail.clone(), Some("wrong"), "message/rfc822")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(mail.clone(), Some(TOKEN), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post(
        vec![b'x'; ingest::MAX_BOUNCE_BYTES + 1],
        Some(TOKEN),
        "message/rfc822",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(Vec::new(), Some(TOKEN), "message/rfc822")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    wait_count(&env, "SELECT COUNT(*) FROM bounce_messages", 1).await;

    let r = post(mail.clone(), Some(TOKEN), "message/rfc822")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let first: serde_json::Value = r.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["id"].as_str().unwrap().len(), 64);
    let r = post(mail.clone(), Some(TOKEN), "message/rfc822")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let second: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (second["id"].clone(), second["duplicate"].clone()),
        (first["id"].clone(), true.into())
    );
    // Processed once, by the worker, and counted; the mail that is no bounce changed nothing.
    wait_count(
        &env,
        "SELECT COUNT(*) FROM bounce_messages WHERE processed_at IS NOT NULL",
        2,
    )
    .await;
    let (outcome,): (String,) =
        sqlx::query_as("SELECT outcome FROM bounce_messages WHERE hash = $1")
            .bind(first["id"].as_str().unwrap())
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(outcome, "ignored");
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM provider_events")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(events, 1, "only the hard bounce ingested first");
    server.shutdown().await.unwrap();
}

kind_tests!(http_shows_and_takes_bounces:
    http_bounces_sqlite => Sqlite,
    http_bounces_postgres => Postgres);

// ---- the command ----

#[tokio::test]
async fn the_command_reads_a_file_or_stdin_and_answers_in_json() {
    let Some(env) = start(Kind::Sqlite, true).await else {
        return;
    };
    let mail = b"From: someone@example.org\r\nSubject: hello\r\n\r\nNot a bounce.\r\n";
    // A dry run records nothing.
    let (code, out, err) = command(&env, &["bounce", "ingest", "--dry-run", "--json"], mail);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["dry_run"].clone(), v["outcome"].clone()),
        (true.into(), "ignored".into()),
        "{v}"
    );
    assert_eq!(env.mails().await, 0);
    // From stdin (`-`), then the same bytes from a file: a duplicate.
    let (code, out, err) = command(&env, &["bounce", "ingest", "-", "--json"], mail);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["outcome"], "ignored", "{v}");
    assert_eq!(v["id"].as_str().unwrap(), ingest::mail_id(mail));
    let file = env.dir.join("bounce.eml");
    std::fs::write(&file, mail).unwrap();
    let (code, out, _) = command(&env, &["bounce", "ingest", file.to_str().unwrap()], b"");
    assert_eq!(code, 0);
    assert!(out.contains("duplicate"), "{out}");
    assert_eq!(env.mails().await, 1);
    // Bad usage: a missing file, a mail over the limit.
    let (code, _, err) = command(&env, &["bounce", "ingest", "/nonexistent/bounce.eml"], b"");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = command(
        &env,
        &["bounce", "ingest"],
        &vec![b'x'; ingest::MAX_BOUNCE_BYTES + 1],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("more than"), "{err}");
    assert_eq!(env.mails().await, 1);
}

/// A state DB that cannot be reached: exit 75 (EX_TEMPFAIL), so the MTA that piped the mail keeps
/// it and tries again; the message names the state database.
#[tokio::test]
async fn a_state_db_that_cannot_be_reached_is_a_temporary_failure_for_the_mta() {
    let Some(env) = start(Kind::Sqlite, true).await else {
        return;
    };
    // The config with its `[state] url` pointing where nothing listens (port 1).
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let (before, after) = text.split_once("[state]").unwrap();
    let (url_line, rest) = after
        .split_once("url = ")
        .map(|(head, tail)| (head, tail.split_once('\n').unwrap().1))
        .unwrap();
    let unreachable = format!(
        "{before}[state]{url_line}url = \"postgres://mailbridge@127.0.0.1:1/state?connect_timeout=2\"\n{rest}"
    );
    let config = env.dir.join("unreachable.toml");
    std::fs::write(&config, unreachable).unwrap();
    let mail = support::bounces::postfix_dsn(&verp_of("m-1"), "ann@example.org", "m-1@club");
    let out = std::process::Command::new(support::db::binary())
        .arg("--config")
        .arg(&config)
        .args(["bounce", "ingest", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(mail.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("state database"), "{err}");
    assert_eq!(env.mails().await, 0);
}
