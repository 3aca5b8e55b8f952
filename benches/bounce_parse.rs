//! Benchmark: `bounces::parse` over the whole bounce corpus (`tests/data/bounce-corpus/emails`)
//! on one thread, the corpus repeated until at least `BENCH_SECS` (default 2) seconds of work.
//! Prints messages/s and MB/s (issue 18's target: at least 2,000 messages/s on one core).
//!
//!     cargo bench --bench bounce_parse
//!     BENCH_SECS=10 cargo bench --bench bounce_parse

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounce-corpus/emails");
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("the bounce corpus")
        .map(|e| std::fs::read(e.expect("a corpus entry").path()).expect("a corpus file"))
        .collect();
    corpus.sort();
    let bytes_per_pass: usize = corpus.iter().map(Vec::len).sum();
    // One untimed pass: the phrase tables are compiled on first use.
    for m in &corpus {
        black_box(mailbridge::bounces::parse(m));
    }
    let started = Instant::now();
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let mut recipients = 0u64;
    while started.elapsed() < Duration::from_secs_f64(secs) {
        for m in &corpus {
            let report = mailbridge::bounces::parse(black_box(m));
            recipients += report.recipients.len() as u64;
        }
        messages += corpus.len() as u64;
        bytes += bytes_per_pass as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "bounce parse: {} messages ({} files, {:.1} KiB per pass) in {:.2} s on one thread",
        messages,
        corpus.len(),
        bytes_per_pass as f64 / 1024.0,
        elapsed
    );
    println!(
        "  {:.0} messages/s, {:.1} MB/s, {} recipients reported",
        messages as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
        recipients
    );
}
