//! Benchmark: transactional mail throughput against a loopback SMTP sink that, like a real
//! smarthost, requires STARTTLS and AUTH (aiosmtpd, tests/smtp/sink.py).
//!
//!     cargo bench --bench relay                         # 2,000 messages (400 for the per-message sender)
//!     BENCH_RELAY_N=5000 cargo bench --bench relay
//!
//! Three senders in the same run, each against its own fresh sink:
//! 1. mailbridge: N messages enqueued into a SQLite outbox (not timed), then the relay worker
//!    (`run_once`: claim, send over the pooled connections, record each outcome) drains it;
//! 2. a per-message sender: a new connection per message (connect, STARTTLS, AUTH, send, QUIT),
//!    which is what PHP `mail()` through a sendmail binary amounts to, with the same concurrency;
//! 3. a bare pooled lettre client with the same pool size sending the same bytes and doing nothing
//!    else (the ceiling for this sink and client).
//!
//! Prints messages/s and the ratios against the targets (≥ 5× the per-message sender, ≥ 80% of the
//! bare pooled client); asserts nothing about time.

#[path = "../tests/smtp/mod.rs"]
mod smtp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mailbridge::config::Config;
use mailbridge::relay::{NewMessage, Worker, outbox};
use mailbridge::store::{OpenMode, Store};
use smtp::{Certs, Sink, SinkOptions};

const USER: &str = "ac12345";
const PASS: &str = "bench-pw";
const CONCURRENCY: u32 = 4;

fn sink(dir: &std::path::Path, certs: &Certs) -> Sink {
    Sink::start(
        dir,
        Some(certs),
        &SinkOptions {
            starttls: true,
            auth: Some((USER.into(), PASS.into())),
            ..Default::default()
        },
    )
}

fn transport(port: u16, certs: &Certs, pool: bool) -> AsyncSmtpTransport<Tokio1Executor> {
    let ca = Certificate::from_pem(&std::fs::read(&certs.ca).expect("read CA")).expect("CA");
    let tls = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(ca)
        .build_rustls()
        .expect("TLS");
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(USER.into(), PASS.into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(30)));
    if pool {
        b = b.pool_config(PoolConfig::new().max_size(CONCURRENCY));
    } else {
        // One use per transport: a pool of at most one connection, shut down after the message.
        b = b.pool_config(PoolConfig::new().max_size(1));
    }
    b.build()
}

fn message(i: usize) -> NewMessage {
    NewMessage {
        to: format!("member{i}@example.org"),
        subject: format!("Confirm your registration #{i}"),
        text: format!(
            "Hello member {i},\n\nplease confirm your registration: https://club.example/confirm/{i:08x}\n\nRiverside Rowing Club\n"
        ),
        html: Some(format!(
            "<p>Hello member {i},</p><p><a href=\"https://club.example/confirm/{i:08x}\">Confirm</a></p>"
        )),
        reply_to: None,
        headers: Default::default(),
        category: "registration".into(),
    }
}

async fn wait_all(sink: &Sink, n: usize) {
    sink.wait_for_async(n, Duration::from_secs(600)).await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !smtp::aiosmtpd_available() {
        eprintln!("the relay benchmark needs aiosmtpd: python3 -m pip install aiosmtpd");
        std::process::exit(1);
    }
    let n: usize = std::env::var("BENCH_RELAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let n_single = (n / 5).max(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = smtp::certs(dir.path());

    // 1. mailbridge's relay worker draining a SQLite outbox.
    let relay_sink = sink(dir.path(), &certs);
    let section = smtp::smtp_section(
        relay_sink.port,
        "starttls",
        Some(&certs),
        Some((USER, PASS)),
    );
    let config_path = smtp::relay_config(
        dir.path(),
        "sqlite://bench-state.db",
        &format!("routes = [\"smtp\"]\nconcurrency = {CONCURRENCY}\n{section}"),
    );
    let config = Config::load(&config_path).expect("config");
    let relay = Arc::new(config.relay.clone().expect("[relay]"));
    let store = Store::open(&config.state.url, OpenMode::ReadWrite)
        .await
        .expect("state");
    store.migrate().await.expect("migrate");
    let mut sample_raw = Vec::new();
    for i in 0..n {
        outbox::enqueue(&store, &relay, &message(i))
            .await
            .expect("enqueue");
    }
    let (raw,): (Vec<u8>,) = sqlx::query_as("SELECT raw FROM outbox LIMIT 1")
        .fetch_one(store.pool())
        .await
        .expect("raw");
    sample_raw.extend(raw);
    let worker = Worker::new(store.clone(), relay.clone()).expect("worker");
    let t = Instant::now();
    let summary = worker.run_once().await.expect("relay");
    wait_all(&relay_sink, n).await;
    let relay_secs = t.elapsed().as_secs_f64();
    assert_eq!(summary.sent as usize, n, "{summary:?}");
    drop(relay_sink);
    store.close().await;

    let envelope = |i: usize| {
        Envelope::new(
            Some("club@club.example".parse().expect("from")),
            vec![format!("member{i}@example.org").parse().expect("to")],
        )
        .expect("envelope")
    };

    // 2. One connection per message (connect, STARTTLS, AUTH, send, QUIT).
    let single_sink = sink(dir.path(), &certs);
    let port = single_sink.port;
    let t = Instant::now();
    futures::stream::iter(0..n_single)
        .for_each_concurrent(CONCURRENCY as usize, |i| {
            let raw = &sample_raw;
            let certs = &certs;
            async move {
                let tr = transport(port, certs, false);
                tr.send_raw(&envelope(i), raw)
                    .await
                    .expect("per-message send");
                tr.shutdown().await;
            }
        })
        .await;
    wait_all(&single_sink, n_single).await;
    let single_secs = t.elapsed().as_secs_f64();
    drop(single_sink);

    // 3. A bare pooled client.
    let pooled_sink = sink(dir.path(), &certs);
    let tr = transport(pooled_sink.port, &certs, true);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY as usize, |i| {
            let tr = &tr;
            let raw = &sample_raw;
            async move {
                tr.send_raw(&envelope(i), raw).await.expect("pooled send");
            }
        })
        .await;
    wait_all(&pooled_sink, n).await;
    let pooled_secs = t.elapsed().as_secs_f64();
    tr.shutdown().await;
    drop(pooled_sink);

    let relay_rate = n as f64 / relay_secs;
    let single_rate = n_single as f64 / single_secs;
    let pooled_rate = n as f64 / pooled_secs;
    println!(
        "relay benchmark: aiosmtpd sink on loopback requiring STARTTLS + AUTH PLAIN, concurrency {CONCURRENCY}, message {} bytes",
        sample_raw.len()
    );
    println!(
        "  mailbridge relay (SQLite outbox, pooled) {n:>6} msgs {relay_secs:>8.2} s {relay_rate:>9.1} msg/s"
    );
    println!(
        "  per-message connection sender            {n_single:>6} msgs {single_secs:>8.2} s {single_rate:>9.1} msg/s"
    );
    println!(
        "  bare pooled lettre client                {n:>6} msgs {pooled_secs:>8.2} s {pooled_rate:>9.1} msg/s"
    );
    println!(
        "  relay / per-message = {:.1}x (target >= 5x); relay / bare pooled = {:.0}% (target >= 80%)",
        relay_rate / single_rate,
        100.0 * relay_rate / pooled_rate
    );
}
