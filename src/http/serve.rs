//! `mailbridge serve`: builds the shared state from the configuration, binds, starts the
//! background tasks, and shuts down gracefully on SIGTERM/SIGINT.

use std::sync::Arc;

use super::{AppState, ServerHandle, Shared};
use crate::config::Config;
use crate::mapping::{Mapping, MappingError};
use crate::providers::mailchimp::{MailchimpClient, MailchimpError};
use crate::store::{OpenMode, Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("cannot open the state database")]
    Store(#[from] StoreError),
    #[error("cannot set up the Mailchimp client")]
    Mailchimp(#[from] MailchimpError),
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
    /// Opens the state DB (migrating it), loads the mapping and sets up the provider clients.
    pub async fn from_config(config: Config) -> Result<AppState, ServeError> {
        let mapping = Mapping::load(&config.members.mapping)?;
        let store = Store::open(&config.state.url, OpenMode::ReadWrite).await?;
        store.migrate().await?;
        let mailchimp = config
            .mailchimp
            .as_ref()
            .map(MailchimpClient::new)
            .transpose()?;
        Ok(AppState::new(
            Arc::new(config),
            Arc::new(mapping),
            store,
            mailchimp,
        ))
    }
}

/// Starts the background tasks of `serve`; each stops when `state.shutdown` is cancelled and is
/// tracked by `state.tasks`.
pub fn spawn_background(state: &Shared) {
    super::jobs::spawn_writeback(state);
    super::jobs::spawn_nightly(state);
    spawn_relay(state);
}

/// Starts the relay worker when `[relay]` is configured: tracked by `state.tasks`, stopped by
/// `state.shutdown`, woken by `state.outbox_ready`.
fn spawn_relay(state: &Shared) {
    let Some(relay) = state.config.relay.clone() else {
        return;
    };
    let worker = match crate::relay::Worker::new(state.store.clone(), Arc::new(relay)) {
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
    let bind = match (bind_override, &config.server) {
        (Some(b), _) => b.to_owned(),
        (None, Some(s)) => s.bind.clone(),
        (None, None) => {
            return Err(ServeError::NoServerSection {
                path: config.path.display().to_string(),
            });
        }
    };
    let state: Shared = Arc::new(AppState::from_config(config).await?);
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
