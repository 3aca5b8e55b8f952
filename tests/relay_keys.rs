//! Idempotency keys for transactional mail (issue 24): `POST /v1/messages` with `Idempotency-Key`
//! and `mailbridge send --key`. A retry after a lost 202 gets the first message back and queues
//! nothing; a different message under the same key is refused (409 / exit 2); concurrent requests
//! with one key queue one message; a key older than 24 hours names a new message. Against a real
//! server on SQLite and PostgreSQL state.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use mailbridge::http::{AppState, ServerHandle};
use serde_json::{Value, json};
use support::app;
use support::{db, smtp};

const TOKEN: &str = "test-token";

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: Arc<AppState>,
    server: Option<ServerHandle>,
    base: String,
    http: reqwest::Client,
}

impl Env {
    /// A server on `state_url` with a relay whose worker is not started: messages stay queued.
    async fn start(state_url: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = smtp::relay_config(dir.path(), state_url, "routes = [\"sendmail\"]\n");
        let state = app::app_state(app::load_config(&config)).await;
        let server = app::start_http(state.clone()).await;
        Env {
            _dir: dir,
            config,
            base: format!("http://{}", server.addr),
            state,
            server: Some(server),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, key: Option<&str>, body: &Value) -> (u16, Option<String>, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, replayed, r.json().await.unwrap())
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.state.store.pool())
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
        self.state.store.close().await;
    }
}

/// Runs `check` on a server ([`Env::start`]) on each state DB in turn, stopped after it.
async fn on_each_server(check: impl AsyncFn(&str, &Env)) {
    db::on_each_state_db(async |url| {
        let env = Env::start(url).await;
        check(url, &env).await;
        env.stop().await;
    })
    .await;
}

