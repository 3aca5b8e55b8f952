//! Every construction of an application part the tests need: the config, the state store, the
//! member source, the Mailchimp client, the HTTP state and a running server. Tests build these
//! only through here, and here they come from [`App`], the one place the application is assembled
//! (`src/app.rs`); only tests of one part on its own (a store by URL, a member DB by URL) open it
//! directly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailbridge::app::App;
use mailbridge::campaigns::{CampaignError, PushContext, PushOutcome, PushRequest, push};
use mailbridge::config::{
    AudienceConfig, Config, DbUrl, MailchimpConfig, ProviderKind, RelayConfig,
};
use mailbridge::http::{AppState, ServerHandle};
use mailbridge::mapping::Mapping;
use mailbridge::progress::Progress;
use mailbridge::providers::mailchimp::MailchimpClient;
use mailbridge::providers::retry::{RetryBudget, RetryPolicy, Sleeper};
use mailbridge::providers::{Provider, ProviderSet};
use mailbridge::relay::Worker;
use mailbridge::source::{MemberSource, SourceError};
use mailbridge::store::{OpenMode, Store, StoreError};
use mailbridge::sync::PlanOptions;
use mailbridge::sync::SyncError;
use mailbridge::sync::apply::{SyncContext, SyncOptions, sync_audience};
use mailbridge::sync::plan::Plan;
use mailbridge::sync::report::RunReport;

/// Loads a config file (panics with the error).
pub fn load_config(path: &Path) -> Config {
    sqlx::any::install_default_drivers();
    Config::load(path).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Opens a state DB without migrating it, as the application would.
pub async fn try_open_store(url: &DbUrl, mode: OpenMode) -> Result<Store, StoreError> {
    Store::open(url, mode).await
}

/// Opens a state DB read-write and migrates it.
pub async fn open_store(url: &DbUrl) -> Store {
    let store = Store::open(url, OpenMode::ReadWrite)
        .await
        .unwrap_or_else(|e| panic!("open the state DB {}: {e}", url));
    store.migrate().await.expect("migrate the state DB");
    store
}

/// Connects to a member DB as the application would, returning its error.
pub async fn try_member_source(url: &DbUrl, read_only: bool) -> Result<MemberSource, SourceError> {
    MemberSource::connect(url, read_only).await
}

/// Connects to a member DB (`read_only` as the sync opens it).
pub async fn member_source(url: &DbUrl, read_only: bool) -> MemberSource {
    MemberSource::connect(url, read_only)
        .await
        .unwrap_or_else(|e| panic!("connect to the member DB {}: {e}", url))
}

/// The Mailchimp client of a `[providers.mailchimp]` section.
pub fn mailchimp_client(config: &MailchimpConfig) -> MailchimpClient {
    MailchimpClient::new(config).expect("build the Mailchimp client")
}

/// Back-off that retries quickly (5 ms base, 50 ms cap, 8 attempts): retries take no real time.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        budget: RetryBudget::new(1000),
        sleeper: Sleeper::tokio(),
    }
}

/// The HTTP state of `serve` for a config: state DB opened and migrated, mapping, clients.
pub async fn app_state(config: Config) -> Arc<AppState> {
    Arc::new(
        AppState::from_app(&App::new(config))
            .await
            .expect("assemble the HTTP state"),
    )
}

/// The HTTP state from parts a test already holds (its own store and client).
pub fn app_state_from_parts(parts: &Parts, client: Option<MailchimpClient>) -> Arc<AppState> {
    Arc::new(AppState::new(
        Arc::new(parts.config.clone()),
        Arc::new(parts.mapping.clone()),
        parts.store.clone(),
        ProviderSet::new(client.map(Provider::Mailchimp)),
    ))
}

/// The router on a free loopback port, without the background tasks of `serve`.
pub async fn start_http(state: Arc<AppState>) -> ServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    mailbridge::http::start(listener, state).expect("start the HTTP server")
}

/// `GET {base}/metrics` as text.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text")
}

/// `serve` as the binary starts it (router and background tasks) on `bind` (default: the
/// config's `[server] bind`).
pub async fn start_serve(config: Config, bind: Option<&str>) -> ServerHandle {
    mailbridge::http::serve::start(App::new(config), bind)
        .await
        .expect("start serve")
}

/// The parts a sync or a campaign push runs on: config, mapping, migrated state store and
/// member source.
pub struct Parts {
    pub config: Config,
    pub mapping: Mapping,
    pub store: Store,
    pub source: MemberSource,
}

