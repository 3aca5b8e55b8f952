//! Campaign push to a Constant Contact audience end to end against the simulator: the same
//! at-most-once flow as on Mailchimp (`campaigns_sim.rs`). A push sends once to the list's
//! subscribed members (read from `/_sim/constant-contact/sends`), a repeat sends nothing, a reply
//! lost on the send call is answered by a status read (never a second send), an unconfirmed
//! sender is refused before anything is created, and `POST /v1/campaigns` works the same.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as AxumMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mailbridge::campaigns::store as rows;
use mailbridge::campaigns::{
    CampaignError, CampaignState, PushContext, PushOutcome, PushRequest, push,
};
use mailbridge::config::ConstantContactConfig;
use mailbridge::progress::Progress;
use mailbridge::providers::constant_contact::ConstantContactClient;
use mailbridge::providers::{Provider, ProviderSet};
use mailbridge::simulator::SimConfig;
use mailbridge::store::oauth::OAuthToken;
use mailbridge::sync::apply::{SyncContext, SyncOptions, sync_audience};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::app::{self, Parts};
use support::sim::TestSim;
use support::{ConfigFile, Kind, db};

const TOKEN: &str = "cc-campaign-test-token";
/// The address the simulated account has confirmed from the start.
const CLUB: &str = "club@example.org";

/// The shipped mapping without its tags: Constant Contact audiences have none in this version.
fn tagless_mapping() -> String {
    let shipped = std::fs::read_to_string(db::shipped_mapping()).unwrap();
    let start = shipped.find("[[audiences.newsletter.tags]]").unwrap();
    let end = start + shipped[start..].find("\n\n").unwrap();
    let mut text = shipped.clone();
    text.replace_range(start..end, "");
    assert!(!text.contains(".tags]]"), "{text}");
    text
}

/// A Constant Contact audience over the simulator: state and member DBs (SQLite), one list, the
/// account connected (its refresh token in the state DB) and the app's parts.
struct Cc {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    sim: TestSim,
    list: String,
    config_path: std::path::PathBuf,
    app: Parts,
    _dbs: Vec<db::Db>,
}

