//! The bounce mailbox over IMAP (`[bounces.imap]`, `bounce fetch`, `serve`'s poller) against a
//! real Dovecot per test (tests/support/dovecot.rs): bounce mail delivered by IMAP APPEND is
//! ingested through the real parser, then moved or deleted; a crash between the two re-ingests
//! and changes nothing; logins, TLS and certificates fail clearly.

#![allow(clippy::unwrap_used)]

mod support;

use mailbridge::bounces::imap::{self, Faults, FetchError, FetchReport, Handled};
use mailbridge::bounces::ingest::Outcome;
use mailbridge::relay::{outbox, verp};
use support::bounces::{DOMAIN, Env, SECRET, command, postfix_dsn, start_with};
use support::dovecot::{Dovecot, Options, PASSWORD, USER};
use support::{Kind, kind_tests};

/// A Dovecot and the bounce environment (members synced, a VERP relay) reading it with `extra`
/// lines in `[bounces.imap]`; `None` when either cannot start outside CI.
async fn setup(kind: Kind, options: Options, extra: &str) -> Option<(Dovecot, Env)> {
    let dovecot = Dovecot::start(options).await?;
    let env = start_with(kind, true, &dovecot.config(extra)).await?;
    Some((dovecot, env))
}

/// A message sent to `to` and the Postfix DSN that bounces it back to its VERP address.
async fn bounced(env: &Env, to: &str) -> (outbox::Enqueued, String) {
    let msg = env.sent_to(to).await;
    let dsn = postfix_dsn(
        &verp::encode(&msg.id, DOMAIN, SECRET.as_bytes()),
        to,
        &msg.message_id,
    );
    (msg, dsn)
}

async fn fetch(env: &Env) -> FetchReport {
    let report = imap::fetch(env.ctx(), env.config.bounces.imap.as_ref().unwrap(), None)
        .await
        .unwrap();
    env.apply(&report.event_ids).await;
    report
}

fn counts(r: &FetchReport) -> [u64; 6] {
    [
        r.fetched,
        r.applied,
        r.refused,
        r.duplicates,
        r.ignored,
        r.left,
    ]
}

// ---- a DSN in the folder: ingested, then moved; the message bounced, the member cleaned ----

async fn a_dsn_is_ingested_then_moved(kind: Kind) {
    let Some((dovecot, env)) = setup(kind, Options::default(), "move_to = \"Done\"\n").await else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m2@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let auto_reply = "From: m3@example.org\r\nTo: club@club.example\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n";
    dovecot.deliver("INBOX", auto_reply.as_bytes()).await;

    let report = fetch(&env).await;
    assert_eq!(counts(&report), [2, 1, 0, 0, 1, 0], "{report:#?}");
    assert_eq!(report.stopped, None);
    let first = &report.messages[0];
    assert_eq!(first.handled, Handled::Moved, "{first:?}");
    assert_eq!(first.ingest.as_ref().unwrap().outcome, Outcome::Applied);
    assert_eq!(report.messages[1].handled, Handled::Moved);
    assert!(first.note.contains("UID MOVE"), "{}", first.note);

    assert_eq!(dovecot.count("INBOX").await, 0);
    assert_eq!(dovecot.count("Done").await, 2);
    // Moved byte for byte: the copy in Done is the mail that was ingested.
    let moved = dovecot.messages("Done").await;
    assert!(moved.iter().any(|m| m == dsn.as_bytes()), "{moved:?}");

    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(
        env.suppression("m2@example.org").await,
        Some(("hard_bounce".into(), "relay".into()))
    );
    assert_eq!(env.member_status(2).await, "cleaned");
    assert_eq!(env.member_status(3).await, "ok");

    // Nothing left: a second run reads nothing.
    assert_eq!(counts(&fetch(&env).await), [0; 6]);
}

