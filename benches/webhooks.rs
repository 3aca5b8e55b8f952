//! Benchmark: sustained durable webhook ingest of `mailbridge serve` (issue 5 figures).
//!
//!     cargo bench --bench webhooks                         # SQLite and PostgreSQL state, 30 s each
//!     BENCH_SECS=5 cargo bench --bench webhooks            # shorter runs
//!     BENCH_STATE=sqlite cargo bench --bench webhooks      # one backend only (sqlite | postgres)
//!     BENCH_CONNECTIONS=32                                 # concurrent connections (default 32)
//!
//! The real binary runs `serve` as a child process; this process is the load client on loopback:
//! N connections, each sending one Mailchimp `unsubscribe` delivery after another (form body as
//! Mailchimp sends it, signed with the list's signing secret as a webhook that `sync` registered
//! is, every event distinct so each one is a new row committed before its 200).
//! Prints events/s, latency percentiles and the CPU time per event of the server and of this load
//! client (they share the machine's cores), beside the previous figures and issue 26's targets,
//! then checks that every acknowledged event is in the state DB. PostgreSQL: a fresh database on
//! `MAILBRIDGE_TEST_PG` (default the local server). The load average at the start is printed: on a
//! busy machine the wall-clock figures are low, the CPU per event much less so.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

#[allow(dead_code)] // this bench reads only the CPU time
mod support;

const SECRET: &str = "bench-secret-0123456789";
/// The audience's webhook signing secret: deliveries are verified (HMAC-SHA256) before parsing.
const SIGNING: &str = "bench-signing-secret";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write_config(dir: &Path, state_url: &str, port: u16) -> std::path::PathBuf {
    let members = dir.join("members.db");
    std::fs::File::create(&members).expect("members file");
    let conn = rusqlite::Connection::open(&members).expect("open members");
    conn.execute_batch(mailbridge::demo::sample::schema_sql(
        mailbridge::config::DbKind::Sqlite,
    ))
    .expect("schema");
    let path = dir.join("mailbridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"[state]
url = "{state_url}"

[members]
url = "sqlite://{members}"
mapping = "{mapping}"

[providers.mailchimp]
api_key = "bench-key"
base_url = "http://127.0.0.1:9/3.0"

[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "benchlist"
webhook_signing_secret = "{SIGNING}"

[server]
bind = "127.0.0.1:{port}"
webhook_secret = "{SECRET}"
"#,
            members = members.display(),
            mapping = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/members.toml"),
        ),
    )
    .expect("write config");
    path
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Figures {
    events: u64,
    errors: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    stored: i64,
    peak_kib: u64,
    /// Server and load client CPU seconds during the load.
    server_cpu: f64,
    client_cpu: f64,
}

/// What a backend did before (issue 26's baseline) and what it must do.
struct Bar {
    previous: &'static str,
    target: &'static str,
    min_rate: Option<f64>,
    max_p99_ms: Option<f64>,
}

const SQLITE: Bar = Bar {
    previous: "5,400 events/s, p99 17.7 ms",
    target: ">= 10,000 events/s, p99 <= 10 ms",
    min_rate: Some(10_000.0),
    max_p99_ms: Some(10.0),
};

const POSTGRES: Bar = Bar {
    previous: "not recorded",
    target: "printed only (issue 26 sets no figure)",
    min_rate: None,
    max_p99_ms: None,
};

async fn load(url: String, connections: usize, secs: u64) -> (Vec<u32>, u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (url, stop, errors) = (url.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // One client per task: one keep-alive connection each.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut latencies = Vec::with_capacity(200_000);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let email = format!("reader{c}-{i}@example.org");
                let body = serde_urlencoded::to_string([
                    ("type", "unsubscribe"),
                    ("fired_at", "2026-11-28 10:00:00"),
                    ("data[action]", "unsub"),
                    ("data[reason]", "manual"),
                    ("data[id]", "8a25ff1d98"),
                    ("data[list_id]", "benchlist"),
                    ("data[email]", email.as_str()),
                    ("data[email_type]", "html"),
                    ("data[ip_opt]", "10.20.10.30"),
                    ("data[campaign_id]", "cb398d21d2"),
                    ("data[merges][EMAIL]", email.as_str()),
                    ("data[merges][FNAME]", "Reader"),
                    ("data[merges][LNAME]", "Example"),
                ])
                .expect("form");
                let t = Instant::now();
                let signature = mailbridge::providers::mailchimp::webhook::mailchimp_signature(
                    SIGNING.as_bytes(),
                    chrono::Utc::now().timestamp(),
                    body.as_bytes(),
                );
                let ok = http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-mailchimp-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push(t.elapsed().as_micros() as u32);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    (all, errors.load(Ordering::Relaxed), elapsed)
}

fn start_server(config: &Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("MAILBRIDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mailbridge serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

async fn run(state_url: &str, dir: &Path, connections: usize, secs: u64) -> Figures {
    let port = free_port();
    let config = write_config(dir, state_url, port);
    let mut child = start_server(&config, port);
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}/webhooks/mailchimp/{SECRET}");
    let cpu = |pid: u32| support::cpu_secs(pid).unwrap_or(0.0);
    let (server_before, client_before) = (cpu(pid), cpu(std::process::id()));
    let (mut lat, errors, elapsed) = load(url, connections, secs).await;
    let (server_cpu, client_cpu) = (
        cpu(pid) - server_before,
        cpu(std::process::id()) - client_before,
    );
    let peak_kib = vm_hwm_kib(pid);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)))
    };
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(state_url)
        .await
        .expect("state DB");
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM provider_events")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    Figures {
        events: lat.len() as u64,
        errors,
        secs: elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat
            .last()
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us))),
        stored,
        peak_kib,
        server_cpu,
        client_cpu,
    }
}

