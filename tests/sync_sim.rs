//! The real sync end to end against the simulator (issue 4): state in SQLite or PostgreSQL,
//! members in SQLite, PostgreSQL or MariaDB. Write calls are read from `/_sim/stats`; the
//! audience the provider ends up with is read from `/_sim/lists/{id}/members`.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mailbridge::config::DbUrl;
use mailbridge::providers::mailchimp::MailchimpClient;
use mailbridge::store::locks::LockHolder;
use mailbridge::sync::SyncError;
use mailbridge::sync::apply::SyncOptions;
use mailbridge::sync::report::RunReport;
use reqwest::Method;
use serde_json::{Value, json};
use support::app::SimApp;
use support::sim::{self};
use support::{Kind, db};

type Env = SimApp;

fn member_sql(i: u64) -> String {
    db::member_row(i, db::cycling_membership(i), true)
}

impl Env {
    /// `n` members with consent, SQLite state and members, the simulator without the proxy.
    async fn new(n: u64) -> Env {
        Env::build(n, Kind::Sqlite, Kind::Sqlite, false)
            .await
            .unwrap()
    }

    /// `None` (the test skips) when a database server is unreachable outside CI.
    async fn build(n: u64, state: Kind, members: Kind, proxy: bool) -> Option<Env> {
        SimApp::start(state, members, proxy, (1..=n).map(member_sql), |c| c).await
    }

    fn client(&self) -> MailchimpClient {
        self.app.fast_client()
    }

    async fn sync_with(&self, options: SyncOptions) -> Result<RunReport, SyncError> {
        self.app.sync_with(&self.client(), options).await
    }

    async fn sync(&self) -> RunReport {
        let r = self.sync_with(SyncOptions::default()).await.unwrap();
        assert_eq!(r.failed, 0, "{:#?}", r.errors);
        r
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.members)
            .await
            .unwrap();
    }

    async fn text(&self, sql: &str) -> String {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.members)
            .await
            .unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.members)
            .await
            .unwrap()
    }

    /// The member `id`'s `email_status` in the member DB.
    async fn email_status(&self, id: u64) -> String {
        self.text(&format!("SELECT email_status FROM members WHERE id = {id}"))
            .await
    }

    /// Another sync with nothing changed since the last makes no write call.
    async fn assert_resync_writes_nothing(&self) {
        self.reset_stats().await;
        self.sync().await;
        assert_eq!(self.writes().await, 0);
    }

    async fn reset_stats(&self) {
        self.sim.reset_stats().await;
    }

    async fn stats(&self) -> BTreeMap<String, u64> {
        self.sim.stats_by_route().await
    }

    async fn writes(&self) -> u64 {
        self.sim.write_calls().await
    }

    async fn batch_calls(&self) -> u64 {
        self.stats()
            .await
            .get("POST /3.0/lists/{list_id}")
            .copied()
            .unwrap_or(0)
    }

    /// The provider's members: address → whole member JSON.
    async fn remote(&self) -> BTreeMap<String, Value> {
        self.sim.remote(&self.list).await
    }

    async fn remote_status(&self, email: &str) -> String {
        self.remote().await[email]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The addresses the provider mails (subscribed or pending).
    async fn live(&self) -> BTreeSet<String> {
        self.sim.live(&self.list).await
    }

    /// The addresses the member DB wants in the audience.
    async fn expected(&self) -> BTreeSet<String> {
        db::expected_audience(&self.members).await
    }
}

/// Runs the binary without blocking the runtime the simulator is served from.
async fn run_cli(env: &Env, args: &[&str]) -> std::process::Output {
    db::run_binary(&env.config_path, args).await
}

/// Runs the binary, which must exit 0; its stdout as JSON.
async fn run_cli_json(env: &Env, args: &[&str]) -> Value {
    db::run_binary_json(&env.config_path, args).await
}

