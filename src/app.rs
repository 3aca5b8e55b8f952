//! The running application, assembled in one place from a [`Config`]: the state store, the
//! member source, the mapping, the provider clients, the relay routes and the clock. `serve`,
//! every command, the demo, the tests and the benchmarks get theirs from an [`App`] rather than
//! opening databases and building clients by hand.
//!
//! Each part is built on first use and then shared, so a command only pays for (and only fails
//! on) what it uses: `migrate` never reads the mapping, `send` never connects to the member DB.
//! Callers add their own context to the errors (their messages are part of the CLI).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ConfigError, RelayConfig};
use crate::mapping::{Mapping, MappingError};
use crate::providers::constant_contact::ConstantContactClient;
use crate::providers::mailchimp::MailchimpClient;
use crate::providers::{Provider, ProviderError, ProviderSet};
use crate::relay::Worker;
use crate::relay::alerts::Alerter;
use crate::relay::routes::RouteError;
use crate::source::{MemberPool, MemberSource, SourceError};
use crate::store::{OpenMode, Store, StoreError};

/// Why the provider clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The application of one configuration. Cheap parts are shared by reference; clone the
/// [`Store`], a [`Provider`] or the [`MemberPool`] (all handles) to move them into tasks.
pub struct App {
    pub config: Arc<Config>,
    /// Every worker's time (SystemClock unless a test hands in another).
    pub clock: SharedClock,
    read_only: bool,
    mapping: OnceLock<Arc<Mapping>>,
    providers: tokio::sync::OnceCell<ProviderSet>,
    store: tokio::sync::OnceCell<Store>,
    members: MemberPool,
}

impl App {
    /// The application of `config`, on the system clock, reading and writing.
    pub fn new(config: Config) -> App {
        let members = MemberPool::new(config.members.url.clone(), false);
        App {
            config: Arc::new(config),
            clock: SystemClock::shared(),
            read_only: false,
            mapping: OnceLock::new(),
            providers: tokio::sync::OnceCell::new(),
            store: tokio::sync::OnceCell::new(),
            members,
        }
    }

    /// Loads the configuration file and assembles its application.
    pub fn load(path: &Path) -> Result<App, ConfigError> {
        Ok(App::new(Config::load(path)?))
    }

    /// Reads only: the state DB is opened read-only and the member DB in a read-only session
    /// (`sync --dry-run`, `campaign status`).
    #[must_use]
    pub fn read_only(mut self) -> App {
        self.read_only = true;
        self.members = MemberPool::new(self.config.members.url.clone(), true);
        self
    }

    /// Runs on `clock` instead of the system clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> App {
        self.clock = clock;
        self
    }

    /// The mapping (`[members] mapping`), loaded on first use.
    pub fn mapping(&self) -> Result<&Arc<Mapping>, MappingError> {
        if let Some(m) = self.mapping.get() {
            return Ok(m);
        }
        let loaded = Arc::new(Mapping::load(&self.config.members.mapping)?);
        Ok(self.mapping.get_or_init(|| loaded))
    }

    /// A client for each provider with a `[providers.*]` section, built on first use. Constant
    /// Contact's keeps its tokens and its daily request count in the state DB, which is opened
    /// for it (not migrated: its first call needs [`App::migrate`] to have run).
    pub async fn providers(&self) -> Result<&ProviderSet, ProvidersError> {
        self.providers
            .get_or_try_init(|| async {
                let mut set = Vec::new();
                if let Some(c) = &self.config.mailchimp {
                    set.push(Provider::Mailchimp(
                        MailchimpClient::new(c).map_err(ProviderError::from)?,
                    ));
                }
                if let Some(c) = &self.config.constant_contact {
                    let store = self.store().await?.clone();
                    let alerts =
                        Alerter::new(store.clone(), self.config.alerts.clone(), self.relay());
                    set.push(Provider::from(
                        ConstantContactClient::new(c, store)
                            .map_err(ProviderError::from)?
                            .with_alerts(alerts),
                    ));
                }
                Ok(ProviderSet::new(set))
            })
            .await
    }

    /// The state DB, opened on first use (read-only for a [`App::read_only`] application). It is
    /// not migrated: see [`App::migrate`].
    pub async fn store(&self) -> Result<&Store, StoreError> {
        let mode = if self.read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::ReadWrite
        };
        self.store
            .get_or_try_init(|| {
                Store::open_with_clock(&self.config.state.url, mode, self.clock.clone())
            })
            .await
    }

    /// Brings the state DB up to date (opening it first); the number of migrations applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.store().await?.migrate().await
    }

    /// The state DB, opened and migrated (what `serve`, `send`, `relay` and the demo work on).
    pub async fn migrated_store(&self) -> Result<&Store, StoreError> {
        self.migrate().await?;
        self.store().await
    }

    /// The member DB connection shared by this application's work.
    pub fn members(&self) -> &MemberPool {
        &self.members
    }

    /// The member DB, connected on first use.
    pub async fn member_source(&self) -> Result<MemberSource, SourceError> {
        self.members.get().await
    }

    /// `[relay]`: the From address, the routes and their limits; `None` when not configured.
    pub fn relay(&self) -> Option<Arc<RelayConfig>> {
        self.config.relay.clone().map(Arc::new)
    }

    /// A relay worker over `store` delivering through `relay`'s routes, raising quota alerts as
    /// `[alerts]` says.
    pub fn relay_worker(
        &self,
        store: &Store,
        relay: Arc<RelayConfig>,
    ) -> Result<Worker, RouteError> {
        Worker::with_alerts(store.clone(), relay, self.config.alerts.clone())
    }

    /// Closes what was opened (the member DB and the state DB).
    pub async fn close(&self) {
        self.members.reset().await;
        if let Some(store) = self.store.get() {
            store.close().await;
        }
    }
}
