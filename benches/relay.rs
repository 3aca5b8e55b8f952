//! Benchmark: transactional mail throughput against a loopback SMTP sink that, like a real
//! smarthost, requires STARTTLS and AUTH (PLAIN/LOGIN), with an RSA-2048 certificate.
//!
//!     cargo bench --bench relay                              # 5,000 messages, in-process mailin-embedded sink
//!     BENCH_RELAY_N=20000 cargo bench --bench relay
//!     BENCH_RELAY_SINK=aiosmtpd cargo bench --bench relay    # the Python aiosmtpd sink of the tests instead
//!
//! The default sink is mailin-embedded in this process (a thread per session): aiosmtpd spends
//! ~10 ms of Python per message, which hides every client-side difference.
//!
//! Three senders in the same run, each against its own fresh sink:
//! 1. mailbridge: N messages enqueued into a SQLite outbox (not timed), then the relay worker
//!    (`run_once`: claim, send over the pooled connections, record each outcome) drains it;
//! 2. a per-message sender: a new connection per message (connect, STARTTLS, AUTH, send, QUIT),
//!    which is what PHP `mail()` through a sendmail binary amounts to, with the same concurrency;
//! 3. a bare pooled client: the same number of connections, opened the same way, sending the same
//!    bytes and doing nothing else (the ceiling for this sink and client);
//! 4. for reference, lettre's own pooled transport, whose sockets lack TCP_NODELAY (see
//!    `src/relay/routes/smtp.rs`).
//!
//! Prints messages/s and the ratios against the targets (≥ 5× the per-message sender, ≥ 80% of the
//! bare pooled client); asserts nothing about time.

#[path = "../tests/smtp/mod.rs"]
mod smtp;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mailbridge::config::Config;
use mailbridge::relay::{NewMessage, Worker, outbox};
use mailbridge::store::{OpenMode, Store};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig, response};
use smtp::{Certs, Sink, SinkOptions};

const USER: &str = "ac12345";
const PASS: &str = "bench-pw";
const CONCURRENCY: u32 = 4;

/// A sink: requires STARTTLS (AUTH is offered only after it) and AUTH; counts accepted messages.
enum BenchSink {
    Mailin { port: u16, count: Arc<AtomicUsize> },
    Aiosmtpd(Sink),
}

#[derive(Clone)]
struct Counting {
    count: Arc<AtomicUsize>,
}

impl Handler for Counting {
    fn auth_plain(&mut self, _authz: &str, authn: &str, password: &str) -> Response {
        if authn == USER && password == PASS {
            response::AUTH_OK
        } else {
            response::INVALID_CREDENTIALS
        }
    }

    fn auth_login(&mut self, username: &str, password: &str) -> Response {
        self.auth_plain("", username, password)
    }

    fn data_end(&mut self) -> Response {
        self.count.fetch_add(1, Ordering::SeqCst);
        response::OK
    }
}

