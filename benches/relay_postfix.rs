//! Benchmark: the relay against Postfix's own load generator, through Postfix's `smtp-sink`.
//!
//!     cargo bench --bench relay_postfix                          # 20,000 messages × 5 rounds
//!     BENCH_POSTFIX_N=10000 BENCH_POSTFIX_ROUNDS=3 cargo bench --bench relay_postfix
//!     BENCH_POSTFIX_STATES=sqlite cargo bench --bench relay_postfix   # only the SQLite outbox
//!     BENCH_POSTFIX_NO_PIPELINING=1 cargo bench --bench relay_postfix  # smtp-sink -p: the relay
//!                                          # sends MAIL, RCPT and DATA one at a time, as before
//!
//! One `smtp-sink -c 127.0.0.1:PORT 256` (plain SMTP on loopback, `-u nobody` when run as root;
//! Debian package `postfix`) takes every message of the run; its running counter (`-c`) says
//! when a sender's messages have all arrived. Each round, in turn:
//!
//! 1. mailbridge's relay worker (`run_once`: claim, send over `concurrency` pooled connections,
//!    record every outcome, committed, before the run ends) drains N messages from a fresh SQLite
//!    outbox (the enqueue is timed apart and not counted), its `smtp` route plain SMTP to the sink;
//! 2. `smtp-source -d -s C -m N -l LENGTH` (Postfix's load generator: C sessions, each sending its
//!    messages one after another on one connection, no pipelining), with C the relay's
//!    concurrency and LENGTH the relay's rendered message size;
//! 3. the relay again, from a fresh PostgreSQL outbox (127.0.0.1:5432; skipped when unreachable).
//!
//! The relay's rounds and smtp-source's alternate so that whatever else the machine does falls
//! on both; each relay round's rate is divided by the same round's smtp-source rate and the
//! median of those ratios is reported against the targets (SQLite >= 75%, PostgreSQL >= 60%). A
//! relay round counts from the first claim until `run_once` has returned (every outcome
//! committed) and the sink holds all N. Also prints the CPU time this process and the
//! PostgreSQL server used per relay round, and the machine's load average. Asserts nothing
//! about time; skips (exit 0, with a message) when smtp-sink or smtp-source is missing.

#[path = "../tests/support/mod.rs"]
mod support;

use support::{db, smtp};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `postfix` package puts its test programs; `PATH` is searched too.
const SBIN: &str = "/usr/sbin";

/// A program of Postfix's, found in /usr/sbin or on `PATH`.
fn postfix_tool(name: &str) -> Option<PathBuf> {
    let sbin = Path::new(SBIN).join(name);
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether this process runs as root (smtp-sink then needs `-u` to drop its privileges).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A running `smtp-sink` and the number of messages it has taken so far.
struct PostfixSink {
    child: Child,
    port: u16,
    messages: Arc<AtomicUsize>,
}

impl PostfixSink {
    fn start(program: &Path) -> PostfixSink {
        let port = smtp::free_port();
        let mut cmd = Command::new(program);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        if no_pipelining() {
            cmd.arg("-p");
        }
        let mut child = cmd
            .arg("-c")
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let messages = Arc::new(AtomicUsize::new(0));
        let mut out = child.stdout.take().expect("smtp-sink's stdout");
        let counter = messages.clone();
        // `-c` rewrites one line, `sess=S quit=Q mesg=M\r`, after each session end, QUIT and
        // final `.`: the last complete one holds the count.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\r' || b == b'\n' {
                        if let Some(m) = mesg_count(&line) {
                            counter.store(m, Ordering::SeqCst);
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
        });
        let sink = PostfixSink {
            child,
            port,
            messages,
        };
        sink.wait_listening();
        sink
    }

    /// Polls until the sink accepts connections (bounded).
    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink does not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn count(&self) -> usize {
        self.messages.load(Ordering::SeqCst)
    }

    /// Waits (polling, bounded) until the sink holds `total` messages.
    async fn wait_for(&self, total: usize) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.count() < total {
            assert!(
                Instant::now() < deadline,
                "smtp-sink got {} of {total} messages",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether smtp-sink is told not to offer PIPELINING (`BENCH_POSTFIX_NO_PIPELINING=1`): the
/// relay then waits for each command's reply, as smtp-source always does.
fn no_pipelining() -> bool {
    std::env::var("BENCH_POSTFIX_NO_PIPELINING").is_ok_and(|v| v == "1")
}

/// `mesg=M` from one `-c` counter line.
fn mesg_count(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("mesg="))?
        .parse()
        .ok()
}

const CONCURRENCY: u32 = 4;
const FROM: &str = "club@club.example";

#[derive(Clone, Copy, PartialEq)]
enum State {
    Sqlite,
    Postgres,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Sqlite => "SQLite",
            State::Postgres => "PostgreSQL",
        }
    }
}

