//! The `serve` test environment shared by tests/serve.rs and tests/attacks.rs: the real server
//! from a config file on port 0, the provider simulator with one list, a SQLite member DB with
//! five members, and a SQLite or PostgreSQL state DB.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailbridge::http::ServerHandle;
use mailbridge::providers::mailchimp::webhook::mailchimp_signature;
use serde_json::Value;
use sqlx::AnyPool;

use super::app;
use super::config::ConfigFile;
use super::db::{self as common, Kind};
use super::sim::TestSim;

pub const SECRET: &str = "url-secret-0123456789";
pub const TOKEN: &str = "api-token-abcdef";
pub const MANDRILL_KEY: &str = "mandrill-key-xyz";
/// The audience's webhook signing secret in tests whose deliveries are signed (applied as they
/// come); an unsigned delivery is confirmed with the provider first.
pub const SIGNING: &str = "whsec-serve-tests";

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub sim: TestSim,
    pub list: String,
    pub members: AnyPool,
    pub state: AnyPool,
    pub server: Option<ServerHandle>,
    pub base: String,
    pub http: reqwest::Client,
    pub config_text: String,
    pub _dbs: Vec<common::TestDb>,
}

#[derive(Default)]
pub struct Options {
    pub pg_state: bool,
    /// Members DB URL override (e.g. through a TCP proxy).
    pub members_url: Option<String>,
    pub signing_secret: Option<String>,
    pub extra_server: String,
    /// `[relay]` lines (after its `from`); no `[relay]` section when `None`.
    pub relay: Option<String>,
    /// How many members the member DB holds ([`member_sql`] rows 1..=n); 5 when `None`.
    pub members: Option<u64>,
    /// Sections appended to the config as written (`[admin]`, say).
    pub extra_sections: String,
}

