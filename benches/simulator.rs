//! Simulator throughput and memory: starts the simulator in-process, creates a list, inserts
//! 100,000 members with 200 batch-subscribe calls of 500 over HTTP on loopback, and prints the
//! median / p99 time per call, a full paged read, an incremental poll, and the process peak RSS
//! (VmHWM) before and after. Figures are printed, nothing is asserted.
//!
//! Run: `cargo bench --bench simulator` (release build).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use mailbridge::simulator::{SimConfig, SimState, Simulator, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const BATCHES: usize = 200;
const BATCH_SIZE: usize = 500;
const KEY: &str = "bench-key-us1";

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn batch_body(batch: usize) -> Vec<u8> {
    let members: Vec<Value> = (0..BATCH_SIZE)
        .map(|i| {
            let n = batch * BATCH_SIZE + i;
            json!({
                "email_address": format!("member{n}@club.example.org"),
                "status": "subscribed",
                "merge_fields": {"FNAME": format!("First{n}"), "LNAME": format!("Last{n}")},
                "tags": [if n.is_multiple_of(3) { "board" } else { "member" }],
            })
        })
        .collect();
    serde_json::to_vec(&json!({"members": members, "update_existing": true})).expect("serialise")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    // For profiling the simulator alone: `SIM_BENCH_IN_PROCESS_ONLY=1`.
    if std::env::var_os("SIM_BENCH_IN_PROCESS_ONLY").is_some() {
        in_process().await;
        return;
    }
    let hwm_before = proc_status_kib("VmHWM:").unwrap_or(0);
    let rss_before = proc_status_kib("VmRSS:").unwrap_or(0);
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start simulator");
    let api = sim.mailchimp_url();
    let client = reqwest::Client::new();

    let list: Value = client
        .post(format!("{api}/lists"))
        .basic_auth("bench", Some(KEY))
        .json(&json!({
            "name": "Bench", "permission_reminder": "bench", "email_type_option": false,
            "contact": {"company": "C", "address1": "A", "city": "C", "state": "S", "zip": "1", "country": "US"},
            "campaign_defaults": {"from_name": "C", "from_email": "c@example.org", "subject": "S", "language": "en"}
        }))
        .send()
        .await
        .expect("create list")
        .json()
        .await
        .expect("list json");
    let list_id = list["id"].as_str().expect("list id").to_owned();

    let mut times = Vec::with_capacity(BATCHES);
    let started = Instant::now();
    for batch in 0..BATCHES {
        let body = batch_body(batch);
        let t = Instant::now();
        let response = client
            .post(format!("{api}/lists/{list_id}"))
            .basic_auth("bench", Some(KEY))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("batch call");
        let status = response.status();
        let bytes = response.bytes().await.expect("batch body");
        times.push(t.elapsed());
        assert!(status.is_success(), "batch {batch}: {status}");
        if batch == 0 {
            let result: Value = serde_json::from_slice(&bytes).expect("batch json");
            assert_eq!(result["total_created"], BATCH_SIZE, "{}", result["errors"]);
        }
    }
    let total = started.elapsed();
    times.sort();

    // A full read in pages of 1000, and an incremental poll of the newest changes.
    let t = Instant::now();
    let mut read = 0;
    for page in 0..(BATCHES * BATCH_SIZE).div_ceil(1000) {
        let body: Value = client
            .get(format!(
                "{api}/lists/{list_id}/members?count=1000&offset={}",
                page * 1000
            ))
            .basic_auth("bench", Some(KEY))
            .send()
            .await
            .expect("page")
            .json()
            .await
            .expect("page json");
        read += body["members"].as_array().map_or(0, Vec::len);
    }
    let full_read = t.elapsed();
    let t = Instant::now();
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let poll: Value = client
        .get(format!("{api}/lists/{list_id}/members"))
        .query(&[
            ("since_last_changed", since.as_str()),
            ("status", "unsubscribed"),
            ("count", "1000"),
        ])
        .basic_auth("bench", Some(KEY))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("poll json");
    let poll_time = t.elapsed();

    let hwm_after = proc_status_kib("VmHWM:").unwrap_or(0);
    let rss_after = proc_status_kib("VmRSS:").unwrap_or(0);
    println!(
        "simulator bench: {BATCHES} batch-subscribe calls x {BATCH_SIZE} members over loopback HTTP"
    );
    println!(
        "  per call: median {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    println!(
        "  total {:.2} s, {:.0} members/s",
        total.as_secs_f64(),
        (BATCHES * BATCH_SIZE) as f64 / total.as_secs_f64()
    );
    println!(
        "  full read of {read} members in pages of 1000: {:.0} ms",
        ms(full_read)
    );
    println!(
        "  since_last_changed poll (status=unsubscribed, {} hits): {:.2} ms",
        poll["total_items"],
        ms(poll_time)
    );
    println!(
        "  peak RSS (VmHWM): before {:.1} MiB, after {:.1} MiB, delta {:.1} MiB; VmRSS now {:.1} MiB (was {:.1} MiB)",
        mib(hwm_before),
        mib(hwm_after),
        mib(hwm_after.saturating_sub(hwm_before)),
        mib(rss_after),
        mib(rss_before),
    );
    sim.shutdown().await;
    in_process().await;
}

/// The same 200 batches straight into the router (no sockets, no HTTP client): the simulator's
/// own cost per call.
async fn in_process() {
    let app = router(SimState::new(SimConfig::default()));
    let list = Request::post("/3.0/lists")
        .header("authorization", "Bearer bench")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({
                "name": "Bench", "permission_reminder": "bench", "email_type_option": false,
                "contact": {"company": "C", "address1": "A", "city": "C", "state": "S", "zip": "1", "country": "US"},
                "campaign_defaults": {"from_name": "C", "from_email": "c@example.org", "subject": "S", "language": "en"}
            })
            .to_string(),
        ))
        .expect("request");
    let response = app.clone().oneshot(list).await.expect("create list");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let list: Value = serde_json::from_slice(&bytes).expect("list json");
    let list_id = list["id"].as_str().expect("list id").to_owned();
    let mut times = Vec::with_capacity(BATCHES);
    for batch in 0..BATCHES {
        let request = Request::post(format!("/3.0/lists/{list_id}"))
            .header("authorization", "Bearer bench")
            .header("content-type", "application/json")
            .body(Body::from(batch_body(batch)))
            .expect("request");
        let t = Instant::now();
        let response = app.clone().oneshot(request).await.expect("batch");
        let _ = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "  in-process (router only, no HTTP): median {:.2} ms, p99 {:.2} ms per 500-member batch",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
    );
}
