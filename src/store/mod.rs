//! The state DB: SQLite by default (a file beside the config, WAL mode), PostgreSQL when several
//! mailbridge processes share the work. Same schema on both (`migrations/sqlite`,
//! `migrations/postgres`); queries use the SQL both accept, through sqlx's `Any` driver. Two hot
//! paths on a SQLite file go native (rusqlite): bulk reads of contacts, and the relay's claims and
//! outcomes on one long-lived connection ([`writer`]).

pub mod admin_sessions;
pub mod api_budget;
pub mod consent_seen;
pub mod contacts;
pub mod locks;
pub mod oauth;
pub mod retry;
pub mod signing;
pub mod suppressions;
pub mod unsubscribes;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection};

use crate::clock::{SharedClock, SystemClock};
use crate::config::{DbKind, DbUrl};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Puts an address on the suppression list (the newsletter's and the relay's, one table):
/// `$1` email, `$2` reason, `$3` source, `$4` detail, `$5` now. An address already suppressed
/// keeps its first entry; one whose suppression an operator lifted is suppressed again, with the
/// new reason (a new hard bounce says the address is bad again). Affects a row exactly when the
/// address was not suppressed before.
pub const ADD_SUPPRESSION_SQL: &str =
    "INSERT INTO suppressions (email, reason, source, detail, created_at)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (email) DO UPDATE SET reason = excluded.reason, source = excluded.source,
         detail = excluded.detail, created_at = excluded.created_at, lifted_at = NULL
     WHERE suppressions.lifted_at IS NOT NULL";

/// `$first, $first+1, …`: `count` numbered placeholders, for an `IN (…)` list.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The placeholders of `rows` rows of `width` values each, for a multi-row `VALUES` list on a
/// state DB of `kind`, bound in order: `($1, …, $width), ($width+1, …), …` on PostgreSQL, and
/// `(?, …, ?), …` on SQLite. SQLite finds a numbered parameter's name by a linear scan of the
/// statement's names, and sqlx asks for the name of every parameter it binds, so numbered
/// placeholders made binding quadratic in the statement's size: 80,000 steps for one write of 50
/// contacts, 17% of a first 1,000,000-member sync's CPU. Anonymous ones have no name to look up.
pub(crate) fn row_placeholders(kind: DbKind, rows: usize, width: usize) -> String {
    if kind == DbKind::Sqlite {
        let row = format!("({})", vec!["?"; width].join(", "));
        return vec![row.as_str(); rows].join(", ");
    }
    numbered_row_placeholders(rows, width)
}

/// `($1, …, $width), ($width+1, …), …` whatever the database: for a statement of the native
/// SQLite writer, which binds by number ([`writer::bind_numbered`]).
pub(crate) fn numbered_row_placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kind of state DB a transaction runs on.
pub(crate) fn tx_kind(tx: &Tx<'_>) -> DbKind {
    if tx.backend_name().eq_ignore_ascii_case("sqlite") {
        DbKind::Sqlite
    } else {
        DbKind::Postgres
    }
}

/// A transaction on the state DB.
pub(crate) type Tx<'t> = sqlx::Transaction<'t, sqlx::Any>;

/// Errors from the state DB. Messages name it by host or file, never with a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database at {location}")]
    Connect {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    /// TLS failed (see [`crate::db_tls::explain`] for the reasons).
    #[error("cannot open the state database at {location}: {reason}")]
    Tls {
        location: String,
        reason: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the state database at {location} is MySQL/MariaDB: the state DB must be SQLite or PostgreSQL (MySQL/MariaDB is supported as a member DB)"
    )]
    Unsupported { location: String },
    #[error("the state database at {location} does not exist yet: run `mailbridge migrate` first")]
    Missing { location: String },
    #[error(
        "the state database at {location} is not up to date ({pending} migration(s) pending): run `mailbridge migrate`"
    )]
    NotMigrated { location: String, pending: usize },
    #[error(
        "the state database at {location} has migration {version} that this mailbridge does not know: it was written by a newer version"
    )]
    TooNew { location: String, version: i64 },
    #[error("migrating the state database at {location} failed")]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("state database query failed ({what})")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("state database read failed ({what}): {message}")]
    Read { what: &'static str, message: String },
    /// A statement on the native SQLite connection ([`writer`]), a read or a write.
    #[error("state database statement failed ({what})")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The native SQLite connection's thread could not take or finish a batch.
    #[error("the state database connection failed ({what}): {message}")]
    Connection { what: &'static str, message: String },
    #[error("the state database holds a bad value ({what}): {value}")]
    Corrupt { what: &'static str, value: String },
    #[error(
        "the lock `{name}` is no longer held by this process (its lease ran out: not renewed in time, as when the state database cannot be reached, or taken over by another process)"
    )]
    LockLost { name: String },
    /// The process is shutting down ([`Store::stop_leased_work`]): the work under the lease
    /// `name` stops before its next side effect and hands the lease back.
    #[error(
        "the work under the lock `{name}` stopped because the process is shutting down; it is handed back to run again"
    )]
    Stopped { name: String },
}