impl Parts {
    /// Loads `config_path` and opens what it names, through the [`App`].
    pub async fn open(config_path: &Path) -> Parts {
        let app = App::new(load_config(config_path));
        let mapping = Mapping::clone(app.mapping().expect("load the mapping"));
        let store = app
            .migrated_store()
            .await
            .expect("open and migrate the state DB")
            .clone();
        let source = app.member_source().await.expect("connect to the member DB");
        Parts {
            config: Config::clone(&app.config),
            mapping,
            store,
            source,
        }
    }

    /// The Mailchimp client of the config, with the default retry policy.
    pub fn client(&self) -> MailchimpClient {
        mailchimp_client(
            self.config
                .mailchimp
                .as_ref()
                .expect("[providers.mailchimp]"),
        )
    }

    /// The client with [`fast_retry`], and batches polled every few milliseconds.
    pub fn fast_client(&self) -> MailchimpClient {
        self.client()
            .with_retry_policy(fast_retry())
            .with_batch_polling(mailbridge::providers::mailchimp::BatchPolling {
                first_wait: Duration::from_millis(2),
                max_wait: Duration::from_millis(20),
                give_up_after: Duration::from_secs(60),
            })
    }

    /// Syncs the first audience with `client`.
    pub async fn sync_with(
        &self,
        client: &MailchimpClient,
        options: SyncOptions,
    ) -> Result<RunReport, SyncError> {
        let providers = ProviderSet::new([Provider::Mailchimp(client.clone())]);
        let ctx = SyncContext {
            mapping: &self.mapping,
            store: &self.store,
            source: &self.source,
            providers: &providers,
        };
        sync_audience(
            &ctx,
            &self.config.audiences[0],
            options,
            &Progress::hidden(),
        )
        .await
    }

    /// Pushes a campaign with `client`; `after_create` runs between create and send.
    pub async fn push_with(
        &self,
        client: &MailchimpClient,
        request: &PushRequest,
        key: Option<&str>,
        after_create: Option<fn(&str)>,
    ) -> Result<PushOutcome, CampaignError> {
        let progress = Progress::hidden();
        let providers = ProviderSet::new([Provider::Mailchimp(client.clone())]);
        let ctx = PushContext {
            config: &self.config,
            mapping: &self.mapping,
            store: &self.store,
            source: &self.source,
            providers: &providers,
            progress: &progress,
            after_create,
            stage: None,
        };
        push(&ctx, request, key).await
    }
}

/// The parts the relay runs on: the loaded config, its `[relay]` and the migrated state store.
pub struct RelayParts {
    pub config: Config,
    pub relay: Arc<RelayConfig>,
    pub store: Store,
}

impl RelayParts {
    /// Loads `config_path` (which has a `[relay]`) and opens its state DB, through the [`App`].
    pub async fn open(config_path: &Path) -> RelayParts {
        RelayParts::open_app(App::new(load_config(config_path))).await
    }

    /// The relay parts of `app` (its clock is the store's).
    pub async fn open_app(app: App) -> RelayParts {
        let store = app
            .migrated_store()
            .await
            .expect("open and migrate the state DB")
            .clone();
        let relay = app.relay().expect("[relay]");
        RelayParts {
            config: Config::clone(&app.config),
            relay,
            store,
        }
    }

    /// A relay worker on this store and `[relay]`, with the config's `[alerts]`.
    pub fn worker(&self) -> Worker {
        Worker::with_alerts(
            self.store.clone(),
            self.relay.clone(),
            self.config.alerts.clone(),
        )
        .expect("start a relay worker")
    }
}

/// The `newsletter` audience on Mailchimp list `list1`, as the plan-only tests configure it.
pub fn newsletter_audience() -> AudienceConfig {
    AudienceConfig {
        name: "newsletter".into(),
        provider: ProviderKind::Mailchimp,
        list_id: "list1".into(),
        webhook_signing_secret: None,
        max_archive_percent: 10.0,
        from_name: None,
        reply_to: None,
    }
}

/// The dry-run plan of [`newsletter_audience`] over `source` against `store`.
pub async fn plan_newsletter(
    mapping: &Mapping,
    store: &Store,
    source: &MemberSource,
    options: PlanOptions,
) -> Result<Plan, SyncError> {
    let audience = newsletter_audience();
    let mut plans = mailbridge::sync::plan(
        mapping,
        &[&audience],
        store,
        source,
        options,
        &Progress::hidden(),
    )
    .await?;
    Ok(plans.remove(0))
}

