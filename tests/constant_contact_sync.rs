//! Constant Contact end to end: the binary (and `serve`) against the simulator, a SQLite member
//! DB, and each state DB (SQLite, PostgreSQL). What the Constant Contact issue's "Done when" asks:
//!
//! - consent: an unsubscriber at Constant Contact is written back and never imported again (an
//!   import would re-subscribe a recent one), a re-consent is refused with `needs_opt_in`, a
//!   member who leaves is removed from the list, a hard bounce cleans and suppresses, three soft
//!   ones suppress, an auto-reply is no bounce;
//! - tokens: connected through the binary (refresh token on stdin, or the device flow), the
//!   stored refresh token rotates, an access token that expires mid-run is refreshed, and two
//!   processes refreshing at once both stay connected;
//! - budget: the simulator's daily quota and the client's `daily_budget` stop a run between
//!   imports with the reset time, and the next day's run finishes without importing anyone twice;
//! - a batch over 4 MB is split; a member the simulator refuses is reported by key while the
//!   others land; `serve`'s poller brings an opt-out home without a sync; `sync --dry-run` writes
//!   nothing at the provider; 4 requests a second are never throttled.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mailbridge::simulator::SimConfig;
use serde_json::Value;
use support::Kind;
use support::cc::{CcApp, Sender, Setup, large_row, row};

