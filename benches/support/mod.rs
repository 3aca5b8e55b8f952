//! Shared by the benchmarks: run the real `mailbridge` binary as a child and measure its wall
//! time and peak RSS (VmHWM sampled every 20 ms from /proc).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    pub stdout: String,
}

/// Runs `mailbridge --config CONFIG ARGS…` to completion (blocking).
pub fn run_child(config: &Path, args: &[&str]) -> ChildRun {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
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
    let code = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
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
        stdout: reader.join().expect("reader"),
    }
}
