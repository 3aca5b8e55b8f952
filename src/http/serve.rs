//! `mailbridge serve`: builds the shared state from the [`App`], binds, starts the engine's
//! workers (event writeback, provider polling, nightly sync, relay, bounce mail, the bounce mailbox and
//! retention) as tracked tasks, and shuts down gracefully on
//! SIGTERM/SIGINT.

use std::sync::Arc;

use super::{AppState, ServerHandle, Shared};
use crate::app::App;
use crate::config::Config;
use crate::mapping::MappingError;
use crate::providers::ProviderError;
use crate::store::StoreError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("cannot open the state database")]
    Store(#[from] StoreError),
    #[error("cannot set up the {} client", .0.provider_name())]
    Provider(#[from] ProviderError),
    #[error("{path}: [server] is missing; `serve` needs at least `bind`")]
    NoServerSection { path: String },
    #[error("cannot listen on {bind}")]
    Bind {
        bind: String,
        #[source]
        source: std::io::Error,
    },
}

impl AppState {
    /// The server's state over `app`: loads the mapping, opens and migrates the state DB, sets
    /// up the provider clients; shares the app's member DB and clock.
    pub async fn from_app(app: &App) -> Result<AppState, ServeError> {
        let mapping = app.mapping()?.clone();
        let store = app.migrated_store().await?.clone();
        let providers = match app.providers().await {
            Ok(p) => p.clone(),
            Err(crate::app::ProvidersError::Provider(e)) => return Err(e.into()),
            Err(crate::app::ProvidersError::Store(e)) => return Err(e.into()),
        };
        Ok(AppState::of_parts(
            app.config.clone(),
            mapping,
            store,
            providers,
            app.members().clone(),
            app.clock.clone(),
        ))
    }

    /// [`AppState::from_app`] of `config`'s application.
    pub async fn from_config(config: Config) -> Result<AppState, ServeError> {
        AppState::from_app(&App::new(config)).await
    }
}

/// Starts the workers of `serve`; each stops when `state.shutdown` is cancelled and is tracked
/// by `state.tasks`.
pub fn spawn_background(state: &Shared) {
    // Runs left `running` by a worker that died are recorded as such before anything else.
    let store = state.store.clone();
    state.tasks.spawn(async move {
        if let Err(e) = crate::sync::runs::mark_interrupted(&store).await {
            tracing::warn!(
                "Looking for interrupted sync runs failed: {}",
                crate::error_chain(&e)
            );
        }
    });
    let shutdown = state.shutdown.clone();
    let wake = state.events_ready.clone();
    state
        .tasks
        .spawn(state.writeback_worker().run(shutdown, wake));
    let poller = crate::events::poll::Poller {
        store: state.store.clone(),
        audiences: state.config.audiences.clone(),
        providers: state.providers.clone(),
        clock: state.clock.clone(),
    };
    state
        .tasks
        .spawn(poller.run(state.shutdown.clone(), state.events_ready.clone()));
    if crate::sync::schedule::nightly_time(&state.config).is_some() {
        let nightly = crate::campaigns::jobs::Nightly {
            store: state.store.clone(),
            config: state.config.clone(),
            clock: state.clock.clone(),
            wake: state.campaigns_ready.clone(),
            // Now, before the task runs: a night's time that comes meanwhile is not skipped.
            started: state.clock.now(),
        };
        state.tasks.spawn(nightly.run(state.shutdown.clone()));
    }
    spawn_relay(state);
    let pruner = crate::retention::Pruner::new(
        state.store.clone(),
        state.config.retention,
        state.clock.clone(),
    );
    state.tasks.spawn(pruner.run(state.shutdown.clone(), None));
    // Jobs queued before a restart, or whose worker died, run again.
    state.start_campaign_jobs();
    let bounces = crate::bounces::ingest::Worker {
        store: state.store.clone(),
        relay: state.config.relay.clone().map(Arc::new),
    };
    state.tasks.spawn(bounces.run(
        state.shutdown.clone(),
        state.bounces_ready.clone(),
        state.events_ready.clone(),
    ));
    if let Some(imap) = state.config.bounces.imap.clone() {
        let mailbox = crate::bounces::imap::Poller {
            store: state.store.clone(),
            relay: state.config.relay.clone().map(Arc::new),
            config: Arc::new(imap),
        };
        state
            .tasks
            .spawn(mailbox.run(state.shutdown.clone(), state.events_ready.clone()));
    }
}

/// Starts the relay worker when `[relay]` is configured: tracked by `state.tasks`, stopped by
/// `state.shutdown`, woken by `state.outbox_ready`.
fn spawn_relay(state: &Shared) {
    let Some(relay) = state.config.relay.clone() else {
        return;
    };
    let worker = match crate::relay::Worker::with_alerts(
        state.store.clone(),
        Arc::new(relay),
        state.config.alerts.clone(),
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("The relay worker cannot start: {}", crate::error_chain(&e));
            return;
        }
    };
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        worker
            .run(state.shutdown.clone(), Some(&state.outbox_ready))
            .await;
    });
}

/// Binds `[server] bind` (or `bind_override`), starts the router and the background tasks.
pub async fn start_from_config(
    config: Config,
    bind_override: Option<&str>,
) -> Result<ServerHandle, ServeError> {
    start(App::new(config), bind_override).await
}

/// `mailbridge serve` of `app`: binds `[server] bind` (or `bind_override`), starts the router and
/// the workers.
pub async fn start(app: App, bind_override: Option<&str>) -> Result<ServerHandle, ServeError> {
    let config = &app.config;
    let bind = match (bind_override, &config.server) {
        (Some(b), _) => b.to_owned(),
        (None, Some(s)) => s.bind.clone(),
        (None, None) => {
            return Err(ServeError::NoServerSection {
                path: config.path.display().to_string(),
            });
        }
    };
    let state: Shared = Arc::new(AppState::from_app(&app).await?);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|source| ServeError::Bind {
            bind: bind.clone(),
            source,
        })?;
    let handle = super::start(listener, state.clone()).map_err(|source| ServeError::Bind {
        bind: bind.clone(),
        source,
    })?;
    spawn_background(&state);
    Ok(handle)
}

pub use crate::process::termination_signal;
