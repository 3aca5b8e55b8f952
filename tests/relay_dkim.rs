//! DKIM-signed relay mail, verified as a real SMTP server received it, by an independent verifier
//! (Python's dkimpy via tests/support/smtp/dkim_verify.py, the key record served without DNS):
//! RSA (a key made by OpenSSL) and Ed25519 (a key made by `mailbridge dkim keygen`, checked against
//! the record it printed); dot-stuffed lines, bare line ends and a non-ASCII subject on the way;
//! the List-Unsubscribe pair signed; a retry resends the stored signed bytes; a tampered body or
//! header fails, so the verifier is not a rubber stamp.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use mailbridge::relay::{NewMessage, Status};
use support::relay::Env;
use support::smtp::{self, Sink, SinkOptions, dkim_verify};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// aiosmtpd and dkimpy are both needed; `false` (the test is skipped) outside CI without them.
fn tools() -> bool {
    smtp::aiosmtpd_available() && smtp::dkimpy_available()
}

/// A relay whose one route is SMTP to `sink` (no TLS: the bytes of DATA are the same), retries
/// due at once, and `[relay.dkim]` signing with `key_file` for `d=club.example; s=selector`.
async fn dkim_env(sink: &Sink, selector: &str, key: impl FnOnce(&Path) -> String) -> Env {
    let selector = selector.to_owned();
    Env::start("sqlite://state.db", None, move |dir| {
        let key_file = key(dir);
        format!(
            "routes = [\"smtp\"]\nretry_base_secs = 0\nroute_backoff_secs = 0\n\
             bounce_domain = \"bounces.club.example\"\nverp_secret = \"verp-secret\"\n\
             unsubscribe_secret = \"unsubscribe-secret\"\n{}[relay.dkim]\ndomain = \"club.example\"\n\
             selector = \"{selector}\"\nprivate_key_file = \"{key_file}\"\n\n\
             [server]\npublic_url = \"https://club.example\"\n",
            smtp::smtp_section(sink.port, "none", None, None)
        )
    })
    .await
}

/// What the web application hands over: ASCII text (sent 7bit, so its lines reach the wire as
/// written) with lines that SMTP must dot-stuff, bare LF and CR line ends and a non-ASCII
/// subject; a notification, so the relay adds the RFC 8058 header pair (`[relay]
/// unsubscribe_secret` and the https `[server] public_url` of [`dkim_env`]).
fn message(to: &str) -> NewMessage {
    NewMessage {
        to: to.into(),
        subject: "Willkommen, Zoë — bitte bestätigen".into(),
        text: "Hello,\n.a line starting with a dot\n..two dots\n.\nbare CR\rend\n".into(),
        html: None,
        reply_to: Some("office@club.example".into()),
        headers: Default::default(),
        category: "notification".into(),
    }
}

/// The `h=` tag of the first DKIM-Signature in `raw`, lower-cased and sorted.
fn signed_headers(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let sig = text
        .split("DKIM-Signature:")
        .nth(1)
        .expect("a DKIM-Signature header");
    let h = sig.split("h=").nth(1).unwrap().split(';').next().unwrap();
    let mut names: Vec<String> = h
        .replace(['\r', '\n', '\t', ' '], "")
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names
}

/// `raw` as received, without the CRLF the SMTP client puts before the DATA terminator's `.` (an
/// empty last line, which DKIM's body canonicalisation ignores: RFC 6376 §3.4.3, §3.4.4).
fn as_sent(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"\r\n").expect("a message ends with CRLF")
}

/// The bytes the outbox stored for message `id`.
async fn stored(env: &Env, id: &str) -> Vec<u8> {
    let (raw,): (Vec<u8>,) = sqlx::query_as("SELECT raw FROM outbox_bodies WHERE id = $1")
        .bind(id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    raw
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    support::run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?}"),
    )
    .stdout
}

/// `bytes` with the first `from` replaced by `to` (which must be there).
fn tamper(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn rsa_signed_mail_verifies_as_received_and_tampering_is_caught() {
    if !tools() {
        return;
    }
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(sink_dir.path(), None, &SinkOptions::default());
    // The key and its public half from OpenSSL, not from mailbridge.
    let record = std::sync::Mutex::new(String::new());
    let env = dkim_env(&sink, "mb2026", |dir| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.pem",
            ],
        );
        let public = openssl(
            dir,
            &["pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER"],
        );
        *record.lock().unwrap() = format!("v=DKIM1; k=rsa; p={}", B64.encode(public));
        "rsa.pem".into()
    })
    .await;
    let record = record.into_inner().unwrap();

    let q = env.enqueue_message(&message("ana@example.org")).await;
    assert_eq!(env.run_once().await.sent, 1);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let raw = &got[0].raw;
    let text = got[0].text();
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{text}"
    );
    assert!(
        text.contains(" d=club.example;") && text.contains(" s=mb2026;"),
        "{text}"
    );
    assert!(text.contains("c=relaxed/relaxed;"), "{text}");
    // The dot lines passed SMTP's dot-stuffing and came back as written; CR and LF are CRLF.
    assert!(
        text.contains(
            "\r\n\r\nHello,\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nbare CR\r\nend\r\n"
        ),
        "{text}"
    );
    assert!(text.contains("Subject: Willkommen, =?utf-8?b?"), "{text}");
    assert!(
        as_sent(raw) == stored(&env, &q.id).await,
        "what was received is what was stored"
    );
    let signed = signed_headers(raw);
    for h in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "content-type",
        "mime-version",
        "content-transfer-encoding",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(signed.contains(&h.to_owned()), "{h} not in h= {signed:?}");
    }

    dkim_verify(raw, &record).unwrap_or_else(|e| panic!("dkimpy: {e}\n{text}"));
    let body = tamper(raw, "starting with a dot", "starting with a dog");
    assert!(dkim_verify(&body, &record).is_err(), "a changed body fails");
    assert!(
        text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
        "{text}"
    );
    let header = tamper(raw, "<https://club.example/u/", "<https://evil.example/u/");
    assert!(
        dkim_verify(&header, &record).is_err(),
        "a changed List-Unsubscribe fails"
    );
    let (_, other) = mailbridge::config::DkimKey::generate(false).unwrap();
    let other_key = mailbridge::relay::dkim::record_value(&other);
    assert!(dkim_verify(raw, &record).is_ok() && other_key != record);
    assert!(
        dkim_verify(raw, &other_key).is_err(),
        "another key's record fails"
    );
}

