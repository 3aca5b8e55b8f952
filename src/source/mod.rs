//! The member database (PostgreSQL, MySQL/MariaDB or SQLite): reading members through the
//! mapping's source query as a stream ordered by member key, and running writeback statements
//! with bound parameters.

mod decode;
mod pool;
mod sqlite_reader;

use std::collections::HashMap;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Connection, Executor, SqlSafeStr, Statement};

/// A column value (the ground's type, re-exported where the rows come from).
pub use crate::domain::Value;
pub use pool::MemberPool;
pub use sqlite_reader::RowChunk;

use crate::config::{DbKind, DbUrl};
use crate::mapping::NamedSql;

/// Errors from the member database. Messages name the database by host or file, never by a URL
/// with its password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to the member database at {location}")]
    Connect {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    /// TLS failed (see [`crate::db_tls::explain`] for the reasons).
    #[error("cannot connect to the member database at {location}: {reason}")]
    Tls {
        location: String,
        reason: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the member database at {location} has no file there")]
    Missing { location: String },
    #[error("the source query failed on the member database at {location}")]
    Query {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("reading the member database at {location} failed: {message}")]
    Read { location: String, message: String },
    #[error(
        "column `{column}` of the source query has type {type_name}, which mailbridge cannot read; cast it in the query (e.g. CAST({column} AS TEXT))"
    )]
    UnsupportedType { column: String, type_name: String },
    #[error("the writeback statement `{name}` failed on the member database at {location}")]
    Writeback {
        name: String,
        location: String,
        #[source]
        source: sqlx::Error,
    },
}

#[derive(Clone, Debug)]
enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// A value bound to a writeback parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Null,
    Int(i64),
    Text(String),
    Timestamp(chrono::DateTime<chrono::Utc>),
}

/// A connection pool to the member database.
#[derive(Clone, Debug)]
pub struct MemberSource {
    pool: Pool,
    location: String,
    /// For SQLite files: the path and whether to open it read-only (bulk reads bypass sqlx).
    sqlite_file: Option<(std::path::PathBuf, bool)>,
}

/// The pool of a database server (PostgreSQL or MySQL/MariaDB) at `url`, its options parsed as
/// `O`.
async fn server_pool<O: ConnectOptions>(
    url: &DbUrl,
    timeout: Duration,
) -> Result<sqlx::Pool<<O::Connection as Connection>::Database>, sqlx::Error>
where
    O::Connection: Sized,
{
    // Reading a whole member table is slow by nature: no "slow statement" warnings.
    let opts = O::from_str(url.expose())?
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
    // One direct connection first: a refused or failed login is reported as such at once,
    // instead of as a pool timeout.
    opts.connect().await?.close().await?;
    Ok(sqlx::pool::PoolOptions::new()
        .max_connections(4)
        .acquire_timeout(timeout)
        .connect_lazy_with(opts))
}

pub type RowStream<'a> = Pin<Box<dyn Stream<Item = Result<Vec<Value>, SourceError>> + Send + 'a>>;
pub type ChunkStream<'a> = Pin<Box<dyn Stream<Item = Result<RowChunk, SourceError>> + Send + 'a>>;

