//! No secret reaches the log: the binary runs `serve` (a signed Mailchimp webhook, a message over
//! the API delivered through a STARTTLS+AUTH smarthost, `GET /v1/messages/{id}`), `sync` against
//! the simulator (which registers the webhook URL carrying its secret), `send` and `relay --once`,
//! all at debug level, once with text logs and once with JSON logs (`[log] format` in the config,
//! and the `--log-format` flag). Every configured secret has a distinctive value, passed through
//! `${ENV}` as an EnvironmentFile would; none of them, nor the encoded forms that travel on the
//! wire (Basic auth, SMTP AUTH PLAIN), appears on stdout or stderr. In JSON mode every stderr line
//! is a JSON object with `timestamp`, `level` and `message`.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use mailbridge::providers::mailchimp::webhook::mailchimp_signature;
use serde_json::{Value, json};
use support::config::ConfigFile;
use support::db::{self as common, Kind};
use support::serve::{member_sql, unsubscribe_form, wait_until};
use support::sim::TestSim;
use support::smtp::{self, SinkOptions};

/// Each secret: its environment variable and its value.
const SECRETS: &[(&str, &str)] = &[
    ("MB_MAILCHIMP_API_KEY", "c0ffee4417mailchimpkey-us6"),
    ("MB_WEBHOOK_SECRET", "hookpath4417secret"),
    ("MB_API_TOKEN", "apitoken4417secret"),
    ("MB_SIGNING_SECRET", "signing4417secret"),
    ("MB_MANDRILL_KEY", "mandrill4417secret"),
    ("MB_VERP_SECRET", "verp4417secretkeyvalue"),
    ("MB_UNSUBSCRIBE_SECRET", "unsub4417secretkeyvalue"),
    ("MB_SMTP_PASSWORD", "smtppass4417secret"),
    ("MB_DB_PASSWORD", "dbpass4417secret"),
];
const SMTP_USER: &str = "relayuser";

fn secret(name: &str) -> &'static str {
    SECRETS.iter().find(|(n, _)| *n == name).unwrap().1
}

/// What must never show: each value, and the encoded forms its protocol sends.
fn forbidden() -> Vec<(String, String)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out: Vec<(String, String)> = SECRETS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    out.push((
        "Mailchimp Basic auth".into(),
        b64(&format!("anystring:{}", secret("MB_MAILCHIMP_API_KEY"))),
    ));
    out.push((
        "SMTP AUTH PLAIN".into(),
        b64(&format!("\0{SMTP_USER}\0{}", secret("MB_SMTP_PASSWORD"))),
    ));
    out.push((
        "SMTP AUTH LOGIN password".into(),
        b64(secret("MB_SMTP_PASSWORD")),
    ));
    out
}

fn assert_clean(what: &str, text: &str) {
    for (name, value) in forbidden() {
        assert!(
            !text.contains(&value),
            "{name} appears in the output of {what}:\n{text}"
        );
    }
}

/// In JSON mode: every stderr line is an object with timestamp, level and message. Returns how
/// many lines there were.
fn assert_json_lines(what: &str, stderr: &str) -> usize {
    let mut n = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: a log line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message"] {
            assert!(v.get(key).is_some(), "{what}: no `{key}` in {line}");
        }
        n += 1;
    }
    n
}

fn command(config: &Path, flag: Option<&str>) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.arg("--config").arg(config);
    if let Some(f) = flag {
        cmd.args(["--log-format", f]);
    }
    cmd.env("MAILBRIDGE_LOG", "debug")
        .env_remove("MAILBRIDGE_LOG_FORMAT")
        .envs(SECRETS.iter().copied());
    cmd
}

fn ok(what: &str, out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    (stdout, stderr)
}