kind_tests!(a_dsn_is_ingested_then_moved:
    a_dsn_in_the_folder_is_ingested_then_moved_sqlite_state => Sqlite,
    a_dsn_in_the_folder_is_ingested_then_moved_postgres_state => Postgres,
);

#[tokio::test]
async fn with_delete_a_handled_message_is_expunged() {
    let Some((dovecot, env)) = setup(Kind::Sqlite, Options::default(), "delete = true\n").await
    else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m1@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let report = fetch(&env).await;
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 0], "{report:#?}");
    assert_eq!(report.messages[0].handled, Handled::Deleted);
    assert_eq!(dovecot.count("INBOX").await, 0);
    assert_eq!(dovecot.count("Done").await, 0);
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
}

/// A server that offers neither MOVE nor UIDPLUS: UID COPY, STORE \Deleted and EXPUNGE.
#[tokio::test]
async fn without_move_and_uidplus_a_message_is_copied_flagged_and_expunged() {
    let options = Options {
        capability: Some("IMAP4rev1 LITERAL+ SASL-IR IDLE NAMESPACE".into()),
    };
    let Some((dovecot, env)) = setup(Kind::Sqlite, options, "move_to = \"Done\"\n").await else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m1@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let report = fetch(&env).await;
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 0], "{report:#?}");
    assert_eq!(report.messages[0].handled, Handled::Moved);
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (0, 1)
    );
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    // It was not sent MOVE, which it did not offer.
    let note = &report.messages[0].note;
    assert!(
        note.contains("UID COPY") && note.contains("EXPUNGE"),
        "{note}"
    );
}

// ---- a crash between ingest and move ----

#[tokio::test]
async fn a_crash_between_ingest_and_move_reingests_and_changes_nothing_the_second_time() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Done\"\n").await
    else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m2@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let config = env.config.bounces.imap.clone().unwrap();

    // Ingested, then the connection is dropped before the move: the mail stays in the folder.
    let cut = imap::fetch_with(
        env.ctx(),
        &config,
        None,
        Faults {
            cut_after_first_ingest: true,
        },
    )
    .await
    .unwrap();
    assert_eq!((cut.fetched, cut.applied), (1, 1), "{cut:#?}");
    env.apply(&cut.event_ids).await;
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (1, 0)
    );
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    let after_first = env.snapshot().await;
    assert_eq!(env.mails().await, 1);

    // The next run finds it again: a duplicate, nothing changes, and now it is moved.
    let again = fetch(&env).await;
    assert_eq!(counts(&again), [1, 0, 0, 1, 0, 0], "{again:#?}");
    assert!(again.event_ids.is_empty());
    assert_eq!(again.messages[0].handled, Handled::Moved);
    assert_eq!(env.snapshot().await, after_first);
    assert_eq!(env.mails().await, 1);
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (0, 1)
    );
}

#[tokio::test]
async fn a_message_whose_ingest_fails_is_left_for_the_next_run() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Done\"\n").await
    else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m2@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let (_, second) = bounced(&env, "m3@example.org").await;
    dovecot.deliver("INBOX", second.as_bytes()).await;
    // The state DB fails every write of a bounce mail.
    let pool = env.store.pool().clone();
    let run = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    };
    run("ALTER TABLE bounce_messages RENAME TO bounce_messages_away").await;
    let failed = fetch(&env).await;
    assert_eq!(counts(&failed), [1, 0, 0, 0, 0, 2], "{failed:#?}");
    assert!(
        failed
            .stopped
            .as_deref()
            .unwrap()
            .contains("state database"),
        "{failed:#?}"
    );
    assert_eq!(failed.messages[0].handled, Handled::Left);
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (2, 0)
    );
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Sent);

    run("ALTER TABLE bounce_messages_away RENAME TO bounce_messages").await;
    let report = fetch(&env).await;
    assert_eq!(counts(&report), [2, 2, 0, 0, 0, 0], "{report:#?}");
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (0, 2)
    );
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
}

// ---- refused, too large, folders ----

