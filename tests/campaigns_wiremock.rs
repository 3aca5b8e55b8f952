//! The exact requests of a campaign push, pinned with wiremock (create → content → checklist →
//! status read → send), and each failure point: create refused or failing (never retried),
//! content refused, checklist not ready, the send timing out with the status then reading `sent`
//! or `save`, and a resumed push whose campaign already went out. The preflight sync is skipped
//! (`no_sync` with a fresh sync recorded), so only campaign calls reach the mock.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use mailbridge::campaigns::store as rows;
use mailbridge::campaigns::{CampaignError, CampaignState, PushOutcome, PushRequest};
use mailbridge::providers::retry::{RetryBudget, RetryPolicy, Sleeper};
use mailbridge::store::StoreError;
use serde_json::{Value, json};
use support::ConfigFile;
use support::app::Parts;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const LIST: &str = "L1";
const HTML: &str = "<h1>Spring news</h1><p>The boats are back.</p>";
const TEXT: &str = "Spring news\n\nThe boats are back.";

struct Env {
    _dir: tempfile::TempDir,
    server: MockServer,
    app: Parts,
}

/// The config, mapping, store and member source, as `self.store` and `self.config`.
impl std::ops::Deref for Env {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.app
    }
}

async fn env() -> Env {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = ConfigFile::new("sqlite://state.db", "sqlite://members.db")
        .mailchimp(
            "wiremock-key-us1",
            Some(&format!("{}/3.0", server.uri())),
            "timeout_secs = 1\n",
        )
        .audience(LIST, "")
        .audience_extra("from_name = \"Riverside Rowing\"\nreply_to = \"secretary@club.example\"\n")
        .write(dir.path());
    std::fs::File::create(dir.path().join("members.db")).unwrap();
    let app = Parts::open(&config_path).await;
    let store = &app.store;
    // A sync that just succeeded, with two subscribed contacts.
    let now = chrono::Utc::now().to_rfc3339();
    sqlx::query("INSERT INTO audiences (name, provider, list_id, created_at, last_success_at) VALUES ('newsletter', 'mailchimp', $1, $2, $2)")
        .bind(LIST)
        .bind(&now)
        .execute(store.pool())
        .await
        .unwrap();
    for (k, email) in [("1", "a@example.org"), ("2", "b@example.org")] {
        sqlx::query("INSERT INTO contacts (audience, member_key, email, content_hash, remote_status, synced_at) VALUES ('newsletter', $1, $2, 'h', 'subscribed', $3)")
            .bind(k)
            .bind(email)
            .bind(&now)
            .execute(store.pool())
            .await
            .unwrap();
    }
    Env {
        _dir: dir,
        server,
        app,
    }
}

fn request() -> PushRequest {
    PushRequest {
        audience: "newsletter".into(),
        subject: "Spring news".into(),
        html: HTML.into(),
        text: Some(TEXT.into()),
        no_sync: true,
        ..PushRequest::default()
    }
}

impl Env {
    async fn push(&self, key: &str) -> Result<PushOutcome, CampaignError> {
        self.push_with_hook(key, None).await
    }

    async fn push_with_hook(
        &self,
        key: &str,
        after_create: Option<fn(&str)>,
    ) -> Result<PushOutcome, CampaignError> {
        let client = self.client().with_retry_policy(RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
            budget: RetryBudget::new(10),
            sleeper: Sleeper::from_fn(|_| async {}),
        });
        self.app
            .push_with(&client, &request(), Some(key), after_create)
            .await
    }

    /// `METHOD path` of every request the mock received, in order.
    async fn requests(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.method, r.url.path()))
            .collect()
    }

    async fn row(&self, key: &str) -> rows::CampaignRecord {
        rows::get(&self.store, key).await.unwrap().unwrap()
    }
}

fn campaign(status: &str) -> Value {
    json!({
        "id": "c1", "type": "regular", "status": status, "emails_sent": 0,
        "recipients": {"list_id": LIST, "recipient_count": 2},
        "settings": {"title": "mailbridge:k1"},
    })
}

