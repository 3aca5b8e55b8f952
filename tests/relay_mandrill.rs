//! The `mailchimp_transactional` route (Mandrill-style `messages/send-raw`) against wiremock: the
//! exact request, success, a per-recipient rejection, an invalid key (misconfigured, stays queued),
//! a 5xx (route down: the next route takes the message), and a 2xx whose body cannot be read
//! (ambiguous: retried on the API, not failed over).

mod support;

use std::sync::Arc;

use mailbridge::config::RelayConfig;
use mailbridge::relay::outbox::{Enqueued, MessageStatus};
use mailbridge::relay::{NewMessage, RunSummary, Status, Worker, outbox};
use mailbridge::store::Store;
use support::relay::counter;
use support::smtp;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A relay with SQLite state in its own directory, and one message queued on it.
struct Relay {
    relay: Arc<RelayConfig>,
    store: Store,
    q: Enqueued,
    /// Last, so that it is removed after the store that lives in it is dropped.
    _dir: tempfile::TempDir,
}

impl Relay {
    /// [`setup`] then one message to `to`.
    async fn queued(server: &MockServer, extra: &str, to: &str) -> Relay {
        let (_dir, relay, store) = setup(server, extra).await;
        let q = outbox::enqueue(&store, &relay, &msg(to))
            .await
            .expect("enqueue");
        Relay {
            relay,
            store,
            q,
            _dir,
        }
    }

    /// [`Relay::queued`] with `mailchimp_transactional` as the only route.
    async fn api_only(server: &MockServer, to: &str) -> Relay {
        Relay::queued(server, "routes = [\"mailchimp_transactional\"]", to).await
    }

    async fn run_once(&self) -> RunSummary {
        run_once(&self.store, self.relay.clone()).await
    }

    /// The queued message's status row.
    async fn status(&self) -> MessageStatus {
        outbox::get(&self.store, &self.q.id)
            .await
            .expect("read status")
            .expect("the message is in the outbox")
    }

    async fn suppressed(&self, email: &str) -> bool {
        outbox::is_suppressed(&self.store, email)
            .await
            .expect("read suppressions")
    }
}

async fn setup(
    server: &MockServer,
    extra: &str,
) -> (
    tempfile::TempDir,
    Arc<mailbridge::config::RelayConfig>,
    Store,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = smtp::relay(
        dir.path(),
        "sqlite://state.db",
        &format!(
            "retry_base_secs = 0\nroute_backoff_secs = 0\n{extra}\n[relay.mailchimp_transactional]\napi_key = \"md-secret-key\"\nbase_url = \"{}/api/1.0\"\n",
            server.uri()
        ),
    )
    .await;
    (dir, app.relay, app.store)
}

/// [`Relay::queued`] (to ana@example.org) with the routes `mailchimp_transactional` then
/// `sendmail`, the latter a stand-in in `dir` running `script`.
async fn with_sendmail(server: &MockServer, dir: &std::path::Path, script: &str) -> Relay {
    let bin = smtp::stand_in(&dir.join("sendmail"), script);
    let routes = format!(
        "routes = [\"mailchimp_transactional\", \"sendmail\"]\nsendmail_path = \"{}\"",
        bin.display()
    );
    Relay::queued(server, &routes, "ana@example.org").await
}

/// One pass of a relay worker.
async fn run_once(store: &Store, relay: Arc<RelayConfig>) -> RunSummary {
    Worker::new(store.clone(), relay)
        .expect("worker")
        .run_once()
        .await
        .expect("relay run")
}

fn msg(to: &str) -> NewMessage {
    NewMessage {
        to: to.into(),
        subject: "Your username".into(),
        text: "It is ana.\n".into(),
        html: None,
        reply_to: None,
        headers: Default::default(),
        category: "password".into(),
    }
}