#[tokio::test]
async fn a_forged_verp_is_refused_and_moved_all_the_same() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Done\"\n").await
    else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    let genuine = verp::encode(&msg.id, DOMAIN, SECRET.as_bytes());
    let forged = verp::encode(&msg.id, DOMAIN, b"not-the-secret");
    assert_ne!(genuine, forged);
    dovecot
        .deliver(
            "INBOX",
            postfix_dsn(&forged, "m2@example.org", "<x@y>").as_bytes(),
        )
        .await;
    let before = env.snapshot().await;
    let report = fetch(&env).await;
    assert_eq!(counts(&report), [1, 0, 1, 0, 0, 0], "{report:#?}");
    let line = &report.messages[0];
    assert_eq!(line.handled, Handled::Moved);
    assert!(line.note.contains("handled all the same"), "{}", line.note);
    assert_eq!(env.snapshot().await, before);
    assert_eq!(dovecot.count("Done").await, 1);
}

#[tokio::test]
async fn a_message_over_the_limit_is_left_alone_and_reported() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Done\"\n").await
    else {
        return;
    };
    let max = mailbridge::bounces::ingest::MAX_BOUNCE_BYTES;
    let mut big = b"From: x@example.net\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() <= max {
        big.extend_from_slice(&[b'a'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    dovecot.deliver("INBOX", &big).await;
    let (msg, dsn) = bounced(&env, "m1@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;

    let report = fetch(&env).await;
    // The large one is left; the run goes on to the next.
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 1], "{report:#?}");
    let left = &report.messages[0];
    assert_eq!(left.handled, Handled::Left);
    assert!(left.ingest.is_none());
    assert!(left.note.contains("more than the"), "{}", left.note);
    assert_eq!(
        (dovecot.count("INBOX").await, dovecot.count("Done").await),
        (1, 1)
    );
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(env.mails().await, 1);
}

#[tokio::test]
async fn a_missing_move_to_folder_stops_the_run_before_anything_is_ingested() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Nowhere\"\n").await
    else {
        return;
    };
    let (_, dsn) = bounced(&env, "m1@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let err = imap::fetch(env.ctx(), env.config.bounces.imap.as_ref().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Command { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Nowhere") && text.contains("move_to"),
        "{text}"
    );
    assert_eq!(env.mails().await, 0);
    assert_eq!(dovecot.count("INBOX").await, 1);
}

// ---- logins and TLS ----

#[tokio::test]
async fn a_wrong_password_names_host_and_user_but_not_the_password() {
    let Some(dovecot) = Dovecot::start(Options::default()).await else {
        return;
    };
    let wrong = "Wr0ng-but-secret-xyz";
    let config = dovecot.config("delete = true\n").replace(PASSWORD, wrong);
    let Some(env) = start_with(Kind::Sqlite, false, &config).await else {
        return;
    };
    let err = imap::fetch(env.ctx(), env.config.bounces.imap.as_ref().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Login { .. }), "{err:?}");
    let text = mailbridge::error_chain(&err);
    assert!(
        text.contains(&format!("localhost:{}", dovecot.tls_port)) && text.contains(USER),
        "{text}"
    );
    assert!(text.contains("AUTHENTICATIONFAILED"), "{text}");
    assert!(!text.contains(wrong), "{text}");

    // The command says the same, exits 1, and prints the password nowhere.
    let (code, out, err) = command(&env, &["bounce", "fetch"], b"");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(USER) && err.contains("refused the login"),
        "{err}"
    );
    assert!(!out.contains(wrong) && !err.contains(wrong), "{out}{err}");
}

