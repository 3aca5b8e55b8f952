//! The HTTP server of `mailbridge serve` (DESIGN.md "HTTP contract"): one axum router over a
//! shared [`AppState`]. Each area has its own file with a `routes()` function merged here:
//! webhooks, the admin API (sync runs, events), campaigns, messages; plus health and metrics.
//! The state is built from the [`crate::app::App`]; `serve` starts the engine's workers (event
//! writeback, relay, nightly sync) as tasks tracked by the state so that shutdown can wait for them.
//!
//! The server defends itself ([`ServerLimits`], from `[server]`): a connection gets
//! `header_read_timeout_secs` to send each request's headers (hyper's header read timeout, also
//! the idle keep-alive limit), a request gets `request_timeout_secs` from its headers to the answer
//! (tower-http's timeout; 408 `request_timeout`), and at most `max_connections` connections are
//! served at once; further ones are not accepted (they wait in the kernel's listen queue) until
//! one closes. Every request runs in a span naming its method and matched route template, never
//! the path itself (the Mailchimp webhook path holds the URL secret).

mod admin;
pub mod admin_ui;
mod auth;
mod bounces;
mod campaigns;
mod error;
mod messages;
pub mod metrics;
pub mod serve;
mod unsubscribe;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::SecretString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{ApiAuth, constant_time_eq};
pub use error::ApiError;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ServerConfig};
use crate::events::apply::SoftBouncePolicy;
use crate::events::ingest::EventWriter;
use crate::events::worker::WritebackWorker;
use crate::mapping::Mapping;
use crate::providers::ProviderSet;
use crate::source::{MemberPool, MemberSource, SourceError};
use crate::store::Store;
use crate::sync::schedule::SyncRunner;

/// Request bodies above this are refused with 413 (DESIGN.md); `POST /v1/messages` allows more
/// when `[relay] max_message_bytes` needs it ([`message_body_limit`]).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The body limit of `POST /v1/messages`: room for a text and an HTML part of
/// `[relay] max_message_bytes` each, JSON-escaped (up to three bytes for one, as PHP's
/// `json_encode` writes `\u00e9` for the two bytes of `é`), plus the other fields; never below
/// [`MAX_BODY_BYTES`]. A body within it reaches the field checks, so a part over
/// `max_message_bytes` gets a 400 that names it rather than a 413 for the whole body.
pub fn message_body_limit(config: &Config) -> usize {
    let per_part = config.relay.as_ref().map_or(0, |r| {
        usize::try_from(r.max_message_bytes).unwrap_or(usize::MAX)
    });
    per_part
        .saturating_mul(2 * 3)
        .saturating_add(64 * 1024)
        .max(MAX_BODY_BYTES)
}

/// What every handler and background task shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub mapping: Arc<Mapping>,
    pub store: Store,
    /// The connected providers (those with a `[providers.*]` section).
    pub providers: ProviderSet,
    /// The application's clock; the workers wait on it.
    pub clock: SharedClock,
    /// Cancelled when the server shuts down; background loops stop at their next step.
    pub shutdown: CancellationToken,
    /// Background tasks; shutdown waits for them.
    pub tasks: TaskTracker,
    /// Woken when new provider events are committed (the writeback worker waits on it).
    pub events_ready: Arc<Notify>,
    /// Woken when new outbox messages are committed (the relay worker waits on it).
    pub outbox_ready: Notify,
    /// Woken when `POST /v1/bounces` stored a new mail (the bounce worker waits on it).
    pub bounces_ready: Arc<Notify>,
    /// Commits webhook events (group commit).
    pub events: EventWriter,
    /// The Mailchimp webhook signing secrets `sync` stored, as the webhook endpoint reads them.
    pub signing_secrets: crate::store::signing::SigningSecretCache,
    /// Woken when a campaign job is queued (the campaign job worker waits on it).
    pub campaigns_ready: Arc<Notify>,
    /// Whether this process's campaign job worker has been started.
    campaign_worker: std::sync::atomic::AtomicBool,
    /// One sync at a time in this process (HTTP-started and nightly).
    pub sync_gate: Arc<tokio::sync::Mutex<()>>,
    /// Login attempts on the admin pages (`[admin] login_attempts_per_minute`).
    pub admin_logins: admin_ui::LoginLimiter,
    members: MemberPool,
}

/// The state as handlers receive it.
pub type Shared = Arc<AppState>;

