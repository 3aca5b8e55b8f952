//! The HTTP server of `mailbridge serve` (DESIGN.md "HTTP contract"): one axum router over a
//! shared [`AppState`]. Each area has its own file with a `routes()` function merged here:
//! webhooks, the admin API (sync runs, events), campaigns, messages; plus health and metrics.
//! Background work (event writeback, relay worker, nightly sync) runs as tasks tracked by the
//! state so that shutdown can wait for them.

mod admin;
mod auth;
mod campaigns;
mod error;
pub mod jobs;
mod messages;
pub mod metrics;
pub mod serve;
pub mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{ApiAuth, constant_time_eq};
pub use error::ApiError;

use crate::config::Config;
use crate::events::ingest::EventWriter;
use crate::mapping::Mapping;
use crate::providers::mailchimp::MailchimpClient;
use crate::source::{MemberSource, SourceError};
use crate::store::Store;

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
    /// `None` when `[providers.mailchimp]` is not configured.
    pub mailchimp: Option<MailchimpClient>,
    /// Cancelled when the server shuts down; background loops stop at their next step.
    pub shutdown: CancellationToken,
    /// Background tasks; shutdown waits for them.
    pub tasks: TaskTracker,
    /// Woken when new provider events are committed (the writeback worker waits on it).
    pub events_ready: Notify,
    /// Woken when new outbox messages are committed (the relay worker waits on it).
    pub outbox_ready: Notify,
    /// Commits webhook events (group commit).
    pub events: EventWriter,
    /// Sync runs started here, until their row in `sync_runs` tells the rest.
    jobs: std::sync::Mutex<HashMap<String, jobs::JobState>>,
    /// One sync at a time in this process (HTTP-started and nightly).
    pub sync_gate: tokio::sync::Mutex<()>,
    members: tokio::sync::Mutex<Option<MemberSource>>,
}

/// The state as handlers receive it.
pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        config: Arc<Config>,
        mapping: Arc<Mapping>,
        store: Store,
        mailchimp: Option<MailchimpClient>,
    ) -> AppState {
        AppState {
            events: EventWriter::start(store.clone()),
            config,
            mapping,
            store,
            mailchimp,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            events_ready: Notify::new(),
            outbox_ready: Notify::new(),
            jobs: std::sync::Mutex::new(HashMap::new()),
            sync_gate: tokio::sync::Mutex::new(()),
            members: tokio::sync::Mutex::new(None),
        }
    }

    /// The sync runs this process started (poisoning cannot leave the map inconsistent: every
    /// write is a single insert).
    pub(crate) fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, jobs::JobState>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `[server] api_token`, if configured.
    pub fn api_token(&self) -> Option<&SecretString> {
        self.config.server.as_ref()?.api_token.as_ref()
    }

    /// The member DB pool, connected on first use; a failed connection is retried on the next
    /// call (the member DB may be down for a while; work waits rather than fails).
    pub async fn member_source(&self) -> Result<MemberSource, SourceError> {
        let mut guard = self.members.lock().await;
        if let Some(source) = guard.as_ref() {
            return Ok(source.clone());
        }
        let source = MemberSource::connect(&self.config.members.url, false).await?;
        *guard = Some(source.clone());
        Ok(source)
    }

    /// Drops the member DB pool after an error that suggests it is gone, so the next use
    /// reconnects.
    pub async fn reset_member_source(&self) {
        if let Some(source) = self.members.lock().await.take() {
            source.close().await;
        }
    }
}

/// The whole router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(webhooks::routes())
        .merge(admin::routes())
        .merge(campaigns::routes())
        .merge(messages::routes(message_body_limit(&state.config)))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
        let served = self
            .join
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.state.tasks.close();
        self.state.tasks.wait().await;
        served
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
/// requests finish).
pub fn start(listener: tokio::net::TcpListener, state: Shared) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let _ = metrics::handle();
    let app = router(state.clone());
    let token = state.shutdown.clone();
    let join = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    Ok(ServerHandle { addr, state, join })
}