impl BenchSink {
    fn start(dir: &std::path::Path, certs: &Certs, aiosmtpd: bool) -> BenchSink {
        if aiosmtpd {
            return BenchSink::Aiosmtpd(Sink::start(
                dir,
                Some(certs),
                &SinkOptions {
                    starttls: true,
                    auth: Some((USER.into(), PASS.into())),
                    ..Default::default()
                },
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let port = listener.local_addr().expect("sink address").port();
        let count = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new(Counting {
            count: count.clone(),
        });
        server
            .with_name("localhost")
            .with_ssl(SslConfig::SelfSigned {
                cert_path: certs.cert.display().to_string(),
                key_path: certs.key.display().to_string(),
            })
            .expect("sink TLS")
            .with_num_threads(16)
            .with_auth(AuthMechanism::Plain)
            .with_auth(AuthMechanism::Login)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        BenchSink::Mailin { port, count }
    }

    fn port(&self) -> u16 {
        match self {
            BenchSink::Mailin { port, .. } => *port,
            BenchSink::Aiosmtpd(s) => s.port,
        }
    }

    fn count(&self) -> usize {
        match self {
            BenchSink::Mailin { count, .. } => count.load(Ordering::SeqCst),
            BenchSink::Aiosmtpd(s) => s.count(),
        }
    }
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
        b = b.pool_config(PoolConfig::new().max_size(1));
    }
    b.build()
}

/// A client connection as the relay opens it (TCP_NODELAY, EHLO, STARTTLS, AUTH PLAIN), through
/// lettre's connection API.
async fn connect(port: u16, certs: &Certs) -> AsyncSmtpConnection {
    let ca = Certificate::from_pem(&std::fs::read(&certs.ca).expect("read CA")).expect("CA");
    let tls = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(ca)
        .build_rustls()
        .expect("TLS");
    let hello = ClientId::default();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
        .await
        .expect("EHLO");
    conn.starttls(tls, &hello).await.expect("STARTTLS");
    conn.auth(
        &[Mechanism::Plain],
        &Credentials::new(USER.into(), PASS.into()),
    )
    .await
    .expect("AUTH");
    conn
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

async fn wait_all(sink: &BenchSink, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count() < n {
        assert!(
            Instant::now() < deadline,
            "the sink got {} of {n}",
            sink.count()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let aiosmtpd = std::env::var("BENCH_RELAY_SINK").is_ok_and(|v| v == "aiosmtpd");
    if aiosmtpd && !smtp::aiosmtpd_available() {
        eprintln!("BENCH_RELAY_SINK=aiosmtpd needs aiosmtpd: python3 -m pip install aiosmtpd");
        std::process::exit(1);
    }
    let n: usize = std::env::var("BENCH_RELAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if aiosmtpd { 2000 } else { 5000 });
    let n_single = (n / 5).max(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = smtp::certs_rsa(dir.path());
    let sink = |dir: &std::path::Path, certs: &Certs| BenchSink::start(dir, certs, aiosmtpd);

    // 1. mailbridge's relay worker draining a SQLite outbox.
    let relay_sink = sink(dir.path(), &certs);
    let section = smtp::smtp_section(
        relay_sink.port(),
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
    let port = single_sink.port();
    let t = Instant::now();
    futures::stream::iter(0..n_single)
        .for_each_concurrent(CONCURRENCY as usize, |i| {
            let raw = &sample_raw;
            let certs = &certs;
            async move {
                let mut conn = connect(port, certs).await;
                conn.send(&envelope(i), raw)
                    .await
                    .expect("per-message send");
                conn.quit().await.expect("QUIT");
            }
        })
        .await;
    wait_all(&single_sink, n_single).await;
    let single_secs = t.elapsed().as_secs_f64();
    drop(single_sink);

    // 3. A bare pooled client: CONCURRENCY open connections, each sending its share in turn.
    let pooled_sink = sink(dir.path(), &certs);
    let port = pooled_sink.port();
    let t = Instant::now();
    futures::future::join_all((0..CONCURRENCY as usize).map(|slot| {
        let raw = &sample_raw;
        let certs = &certs;
        async move {
            let mut conn = connect(port, certs).await;
            for i in (slot..n).step_by(CONCURRENCY as usize) {
                conn.send(&envelope(i), raw).await.expect("pooled send");
            }
            conn.quit().await.expect("QUIT");
        }
    }))
    .await;
    wait_all(&pooled_sink, n).await;
    let pooled_secs = t.elapsed().as_secs_f64();
    drop(pooled_sink);

    // 4. For reference: lettre's own pooled transport (its sockets lack TCP_NODELAY).
    let lettre_sink = sink(dir.path(), &certs);
    let tr = transport(lettre_sink.port(), &certs, true);
    let t = Instant::now();
    futures::stream::iter(0..n_single)
        .for_each_concurrent(CONCURRENCY as usize, |i| {
            let tr = &tr;
            let raw = &sample_raw;
            async move {
                tr.send_raw(&envelope(i), raw)
                    .await
                    .expect("lettre pooled send");
            }
        })
        .await;
    wait_all(&lettre_sink, n_single).await;
    let lettre_secs = t.elapsed().as_secs_f64();
    tr.shutdown().await;
    drop(lettre_sink);

    let relay_rate = n as f64 / relay_secs;
    let single_rate = n_single as f64 / single_secs;
    let pooled_rate = n as f64 / pooled_secs;
    println!(
        "relay benchmark: {} sink on loopback requiring STARTTLS + AUTH (RSA-2048 certificate), concurrency {CONCURRENCY}, message {} bytes",
        if aiosmtpd {
            "aiosmtpd"
        } else {
            "in-process mailin-embedded"
        },
        sample_raw.len()
    );
    println!(
        "  mailbridge relay (SQLite outbox, pooled) {n:>6} msgs {relay_secs:>8.2} s {relay_rate:>9.1} msg/s"
    );
    println!(
        "  per-message connection sender            {n_single:>6} msgs {single_secs:>8.2} s {single_rate:>9.1} msg/s"
    );
    println!(
        "  bare pooled client (same connections)    {n:>6} msgs {pooled_secs:>8.2} s {pooled_rate:>9.1} msg/s"
    );
    println!(
        "  lettre's pooled transport (no NODELAY)   {n_single:>6} msgs {lettre_secs:>8.2} s {:>9.1} msg/s",
        n_single as f64 / lettre_secs
    );
    println!(
        "  relay / per-message = {:.1}x (target >= 5x); relay / bare pooled = {:.0}% (target >= 80%)",
        relay_rate / single_rate,
        100.0 * relay_rate / pooled_rate
    );
}