async fn mount_create(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/3.0/campaigns"))
        .and(header(
            "authorization",
            "Basic YW55c3RyaW5nOndpcmVtb2NrLWtleS11czE=",
        ))
        .and(body_json(json!({
            "type": "regular",
            "recipients": {"list_id": LIST},
            "settings": {
                "subject_line": "Spring news",
                "title": "mailbridge:k1",
                "from_name": "Riverside Rowing",
                "reply_to": "secretary@club.example"
            }
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign("save")))
        .expect(1)
        .mount(server)
        .await;
}

async fn mount_content(server: &MockServer, status: u16) {
    Mock::given(method("PUT"))
        .and(path("/3.0/campaigns/c1/content"))
        .and(body_json(json!({"html": HTML, "plain_text": TEXT})))
        .respond_with(if status == 200 {
            ResponseTemplate::new(200).set_body_json(json!({"html": HTML, "plain_text": TEXT}))
        } else {
            ResponseTemplate::new(status).set_body_json(json!({
                "type": "https://mailchimp.com/developer/marketing/docs/errors/",
                "title": "Invalid Resource", "status": status,
                "detail": "The resource submitted could not be validated.", "instance": "r-2"
            }))
        })
        .mount(server)
        .await;
}

async fn mount_checklist(server: &MockServer, ready: bool) {
    let items = if ready {
        json!([{"type": "success", "id": 1, "heading": "Subject line", "details": "ok"}])
    } else {
        json!([
            {"type": "success", "id": 1, "heading": "Subject line", "details": "ok"},
            {"type": "error", "id": 2, "heading": "Default Merge Tags", "details": "You need to add a default for FNAME."}
        ])
    };
    Mock::given(method("GET"))
        .and(path("/3.0/campaigns/c1/send-checklist"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"is_ready": ready, "items": items})),
        )
        .mount(server)
        .await;
}

/// The status reads: `first` for the read before the send, `then` for any later read.
async fn mount_status(server: &MockServer, first: &str, then: &str) {
    Mock::given(method("GET"))
        .and(path("/3.0/campaigns/c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign(first)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/3.0/campaigns/c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(campaign(then)))
        .with_priority(2)
        .mount(server)
        .await;
}

async fn mount_send(server: &MockServer, delay: Option<Duration>) {
    let mut response = ResponseTemplate::new(204);
    if let Some(d) = delay {
        response = response.set_delay(d);
    }
    Mock::given(method("POST"))
        .and(path("/3.0/campaigns/c1/actions/send"))
        .respond_with(response)
        .expect(1)
        .mount(server)
        .await;
}

/// A create, content and checklist that succeed, and the status reads `first` then `then`
/// ([`mount_status`]): all a push calls before its send.
async fn mount_until_send(server: &MockServer, first: &str, then: &str) {
    mount_create(server).await;
    mount_content(server, 200).await;
    mount_checklist(server, true).await;
    mount_status(server, first, then).await;
}

const HAPPY: [&str; 5] = [
    "POST /3.0/campaigns",
    "PUT /3.0/campaigns/c1/content",
    "GET /3.0/campaigns/c1/send-checklist",
    "GET /3.0/campaigns/c1",
    "POST /3.0/campaigns/c1/actions/send",
];

/// [`HAPPY`], then a status read after a send whose answer did not come.
const HAPPY_THEN_STATUS: [&str; 6] = [
    HAPPY[0],
    HAPPY[1],
    HAPPY[2],
    HAPPY[3],
    HAPPY[4],
    "GET /3.0/campaigns/c1",
];

#[tokio::test]
async fn a_push_makes_exactly_these_requests_in_this_order() {
    let e = env().await;
    mount_until_send(&e.server, "save", "save").await;
    mount_send(&e.server, None).await;
    let out = e.push("k1").await.unwrap();
    assert_eq!(e.requests().await, HAPPY);
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(out.record.provider_campaign_id.as_deref(), Some("c1"));
    assert_eq!(out.record.recipients, Some(2));
    let send = &e.server.received_requests().await.unwrap()[4];
    assert!(send.body.is_empty(), "the send carries no body");
    let read = &e.server.received_requests().await.unwrap()[3];
    assert!(
        read.url.query().unwrap().contains("fields="),
        "{}",
        read.url
    );
}

#[tokio::test]
async fn a_refused_create_stops_the_push_and_is_recorded() {
    let e = env().await;
    Mock::given(method("POST"))
        .and(path("/3.0/campaigns"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "title": "Invalid Resource", "status": 400,
            "detail": "The resource submitted could not be validated.",
            "errors": [{"field": "settings.reply_to", "message": "This value should be a valid email."}]
        })))
        .mount(&e.server)
        .await;
    let err = e.push("k1").await.unwrap_err();
    assert!(err.to_string().contains("settings.reply_to"), "{err}");
    assert_eq!(e.requests().await, ["POST /3.0/campaigns"]);
    let row = e.row("k1").await;
    assert_eq!(row.state, CampaignState::Failed);
    assert_eq!(row.provider_campaign_id, None);
    assert!(row.last_error.unwrap().contains("create_campaign"));
}

