//! The relay's test environment: a state DB, a config with `[relay]` (whatever stand-ins its
//! lines name written to the environment's directory), the store opened through the [`App`] on the
//! system clock or on a [`ManualClock`] the test moves, and the helpers every relay test repeats
//! (enqueue, one pass of a worker, a message's status, the relay's counters).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use mailbridge::app::App;
use mailbridge::clock::ManualClock;
use mailbridge::relay::outbox::{self, Enqueued, MessageStatus};
use mailbridge::relay::{NewMessage, RunSummary, Worker};

use super::app::{RelayParts, load_config};

/// A relay on one state DB, in a directory of its own.
pub struct Env {
    _dir: tempfile::TempDir,
    /// The directory the config, the stand-ins and their logs live in.
    pub dir: PathBuf,
    pub app: RelayParts,
    /// The store's clock, when the environment was started on a manual one.
    manual: Option<Arc<ManualClock>>,
    /// What [`Env::enqueue`] sends, but for the recipient.
    message: NewMessage,
}

impl std::ops::Deref for Env {
    type Target = RelayParts;
    fn deref(&self) -> &RelayParts {
        &self.app
    }
}

impl Env {
    /// A relay on `state_url` whose `[relay]` lines (after `from`) are `relay(dir)`: the closure
    /// writes any stand-in the lines name into `dir`. The store runs on a manual clock standing at
    /// `clock` (see [`Env::clock`]), or on the system clock when `clock` is `None`.
    pub async fn start(
        state_url: &str,
        clock: Option<DateTime<Utc>>,
        relay: impl FnOnce(&Path) -> String,
    ) -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let lines = relay(tmp.path());
        Env::in_dir(tmp, state_url, clock, &lines).await
    }

    /// [`Env::start`] in `dir`, which the test has prepared, with these `[relay]` lines.
    pub async fn in_dir(
        dir: tempfile::TempDir,
        state_url: &str,
        clock: Option<DateTime<Utc>>,
        relay_lines: &str,
    ) -> Env {
        let path = dir.path().to_owned();
        let config = super::smtp::relay_config(&path, state_url, relay_lines);
        let mut app = App::new(load_config(&config));
        let manual = clock.map(ManualClock::new);
        if let Some(clock) = &manual {
            app = app.with_clock(clock.clone());
        }
        Env {
            _dir: dir,
            dir: path,
            app: RelayParts::open_app(app).await,
            manual,
            message: message("Welcome", "Welcome to the club.\n", "registration"),
        }
    }

    /// [`Env::enqueue`] sends this subject, text and category from now on.
    pub fn with_message(mut self, subject: &str, text: &str, category: &str) -> Env {
        self.message = message(subject, text, category);
        self
    }

    /// The manual clock the store runs on (panics when it runs on the system clock).
    pub fn clock(&self) -> &ManualClock {
        self.manual
            .as_deref()
            .expect("the environment was started on a manual clock")
    }

    /// Queues the environment's message to `to`.
    pub async fn enqueue(&self, to: &str) -> Enqueued {
        self.enqueue_message(&NewMessage {
            to: to.into(),
            ..self.message.clone()
        })
        .await
    }

    pub async fn enqueue_message(&self, msg: &NewMessage) -> Enqueued {
        outbox::enqueue(&self.store, &self.relay, msg)
            .await
            .expect("enqueue")
    }

    /// `relay --once` on a worker of its own, closed after the pass.
    pub async fn run_once(&self) -> RunSummary {
        run_closing(self.worker()).await
    }

    pub async fn status(&self, id: &str) -> MessageStatus {
        outbox::get(&self.store, id)
            .await
            .expect("read the status")
            .expect("the message exists")
    }

    /// Creates the file `name` in the environment's directory (a stand-in's switch).
    pub fn touch(&self, name: &str) {
        std::fs::write(self.dir.join(name), "").expect("create the switch file");
    }

    /// Removes the file `name` from the environment's directory.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).expect("remove the switch file");
    }

    /// The lines of the file `name` in the environment's directory (none when it is missing).
    pub fn lines(&self, name: &str) -> Vec<String> {
        lines(&self.dir.join(name))
    }
}