pub fn member_sql(i: u64) -> String {
    common::member_row(i, "full", true)
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Env {
    /// [`Env::start`] with the audience's webhooks signed with [`SIGNING`].
    pub async fn start_signed() -> Env {
        Env::start(Options {
            signing_secret: Some(SIGNING.into()),
            ..Options::default()
        })
        .await
    }

    pub async fn start(opts: Options) -> Env {
        sqlx::any::install_default_drivers();
        let _ = mailbridge::http::metrics::handle();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let sim = TestSim::start().await;
        let list = sim.create_list().await;
        let mut dbs = Vec::new();
        let state_kind = if opts.pg_state {
            Kind::Postgres
        } else {
            Kind::Sqlite
        };
        // Without a reachable PostgreSQL outside CI, the state DB falls back to SQLite.
        let state_db = match common::state_db(state_kind, &dir).await {
            Some(db) => db,
            None => common::state_db(Kind::Sqlite, &dir).await.unwrap(),
        };
        let state_url = state_db.url.clone();
        dbs.extend(state_db.guard);
        let members_file = format!("sqlite://{}/members.db", dir.display());
        let members = common::create_members(
            &mailbridge::config::DbUrl::parse(&members_file, &dir).unwrap(),
            (1..=opts.members.unwrap_or(5)).map(member_sql),
        )
        .await;
        let members_url = opts.members_url.clone().unwrap_or(members_file);
        let signing = opts
            .signing_secret
            .as_deref()
            .map(|s| format!("webhook_signing_secret = \"{s}\"\n"))
            .unwrap_or_default();
        let mut config_file = ConfigFile::new(&state_url, members_url);
        if let Some(relay) = &opts.relay {
            config_file = config_file.relay(relay);
        }
        let config_text = config_file
            .extra(&opts.extra_sections)
            .mailchimp("test-key", Some(&sim.api_url), "")
            .audience(&list, "")
            .audience_extra(&signing)
            .server(&format!(
                r#"bind = "127.0.0.1:0"
api_token = "{TOKEN}"
webhook_secret = "{SECRET}"
transactional_webhook_key = "{MANDRILL_KEY}"
transactional_webhook_url = "http://127.0.0.1:1/webhooks/mailchimp-transactional"
{extra}
"#,
                extra = opts.extra_server,
            ))
            .text();
        let path = dir.join("mailbridge.toml");
        std::fs::write(&path, &config_text).unwrap();
        let server = app::start_serve(app::load_config(&path), None).await;
        let base = format!("http://{}", server.addr);
        let state = AnyPool::connect(&state_url).await.unwrap();
        Env {
            _tmp: tmp,
            dir,
            sim,
            list,
            members,
            state,
            server: Some(server),
            base,
            http: reqwest::Client::new(),
            config_text,
            _dbs: dbs,
        }
    }

    /// A config for CLI runs: the same, with `public_url` pointing at the running server.
    pub fn cli_config(&self) -> PathBuf {
        let text = self.config_text.replace(
            "[server]\n",
            &format!("[server]\npublic_url = \"{}\"\n", self.base),
        );
        let path = self.dir.join("cli.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `mailbridge sync` (which also registers the webhook to this server).
    pub fn sync(&self) -> std::process::Output {
        self.sync_with(&self.cli_config())
    }

    /// Runs `mailbridge sync` without `public_url`: no webhook registration.
    pub fn sync_plain(&self) -> std::process::Output {
        self.sync_with(&self.dir.join("mailbridge.toml"))
    }

    pub fn sync_with(&self, config: &Path) -> std::process::Output {
        let out = std::process::Command::new(common::binary())
            .arg("--config")
            .arg(config)
            .arg("sync")
            .env("MAILBRIDGE_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `mailbridge serve` as a child process with `config` on a free port and `MAILBRIDGE_LOG=log`
    /// (stderr piped), once it answers `/healthz`; and its base URL.
    pub async fn spawn_serve(&self, config: &Path, log: &str) -> (tokio::process::Child, String) {
        self.spawn_serve_env(config, log, &[]).await
    }

    /// [`Env::spawn_serve`] with these environment variables set too.
    pub async fn spawn_serve_env(
        &self,
        config: &Path,
        log: &str,
        vars: &[(&str, &str)],
    ) -> (tokio::process::Child, String) {
        let port = super::smtp::free_port();
        let child = serve_command(config, port, log, vars)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base).await;
        (child, base)
    }
    pub fn hook_url(&self) -> String {
        format!("{}/webhooks/mailchimp/{SECRET}", self.base)
    }

    pub async fn post_form(
        &self,
        url: &str,
        form: &str,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.unwrap()
    }

    /// Posts an unsigned delivery to the Mailchimp webhook URL.
    pub async fn post_hook(&self, form: &str) -> reqwest::Response {
        self.post_form(&self.hook_url(), form, &[]).await
    }

    /// Posts a delivery to the Mailchimp webhook URL with the signature header `signature`.
    pub async fn post_hook_signed_as(&self, form: &str, signature: String) -> reqwest::Response {
        self.post_form(
            &self.hook_url(),
            form,
            &[("x-mailchimp-signature", signature)],
        )
        .await
    }

    /// Posts a delivery signed with [`SIGNING`] (the test configured it for the audience).
    pub async fn post_signed(&self, form: &str) -> reqwest::Response {
        self.post_signed_to(&self.hook_url(), form).await
    }

    /// [`Env::post_signed`] to `url`, a Mailchimp webhook URL of this or another server.
    pub async fn post_signed_to(&self, url: &str, form: &str) -> reqwest::Response {
        let sig = mailchimp_signature(
            SIGNING.as_bytes(),
            chrono::Utc::now().timestamp(),
            form.as_bytes(),
        );
        self.post_form(url, form, &[("x-mailchimp-signature", sig)])
            .await
    }

    /// [`Env::post_signed`], which must be answered 200.
    pub async fn deliver_signed(&self, form: &str) {
        let status = self.post_signed(form).await.status();
        assert_eq!(status, reqwest::StatusCode::OK, "signed delivery {form}");
    }

    /// A request to `path` with the API token.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// `GET` with the API token, as JSON.
    pub async fn api_json(&self, path: &str) -> Value {
        self.api(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET` with the API token on the server at `base`, as JSON.
    pub async fn api_json_at(&self, base: &str, path: &str) -> Value {
        self.http
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Starts a sync run through `POST /v1/sync` (which must be accepted); its run id.
    pub async fn start_sync_run(&self) -> String {
        self.post_sync_at(&self.base).await
    }

    /// Asks the server at `base` for a sync (`POST /v1/sync`, which must be accepted); its run id.
    pub async fn post_sync_at(&self, base: &str) -> String {
        let r = self
            .http
            .post(format!("{base}/v1/sync"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        r.json::<Value>().await.unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `GET /healthz`, sent.
    pub async fn healthz(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Polls `GET /v1/sync/{run_id}` until the run has a report or failed.
    pub async fn wait_for_run(&self, run_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.api_json(&format!("/v1/sync/{run_id}")).await;
            if v.get("members_read").is_some() || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "no report: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number a `SELECT COUNT(*) …` on the state DB returns.
    pub async fn state_count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.state)
            .await
            .unwrap()
    }

    /// Polls [`Env::state_count`] until it is `want`, for at most `limit`.
    pub async fn wait_state_count(
        &self,
        what: &str,
        sql: &'static str,
        want: i64,
        limit: Duration,
    ) {
        wait_until(what, limit, || async {
            self.state_count(sql).await == want
        })
        .await;
    }

    pub async fn event_count(&self) -> i64 {
        self.state_count("SELECT COUNT(*) FROM provider_events")
            .await
    }

    pub async fn member_status(&self, id: i64) -> (String, bool) {
        let (status, newsletter): (String, i64) = sqlx::query_as(
            "SELECT email_status, CAST(newsletter AS INTEGER) FROM members WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.members)
        .await
        .unwrap();
        (status, newsletter != 0)
    }

    pub async fn wait_member_status(&self, id: i64, want: &str) -> Duration {
        let started = Instant::now();
        wait_until(
            &format!("member {id} to be {want}"),
            Duration::from_secs(10),
            || async { self.member_status(id).await.0 == want },
        )
        .await;
        started.elapsed()
    }

    pub async fn suppression(&self, email: &str) -> Option<(String, String)> {
        sqlx::query_as("SELECT reason, source FROM suppressions WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.state)
            .await
            .unwrap()
    }

    pub async fn remote_status(&self, id: i64) -> String {
        sqlx::query_scalar(
            "SELECT remote_status FROM contacts WHERE audience = 'newsletter' AND member_key = $1",
        )
        .bind(id.to_string())
        .fetch_one(&self.state)
        .await
        .unwrap()
    }

    /// The outcome of the latest `kind` event for `email`, once it has been applied.
    pub async fn outcome_of(&self, email: &str, kind: &str) -> Option<String> {
        let latest = || async {
            sqlx::query_as::<_, (Option<String>, Option<String>)>(
                "SELECT applied_at, outcome FROM provider_events WHERE email = $1 AND event_type = $2 ORDER BY id DESC LIMIT 1",
            )
            .bind(email)
            .bind(kind)
            .fetch_optional(&self.state)
            .await
            .unwrap()
        };
        wait_until(
            "the event to be applied",
            Duration::from_secs(10),
            || async { latest().await.is_some_and(|(applied, _)| applied.is_some()) },
        )
        .await;
        latest().await.and_then(|(_, outcome)| outcome)
    }

    /// Asserts that the latest `kind` event for `email` was applied with the outcome `want`.
    pub async fn assert_outcome(&self, email: &str, kind: &str, want: &str) {
        let got = self.outcome_of(email, kind).await;
        assert_eq!(got.as_deref(), Some(want), "outcome of {kind} for {email}");
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        super::app::metrics_text(&self.base).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// `mailbridge --config <config> serve --bind 127.0.0.1:<port>` with `MAILBRIDGE_LOG=log` and
/// these environment variables, killed on drop; the caller says where stderr goes.
pub fn serve_command(
    config: &Path,
    port: u16,
    log: &str,
    vars: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(common::binary());
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .env("MAILBRIDGE_LOG", log)
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    command
}

/// Waits until the server at `base` answers `/healthz`.
pub async fn wait_healthy(base: &str) {
    wait_until("the child server", Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok()
    })
    .await;
}

pub fn unsubscribe_form(list: &str, email: &str, fired_at: &str, reason: &str) -> String {
    serde_urlencoded::to_string([
        ("type", "unsubscribe"),
        ("fired_at", fired_at),
        ("data[action]", "unsub"),
        ("data[reason]", reason),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", list),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[campaign_id]", "cb398d21d2"),
        ("data[merges][EMAIL]", email),
        ("data[merges][FNAME]", "Mailchimp"),
        ("data[merges][LNAME]", "API"),
        ("data[merges][INTERESTS]", "Group1,Group2"),
    ])
    .unwrap()
}

pub fn subscribe_form(list: &str, email: &str, fired_at: &str) -> String {
    serde_urlencoded::to_string([
        ("type", "subscribe"),
        ("fired_at", fired_at),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", list),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[ip_signup]", "10.20.10.30"),
        ("data[merges][EMAIL]", email),
        ("data[merges][FNAME]", "Mailchimp"),
        ("data[merges][LNAME]", "API"),
        ("data[merges][INTERESTS]", "Group1,Group2"),
    ])
    .unwrap()
}

pub fn cleaned_form(list: &str, email: &str, fired_at: &str) -> String {
    serde_urlencoded::to_string([
        ("type", "cleaned"),
        ("fired_at", fired_at),
        ("data[list_id]", list),
        ("data[campaign_id]", "4fjk2ma9xd"),
        ("data[reason]", "hard"),
        ("data[email]", email),
    ])
    .unwrap()
}
