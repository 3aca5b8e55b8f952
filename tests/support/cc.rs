//! Constant Contact end to end: the simulator in process with its control routes, a second grant
//! (a campaign sender that is not mailbridge), a config and mapping for a `constant_contact`
//! audience, and [`CcApp`]: a fresh state DB (SQLite or PostgreSQL), a SQLite member DB, the list,
//! and mailbridge connected through the binary (`auth constant-contact --refresh-token -`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mailbridge::simulator::{SimConfig, Simulator, SimulatorHandle};
use reqwest::{Client, Method};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::db::{self, Kind};

/// Simulator settings for fast tests: no per-second limit, activities done at once.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        cc_requests_per_second: 0,
        cc_activity_delay: Duration::from_millis(20),
        ..SimConfig::default()
    }
}

/// A new app's grant from `POST /_sim/constant-contact/connect`.
#[derive(Clone, Debug)]
pub struct Grant {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

/// The simulator and a client for its routes.
pub struct CcSim {
    pub handle: SimulatorHandle,
    pub http: Client,
}

impl CcSim {
    pub async fn start(config: SimConfig) -> CcSim {
        let handle = Simulator::start_with("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let http = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        CcSim { handle, http }
    }

    /// `{method} /_sim/constant-contact{path}` with an optional body; must answer 200.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(
            method,
            format!("{}/_sim/constant-contact{path}", self.handle.base_url()),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "/_sim/constant-contact{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn connect(&self) -> Grant {
        let g = self.control(Method::POST, "/connect", None).await;
        Grant {
            client_id: g["client_id"].as_str().unwrap().to_owned(),
            client_secret: g["client_secret"].as_str().unwrap().to_owned(),
            refresh_token: g["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn create_list(&self, name: &str) -> String {
        let list = self
            .control(Method::POST, "/lists", Some(json!({"name": name})))
            .await;
        list["list_id"].as_str().unwrap().to_owned()
    }

    /// Every contact on the list, in the control routes' shape.
    pub async fn contacts(&self, list: &str) -> Vec<Value> {
        self.control(Method::GET, &format!("/lists/{list}/contacts"), None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// The contact at `email` if it is on `list`.
    pub async fn on_list(&self, list: &str, email: &str) -> Option<Value> {
        self.contacts(list)
            .await
            .into_iter()
            .find(|c| c["email"].as_str().unwrap().eq_ignore_ascii_case(email))
    }

    /// The contact opts out at Constant Contact (opt_out_source Contact).
    pub async fn unsubscribe(&self, email: &str) -> Value {
        self.control(
            Method::POST,
            &format!("/contacts/{email}/unsubscribe"),
            None,
        )
        .await
    }

    /// A bounce of `code` on the campaign sent last.
    pub async fn bounce(&self, email: &str, code: &str) -> Value {
        self.control(
            Method::POST,
            &format!("/contacts/{email}/bounce"),
            Some(json!({"code": code})),
        )
        .await
    }

    pub async fn approve(&self, user_code: &str) -> Value {
        self.control(
            Method::POST,
            "/device/approve",
            Some(json!({"user_code": user_code})),
        )
        .await
    }

    /// Moves the simulated clock on; returns its new time.
    pub async fn advance(&self, seconds: f64) -> chrono::DateTime<chrono::Utc> {
        let response = self
            .http
            .post(format!("{}/_sim/clock/advance", self.handle.base_url()))
            .json(&json!({"seconds": seconds}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let now: Value = response.json().await.unwrap();
        chrono::DateTime::parse_from_rfc3339(now["now"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    /// The simulator's clock now.
    pub async fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.advance(0.0).await
    }

    /// `GET /_sim/stats`' Constant Contact part.
    pub async fn stats(&self) -> Value {
        let stats: Value = self
            .http
            .get(format!("{}/_sim/stats", self.handle.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["constant_contact"].clone()
    }

    /// How many times the operation was called.
    pub async fn operations(&self, operation_id: &str) -> u64 {
        self.stats().await["operations"][operation_id]
            .as_u64()
            .unwrap_or(0)
    }

    /// A token request to the simulator's OAuth server.
    pub async fn refresh_with(&self, grant: &Grant, refresh_token: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/token", self.handle.oauth_url()))
            .basic_auth(&grant.client_id, Some(&grant.client_secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap()
    }

    /// The requests the simulator accepted today from the app `client_id` (its own count).
    pub fn used_today(&self, client_id: &str) -> u64 {
        self.handle
            .state()
            .world()
            .cc
            .budgets
            .get(client_id)
            .map_or(0, |b| b.used_today())
    }

    /// `(items_total_count, completed)` of every bulk activity the simulator received (imports
    /// and list removals alike: a test without removals reads its imports here).
    pub fn activities(&self) -> Vec<(u64, bool)> {
        use mailbridge::simulator::constant_contact::state::ActivityState;
        let world = self.handle.state().world();
        world
            .cc
            .activities
            .values()
            .map(|a| {
                (
                    a.status.items_total_count,
                    a.state == ActivityState::Completed,
                )
            })
            .collect()
    }
}

/// Another app that sends campaigns at the simulator through its `/v3` API (never mailbridge's
/// grant).
pub struct Sender<'a> {
    sim: &'a CcSim,
    access_token: String,
}

impl<'a> Sender<'a> {
    pub async fn connect(sim: &'a CcSim) -> Sender<'a> {
        let grant = sim.connect().await;
        let response = sim.refresh_with(&grant, &grant.refresh_token).await;
        assert_eq!(response.status(), 200);
        let tokens: Value = response.json().await.unwrap();
        Sender {
            sim,
            access_token: tokens["access_token"].as_str().unwrap().to_owned(),
        }
    }

    async fn v3(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .sim
            .http
            .request(
                method,
                format!("{}{path}", self.sim.handle.constant_contact_url()),
            )
            .bearer_auth(&self.access_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a campaign to `list` and sends it now; returns its campaign activity id.
    pub async fn send_campaign(&self, name: &str, list: &str) -> String {
        let activity = json!({
            "format_type": 5, "from_name": "The Club", "from_email": "club@example.org",
            "reply_to_email": "club@example.org", "subject": name,
            "html_content": "<html><body>[[trackingImage]]<p>Hello</p></body></html>",
        });
        let (status, created) = self
            .v3(
                Method::POST,
                "/emails",
                json!({"name": name, "email_campaign_activities": [activity.clone()]}),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        let id = created["campaign_activities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["role"] == "primary_email")
            .unwrap()["campaign_activity_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut update = activity;
        update["contact_list_ids"] = json!([list]);
        let (status, body) = self
            .v3(Method::PUT, &format!("/emails/activities/{id}"), update)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .v3(
                Method::POST,
                &format!("/emails/activities/{id}/schedules"),
                json!({"scheduled_date": "0"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        id
    }
}

/// The shipped mapping for a Constant Contact audience: without tags (Constant Contact has none
/// here), with `consent_at` read, and with `extra` merge fields `X01`… each carrying
/// `first_name` (so a test can make members large).
pub fn cc_mapping(audiences: &[&str], extra: usize) -> String {
    let text = db::consent_at_mapping(true);
    let find = |what: &str| {
        text.find(what)
            .unwrap_or_else(|| panic!("{what} in the mapping"))
    };
    let audience_at = find("[audiences.newsletter]");
    let tags_at = find("# One tag per membership value");
    let writeback_at = find("# Provider events written back");
    let mut audience = text[audience_at..tags_at].to_owned();
    for i in 1..=extra {
        audience.push_str(&format!(
            "[[audiences.newsletter.merge_fields]]\ntag = \"X{i:02}\"\nname = \"Extra {i}\"\ncolumn = \"first_name\"\ntype = \"text\"\n\n"
        ));
    }
    let mut out = text[..audience_at].to_owned();
    for name in audiences {
        out.push_str(&audience.replace("audiences.newsletter", &format!("audiences.{name}")));
    }
    out.push_str(&text[writeback_at..]);
    out
}

/// One `[[audiences]]` on Constant Contact.
pub fn cc_audience(name: &str, list: &str) -> String {
    format!(
        "\n[[audiences]]\nname = \"{name}\"\nprovider = \"constant_contact\"\nlist_id = \"{list}\"\nmax_archive_percent = 100.0\n"
    )
}

/// Runs `mailbridge --config <config> <args>` with `stdin` written to its standard input.
pub async fn run_with_stdin(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = tokio::process::Command::new(db::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

/// What a test configures beyond the defaults.
#[derive(Clone)]
pub struct Setup {
    pub sim: SimConfig,
    /// Lines for `[providers.constant_contact]` (`requests_per_second = 100` unless given).
    pub provider: String,
    /// Audience names; each gets its own list (the first is `newsletter`).
    pub audiences: Vec<&'static str>,
    /// Extra merge fields (see [`cc_mapping`]).
    pub extra_fields: usize,
    /// Lines of a `[server]` section, when given.
    pub server: Option<String>,
    /// A public app (no `client_secret`), as the device flow connects it.
    pub public_app: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            sim: fast_sim(),
            provider: "requests_per_second = 100\n".to_owned(),
            audiences: vec!["newsletter"],
            extra_fields: 0,
            server: None,
            public_app: false,
        }
    }
}

/// The application against the Constant Contact simulator.
pub struct CcApp {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub sim: CcSim,
    pub grant: Grant,
    /// The list of each audience, in [`Setup::audiences`] order.
    pub lists: Vec<String>,
    pub config_path: PathBuf,
    pub members: sqlx::AnyPool,
    pub state: sqlx::AnyPool,
    pub state_url: String,
    pub _dbs: Vec<db::Db>,
}

impl CcApp {
    /// A fresh state DB of `kind`, a SQLite member DB with `rows`, the simulator, one list per
    /// audience, the config, and mailbridge connected with `auth constant-contact
    /// --refresh-token -`. `None` when PostgreSQL is unreachable outside CI.
    pub async fn start(
        kind: Kind,
        setup: Setup,
        rows: impl IntoIterator<Item = String>,
    ) -> Option<CcApp> {
        let app = CcApp::unconnected(kind, setup, rows).await?;
        let out = run_with_stdin(
            &app.config_path,
            &["auth", "constant-contact", "--refresh-token", "-"],
            &format!("{}\n", app.grant.refresh_token),
        )
        .await;
        assert!(
            out.status.success(),
            "auth: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(app)
    }

    /// [`CcApp::start`] without connecting (the device-flow test connects its own way).
    pub async fn unconnected(
        kind: Kind,
        setup: Setup,
        rows: impl IntoIterator<Item = String>,
    ) -> Option<CcApp> {
        sqlx::any::install_default_drivers();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let state_db = db::state_db(kind, &dir).await?;
        let member_db = db::member_db(Kind::Sqlite, &dir).await?;
        let sim = CcSim::start(setup.sim.clone()).await;
        let grant = sim.connect().await;
        let mut lists = Vec::new();
        let mut audiences = String::new();
        for name in &setup.audiences {
            let list = sim.create_list(&format!("Club {name}")).await;
            audiences.push_str(&cc_audience(name, &list));
            lists.push(list);
        }
        let mapping = dir.join("members.toml");
        std::fs::write(&mapping, cc_mapping(&setup.audiences, setup.extra_fields)).unwrap();
        if let Some(server) = &setup.server {
            audiences.push_str(&format!("\n[server]\n{server}"));
        }
        // `[providers.constant_contact]` pointing at the simulator, then the audiences.
        let secret = if setup.public_app {
            String::new()
        } else {
            format!("client_secret = \"{}\"\n", grant.client_secret)
        };
        let text = format!(
            "[state]\nurl = \"{}\"\n\n[members]\nurl = \"{}\"\nmapping = \"{}\"\n\n\
             [providers.constant_contact]\nclient_id = \"{}\"\n{secret}base_url = \"{}\"\n\
             auth_url = \"{}\"\n{}\n{audiences}",
            state_db.url,
            member_db.url,
            mapping.display(),
            grant.client_id,
            sim.handle.constant_contact_url(),
            sim.handle.oauth_url(),
            setup.provider,
        );
        let config_path = dir.join("mailbridge.toml");
        std::fs::write(&config_path, text).unwrap();
        let members_url = mailbridge::config::DbUrl::parse(&member_db.url, &dir).unwrap();
        let members = db::create_members(&members_url, rows).await;
        db::add_consent_at(&members, &members_url).await;
        // The state DB migrated, as `auth` would leave it, for the test's own queries.
        let state_url = mailbridge::config::DbUrl::parse(&state_db.url, &dir).unwrap();
        super::app::open_store(&state_url).await.close().await;
        let state = sqlx::AnyPool::connect(state_url.expose()).await.unwrap();
        Some(CcApp {
            _tmp: tmp,
            dir,
            sim,
            grant,
            lists,
            config_path,
            members,
            state,
            state_url: state_db.url.clone(),
            _dbs: vec![state_db, member_db],
        })
    }

    pub fn list(&self) -> &str {
        &self.lists[0]
    }

    /// Runs the binary with this config.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        db::run_binary(&self.config_path, args).await
    }

    /// Runs the binary, which must exit with `code`; its stdout's first line as JSON.
    pub async fn run_json(&self, args: &[&str], code: i32) -> Value {
        let out = self.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(stdout.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
    }

    /// `sync --json`, which must exit with `code`.
    pub async fn sync(&self, code: i32) -> Value {
        self.run_json(&["sync", "--json"], code).await
    }

    /// A SQL statement on the member DB.
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.members)
            .await
            .unwrap();
    }

    /// `(newsletter, email_status)` of member `id`.
    pub async fn member(&self, id: i64) -> (bool, String) {
        let (newsletter, status): (i64, String) = sqlx::query_as(
            "SELECT CASE WHEN newsletter THEN 1 ELSE 0 END, email_status FROM members WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.members)
        .await
        .unwrap();
        (newsletter != 0, status)
    }

    /// The refresh token mailbridge keeps in the state DB now.
    pub async fn stored_refresh_token(&self) -> String {
        let (token,): (String,) = sqlx::query_as(
            "SELECT refresh_token FROM oauth_tokens WHERE provider = 'constant_contact' AND account = $1",
        )
        .bind(&self.grant.client_id)
        .fetch_one(&self.state)
        .await
        .unwrap();
        token
    }

    /// The access token mailbridge keeps in the state DB now.
    pub async fn stored_access_token(&self) -> String {
        let (token,): (Option<String>,) = sqlx::query_as(
            "SELECT access_token FROM oauth_tokens WHERE provider = 'constant_contact' AND account = $1",
        )
        .bind(&self.grant.client_id)
        .fetch_one(&self.state)
        .await
        .unwrap();
        token.unwrap()
    }

    /// Member keys with a contact row in the state DB for the audience.
    pub async fn synced_keys(&self, audience: &str) -> Vec<String> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT member_key FROM contacts WHERE audience = $1 ORDER BY member_key",
        )
        .bind(audience)
        .fetch_all(&self.state)
        .await
        .unwrap();
        rows.into_iter().map(|(k,)| k).collect()
    }

    /// Addresses in the suppression list.
    pub async fn suppressed(&self) -> Vec<String> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT email FROM suppressions ORDER BY email")
            .fetch_all(&self.state)
            .await
            .unwrap();
        rows.into_iter().map(|(e,)| e).collect()
    }

    /// `(event_type, email)` of every recorded Constant Contact event, sorted.
    pub async fn events(&self) -> Vec<(String, String)> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, email FROM provider_events WHERE provider = 'constant_contact' ORDER BY event_type, email, id",
        )
        .fetch_all(&self.state)
        .await
        .unwrap();
        rows
    }

    /// `(member_key, code)` of the run's rows in `sync_errors`.
    pub async fn sync_errors(&self, run_id: &str) -> Vec<(String, String)> {
        let rows: Vec<(Option<String>, String)> = sqlx::query_as(
            "SELECT member_key, code FROM sync_errors WHERE run_id = $1 ORDER BY member_key",
        )
        .bind(run_id)
        .fetch_all(&self.state)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(k, c)| (k.unwrap_or_default(), c))
            .collect()
    }
}

/// Member `i` (`m{i}@example.org`, full membership, consent given) as a `VALUES` row.
pub fn row(i: u64) -> String {
    db::member_row(i, "full", true)
}

/// Member `i` with first and last names of 255 characters (a large import item).
pub fn large_row(i: u64) -> String {
    let first = format!("F{i}-{}", "a".repeat(260));
    let first = &first[..255];
    let last = format!("L{i}-{}", "b".repeat(260));
    let last = &last[..255];
    format!(
        "({i}, 'm{i}@example.org', '{first}', '{last}', 'full', TRUE, 'ok', '2026-01-01 00:00:00')"
    )
}
