//! One long-lived native SQLite connection for the relay's hot path (claiming messages and
//! recording their outcomes), used instead of the sqlx pool when the state DB is a SQLite file.
//!
//! Why not the pool: in WAL mode a SQLite connection drops its whole page cache whenever another
//! connection has written since its last transaction. With the pool's connections taking turns,
//! every claim and every outcome batch started cold and read back the pages it touched (several
//! `pread`s a message), and every result row crossed from sqlx's worker thread to the runtime on
//! its own. One connection that does all of this work keeps its cache warm, runs each batch in one
//! hand-off to its thread, and reuses its prepared statements. Writes are serialised by SQLite's
//! lock anyway, so nothing runs less in parallel than before. The SQL is the same text as on the
//! sqlx path (PostgreSQL's), with its `$n` placeholders ([`bind_numbered`]).
//!
//! The connection is opened on first use with the pragmas sqlx's pool connections have
//! (`synchronous = FULL`, `foreign_keys = ON`, a 5 s busy timeout), so a commit is as durable here
//! as there.
//!
//! WAL checkpoints run on a thread of their own ([`checkpointer`]), not in the commits of this
//! connection: SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000
//! pages, which copied the pages into the database file and fsynced it (2.3 ms on average,
//! three times a second under the webhooks bench) while every batch queued here waited.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use super::StoreError;

/// A batch of work for the connection's thread.
type Job = Box<dyn FnOnce(&mut Option<rusqlite::Connection>) + Send>;

/// The shared native connection (cloned with the [`super::Store`]). It lives on a thread of its
/// own, started on first use, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Writer {
    path: PathBuf,
    jobs: Arc<OnceLock<Result<mpsc::Sender<Job>, String>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

/// A failed native statement: what was being done, and SQLite's error as the source.
pub fn native_err(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { what, source }
}

impl Writer {
    pub fn new(path: PathBuf) -> Writer {
        Writer {
            path,
            jobs: Arc::new(OnceLock::new()),
        }
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction ([`immediate`]) on the connection's
    /// thread. `work` gets the connection and the error its failed statements map to, which names
    /// `what`.
    pub async fn transaction<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(
                &rusqlite::Connection,
                &dyn Fn(rusqlite::Error) -> StoreError,
            ) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        self.run(what, move |conn| {
            let err = native_err(what);
            immediate(conn, |tx| work(tx, &err), &err)
        })
        .await
    }

    /// Runs `work` on the connection's thread (one hand-off for the whole batch). A connection
    /// that failed mid-transaction is dropped and reopened for the next batch.
    pub async fn run<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let failed = |message: String| StoreError::Connection { what, message };
        let jobs = self
            .jobs
            .get_or_init(|| self.start())
            .as_ref()
            .map_err(|e| failed(e.clone()))?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        let job: Job = Box::new(move |slot| {
            let conn = match slot {
                Some(conn) => conn,
                None => match open(&path) {
                    Ok(conn) => slot.insert(conn),
                    Err(e) => {
                        let _ = done_tx.send(Err(native_err(what)(e)));
                        return;
                    }
                },
            };
            let result = work(conn);
            if result.is_err() && !conn.is_autocommit() {
                *slot = None;
            }
            let _ = done_tx.send(result);
        });
        jobs.send(job)
            .map_err(|_| failed("the SQLite writer thread has stopped".into()))?;
        done_rx
            .await
            .map_err(|_| failed("the SQLite writer thread stopped mid-batch".into()))?
    }

    fn start(&self) -> Result<mpsc::Sender<Job>, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        // One pending "the WAL grew" signal is enough: a checkpoint covers every write before it.
        let (wrote, written) = mpsc::sync_channel::<()>(1);
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(&path, &written))
            .map_err(|e| format!("cannot start the SQLite checkpoint thread: {e}"))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut conn = None;
                for job in rx {
                    // A panicking batch (a bug) loses only itself: its caller gets an error, and
                    // the next batch gets a fresh connection.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&mut conn);
                    }));
                    if ran.is_err() {
                        conn = None;
                    }
                    let _ = wrote.try_send(());
                }
                // Dropping `wrote` ends the checkpoint thread.
            })
            .map_err(|e| format!("cannot start the SQLite writer thread: {e}"))?;
        Ok(tx)
    }
}

/// How long after a write the checkpoint thread copies the WAL into the database file: the
/// writes of that time share one checkpoint (and its fsyncs).
const CHECKPOINT_AFTER: Duration = Duration::from_millis(250);

/// The WAL size (pages) at which the writer's own connection still checkpoints in its commit, as
/// a backstop should the checkpoint thread fall behind: SQLite's default is 1,000.
const BACKSTOP_CHECKPOINT_PAGES: i64 = 10_000;

/// Runs a PASSIVE checkpoint [`CHECKPOINT_AFTER`] a write, on a connection of its own, until the
/// writer thread ends. PASSIVE neither waits for nor blocks the writer: it copies what no reader
/// still needs, and the writer starts the WAL over once all of it has been copied. Under a steady
/// stream of commits the WAL's end moves on while it copies, so it rarely copies all of it; the
/// writer's backstop ([`BACKSTOP_CHECKPOINT_PAGES`]) then completes one, with most pages copied
/// already (measured: 2 database fsyncs in the writer's commits in 4 s instead of 13). Its connection
/// is `synchronous = FULL`: the checkpoint fsyncs the database file before the WAL may be
/// reused, so a committed transaction is on disk in one or the other at every moment.
fn checkpointer(path: &std::path::Path, written: &mpsc::Receiver<()>) {
    let mut conn: Option<rusqlite::Connection> = None;
    while written.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_AFTER);
        while written.try_recv().is_ok() {}
        let ready = match conn.take() {
            Some(c) => Ok(c),
            None => open(path),
        };
        let checkpointed = ready.and_then(|c| {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(c)
        });
        match checkpointed {
            Ok(c) => conn = Some(c),
            // The next write tries again on a fresh connection; meanwhile the backstop holds.
            Err(e) => tracing::debug!("A WAL checkpoint of the state database failed: {e}"),
        }
    }
}