#[tokio::test]
async fn sends_the_raw_message_and_records_the_api_id() {
    let server = MockServer::start().await;
    let api = Relay::api_only(&server, "ana@example.org").await;
    Mock::given(method("POST"))
        .and(path("/api/1.0/messages/send-raw.json"))
        .and(body_partial_json(serde_json::json!({
            "key": "md-secret-key",
            "from_email": "club@club.example",
            "to": ["ana@example.org"],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"email": "ana@example.org", "status": "sent", "_id": "abc123", "reject_reason": null}
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let summary = api.run_once().await;
    assert_eq!(summary.sent, 1);
    let st = api.status().await;
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.route.as_deref(), Some("mailchimp_transactional"));
    assert!(st.last_reply.unwrap().contains("abc123"));
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[0].body_json().unwrap();
    assert!(
        body["raw_message"]
            .as_str()
            .unwrap()
            .contains(&api.q.message_id)
    );
}

#[tokio::test]
async fn a_rejected_recipient_bounces_and_is_suppressed() {
    let server = MockServer::start().await;
    let api = Relay::api_only(&server, "gone@example.org").await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"email": "gone@example.org", "status": "rejected", "reject_reason": "hard-bounce", "_id": "x"}
        ])))
        .mount(&server)
        .await;
    let summary = api.run_once().await;
    assert_eq!(summary.bounced, 1);
    assert_eq!(api.status().await.status, Status::Bounced);
    assert!(api.suppressed("gone@example.org").await);
}

#[tokio::test]
async fn an_invalid_key_keeps_the_message_queued_without_leaking_the_key() {
    let server = MockServer::start().await;
    let api = Relay::api_only(&server, "ana@example.org").await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(serde_json::json!(
            {"status": "error", "code": -1, "name": "Invalid_Key", "message": "Invalid API key"}
        )))
        .mount(&server)
        .await;
    let summary = api.run_once().await;
    assert_eq!(summary.waiting, 1, "{summary:?}");
    let st = api.status().await;
    assert_eq!(st.status, Status::Queued);
    let reply = st.last_reply.unwrap();
    assert!(reply.contains("Invalid_Key"), "{reply}");
    assert!(!reply.contains("md-secret-key"));
    assert!(!api.suppressed("ana@example.org").await);
}

#[tokio::test]
async fn a_5xx_takes_the_api_down_and_the_next_route_delivers() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let api = with_sendmail(&server, dir.path(), "cat > /dev/null\nexit 0\n").await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let summary = api.run_once().await;
    assert_eq!(summary.sent, 1);
    assert_eq!(api.status().await.route.as_deref(), Some("sendmail"));
}

/// A 2xx whose body cannot be read: the API took the request and may have sent the message. It
/// is not handed to the next route (sendmail) in that pass, is counted as ambiguous, and the retry
/// goes to the API again with the same Message-ID.
#[tokio::test]
async fn a_2xx_with_an_unreadable_body_is_retried_on_the_api_not_failed_over() {
    let _ = mailbridge::http::metrics::handle();
    let series = "mailbridge_relay_ambiguous_total{route=\"mailchimp_transactional\"}";
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sendmail.log");
    let script = format!(
        "cat > /dev/null\nprintf '%s\\n' \"$5\" >> '{}'\n",
        log.display()
    );
    let api = with_sendmail(&server, dir.path(), &script).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("<html>Bad gateway</html>", "text/html"),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"email": "ana@example.org", "status": "sent", "_id": "retry1", "reject_reason": null}
        ])))
        .mount(&server)
        .await;
    let before = counter(series);
    let worker = Worker::new(api.store.clone(), api.relay.clone()).unwrap();
    let first = worker.run_once().await.unwrap();
    assert_eq!((first.ambiguous, first.sent), (1, 0), "{first:?}");
    assert!(
        !log.exists(),
        "sendmail must not get the message in the same pass"
    );
    assert_eq!(counter(series), before + 1.0);
    let st = api.status().await;
    assert_eq!(st.status, Status::Deferred);
    assert_eq!(st.route.as_deref(), Some("mailchimp_transactional"));
    let reply = st.last_reply.unwrap();
    assert!(reply.starts_with("outcome unknown: "), "{reply}");
    assert!(!reply.contains("md-secret-key"));

    let second = worker.run_once().await.unwrap();
    assert_eq!(second.sent, 1, "{second:?}");
    let st = api.status().await;
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.route.as_deref(), Some("mailchimp_transactional"));
    assert!(st.last_reply.unwrap().contains("retry1"));
    assert!(!log.exists());
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let body: serde_json::Value = r.body_json().unwrap();
        assert!(
            body["raw_message"]
                .as_str()
                .unwrap()
                .contains(&api.q.message_id),
            "one Message-ID across the retry"
        );
    }
}
