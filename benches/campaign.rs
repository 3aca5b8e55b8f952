//! Campaign push figures against the in-process simulator: the Mailchimp calls one push makes, by
//! kind, and its wall time: with the preflight sync (audience already synced, unchanged), with
//! `--no-sync`, a repeated push of the same key, and the real binary end to end (process start
//! included). Figures are printed, nothing is asserted.
//!
//! Run: `cargo bench --bench campaign` (release build); `CAMPAIGN_BENCH_MEMBERS` sets the audience
//! size (default 1000).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mailbridge::app::App;
use mailbridge::campaigns::{PushContext, PushRequest, push};
use mailbridge::config::DbUrl;
use mailbridge::demo::sample;
use mailbridge::progress::Progress;
use mailbridge::simulator::{Simulator, SimulatorHandle};
use mailbridge::sync::apply::{SyncContext, SyncOptions, sync_audience};
use serde_json::{Value, json};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn sim_get(sim: &SimulatorHandle, path: &str) -> Value {
    reqwest::get(format!("{}/_sim{path}", sim.base_url()))
        .await
        .expect("simulator")
        .json()
        .await
        .expect("json")
}

async fn reset_stats(sim: &SimulatorHandle) {
    reqwest::Client::new()
        .post(format!("{}/_sim/stats/reset", sim.base_url()))
        .send()
        .await
        .expect("reset stats");
}

/// Calls by route since the last reset.
async fn calls(sim: &SimulatorHandle) -> BTreeMap<String, u64> {
    let stats = sim_get(sim, "/stats").await;
    stats["by_route"]
        .as_object()
        .expect("by_route")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

fn print_calls(label: &str, wall: Duration, calls: &BTreeMap<String, u64>) {
    let campaign: u64 = calls
        .iter()
        .filter(|(k, _)| k.contains("/campaigns"))
        .map(|(_, n)| n)
        .sum();
    let total: u64 = calls.values().sum();
    println!(
        "{label}: {:.1} ms wall, {total} Mailchimp call(s), {campaign} of them campaign calls",
        wall.as_secs_f64() * 1000.0
    );
    for (route, n) in calls {
        println!("    {n:>4}  {route}");
    }
}

async fn create_list(sim: &SimulatorHandle) -> String {
    let list: Value = reqwest::Client::new()
        .post(format!("{}/lists", sim.mailchimp_url()))
        .basic_auth("bench", Some("bench-key-us1"))
        .json(&json!({
            "name": "Bench", "permission_reminder": "member", "email_type_option": false,
            "contact": {"company": "Club", "address1": "1 Lane", "city": "Town", "country": "GB"},
            "campaign_defaults": {"from_name": "Club", "from_email": "news@club.example",
                                  "subject": "", "language": "en"}
        }))
        .send()
        .await
        .expect("create list")
        .json()
        .await
        .expect("list json");
    list["id"].as_str().expect("list id").to_owned()
}

async fn run() {
    let members: u64 = std::env::var("CAMPAIGN_BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator");
    let list = create_list(&sim).await;
    std::fs::create_dir_all(dir.path().join("mappings")).expect("mkdir");
    std::fs::write(
        dir.path().join("mappings/members.toml"),
        mailbridge::demo::MEMBERS_MAPPING,
    )
    .expect("mapping");
    let config_path = dir.path().join("mailbridge.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[state]
url = "sqlite://state.db"
[members]
url = "sqlite://members.db"
mapping = "mappings/members.toml"
[providers.mailchimp]
api_key = "bench-key-us1"
base_url = "{}"
[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "{list}"
from_name = "Riverside Rowing"
reply_to = "secretary@club.example"
"#,
            sim.mailchimp_url()
        ),
    )
    .expect("config");
    let members_url = DbUrl::parse("sqlite://members.db", dir.path()).expect("url");
    sample::create_member_db(&members_url, members, 2026)
        .await
        .expect("member db");
    let app = App::load(&config_path).expect("config");
    let config = &app.config;
    let mapping = app.mapping().expect("mapping");
    let store = app.migrated_store().await.expect("store");
    let source = app.member_source().await.expect("source");
    let providers = app.providers().await.expect("provider clients");
    let sync = SyncContext {
        mapping,
        store,
        source: &source,
        providers,
    };
    let first = sync_audience(
        &sync,
        &config.audiences[0],
        SyncOptions::default(),
        &Progress::hidden(),
    )
    .await
    .expect("first sync");
    println!(
        "campaign push against the simulator: {members} sample members, {} subscribed after the first sync\n",
        first.created
    );
    let progress = Progress::hidden();
    let ctx = PushContext {
        config,
        mapping,
        store,
        source: &source,
        providers,
        progress: &progress,
        after_create: None,
        stage: None,
    };
    let request = |subject: &str, no_sync: bool| PushRequest {
        audience: "newsletter".into(),
        subject: subject.into(),
        html: "<h1>News</h1><p>The boats are back.</p>".into(),
        no_sync,
        ..PushRequest::default()
    };

    for (label, subject, no_sync) in [
        (
            "push with preflight sync (unchanged audience)",
            "Spring news",
            false,
        ),
        ("push with --no-sync", "Summer news", true),
    ] {
        reset_stats(&sim).await;
        let started = Instant::now();
        let out = push(&ctx, &request(subject, no_sync), None)
            .await
            .expect("push");
        let wall = started.elapsed();
        print_calls(label, wall, &calls(&sim).await);
        println!(
            "    → {} to {} recipient(s)\n",
            out.record.state,
            out.record.recipients.unwrap_or(0)
        );
    }
    reset_stats(&sim).await;
    let started = Instant::now();
    let again = push(&ctx, &request("Spring news", false), None)
        .await
        .expect("push again");
    print_calls(
        "the same push again (same key)",
        started.elapsed(),
        &calls(&sim).await,
    );
    println!("    → {} (acted: {})\n", again.record.state, again.acted);
    app.close().await;

    let html = dir.path().join("autumn.html");
    std::fs::write(&html, "<h1>Autumn news</h1><p>Regatta results.</p>").expect("html");
    reset_stats(&sim).await;
    let config_path2 = config_path.clone();
    let html2 = html.clone();
    let child = tokio::task::spawn_blocking(move || {
        support::run_child(
            Path::new(&config_path2),
            &[
                "campaign",
                "push",
                "--audience",
                "newsletter",
                "--subject",
                "Autumn news",
                "--html",
                html2.to_str().expect("utf-8 path"),
                "--json",
            ],
        )
    })
    .await
    .expect("child");
    print_calls(
        "`mailbridge campaign push` as a process (start, preflight sync, push)",
        child.wall,
        &calls(&sim).await,
    );
    println!(
        "    → exit {:?}, peak RSS {:.1} MiB, {}",
        child.code,
        child.peak_kib as f64 / 1024.0,
        child.stdout.trim()
    );
    sim.shutdown().await;
}