fn message(to: &str, subject: &str) -> Value {
    json!({
        "to": to,
        "subject": subject,
        "text": "Your reset link: https://club.example/reset/abc\n",
        "category": "password",
        "headers": {"X-Club-Ref": "pw-42"},
    })
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_message_and_a_different_one_409() {
    on_each_server(async |url, env| {
        let body = message("ana@example.org", "Reset your password");
        let (status, replayed, first) = env.post(Some("reset-ana-1"), &body).await;
        assert_eq!(status, 202, "{url}: {first}");
        assert_eq!(replayed, None, "{url}");
        assert!(first["id"].is_string() && first["message_id"].is_string());

        // The 202 was lost; the client sends the same request again.
        let (status, replayed, again) = env.post(Some("reset-ana-1"), &body).await;
        assert_eq!(status, 202, "{url}: {again}");
        assert_eq!(again, first, "{url}: the first message's id and message_id");
        assert_eq!(replayed.as_deref(), Some("true"), "{url}");
        assert_eq!(env.count("outbox").await, 1, "{url}: queued once");

        // The same key with anything different is refused and queues nothing.
        let mut other_headers = body.clone();
        other_headers["headers"]["X-Club-Ref"] = json!("pw-43");
        let mut other_text = body.clone();
        other_text["text"] = json!("Another link");
        for (what, other) in [
            (
                "recipient",
                message("ben@example.org", "Reset your password"),
            ),
            (
                "subject",
                message("ana@example.org", "Reset your password now"),
            ),
            ("headers", other_headers),
            ("text", other_text),
        ] {
            let (status, _, err) = env.post(Some("reset-ana-1"), &other).await;
            assert_eq!(status, 409, "{url}: a different {what}: {err}");
            assert_eq!(err["error"]["code"], "idempotency_key_reused", "{url}");
            let text = err["error"]["message"].as_str().unwrap();
            assert!(text.contains("reset-ana-1"), "{url}: names the key: {text}");
        }
        assert_eq!(env.count("outbox").await, 1, "{url}: nothing queued");

        // Without a key, or with another one, each request is a message of its own.
        assert_eq!(env.post(None, &body).await.0, 202);
        let (_, _, other) = env.post(Some("reset-ana-2"), &body).await;
        assert_ne!(other["id"], first["id"], "{url}");
        assert_eq!(env.count("outbox").await, 3, "{url}");

        // A key older than 24 hours names a new message.
        sqlx::query(
            "UPDATE message_keys SET created_at = '2000-01-01T00:00:00.000Z' WHERE idempotency_key = $1",
        )
        .bind("reset-ana-1")
        .execute(env.state.store.pool())
        .await
        .unwrap();
        let changed = message("ana@example.org", "Reset your password, again");
        let (status, replayed, renewed) = env.post(Some("reset-ana-1"), &changed).await;
        assert_eq!((status, replayed), (202, None), "{url}: {renewed}");
        assert_ne!(renewed["id"], first["id"], "{url}");
        let (_, _, again) = env.post(Some("reset-ana-1"), &changed).await;
        assert_eq!(again["id"], renewed["id"], "{url}");
        assert_eq!(env.count("outbox").await, 4, "{url}");
        assert_eq!(env.count("message_keys").await, 2, "{url}");

        // A key that is not printable ASCII, or too long, is refused before anything is queued.
        for bad in ["x".repeat(256), "tab\tinside".to_owned()] {
            let (status, _, err) = env.post(Some(&bad), &body).await;
            assert_eq!(status, 400, "{url}: {err}");
            assert_eq!(err["error"]["code"], "invalid_idempotency_key", "{url}");
        }
        assert_eq!(env.count("outbox").await, 4, "{url}");
    })
    .await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_queue_one_message() {
    on_each_server(async |url, env| {
        let body = message("ana@example.org", "Welcome");
        let answers =
            futures::future::join_all((0..24).map(|_| env.post(Some("welcome-ana"), &body))).await;
        let first_id = answers[0].2["id"].clone();
        for (status, _, answer) in &answers {
            assert_eq!(*status, 202, "{url}: {answer}");
            assert_eq!(answer["id"], first_id, "{url}");
        }
        let fresh = answers.iter().filter(|(_, r, _)| r.is_none()).count();
        assert_eq!(fresh, 1, "{url}: exactly one request queued the message");
        assert_eq!(env.count("outbox").await, 1, "{url}");
        assert_eq!(env.count("outbox_bodies").await, 1, "{url}");
        assert_eq!(env.count("message_keys").await, 1, "{url}");
    })
    .await;
}

#[tokio::test]
async fn cli_send_with_the_same_key_twice_prints_the_same_id() {
    on_each_server(async |url, env| {
        let text = env.config.with_file_name("text.txt");
        std::fs::write(&text, "Hello from the club.\n").unwrap();
        let send = |subject: &str| {
            std::process::Command::new(db::binary())
                .arg("--config")
                .arg(&env.config)
                .args([
                    "send",
                    "--to",
                    "ana@example.org",
                    "--subject",
                    subject,
                    "--key",
                    "cli-key-7",
                    "--text",
                ])
                .arg(&text)
                .env("MAILBRIDGE_LOG", "warn")
                .output()
                .unwrap()
        };
        let first = send("Hello");
        assert!(
            first.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        let again = send("Hello");
        assert!(again.status.success(), "{url}");
        let id = String::from_utf8_lossy(&first.stdout).trim().to_owned();
        assert_eq!(id.len(), 32, "{url}: {id}");
        assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id, "{url}");
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("nothing new was queued"),
            "{url}"
        );
        assert_eq!(env.count("outbox").await, 1, "{url}");

        let other = send("Hello again");
        assert_eq!(other.status.code(), Some(2), "{url}");
        let err = String::from_utf8_lossy(&other.stderr);
        assert!(
            err.contains("cli-key-7") && err.contains("--key"),
            "{url}: {err}"
        );
        assert!(other.stdout.is_empty(), "{url}");
        assert_eq!(env.count("outbox").await, 1, "{url}");
    })
    .await;
}