/// The `(member_key, code)` pairs of a report's `errors`, sorted.
fn report_errors(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["member_key"].as_str().unwrap_or_default().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn permission(env: &CcApp, email: &str) -> String {
    let all = env.sim.contacts(env.list()).await;
    let c = all
        .iter()
        .find(|c| c["email"] == email)
        .unwrap_or_else(|| panic!("{email} is not on the list: {all:#?}"));
    c["permission_to_send"].as_str().unwrap().to_owned()
}

// ---- 1. consent ----

async fn consent_matrix(kind: Kind) {
    let Some(env) = CcApp::start(kind, Setup::default(), (1..=6).map(row)).await else {
        return;
    };
    let first = env.sync(0).await;
    assert_eq!(
        (first["created"].as_u64(), first["failed"].as_u64()),
        (Some(6), Some(0)),
        "{first:#}"
    );
    assert_eq!(env.sim.contacts(env.list()).await.len(), 6);

    // 2 and 3 opt out at Constant Contact; another app sends a campaign, to which 4 bounces
    // hard, 5 softly three times and 6 answers with an auto-reply.
    for email in ["m2@example.org", "m3@example.org"] {
        let c = env.sim.unsubscribe(email).await;
        assert_eq!(c["opt_out_source"], "Contact");
    }
    let sender = Sender::connect(&env.sim).await;
    sender.send_campaign("June news", env.list()).await;
    env.sim.bounce("m4@example.org", "B").await;
    for _ in 0..3 {
        env.sim.advance(1.0).await;
        env.sim.bounce("m5@example.org", "D").await;
    }
    env.sim.bounce("m6@example.org", "V").await;

    let pulled = env.sync(0).await;
    assert_eq!(pulled["unsubscribes_pulled"], 2, "{pulled:#}");
    assert_eq!(
        pulled["bounces_pulled"], 2,
        "the hard bounce, and the third soft bounce, which counts as hard: {pulled:#}"
    );
    assert_eq!(
        env.events().await,
        pairs(&[
            ("cleaned", "m4@example.org"),
            ("soft_bounce", "m5@example.org"),
            ("soft_bounce", "m5@example.org"),
            ("soft_bounce", "m5@example.org"),
            ("unsubscribed", "m2@example.org"),
            ("unsubscribed", "m3@example.org"),
        ]),
        "the auto-reply is no bounce"
    );
    // Written back to the member DB.
    assert_eq!(env.member(2).await, (false, "unsubscribed".to_owned()));
    assert_eq!(env.member(3).await, (false, "unsubscribed".to_owned()));
    assert_eq!(env.member(4).await, (true, "cleaned".to_owned()));
    assert_eq!(
        env.member(5).await,
        (true, "cleaned".to_owned()),
        "three soft bounces in the window count as a hard one"
    );
    assert_eq!(env.member(6).await, (true, "ok".to_owned()));
    let suppressed = env.suppressed().await;
    assert!(
        suppressed.contains(&"m4@example.org".to_owned())
            && suppressed.contains(&"m5@example.org".to_owned())
            && !suppressed.contains(&"m6@example.org".to_owned()),
        "{suppressed:?}"
    );

    // Whatever the member DB says now, the unsubscribers are not imported: 2 gives consent again
    // after the opt-out (a later `consent_at`), 3's row says consent given again after a sync saw
    // it withdrawn (the writeback), with a profile edit. Both are re-consents, which only the
    // contact can make at Constant Contact.
    let (opted_at,): (String,) = sqlx::query_as(
        "SELECT fired_at FROM provider_events WHERE email = 'm2@example.org' AND event_type = 'unsubscribed'",
    )
    .fetch_one(&env.state)
    .await
    .unwrap();
    let opted_at = mailbridge::domain::parse_time(&opted_at).unwrap();
    let consent_at = (opted_at + chrono::Duration::minutes(1)).format("%Y-%m-%d %H:%M:%S");
    env.exec(&format!(
        "UPDATE members SET newsletter = TRUE, email_status = 'ok', consent_at = '{consent_at}' WHERE id = 2"
    ))
    .await;
    env.exec(
        "UPDATE members SET newsletter = TRUE, email_status = 'ok', first_name = 'Fixed', updated_at = '2037-12-31 00:00:00' WHERE id = 3",
    )
    .await;
    // 1 leaves the club.
    env.exec("UPDATE members SET membership = 'lapsed' WHERE id = 1")
        .await;

    let imports_before = env.sim.operations("createImportJSONActivity").await;
    let run = env.sync(3).await;
    assert_eq!(run["failed"], 2, "{run:#}");
    let refused = pairs(&[("2", "needs_opt_in"), ("3", "needs_opt_in")]);
    assert_eq!(report_errors(&run), refused, "{run:#}");
    let message = run["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("re-subscribe"), "{message}");
    assert_eq!(
        env.sync_errors(run["run_id"].as_str().unwrap()).await,
        refused
    );
    assert!(run["archived"].as_u64().unwrap() >= 1, "{run:#}");
    assert!(
        env.sim
            .on_list(env.list(), "m1@example.org")
            .await
            .is_none(),
        "the member who left is still on the list"
    );
    // And the next sync (nothing changed) imports neither of them either.
    let again = env.sync(3).await;
    assert_eq!(report_errors(&again), refused);
    assert_eq!(
        env.sim.operations("createImportJSONActivity").await,
        imports_before,
        "an unsubscriber was sent in an import"
    );
    for email in ["m2@example.org", "m3@example.org"] {
        assert_eq!(permission(&env, email).await, "unsubscribed", "{email}");
    }
}

support::kind_tests!(consent_matrix:
    consent_matrix_on_sqlite_state => Sqlite,
    consent_matrix_on_postgres_state => Postgres,
);

// ---- 7. dry run ----

async fn dry_run_calls_no_provider(kind: Kind) {
    let Some(env) = CcApp::start(kind, Setup::default(), (1..=4).map(row)).await else {
        return;
    };
    let before = env.sim.stats().await["operations"].clone();
    let plan = env.run_json(&["sync", "--dry-run", "--json"], 0).await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["provider"], "constant_contact");
    assert_eq!(plan["created"], 4, "{plan:#}");
    assert_eq!(
        env.sim.stats().await["operations"],
        before,
        "the dry run called the provider"
    );
    assert!(env.sim.contacts(env.list()).await.is_empty());
    assert!(env.synced_keys("newsletter").await.is_empty());

    // After a real run, a changed member is planned as an update, still without a call.
    env.sync(0).await;
    env.exec("UPDATE members SET first_name = 'Renamed' WHERE id = 3")
        .await;
    let before = env.sim.stats().await["operations"].clone();
    let plan = env.run_json(&["sync", "--dry-run", "--json"], 0).await;
    assert_eq!(
        (plan["created"].as_u64(), plan["updated"].as_u64()),
        (Some(0), Some(1)),
        "{plan:#}"
    );
    assert_eq!(env.sim.stats().await["operations"], before);
    let contact = env.sim.on_list(env.list(), "m3@example.org").await.unwrap();
    assert_eq!(contact["first_name"], Value::Null, "{contact}");
    assert_eq!(contact["custom_fields"]["FNAME"], "F3");
}

support::kind_tests!(dry_run_calls_no_provider:
    dry_run_on_sqlite_state => Sqlite,
    dry_run_on_postgres_state => Postgres,
);

// ---- 2. tokens ----

/// Settings whose access tokens live an hour (simulated) and whose imports take a second (real),
/// so a test can let a token expire while an import is being polled.
fn slow_imports() -> SimConfig {
    SimConfig {
        cc_access_token_ttl: Duration::from_secs(3600),
        cc_activity_delay: Duration::from_secs(1),
        ..support::cc::fast_sim()
    }
}

/// Polls `check` every 20 ms until it holds (20 s deadline).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the simulator refuses `refresh_token` (spent: it rotated).
async fn refused(env: &CcApp, refresh_token: &str) {
    let response = env.sim.refresh_with(&env.grant, refresh_token).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

async fn tokens_rotate_and_expire_mid_run(kind: Kind) {
    let setup = Setup {
        sim: slow_imports(),
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, (1..=3).map(row)).await else {
        return;
    };
    // `auth constant-contact --refresh-token -` spent the token given and stored the next one.
    let connected = env.stored_refresh_token().await;
    assert_ne!(connected, env.grant.refresh_token);
    refused(&env, &env.grant.refresh_token).await;

    let token_calls = env.sim.stats().await["token_calls"].as_u64().unwrap();
    let child = tokio::spawn({
        let config = env.config_path.clone();
        async move { support::db::run_binary(&config, &["sync", "--json"]).await }
    });
    // While the import is being processed, the access token's hour passes.
    until("the import to start", || !env.sim.activities().is_empty()).await;
    env.sim.advance(3601.0).await;
    let out = child.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(0)),
        "{report:#}"
    );
    assert_eq!(env.sim.contacts(env.list()).await.len(), 3);
    assert!(
        env.sim.stats().await["token_calls"].as_u64().unwrap() > token_calls,
        "the expired token was not refreshed"
    );
    // The refresh rotated the stored token; the one before is spent.
    let rotated = env.stored_refresh_token().await;
    assert_ne!(rotated, connected);
    refused(&env, &connected).await;
    // And the stored pair works for the next run.
    env.sim.advance(3601.0).await;
    let pulled = env.run_json(&["pull", "--json"], 0).await;
    assert_eq!(pulled["failed"], 0);
}