/// Members 1..=n (consent for all but `no_consent`), the audience's reply-to `reply_to`.
async fn env(n: u64, no_consent: &[u64], reply_to: &str) -> Cc {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let state_db = db::state_db(Kind::Sqlite, &dir).await.unwrap();
    let member_db = db::member_db(Kind::Sqlite, &dir).await.unwrap();
    let sim = TestSim::start_with(SimConfig {
        cc_requests_per_second: 0,
        cc_activity_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let connected = sim
        .sim_json(Method::POST, "/constant-contact/connect")
        .await;
    let list = sim
        .sim_post("/constant-contact/lists", &json!({"name": "Newsletter"}))
        .await;
    assert_eq!(list.status(), 200);
    let list = list.json::<Value>().await.unwrap()["list_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mapping = dir.join("members.toml");
    std::fs::write(&mapping, tagless_mapping()).unwrap();
    let handle = &sim.handle;
    let text = format!(
        "{}\n[providers.constant_contact]\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbase_url = \"{}\"\nauth_url = \"{}\"\nrequests_per_second = 100\ntimeout_secs = 5\n\n[[audiences]]\nname = \"newsletter\"\nprovider = \"constant_contact\"\nlist_id = \"{list}\"\nfrom_name = \"Riverside Rowing\"\nreply_to = \"{reply_to}\"\n\n[server]\nbind = \"127.0.0.1:0\"\napi_token = \"{TOKEN}\"\n",
        ConfigFile::new(&state_db.url, &member_db.url)
            .mapping(&mapping)
            .text(),
        connected["client_id"].as_str().unwrap(),
        connected["client_secret"].as_str().unwrap(),
        handle.constant_contact_url(),
        handle.oauth_url(),
    );
    let config_path = dir.join("mailbridge.toml");
    std::fs::write(&config_path, text).unwrap();
    let config = app::load_config(&config_path);
    let rows =
        (1..=n).map(|i| db::member_row(i, db::cycling_membership(i), !no_consent.contains(&i)));
    db::create_members(&config.members.url, rows)
        .await
        .close()
        .await;
    let app = Parts::open(&config_path).await;
    // The account's grant, as `mailbridge auth constant-contact` stores it (that command also
    // proves it with `GET /account/summary`, which the simulator does not serve): the first
    // call exchanges it.
    let grant = OAuthToken {
        refresh_token: SecretString::from(connected["refresh_token"].as_str().unwrap().to_owned()),
        access_token: None,
        expires_at: None,
        rotated_at: chrono::Utc::now(),
    };
    app.store
        .save_oauth_token(
            "constant_contact",
            &app.config.constant_contact.as_ref().unwrap().client_id,
            &grant,
        )
        .await
        .unwrap();
    Cc {
        _dir: tmp,
        dir,
        sim,
        list,
        config_path,
        app,
        _dbs: vec![state_db, member_db],
    }
}

fn request() -> PushRequest {
    PushRequest {
        audience: "newsletter".into(),
        subject: "Spring news".into(),
        html: "<h1>Spring news</h1><p>The boats are back on the water.</p>".into(),
        ..PushRequest::default()
    }
}

fn addresses(ids: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    ids.into_iter()
        .map(|i| format!("m{i}@example.org"))
        .collect()
}

impl Cc {
    fn cc_config(&self) -> ConstantContactConfig {
        self.app.config.constant_contact.clone().unwrap()
    }

    /// The application's Constant Contact client, at `base_url` when given (a proxy).
    fn client_at(&self, base_url: Option<&str>) -> ConstantContactClient {
        let mut config = self.cc_config();
        if let Some(url) = base_url {
            config.base_url = url.to_owned();
        }
        ConstantContactClient::new(&config, self.app.store.clone()).unwrap()
    }

    fn providers(client: &ConstantContactClient) -> ProviderSet {
        ProviderSet::new([Provider::ConstantContact(client.clone())])
    }

    async fn sync(&self) {
        let providers = Cc::providers(&self.client_at(None));
        let ctx = SyncContext {
            mapping: &self.app.mapping,
            store: &self.app.store,
            source: &self.app.source,
            providers: &providers,
        };
        let report = sync_audience(
            &ctx,
            &self.app.config.audiences[0],
            SyncOptions::default(),
            &Progress::hidden(),
        )
        .await
        .unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
    }

    async fn push_with(
        &self,
        client: &ConstantContactClient,
        request: &PushRequest,
        key: Option<&str>,
    ) -> Result<PushOutcome, CampaignError> {
        let providers = Cc::providers(client);
        let progress = Progress::hidden();
        let ctx = PushContext {
            config: &self.app.config,
            mapping: &self.app.mapping,
            store: &self.app.store,
            source: &self.app.source,
            providers: &providers,
            progress: &progress,
            after_create: None,
            stage: None,
        };
        push(&ctx, request, key).await
    }

    async fn push(
        &self,
        request: &PushRequest,
        key: Option<&str>,
    ) -> Result<PushOutcome, CampaignError> {
        self.push_with(&self.client_at(None), request, key).await
    }

    /// Every campaign email the simulator "sent", one address per send.
    async fn sends(&self) -> Vec<String> {
        let all = self
            .sim
            .sim_json(Method::GET, "/constant-contact/sends")
            .await;
        all.as_array()
            .unwrap()
            .iter()
            .map(|s| s["email"].as_str().unwrap().to_lowercase())
            .collect()
    }

    /// How often the simulator was asked for `operation` (its `operationId`).
    async fn operations(&self, operation: &str) -> u64 {
        let stats = self.sim.sim_json(Method::GET, "/stats").await;
        stats["constant_contact"]["operations"][operation]
            .as_u64()
            .unwrap_or(0)
    }

    /// The account's campaigns, as `(name, current_status)`.
    async fn campaigns(&self) -> Vec<(String, String)> {
        let client = self.client_at(None);
        let mut out = Vec::new();
        // Every campaign the push may have made is named `mailbridge:<key>`; the test keys are
        // few, so they are looked up by name.
        for key in ["spring", "confirmed", "lost-after", "lost-before", "web-7"] {
            for c in client
                .campaigns_titled(&self.list, &format!("mailbridge:{key}"))
                .await
                .unwrap()
            {
                out.push((c.title, c.status.as_str().to_owned()));
            }
        }
        out
    }
}

/// Runs the binary's `campaign push` with `args` off the runtime; it must succeed. Its JSON.
async fn cli_push(config: &std::path::Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(db::binary());
    cmd.arg("--config")
        .arg(config)
        .args(["campaign", "push"])
        .args(args)
        .args(["--json"])
        .env("MAILBRIDGE_LOG", "warn");
    let out = tokio::task::spawn_blocking(move || support::run_ok(&mut cmd, "campaign push"))
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_push_from_the_cli_sends_once_to_the_subscribed_members_and_a_repeat_sends_nothing() {
    // Members 1..=7; 3 gave no consent; after the first sync 2 unsubscribes at Constant Contact.
    let e = env(7, &[3], CLUB).await;
    e.sync().await;
    let out = e
        .sim
        .sim_post(
            "/constant-contact/contacts/m2@example.org/unsubscribe",
            &json!({}),
        )
        .await;
    assert_eq!(out.status(), 200);
    let html = e.dir.join("spring.html");
    std::fs::write(&html, "<h1>Spring news</h1><p>The boats are back.</p>").unwrap();
    let html_arg = html.to_str().unwrap();
    let args = [
        "--audience",
        "newsletter",
        "--subject",
        "Spring news",
        "--html",
        html_arg,
        "--key",
        "spring",
        "--test-to",
        "me@club.example",
    ];
    let record = cli_push(&e.config_path, &args).await;
    assert_eq!(record["state"], "sent", "{record}");
    let campaign_id = record["provider_campaign_id"].as_str().unwrap().to_owned();

    let sends = e.sends().await;
    let unique: BTreeSet<String> = sends.iter().cloned().collect();
    assert_eq!(sends.len(), unique.len(), "one email per member: {sends:?}");
    assert_eq!(unique, addresses([1, 4, 5, 6, 7]));
    let tests = e
        .sim
        .sim_json(Method::GET, "/constant-contact/test-sends")
        .await;
    assert_eq!(tests.as_array().unwrap().len(), 1, "{tests}");
    assert_eq!(tests[0]["email"], "me@club.example");
    assert_eq!(e.operations("createEmailCampaign").await, 1);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    assert_eq!(
        e.campaigns().await,
        vec![("mailbridge:spring".to_owned(), "sent".to_owned())]
    );

    // The same push again, through the engine: the record as it was, nothing sent, no call to
    // Constant Contact's campaigns.
    let r = PushRequest {
        html: std::fs::read_to_string(&html).unwrap(),
        test_to: vec!["me@club.example".into()],
        ..request()
    };
    let again = e.push(&r, Some("spring")).await.unwrap();
    assert!(!again.inserted && !again.acted, "{again:?}");
    assert_eq!(again.record.state, CampaignState::Sent);
    assert_eq!(
        again.record.provider_campaign_id.as_deref(),
        Some(campaign_id.as_str())
    );
    assert_eq!(e.sends().await.len(), 5);
    assert_eq!(e.operations("createEmailCampaign").await, 1);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    let tests = e
        .sim
        .sim_json(Method::GET, "/constant-contact/test-sends")
        .await;
    assert_eq!(tests.as_array().unwrap().len(), 1, "no second test either");
}

#[tokio::test]
async fn an_unconfirmed_reply_to_is_refused_before_anything_is_created_and_pushes_once_confirmed() {
    let e = env(3, &[], "secretary@club.example").await;
    let err = e.push(&request(), Some("confirmed")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("secretary@club.example (the campaign's from and reply-to address) is not a confirmed email address")
            && text.contains("My Settings"),
        "{text}"
    );
    assert_eq!(e.operations("createEmailCampaign").await, 0);
    let row = rows::get(&e.app.store, "confirmed").await.unwrap().unwrap();
    assert_eq!(row.state, CampaignState::Failed);
    assert_eq!(row.provider_campaign_id, None);

    // A segment is refused too, before anything is created.
    let seg = PushRequest {
        segment: Some("junior".into()),
        subject: "Juniors".into(),
        ..request()
    };
    let err = e.push(&seg, Some("juniors")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("Constant Contact audiences cannot be narrowed to a segment"),
        "{err}"
    );
    assert_eq!(e.operations("createEmailCampaign").await, 0);
    assert!(e.sends().await.is_empty());

    // The secretary clicks the confirmation link; the same key then goes out, once.
    let added = e
        .sim
        .sim_post(
            "/constant-contact/senders",
            &json!({"email": "secretary@club.example"}),
        )
        .await;
    assert!(added.status().is_success());
    let out = e.push(&request(), Some("confirmed")).await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    let sent: BTreeSet<String> = e.sends().await.into_iter().collect();
    assert_eq!(sent, addresses(1..=3));
    assert_eq!(e.sends().await.len(), 3);
}

/// What the proxy does with the send call (`POST …/schedules`); every other request passes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LoseSend {
    No,
    /// Answers 502 without passing it on: the send never ran.
    BeforeItRuns,
    /// Passes it on, then answers 502: the send ran, its reply is lost.
    AfterItRan,
}

#[derive(Clone)]
struct Proxy {
    target: String,
    http: reqwest::Client,
    mode: Arc<Mutex<LoseSend>>,
    /// Send calls whose answer it replaced with a 502.
    lost: Arc<AtomicUsize>,
}

async fn forward(
    State(proxy): State<Proxy>,
    method: AxumMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mode = *proxy.mode.lock().unwrap();
    let is_send = method == AxumMethod::POST && uri.path().ends_with("/schedules");
    let lost = || {
        proxy.lost.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::BAD_GATEWAY,
            [("content-type", "application/json")],
            r#"[{"error_key":"server_error","error_message":"bad gateway"}]"#,
        )
            .into_response()
    };
    if is_send && mode == LoseSend::BeforeItRuns {
        return lost();
    }
    let mut request = proxy
        .http
        .request(method, format!("{}{path}", proxy.target))
        .body(body);
    for name in ["authorization", "content-type", "accept"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let bytes = answer.bytes().await.unwrap();
    if is_send && mode == LoseSend::AfterItRan {
        return lost();
    }
    let mut response = (status, bytes).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

/// A proxy to the simulator's origin; the `/v3` base URL through it.
async fn start_proxy(sim: &TestSim, mode: Arc<Mutex<LoseSend>>, lost: Arc<AtomicUsize>) -> String {
    let proxy = Proxy {
        target: sim.handle.base_url(),
        http: reqwest::Client::new(),
        mode,
        lost,
    };
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v3")
}

#[tokio::test]
async fn a_reply_lost_on_the_send_is_answered_by_a_status_read_never_a_second_send() {
    let e = env(4, &[], CLUB).await;
    let mode = Arc::new(Mutex::new(LoseSend::AfterItRan));
    let lost = Arc::new(AtomicUsize::new(0));
    let base = start_proxy(&e.sim, mode.clone(), lost.clone()).await;
    let client = e.client_at(Some(&base));

    // The send ran at Constant Contact, but its answer never came back: the push reads the
    // campaign's status, finds it sent, and records it without sending again.
    let out = e
        .push_with(&client, &request(), Some("lost-after"))
        .await
        .unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(lost.load(Ordering::SeqCst), 1, "the send's answer was lost");
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    assert_eq!(e.sends().await.len(), 4);
    let again = e
        .push_with(&client, &request(), Some("lost-after"))
        .await
        .unwrap();
    assert!(!again.acted);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    assert_eq!(e.sends().await.len(), 4);

    // The send never reached Constant Contact: the status read finds a draft, the push says
    // nothing went out, and a later push of the same key sends it, once.
    *mode.lock().unwrap() = LoseSend::BeforeItRuns;
    let other = PushRequest {
        subject: "Summer news".into(),
        ..request()
    };
    let err = e
        .push_with(&client, &other, Some("lost-before"))
        .await
        .unwrap_err();
    assert!(matches!(err, CampaignError::Unconfirmed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    assert_eq!(lost.load(Ordering::SeqCst), 2);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    assert_eq!(e.sends().await.len(), 4);
    let row = rows::get(&e.app.store, "lost-before")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, CampaignState::Failed);

    *mode.lock().unwrap() = LoseSend::No;
    let out = e
        .push_with(&client, &other, Some("lost-before"))
        .await
        .unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(out.record.provider_campaign_id, row.provider_campaign_id);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 2);
    assert_eq!(e.operations("createEmailCampaign").await, 2);
    assert_eq!(e.sends().await.len(), 8);
}

#[tokio::test]
async fn the_http_api_pushes_to_a_constant_contact_audience_once_per_key() {
    let e = env(3, &[], CLUB).await;
    let state = std::sync::Arc::new(mailbridge::http::AppState::new(
        std::sync::Arc::new(e.app.config.clone()),
        std::sync::Arc::new(e.app.mapping.clone()),
        e.app.store.clone(),
        Cc::providers(&e.client_at(None)),
    ));
    let server = app::start_http(state).await;
    let url = format!("http://{}/v1/campaigns", server.addr);
    let http = reqwest::Client::new();
    let body = json!({"audience": "newsletter", "subject": "Spring news", "html": "<p>Spring</p>"});
    let post = || {
        http.post(&url)
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "web-7")
            .json(&body)
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 202, "{}", first.text().await.unwrap());
    let job = app::wait_for_job(&http, &url, TOKEN, "web-7", "sent").await;
    let record = &job["campaign"];
    assert_eq!(record["state"], "sent", "{job}");
    let second = post().await.unwrap();
    assert_eq!(second.status(), 200);
    let again: Value = second.json().await.unwrap();
    assert_eq!(
        again["campaign"]["provider_campaign_id"],
        record["provider_campaign_id"]
    );
    assert_eq!(e.sends().await.len(), 3);
    assert_eq!(e.operations("scheduleEmailCampaignActivity").await, 1);
    server.shutdown().await.unwrap();
}
