//! A stateful local stand-in for the Mailchimp Marketing API v3 (under `/3.0`) and Constant Contact
//! V3 (under `/v3`, its OAuth server under `/oauth2/default/v1`) on one port, for the demo,
//! end-to-end tests, fault tests and benchmarks.
//!
//! Map:
//! - [`state`]: the world (lists, members, merge fields, tags, webhooks, campaigns) as plain data;
//! - [`mailchimp`]: all of Mailchimp: the `/3.0` routes, member write rules, campaigns, webhook
//!   delivery, problem+json errors;
//! - [`faults`]: stats, auth, the per-key concurrency limit and injected faults;
//! - [`control`]: the `/_sim` control endpoints (no auth), the contract other tools use;
//! - [`constant_contact`]: all of Constant Contact (its state lives in [`state::World`] too, so
//!   it shares the clock, the reset and `/_sim/stats`).
//!
//! The server runs its own accept loop (hyper) instead of `axum::serve` so that an injected
//! "drop connection" fault can close a connection without writing any response.
//!
//! Start it with [`Simulator::start`] (tests, demo) or [`run_standalone`] (`mailbridge simulate`).

pub mod constant_contact;
pub mod control;
pub mod faults;
pub mod mailchimp;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use faults::{DropConnection, Faults, Stats};
use mailchimp::webhooks::Attempt;
use state::World;

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Requests in flight per API key before the next one gets 429 (Mailchimp: 10).
    pub concurrency_limit: usize,
    /// Tries per webhook delivery (first try included).
    pub webhook_max_attempts: u32,
    /// Delay before the first retry; doubles after each failed try.
    pub webhook_backoff: Duration,
    /// Timeout of one webhook request (validation GET or delivery POST).
    pub webhook_timeout: Duration,
    /// Members per batch-subscribe call (Mailchimp: 500).
    pub batch_limit: usize,
    /// Operations of a `/batches` batch run by each read of its status (the simulator's stand-in
    /// for Mailchimp working through a batch in the background; see `mailchimp::batches`).
    pub batch_operations_per_read: usize,
    /// Lifetime of a Constant Contact access token, on the simulated clock (vendor: 24 h).
    pub cc_access_token_ttl: Duration,
    /// The device flow's polling interval, on the simulated clock (vendor: 5 s).
    pub cc_device_interval: Duration,
    /// Requests per app in any second of real time before 429 `throttled` (vendor: 4; 0 = off).
    pub cc_requests_per_second: u32,
    /// Accepted requests per app per simulated UTC day before 429 `quota_exceeded` (vendor:
    /// 10,000; 0 = off).
    pub cc_daily_quota: u64,
    /// Real time an activity spends `processing` before it completes.
    pub cc_activity_delay: Duration,
    /// An unsubscriber this recent (simulated) is re-subscribed by an import (the vendor's trap).
    pub cc_resubscribe_window: Duration,
    /// Unfinished activities before the next one gets 429 (vendor: 1,000).
    pub cc_max_queued_activities: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            concurrency_limit: 10,
            webhook_max_attempts: 5,
            webhook_backoff: Duration::from_millis(50),
            webhook_timeout: Duration::from_secs(5),
            batch_limit: 500,
            batch_operations_per_read: 5000,
            cc_access_token_ttl: Duration::from_secs(86_400),
            cc_device_interval: Duration::from_secs(5),
            cc_requests_per_second: 4,
            cc_daily_quota: 10_000,
            cc_activity_delay: Duration::from_millis(200),
            cc_resubscribe_window: Duration::from_secs(30 * 86_400),
            cc_max_queued_activities: 1000,
        }
    }
}

/// Shared state behind the router: cheap to clone.
#[derive(Clone)]
pub struct SimState(Arc<Inner>);