#[tokio::test]
async fn a_failing_create_is_not_retried_and_the_next_push_searches_by_title_first() {
    let e = env().await;
    Mock::given(method("POST"))
        .and(path("/3.0/campaigns"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&e.server)
        .await;
    e.push("k1").await.unwrap_err();
    assert_eq!(
        e.requests().await,
        ["POST /3.0/campaigns"],
        "a 503 on create is not retried"
    );

    // The 503 may have hidden a created campaign: the next push looks for its title first.
    e.server.reset().await;
    Mock::given(method("GET"))
        .and(path("/3.0/campaigns"))
        .and(query_param("list_id", LIST))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "campaigns": [
                {"id": "other", "status": "sent", "settings": {"title": "mailbridge:k0"}},
                campaign("save")
            ],
            "total_items": 2
        })))
        .mount(&e.server)
        .await;
    mount_content(&e.server, 200).await;
    mount_checklist(&e.server, true).await;
    mount_status(&e.server, "save", "save").await;
    mount_send(&e.server, None).await;
    let out = e.push("k1").await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(out.record.provider_campaign_id.as_deref(), Some("c1"));
    let mut expected = vec!["GET /3.0/campaigns"];
    expected.extend(&HAPPY[1..]);
    assert_eq!(
        e.requests().await,
        expected,
        "found by title: no second create"
    );
}

#[tokio::test]
async fn a_refused_content_stops_before_the_send_with_the_id_recorded() {
    let e = env().await;
    mount_create(&e.server).await;
    mount_content(&e.server, 400).await;
    let err = e.push("k1").await.unwrap_err();
    assert!(err.to_string().contains("set_campaign_content"), "{err}");
    assert_eq!(e.requests().await, HAPPY[..2]);
    let row = e.row("k1").await;
    assert_eq!(row.state, CampaignState::Failed);
    assert_eq!(row.provider_campaign_id.as_deref(), Some("c1"));
}

