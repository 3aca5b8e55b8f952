//! Behaviour of the Mailchimp simulator over real HTTP (port 0), one test per rule it promises.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sim::{TestSim, WebhookReceiver, all_events, all_sources, hash, list_body, member_path};
use support::sim;

fn emails(members: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = members
        .iter()
        .map(|m| m["email_address"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    for key in ["type", "title", "detail", "instance"] {
        assert!(body[key].is_string(), "problem without {key}: {body}");
    }
    (status, body)
}

/// [`problem`] with this `status` and `title`; its body.
async fn problem_titled(response: reqwest::Response, status: u16, title: &str) -> Value {
    let (got, body) = problem(response).await;
    assert_eq!((got, body["title"].as_str()), (status, Some(title)));
    body
}

/// The string `key` of each object in the array `items`, in order.
fn each<'a>(items: &'a Value, key: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap())
        .collect()
}

/// A simulator with a list whose webhook (every event, from `sources`) goes to `hook`.
async fn list_hooked_to(hook: &WebhookReceiver, sources: Value) -> (TestSim, String) {
    let (sim, list) = TestSim::start_with_list().await;
    let registered = sim
        .register_webhook(&list, &hook.url(), all_events(), sources)
        .await;
    assert_eq!(registered.status(), 200);
    (sim, list)
}

#[tokio::test]
async fn ping_needs_an_api_key_and_accepts_basic_or_bearer() {
    let sim = TestSim::start().await;
    let url = format!("{}/ping", sim.handle.mailchimp_url());
    // `GET /ping` with the credentials `auth` adds.
    let ping = |auth: fn(RequestBuilder) -> RequestBuilder| auth(sim.client.get(&url)).send();

    let none = ping(|r| r).await.unwrap();
    problem_titled(none, 401, "API Key Missing").await;
    let bad = ping(|r| r.header("authorization", "Basic !!!"))
        .await
        .unwrap();
    problem_titled(bad, 401, "API Key Invalid").await;
    let empty_key = ping(|r| r.basic_auth("user", Some(""))).await.unwrap();
    assert_eq!(empty_key.status(), 401);

    let basic = sim.get_json("/ping").await;
    assert_eq!(basic, json!({"health_status": "Everything's Chimpy!"}));
    let bearer = ping(|r| r.bearer_auth("oauth-token")).await.unwrap();
    assert_eq!(bearer.status(), 200);
}

#[tokio::test]
async fn lists_are_created_read_and_unknown_ones_are_404() {
    let sim = TestSim::start().await;
    let created: Value = sim
        .send_json(Method::POST, "/lists", &list_body("News"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["name"], "News");
    assert_eq!(created["stats"]["member_count"], 0);

    sim.subscribe(id, "ann@example.org").await;
    let read = sim.get_json(&format!("/lists/{id}")).await;
    assert_eq!(read["stats"]["member_count"], 1);
    assert_eq!(read["contact"]["company"], "The Club");

    let unknown = sim.send(Method::GET, "/lists/nope").await;
    problem_titled(unknown, 404, "Resource Not Found").await;
    let missing_name = sim
        .send_json(Method::POST, "/lists", &json!({"contact": {}}))
        .await;
    let body = problem_titled(missing_name, 400, "Invalid Resource").await;
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"] == "name")
    );
}