support::kind_tests!(tokens_rotate_and_expire_mid_run:
    tokens_rotate_on_sqlite_state => Sqlite,
    tokens_rotate_on_postgres_state => Postgres,
);

async fn two_processes_refresh_at_once(kind: Kind) {
    let setup = Setup {
        sim: slow_imports(),
        audiences: vec!["newsletter", "club"],
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, (1..=3).map(row)).await else {
        return;
    };
    for round in 0..2 {
        // Both processes start with an access token the simulator no longer takes.
        env.sim.advance(3601.0).await;
        let sync = env.run(&["sync", "--json", "--audience", "newsletter"]);
        let pull = env.run(&["pull", "--json", "--audience", "club"]);
        let (sync, pull) = tokio::join!(sync, pull);
        for (what, out) in [("sync", sync), ("pull", pull)] {
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}, {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(env.sim.contacts(env.lists[0].as_str()).await.len(), 3);
    // Nobody is left with a broken connection: a third process works with what is stored.
    env.sim.advance(3601.0).await;
    let out = env.run(&["pull", "--json"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

support::kind_tests!(two_processes_refresh_at_once:
    two_processes_on_sqlite_state => Sqlite,
    two_processes_on_postgres_state => Postgres,
);

async fn device_flow_through_the_binary(kind: Kind) {
    use tokio::io::AsyncBufReadExt;
    let setup = Setup {
        sim: SimConfig {
            cc_device_interval: Duration::from_secs(1),
            ..support::cc::fast_sim()
        },
        public_app: true,
        ..Setup::default()
    };
    let Some(env) = CcApp::unconnected(kind, setup, (1..=2).map(row)).await else {
        return;
    };
    let mut child = tokio::process::Command::new(support::db::binary())
        .arg("--config")
        .arg(&env.config_path)
        .args(["auth", "constant-contact"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(code) = line.trim().strip_prefix("and enter the code ") {
                return code.to_owned();
            }
        }
        panic!("the binary printed no code");
    })
    .await
    .expect("the device code in time");
    env.sim.approve(&code).await;
    let rest = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(line);
        }
        out
    });
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("auth to finish")
        .unwrap();
    assert!(status.success());
    let printed = rest.await.unwrap().join("\n");
    assert!(printed.contains("Connected"), "{printed}");
    assert!(!env.stored_refresh_token().await.is_empty());
    let report = env.sync(0).await;
    assert_eq!(report["created"], 2, "{report:#}");
}

support::kind_tests!(device_flow_through_the_binary:
    device_flow_on_sqlite_state => Sqlite,
    device_flow_on_postgres_state => Postgres,
);

// ---- 3. budget ----

/// Extra merge fields per member in the budget and split tests: with 255-character names, each
/// member is about 6 KB of import, so 700 of them pass 4 MB.
const LARGE_FIELDS: usize = 20;

/// Members in the budget tests: over 8 MB of imports, so at least three requests.
const MANY: u64 = 1600;

/// Settings whose activities complete at once (a poll after an import finds it done).
fn instant_imports(daily_quota: u64) -> SimConfig {
    SimConfig {
        cc_activity_delay: Duration::ZERO,
        cc_daily_quota: daily_quota,
        ..support::cc::fast_sim()
    }
}

/// Adds members `from..=to`, each large.
async fn add_large(env: &CcApp, from: u64, to: u64) {
    let rows: Vec<String> = (from..=to).map(large_row).collect();
    for chunk in rows.chunks(200) {
        env.exec(&format!(
            "INSERT INTO members (id, email, first_name, last_name, membership, newsletter, email_status, updated_at) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
}

/// The requests the sim accepted from mailbridge's app during `run`.
async fn spent<T>(env: &CcApp, run: impl std::future::Future<Output = T>) -> (u64, T) {
    let before = env.sim.used_today(&env.grant.client_id);
    let out = run.await;
    (env.sim.used_today(&env.grant.client_id) - before, out)
}

/// A sync that stopped on a spent budget: exit 1, the reset time named, the run recorded as
/// failed. Returns the stderr.
async fn stopped_on_budget(env: &CcApp) -> String {
    let out = env.run(&["sync", "--json"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the request budget is spent") && stderr.contains("T00:00:00Z (00:00 UTC)"),
        "{stderr}"
    );
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM sync_runs ORDER BY started_at DESC LIMIT 1")
            .fetch_one(&env.state)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    stderr
}

/// Nothing half-applied: every member the state DB holds as synced is on the list with its
/// fields, and it holds fewer than all.
async fn state_matches_the_list(env: &CcApp, all: u64) -> usize {
    let synced = env.synced_keys("newsletter").await;
    let on_list: std::collections::HashSet<String> = env
        .sim
        .contacts(env.list())
        .await
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    for key in &synced {
        assert!(
            on_list.contains(&format!("m{key}@example.org")),
            "member {key} is recorded but not on the list"
        );
    }
    assert!((synced.len() as u64) < all, "the run did not stop early");
    synced.len()
}

/// Every member is on the list once, and the imports the simulator ran add up to exactly one
/// import per member (none was imported twice).
async fn each_imported_once(env: &CcApp, all: u64) {
    let contacts = env.sim.contacts(env.list()).await;
    assert_eq!(contacts.len() as u64, all);
    let x20 = contacts
        .iter()
        .find(|c| c["email"] == "m700@example.org")
        .unwrap()["custom_fields"]["X20"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(x20, 255, "a field was cut");
    let activities = env.sim.activities();
    assert!(activities.iter().all(|(_, done)| *done));
    let imported: u64 = activities.iter().map(|(n, _)| n).sum();
    assert_eq!(imported, all, "{activities:?}");
    assert_eq!(env.synced_keys("newsletter").await.len() as u64, all);
}

async fn quota_exceeded_mid_run_resumes_next_day(kind: Kind) {
    const QUOTA: u64 = 200;
    let setup = Setup {
        sim: instant_imports(QUOTA),
        extra_fields: LARGE_FIELDS,
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, [large_row(1)]).await else {
        return;
    };
    env.sync(0).await;
    // What a run costs before its first import (pull and fields, nothing to push).
    let (before_imports, _) = spent(&env, env.sync(0)).await;
    add_large(&env, 2, MANY).await;
    // Spend the quota down to that and two imports with one poll each: the third import is
    // refused.
    let used = env.sim.used_today(&env.grant.client_id);
    let access = env.stored_access_token().await;
    for _ in used..QUOTA - (before_imports + 4) {
        let response = env
            .sim
            .http
            .get(format!(
                "{}/contact_lists",
                env.sim.handle.constant_contact_url()
            ))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    stopped_on_budget(&env).await;
    assert_eq!(env.sim.stats().await["rate_limited"]["quota_exceeded"], 1);
    let landed = state_matches_the_list(&env, MANY).await;
    assert!(
        landed > 1,
        "the two imports that completed are not recorded"
    );

    // The next simulated UTC day the quota is back, and the next sync finishes the job.
    let now = env.sim.now().await;
    env.sim
        .advance((86_400 - now.timestamp().rem_euclid(86_400) + 1) as f64)
        .await;
    let report = env.sync(0).await;
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(
        report["created"].as_u64().unwrap() as usize,
        MANY as usize - landed
    );
    each_imported_once(&env, MANY).await;
}

support::kind_tests!(quota_exceeded_mid_run_resumes_next_day:
    quota_exceeded_on_sqlite_state => Sqlite,
    quota_exceeded_on_postgres_state => Postgres,
);

async fn daily_budget_stops_a_run(kind: Kind) {
    let setup = Setup {
        sim: instant_imports(0),
        extra_fields: LARGE_FIELDS,
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, [large_row(1)]).await else {
        return;
    };
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    env.sync(0).await;
    let (before_imports, _) = spent(&env, env.sync(0)).await;
    add_large(&env, 2, MANY).await;
    // The budget counted in the state DB today, plus what a run needs for two imports.
    let (used,): (i64,) = sqlx::query_as(
        "SELECT used FROM api_budget WHERE provider = 'constant_contact' ORDER BY day DESC LIMIT 1",
    )
    .fetch_one(&env.state)
    .await
    .unwrap();
    let budget = used as u64 + before_imports + 4;
    let limited = config.replace(
        "requests_per_second = 100\n",
        &format!("requests_per_second = 100\ndaily_budget = {budget}\n"),
    );
    assert_ne!(limited, config);
    std::fs::write(&env.config_path, limited).unwrap();
    let sim_before = env.sim.used_today(&env.grant.client_id);
    stopped_on_budget(&env).await;
    assert_eq!(
        env.sim.used_today(&env.grant.client_id) - sim_before,
        before_imports + 4,
        "the client sent a request past its budget"
    );
    let landed = state_matches_the_list(&env, MANY).await;
    assert!(
        landed > 1,
        "the two imports that completed are not recorded"
    );
    // A larger budget (as tomorrow's) lets the next run finish.
    std::fs::write(&env.config_path, config).unwrap();
    let report = env.sync(0).await;
    assert_eq!(
        report["created"].as_u64().unwrap() as usize,
        MANY as usize - landed
    );
    each_imported_once(&env, MANY).await;
}

support::kind_tests!(daily_budget_stops_a_run:
    daily_budget_on_sqlite_state => Sqlite,
    daily_budget_on_postgres_state => Postgres,
);

// ---- 4. the 4 MB split ----

async fn a_batch_over_4_mb_is_split(kind: Kind) {
    let setup = Setup {
        sim: instant_imports(0),
        extra_fields: LARGE_FIELDS,
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, (1..=900).map(large_row)).await else {
        return;
    };
    let report = env.sync(0).await;
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(900), Some(0)),
        "{report:#}"
    );
    // About 5.4 MB of contacts: packed into batches under 4 MB, that is two imports, no more.
    let imports = env.sim.operations("createImportJSONActivity").await;
    assert_eq!(imports, 2, "{imports} import(s)");
    each_imported_once(&env, 900).await;
}

support::kind_tests!(a_batch_over_4_mb_is_split:
    split_on_sqlite_state => Sqlite,
    split_on_postgres_state => Postgres,
);

// ---- 5. per-member failures ----

async fn a_refused_member_is_reported_and_the_others_land(kind: Kind) {
    let Some(env) = CcApp::start(kind, Setup::default(), (1..=4).map(row)).await else {
        return;
    };
    // An address mailbridge takes and Constant Contact does not (over 80 characters).
    let long = format!("m3@{}.{}.org", "a".repeat(40), "b".repeat(40));
    env.exec(&format!("UPDATE members SET email = '{long}' WHERE id = 3"))
        .await;
    let report = env.sync(3).await;
    assert_eq!(
        (report["created"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(1)),
        "{report:#}"
    );
    assert_eq!(
        report_errors(&report),
        pairs(&[("3", "provider_invalid_email")])
    );
    assert_eq!(report["errors"][0]["email"], long.as_str());
    assert_eq!(
        env.sync_errors(report["run_id"].as_str().unwrap()).await,
        pairs(&[("3", "provider_invalid_email")])
    );
    let mut landed: Vec<String> = env
        .sim
        .contacts(env.list())
        .await
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    landed.sort();
    assert_eq!(
        landed,
        ["m1@example.org", "m2@example.org", "m4@example.org"]
    );
    assert_eq!(env.synced_keys("newsletter").await, ["1", "2", "4"]);
}

support::kind_tests!(a_refused_member_is_reported_and_the_others_land:
    refused_member_on_sqlite_state => Sqlite,
    refused_member_on_postgres_state => Postgres,
);

// ---- 6. serve's poller ----

async fn serve_polls_opt_outs_home(kind: Kind) {
    let setup = Setup {
        provider: "requests_per_second = 100\npoll_every = \"1s\"\n".to_owned(),
        server: Some("bind = \"127.0.0.1:0\"\napi_token = \"api-token-abcdef\"\n".to_owned()),
        ..Setup::default()
    };
    let Some(env) = CcApp::start(kind, setup, (1..=3).map(row)).await else {
        return;
    };
    env.sync(0).await;
    let server = support::app::start_serve(support::app::load_config(&env.config_path), None).await;
    env.sim.unsubscribe("m2@example.org").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.member(2).await != (false, "unsubscribed".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the opt-out never reached the member DB"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.member(1).await, (true, "ok".to_owned()));
    assert_eq!(
        env.events().await,
        pairs(&[("unsubscribed", "m2@example.org")])
    );
    server.shutdown().await.unwrap();
    // No sync ran in between: the only run is the first one.
    let (runs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sync_runs")
        .fetch_one(&env.state)
        .await
        .unwrap();
    assert_eq!(runs, 1);
}

support::kind_tests!(serve_polls_opt_outs_home:
    serve_polls_on_sqlite_state => Sqlite,
    serve_polls_on_postgres_state => Postgres,
);

// ---- pacing ----

/// At Constant Contact's own 4 requests a second, on both sides, nothing is throttled.
#[tokio::test]
async fn four_requests_a_second_are_never_throttled() {
    let setup = Setup {
        sim: SimConfig {
            cc_requests_per_second: 4,
            ..support::cc::fast_sim()
        },
        provider: "requests_per_second = 4\n".to_owned(),
        ..Setup::default()
    };
    let env = CcApp::start(Kind::Sqlite, setup, (1..=6).map(row))
        .await
        .unwrap();
    // The pace is per process: before each run, the previous process's requests (`auth`, the
    // first sync) leave Constant Contact's one-second window, as they would between real runs.
    let quiet = Duration::from_millis(1100);
    tokio::time::sleep(quiet).await;
    let started = std::time::Instant::now();
    env.sync(0).await;
    tokio::time::sleep(quiet).await;
    env.sim.unsubscribe("m2@example.org").await;
    env.exec("UPDATE members SET membership = 'lapsed' WHERE id IN (1, 3)")
        .await;
    let report = env.sync(0).await;
    assert_eq!(report["archived"], 2, "{report:#}");
    let stats = env.sim.stats().await;
    let requests: u64 = stats["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(
        requests >= 16,
        "too few requests to show the pace: {stats:#}"
    );
    assert_eq!(stats["rate_limited"]["throttled"], 0, "{stats:#}");
    // The pace is what kept them apart: at most 4 a second in each of the two runs.
    assert!(
        started.elapsed() >= quiet + Duration::from_millis(250 * (requests - 3)),
        "{requests} requests in {:?}",
        started.elapsed()
    );
}
