//! The `mailchimp_transactional` route (Mandrill-style `messages/send-raw`) against wiremock: the
//! exact request, success, a per-recipient rejection, an invalid key (misconfigured, stays queued),
//! a 5xx (route down: the next route takes the message), and a 2xx whose body cannot be read
//! (ambiguous: retried on the API, not failed over).

mod support;

use std::sync::Arc;

use mailbridge::config::RelayConfig;
use mailbridge::relay::{NewMessage, RunSummary, Status, Worker, outbox};
use mailbridge::store::Store;
use support::relay::counter;
use support::smtp;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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

/// [`setup`] with the routes `mailchimp_transactional` then `sendmail`, the latter a stand-in in
/// `dir` running `script`.
async fn setup_with_sendmail(
    server: &MockServer,
    dir: &std::path::Path,
    script: &str,
) -> (tempfile::TempDir, Arc<RelayConfig>, Store) {
    let bin = smtp::stand_in(&dir.join("sendmail"), script);
    setup(
        server,
        &format!(
            "routes = [\"mailchimp_transactional\", \"sendmail\"]\nsendmail_path = \"{}\"",
            bin.display()
        ),
    )
    .await
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
    let (_dir, relay, store) = setup(&server, "routes = [\"mailchimp_transactional\"]").await;
    let q = outbox::enqueue(&store, &relay, &msg("ana@example.org"))
        .await
        .unwrap();
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
    let summary = run_once(&store, relay).await;
    assert_eq!(summary.sent, 1);
    let st = outbox::get(&store, &q.id).await.unwrap().unwrap();
    assert_eq!(st.status, Status::Sent);
    assert_eq!(st.route.as_deref(), Some("mailchimp_transactional"));
    assert!(st.last_reply.unwrap().contains("abc123"));
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[0].body_json().unwrap();
    assert!(
        body["raw_message"]
            .as_str()
            .unwrap()
            .contains(&q.message_id)
    );
}

#[tokio::test]
async fn a_rejected_recipient_bounces_and_is_suppressed() {
    let server = MockServer::start().await;
    let (_dir, relay, store) = setup(&server, "routes = [\"mailchimp_transactional\"]").await;
    let q = outbox::enqueue(&store, &relay, &msg("gone@example.org"))
        .await
        .unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"email": "gone@example.org", "status": "rejected", "reject_reason": "hard-bounce", "_id": "x"}
        ])))
        .mount(&server)
        .await;
    let summary = run_once(&store, relay).await;
    assert_eq!(summary.bounced, 1);
    assert_eq!(
        outbox::get(&store, &q.id).await.unwrap().unwrap().status,
        Status::Bounced
    );
    assert!(
        outbox::is_suppressed(&store, "gone@example.org")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_invalid_key_keeps_the_message_queued_without_leaking_the_key() {
    let server = MockServer::start().await;
    let (_dir, relay, store) = setup(&server, "routes = [\"mailchimp_transactional\"]").await;
    let q = outbox::enqueue(&store, &relay, &msg("ana@example.org"))
        .await
        .unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(serde_json::json!(
            {"status": "error", "code": -1, "name": "Invalid_Key", "message": "Invalid API key"}
        )))
        .mount(&server)
        .await;
    let summary = run_once(&store, relay).await;
    assert_eq!(summary.waiting, 1, "{summary:?}");
    let st = outbox::get(&store, &q.id).await.unwrap().unwrap();
    assert_eq!(st.status, Status::Queued);
    let reply = st.last_reply.unwrap();
    assert!(reply.contains("Invalid_Key"), "{reply}");
    assert!(!reply.contains("md-secret-key"));
    assert!(
        !outbox::is_suppressed(&store, "ana@example.org")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_5xx_takes_the_api_down_and_the_next_route_delivers() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_d, relay, store) =
        setup_with_sendmail(&server, dir.path(), "cat > /dev/null\nexit 0\n").await;
    let q = outbox::enqueue(&store, &relay, &msg("ana@example.org"))
        .await
        .unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let summary = run_once(&store, relay).await;
    assert_eq!(summary.sent, 1);
    let st = outbox::get(&store, &q.id).await.unwrap().unwrap();
    assert_eq!(st.route.as_deref(), Some("sendmail"));
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
    let (_d, relay, store) = setup_with_sendmail(
        &server,
        dir.path(),
        &format!(
            "cat > /dev/null\nprintf '%s\\n' \"$5\" >> '{}'\n",
            log.display()
        ),
    )
    .await;
    let q = outbox::enqueue(&store, &relay, &msg("ana@example.org"))
        .await
        .unwrap();
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
    let worker = Worker::new(store.clone(), relay).unwrap();
    let first = worker.run_once().await.unwrap();
    assert_eq!((first.ambiguous, first.sent), (1, 0), "{first:?}");
    assert!(
        !log.exists(),
        "sendmail must not get the message in the same pass"
    );
    assert_eq!(counter(series), before + 1.0);
    let st = outbox::get(&store, &q.id).await.unwrap().unwrap();
    assert_eq!(st.status, Status::Deferred);
    assert_eq!(st.route.as_deref(), Some("mailchimp_transactional"));
    let reply = st.last_reply.unwrap();
    assert!(reply.starts_with("outcome unknown: "), "{reply}");
    assert!(!reply.contains("md-secret-key"));

    let second = worker.run_once().await.unwrap();
    assert_eq!(second.sent, 1, "{second:?}");
    let st = outbox::get(&store, &q.id).await.unwrap().unwrap();
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
                .contains(&q.message_id),
            "one Message-ID across the retry"
        );
    }
}
