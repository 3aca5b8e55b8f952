//! Bulk reading of a SQLite member database with rusqlite on a blocking thread, handing rows over
//! in chunks. sqlx's SQLite driver hands over one row at a time across threads (a wake-up and
//! several allocations per row), which made a 1,000,000-member plan take about 14 s on two cores;
//! reading here and passing chunks of rows keeps it within the 10 s target. Both crates link the
//! same bundled libsqlite3 (libsqlite3-sys 0.37). sqlx still serves everything else.

use std::path::PathBuf;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::Value;

/// Rows per chunk sent to the async side.
const CHUNK: usize = 1024;

pub(super) type Chunk = Result<Vec<Vec<Value>>, String>;

/// Starts reading `sql` from the SQLite file at `path`; chunks of rows arrive on the receiver.
/// Reading stops early when the receiver is dropped.
pub(super) fn spawn(path: PathBuf, sql: String, read_only: bool) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    std::thread::spawn(move || {
        if let Err(e) = read(&path, &sql, read_only, &tx) {
            let _ = tx.blocking_send(Err(e.to_string()));
        }
    });
    rx
}

fn read(
    path: &std::path::Path,
    sql: &str,
    read_only: bool,
    tx: &mpsc::Sender<Chunk>,
) -> rusqlite::Result<()> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut stmt = conn.prepare(sql)?;
    let booleans: Vec<bool> = stmt
        .columns()
        .iter()
        .map(|c| {
            c.decl_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("BOOLEAN"))
        })
        .collect();
    let width = booleans.len();
    let mut rows = stmt.query([])?;
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for (i, is_bool) in booleans.iter().enumerate() {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) if *is_bool => Value::Bool(v != 0),
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Float(v),
                // Bytes that are not UTF-8 become U+FFFD: such an address is then reported and
                // skipped as invalid instead of stopping the run (invariant 6).
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
            });
        }
        chunk.push(values);
        if chunk.len() == CHUNK
            && tx
                .blocking_send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))))
                .is_err()
        {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}
