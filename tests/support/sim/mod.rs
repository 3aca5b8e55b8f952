//! The provider simulator for tests: started in process with an authenticated client, optionally
//! behind the spec-proxy; a webhook receiver, polling with a deadline, and the spec schema
//! validator.
#![allow(dead_code, clippy::unwrap_used)]

pub mod schema;
pub mod spec_proxy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use mailbridge::simulator::{SimConfig, Simulator, SimulatorHandle};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

pub const KEY: &str = "0123456789abcdef0123456789abcdef-us6";

pub struct TestSim {
    pub handle: SimulatorHandle,
    pub client: Client,
    /// Where API requests go: the simulator's `/3.0`, or the spec-proxy when enabled.
    pub api_url: String,
    pub proxy: Option<spec_proxy::SpecProxy>,
}

impl TestSim {
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    pub async fn start_with(config: SimConfig) -> Self {
        let handle = Simulator::start_with("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let api_url = handle.mailchimp_url();
        Self {
            handle,
            client: client(),
            api_url,
            proxy: None,
        }
    }

    /// Starts the simulator and, when `MAILBRIDGE_SPEC_PROXY=1`, the spec-proxy in front of it.
    pub async fn start_behind_spec_proxy() -> Self {
        let mut sim = Self::start().await;
        if let Some(proxy) =
            spec_proxy::SpecProxy::start_if_enabled(&sim.handle.mailchimp_url()).await
        {
            sim.api_url = proxy.base_url();
            sim.proxy = Some(proxy);
        }
        sim
    }

    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.api_url))
            .basic_auth("anystring", Some(KEY))
    }

    pub fn sim(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}/_sim{path}", self.handle.base_url()))
    }

    /// An authenticated API request without a body, sent.
    pub async fn send(&self, method: Method, path: &str) -> Response {
        self.api(method, path).send().await.unwrap()
    }

    /// An authenticated API request with a JSON body, sent.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.api(method, path).json(body).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.api(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn sim_json(&self, method: Method, path: &str) -> Value {
        let response = self.sim(method, path).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "/_sim{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// A `POST /_sim{path}` with a JSON body, sent.
    pub async fn sim_post(&self, path: &str, body: &Value) -> Response {
        self.sim(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Sets the simulator's faults (`POST /_sim/faults`; `{}` clears them).
    pub async fn set_faults(&self, faults: Value) -> Response {
        self.sim_post("/faults", &faults).await
    }

    /// Moves the simulator's clock on by `seconds`.
    pub async fn advance_clock(&self, seconds: u64) -> Response {
        self.sim_post("/clock/advance", &json!({"seconds": seconds}))
            .await
    }

    /// Does at the provider what a reader or Mailchimp does to a member: `action` is
    /// `unsubscribe` (optionally with `?reason=…`), `clean` or `confirm`. Must succeed.
    pub async fn member_action(&self, list: &str, email: &str, action: &str) -> Value {
        self.sim_json(
            Method::POST,
            &format!("/lists/{list}/members/{email}/{action}"),
        )
        .await
    }

    /// A simulator with one list.
    pub async fn start_with_list() -> (Self, String) {
        let sim = Self::start().await;
        let list = sim.create_list().await;
        (sim, list)
    }

    pub async fn create_list(&self) -> String {
        let response = self
            .api(Method::POST, "/lists")
            .json(&list_body("Club news"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn put_member(&self, list: &str, email: &str, body: Value) -> Response {
        self.send_json(Method::PUT, &member_path(list, email), &body)
            .await
    }

    pub async fn subscribe(&self, list: &str, email: &str) -> Value {
        let response = self
            .put_member(
                list,
                email,
                json!({"email_address": email, "status_if_new": "subscribed"}),
            )
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn batch(&self, list: &str, body: Value) -> Response {
        self.api(Method::POST, &format!("/lists/{list}"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// [`TestSim::batch`]'s answer as JSON.
    pub async fn batch_json(&self, list: &str, body: Value) -> Value {
        self.batch(list, body).await.json().await.unwrap()
    }

    /// [`TestSim::member`]'s answer as JSON.
    pub async fn member_json(&self, list: &str, email: &str) -> Value {
        self.member(list, email).await.json().await.unwrap()
    }

    pub async fn member(&self, list: &str, email: &str) -> Response {
        self.send(Method::GET, &member_path(list, email)).await
    }

    pub async fn sim_members(&self, list: &str) -> Vec<Value> {
        let body = self
            .sim_json(Method::GET, &format!("/lists/{list}/members"))
            .await;
        body["members"].as_array().unwrap().clone()
    }

    /// `/_sim/stats`' requests by route (`"METHOD /3.0/template"` → n), faulted ones included.
    pub async fn stats_by_route(&self) -> std::collections::BTreeMap<String, u64> {
        let s = self.sim_json(Method::GET, "/stats").await;
        s["by_route"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    }

    /// The API write calls `/_sim/stats` counts (every route but `GET`s), faulted ones included.
    pub async fn write_calls(&self) -> u64 {
        self.stats_by_route()
            .await
            .iter()
            .filter(|(k, _)| !k.starts_with("GET "))
            .map(|(_, v)| v)
            .sum()
    }

    /// Zeroes `/_sim/stats`.
    pub async fn reset_stats(&self) {
        self.sim_json(Method::POST, "/stats/reset").await;
    }

    /// The list's members: lower-cased address → whole member JSON.
    pub async fn remote(&self, list: &str) -> std::collections::BTreeMap<String, Value> {
        self.sim_members(list)
            .await
            .into_iter()
            .map(|m| (m["email_address"].as_str().unwrap().to_lowercase(), m))
            .collect()
    }

    /// The addresses the list mails (subscribed or pending).
    pub async fn live(&self, list: &str) -> std::collections::BTreeSet<String> {
        self.remote(list)
            .await
            .into_iter()
            .filter(|(_, m)| matches!(m["status"].as_str(), Some("subscribed" | "pending")))
            .map(|(e, _)| e)
            .collect()
    }

    /// The campaign emails the simulator has "sent" (`/_sim/deliveries`).
    pub async fn campaign_deliveries(&self) -> Vec<Value> {
        self.sim_json(Method::GET, "/deliveries")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn webhook_deliveries(&self) -> Vec<Value> {
        self.sim_json(Method::GET, "/webhook-deliveries")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Polls `/_sim/webhook-deliveries` until `pred` holds for the list of attempts.
    pub async fn wait_for_deliveries(
        &self,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let attempts = self.webhook_deliveries().await;
            if pred(&attempts) {
                return attempts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {attempts:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn register_webhook(
        &self,
        list: &str,
        url: &str,
        events: Value,
        sources: Value,
    ) -> Response {
        self.api(Method::POST, &format!("/lists/{list}/webhooks"))
            .json(&json!({"url": url, "events": events, "sources": sources}))
            .send()
            .await
            .unwrap()
    }
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The API path of `email`'s member on `list`.
pub fn member_path(list: &str, email: &str) -> String {
    format!("/lists/{list}/members/{}", hash(email))
}

pub fn hash(email: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(email.trim().to_lowercase().as_bytes()))
}

pub fn list_body(name: &str) -> Value {
    json!({
        "name": name,
        "contact": {
            "company": "The Club", "address1": "1 Main St", "city": "Springfield",
            "state": "IL", "zip": "62701", "country": "US"
        },
        "permission_reminder": "You joined the club.",
        "campaign_defaults": {
            "from_name": "The Club", "from_email": "club@example.org",
            "subject": "News", "language": "en"
        },
        "email_type_option": false
    })
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub user_agent: String,
    pub form: Vec<(String, String)>,
}

impl Received {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    /// POSTs still to answer with 500.
    fail_posts: Arc<Mutex<u32>>,
    /// Answer the validation GET with this status.
    get_status: Arc<Mutex<u16>>,
}

/// A real HTTP server standing in for mailbridge's webhook endpoint.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: ReceiverState,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_failing(0, 200).await
    }

    /// Fails the first `fail_posts` POSTs with 500 and answers GETs with `get_status`.
    pub async fn start_failing(fail_posts: u32, get_status: u16) -> Self {
        let state = ReceiverState::default();
        *state.fail_posts.lock().unwrap() = fail_posts;
        *state.get_status.lock().unwrap() = get_status;
        let app = Router::new()
            .route("/hook", any(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn posts(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.method == Method::POST)
            .collect()
    }

    /// The first POST whose `field` is `value`; panics if there is none.
    pub fn post_where(&self, field: &str, value: &str) -> Received {
        self.posts()
            .into_iter()
            .find(|r| r.field(field) == Some(value))
            .unwrap_or_else(|| panic!("no POST with {field} = {value}"))
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.received.lock().unwrap().push(Received {
        method: method.clone(),
        user_agent,
        form,
    });
    if method == Method::GET {
        return StatusCode::from_u16(*state.get_status.lock().unwrap()).unwrap();
    }
    let mut fail = state.fail_posts.lock().unwrap();
    if *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

pub fn all_events() -> Value {
    json!({"subscribe": true, "unsubscribe": true, "profile": true, "cleaned": true, "upemail": true, "campaign": true})
}

pub fn all_sources() -> Value {
    json!({"user": true, "admin": true, "api": true})
}