/// Runs the binary, which must exit 1 saying `message`.
async fn run_cli_fails(env: &Env, args: &[&str], message: &str) {
    let out = run_cli(env, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
}

fn tags(m: &Value) -> BTreeSet<String> {
    m["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Initial sync: everyone created with status subscribed, the member key in MBRKEY, merge fields
/// created first; then a resync with nothing changed makes no write call. Runs through the
/// spec-proxy when `MAILBRIDGE_SPEC_PROXY=1` (a 422 from it fails a batch and this test).
#[tokio::test]
async fn initial_sync_then_no_change_resync_makes_no_write_call() {
    let env = Env::build(1200, Kind::Sqlite, Kind::Sqlite, true)
        .await
        .unwrap();
    let r = env.sync().await;
    assert_eq!((r.created, r.updated, r.archived), (1200, 0, 0));
    assert_eq!(env.batch_calls().await, 3, "1200 members = 3 batch calls");
    let remote = env.remote().await;
    assert_eq!(remote.len(), 1200);
    let m7 = &remote["m7@example.org"];
    assert_eq!(m7["status"], "subscribed");
    assert_eq!(m7["merge_fields"]["MBRKEY"], "7");
    assert_eq!(m7["merge_fields"]["FNAME"], "F7");
    assert_eq!(m7["merge_fields"]["MTYPE"], "family");
    assert_eq!(tags(m7), BTreeSet::from(["family".to_owned()]));
    assert!(r.api_calls.write >= 3 + 2, "{:?}", r.api_calls);

    env.reset_stats().await;
    let r = env.sync().await;
    assert_eq!(r.unchanged, 1200);
    assert_eq!(env.writes().await, 0, "{:?}", env.stats().await);
    assert_eq!(r.api_calls.write, 0);
    let runs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, report FROM sync_runs ORDER BY started_at")
            .fetch_all(env.app.store.pool())
            .await
            .unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|(s, r)| s == "succeeded" && r.is_some()));
}

/// A run with more planned changes than are kept in memory (4,096; the rest wait in a temporary
/// file) applies every one of them, of every kind, in one pass: 6,000 creates, then a run of
/// updates, address changes and archives together.
#[tokio::test]
async fn a_plan_larger_than_memory_holds_is_applied_whole() {
    let env = Env::new(6000).await;
    let r = env.sync().await;
    let expected = env.expected().await;
    assert!(expected.len() > 4096, "{} planned creates", expected.len());
    assert_eq!(r.created as usize, expected.len());
    assert_eq!(env.live().await, expected);

    env.exec("UPDATE members SET first_name = 'Again'").await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id % 13 = 0")
        .await;
    env.exec("UPDATE members SET email = 'moved' || id || '@example.org' WHERE id % 17 = 0 AND id % 13 <> 0")
        .await;
    let archived_before: BTreeSet<String> = expected
        .iter()
        .filter(|e| {
            let id: u64 = e[1..e.find('@').unwrap()].parse().unwrap();
            id.is_multiple_of(13)
        })
        .cloned()
        .collect();
    let r = env.sync().await;
    let expected = env.expected().await;
    assert_eq!(r.archived as usize, archived_before.len());
    assert_eq!(
        (r.updated + r.unchanged) as usize,
        expected.len(),
        "every member still wanted is updated: {r:?}"
    );
    assert!(r.updated as usize + r.archived as usize > 4096, "{r:?}");
    assert_eq!(env.live().await, expected);
    let remote = env.remote().await;
    for email in &archived_before {
        assert_eq!(remote[email]["status"], "archived", "{email}");
    }
    let moved = remote
        .iter()
        .filter(|(e, _)| e.starts_with("moved"))
        .inspect(|(_, m)| assert_eq!(m["merge_fields"]["FNAME"], "Again"))
        .count();
    assert!(moved > 0);
    assert_eq!(
        remote
            .values()
            .filter(|m| m["status"] == "subscribed")
            .count(),
        expected.len(),
        "no orphan left subscribed at an old address"
    );
    assert!(
        expected
            .iter()
            .all(|e| remote[e]["merge_fields"]["FNAME"] == "Again")
    );
    env.assert_resync_writes_nothing().await;
}

#[tokio::test]
async fn one_percent_changed_costs_one_batch_call_per_500() {
    let env = Env::new(2000).await;
    env.sync().await;
    env.reset_stats().await;
    env.exec("UPDATE members SET first_name = 'Changed' WHERE id % 100 = 0")
        .await;
    let r = env.sync().await;
    assert_eq!(r.updated, 20);
    assert_eq!(env.batch_calls().await, 1);
    assert_eq!(env.writes().await, 1, "{:?}", env.stats().await);
    assert_eq!(
        env.remote().await["m100@example.org"]["merge_fields"]["FNAME"],
        "Changed"
    );
}

#[tokio::test]
async fn unsubscribe_at_provider_is_written_back_and_never_resubscribed() {
    let env = Env::new(30).await;
    env.sync().await;
    env.provider_action("m3@example.org", "unsubscribe").await;
    env.provider_action("m4@example.org", "unsubscribe?reason=abuse")
        .await;
    // The club edits the member without a new consent: still no push.
    env.exec("UPDATE members SET first_name = 'Edited' WHERE id = 3")
        .await;
    let r = env.sync().await;
    assert_eq!(r.unsubscribes_pulled, 2);
    assert_eq!(env.email_status(3).await, "unsubscribed");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM members WHERE id = 3 AND newsletter = FALSE")
            .await,
        1
    );
    assert_eq!(env.email_status(4).await, "complained");
    let suppressed: Vec<(String,)> = sqlx::query_as("SELECT email FROM suppressions")
        .fetch_all(env.app.store.pool())
        .await
        .unwrap();
    assert_eq!(suppressed, vec![("m4@example.org".to_owned(),)]);
    assert_eq!(env.remote_status("m3@example.org").await, "unsubscribed");
    // Later runs: pulled once only, never re-subscribed, no writes.
    env.reset_stats().await;
    let r = env.sync().await;
    assert_eq!(r.unsubscribes_pulled, 0);
    assert_eq!(env.writes().await, 0);
    assert_eq!(env.remote_status("m3@example.org").await, "unsubscribed");
    // Even a full run does not push it.
    env.sync_with(SyncOptions {
        full: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(env.remote_status("m3@example.org").await, "unsubscribed");
    assert_eq!(env.remote_status("m4@example.org").await, "unsubscribed");
}

#[tokio::test]
async fn cleaned_address_is_suppressed_and_written_back() {
    let env = Env::new(20).await;
    env.sync().await;
    env.provider_action("m5@example.org", "clean").await;
    let r = env.sync().await;
    assert_eq!(r.bounces_pulled, 1);
    assert_eq!(env.email_status(5).await, "cleaned");
    let row: (String, String) =
        sqlx::query_as("SELECT reason, source FROM suppressions WHERE email = 'm5@example.org'")
            .fetch_one(env.app.store.pool())
            .await
            .unwrap();
    assert_eq!(row.0, "hard_bounce");
    // The club "fixes" the status by hand: the suppression still holds.
    env.exec(
        "UPDATE members SET email_status = 'ok', first_name = 'Again', updated_at = '2030-01-01 00:00:00' WHERE id = 5",
    )
    .await;
    env.sync().await;
    assert_eq!(env.remote_status("m5@example.org").await, "cleaned");
}

#[tokio::test]
async fn email_change_updates_the_same_provider_member() {
    let env = Env::new(10).await;
    env.sync().await;
    env.exec("UPDATE members SET email = 'New.Address@Example.org' WHERE id = 6")
        .await;
    let r = env.sync().await;
    assert_eq!(r.updated, 1);
    let remote = env.remote().await;
    assert_eq!(remote.len(), 10, "no new member plus orphan");
    assert!(!remote.contains_key("m6@example.org"));
    let m = &remote["new.address@example.org"];
    assert_eq!(m["merge_fields"]["MBRKEY"], "6");
    assert_eq!(m["status"], "subscribed");
    env.assert_resync_writes_nothing().await;
}

/// Issue 26: 10,000 address changes (a tenth of them also losing an owned tag) go through
/// `/batches`: a few calls, not 10,000; the members whose new address Mailchimp refuses are
/// reported one by one.
#[tokio::test]
async fn ten_thousand_address_changes_cost_a_few_batch_calls_and_report_each_refusal() {
    let env = Env::new(10_000).await;
    env.sync().await;
    // Three new addresses were deleted for good at Mailchimp: it refuses them.
    for i in [7u64, 4242, 9999] {
        let email = format!("new{i}@example.org");
        env.sim.subscribe(&env.list, &email).await;
        let path = format!(
            "{}/actions/delete-permanent",
            sim::member_path(&env.list, &email)
        );
        let r = env.sim.send_json(Method::POST, &path, &json!({})).await;
        assert_eq!(r.status(), 204);
    }
    env.exec("UPDATE members SET email = 'new' || id || '@example.org'")
        .await;
    // Members 1, 11, 21, … become `family`: their old membership tag is removed.
    env.exec(
        "UPDATE members SET membership = 'family' WHERE id % 10 = 1 AND membership <> 'family'",
    )
    .await;
    env.reset_stats().await;
    let r = env.sync_with(SyncOptions::default()).await.unwrap();
    let stats = env.stats().await;
    let total: u64 = stats.values().sum();
    println!("10,000 address changes: {total} API calls {stats:?}");
    assert!(total <= 25, "{total} calls: {stats:?}");
    assert_eq!(
        stats.get("PUT /3.0/lists/{list_id}/members/{subscriber_hash}"),
        None
    );
    assert_eq!(
        stats.get("POST /3.0/lists/{list_id}/members/{subscriber_hash}/tags"),
        None
    );
    assert!(stats["POST /3.0/batches"] >= 1);
    assert_eq!(r.failed, 3, "{:#?}", r.errors);
    let mut failed: Vec<(String, String, String)> = r
        .errors
        .iter()
        .map(|e| {
            (
                e.member_key.clone().unwrap(),
                e.email.clone().unwrap(),
                e.code.to_string(),
            )
        })
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [4242u64, 7, 9999]
            .iter()
            .map(|i| (
                i.to_string(),
                format!("new{i}@example.org"),
                "forgotten_email".to_owned()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(r.updated, 10_000 - 3);
    let remote = env.remote().await;
    assert_eq!(remote["new5@example.org"]["merge_fields"]["MBRKEY"], "5");
    assert!(!remote.contains_key("m5@example.org"));
    assert!(
        remote.contains_key("m7@example.org"),
        "a refused change leaves the member"
    );
    assert!(tags(&remote["new11@example.org"]).contains("family"));
    assert_eq!(
        tags(&remote["new11@example.org"]).len(),
        1,
        "{:?}",
        remote["new11@example.org"]
    );
}

#[tokio::test]
async fn withdrawal_of_consent_archives() {
    let env = Env::new(20).await;
    env.sync().await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id = 7")
        .await;
    let r = env.sync().await;
    assert_eq!(r.archived, 1);
    assert_eq!(env.remote_status("m7@example.org").await, "archived");
    assert_eq!(env.live().await, env.expected().await);
}

#[tokio::test]
async fn reconsent_after_unsubscribe_is_pending_never_subscribed_and_stays_pending() {
    let env = Env::new(10).await;
    env.sync().await;
    env.provider_action("m8@example.org", "unsubscribe").await;
    env.sync().await;
    assert_eq!(env.email_status(8).await, "unsubscribed");
    // The member consents again in the club DB, after the unsubscribe.
    env.exec(
        "UPDATE members SET newsletter = TRUE, email_status = 'ok', updated_at = '2099-01-01 00:00:00' WHERE id = 8",
    )
    .await;
    let r = env.sync().await;
    assert_eq!(r.updated, 1, "{r:#?}");
    assert_eq!(env.remote_status("m8@example.org").await, "pending");
    // A later change to the member does not force `subscribed` over pending.
    env.exec(
        "UPDATE members SET first_name = 'Later', updated_at = '2099-02-01 00:00:00' WHERE id = 8",
    )
    .await;
    env.sync().await;
    let remote = env.remote().await;
    assert_eq!(remote["m8@example.org"]["status"], "pending");
    assert_eq!(remote["m8@example.org"]["merge_fields"]["FNAME"], "Later");
    // The person confirms; the next change does not push them back to pending.
    env.provider_action("m8@example.org", "confirm").await;
    assert_eq!(env.remote_status("m8@example.org").await, "subscribed");
    env.exec(
        "UPDATE members SET first_name = 'Confirmed', updated_at = '2099-03-01 00:00:00' WHERE id = 8",
    )
    .await;
    env.sync().await;
    let remote = env.remote().await;
    assert_eq!(remote["m8@example.org"]["status"], "subscribed");
    assert_eq!(
        remote["m8@example.org"]["merge_fields"]["FNAME"],
        "Confirmed"
    );
    env.assert_resync_writes_nothing().await;
}

#[tokio::test]
async fn pending_contact_at_the_provider_is_left_pending() {
    let env = Env::new(5).await;
    // Someone signed up through a double opt-in form before the club DB had them.
    let put = env
        .sim
        .put_member(
            &env.list,
            "m3@example.org",
            json!({"email_address": "m3@example.org", "status_if_new": "pending"}),
        )
        .await;
    assert_eq!(put.status(), 200);
    env.sync().await;
    assert_eq!(env.remote_status("m3@example.org").await, "pending");
    assert_eq!(env.remote_status("m2@example.org").await, "subscribed");
}

#[tokio::test]
async fn hand_added_contact_is_never_archived() {
    let env = Env::new(10).await;
    env.sim.subscribe(&env.list, "hand.added@example.net").await;
    env.sync().await;
    env.exec("DELETE FROM members WHERE id = 1").await;
    let r = env.sync().await;
    assert_eq!(r.archived, 1);
    env.sync_with(SyncOptions {
        full: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        env.remote_status("hand.added@example.net").await,
        "subscribed"
    );
}

#[tokio::test]
async fn only_owned_tags_are_added_or_removed() {
    let env = Env::new(5).await;
    env.sync().await;
    let tags_path = format!("{}/tags", sim::member_path(&env.list, "m3@example.org"));
    let response = env
        .sim
        .send_json(
            Method::POST,
            &tags_path,
            &json!({"tags": [{"name": "volunteer", "status": "active"}]}),
        )
        .await;
    assert_eq!(response.status(), 204);
    // m3 is `full`; becomes `family`.
    env.exec("UPDATE members SET membership = 'family' WHERE id = 3")
        .await;
    env.sync().await;
    let remote = env.remote().await;
    assert_eq!(
        tags(&remote["m3@example.org"]),
        BTreeSet::from(["family".to_owned(), "volunteer".to_owned()])
    );
}

#[tokio::test]
async fn emptied_member_table_is_refused_without_a_write() {
    let env = Env::new(50).await;
    env.sync().await;
    env.exec("DELETE FROM members").await;
    env.reset_stats().await;
    let err = env.sync_with(SyncOptions::default()).await.unwrap_err();
    assert!(matches!(err, SyncError::Guardrail(_)), "{err}");
    assert!(err.to_string().contains("no members"), "{err}");
    assert_eq!(env.writes().await, 0);
    assert_eq!(env.live().await.len(), 50);
    // The CLI says so and exits 1.
    run_cli_fails(&env, &["sync"], "refused without writing").await;
    assert_eq!(env.writes().await, 0);
}

#[tokio::test]
async fn mass_archive_guardrail_and_allow_mass_archive() {
    let env = Env::new(100).await;
    env.sync().await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id <= 20")
        .await;
    env.reset_stats().await;
    let err = env.sync_with(SyncOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("20 of 100"), "{err}");
    assert_eq!(env.writes().await, 0);
    let r = env
        .sync_with(SyncOptions {
            allow_mass_archive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.archived, 20);
    assert_eq!(env.live().await, env.expected().await);
}

#[tokio::test]
async fn faults_converge_to_exactly_the_expected_audience() {
    let env = Env::new(1500).await;
    env.sim
        .set_faults(json!({"rate_429": 0.1, "rate_500": 0.05, "drop_connection_rate": 0.02}))
        .await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id % 50 = 0")
        .await;
    let mut clean = false;
    for _ in 0..6 {
        match env.sync_with(SyncOptions::default()).await {
            Ok(r) if r.failed == 0 => {
                clean = true;
                break;
            }
            Ok(r) => eprintln!("run with {} failed members; again", r.failed),
            Err(e) => eprintln!("run failed ({e}); again"),
        }
    }
    assert!(clean, "no clean run in 6 attempts");
    env.exec("UPDATE members SET first_name = 'X' WHERE id % 7 = 0")
        .await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id % 11 = 0")
        .await;
    let mut clean = false;
    for _ in 0..6 {
        if matches!(env.sync_with(SyncOptions { allow_mass_archive: true, ..Default::default() }).await, Ok(r) if r.failed == 0)
        {
            clean = true;
            break;
        }
    }
    assert!(clean);
    env.sim
        .set_faults(json!({"rate_429": 0.0, "rate_500": 0.0, "drop_connection_rate": 0.0}))
        .await;
    let remote = env.remote().await;
    assert_eq!(env.live().await, env.expected().await);
    assert_eq!(remote["m14@example.org"]["merge_fields"]["FNAME"], "X");
    assert_eq!(remote["m22@example.org"]["status"], "archived");
}

#[tokio::test]
async fn a_second_concurrent_sync_is_refused() {
    let env = Env::new(5).await;
    let other = LockHolder::this_process("another-run");
    assert!(
        env.app
            .store
            .try_lock("sync:newsletter", &other, 3600)
            .await
            .unwrap()
            .is_none()
    );
    let err = env.sync_with(SyncOptions::default()).await.unwrap_err();
    assert!(matches!(err, SyncError::Locked { .. }), "{err}");
    run_cli_fails(
        &env,
        &["sync"],
        "another sync of audience `newsletter` is running",
    )
    .await;
    assert!(env.remote().await.is_empty());
    env.app
        .store
        .unlock("sync:newsletter", &other)
        .await
        .unwrap();
    env.sync().await;
    assert_eq!(env.live().await.len(), 5);
}

/// A real process kill mid-run, then a rerun: the killed run shows `running` only while its
/// lease lives, then `interrupted` with the step and the count it had committed; the rerun
/// resumes from there, and ends with exactly the expected audience, nothing twice, and a member
/// who unsubscribed at the provider in between not subscribed again.
#[tokio::test]
async fn killed_mid_run_is_interrupted_then_a_rerun_resumes_and_converges() {
    use mailbridge::sync::runs;
    let env = Env::new(4000).await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id % 13 = 0")
        .await;
    env.sim.set_faults(json!({"latency_ms": 150})).await;
    // A short lease (6 s) so that it runs out in the test, unrenewed, after the kill.
    let mut child = std::process::Command::new(db::binary())
        .args(["--config", env.config_path.to_str().unwrap(), "sync"])
        .env(mailbridge::store::locks::LEASE_TTL_ENV, "6000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The contacts the state DB has committed (none before the child has migrated it).
    let contacts = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM contacts")
            .fetch_one(env.app.store.pool())
            .await
            .unwrap_or(0)
    };
    // Killed once a first batch is committed (and while more are in flight).
    while contacts().await == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before its first commit"
        );
        assert!(std::time::Instant::now() < deadline, "no batch committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = contacts().await;
    let partial = env.remote().await.len();
    assert!(partial < 4000 - 4000 / 13, "killed too late: {partial}");
    env.sim.set_faults(json!({"latency_ms": 0})).await;
    let store = &env.app.store;
    let killed = runs::list(store, Some("newsletter"), 10).await.unwrap();
    assert_eq!(killed.len(), 1);
    let killed = killed.into_iter().next().unwrap();
    // Its lease still lives (its holder might be alive elsewhere): `running`, and a rerun now is
    // refused and pushes nothing.
    assert_eq!(killed.status, "running", "{killed:?}");
    let writes_before = env.writes().await;
    run_cli_fails(
        &env,
        &["sync"],
        "another sync of audience `newsletter` is running",
    )
    .await;
    assert_eq!(env.writes().await, writes_before);
    // Once the lease has run out, whoever looks sees it interrupted, where it stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let run = runs::get(store, &killed.run_id).await.unwrap().unwrap();
        if run.status != "running" {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stopped.status, "interrupted", "{stopped:?}");
    assert_eq!(stopped.step.as_deref(), Some("applying"));
    assert_eq!(stopped.committed, committed, "committed with the contacts");
    assert!(stopped.progress_at.is_some() && stopped.finished_at.is_some());
    // A member already at the provider unsubscribes there before the rerun.
    let (opted_out,): (String,) =
        sqlx::query_as("SELECT email FROM contacts ORDER BY member_key LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    env.provider_action(&opted_out, "unsubscribe").await;
    env.reset_stats().await;
    let report = run_cli_json(&env, &["sync", "--json"]).await;
    assert_eq!(report["resumed_from"], killed.run_id.as_str(), "{report}");
    let created = report["created"].as_i64().unwrap();
    assert_eq!(
        created + committed,
        i64::try_from(env.expected().await.len()).unwrap() + 1,
        "the rerun created only what the killed run had not committed (the +1: the member who unsubscribed is no longer expected)"
    );
    let expected = env.expected().await;
    assert!(!expected.contains(&opted_out));
    assert_eq!(env.live().await, expected);
    assert_eq!(env.remote_status(&opted_out).await, "unsubscribed");
    let remote = env.sim.sim_members(&env.list).await;
    assert_eq!(remote.len(), expected.len() + 1, "no duplicates, no extras");
    let all = runs::list(store, Some("newsletter"), 10).await.unwrap();
    let statuses: Vec<&str> = all.iter().rev().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["interrupted", "succeeded"]);
    assert_eq!(all[1].resumed_by.as_deref(), Some(all[0].run_id.as_str()));
    // And a third run changes nothing.
    env.assert_resync_writes_nothing().await;
    let _ = &env.dir;
}

async fn backend_round_trip(env: Env) {
    let r = env.sync().await;
    assert_eq!(r.created, 40);
    env.provider_action("m3@example.org", "unsubscribe").await;
    env.provider_action("m4@example.org", "clean").await;
    env.exec("UPDATE members SET email = 'moved@example.org' WHERE id = 5")
        .await;
    env.exec("UPDATE members SET newsletter = FALSE WHERE id = 6")
        .await;
    let r = env.sync().await;
    assert_eq!((r.unsubscribes_pulled, r.bounces_pulled), (1, 1));
    assert_eq!((r.updated, r.archived), (1, 1));
    assert_eq!(env.email_status(3).await, "unsubscribed");
    assert_eq!(env.email_status(4).await, "cleaned");
    assert_eq!(env.live().await, env.expected().await);
    // The runs as listed: both finished, with what each committed (the address change and the
    // archive in the second), whatever the audience filter.
    let runs = mailbridge::sync::runs::list(&env.app.store, Some("newsletter"), 10)
        .await
        .unwrap();
    let seen: Vec<(&str, i64, Option<&str>)> = runs
        .iter()
        .map(|r| (r.status.as_str(), r.committed, r.step.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("succeeded", 2, Some("archiving")),
            ("succeeded", 40, Some("applying"))
        ]
    );
    let all = mailbridge::sync::runs::list(&env.app.store, None, 10)
        .await
        .unwrap();
    assert_eq!(all, runs);
    env.assert_resync_writes_nothing().await;
}

#[tokio::test]
async fn postgres_state_and_postgres_members() {
    let Some(env) = Env::build(40, Kind::Postgres, Kind::Postgres, false).await else {
        return;
    };
    backend_round_trip(env).await;
}

#[tokio::test]
async fn sqlite_state_and_mariadb_members() {
    let Some(env) = Env::build(40, Kind::Sqlite, Kind::MariaDb, false).await else {
        return;
    };
    backend_round_trip(env).await;
}

#[tokio::test]
async fn merge_field_type_conflict_is_an_error_before_any_member_write() {
    let env = Env::new(5).await;
    let response = env
        .sim
        .send_json(
            Method::POST,
            &format!("/lists/{}/merge-fields", env.list),
            &json!({"tag": "MTYPE", "name": "Membership", "type": "number"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let err = env.sync_with(SyncOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("MTYPE") && text.contains("`text`") && text.contains("`number`"),
        "{text}"
    );
    assert!(env.remote().await.is_empty());
    assert_eq!(
        env.batch_calls().await,
        0,
        "no member write before the merge fields are right"
    );
    let _ = DbUrl::parse("sqlite://x.db", &env.dir);
}

/// The demo's sync steps run against the simulator and leave the member DB written back.
#[tokio::test]
async fn demo_sync_steps_pull_an_unsubscribe_and_a_bounce_back() {
    let env = Env::new(30).await;
    mailbridge::demo::sync_steps::demo_sync_steps(
        &env.config_path,
        &env.sim.handle.base_url(),
        &env.list,
    )
    .await
    .unwrap();
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT email_status FROM members WHERE email_status <> 'ok' ORDER BY email_status",
    )
    .fetch_all(&env.members)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        vec!["cleaned".to_owned(), "unsubscribed".to_owned()]
    );
}

/// The crash windows a kill can leave between a provider write and the state commit: the member
/// already renamed, or already archived, at the provider. The rerun must not fail forever.
#[tokio::test]
async fn provider_writes_not_yet_recorded_are_absorbed() {
    let env = Env::new(10).await;
    env.sync().await;
    // Renamed at the provider (as if the PUT happened and the run died before its commit).
    let put = env
        .sim
        .put_member(
            &env.list,
            "m2@example.org",
            json!({"email_address": "renamed@example.org", "status_if_new": "subscribed"}),
        )
        .await;
    assert_eq!(put.status(), 200);
    env.exec("UPDATE members SET email = 'renamed@example.org' WHERE id = 2")
        .await;
    // Archived at the provider (as if the DELETE happened and the run died).
    let del = env
        .sim
        .send(
            Method::DELETE,
            &sim::member_path(&env.list, "m3@example.org"),
        )
        .await;
    assert_eq!(del.status(), 204);
    env.exec("UPDATE members SET newsletter = FALSE WHERE id = 3")
        .await;
    let r = env.sync().await;
    assert_eq!((r.updated, r.archived, r.failed), (1, 1, 0), "{r:#?}");
    assert_eq!(env.live().await, env.expected().await);
    assert_eq!(env.remote().await.len(), 10);
}

/// `mailbridge pull`: provider → member DB only; nothing is pushed.
#[tokio::test]
async fn pull_command_writes_back_without_pushing() {
    let env = Env::new(10).await;
    env.sync().await;
    env.provider_action("m2@example.org", "unsubscribe").await;
    env.exec("UPDATE members SET first_name = 'Not pushed' WHERE id = 5")
        .await;
    env.reset_stats().await;
    let report = run_cli_json(&env, &["pull", "--json"]).await;
    assert_eq!(report["unsubscribes_pulled"], 1);
    assert_eq!(env.writes().await, 0);
    assert_eq!(env.email_status(2).await, "unsubscribed");
    assert_eq!(
        env.remote().await["m5@example.org"]["merge_fields"]["FNAME"],
        "F5"
    );
}

/// While another process (a running `serve`) holds the writeback lease, `pull` records what it
/// read but leaves the writing back to that process, and says so; two appliers would write each
/// event twice and count its failed attempts twice. Once the lease is free, the next pull
/// applies the recorded event.
#[tokio::test]
async fn pull_leaves_the_writeback_to_the_process_that_holds_the_lease() {
    let env = Env::new(5).await;
    env.sync().await;
    env.provider_action("m2@example.org", "unsubscribe").await;
    // A live holder on another host: never taken over as dead.
    let serve_name = "other-host:4242:writeback-serve";
    sqlx::query(
        "INSERT INTO locks (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(mailbridge::events::WRITEBACK_LOCK)
    .bind(serve_name)
    .bind("2026-01-01T00:00:00.000Z")
    .bind("2099-01-01T00:00:00.000Z")
    .execute(env.app.store.pool())
    .await
    .unwrap();
    let report = run_cli_json(&env, &["pull", "--json"]).await;
    assert_eq!(report["unsubscribes_pulled"], 0, "{report}");
    let warning = report["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("writeback lease") && warning.contains(serve_name),
        "{report}"
    );
    assert_eq!(
        env.email_status(2).await,
        "ok",
        "the member DB is the lease holder's to write"
    );
    let (unapplied,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM provider_events WHERE applied_at IS NULL AND email = 'm2@example.org'",
    )
    .fetch_one(env.app.store.pool())
    .await
    .unwrap();
    assert_eq!(unapplied, 1, "the event is recorded for the holder");

    sqlx::query("DELETE FROM locks WHERE name = $1")
        .bind(mailbridge::events::WRITEBACK_LOCK)
        .execute(env.app.store.pool())
        .await
        .unwrap();
    let report = run_cli_json(&env, &["pull", "--json"]).await;
    assert_eq!(report["unsubscribes_pulled"], 1, "{report}");
    assert!(report["warning"].is_null(), "{report}");
    assert_eq!(env.email_status(2).await, "unsubscribed");
    let (held,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM locks WHERE name = $1")
        .bind(mailbridge::events::WRITEBACK_LOCK)
        .fetch_one(env.app.store.pool())
        .await
        .unwrap();
    assert_eq!(held, 0, "the pull released the lease");
}