impl AppState {
    /// The state of these parts, on the system clock (see [`AppState::from_app`] for the usual
    /// way).
    pub fn new(
        config: Arc<Config>,
        mapping: Arc<Mapping>,
        store: Store,
        providers: ProviderSet,
    ) -> AppState {
        let members = MemberPool::new(config.members.url.clone(), false);
        AppState::of_parts(
            config,
            mapping,
            store,
            providers,
            members,
            SystemClock::shared(),
        )
    }

    pub(crate) fn of_parts(
        config: Arc<Config>,
        mapping: Arc<Mapping>,
        store: Store,
        providers: ProviderSet,
        members: MemberPool,
        clock: SharedClock,
    ) -> AppState {
        let admin_logins = admin_ui::LoginLimiter::new(config.admin.login_attempts_per_minute);
        AppState {
            events: EventWriter::start(store.clone()),
            signing_secrets: crate::store::signing::SigningSecretCache::new(
                crate::providers::mailchimp::webhook::PROVIDER,
            ),
            config,
            mapping,
            store,
            providers,
            clock,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            events_ready: Arc::new(Notify::new()),
            outbox_ready: Notify::new(),
            bounces_ready: Arc::new(Notify::new()),
            campaigns_ready: Arc::new(Notify::new()),
            campaign_worker: std::sync::atomic::AtomicBool::new(false),
            sync_gate: Arc::new(tokio::sync::Mutex::new(())),
            admin_logins,
            members,
        }
    }

    /// Sync runs of this server (HTTP-started and nightly), sharing its gate and member DB.
    pub fn sync_runner(&self) -> SyncRunner {
        SyncRunner {
            config: self.config.clone(),
            mapping: self.mapping.clone(),
            store: self.store.clone(),
            providers: self.providers.clone(),
            members: self.members.clone(),
            gate: self.sync_gate.clone(),
            events_ready: self.events_ready.clone(),
        }
    }

    /// Starts this process's job worker (campaign pushes and queued syncs; once: `serve` at
    /// start, or the first `POST /v1/campaigns` or `POST /v1/sync`), then wakes it.
    pub fn start_campaign_jobs(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.campaign_worker.swap(true, Ordering::SeqCst) {
            let worker = crate::campaigns::jobs::Worker {
                config: self.config.clone(),
                mapping: self.mapping.clone(),
                store: self.store.clone(),
                providers: self.providers.clone(),
                members: self.members.clone(),
                clock: self.clock.clone(),
                after_create: crate::process::test_pause_hook(),
                sync: self.sync_runner(),
            };
            self.tasks
                .spawn(worker.run(self.shutdown.clone(), self.campaigns_ready.clone()));
        }
        self.campaigns_ready.notify_one();
    }

    /// The writeback worker of this server (`[server]` soft-bounce policy, its member DB).
    pub fn writeback_worker(&self) -> WritebackWorker {
        let server = self.config.server.as_ref();
        WritebackWorker {
            store: self.store.clone(),
            mapping: self.mapping.clone(),
            audiences: self.config.audiences.clone(),
            soft_bounces: SoftBouncePolicy {
                threshold: server.map_or(3, |s| s.soft_bounce_threshold),
                window_days: server.map_or(30, |s| s.soft_bounce_window_days),
            },
            providers: self.providers.clone(),
            members: self.members.clone(),
            clock: self.clock.clone(),
        }
    }

    /// `[server] api_token`, if configured.
    pub fn api_token(&self) -> Option<&SecretString> {
        self.config.server.as_ref()?.api_token.as_ref()
    }

    /// The member DB pool, connected on first use; a failed connection is retried on the next
    /// call (the member DB may be down for a while; work waits rather than fails).
    pub async fn member_source(&self) -> Result<MemberSource, SourceError> {
        self.members.get().await
    }

    /// Drops the member DB pool after an error that suggests it is gone, so the next use
    /// reconnects.
    pub async fn reset_member_source(&self) {
        self.members.reset().await;
    }
}