impl MemberSource {
    /// Connects. With `read_only`, SQLite files are opened read-only (a dry run writes nothing).
    pub async fn connect(url: &DbUrl, read_only: bool) -> Result<MemberSource, SourceError> {
        let location = url.location();
        let tls = url.tls();
        crate::db_tls::install_crypto_provider();
        let connect_err = |source: sqlx::Error| match tls
            .as_ref()
            .and_then(|t| crate::db_tls::explain(&source, t))
        {
            Some(reason) => SourceError::Tls {
                location: location.clone(),
                reason,
                source,
            },
            None => SourceError::Connect {
                location: location.clone(),
                source,
            },
        };
        let timeout = Duration::from_secs(10);
        let sqlite_file = url.sqlite_path().map(|p| (p, read_only));
        let pool = match url.kind() {
            DbKind::Postgres => Pool::Postgres(
                server_pool::<PgConnectOptions>(url, timeout)
                    .await
                    .map_err(connect_err)?,
            ),
            DbKind::MySql => Pool::MySql(
                server_pool::<MySqlConnectOptions>(url, timeout)
                    .await
                    .map_err(connect_err)?,
            ),
            DbKind::Sqlite => {
                if let Some(path) = url.sqlite_path()
                    && !path.exists()
                {
                    return Err(SourceError::Missing { location });
                }
                let opts = SqliteConnectOptions::from_str(url.expose())
                    .map_err(connect_err)?
                    .read_only(read_only)
                    // Let SQLite's worker thread run ahead of the consumer instead of handing
                    // over one row at a time (fewer context switches on large tables).
                    .row_buffer_size(4096)
                    // A small page cache: this pool counts and reads the members once each (a
                    // scan gains nothing from a cache, and SQLite's default 2 MiB of each
                    // connection stays resident) and writes back a few rows.
                    .pragma("cache_size", "-512")
                    .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(timeout)
                        .connect_with(opts)
                        .await
                        .map_err(connect_err)?,
                )
            }
        };
        Ok(MemberSource {
            pool,
            location,
            sqlite_file,
        })
    }

    pub fn kind(&self) -> DbKind {
        match self.pool {
            Pool::Postgres(_) => DbKind::Postgres,
            Pool::MySql(_) => DbKind::MySql,
            Pool::Sqlite(_) => DbKind::Sqlite,
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn query_err(&self, source: sqlx::Error) -> SourceError {
        SourceError::Query {
            location: self.location.clone(),
            source,
        }
    }

    /// The source query wrapped so that rows come ordered by the key column.
    pub fn ordered_query(query: &str, key: &str) -> String {
        format!("SELECT * FROM ({query}) AS mailbridge_src ORDER BY {key}")
    }

    /// How many rows a query returns (for the progress bar).
    pub async fn count(&self, query: &str) -> Result<u64, SourceError> {
        let sql = AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM ({query}) AS mailbridge_count"
        ));
        let n: i64 = match &self.pool {
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Pool::MySql(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .map_err(|e| self.query_err(e))?;
        Ok(n.max(0) as u64)
    }

    /// The result columns of a query, without running it.
    pub async fn columns(&self, sql: &str) -> Result<Vec<String>, SourceError> {
        fn names<C: Column>(cols: &[C]) -> Vec<String> {
            cols.iter().map(|c| c.name().to_owned()).collect()
        }
        let sql = AssertSqlSafe(sql.to_owned()).into_sql_str();
        Ok(match &self.pool {
            Pool::Postgres(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| self.query_err(e))?
                    .columns(),
            ),
            Pool::MySql(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| self.query_err(e))?
                    .columns(),
            ),
            Pool::Sqlite(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| self.query_err(e))?
                    .columns(),
            ),
        })
    }

    /// Streams the rows of `sql`. Rows are decoded one at a time; memory does not grow with the
    /// number of rows.
    pub fn stream<'a>(&'a self, sql: &str) -> RowStream<'a> {
        self.stream_chunks(sql)
            .map_ok(|chunk| {
                futures::stream::iter(
                    chunk
                        .rows()
                        .iter()
                        .map(|r| Ok(r.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .try_flatten()
            .boxed()
    }

    /// Streams the rows of `sql` in chunks, in order: the bulk read of a sync, which looks at
    /// each row once and keeps nothing of it. A SQLite file's chunks reuse their memory.
    pub fn stream_chunks<'a>(&'a self, sql: &str) -> ChunkStream<'a> {
        /// Rows gathered into one chunk from a driver that yields them one at a time.
        const GATHER: usize = 256;
        let loc = self.location.clone();
        let qerr = move |source| SourceError::Query {
            location: loc.clone(),
            source,
        };
        let gathered = |rows: RowStream<'a>| -> ChunkStream<'a> {
            rows.ready_chunks(GATHER)
                .map(|rows| {
                    rows.into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map(RowChunk::owned)
                })
                .boxed()
        };
        if let Some((path, read_only)) = &self.sqlite_file {
            let location = self.location.clone();
            let rx = sqlite_reader::spawn(path.clone(), sql.to_owned(), *read_only);
            return tokio_stream_from(rx)
                .map(move |chunk| {
                    chunk.map_err(|message| SourceError::Read {
                        location: location.clone(),
                        message,
                    })
                })
                .boxed();
        }
        match &self.pool {
            Pool::Postgres(p) => gathered(
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .fetch(p)
                    .map_err(qerr)
                    .and_then(|row| async move { decode::pg_row(&row) })
                    .boxed(),
            ),
            Pool::MySql(p) => gathered(
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .fetch(p)
                    .map_err(qerr)
                    .and_then(|row| async move { decode::mysql_row(&row) })
                    .boxed(),
            ),
            Pool::Sqlite(p) => gathered(
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .fetch(p)
                    .map_err(qerr)
                    .and_then(|row| async move { decode::sqlite_row(&row) })
                    .boxed(),
            ),
        }
    }

    /// Runs a writeback statement with its named parameters bound; returns the rows affected.
    pub async fn execute(
        &self,
        name: &str,
        statement: &NamedSql,
        params: &HashMap<&str, Param>,
    ) -> Result<u64, SourceError> {
        let (sql, binds) = statement.to_positional(self.kind());
        let value = |b: &str| params.get(b).cloned().unwrap_or(Param::Null);
        let err = |source| SourceError::Writeback {
            name: name.to_owned(),
            location: self.location.clone(),
            source,
        };
        macro_rules! bind_all {
            ($q:expr) => {{
                let mut q = $q;
                for b in &binds {
                    q = match value(b) {
                        Param::Null => q.bind(None::<String>),
                        Param::Int(i) => q.bind(i),
                        Param::Text(t) => q.bind(t),
                        Param::Timestamp(t) => q.bind(t),
                    };
                }
                q
            }};
        }
        let affected = match &self.pool {
            Pool::Postgres(p) => bind_all!(sqlx::query(AssertSqlSafe(sql.clone())))
                .execute(p)
                .await
                .map_err(err)?
                .rows_affected(),
            Pool::MySql(p) => bind_all!(sqlx::query(AssertSqlSafe(sql.clone())))
                .execute(p)
                .await
                .map_err(err)?
                .rows_affected(),
            Pool::Sqlite(p) => bind_all!(sqlx::query(AssertSqlSafe(sql.clone())))
                .execute(p)
                .await
                .map_err(err)?
                .rows_affected(),
        };
        Ok(affected)
    }

    /// Whether the connections to the member DB are encrypted: `Some(true)` over TLS,
    /// `Some(false)` in plaintext, `None` for a SQLite file.
    pub async fn tls_in_use(&self) -> Result<Option<bool>, SourceError> {
        match &self.pool {
            Pool::Postgres(p) => {
                let ssl: Option<bool> =
                    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .fetch_optional(p)
                        .await
                        .map_err(|e| self.query_err(e))?;
                Ok(Some(ssl.unwrap_or(false)))
            }
            Pool::MySql(p) => {
                let row: Option<(String, String)> =
                    sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                        .fetch_optional(p)
                        .await
                        .map_err(|e| self.query_err(e))?;
                Ok(Some(row.is_some_and(|(_, cipher)| !cipher.is_empty())))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(p) => p.close().await,
            Pool::MySql(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

/// A stream over a bounded channel's receiver.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
