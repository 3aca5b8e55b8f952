//! Shared by the benchmarks: run the real `mailbridge` binary as a child and measure its wall
//! time and peak RSS (VmHWM sampled every 20 ms from /proc).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailbridge::config::DbUrl;
use mailbridge::demo::sample;
use sqlx::Connection;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one run of the binary took.
pub struct ChildRun {
    pub wall: Duration,
    pub peak_kib: u64,
    #[allow(dead_code)] // read by the sync bench, not by the dry-run bench
    pub code: Option<i32>,
    /// User + system CPU seconds, as last sampled before it exited.
    #[allow(dead_code)] // read by the Constant Contact and sync benches
    pub cpu_secs: f64,
    pub stdout: String,
}

/// utime + stime of `pid` in seconds (fields 14 and 15 of /proc/PID/stat; USER_HZ = 100).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Runs `mailbridge --config CONFIG ARGS…` to completion (blocking).
pub fn run_child(config: &Path, args: &[&str]) -> ChildRun {
    run_child_bin(Path::new(env!("CARGO_BIN_EXE_mailbridge")), config, args)
}

/// Runs `BIN --config CONFIG ARGS…` to completion (blocking): another build of mailbridge, for
/// A/B runs on the same data.
pub fn run_child_bin(bin: &Path, config: &Path, args: &[&str]) -> ChildRun {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MAILBRIDGE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mailbridge");
    let pid = child.id();
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).expect("read stdout");
        s
    });
    let mut peak = 0;
    let mut cpu = 0.0;
    let code = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(secs) = cpu_secs(pid) {
            cpu = secs;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed();
    ChildRun {
        wall,
        peak_kib: peak,
        code,
        cpu_secs: cpu,
        stdout: reader.join().expect("reader"),
    }
}

/// A member DB of `n` sample members, all valid, unique and consenting (cached).
#[allow(dead_code)] // not every bench reads members
pub async fn members_db(data: &Path, n: u64) -> DbUrl {
    let file = data.join(format!("sync-members-{n}.db"));
    let url = DbUrl::parse(&format!("sqlite://{}", file.display()), data).expect("url");
    if !file.exists() {
        let t = Instant::now();
        let tmp = data.join(format!("sync-members-{n}.db.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let tmp_url = DbUrl::parse(&format!("sqlite://{}", tmp.display()), data).expect("url");
        sample::create_member_db(&tmp_url, n, 2026)
            .await
            .expect("create member db");
        let mut conn = sqlx::SqliteConnection::connect(tmp_url.expose())
            .await
            .expect("open");
        sqlx::query(
            "UPDATE members SET email = 'member' || id || '@example.org', newsletter = 1, email_status = 'ok',
               membership = CASE WHEN membership = 'lapsed' THEN 'full' ELSE membership END",
        )
        .execute(&mut conn)
        .await
        .expect("normalise");
        conn.close().await.expect("close");
        std::fs::rename(&tmp, &file).expect("rename");
        println!(
            "  (generated {n} members in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    url
}