#[tokio::test]
async fn starttls_on_the_plain_port_works_like_implicit_tls() {
    let Some(dovecot) = Dovecot::start(Options::default()).await else {
        return;
    };
    let config = dovecot.config("move_to = \"Done\"\n").replace(
        &format!("port = {}\ntls = \"tls\"", dovecot.tls_port),
        &format!("port = {}\ntls = \"starttls\"", dovecot.starttls_port),
    );
    assert!(config.contains("starttls"), "{config}");
    let Some(env) = start_with(Kind::Sqlite, true, &config).await else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m4@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let report = fetch(&env).await;
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 0], "{report:#?}");
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(dovecot.count("Done").await, 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_on_both_ports() {
    let Some(dovecot) = Dovecot::start(Options::default()).await else {
        return;
    };
    // Another CA than the one that signed the server's certificate.
    let other = tempfile::tempdir().unwrap();
    support::dovecot::make_certs(other.path(), "other-");
    let other_ca = other.path().join("other-ca.pem");
    let tls = dovecot.config("delete = true\n");
    let cases = [
        // Only the public web CAs.
        tls.replace(
            &format!("ca_file = \"{}\"\n", dovecot.ca_file.display()),
            "",
        ),
        tls.replace(
            &dovecot.ca_file.display().to_string(),
            &other_ca.display().to_string(),
        ),
        tls.replace(
            &format!("port = {}\ntls = \"tls\"", dovecot.tls_port),
            &format!("port = {}\ntls = \"starttls\"", dovecot.starttls_port),
        )
        .replace(
            &dovecot.ca_file.display().to_string(),
            &other_ca.display().to_string(),
        ),
    ];
    for config in cases {
        let Some(env) = start_with(Kind::Sqlite, false, &config).await else {
            return;
        };
        let err = imap::fetch(env.ctx(), env.config.bounces.imap.as_ref().unwrap(), None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FetchError::Tls { .. }), "{err:?}");
        assert!(
            text.contains("not trusted") && text.contains("ca_file"),
            "{text}"
        );
    }
    // Nobody logged in.
    let log = dovecot.log();
    assert!(!log.contains("Login: user=<"), "{log}");
}

// ---- the command and serve ----

#[tokio::test]
async fn bounce_fetch_prints_counts_and_a_line_per_message() {
    let Some((dovecot, env)) =
        setup(Kind::Sqlite, Options::default(), "move_to = \"Done\"\n").await
    else {
        return;
    };
    let (msg, dsn) = bounced(&env, "m2@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let (code, out, err) = command(&env, &["bounce", "fetch", "--json"], b"");
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["fetched"], 1, "{v}");
    assert_eq!(v["applied"], 1, "{v}");
    assert_eq!(v["left"], 0, "{v}");
    assert_eq!(v["messages"][0]["handled"], "moved", "{v}");
    assert_eq!(v["messages"][0]["ingest"]["outcome"], "applied", "{v}");
    assert_eq!(v["writeback"]["bounces"], 1, "{v}");
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(env.member_status(2).await, "cleaned");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));

    let (_, dsn) = bounced(&env, "m3@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let (code, out, err) = command(&env, &["bounce", "fetch"], b"");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 fetched, 1 applied, 0 refused, 0 duplicates, 0 ignored, 0 left"),
        "{out}"
    );
    assert!(out.contains("moved to Done"), "{out}");
}

#[tokio::test]
async fn serve_reads_the_mailbox_every_poll_every() {
    let Some((dovecot, env)) = setup(
        Kind::Sqlite,
        Options::default(),
        "move_to = \"Done\"\npoll_every = \"1s\"\n",
    )
    .await
    else {
        return;
    };
    let handle = support::app::start_serve(env.config.clone(), Some("127.0.0.1:0")).await;
    // Delivered after serve started: a later poll takes it.
    let (msg, dsn) = bounced(&env, "m2@example.org").await;
    dovecot.deliver("INBOX", dsn.as_bytes()).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while env.member_status(2).await != "cleaned" {
        assert!(
            std::time::Instant::now() < until,
            "serve did not ingest the bounce: {}",
            dovecot.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(env.status(&msg.id).await.status, outbox::Status::Bounced);
    assert_eq!(dovecot.count("Done").await, 1);
    handle.shutdown().await.unwrap();
}