/// The relay draining `n` messages from a fresh outbox into `sink`: seconds from the first claim
/// until the run has recorded every outcome and the sink holds them all, and the size of one
/// message as stored (what the relay sends). None when the PostgreSQL server is unreachable.
async fn relay_round(
    state: State,
    round: usize,
    n: usize,
    dir: &Path,
    sink: &PostfixSink,
) -> Option<(f64, usize)> {
    let pg = match state {
        State::Postgres => Some(db::pg_database().await?),
        State::Sqlite => None,
    };
    let state_url = pg.as_ref().map_or_else(
        || format!("sqlite://{}/state-{round}.db", dir.display()),
        |db| db.url.clone(),
    );
    let section = smtp::smtp_section(sink.port, "none", None, None);
    let (app, enqueue_secs) =
        support::relay::bench_outbox(dir, &state_url, &section, CONCURRENCY, n).await;
    let relay = app.relay().expect("[relay]");
    let store = app.migrated_store().await.expect("state");
    let (size,): (i64,) =
        sqlx::query_as("SELECT CAST(LENGTH(raw) AS BIGINT) FROM outbox_bodies LIMIT 1")
            .fetch_one(store.pool())
            .await
            .expect("a stored message");
    let worker = app.relay_worker(store, relay.clone()).expect("worker");
    let before = sink.count();
    let cpu = cpu_now();
    let t = Instant::now();
    let summary = worker.run_once().await.expect("relay");
    sink.wait_for(before + n).await;
    let secs = t.elapsed().as_secs_f64();
    let (own, server) = cpu_since(cpu);
    assert_eq!(summary.sent as usize, n, "{summary:?}");
    let (sent,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE status = 'sent'")
        .fetch_one(store.pool())
        .await
        .expect("count sent");
    assert_eq!(sent as usize, n, "every message recorded as sent");
    println!(
        "    {} relay: CPU {own:.2} s in this process{}; enqueue (not timed) {:.0} msg/s",
        state.label(),
        match state {
            State::Postgres => format!(", {server:.2} s in PostgreSQL"),
            State::Sqlite => String::new(),
        },
        n as f64 / enqueue_secs,
    );
    worker.close().await;
    app.close().await;
    if state == State::Sqlite {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("state-{round}.db{suffix}")));
        }
    }
    Some((secs, usize::try_from(size).unwrap_or(0)))
}

/// `smtp-source -d -s CONCURRENCY -m n -l length` against `sink`: seconds until it has sent them
/// all and the sink holds them.
async fn source_round(program: &Path, n: usize, length: usize, sink: &PostfixSink) -> f64 {
    let before = sink.count();
    let t = Instant::now();
    let status = tokio::process::Command::new(program)
        .args(["-d", "-s", &CONCURRENCY.to_string(), "-m", &n.to_string()])
        .args([
            "-l",
            &length.to_string(),
            "-f",
            FROM,
            "-t",
            "member@example.org",
        ])
        .arg(format!("127.0.0.1:{}", sink.port))
        .stdin(Stdio::null())
        .status()
        .await
        .expect("run smtp-source");
    assert!(status.success(), "smtp-source failed: {status}");
    sink.wait_for(before + n).await;
    t.elapsed().as_secs_f64()
}

/// CPU seconds used so far by this process and by the PostgreSQL server's processes.
fn cpu_now() -> (f64, f64) {
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_secs(&s))
        .unwrap_or(0.0);
    let mut server = 0.0;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let path = p.path();
            if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "postgres")
                && let Some(secs) = std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|s| stat_cpu_secs(&s))
            {
                server += secs;
            }
        }
    }
    (own, server)
}