#[tokio::test]
async fn an_ed25519_key_from_keygen_signs_mail_its_printed_record_verifies() {
    if !tools() {
        return;
    }
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(sink_dir.path(), None, &SinkOptions::default());
    let printed = std::sync::Mutex::new(String::new());
    let env = dkim_env(&sink, "ed1", |dir| {
        let out = support::run_ok(
            Command::new(support::db::binary())
                .args([
                    "dkim",
                    "keygen",
                    "--selector",
                    "ed1",
                    "--domain",
                    "Club.Example",
                    "--algorithm",
                    "ed25519",
                    "--out",
                    "ed.pem",
                ])
                .current_dir(dir),
            "mailbridge dkim keygen",
        );
        *printed.lock().unwrap() = String::from_utf8(out.stdout).unwrap();
        "ed.pem".into()
    })
    .await;
    let printed = printed.into_inner().unwrap();
    let key_file = env.dir.join("ed.pem");

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is its owner's only");
    let value = printed
        .lines()
        .find(|l| l.starts_with("v=DKIM1; k=ed25519; p="))
        .unwrap_or_else(|| panic!("no record value in:\n{printed}"))
        .to_owned();
    assert!(
        printed.contains(&format!("ed1._domainkey.club.example. IN TXT \"{value}\"")),
        "{printed}"
    );
    assert!(
        printed.contains(
            "[relay.dkim]\ndomain = \"club.example\"\nselector = \"ed1\"\nprivate_key_file = \"ed.pem\"\n"
        ),
        "{printed}"
    );
    // The printed public key is the key file's, as OpenSSL reads it (the last 32 bytes of the
    // SubjectPublicKeyInfo are the Ed25519 key).
    let spki = openssl(
        &env.dir,
        &["pkey", "-in", "ed.pem", "-pubout", "-outform", "DER"],
    );
    assert_eq!(
        value,
        format!(
            "v=DKIM1; k=ed25519; p={}",
            B64.encode(&spki[spki.len() - 32..])
        )
    );

    env.enqueue_message(&message("ana@example.org")).await;
    assert_eq!(env.run_once().await.sent, 1);
    let got = sink.messages();
    let raw = &got[0].raw;
    assert!(
        got[0]
            .text()
            .starts_with("DKIM-Signature: v=1; a=ed25519-sha256;")
    );
    dkim_verify(raw, &value).unwrap_or_else(|e| panic!("dkimpy: {e}\n{}", got[0].text()));
    let body = tamper(raw, "..two dots", "..three dots");
    assert!(dkim_verify(&body, &value).is_err(), "a changed body fails");

    // A second keygen to the same file is refused and leaves the key as it was.
    let before = std::fs::read(&key_file).unwrap();
    let again = Command::new(support::db::binary())
        .args([
            "dkim",
            "keygen",
            "--selector",
            "ed2",
            "--domain",
            "club.example",
        ])
        .args(["--algorithm", "ed25519", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists: not overwritten"), "{err}");
    assert_eq!(std::fs::read(&key_file).unwrap(), before);
}

/// The smarthost keeps the first copy and drops the connection before answering: the retry
/// sends again, and both copies are the stored bytes with the one signature made at enqueue.
#[tokio::test]
async fn a_retry_resends_the_same_signed_bytes() {
    if !tools() {
        return;
    }
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        sink_dir.path(),
        None,
        &SinkOptions {
            after_data: Some(("drop", 1)),
            ..SinkOptions::default()
        },
    );
    let key = std::sync::Mutex::new(None);
    let env = dkim_env(&sink, "mb1", |dir| {
        let (pem, k) = mailbridge::config::DkimKey::generate(false).unwrap();
        std::fs::write(dir.join("k.pem"), pem).unwrap();
        *key.lock().unwrap() = Some(k);
        "k.pem".into()
    })
    .await;
    let record = mailbridge::relay::dkim::record_value(&key.into_inner().unwrap().unwrap());

    let q = env.enqueue_message(&message("ben@example.org")).await;
    let first = env.run_once().await;
    assert_eq!((first.sent, first.ambiguous), (0, 1), "{first:?}");
    assert_eq!(
        sink.count(),
        1,
        "the first copy arrived, its answer was lost"
    );
    let second = env.run_once().await;
    assert_eq!(second.sent, 1, "{second:?}");
    assert_eq!(env.status(&q.id).await.status, Status::Sent);
    let got = sink.messages();
    assert_eq!(got.len(), 2);
    let stored = stored(&env, &q.id).await;
    assert!(
        as_sent(&got[0].raw) == stored,
        "the first copy is the stored bytes"
    );
    assert!(
        got[1].raw == got[0].raw,
        "the retry sent the same signed bytes"
    );
    dkim_verify(&got[1].raw, &record).unwrap_or_else(|e| panic!("dkimpy: {e}"));
}