#[tokio::test]
async fn a_checklist_that_is_not_ready_refuses_with_its_items() {
    let e = env().await;
    mount_create(&e.server).await;
    mount_content(&e.server, 200).await;
    mount_checklist(&e.server, false).await;
    let err = e.push("k1").await.unwrap_err();
    assert!(matches!(err, CampaignError::NotReady { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("[error] Default Merge Tags: You need to add a default for FNAME."),
        "{text}"
    );
    assert!(
        !text.contains("Subject line"),
        "only the items to act on: {text}"
    );
    assert_eq!(e.requests().await, HAPPY[..3]);
    assert_eq!(e.row("k1").await.state, CampaignState::Failed);
}

#[tokio::test]
async fn a_send_that_times_out_is_not_repeated_when_the_status_reads_sent() {
    let e = env().await;
    mount_until_send(&e.server, "save", "sent").await;
    mount_send(&e.server, Some(Duration::from_secs(3))).await;
    let out = e.push("k1").await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(
        e.requests().await,
        HAPPY_THEN_STATUS,
        "one send, then a status read"
    );
}

#[tokio::test]
async fn a_send_that_times_out_with_the_status_still_save_fails_without_a_second_send() {
    let e = env().await;
    mount_until_send(&e.server, "save", "save").await;
    mount_send(&e.server, Some(Duration::from_secs(3))).await;
    let err = e.push("k1").await.unwrap_err();
    assert!(matches!(err, CampaignError::Unconfirmed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    assert_eq!(e.requests().await, HAPPY_THEN_STATUS);
    let row = e.row("k1").await;
    assert_eq!(row.state, CampaignState::Failed);
    assert!(row.last_error.unwrap().contains("no clear answer"));
}

#[tokio::test]
async fn a_resumed_push_whose_campaign_already_went_out_only_reads_its_status() {
    let e = env().await;
    // A push that sent, then crashed before recording it.
    let hash = {
        let spec = mailbridge::campaigns::validate(&request(), &e.config.audiences[0]).unwrap();
        mailbridge::campaigns::content_hash(&spec)
    };
    assert!(
        rows::insert_intent(&e.store, "k1", "newsletter", &hash)
            .await
            .unwrap()
    );
    rows::set_provider_id(&e.store, "k1", "c1").await.unwrap();
    mount_status(&e.server, "sent", "sent").await;
    let out = e.push("k1").await.unwrap();
    assert_eq!(out.record.state, CampaignState::Sent);
    assert_eq!(out.record.recipients, Some(2));
    assert_eq!(e.requests().await, ["GET /3.0/campaigns/c1"]);
}

/// The state DB of [`a_push_whose_lease_was_taken_over_stops_before_its_next_call`], for its
/// hook (a plain `fn`).
static LEASE_TEST_DB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Right after the create, another push takes the key's lease over (as one would once this
/// push's lease had run out while it stalled).
fn another_push_takes_the_lease(_campaign_id: &str) {
    let db = LEASE_TEST_DB.get().unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    let changed = conn
        .execute(
            "UPDATE locks SET holder = 'elsewhere:1:other-push', expires_at = '9999-01-01T00:00:00.000Z' WHERE name = 'campaign:k1'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "this push's lease");
}

#[tokio::test]
async fn a_push_whose_lease_was_taken_over_stops_before_its_next_call() {
    let e = env().await;
    LEASE_TEST_DB
        .set(e.config.state.url.sqlite_path().unwrap())
        .unwrap();
    mount_until_send(&e.server, "save", "save").await;
    Mock::given(method("POST"))
        .and(path("/3.0/campaigns/c1/actions/send"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&e.server)
        .await;
    let err = e
        .push_with_hook("k1", Some(another_push_takes_the_lease))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CampaignError::Store(StoreError::LockLost { name }) if name == "campaign:k1"
        ),
        "{err:?}"
    );
    assert_eq!(
        e.requests().await,
        ["POST /3.0/campaigns"],
        "no call after the lease was lost, the send least of all"
    );
    // The row is the new holder's: this push leaves it as it was after the create.
    let row = e.row("k1").await;
    assert_eq!(row.state, CampaignState::Draft);
    assert_eq!(row.provider_campaign_id.as_deref(), Some("c1"));
    assert_eq!(row.last_error, None);
    let holder: String = sqlx::query_scalar("SELECT holder FROM locks WHERE name = 'campaign:k1'")
        .fetch_one(e.store.pool())
        .await
        .unwrap();
    assert_eq!(
        holder, "elsewhere:1:other-push",
        "the lease stays with the new holder"
    );
}
