//! Benchmark: `mailbridge sync --dry-run` over a large SQLite member database (issue 2 figures).
//!
//!     cargo bench --bench dry_run_plan                 # 100,000 then 1,000,000 members
//!     BENCH_MEMBERS=100000 cargo bench --bench dry_run_plan
//!
//! Builds the sample member database once (cached under target/bench-data), then runs the real
//! `mailbridge` binary, table output and `--json`, and prints wall time, members/s and peak RSS
//! (VmHWM of the child process, sampled every 20 ms from /proc). Prints figures; asserts nothing
//! about time.

mod support;

use std::path::Path;
use std::time::Instant;

use mailbridge::app::App;
use mailbridge::config::DbUrl;
use mailbridge::demo::sample;

use support::run_child;

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = match std::env::var("BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![100_000, 1_000_000],
    };
    println!(
        "dry-run plan over members in SQLite, empty state DB (targets, issue 26: 1,000,000 in <= 2 s and <= 64 MB peak RSS, memory not growing with N beyond a compact hash per address)"
    );
    println!(
        "before (issue 26 baseline; the sync's no-change resync, which plans the same way): 100,000 0.3 s / 46 MB, 1,000,000 3.5 s / 193 MB"
    );
    let mut peaks = Vec::new();
    for n in sizes {
        peaks.push((n, plan(n).await));
    }
    if let [(small, a), (large, b)] = peaks[..] {
        println!(
            "peak RSS {small} -> {large}: {:.1} -> {:.1} MB, {:.0} bytes per member more",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            (b as f64 - a as f64) * 1024.0 / (large - small) as f64
        );
    }
}

/// Plans `n` members, table and `--json`; returns the lower peak RSS (KiB).
async fn plan(n: u64) -> u64 {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&data).expect("bench data dir");
    let members_file = data.join(format!("members-{n}.db"));
    let members =
        DbUrl::parse(&format!("sqlite://{}", members_file.display()), &data).expect("url");
    if !members_file.exists() {
        let t = Instant::now();
        let tmp = data.join(format!("members-{n}.db.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let tmp_url = DbUrl::parse(&format!("sqlite://{}", tmp.display()), &data).expect("url");
        sample::create_member_db(&tmp_url, n, 2026)
            .await
            .expect("create member db");
        std::fs::rename(&tmp, &members_file).expect("rename");
        println!(
            "generated {n} sample members in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let state_file = data.join(format!("state-{n}.db"));
    let _ = std::fs::remove_file(&state_file);
    let state = DbUrl::parse(&format!("sqlite://{}", state_file.display()), &data).expect("url");
    let config = data.join(format!("bench-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            "[state]\nurl = \"{}\"\n[members]\nurl = \"{}\"\nmapping = \"{}\"\n[providers.mailchimp]\napi_key = \"bench-us1\"\n[[audiences]]\nname = \"newsletter\"\nprovider = \"mailchimp\"\nlist_id = \"bench\"\n",
            state.expose(),
            members.expose(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/members.toml").display()
        ),
    )
    .expect("config");
    let app = App::load(&config).expect("config");
    app.migrate().await.expect("migrate");
    app.close().await;

    println!("{n} members:");
    let mut peak = u64::MAX;
    for (label, args) in [
        ("table", vec!["sync", "--dry-run"]),
        ("--json", vec!["sync", "--dry-run", "--json"]),
    ] {
        let r = run_child(&config, &args);
        let (create, skipped) = if label == "--json" {
            let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("report");
            (
                v["created"].as_u64().unwrap_or(0),
                v["skipped_invalid"].as_u64().unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        peak = peak.min(r.peak_kib);
        println!(
            "  {label:<7} wall {:>6.2} s   {:>9.0} members/s   peak RSS {:>6.1} MB{}",
            r.wall.as_secs_f64(),
            n as f64 / r.wall.as_secs_f64(),
            r.peak_kib as f64 / 1024.0,
            if label == "--json" {
                format!("   (would create {create}, skipped invalid {skipped})")
            } else {
                String::new()
            }
        );
    }
    peak
}