fn print(name: &str, f: &Figures, bar: &Bar) {
    let rate = f.events as f64 / f.secs;
    let p99_ms = f.p99.as_secs_f64() * 1e3;
    let per_event_us = |cpu: f64| cpu * 1e6 / (f.events.max(1) as f64);
    println!(
        "{name:<10} {:>9} events in {:>5.1} s = {rate:>7.0} events/s   p50 {:>6.2} ms   p99 {p99_ms:>6.2} ms   max {:>7.2} ms   errors {}   stored {}   server peak RSS {:.1} MiB",
        f.events,
        f.secs,
        f.p50.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
        f.errors,
        f.stored,
        f.peak_kib as f64 / 1024.0
    );
    println!(
        "{:<10} CPU per event: server {:.0} us, load client {:.0} us ({:.2} + {:.2} cores busy)",
        "",
        per_event_us(f.server_cpu),
        per_event_us(f.client_cpu),
        f.server_cpu / f.secs,
        f.client_cpu / f.secs,
    );
    let met = match (bar.min_rate, bar.max_p99_ms) {
        (Some(r), Some(p)) if rate >= r && p99_ms <= p => "  [met]",
        (Some(_), Some(_)) => "  [NOT met]",
        _ => "",
    };
    println!(
        "{:<10} previous: {}   target: {}{met}",
        "", bar.previous, bar.target
    );
    assert!(
        f.stored >= f.events as i64,
        "{name}: {} acknowledged but only {} stored",
        f.events,
        f.stored
    );
}

async fn pg_state() -> Option<(String, String, String)> {
    let admin = std::env::var("MAILBRIDGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.ok()?;
    let name = format!("mbbench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await
    .ok()?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .ok()?;
    let (base, _) = admin.rsplit_once('/')?;
    Some((format!("{base}/{name}"), admin, name))
}

#[tokio::main]
async fn main() {
    let secs: u64 = env_or("BENCH_SECS", 30);
    let connections: usize = env_or("BENCH_CONNECTIONS", 32);
    let which = std::env::var("BENCH_STATE").unwrap_or_default();
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "webhook ingest: {connections} connections, {secs} s per backend, loopback, release build; load average at start {} on {} cores",
        load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    if which.is_empty() || which == "sqlite" {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        let f = run(&state, dir.path(), connections, secs).await;
        print("sqlite", &f, &SQLITE);
    }
    if which.is_empty() || which == "postgres" {
        match pg_state().await {
            Some((url, admin, name)) => {
                let dir = tempfile::tempdir().expect("tempdir");
                let f = run(&url, dir.path(), connections, secs).await;
                print("postgres", &f, &POSTGRES);
                if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            }
            None => println!("postgres   skipped: no PostgreSQL at MAILBRIDGE_TEST_PG"),
        }
    }
}