fn cpu_since(before: (f64, f64)) -> (f64, f64) {
    let now = cpu_now();
    // Server processes that ended in between take their CPU with them: never below zero.
    ((now.0 - before.0).max(0.0), (now.1 - before.1).max(0.0))
}

/// User + system CPU seconds from a /proc `stat` line (utime, stime: fields 14, 15; USER_HZ 100).
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = fields.get(11)?.parse().ok()?;
    let s: f64 = fields.get(12)?.parse().ok()?;
    Some((u + s) / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (Some(sink_program), Some(source_program)) =
        (postfix_tool("smtp-sink"), postfix_tool("smtp-source"))
    else {
        println!(
            "relay_postfix benchmark SKIPPED: Postfix's smtp-sink and smtp-source are not installed (in {SBIN} or on PATH); on Debian: apt-get install -y postfix"
        );
        return;
    };
    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let n = env_num("BENCH_POSTFIX_N", 20_000);
    let rounds = env_num("BENCH_POSTFIX_ROUNDS", 5);
    let states: Vec<State> = std::env::var("BENCH_POSTFIX_STATES")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "sqlite" => Some(State::Sqlite),
            "postgres" => Some(State::Postgres),
            _ => None,
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = PostfixSink::start(&sink_program);
    println!(
        "relay_postfix benchmark: {} on 127.0.0.1 (plain SMTP, PIPELINING {}), {n} messages per sender, {CONCURRENCY} connections, {rounds} rounds; load average before: {}",
        sink_program.display(),
        if no_pipelining() {
            "not offered (-p)"
        } else {
            "offered"
        },
        load_average()
    );
    let mut rates: Vec<(State, Vec<f64>, Vec<f64>)> = states
        .iter()
        .map(|s| (*s, Vec::new(), Vec::new()))
        .collect();
    let mut source_rates = Vec::new();
    // Until the first relay round has stored one, the size of the relay's messages is unknown:
    // the first smtp-source round comes after it.
    let mut length = 0usize;
    let mut skipped_pg = false;
    for round in 0..rounds {
        let mut round_rates: Vec<(State, f64)> = Vec::new();
        let mut source_rate = None;
        for (i, state) in states.iter().enumerate() {
            if *state == State::Postgres && skipped_pg {
                continue;
            }
            match relay_round(*state, round, n, dir.path(), &sink).await {
                Some((secs, size)) => {
                    length = size;
                    round_rates.push((*state, n as f64 / secs));
                }
                None => {
                    skipped_pg = true;
                    println!("    PostgreSQL outbox SKIPPED: no server at 127.0.0.1:5432");
                }
            }
            // smtp-source between the relay's rounds (after the first one).
            if i == 0 {
                let secs = source_round(&source_program, n, length, &sink).await;
                source_rate = Some(n as f64 / secs);
            }
        }
        let Some(source_rate) = source_rate else {
            continue;
        };
        source_rates.push(source_rate);
        let mut line = format!("  round {}: smtp-source {source_rate:.0} msg/s", round + 1);
        for (state, rate) in round_rates {
            if let Some((_, r, ratios)) = rates.iter_mut().find(|(s, ..)| *s == state) {
                r.push(rate);
                ratios.push(rate / source_rate);
            }
            line.push_str(&format!(
                "; relay ({} outbox) {rate:.0} msg/s = {:.0}%",
                state.label(),
                100.0 * rate / source_rate
            ));
        }
        println!("{line}");
    }
    println!(
        "  message {length} bytes as the relay sends it; smtp-source -l {length} (payload, plus its own few headers)"
    );
    if let Some(rate) = median(source_rates) {
        println!("  smtp-source -d -s {CONCURRENCY} (median)            {rate:>9.0} msg/s");
    }
    for (state, r, ratios) in rates {
        let target = match state {
            State::Sqlite => 75,
            State::Postgres => 60,
        };
        if let (Some(rate), Some(ratio)) = (median(r), median(ratios)) {
            println!(
                "  mailbridge relay, {:<10} outbox (median) {rate:>9.0} msg/s; relay / smtp-source = {:.0}% median of rounds (target >= {target}%)",
                state.label(),
                100.0 * ratio
            );
        }
    }
    println!("  load average after: {}", load_average());
}