/// One full round in `format` ("text" or "json"); the outputs checked.
async fn round(format: &str) {
    let json = format == "json";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = TestSim::start().await;
    let list = sim.create_list().await;
    // The state DB on PostgreSQL with a password in its URL (the test server trusts loopback and
    // ignores it), else SQLite.
    let state = match common::state_db(Kind::Postgres, d).await {
        Some(db) => db,
        None => common::state_db(Kind::Sqlite, d).await.unwrap(),
    };
    let state_url = state.url.replacen(
        "postgres://postgres@",
        "postgres://postgres:${MB_DB_PASSWORD}@",
        1,
    );
    let with_password = state_url.contains("MB_DB_PASSWORD");
    let members = format!("sqlite://{}/members.db", d.display());
    common::create_members(
        &mailbridge::config::DbUrl::parse(&members, d).unwrap(),
        (1..=5).map(member_sql),
    )
    .await;
    let certs = smtp::certs(d);
    let (sink, smtp_lines) = smtp::smarthost(
        d,
        &certs,
        (SMTP_USER, secret("MB_SMTP_PASSWORD")),
        SinkOptions::default(),
    );
    // The section's literal password becomes an ${ENV} reference, as in production.
    let smtp_lines = smtp_lines.replace(secret("MB_SMTP_PASSWORD"), "${MB_SMTP_PASSWORD}");
    let port = smtp::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = ConfigFile::new(&state_url, &members)
        .mailchimp("${MB_MAILCHIMP_API_KEY}", Some(&sim.api_url), "")
        .audience(&list, "")
        .audience_extra("webhook_signing_secret = \"${MB_SIGNING_SECRET}\"\n")
        .server(&format!(
            "bind = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\napi_token = \"${{MB_API_TOKEN}}\"\nwebhook_secret = \"${{MB_WEBHOOK_SECRET}}\"\ntransactional_webhook_key = \"${{MB_MANDRILL_KEY}}\"\n"
        ))
        .relay(&format!(
            "routes = [\"smtp\"]\nbounce_domain = \"bounces.club.example\"\nverp_secret = \"${{MB_VERP_SECRET}}\"\nunsubscribe_secret = \"${{MB_UNSUBSCRIBE_SECRET}}\"\n{smtp_lines}"
        ))
        .extra(if json { "\n[log]\nformat = \"json\"\n" } else { "" })
        .write(d);
    let mut outputs: Vec<(String, String, String)> = Vec::new();

    // serve, logging to a file (a pipe would fill up at debug level).
    let serve_log = d.join("serve.log");
    let mut serve = tokio::process::Command::from(command(&config, None))
        .arg("serve")
        .stdout(std::fs::File::create(d.join("serve.out")).unwrap())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap();
    wait_until("serve", Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok()
    })
    .await;

    // sync: creates the members and registers the webhook (its URL holds the secret).
    let (out, err) = ok(
        "sync",
        command(&config, json.then_some("json"))
            .arg("sync")
            .output()
            .unwrap(),
    );
    outputs.push(("sync".into(), out, err));

    let http = reqwest::Client::new();
    // A signed webhook delivery, applied as it comes.
    let form = unsubscribe_form(&list, "m1@example.org", "2026-11-28 10:00:00", "manual");
    let sig = mailchimp_signature(
        secret("MB_SIGNING_SECRET").as_bytes(),
        chrono::Utc::now().timestamp(),
        form.as_bytes(),
    );
    let hook = http
        .post(format!(
            "{base}/webhooks/mailchimp/{}",
            secret("MB_WEBHOOK_SECRET")
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-mailchimp-signature", sig)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), reqwest::StatusCode::OK);
    // A message over the API, delivered by serve's relay worker.
    let message: Value = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(secret("MB_API_TOKEN"))
        .json(&json!({"to": "ana@example.org", "subject": "Welcome", "text": "Hello.", "category": "registration"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = message["id"].as_str().unwrap().to_owned();
    let pool = sqlx::AnyPool::connect(&state.url).await.unwrap();
    wait_until(
        "the webhook event applied",
        Duration::from_secs(30),
        || async {
            let (n,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM provider_events WHERE applied_at IS NOT NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n >= 1
        },
    )
    .await;
    sink.wait_for_async(1, Duration::from_secs(30)).await;
    let status = http
        .get(format!("{base}/v1/messages/{id}"))
        .bearer_auth(secret("MB_API_TOKEN"))
        .send()
        .await
        .unwrap();
    assert!(status.status().is_success());

    // send + relay --once through the CLI.
    let text = d.join("body.txt");
    std::fs::write(&text, "Your password reset.").unwrap();
    let (out, err) = ok(
        "send",
        command(&config, None)
            .args([
                "send",
                "--to",
                "bob@example.org",
                "--subject",
                "Reset",
                "--text",
            ])
            .arg(&text)
            .output()
            .unwrap(),
    );
    outputs.push(("send".into(), out, err));
    let (out, err) = ok(
        "relay --once",
        command(&config, None)
            .args(["relay", "--once"])
            .output()
            .unwrap(),
    );
    outputs.push(("relay --once".into(), out, err));
    sink.wait_for_async(2, Duration::from_secs(30)).await;

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().unwrap().to_string())
        .status();
    let exit = tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "serve exits 0 on SIGTERM: {exit:?}");
    outputs.push((
        "serve".into(),
        std::fs::read_to_string(d.join("serve.out")).unwrap(),
        std::fs::read_to_string(&serve_log).unwrap(),
    ));

    let mut debug_lines = 0;
    for (what, stdout, stderr) in &outputs {
        let what = format!("{what} ({format} logs)");
        assert_clean(&what, stdout);
        assert_clean(&what, stderr);
        debug_lines += stderr.matches("DEBUG").count();
        if json {
            assert!(assert_json_lines(&what, stderr) > 0, "{what}: no log lines");
        } else {
            assert!(
                stderr
                    .lines()
                    .all(|l| serde_json::from_str::<Value>(l).is_err()),
                "{what}: text logs were asked for"
            );
        }
    }
    assert!(debug_lines > 0, "the commands logged at debug level");
    let serve_log = &outputs.last().unwrap().2;
    assert!(
        serve_log.contains("mailbridge serve is listening"),
        "{serve_log}"
    );
    eprintln!(
        "{format}: {} commands, {} log bytes checked, state DB password in URL: {with_password}",
        outputs.len(),
        outputs
            .iter()
            .map(|(_, o, e)| o.len() + e.len())
            .sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_text_or_json_logs_of_a_full_run() {
    if !smtp::aiosmtpd_available() {
        return;
    }
    round("text").await;
    round("json").await;
}

#[test]
fn the_flag_wins_over_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigFile::new("sqlite://state.db", "sqlite://members.db")
        .extra("\n[log]\nformat = \"json\"\n")
        .write(dir.path());
    // `migrate` logs nothing at info; the state DB's creation is logged at debug.
    let run = |flag: Option<&str>| {
        ok(
            "migrate",
            command(&config, flag).arg("migrate").output().unwrap(),
        )
        .1
    };
    let from_config = run(None);
    assert!(assert_json_lines("config json", &from_config) > 0);
    let text = run(Some("text"));
    assert!(!text.trim().is_empty());
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{text}"
    );
}
