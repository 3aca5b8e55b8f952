//! Benchmark: the real `mailbridge sync` to a Constant Contact list on the in-process simulator,
//! at the vendor's limits (4 requests/s, 10,000 requests a day, activities that take real time),
//! members in SQLite (issue 17 figures). Side by side, in the same run, the per-contact
//! `POST /contacts/sign_up_form` loop the open-source club integrations use, under the same limits.
//!
//!     cargo bench --bench constant_contact                       # 100,000 members
//!     BENCH_MEMBERS=5000 cargo bench --bench constant_contact    # a short run
//!     BENCH_COMPARE=200 cargo bench --bench constant_contact     # contacts the loop really sends
//!
//! The binary runs as a child; peak RSS is its VmHWM sampled every 20 ms. API calls come from the
//! simulator's `/_sim/stats` (by the spec's operationId). The time the sync spent waiting on
//! Constant Contact's asynchronous activities is read from `/_sim/constant-contact/activities`
//! (from each activity's creation to the poll that first saw it completed) and shown apart from
//! the sync's own work. The loop is measured for `BENCH_COMPARE` contacts and extrapolated to N at
//! its measured rate (its cost is linear: one call per contact). Prints figures; asserts nothing
//! about time.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailbridge::app::App;
use mailbridge::config::DbUrl;
use mailbridge::simulator::{SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection;

/// The vendor's per-app request rate and daily quota (research: constant-contact.md §1).
const RATE: f64 = 4.0;
const DAILY: u64 = 10_000;

struct Bench {
    http: reqwest::Client,
    sim_base: String,
    api: String,
    oauth: String,
}

struct Grant {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

impl Bench {
    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/_sim{path}", self.sim_base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("simulator control route");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("control json")
    }

    async fn connect(&self) -> Grant {
        let g = self
            .control(reqwest::Method::POST, "/constant-contact/connect", None)
            .await;
        let text = |k: &str| g[k].as_str().expect("grant field").to_owned();
        Grant {
            client_id: text("client_id"),
            client_secret: text("client_secret"),
            refresh_token: text("refresh_token"),
        }
    }

    async fn create_list(&self, name: &str) -> String {
        let list = self
            .control(
                reqwest::Method::POST,
                "/constant-contact/lists",
                Some(json!({"name": name})),
            )
            .await;
        list["list_id"].as_str().expect("list id").to_owned()
    }

    async fn reset_stats(&self) {
        self.control(reqwest::Method::POST, "/stats/reset", None)
            .await;
    }

    /// Constant Contact requests by operationId, and 429s by error_key.
    async fn calls(&self) -> Calls {
        let v = self.control(reqwest::Method::GET, "/stats", None).await;
        let cc = &v["constant_contact"];
        let ops: BTreeMap<String, u64> = cc["operations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let count = |k: &str| ops.get(k).copied().unwrap_or(0);
        Calls {
            imports: count("createImportJSONActivity"),
            polls: count("getActivityById"),
            writes: ops
                .iter()
                .filter(|(k, _)| !k.starts_with("get"))
                .map(|(_, n)| n)
                .sum(),
            total: ops.values().sum(),
            throttled: cc["rate_limited"]["throttled"].as_u64().unwrap_or(0),
            token_calls: cc["token_calls"].as_u64().unwrap_or(0),
            ops,
        }
    }

    async fn activities(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/constant-contact/activities", None)
            .await
            .as_array()
            .cloned()
            .expect("activities")
    }

    /// Ids of the activities so far (so a run's own can be told apart).
    async fn activity_ids(&self) -> HashSet<String> {
        self.activities()
            .await
            .iter()
            .filter_map(|a| a["activity_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Seconds the client waited on activities not in `before`: the union of [created, first
    /// seen completed] over them, and how many there were.
    async fn activity_wait(&self, before: &HashSet<String>) -> (f64, usize) {
        let mut spans: Vec<(i64, i64)> = self
            .activities()
            .await
            .iter()
            .filter(|a| {
                !a["activity_id"]
                    .as_str()
                    .is_some_and(|id| before.contains(id))
            })
            .filter_map(|a| Some((a["created_us"].as_i64()?, a["seen_completed_us"].as_i64()?)))
            .collect();
        spans.sort_unstable();
        let count = spans.len();
        let mut total = 0i64;
        let mut current: Option<(i64, i64)> = None;
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    total += e - s;
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            total += e - s;
        }
        (total as f64 / 1e6, count)
    }

    /// A config, a migrated state DB and a connected account for `list` over `members`.
    async fn setup(&self, data: &Path, tag: &str, members: &DbUrl, list: &str) -> PathBuf {
        let state_file = data.join(format!("cc-state-{tag}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", state_file.display()));
        }
        let state = DbUrl::parse(&format!("sqlite://{}", state_file.display()), data).expect("url");
        let mapping = data.join("cc-members.toml");
        std::fs::write(&mapping, cc_mapping()).expect("mapping");
        let grant = self.connect().await;
        let config = data.join(format!("cc-{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "[state]\nurl = \"{}\"\n[members]\nurl = \"{}\"\nmapping = \"{}\"\n\
                 [providers.constant_contact]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
                 base_url = \"{}\"\nauth_url = \"{}\"\n\
                 [[audiences]]\nname = \"cc\"\nprovider = \"constant_contact\"\nlist_id = \"{list}\"\n",
                state.expose(),
                members.expose(),
                mapping.display(),
                grant.client_id,
                grant.client_secret,
                self.api,
                self.oauth,
            ),
        )
        .expect("config");
        let app = App::load(&config).expect("config");
        let cc = app
            .config
            .constant_contact
            .clone()
            .expect("[providers.constant_contact]");
        let store = app.migrated_store().await.expect("state DB");
        mailbridge::providers::constant_contact::store_refresh_token(
            &cc,
            store,
            SecretString::from(grant.refresh_token),
        )
        .await
        .expect("connect the account");
        app.close().await;
        config
    }

    /// An access token for a grant of the loop's own app (its own 4/s and daily quota).
    async fn access_token(&self, grant: &Grant) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/token", self.oauth))
            .basic_auth(&grant.client_id, Some(&grant.client_secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", grant.refresh_token.as_str()),
            ])
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        answer["access_token"]
            .as_str()
            .expect("access token")
            .to_owned()
    }
}

struct Calls {
    imports: u64,
    polls: u64,
    writes: u64,
    total: u64,
    throttled: u64,
    token_calls: u64,
    ops: BTreeMap<String, u64>,
}

/// The repository's mapping for the reference schema, for a Constant Contact audience `cc`: the
/// same source and merge fields, no tags (Constant Contact audiences take none).
fn cc_mapping() -> String {
    let text = include_str!("../mappings/members.toml");
    let audience_at = text.find("[audiences.newsletter]").expect("audience");
    let tags_at = text.find("# One tag per membership value").expect("tags");
    let writeback_at = text
        .find("# Provider events written back")
        .expect("writeback");
    format!(
        "{}{}{}",
        &text[..audience_at],
        text[audience_at..tags_at].replace("audiences.newsletter", "audiences.cc"),
        &text[writeback_at..]
    )
}

/// Lets the simulator's sliding one-second rate window empty (the previous process's requests).
async fn clear_window() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn run(config: &Path, args: &'static [&'static str]) -> (support::ChildRun, Value) {
    let config = config.to_owned();
    let r = tokio::task::spawn_blocking(move || support::run_child(&config, args))
        .await
        .expect("child runner");
    let report =
        serde_json::from_str(r.stdout.lines().next().unwrap_or("null")).unwrap_or(Value::Null);
    (r, report)
}

/// The loop: one `POST /contacts/sign_up_form` per member, one at a time, paced to the vendor's
/// 4 requests/s (a 429 is waited out and retried, as a careful integration would). Returns the
/// calls made (retries included) and the wall time.
async fn sign_up_loop(
    bench: &Bench,
    token: &str,
    list: &str,
    rows: &[(String, String, String)],
) -> (u64, Duration) {
    let mut calls = 0u64;
    let start = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (email, first, last) in rows {
        loop {
            pace.tick().await;
            calls += 1;
            let response = bench
                .http
                .post(format!("{}/contacts/sign_up_form", bench.api))
                .bearer_auth(token)
                .json(&json!({
                    "email_address": email,
                    "first_name": first,
                    "last_name": last,
                    "list_memberships": [list],
                }))
                .send()
                .await
                .expect("sign_up_form");
            let status = response.status();
            if status.is_success() {
                break;
            }
            assert_eq!(
                status,
                429,
                "sign_up_form for {email}: {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    (calls, start.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&data).expect("bench data dir");
    let n: u64 = std::env::var("BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let m: usize = std::env::var("BENCH_COMPARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // The vendor's limits, per app: the sync and the loop are two apps (two grants), so each has
    // its own 4/s and 10,000 a day.
    let sim = Simulator::start_with(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig {
            cc_requests_per_second: RATE as u32,
            cc_daily_quota: DAILY,
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let bench = Bench {
        http: reqwest::Client::new(),
        sim_base: sim.base_url(),
        api: sim.constant_contact_url(),
        oauth: sim.oauth_url(),
    };
    let activity_delay = SimConfig::default().cc_activity_delay;
    println!(
        "mailbridge sync to a Constant Contact list on the in-process simulator: {RATE} requests/s, {DAILY} a day, each activity {} ms of processing; members in SQLite",
        activity_delay.as_millis()
    );
    println!(
        "(targets: initial {n} <= 10 s of own work with activity waiting shown apart, <= 200 MB, imports + polls within 3 of ceil(N/40,000) + polls; resync 0 writes)\n"
    );

    let members = support::members_db(&data, n).await;
    let list = bench.create_list(&format!("bench-{n}")).await;
    let config = bench.setup(&data, &n.to_string(), &members, &list).await;

    // The simulator counts 4 requests/s per app over a sliding second; the pace is per process,
    // so the setup's last request (connecting the account) must leave that second first, as it
    // would in real use, where a sync does not start the instant another process stops.
    clear_window().await;
    bench.reset_stats().await;
    let before = bench.activity_ids().await;
    let (r, report) = run(&config, &["sync", "--json"]).await;
    let calls = bench.calls().await;
    let (waited, activities) = bench.activity_wait(&before).await;
    let wall = r.wall.as_secs_f64();
    let expected_imports = n.div_ceil(40_000);
    println!(
        "initial sync of {n}: wall {wall:.2} s = own work {:.2} s + waiting on {activities} activities {waited:.2} s   CPU {:.2} s   peak RSS {:.1} MB   exit {:?}   created {}",
        wall - waited,
        r.cpu_secs,
        mb(r.peak_kib),
        r.code,
        report["created"]
    );
    println!(
        "   calls: {} in all = {} imports (ceil(N/40,000) = {expected_imports}) + {} polls + {} other ({} writes); token calls {}; 429 throttled {}",
        calls.total,
        calls.imports,
        calls.polls,
        calls.total - calls.imports - calls.polls,
        calls.writes,
        calls.token_calls,
        calls.throttled
    );
    println!("   by operation: {:?}", calls.ops);
    println!(
        "   budget: {} of {DAILY} requests today ({:.2} %)",
        calls.total,
        calls.total as f64 * 100.0 / DAILY as f64
    );

    clear_window().await;
    bench.reset_stats().await;
    let before = bench.activity_ids().await;
    let (r, report) = run(&config, &["sync", "--json"]).await;
    let calls = bench.calls().await;
    let (waited, _) = bench.activity_wait(&before).await;
    println!(
        "no-change resync of {n}: wall {:.2} s (waiting on activities {waited:.2} s)   CPU {:.2} s   peak RSS {:.1} MB   write calls {}   calls {}   exit {:?}   unchanged {}",
        r.wall.as_secs_f64(),
        r.cpu_secs,
        mb(r.peak_kib),
        calls.writes,
        calls.total,
        r.code,
        report["unchanged"]
    );

    // Side by side: the per-contact sign_up_form loop, on its own app and list.
    let mut conn = sqlx::SqliteConnection::connect(members.expose())
        .await
        .expect("open members");
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT email, first_name, last_name FROM members ORDER BY id LIMIT ?")
            .bind(m as i64)
            .fetch_all(&mut conn)
            .await
            .expect("read members");
    conn.close().await.expect("close");
    let grant = bench.connect().await;
    let token = bench.access_token(&grant).await;
    let loop_list = bench.create_list("bench-sign-up-loop").await;
    let (loop_calls, loop_wall) = sign_up_loop(&bench, &token, &loop_list, &rows).await;
    let per_call = loop_wall.as_secs_f64() / loop_calls.max(1) as f64;
    let extrapolated_calls = n * loop_calls / rows.len().max(1) as u64;
    let extrapolated_secs = extrapolated_calls as f64 * per_call;
    println!(
        "\nper-contact sign_up_form loop, measured on {} contacts: {loop_calls} calls in {:.2} s ({:.2} calls/s)",
        rows.len(),
        loop_wall.as_secs_f64(),
        loop_calls as f64 / loop_wall.as_secs_f64()
    );
    println!(
        "   for {n} members: {extrapolated_calls} calls, {:.1} h at 4 requests/s, {} day(s) of the 10,000-request quota",
        extrapolated_secs / 3600.0,
        extrapolated_calls.div_ceil(DAILY)
    );
    sim.shutdown().await;
}