impl StoreError {
    /// A failed sqlx statement: what was being done, with sqlx's error as the source.
    pub(crate) fn query(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
        move |source| StoreError::Query { what, source }
    }

    /// Whether the failure was the connection's, not the statement's: the server went away or
    /// is restarting (refused, reset, `57P01` admin shutdown, `57P02` crash shutdown, `57P03`
    /// cannot connect now, SQLSTATE class `08`), or no connection could be had in time. Such a
    /// step may succeed when it is run again on a new connection (the pool opens one on the next
    /// acquire); any other failure would fail the same way again. The one place that decides
    /// which state DB failures are worth a retry.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            StoreError::Query { source, .. } | StoreError::Connect { source, .. } => source,
            _ => return false,
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }
}

/// A statement on the state DB's pool, its parameters bound.
pub(crate) type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// A parameter of a statement that [`Store::write`] runs on either connection.
#[derive(Clone, Debug)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
    /// SQL NULL (a nullable text column left empty).
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Param {
        Param::Text(s.to_owned())
    }
}

impl From<i64> for Param {
    fn from(n: i64) -> Param {
        Param::Int(n)
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Text(s) => s.to_sql(),
            Param::Int(n) => n.to_sql(),
            Param::Null => rusqlite::types::Null.to_sql(),
        }
    }
}

/// `statement` with `params` bound in order (the pool's side of [`Store::write`]).
fn bind_params(statement: Statement<'_>, params: Vec<Param>) -> Statement<'_> {
    params.into_iter().fold(statement, |q, p| match p {
        Param::Text(s) => q.bind(s),
        Param::Int(n) => q.bind(n),
        Param::Null => q.bind(None::<String>),
    })
}

/// How to open the state DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the SQLite file if missing.
    ReadWrite,
    /// Never create or write (dry runs): a missing file is an error.
    ReadOnly,
}

/// A pool of connections to the state DB.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
    location: String,
    /// The SQLite file, for bulk reads that bypass sqlx.
    sqlite_file: Option<std::path::PathBuf>,
    /// The native connection for the relay's claims and outcomes (a writable SQLite file).
    writer: Option<writer::Writer>,
    /// How long a [`locks::Lease`] lasts without a renewal.
    lease_ttl: Duration,
    /// The time every row this store writes is stamped with, and every due time, lease and quota
    /// window is measured against (never the database's own `now()`).
    clock: SharedClock,
    /// Cancelled when the process shuts down: work under a lease of this store stops before its
    /// next side effect (shared by every clone).
    stop: tokio_util::sync::CancellationToken,
}