/// The application against the simulator, as the sync and campaign tests run it.
pub struct SimApp {
    pub _dir: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub sim: super::sim::TestSim,
    pub list: String,
    pub config_path: std::path::PathBuf,
    pub app: Parts,
    /// The member DB, for a test to change.
    pub members: sqlx::AnyPool,
    pub _dbs: Vec<super::db::Db>,
}

/// The config, mapping, store and member source, as `env.store` and `env.config`.
impl std::ops::Deref for SimApp {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.app
    }
}

impl SimApp {
    /// What a member does at the provider (`unsubscribe`, `clean`, `confirm`, …, with a query
    /// where the action takes one), through the simulator's control API.
    pub async fn provider_action(&self, email: &str, action: &str) {
        self.sim
            .sim_json(
                reqwest::Method::POST,
                &format!("/lists/{}/members/{email}/{action}", self.list),
            )
            .await;
    }

    /// [`SimApp::start`] (no proxy) on a member DB with the nullable column `consent_at` and the
    /// shipped mapping reading it ([`super::db::consent_at_mapping`], writeback kept or cut).
    pub async fn start_consent_at(
        state: super::Kind,
        members: super::Kind,
        writeback: bool,
        rows: impl IntoIterator<Item = String>,
    ) -> Option<SimApp> {
        let mapping = super::db::consent_at_mapping(writeback);
        let app = SimApp::start(state, members, false, rows, |c| c.mapping_text(mapping)).await?;
        super::db::add_consent_at(&app.members, &app.config.members.url).await;
        Some(app)
    }

    /// A fresh state DB and member DB of the given kinds, the simulator with one list (behind
    /// the spec-proxy when `proxy` and it is enabled), a config written from parts (`config`
    /// adds to the state, members, Mailchimp and audience parts), the member rows, and the parts
    /// opened. `None` (the test skips) when a database server is unreachable outside CI.
    pub async fn start(
        state: super::Kind,
        members: super::Kind,
        proxy: bool,
        rows: impl IntoIterator<Item = String>,
        config: impl FnOnce(super::ConfigFile) -> super::ConfigFile,
    ) -> Option<SimApp> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let state_db = super::db::state_db(state, tmp.path()).await?;
        SimApp::start_in(tmp, state_db, members, proxy, rows, config).await
    }

    /// [`SimApp::start`] with the state DB at `state_url` (PostgreSQL: a server of the test's
    /// own, such as a [`super::pg_server::PgServer`]).
    pub async fn start_on_state_url(
        state_url: &str,
        members: super::Kind,
        rows: impl IntoIterator<Item = String>,
        config: impl FnOnce(super::ConfigFile) -> super::ConfigFile,
    ) -> Option<SimApp> {
        let state_db = super::db::Db {
            url: state_url.to_owned(),
            kind: super::Kind::Postgres,
            guard: None,
        };
        let tmp = tempfile::tempdir().expect("temp dir");
        SimApp::start_in(tmp, state_db, members, false, rows, config).await
    }

    async fn start_in(
        tmp: tempfile::TempDir,
        state_db: super::db::Db,
        members: super::Kind,
        proxy: bool,
        rows: impl IntoIterator<Item = String>,
        config: impl FnOnce(super::ConfigFile) -> super::ConfigFile,
    ) -> Option<SimApp> {
        use super::db;
        let dir = tmp.path().to_owned();
        let member_db = db::member_db(members, &dir).await?;
        let sim = if proxy {
            super::sim::TestSim::start_behind_spec_proxy().await
        } else {
            super::sim::TestSim::start().await
        };
        let list = sim.create_list().await;
        let parts = super::ConfigFile::new(&state_db.url, &member_db.url)
            .mailchimp("test-key", Some(&sim.api_url), "")
            .audience(&list, "");
        let config_path = config(parts).write(&dir);
        let members = db::create_members(&load_config(&config_path).members.url, rows).await;
        let app = Parts::open(&config_path).await;
        Some(SimApp {
            _dir: tmp,
            dir,
            sim,
            list,
            config_path,
            app,
            members,
            _dbs: vec![state_db, member_db],
        })
    }
}

/// Polls `GET {url}/{key}` (a campaign job, with `token`) until its status is `want`; fails on a
/// final status that is not it, or after 60 seconds. The job as last read.
pub async fn wait_for_job(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    want: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let job: serde_json::Value = http
            .get(format!("{url}/{key}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == want {
            return job;
        }
        assert!(
            !matches!(
                job["status"].as_str(),
                Some("sent" | "scheduled" | "failed")
            ),
            "job {key} ended `{}`, not `{want}`: {job}",
            job["status"]
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job {key} never became `{want}`: {job}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