/// The HTTP server's own limits (`[server]`; the defaults when it is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl ServerLimits {
    pub fn of(config: &Config) -> ServerLimits {
        let (header, request, connections) = match &config.server {
            Some(s) => (
                s.header_read_timeout_secs,
                s.request_timeout_secs,
                s.max_connections,
            ),
            None => (
                ServerConfig::DEFAULT_HEADER_READ_TIMEOUT_SECS,
                ServerConfig::DEFAULT_REQUEST_TIMEOUT_SECS,
                ServerConfig::DEFAULT_MAX_CONNECTIONS,
            ),
        };
        ServerLimits {
            header_read_timeout: Duration::from_secs(header),
            request_timeout: Duration::from_secs(request),
            max_connections: usize::try_from(connections).unwrap_or(usize::MAX),
        }
    }
}

/// The whole router.
pub fn router(state: Shared) -> Router {
    let limits = ServerLimits::of(&state.config);
    let timed = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(webhooks::routes())
        .merge(admin::routes())
        .merge(admin_ui::routes())
        .merge(bounces::routes())
        .merge(unsubscribe::routes())
        .merge(messages::routes(message_body_limit(&state.config)))
        .fallback(fallback)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(request_timeout_as_json));
    timed
        // Not under the request timeout (kept from when the push ran in the request; it is now
        // queued as a job and answered at once). Its bearer token is checked before its body
        // is read.
        .merge(campaigns::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<axum::body::Body>| {
                    // The route template, never the path: `/webhooks/mailchimp/{secret}`.
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("(no route)", MatchedPath::as_str);
                    tracing::info_span!("request", method = %req.method(), route = %route)
                })
                // 5xx answers are logged where they are made, with their cause.
                .on_failure(()),
        )
        .with_state(state)
}

/// tower-http's timeout answers 408 with an empty body: give it the API's error shape.
async fn request_timeout_as_json(response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(CONTENT_TYPE)
    {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took longer than the server's [server] request_timeout_secs (a body sent too slowly, or an answer not ready in time); nothing was done if the request was not read in full",
        )
        .into_response();
    }
    response
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn healthz(State(state): State<Shared>) -> impl IntoResponse {
    let db_ok = sqlx::query("SELECT 1")
        .execute(state.store.pool())
        .await
        .is_ok();
    let body = serde_json::json!({
        "status": if db_ok { "ok" } else { "degraded" },
        "state_db": if db_ok { "reachable" } else { "unreachable" },
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics::render(),
    )
}

/// A running server: its address, and how to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub state: Shared,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight requests finish, then waits for background tasks.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after [`AppState::shutdown`] is cancelled elsewhere).
    pub async fn wait(self) -> std::io::Result<()> {
        let served = self
            .join
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.state.tasks.close();
        self.state.tasks.wait().await;
        served
    }
}

/// Serves the router on `listener` until `state.shutdown` is cancelled (graceful: in-flight
/// requests finish), within [`ServerLimits::of`] the state's configuration.
pub fn start(listener: tokio::net::TcpListener, state: Shared) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let _ = metrics::handle();
    let limits = ServerLimits::of(&state.config);
    let app = router(state.clone());
    let token = state.shutdown.clone();
    let join = tokio::spawn(serve(listener, app, limits, token));
    Ok(ServerHandle { addr, state, join })
}

/// The accept loop: one hyper HTTP/1 connection task per client, at most
/// `limits.max_connections` at once (a connection is accepted only when one of those slots is
/// free), each with hyper's header read timeout.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    // Whether the limit was reached since the last connection that found a free slot: the
    // warning is logged once per episode, the counter counts every wait.
    let mut at_limit = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_limit = false;
                slot
            }
            Err(_) => {
                ::metrics::counter!("mailbridge_http_connection_limit_reached_total").increment(1);
                if !at_limit {
                    at_limit = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "The HTTP server serves [server] max_connections connections; new ones wait until one closes"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!("The HTTP server cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        // The peer's address, for the handlers that need it (the admin login's rate limit).
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let open = ::metrics::gauge!("mailbridge_http_open_connections");
            open.increment(1.0);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            open.decrement(1.0);
            if let Err(e) = served {
                // A client that hung up, or one too slow with its headers.
                tracing::debug!("An HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    // In-flight requests finish within the request timeout; a connection still open after that
    // (a slow `POST /v1/campaigns` body, which has no request timeout) does not hold up the
    // shutdown. A campaign push it started is a tracked task of its own and is waited for.
    let grace = limits.request_timeout + limits.header_read_timeout;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "Stopped waiting for HTTP connections still open {grace:?} after the shutdown began"
        );
    }
    Ok(())
}

/// Errors of one incoming connection (the next accept works), as opposed to the listener's.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