struct Inner {
    config: SimConfig,
    world: Mutex<World>,
    stats: Mutex<Stats>,
    faults: Mutex<Faults>,
    inflight: Mutex<HashMap<String, usize>>,
    webhook_log: Mutex<Vec<Attempt>>,
    batches: Mutex<mailchimp::batches::Batches>,
    /// Hands Constant Contact activities to their background worker (started on first use).
    cc_queue: Mutex<Option<UnboundedSender<String>>>,
    http: reqwest::Client,
    shutdown: watch::Sender<bool>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the simulator's state
/// stays usable for the remaining tests).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self(Arc::new(Inner {
            config,
            world: Mutex::new(World::default()),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(Faults::default()),
            inflight: Mutex::new(HashMap::new()),
            webhook_log: Mutex::new(Vec::new()),
            batches: Mutex::new(Default::default()),
            cc_queue: Mutex::new(None),
            http: reqwest::Client::new(),
            shutdown,
        }))
    }

    pub fn config(&self) -> &SimConfig {
        &self.0.config
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.0.world)
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.0.stats)
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.0.faults)
    }

    pub fn inflight(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        lock(&self.0.inflight)
    }

    pub fn webhook_log(&self) -> MutexGuard<'_, Vec<Attempt>> {
        lock(&self.0.webhook_log)
    }

    pub fn batches(&self) -> MutexGuard<'_, mailchimp::batches::Batches> {
        lock(&self.0.batches)
    }

    pub(crate) fn cc_queue(&self) -> MutexGuard<'_, Option<UnboundedSender<String>>> {
        lock(&self.0.cc_queue)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    /// Fires when the simulator shuts down (pending webhook retries stop).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    /// Clears all state, statistics, faults and logs (`POST /_sim/reset`).
    pub fn reset(&self) {
        *self.world() = World::default();
        *self.stats() = Stats::default();
        *self.faults() = Faults::default();
        self.webhook_log().clear();
        *self.batches() = Default::default();
    }
}

/// The whole HTTP surface: `/3.0` (Mailchimp), `/v3` and `/oauth2/default/v1` (Constant Contact)
/// and `/_sim` (control, Constant Contact's under `/_sim/constant-contact`).
pub fn router(state: SimState) -> Router {
    Router::new()
        .nest("/3.0", mailchimp::routes(state.clone()))
        .nest("/v3", constant_contact::routes(state.clone()))
        .nest("/oauth2/default/v1", constant_contact::oauth::routes())
        .nest(
            "/_sim",
            control::routes().nest("/constant-contact", constant_contact::control::routes()),
        )
        .with_state(state)
}

/// Entry point for starting the simulator.
pub struct Simulator;

impl Simulator {
    /// Starts the simulator on `bind` (port 0 = free port); returns when it is listening.
    pub async fn start(bind: SocketAddr) -> std::io::Result<SimulatorHandle> {
        Self::start_with(bind, SimConfig::default()).await
    }

    /// As [`Simulator::start`], with explicit settings.
    pub async fn start_with(
        bind: SocketAddr,
        config: SimConfig,
    ) -> std::io::Result<SimulatorHandle> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = SimState::new(config);
        let app = router(state.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, app, stop_rx));
        tracing::info!(%addr, "The provider simulator is listening.");
        Ok(SimulatorHandle {
            addr,
            state,
            stop: stop_tx,
            task,
        })
    }
}

/// A running simulator.
pub struct SimulatorHandle {
    addr: SocketAddr,
    state: SimState,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SimulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/3.0`
    pub fn mailchimp_url(&self) -> String {
        format!("{}/3.0", self.base_url())
    }

    /// `http://127.0.0.1:PORT/v3`
    pub fn constant_contact_url(&self) -> String {
        format!("{}/v3", self.base_url())
    }

    /// `http://127.0.0.1:PORT/oauth2/default/v1` (Constant Contact's token endpoint is `/token`).
    pub fn oauth_url(&self) -> String {
        format!("{}/oauth2/default/v1", self.base_url())
    }

    /// The simulator's state, for in-process inspection.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Stops accepting, lets requests in progress finish, stops webhook retries.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.state.0.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Runs until ctrl-c / SIGTERM; used by the `mailbridge simulate --bind ADDR` command.
pub async fn run_standalone(bind: SocketAddr) -> std::io::Result<()> {
    let handle = Simulator::start(bind).await?;
    println!(
        "Mailchimp simulator listening on {}",
        handle.mailchimp_url()
    );
    println!(
        "Constant Contact simulator listening on {} (OAuth: {})",
        handle.constant_contact_url(),
        handle.oauth_url()
    );
    println!("Control endpoints under {}/_sim/", handle.base_url());
    wait_for_stop_signal().await?;
    handle.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_stop_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

/// How long shutdown waits for open connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The accept loop: one hyper HTTP/1 connection task per client.
async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, app.clone(), stop.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}

/// The error a service returns to make hyper close the connection without answering.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(req.map(axum::body::Body::new)).await;
            let Ok(response) = response;
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(Dropped);
            }
            Ok(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