/// One pass of `worker`, which is closed afterwards.
pub async fn run_closing(worker: Worker) -> RunSummary {
    let summary = worker.run_once().await.expect("relay run");
    worker.close().await;
    summary
}

/// A relay whose one route is the STARTTLS+AUTH test smarthost, on SQLite state in `dir` with
/// `lease_secs` leases and 4 messages in flight, holding `n` queued registration mails
/// ([`queue_registrations`]): what the crash and shutdown tests drain with a real `relay` process.
pub struct SmarthostDrain {
    pub sink: super::smtp::Sink,
    pub config_path: PathBuf,
    pub relay: Arc<mailbridge::config::RelayConfig>,
    pub store: mailbridge::store::Store,
    /// The queued mails' Message-IDs, in order.
    pub expected: Vec<String>,
}

impl SmarthostDrain {
    pub async fn queue(dir: &Path, lease_secs: u64, n: usize) -> SmarthostDrain {
        let certs = super::smtp::certs(dir);
        let (sink, section) = super::smtp::smarthost(
            dir,
            &certs,
            ("ac12345", "pw"),
            super::smtp::SinkOptions::default(),
        );
        let config_path = super::smtp::relay_config(
            dir,
            "sqlite://state.db",
            &format!("routes = [\"smtp\"]\nlease_secs = {lease_secs}\nconcurrency = 4\n{section}"),
        );
        let RelayParts { relay, store, .. } = RelayParts::open(&config_path).await;
        let expected = queue_registrations(&store, &relay, n)
            .await
            .into_iter()
            .map(|q| q.message_id)
            .collect();
        SmarthostDrain {
            sink,
            config_path,
            relay,
            store,
            expected,
        }
    }
}

/// Queues `n` registration mails, to member0@example.org, member1@example.org, … in that order,
/// on `store` as `relay` says; returns what enqueue answered for each.
pub async fn queue_registrations(
    store: &mailbridge::store::Store,
    relay: &mailbridge::config::RelayConfig,
    n: usize,
) -> Vec<Enqueued> {
    let mut queued = Vec::with_capacity(n);
    for i in 0..n {
        let msg = NewMessage {
            to: format!("member{i}@example.org"),
            subject: format!("Registration {i}"),
            text: format!("Welcome, member {i}.\n"),
            html: None,
            reply_to: None,
            headers: Default::default(),
            category: "registration".into(),
        };
        queued.push(
            outbox::enqueue(store, relay, &msg)
                .await
                .expect("queue a registration mail"),
        );
    }
    queued
}

/// A message with this subject, text and category, to `to`.
pub fn message(subject: &str, text: &str, category: &str) -> NewMessage {
    NewMessage {
        to: String::new(),
        subject: subject.into(),
        text: text.into(),
        html: None,
        reply_to: None,
        headers: Default::default(),
        category: category.into(),
    }
}

/// The lines of the file at `path` (none when it is missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The value of the counter `series` (name and labels, as rendered) in this process's
/// `/metrics`, or 0 when it has not been counted yet.
pub fn counter(series: &str) -> f64 {
    mailbridge::http::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The relay benchmarks' message `i`: a registration confirmation of about 840 bytes as sent.
pub fn bench_message(i: usize) -> NewMessage {
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

/// The relay benchmarks' setup: an app on `state_url` whose `[relay]` sends over the route
/// `section` with `concurrency` connections, with `n` [`bench_message`]s queued one commit each;
/// and the seconds the enqueue took (kept out of the relay's time).
pub async fn bench_outbox(
    dir: &Path,
    state_url: &str,
    section: &str,
    concurrency: u32,
    n: usize,
) -> (App, f64) {
    let config_path = super::smtp::relay_config(
        dir,
        state_url,
        &format!("routes = [\"smtp\"]\nconcurrency = {concurrency}\n{section}"),
    );
    let app = App::load(&config_path).expect("config");
    let relay = app.relay().expect("[relay]");
    let store = app.migrated_store().await.expect("state");
    let t = std::time::Instant::now();
    for i in 0..n {
        outbox::enqueue(store, &relay, &bench_message(i))
            .await
            .expect("enqueue");
    }
    let secs = t.elapsed().as_secs_f64();
    (app, secs)
}