#[tokio::test]
async fn merge_fields_start_with_defaults_and_refuse_duplicate_tags() {
    let (sim, list) = TestSim::start_with_list().await;
    let all = sim
        .get_json(&format!("/lists/{list}/merge-fields?count=100"))
        .await;
    assert_eq!(
        each(&all["merge_fields"], "tag"),
        ["FNAME", "LNAME", "ADDRESS", "PHONE"]
    );
    assert_eq!(all["total_items"], 4);

    let path = format!("/lists/{list}/merge-fields");
    let created: Value = sim
        .send_json(
            Method::POST,
            &path,
            &json!({"name": "Member number", "type": "number", "tag": "MEMBERNO"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            created["tag"].as_str(),
            created["type"].as_str(),
            created["merge_id"].as_u64()
        ),
        (Some("MEMBERNO"), Some("number"), Some(5))
    );

    let dup = sim
        .send_json(
            Method::POST,
            &path,
            &json!({"name": "Again", "type": "text", "tag": "memberno"}),
        )
        .await;
    problem_titled(dup, 400, "Invalid Resource").await;

    let page = sim.get_json(&format!("{path}?count=2&offset=3")).await;
    assert_eq!(each(&page["merge_fields"], "tag"), ["PHONE", "MEMBERNO"]);
    assert_eq!(page["total_items"], 5);
}

#[tokio::test]
async fn put_creates_with_status_if_new_then_updates_without_touching_status() {
    let (sim, list) = TestSim::start_with_list().await;
    let created = sim
        .put_member(&list, "Ann@Example.org", json!({"email_address": "Ann@Example.org", "status_if_new": "subscribed", "merge_fields": {"FNAME": "Ann"}}))
        .await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["id"], hash("ann@example.org"));
    assert_eq!(created["status"], "subscribed");
    assert_eq!(created["merge_fields"]["FNAME"], "Ann");
    assert_eq!(created["merge_fields"]["LNAME"], "");
    assert!(
        created["last_changed"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );

    // status_if_new does not apply to an existing member; merge fields do.
    sim.advance_clock(5).await;
    let updated: Value = sim
        .put_member(&list, "ann@example.org", json!({"email_address": "ann@example.org", "status_if_new": "unsubscribed", "merge_fields": {"LNAME": "Lee"}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["status"], "subscribed");
    assert_eq!(updated["merge_fields"]["FNAME"], "Ann");
    assert_eq!(updated["merge_fields"]["LNAME"], "Lee");
    assert!(updated["last_changed"].as_str() > created["last_changed"].as_str());

    // `status` overrides.
    let unsub: Value = sim
        .put_member(&list, "ann@example.org", json!({"email_address": "ann@example.org", "status_if_new": "subscribed", "status": "unsubscribed"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unsub["status"], "unsubscribed");
    assert!(!unsub["unsubscribe_reason"].as_str().unwrap().is_empty());

    // PATCH updates, and 404s for an unknown member.
    let patch = |email: &str, body: Value| {
        let path = member_path(&list, email);
        let sim = &sim;
        async move { sim.send_json(Method::PATCH, &path, &body).await }
    };
    let patched = patch(
        "ann@example.org",
        json!({"merge_fields": {"FNAME": "Anne"}}),
    )
    .await;
    assert_eq!(patched.status(), 200);
    let missing = patch(
        "nobody@example.org",
        json!({"merge_fields": {"FNAME": "X"}}),
    )
    .await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn put_to_old_hash_with_new_address_changes_the_address_and_fires_upemail() {
    let hook = WebhookReceiver::start().await;
    let (sim, list) = list_hooked_to(&hook, all_sources()).await;
    sim.subscribe(&list, "old@example.org").await;

    let moved = sim
        .put_member(
            &list,
            "old@example.org",
            json!({"email_address": "new@example.org", "status_if_new": "subscribed"}),
        )
        .await;
    assert_eq!(moved.status(), 200);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!(moved["email_address"], "new@example.org");
    assert_eq!(moved["id"], hash("new@example.org"));
    assert_eq!(sim.member(&list, "old@example.org").await.status(), 404);
    assert_eq!(sim.member(&list, "new@example.org").await.status(), 200);

    sim.wait_for_deliveries("upemail delivery", |a| {
        a.iter()
            .any(|d| d["type"] == "upemail" && d["outcome"] == "delivered")
    })
    .await;
    let upemail = hook.post_where("type", "upemail");
    assert_eq!(upemail.field("data[old_email]"), Some("old@example.org"));
    assert_eq!(upemail.field("data[new_email]"), Some("new@example.org"));
    assert_eq!(
        upemail.field("data[new_id]"),
        Some(hash("new@example.org").as_str())
    );
    assert_eq!(upemail.field("data[list_id]"), Some(list.as_str()));
    assert_eq!(upemail.user_agent, "MailChimp.com");
    let fired_at = upemail.field("fired_at").unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(fired_at, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{fired_at}"
    );
}

#[tokio::test]
async fn batch_subscribe_creates_updates_and_reports_per_member_errors() {
    let (sim, list) = TestSim::start_with_list().await;
    let first = sim
        .batch(&list, json!({"members": [
            {"email_address": "a@example.org", "status": "subscribed", "merge_fields": {"FNAME": "A"}, "tags": ["board"]},
            {"email_address": "b@example.org", "status": "subscribed"},
            {"email_address": "not-an-email", "status": "subscribed"},
            {"email_address": "c@example.org", "status": "subscribed", "merge_fields": {"NOPE": "x"}},
        ]}))
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        (
            first["total_created"].as_u64(),
            first["total_updated"].as_u64(),
            first["error_count"].as_u64()
        ),
        (Some(2), Some(0), Some(2))
    );
    assert_eq!(
        emails(first["new_members"].as_array().unwrap()),
        ["a@example.org", "b@example.org"]
    );
    let errors = first["errors"].as_array().unwrap();
    assert_eq!(errors[0]["email_address"], "not-an-email");
    assert_eq!(errors[0]["error_code"], "ERROR_GENERIC");
    assert_eq!(errors[1]["field"], "NOPE");
    assert_eq!(first["new_members"][0]["tags"][0]["name"], "board");

    // Without update_existing an existing address is ERROR_CONTACT_EXISTS and is left alone.
    let again: Value = sim
        .batch_json(
            &list,
            json!({"members": [{"email_address": "a@example.org", "status": "unsubscribed"}]}),
        )
        .await;
    assert_eq!(again["errors"][0]["error_code"], "ERROR_CONTACT_EXISTS");
    assert_eq!(again["total_updated"], 0);
    let a: Value = sim.member_json(&list, "a@example.org").await;
    assert_eq!(a["status"], "subscribed");

    // With update_existing the member is updated; tags are added unless sync_tags.
    let updated: Value = sim.batch_json(&list, json!({"update_existing": true, "members": [
            {"email_address": "a@example.org", "status": "subscribed", "merge_fields": {"LNAME": "Z"}, "tags": ["youth"]}
        ]})).await;
    assert_eq!(updated["total_updated"], 1);
    assert_eq!(
        each(&updated["updated_members"][0]["tags"], "name"),
        ["board", "youth"]
    );
    assert_eq!(updated["updated_members"][0]["merge_fields"]["FNAME"], "A");

    let synced: Value = sim
        .batch_json(
            &list,
            json!({"update_existing": true, "sync_tags": true, "members": [
                {"email_address": "a@example.org", "status": "subscribed", "tags": ["senior"]}
            ]}),
        )
        .await;
    assert_eq!(
        each(&synced["updated_members"][0]["tags"], "name"),
        ["senior"]
    );
    assert_eq!(synced["updated_members"][0]["tags_count"], 1);
}

#[tokio::test]
async fn batch_of_more_than_500_members_is_refused_whole() {
    let (sim, list) = TestSim::start_with_list().await;
    let members: Vec<Value> = (0..501)
        .map(|i| json!({"email_address": format!("m{i}@example.org"), "status": "subscribed"}))
        .collect();
    let (status, body) = problem(sim.batch(&list, json!({"members": members})).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "members");
    assert!(sim.sim_members(&list).await.is_empty());
    let ok: Vec<Value> = members_of(500);
    let accepted: Value = sim.batch_json(&list, json!({"members": ok})).await;
    assert_eq!(accepted["total_created"], 500);
}

fn members_of(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"email_address": format!("m{i}@example.org"), "status": "subscribed"}))
        .collect()
}

#[tokio::test]
async fn unsubscribed_or_cleaned_members_cannot_be_forced_back_to_subscribed() {
    let (sim, list) = TestSim::start_with_list().await;
    sim.subscribe(&list, "u@example.org").await;
    sim.subscribe(&list, "c@example.org").await;
    sim.member_action(&list, "u@example.org", "unsubscribe")
        .await;
    sim.member_action(&list, "c@example.org", "clean").await;

    for email in ["u@example.org", "c@example.org"] {
        let response = sim.put_member(&list, email, json!({"email_address": email, "status_if_new": "subscribed", "status": "subscribed"})).await;
        let body = problem_titled(response, 400, "Member In Compliance State").await;
        assert_eq!(
            body["detail"],
            format!(
                "{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."
            )
        );
    }

    let batch: Value = sim
        .batch_json(
            &list,
            json!({"update_existing": true, "members": [
                {"email_address": "u@example.org", "status": "subscribed"},
                {"email_address": "fresh@example.org", "status": "subscribed"},
            ]}),
        )
        .await;
    assert_eq!(batch["error_count"], 1);
    assert_eq!(batch["errors"][0]["email_address"], "u@example.org");
    assert_eq!(batch["total_created"], 1, "the rest of the batch applies");

    let statuses: Vec<(String, String)> = sim
        .sim_members(&list)
        .await
        .iter()
        .map(|m| {
            (
                m["email_address"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(statuses.contains(&("u@example.org".into(), "unsubscribed".into())));
    assert!(statuses.contains(&("c@example.org".into(), "cleaned".into())));

    // pending is allowed, and a confirmation turns it into subscribed.
    let pending = sim.put_member(&list, "u@example.org", json!({"email_address": "u@example.org", "status_if_new": "pending", "status": "pending"})).await;
    assert_eq!(pending.status(), 200);
    assert_eq!(pending.json::<Value>().await.unwrap()["status"], "pending");
    let confirmed = sim.member_action(&list, "u@example.org", "confirm").await;
    assert_eq!(confirmed["status"], "subscribed");
}

#[tokio::test]
async fn permanently_deleted_address_can_never_be_re_added() {
    let (sim, list) = TestSim::start_with_list().await;
    sim.subscribe(&list, "gone@example.org").await;
    let deleted = sim
        .send(
            Method::POST,
            &format!(
                "{}/actions/delete-permanent",
                member_path(&list, "gone@example.org")
            ),
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(sim.member(&list, "gone@example.org").await.status(), 404);

    let again = sim
        .put_member(
            &list,
            "gone@example.org",
            json!({"email_address": "gone@example.org", "status_if_new": "subscribed"}),
        )
        .await;
    problem_titled(again, 400, "Forgotten Email Not Subscribed").await;
    let batch: Value = sim
        .batch_json(
            &list,
            json!({"members": [{"email_address": "gone@example.org", "status": "pending"}]}),
        )
        .await;
    assert_eq!(batch["error_count"], 1);
    assert!(sim.sim_members(&list).await.is_empty());
}

#[tokio::test]
async fn archived_member_may_come_back_but_pending_cannot_be_archived() {
    let (sim, list) = TestSim::start_with_list().await;
    sim.subscribe(&list, "arch@example.org").await;
    let path = member_path(&list, "arch@example.org");
    assert_eq!(sim.send(Method::DELETE, &path).await.status(), 204);
    let archived: Value = sim.member_json(&list, "arch@example.org").await;
    assert_eq!(archived["status"], "archived");

    let twice = sim.send(Method::DELETE, &path).await;
    problem_titled(twice, 405, "Method Not Allowed").await;

    let back: Value = sim
        .batch_json(
            &list,
            json!({"members": [{"email_address": "arch@example.org", "status": "subscribed"}]}),
        )
        .await;
    assert_eq!(back["total_created"], 1, "{back}");
    assert_eq!(back["new_members"][0]["status"], "subscribed");

    sim.put_member(
        &list,
        "p@example.org",
        json!({"email_address": "p@example.org", "status_if_new": "pending"}),
    )
    .await;
    let pending = sim
        .send(Method::DELETE, &member_path(&list, "p@example.org"))
        .await;
    assert_eq!(pending.status(), 405);
}

/// The body of a member PUT in [`refused_member_puts`].
enum Body {
    Json(Value),
    Raw(&'static str),
}

/// A member PUT the simulator refuses, as Mailchimp does.
struct RefusedPut {
    /// What the row checks (the test it was, and which of its cases).
    name: &'static str,
    /// The address whose hash is the path.
    path_email: &'static str,
    body: Body,
    /// Add the merge field `AGE` (number) first.
    age_field: bool,
    title: Option<&'static str>,
    /// The field the first error names.
    field: Option<&'static str>,
}

/// Each refusal is a 400 problem and stores nothing.
#[tokio::test]
async fn refused_member_puts() {
    let rows = [
        RefusedPut {
            name: "hash_matching_neither_member_nor_body_is_refused",
            path_email: "someone@example.org",
            body: Body::Json(
                json!({"email_address": "other@example.org", "status_if_new": "subscribed"}),
            ),
            age_field: false,
            title: None,
            field: Some("email_address"),
        },
        RefusedPut {
            name: "invalid_email_is_an_invalid_resource",
            path_email: "bad@address",
            body: Body::Json(
                json!({"email_address": "bad@address", "status_if_new": "subscribed"}),
            ),
            age_field: false,
            title: Some("Invalid Resource"),
            field: Some("email_address"),
        },
        RefusedPut {
            name: "invalid_email_is_an_invalid_resource: a number merge field given text",
            path_email: "n@example.org",
            body: Body::Json(
                json!({"email_address": "n@example.org", "status_if_new": "subscribed", "merge_fields": {"AGE": "old"}}),
            ),
            age_field: true,
            title: None,
            field: Some("AGE"),
        },
        RefusedPut {
            name: "invalid_email_is_an_invalid_resource: a body that is not JSON",
            path_email: "n@example.org",
            body: Body::Raw("{"),
            age_field: true,
            title: Some("JSON Parse Exception"),
            field: None,
        },
    ];
    for row in rows {
        let name = row.name;
        let (sim, list) = TestSim::start_with_list().await;
        if row.age_field {
            let number = sim
                .send_json(
                    Method::POST,
                    &format!("/lists/{list}/merge-fields"),
                    &json!({"name": "Age", "type": "number", "tag": "AGE"}),
                )
                .await;
            assert_eq!(number.status(), 200, "{name}");
        }
        let put = sim.api(Method::PUT, &member_path(&list, row.path_email));
        let put = match row.body {
            Body::Json(v) => put.json(&v),
            Body::Raw(text) => put.body(text),
        };
        let (status, body) = problem(put.send().await.unwrap()).await;
        assert_eq!(status, 400, "{name}: {body}");
        if let Some(title) = row.title {
            assert_eq!(body["title"].as_str(), Some(title), "{name}");
        }
        if let Some(field) = row.field {
            assert_eq!(body["errors"][0]["field"].as_str(), Some(field), "{name}");
        }
        assert!(sim.sim_members(&list).await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn members_can_be_read_by_status_and_since_last_changed_in_pages() {
    let (sim, list) = TestSim::start_with_list().await;
    sim.batch(&list, json!({"members": members_of(5)})).await;
    let too_many = sim
        .send(Method::GET, &format!("/lists/{list}/members?count=1001"))
        .await;
    assert_eq!(problem(too_many).await.0, 400);

    // Later changes land in a later (simulated) second.
    assert_eq!(sim.advance_clock(60).await.status(), 200);
    sim.member_action(&list, "m1@example.org", "unsubscribe")
        .await;
    sim.member_action(&list, "m3@example.org", "unsubscribe")
        .await;
    let m3: Value = sim.member_json(&list, "m3@example.org").await;
    let m1: Value = sim.member_json(&list, "m1@example.org").await;
    let since = m1["last_changed"].as_str().unwrap().to_owned();

    let query = format!(
        "status=unsubscribed&since_last_changed={}&sort_field=last_changed&count=1000",
        urlencode(&since)
    );
    let changed = sim
        .get_json(&format!("/lists/{list}/members?{query}"))
        .await;
    assert_eq!(changed["total_items"], 2);
    assert_eq!(
        emails(changed["members"].as_array().unwrap()),
        ["m1@example.org", "m3@example.org"]
    );
    assert!(m3["last_changed"].as_str() >= m1["last_changed"].as_str());

    // Nothing after the last change: a cursor one hour later finds nothing.
    let later = chrono::DateTime::parse_from_rfc3339(&since).unwrap() + chrono::Duration::hours(1);
    let none = sim
        .get_json(&format!(
            "/lists/{list}/members?since_last_changed={}",
            urlencode(&later.to_rfc3339())
        ))
        .await;
    assert_eq!(none["total_items"], 0);

    // Paging the subscribed ones: disjoint pages that add up.
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let page = sim
            .get_json(&format!(
                "/lists/{list}/members?status=subscribed&count=2&offset={offset}"
            ))
            .await;
        assert_eq!(page["total_items"], 3);
        assert_eq!(page["list_id"], list.as_str());
        seen.extend(emails(page["members"].as_array().unwrap()));
    }
    seen.sort();
    assert_eq!(seen, ["m0@example.org", "m2@example.org", "m4@example.org"]);

    let slim = sim
        .get_json(&format!(
            "/lists/{list}/members?fields=members.email_address,total_items&count=1"
        ))
        .await;
    assert_eq!(slim["members"][0].as_object().unwrap().len(), 1);
    assert!(slim.get("list_id").is_none());
    let default_page = sim.get_json(&format!("/lists/{list}/members")).await;
    assert_eq!(default_page["members"].as_array().unwrap().len(), 5);
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn tags_endpoint_adds_and_removes_tags() {
    let (sim, list) = TestSim::start_with_list().await;
    let before = sim.subscribe(&list, "t@example.org").await;
    sim.advance_clock(2).await;
    let path = format!("{}/tags", member_path(&list, "t@example.org"));
    let set_tags = |tags: Value| {
        let (sim, path) = (&sim, &path);
        async move {
            sim.send_json(Method::POST, path, &json!({"tags": tags}))
                .await
        }
    };
    let added = set_tags(
        json!([{"name": "board", "status": "active"}, {"name": "youth", "status": "active"}]),
    )
    .await;
    assert_eq!(added.status(), 204);
    let removed = set_tags(json!([{"name": "youth", "status": "inactive"}])).await;
    assert_eq!(removed.status(), 204);
    let member: Value = sim.member_json(&list, "t@example.org").await;
    assert_eq!(
        member["tags"],
        json!([{"id": member["tags"][0]["id"], "name": "board"}])
    );
    assert_eq!(member["tags_count"], 1);
    assert!(member["last_changed"].as_str() > before["last_changed"].as_str());
    let bad = set_tags(json!([{"name": "x", "status": "on"}])).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn webhook_registration_sends_a_validation_get_and_refuses_a_failing_url() {
    let (sim, list) = TestSim::start_with_list().await;
    let hook = WebhookReceiver::start().await;
    let response = sim
        .register_webhook(
            &list,
            &hook.url(),
            all_events(),
            json!({"user": true, "admin": true, "api": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["sources"]["api"], false);
    let validation = hook.received();
    assert_eq!(validation.len(), 1);
    assert_eq!(validation[0].method, Method::GET);
    assert_eq!(validation[0].user_agent, "MailChimp.com WebHook Validator");

    let id = created["id"].as_str().unwrap();
    let listed = sim.get_json(&format!("/lists/{list}/webhooks")).await;
    assert_eq!(listed["total_items"], 1);
    assert_eq!(
        sim.get_json(&format!("/lists/{list}/webhooks/{id}")).await["url"],
        hook.url()
    );

    let broken = WebhookReceiver::start_failing(0, 404).await;
    let (status, body) = problem(
        sim.register_webhook(&list, &broken.url(), all_events(), all_sources())
            .await,
    )
    .await;
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (400, Some("url"))
    );
    let unreachable = sim
        .register_webhook(
            &list,
            "http://127.0.0.1:1/hook",
            all_events(),
            all_sources(),
        )
        .await;
    assert_eq!(unreachable.status(), 400);

    let deleted = sim
        .send(Method::DELETE, &format!("/lists/{list}/webhooks/{id}"))
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        sim.get_json(&format!("/lists/{list}/webhooks")).await["total_items"],
        0
    );
}

#[tokio::test]
async fn webhooks_honour_events_and_sources() {
    let (sim, list) = TestSim::start_with_list().await;
    // `quiet` ignores API-made changes and unsubscribes; `loud` wants everything (the control).
    let quiet = WebhookReceiver::start().await;
    let loud = WebhookReceiver::start().await;
    let mut events = all_events();
    events["unsubscribe"] = json!(false);
    sim.register_webhook(
        &list,
        &quiet.url(),
        events,
        json!({"user": true, "admin": true, "api": false}),
    )
    .await;
    sim.register_webhook(&list, &loud.url(), all_events(), all_sources())
        .await;

    sim.put_member(&list, "s@example.org", json!({"email_address": "s@example.org", "status_if_new": "subscribed", "merge_fields": {"FNAME": "Sam"}})).await;
    sim.member_action(&list, "s@example.org", "unsubscribe?reason=abuse")
        .await;
    sim.member_action(&list, "s@example.org", "clean").await;

    sim.wait_for_deliveries("3 deliveries to loud, 1 to quiet", |a| {
        let delivered = |url: &str| {
            a.iter()
                .filter(|d| d["url"] == url && d["outcome"] == "delivered")
                .count()
        };
        delivered(&loud.url()) == 3 && delivered(&quiet.url()) == 1
    })
    .await;
    let loud_types: Vec<String> = loud
        .posts()
        .iter()
        .map(|r| r.field("type").unwrap().to_owned())
        .collect();
    assert!(
        loud_types.contains(&"subscribe".to_owned())
            && loud_types.contains(&"unsubscribe".to_owned())
    );
    let quiet_posts = quiet.posts();
    assert_eq!(
        quiet_posts.len(),
        1,
        "API subscribe and unsubscribe must not reach quiet"
    );
    let cleaned = &quiet_posts[0];
    assert_eq!(cleaned.field("type"), Some("cleaned"));
    assert_eq!(cleaned.field("data[reason]"), Some("hard"));
    assert_eq!(cleaned.field("data[email]"), Some("s@example.org"));

    let subscribe = loud.post_where("type", "subscribe");
    assert_eq!(subscribe.field("data[merges][FNAME]"), Some("Sam"));
    assert_eq!(
        subscribe.field("data[merges][EMAIL]"),
        Some("s@example.org")
    );
    assert_eq!(
        subscribe.field("data[id]"),
        Some(hash("s@example.org").as_str())
    );
    let unsubscribe = loud.post_where("type", "unsubscribe");
    assert_eq!(unsubscribe.field("data[reason]"), Some("abuse"));
    assert_eq!(unsubscribe.field("data[action]"), Some("unsub"));
}

#[tokio::test]
async fn failed_webhook_delivery_is_retried() {
    let flaky = WebhookReceiver::start_failing(2, 200).await;
    let (sim, list) = list_hooked_to(&flaky, all_sources()).await;
    sim.subscribe(&list, "r@example.org").await;
    let attempts = sim
        .wait_for_deliveries("a delivery after two failures", |a| {
            a.iter().any(|d| d["outcome"] == "delivered")
        })
        .await;
    let outcomes: Vec<(u64, &str)> = attempts
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [(1, "failed"), (2, "failed"), (3, "delivered")]);
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(flaky.posts().len(), 3);
    assert!(
        flaky
            .posts()
            .iter()
            .all(|p| p.field("data[email]") == Some("r@example.org"))
    );
}

/// Creates a regular campaign for `recipients` with `settings`; the simulator's answer.
async fn create_campaign(sim: &TestSim, recipients: Value, settings: &Value) -> Value {
    let body = json!({"type": "regular", "recipients": recipients, "settings": settings});
    sim.send_json(Method::POST, "/campaigns", &body)
        .await
        .json()
        .await
        .unwrap()
}

async fn put_content(sim: &TestSim, id: &str, content: Value) -> reqwest::Response {
    sim.send_json(Method::PUT, &format!("/campaigns/{id}/content"), &content)
        .await
}

/// `POST /campaigns/{id}/actions/{action}` without a body.
async fn campaign_action(sim: &TestSim, id: &str, action: &str) -> reqwest::Response {
    sim.send(Method::POST, &format!("/campaigns/{id}/actions/{action}"))
        .await
}

#[tokio::test]
async fn campaigns_send_once_to_subscribed_members_within_the_segment() {
    let hook = WebhookReceiver::start().await;
    let (sim, list) =
        list_hooked_to(&hook, json!({"user": false, "admin": false, "api": false})).await;
    sim.batch(
        &list,
        json!({"members": [
            {"email_address": "a@example.org", "status": "subscribed", "tags": ["board"]},
            {"email_address": "b@example.org", "status": "subscribed"},
            {"email_address": "c@example.org", "status": "unsubscribed", "tags": ["board"]},
            {"email_address": "d@example.org", "status": "pending", "tags": ["board"]},
        ]}),
    )
    .await;

    let created = create_campaign(
        &sim,
        json!({"list_id": list}),
        &json!({"subject_line": "Hello", "from_name": "Club", "title": "c1"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "save");
    assert_eq!(created["recipients"]["recipient_count"], 2);

    let checklist = sim
        .get_json(&format!("/campaigns/{id}/send-checklist"))
        .await;
    assert_eq!(checklist["is_ready"], false);
    let failing: Vec<&str> = checklist["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "error")
        .map(|i| i["heading"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["Reply-to address", "Content"]);
    let early = campaign_action(&sim, &id, "send").await;
    assert_eq!(early.status(), 400);

    let content = put_content(&sim, &id, json!({"html": "<p>Hi <b>all</b></p>"})).await;
    assert_eq!(content.status(), 200);
    let content = sim.get_json(&format!("/campaigns/{id}/content")).await;
    assert_eq!(
        (content["html"].as_str(), content["plain_text"].as_str()),
        (Some("<p>Hi <b>all</b></p>"), Some("Hi all"))
    );
    // This one still lacks reply_to; a complete second campaign is the one sent.
    let settings = json!({"subject_line": "Hello", "from_name": "Club", "reply_to": "club@example.org", "title": "c2"});
    let complete = create_campaign(&sim, json!({"list_id": list}), &settings).await;
    let full = complete["id"].as_str().unwrap().to_owned();
    put_content(
        &sim,
        &full,
        json!({"html": "<p>News</p>", "plain_text": "News"}),
    )
    .await;
    assert_eq!(
        sim.get_json(&format!("/campaigns/{full}/send-checklist"))
            .await["is_ready"],
        true
    );

    let test = sim
        .send_json(
            Method::POST,
            &format!("/campaigns/{full}/actions/test"),
            &json!({"test_emails": ["admin@example.org"], "send_type": "html"}),
        )
        .await;
    assert_eq!(test.status(), 204);
    let tests = sim.sim_json(Method::GET, "/test-sends").await;
    assert_eq!(
        tests,
        json!([{"campaign_id": full, "email": "admin@example.org", "send_type": "html"}])
    );
    assert_eq!(
        sim.campaign_deliveries().await,
        Vec::<Value>::new(),
        "a test send is not a delivery"
    );

    let sent = campaign_action(&sim, &full, "send").await;
    assert_eq!(sent.status(), 204);
    let twice = campaign_action(&sim, &full, "send").await;
    assert_eq!(problem(twice).await.0, 400);
    let read = sim.get_json(&format!("/campaigns/{full}")).await;
    assert_eq!(
        (read["status"].as_str(), read["emails_sent"].as_u64()),
        (Some("sent"), Some(2))
    );
    let mut delivered = sim.campaign_deliveries().await;
    delivered.sort_by_key(|d| d["email"].as_str().unwrap().to_owned());
    assert_eq!(
        delivered,
        [
            json!({"campaign_id": full, "email": "a@example.org"}),
            json!({"campaign_id": full, "email": "b@example.org"})
        ]
    );

    // A tag segment: only subscribed members with the tag.
    let tag_id = sim
        .get_json(&format!("/lists/{list}/tag-search?name=board"))
        .await["tags"][0]["id"]
        .clone();
    let segment = json!({"match": "all", "conditions": [{"condition_type": "StaticSegment", "field": "static_segment", "op": "static_is", "value": tag_id}]});
    let segmented = create_campaign(
        &sim,
        json!({"list_id": list, "segment_opts": segment}),
        &settings,
    )
    .await;
    let seg = segmented["id"].as_str().unwrap().to_owned();
    assert_eq!(segmented["recipients"]["recipient_count"], 1);
    put_content(&sim, &seg, json!({"html": "<p>Board</p>"})).await;
    assert_eq!(campaign_action(&sim, &seg, "send").await.status(), 204);
    let seg_deliveries: Vec<Value> = sim
        .campaign_deliveries()
        .await
        .into_iter()
        .filter(|d| d["campaign_id"] == seg.as_str())
        .collect();
    assert_eq!(
        seg_deliveries,
        [json!({"campaign_id": seg, "email": "a@example.org"})]
    );

    // The campaign event reaches a webhook even with every source off.
    sim.wait_for_deliveries("campaign events", |a| {
        a.iter()
            .filter(|d| d["type"] == "campaign" && d["outcome"] == "delivered")
            .count()
            == 2
    })
    .await;
    let event = hook.post_where("data[id]", &full);
    assert_eq!(
        (
            event.field("type"),
            event.field("data[subject]"),
            event.field("data[status]")
        ),
        (Some("campaign"), Some("Hello"), Some("sent"))
    );
}

#[tokio::test]
async fn campaigns_schedule_only_on_a_quarter_hour_and_can_be_unscheduled() {
    let (sim, list) = TestSim::start_with_list().await;
    let settings =
        json!({"subject_line": "Later", "from_name": "Club", "reply_to": "club@example.org"});
    let created = create_campaign(&sim, json!({"list_id": list}), &settings).await;
    let id = created["id"].as_str().unwrap();
    put_content(&sim, id, json!({"html": "<p>x</p>"})).await;
    let schedule = |time: String| {
        sim.api(Method::POST, &format!("/campaigns/{id}/actions/schedule"))
            .json(&json!({"schedule_time": time}))
            .send()
    };

    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive();
    let odd = schedule(format!("{tomorrow}T10:07:00+00:00"))
        .await
        .unwrap();
    assert_eq!(problem(odd).await.0, 400);
    let quarter = schedule(format!("{tomorrow}T10:15:00+00:00"))
        .await
        .unwrap();
    assert_eq!(quarter.status(), 204);
    let read = sim.get_json(&format!("/campaigns/{id}")).await;
    assert_eq!(read["status"], "schedule");
    assert_eq!(read["send_time"], format!("{tomorrow}T10:15:00+00:00"));

    let unscheduled = campaign_action(&sim, id, "unschedule").await;
    assert_eq!(unscheduled.status(), 204);
    assert_eq!(
        sim.get_json(&format!("/campaigns/{id}")).await["status"],
        "save"
    );
    let again = campaign_action(&sim, id, "unschedule").await;
    assert_eq!(again.status(), 400);
}

#[tokio::test]
async fn more_than_ten_requests_in_flight_per_key_get_429() {
    let sim = TestSim::start().await;
    assert_eq!(sim.handle.state().config().concurrency_limit, 10);
    sim.set_faults(json!({"latency_ms": 400})).await;
    let url = format!("{}/ping", sim.handle.mailchimp_url());
    let requests = (0..13).map(|i| {
        let key = if i == 12 { "other-key" } else { "busy-key" };
        sim.client.get(&url).basic_auth("u", Some(key)).send()
    });
    let results = futures::future::join_all(requests).await;
    let statuses: Vec<u16> = results
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let busy = &statuses[..12];
    assert_eq!(
        busy.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        busy.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(statuses[12], 200, "another key has its own limit");

    // Slots are given back when responses are done.
    sim.set_faults(json!({})).await;
    let after = (0..11).map(|_| {
        sim.client
            .get(&url)
            .basic_auth("u", Some("busy-key"))
            .send()
    });
    for response in futures::future::join_all(after).await {
        assert_eq!(response.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn too_many_requests_problem_has_mailchimp_shape() {
    let sim = TestSim::start().await;
    sim.set_faults(json!({"rate_429": 1.0})).await;
    let limited = sim.send(Method::GET, "/ping").await;
    problem_titled(limited, 429, "Too Many Requests").await;
}

#[tokio::test]
async fn faulted_writes_change_nothing_and_dropped_connections_get_no_response() {
    let (sim, list) = TestSim::start_with_list().await;
    let set = sim.set_faults(json!({"rate_500": 1.0})).await;
    assert_eq!(set.status(), 200);
    let failed = sim
        .put_member(
            &list,
            "f@example.org",
            json!({"email_address": "f@example.org", "status_if_new": "subscribed"}),
        )
        .await;
    assert_eq!(problem(failed).await.0, 500);

    sim.set_faults(json!({"drop_connection_rate": 1.0})).await;
    let dropped = sim
        .api(Method::POST, &format!("/lists/{list}"))
        .json(&json!({"members": members_of(3)}))
        .send()
        .await
        .expect_err("a dropped connection gives the client no response");
    assert!(!dropped.is_timeout(), "{dropped:?}");
    assert!(
        dropped.status().is_none(),
        "no HTTP response at all: {dropped:?}"
    );

    sim.set_faults(json!({})).await;
    assert_eq!(sim.member(&list, "f@example.org").await.status(), 404);
    assert!(
        sim.sim_members(&list).await.is_empty(),
        "faulted writes must not apply"
    );

    let stats = sim.sim_json(Method::GET, "/stats").await;
    assert_eq!(stats["faults"], json!({"429": 0, "500": 1, "dropped": 1}));
    let routes = &stats["by_route"];
    assert_eq!(routes["POST /3.0/lists"], 1);
    assert_eq!(
        routes["PUT /3.0/lists/{list_id}/members/{subscriber_hash}"],
        1
    );
    assert_eq!(routes["POST /3.0/lists/{list_id}"], 1);
    assert_eq!(
        routes["GET /3.0/lists/{list_id}/members/{subscriber_hash}"],
        1
    );
    assert_eq!(stats["total"], 4);
    let bad = sim.set_faults(json!({"rate_500": 2})).await;
    assert_eq!(bad.status(), 400);
    sim.sim_json(Method::POST, "/stats/reset").await;
    assert_eq!(sim.sim_json(Method::GET, "/stats").await["total"], 0);
}

#[tokio::test]
async fn reset_clears_state_stats_and_faults() {
    let (sim, list) = TestSim::start_with_list().await;
    sim.subscribe(&list, "x@example.org").await;
    sim.set_faults(json!({"latency_ms": 5})).await;
    sim.sim_json(Method::POST, "/reset").await;
    assert_eq!(
        sim.send(Method::GET, &format!("/lists/{list}"))
            .await
            .status(),
        404
    );
    assert_eq!(sim.sim_json(Method::GET, "/faults").await["latency_ms"], 0);
    let stats = sim.sim_json(Method::GET, "/stats").await;
    assert_eq!(
        stats["total"], 1,
        "only the request after the reset: {stats}"
    );
}

#[tokio::test]
async fn router_is_testable_without_a_socket() {
    use tower::ServiceExt;
    let app =
        mailbridge::simulator::router(mailbridge::simulator::SimState::new(Default::default()));
    let request = axum::http::Request::get("/3.0/ping")
        .header("authorization", "Bearer token")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let stats = axum::http::Request::get("/_sim/stats")
        .body(axum::body::Body::empty())
        .unwrap();
    let body = axum::body::to_bytes(app.oneshot(stats).await.unwrap().into_body(), usize::MAX)
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats["by_route"]["GET /3.0/ping"], 1);
}

#[tokio::test]
async fn put_ignores_tags_as_mailchimp_does() {
    let (sim, list) = TestSim::start_with_list().await;
    let response = sim
        .put_member(
            &list,
            "t@example.org",
            json!({"email_address": "t@example.org", "status_if_new": "subscribed", "tags": ["x"]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let member: Value = response.json().await.unwrap();
    assert_eq!(member["tags_count"], 0);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let sim = TestSim::start().await;
    let url = format!("{}/ping", sim.handle.mailchimp_url());
    let client = sim::client();
    assert_eq!(
        client
            .get(&url)
            .basic_auth("u", Some("k"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sim.handle.shutdown().await;
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::Client::new().get(&url).send(),
    )
    .await
    .unwrap();
    assert!(after.is_err());
}

/// The entries of a gzipped tar of JSON files: every result of every file.
fn unpack(gzipped: &[u8]) -> Vec<Value> {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        let items: Vec<Value> = serde_json::from_str(&text).unwrap();
        out.extend(items);
    }
    out
}

#[tokio::test]
async fn batches_run_through_the_member_handlers_step_by_step_and_leave_a_results_archive() {
    let sim = TestSim::start_with(mailbridge::simulator::SimConfig {
        batch_operations_per_read: 2,
        ..Default::default()
    })
    .await;
    let list = sim.create_list().await;
    sim.subscribe(&list, "old@example.org").await;
    let put = |email: &str, at: &str, id: &str| {
        json!({
            "method": "PUT",
            "path": format!("/lists/{list}/members/{}", hash(at)),
            "body": json!({"email_address": email, "status_if_new": "pending"}).to_string(),
            "operation_id": id,
        })
    };
    let ops = json!({"operations": [
        put("new@example.org", "old@example.org", "move"),
        put("fresh@example.org", "fresh@example.org", "create"),
        put("not-an-address", "not-an-address", "bad"),
    ]});
    let r = sim.send_json(Method::POST, "/batches", &ops).await;
    assert_eq!(r.status(), 200);
    let batch: Value = r.json().await.unwrap();
    assert_eq!(batch["status"], "pending");
    assert_eq!(batch["total_operations"], 3);
    assert_eq!(batch["finished_operations"], 0);
    assert_eq!(batch["response_body_url"], "");
    // Nothing ran yet: the batch runs as its status is read.
    assert!(sim.member(&list, "fresh@example.org").await.status() == 404);
    let id = batch["id"].as_str().unwrap().to_owned();
    let first = sim.get_json(&format!("/batches/{id}")).await;
    assert_eq!(first["status"], "started");
    assert_eq!(first["finished_operations"], 2);
    let last = sim.get_json(&format!("/batches/{id}")).await;
    assert_eq!(last["status"], "finished");
    assert_eq!(last["finished_operations"], 3);
    assert_eq!(last["errored_operations"], 1);
    assert!(!last["completed_at"].as_str().unwrap().is_empty());
    // The operations did what the single calls do.
    assert_eq!(
        sim.member_json(&list, "new@example.org").await["status"],
        "subscribed"
    );
    assert_eq!(
        sim.member_json(&list, "fresh@example.org").await["status"],
        "pending"
    );
    // The archive: a gzipped tar of JSON arrays, `response` a JSON string; not an API call.
    let url = last["response_body_url"].as_str().unwrap();
    let calls_before = sim.sim_json(Method::GET, "/stats").await["total"].clone();
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        sim.sim_json(Method::GET, "/stats").await["total"],
        calls_before
    );
    let results = unpack(&bytes);
    assert_eq!(results.len(), 3);
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r["operation_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("move")["status_code"], 200);
    let moved: Value = serde_json::from_str(by_id("move")["response"].as_str().unwrap()).unwrap();
    assert_eq!(moved["email_address"], "new@example.org");
    assert_eq!(by_id("bad")["status_code"], 400);
    let problem: Value = serde_json::from_str(by_id("bad")["response"].as_str().unwrap()).unwrap();
    assert_eq!(problem["title"], "Invalid Resource");
    assert_eq!(problem["errors"][0]["field"], "email_address");
}

#[tokio::test]
async fn a_batch_is_refused_whole_when_an_operation_is_malformed_and_unknown_batches_are_404() {
    let sim = TestSim::start().await;
    let bad_method = json!({"operations": [{"method": "TRACE", "path": "/ping"}]});
    let (status, p) = problem(sim.send_json(Method::POST, "/batches", &bad_method).await).await;
    assert_eq!(status, 400);
    assert_eq!(p["errors"][0]["field"], "operations.0.method");
    let object_body =
        json!({"operations": [{"method": "POST", "path": "/lists", "body": {"a": 1}}]});
    let (status, p) = problem(sim.send_json(Method::POST, "/batches", &object_body).await).await;
    assert_eq!(status, 400);
    assert_eq!(p["errors"][0]["field"], "operations.0.body");
    let (status, _) = problem(sim.send(Method::GET, "/batches/nosuchbatch").await).await;
    assert_eq!(status, 404);
    // A batch cannot start batches.
    let nested = json!({"operations": [{"method": "POST", "path": "/batches", "body": "{\"operations\":[]}", "operation_id": "n"}]});
    let batch: Value = sim
        .send_json(Method::POST, "/batches", &nested)
        .await
        .json()
        .await
        .unwrap();
    let done = sim
        .get_json(&format!("/batches/{}", batch["id"].as_str().unwrap()))
        .await;
    assert_eq!(done["status"], "finished");
    assert_eq!(done["errored_operations"], 1);
}