/// `s` with every NUL character as U+FFFD. PostgreSQL's text type cannot hold NUL, and text that
/// a provider or a server wrote (a webhook field, an SMTP reply) may carry one; both backends
/// store the same text.
pub(crate) fn nul_free(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// The machine's time as the state DB stores times (RFC 3339, milliseconds, UTC), for code that
/// has no [`Store`] at hand; code that has one asks [`Store::now_text`].
pub(crate) fn now_text() -> String {
    time_text(chrono::Utc::now())
}

/// `t` as the state DB stores times: RFC 3339, milliseconds, UTC (`Z`), so that text order is
/// time order on both backends.
pub fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens the state DB on the machine's clock ([`Store::open_with_clock`] with a
    /// [`SystemClock`]).
    pub async fn open(url: &DbUrl, mode: OpenMode) -> Result<Store, StoreError> {
        Store::open_with_clock(url, mode, SystemClock::shared()).await
    }

    /// Opens the state DB. `clock` is the time the store and everything working through it (the
    /// relay's due times, back-off, leases and quota windows; the named leases) go by.
    pub async fn open_with_clock(
        url: &DbUrl,
        mode: OpenMode,
        clock: SharedClock,
    ) -> Result<Store, StoreError> {
        install_default_drivers();
        crate::db_tls::install_crypto_provider();
        let location = url.location();
        let tls = url.tls();
        let connect_err = |source: sqlx::Error| match tls
            .as_ref()
            .and_then(|t| crate::db_tls::explain(&source, t))
        {
            Some(reason) => StoreError::Tls {
                location: location.clone(),
                reason,
                source,
            },
            None => StoreError::Connect {
                location: location.clone(),
                source,
            },
        };
        let kind = url.kind();
        let any_url = match kind {
            DbKind::MySql => return Err(StoreError::Unsupported { location }),
            DbKind::Postgres => url.expose().to_owned(),
            DbKind::Sqlite => {
                let path = url.sqlite_path();
                match mode {
                    OpenMode::ReadOnly => {
                        if let Some(p) = &path
                            && !p.exists()
                        {
                            return Err(StoreError::Missing { location });
                        }
                    }
                    OpenMode::ReadWrite => {
                        if let Some(p) = &path {
                            if let Some(dir) = p.parent()
                                && !dir.as_os_str().is_empty()
                            {
                                std::fs::create_dir_all(dir)
                                    .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                            }
                            // Create the file and switch it to WAL once; the mode is persistent.
                            let conn = SqliteConnectOptions::from_str(url.expose())
                                .map_err(connect_err)?
                                .create_if_missing(true)
                                .journal_mode(SqliteJournalMode::Wal)
                                .connect()
                                .await
                                .map_err(connect_err)?;
                            sqlx::Connection::close(conn).await.map_err(connect_err)?;
                        }
                    }
                }
                let base = url
                    .expose()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                match mode {
                    OpenMode::ReadOnly => format!("{base}?mode=ro"),
                    OpenMode::ReadWrite => format!("{base}?mode=rwc"),
                }
            }
        };
        let options = AnyConnectOptions::from_str(&any_url).map_err(connect_err)?;
        // One direct connection first, so that a refused connection or failed login is
        // reported as such at once instead of as a pool timeout.
        options
            .connect()
            .await
            .map_err(connect_err)?
            .close()
            .await
            .map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == DbKind::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            // The pool replaces a connection found dead (a restarted server) on the next acquire,
            // silently: each one it opens is counted and logged (debug), so a reconnect shows.
            .after_connect(|_, _| {
                Box::pin(async {
                    metrics::counter!("mailbridge_state_db_connections_opened_total").increment(1);
                    tracing::debug!("Opened a connection to the state database");
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        Ok(Store {
            pool,
            kind,
            location,
            sqlite_file: if kind == DbKind::Sqlite {
                url.sqlite_path()
            } else {
                None
            },
            writer: match (kind, mode) {
                (DbKind::Sqlite, OpenMode::ReadWrite) => url.sqlite_path().map(writer::Writer::new),
                _ => None,
            },
            lease_ttl: locks::default_lease_ttl(),
            clock,
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Graceful shutdown: every piece of work under a lease of this store (and its clones) stops
    /// before its next side effect ([`locks::LeaseWatch::check`] answers
    /// [`StoreError::Stopped`]) and hands its lease back.
    pub fn stop_leased_work(&self) {
        self.stop.cancel();
    }

    /// Whether [`Store::stop_leased_work`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub(crate) fn stop_token(&self) -> &tokio_util::sync::CancellationToken {
        &self.stop
    }

    /// The clock this store goes by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// This store on `clock` (a test that steers time on a store a helper opened).
    pub fn with_clock(mut self, clock: SharedClock) -> Store {
        self.clock = clock;
        self
    }

    /// The time now on this store's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// [`Store::now`] as the state DB stores times.
    pub fn now_text(&self) -> String {
        time_text(self.clock.now())
    }

    /// How long the leases this store hands out ([`Store::lease`]) last without a renewal; the
    /// heartbeat renews them every third of that.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// This store with leases of `ttl` (tests that let a lease run out; at least 100 ms).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Store {
        self.lease_ttl = ttl.max(Duration::from_millis(100));
        self
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction on the state DB.
    pub(crate) async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        self.pool.begin().await.map_err(StoreError::query("begin"))
    }

    /// Puts `email` on the suppression list within `tx` ([`ADD_SUPPRESSION_SQL`]). True when
    /// the address was not suppressed before.
    pub(crate) async fn add_suppression(
        tx: &mut Tx<'_>,
        email: &str,
        reason: &str,
        source: &str,
        detail: Option<&str>,
        now: &str,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(ADD_SUPPRESSION_SQL)
            .bind(email)
            .bind(reason)
            .bind(source)
            .bind(detail)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("add a suppression"))?
            .rows_affected();
        Ok(changed > 0)
    }

    /// Runs `statement` on the pool; returns how many rows it changed. `what` names it in the
    /// error.
    pub(crate) async fn execute(
        &self,
        what: &'static str,
        statement: Statement<'_>,
    ) -> Result<u64, StoreError> {
        Ok(statement
            .execute(&self.pool)
            .await
            .map_err(StoreError::query(what))?
            .rows_affected())
    }

    /// Runs one writing statement where this store writes: on the native SQLite connection
    /// ([`writer`]) when there is one, else on the pool (PostgreSQL). One SQL text for both, with
    /// `$n` placeholders; returns how many rows it changed.
    pub(crate) async fn write(
        &self,
        what: &'static str,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<u64, StoreError> {
        if let Some(writer) = self.writer() {
            return writer
                .run(what, move |conn| {
                    let err = writer::native_err(what);
                    let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
                    let values: Vec<&dyn rusqlite::ToSql> =
                        params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
                    writer::bind_numbered(&mut stmt, &values).map_err(&err)?;
                    Ok(stmt.raw_execute().map_err(&err)? as u64)
                })
                .await;
        }
        self.execute(what, bind_params(sqlx::query(sql), params))
            .await
    }

    /// Runs `statements` in one transaction where this store writes, as [`Store::write`] does:
    /// on the native SQLite connection when there is one, else in a pool transaction. Returns
    /// how many rows each statement changed. A statement with borrowed (static) text is kept
    /// prepared on the native connection; one built per call (an `IN` list) is not, so it does
    /// not push the hot statements out of the connection's cache.
    ///
    /// Why background writes go here on SQLite: from a pool connection they contend with the
    /// native connection for SQLite's one write lock, and the loser sleeps in SQLite's busy
    /// handler (1, 2, 5, 10 ms …) whatever the other's transaction takes; when the native
    /// connection loses, every webhook and relay batch queued on it waits those milliseconds.
    /// On the native connection's thread a batch waits only for the transaction before it.
    pub(crate) async fn write_all(
        &self,
        what: &'static str,
        statements: Vec<(std::borrow::Cow<'static, str>, Vec<Param>)>,
    ) -> Result<Vec<u64>, StoreError> {
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(writer) = self.writer() {
            return writer
                .transaction(what, move |conn, err| {
                    let mut changed = Vec::with_capacity(statements.len());
                    for (sql, params) in &statements {
                        let values: Vec<&dyn rusqlite::ToSql> =
                            params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
                        let run = |stmt: &mut rusqlite::Statement<'_>| {
                            writer::bind_numbered(stmt, &values)?;
                            stmt.raw_execute()
                        };
                        let n = match sql {
                            std::borrow::Cow::Borrowed(sql) => {
                                conn.prepare_cached(sql).and_then(|mut s| run(&mut s))
                            }
                            std::borrow::Cow::Owned(sql) => {
                                conn.prepare(sql).and_then(|mut s| run(&mut s))
                            }
                        }
                        .map_err(err)?;
                        changed.push(n as u64);
                    }
                    Ok(changed)
                })
                .await;
        }
        let mut tx = self.begin().await?;
        let mut changed = Vec::with_capacity(statements.len());
        for (sql, params) in statements {
            let statement = bind_params(sqlx::query(sqlx::AssertSqlSafe(sql.into_owned())), params);
            changed.push(
                statement
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?
                    .rows_affected(),
            );
        }
        tx.commit().await.map_err(StoreError::query(what))?;
        Ok(changed)
    }

    /// A read-only native pool for bulk reads, when the state DB is SQLite.
    pub(crate) fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    /// The native SQLite connection for hot write paths ([`writer`]), when the state DB is a
    /// writable SQLite file.
    pub(crate) fn writer(&self) -> Option<&writer::Writer> {
        self.writer.as_ref()
    }

    fn migrator(&self) -> &'static Migrator {
        match self.kind {
            DbKind::Postgres => &POSTGRES_MIGRATIONS,
            _ => &SQLITE_MIGRATIONS,
        }
    }

    /// Applies pending migrations; returns how many were applied. Idempotent.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let before = self.applied_versions().await?.len();
        self.migrator()
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                location: self.location.clone(),
                source,
            })?;
        let after = self.applied_versions().await?.len();
        Ok(after.saturating_sub(before))
    }

    /// Applies the migrations up to `version` only: a test's state DB as an older release left it.
    #[cfg(test)]
    pub(crate) async fn migrate_to(&self, version: i64) -> Result<(), StoreError> {
        self.migrator()
            .run_to(version, &self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                location: self.location.clone(),
                source,
            })
    }

    async fn applied_versions(&self) -> Result<Vec<i64>, StoreError> {
        let exists: Option<(i64,)> = match self.kind {
            DbKind::Postgres => sqlx::query_as(
                "SELECT CAST(1 AS BIGINT) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()",
            ),
            _ => sqlx::query_as("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"),
        }
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::query("read applied migrations"))?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::query("read applied migrations"))?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// Fails unless every known migration is applied (and no unknown one is).
    pub async fn ensure_migrated(&self) -> Result<(), StoreError> {
        let applied = self.applied_versions().await?;
        let known: Vec<i64> = self.migrator().iter().map(|m| m.version).collect();
        if let Some(v) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::TooNew {
                location: self.location.clone(),
                version: *v,
            });
        }
        let pending = known.iter().filter(|v| !applied.contains(v)).count();
        if pending > 0 {
            return Err(StoreError::NotMigrated {
                location: self.location.clone(),
                pending,
            });
        }
        Ok(())
    }

    /// Whether this store's connections are encrypted: `Some(true)` on a PostgreSQL connection
    /// over TLS, `Some(false)` on a plaintext one, `None` for a SQLite file.
    pub async fn tls_in_use(&self) -> Result<Option<bool>, StoreError> {
        if self.kind != DbKind::Postgres {
            return Ok(None);
        }
        let ssl: Option<(bool,)> =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::query("ask whether the connection uses TLS"))?;
        Ok(Some(ssl.is_some_and(|(on,)| on)))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    /// A lost connection is worth a retry; a statement's own failure, or a bad value, is not.
    #[test]
    fn only_connection_failures_are_transient() {
        use super::StoreError;
        let query = |source| StoreError::Query {
            what: "test",
            source,
        };
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(query(sqlx::Error::Io(reset)).is_transient());
        assert!(query(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!query(sqlx::Error::RowNotFound).is_transient());
        assert!(!query(sqlx::Error::PoolClosed).is_transient());
        let corrupt = StoreError::Corrupt {
            what: "test",
            value: "x".into(),
        };
        assert!(!corrupt.is_transient());
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(super::placeholders(2, 3), "$2, $3, $4");
        assert_eq!(super::placeholders(1, 0), "");
        use crate::config::DbKind::{Postgres, Sqlite};
        for (kind, rows, width, want) in [
            (Postgres, 2, 3, "($1, $2, $3), ($4, $5, $6)"),
            (Postgres, 1, 1, "($1)"),
            (Sqlite, 2, 3, "(?, ?, ?), (?, ?, ?)"),
            (Sqlite, 1, 1, "(?)"),
        ] {
            assert_eq!(super::row_placeholders(kind, rows, width), want);
        }
    }
}