fn open(path: &std::path::Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints are the checkpoint thread's ([`checkpointer`]); this is only a backstop.
    conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
    // Planner stability: a cached statement keeps its plan whatever its parameters' values. The
    // bundled SQLite has STAT4, under which binding a new value to a parameter compared with an
    // indexed column re-prepares the statement at its next step: every claim was parsed and
    // planned anew.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Binds `values` to the statement's numbered parameters `$1`, `$2`, … (the placeholders the
/// queries share with the sqlx path). SQLite numbers named parameters by first appearance, so each
/// parameter's position is matched to its number by name (read from the statement: no formatting
/// or lookup per value, which was an eighth of the writer's work).
pub fn bind_numbered(
    stmt: &mut rusqlite::Statement<'_>,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(), rusqlite::Error> {
    for index in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(index).unwrap_or("?");
        let value = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| values.get(n))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
        stmt.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Binds `values` to the statement's anonymous parameters (`?`), in order. Cheaper than
/// [`bind_numbered`] for a statement run once per row: SQLite finds a parameter's name by a scan
/// of the statement's names, so naming every parameter of a 14-column row cost about 2% of the
/// webhook writer's CPU.
pub fn bind_in_order(
    stmt: &mut rusqlite::Statement<'_>,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(), rusqlite::Error> {
    let expected = stmt.parameter_count();
    if expected != values.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            values.len(),
            expected,
        ));
    }
    for (i, value) in values.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, value)?;
    }
    Ok(())
}

/// Runs `work` in a `BEGIN IMMEDIATE` transaction and commits it, with both statements from the
/// connection's cache (rusqlite's `Transaction` parses them anew each time). On an error the
/// transaction is left open: [`Writer::run`] drops a connection that is not in autocommit.
pub fn immediate<T>(
    conn: &mut rusqlite::Connection,
    work: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    err: impl Fn(rusqlite::Error) -> StoreError,
) -> Result<T, StoreError> {
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.raw_execute())
        .map_err(&err)?;
    let out = work(conn)?;
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.raw_execute())
        .map_err(&err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("w.db");
        rusqlite::Connection::open(&path)
            .expect("open")
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
            .expect("create");
        path
    }

    fn count(path: &std::path::Path) -> i64 {
        rusqlite::Connection::open(path)
            .expect("open")
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count")
    }

    /// A batch that fails inside a transaction must neither commit nor keep SQLite's write lock:
    /// its connection is dropped, and the next batch works on a fresh one.
    #[tokio::test]
    async fn a_batch_that_fails_mid_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table(dir.path());
        let writer = Writer::new(path.clone());
        let failed = writer
            .run("insert", |conn| {
                conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
                    .map_err(native_err("insert"))?;
                Err::<(), _>(StoreError::Read {
                    what: "insert",
                    message: "stopped half-way".into(),
                })
            })
            .await;
        assert!(failed.is_err());
        let other = rusqlite::Connection::open(&path).expect("open");
        other.busy_timeout(Duration::ZERO).expect("busy timeout");
        other
            .execute("INSERT INTO t VALUES (2)", [])
            .expect("the write lock was released");
        let n = writer
            .run("count", |conn| {
                conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map_err(native_err("count"))
            })
            .await
            .expect("the next batch runs");
        assert_eq!(n, 1, "only the other connection's row is there");
    }

    /// A failed statement says what was being done, and SQLite's own message is its cause
    /// (it was reported as a "read failed" whatever the statement).
    #[tokio::test]
    async fn a_failed_statement_names_the_work_and_keeps_sqlites_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Writer::new(table(dir.path()));
        let failed = writer
            .run("record delivery attempts", |conn| {
                conn.execute("UPDATE missing SET x = 1", [])
                    .map_err(native_err("record delivery attempts"))
            })
            .await
            .expect_err("no such table");
        assert!(
            matches!(
                failed,
                StoreError::Sqlite {
                    what: "record delivery attempts",
                    ..
                }
            ),
            "{failed:?}"
        );
        let text = crate::error_chain(&failed);
        assert!(
            text.starts_with("state database statement failed (record delivery attempts): ")
                && text.contains("no such table: missing"),
            "{text}"
        );
    }

    /// A panicking batch (a bug) fails its caller only; the thread goes on serving.
    #[tokio::test]
    async fn a_panicking_batch_fails_its_caller_and_the_next_one_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table(dir.path());
        let writer = Writer::new(path.clone());
        let failed = writer
            .run("panic", |_conn| -> Result<(), StoreError> {
                panic!("a bug in a batch")
            })
            .await;
        assert!(failed.is_err());
        writer
            .run("insert", |conn| {
                conn.execute("INSERT INTO t VALUES (1)", [])
                    .map_err(native_err("insert"))
            })
            .await
            .expect("the next batch runs");
        assert_eq!(count(&path), 1);
    }
}
