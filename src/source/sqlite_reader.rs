//! Bulk reading of a SQLite member database with rusqlite on a blocking thread, handing rows over
//! in chunks. sqlx's SQLite driver hands over one row at a time across threads (a wake-up and
//! several allocations per row), which made a 1,000,000-member plan take about 14 s on two cores;
//! reading here and passing chunks of rows keeps it within the 10 s target. Both crates link the
//! same bundled libsqlite3 (libsqlite3-sys 0.37). sqlx still serves everything else.
//!
//! A chunk's buffers go back to the reading thread once read ([`RowChunk`]'s drop), and the next
//! chunk is written into them: the rows' vectors and text keep their memory, so a steady stream
//! allocates nothing per row, and no row is freed on another thread than the one that made it
//! (glibc's arena lock, fought over by the two threads, cost about a fifth of a resync's CPU).

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::Value;

/// Rows per chunk sent to the async side.
const CHUNK: usize = 1024;

/// Rows read from the member DB, in order. Dropping it hands its buffers back to the reader.
pub struct RowChunk {
    /// The rows; only the first `len` are this chunk's (the rest are buffers kept for reuse).
    rows: Vec<Vec<Value>>,
    len: usize,
    back: Option<std_mpsc::Sender<Vec<Vec<Value>>>>,
}

impl RowChunk {
    /// A chunk of rows that are not recycled (from a driver that makes each row anew).
    pub(super) fn owned(rows: Vec<Vec<Value>>) -> RowChunk {
        RowChunk {
            len: rows.len(),
            rows,
            back: None,
        }
    }

    /// The chunk's rows, in order.
    pub fn rows(&self) -> &[Vec<Value>] {
        &self.rows[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for RowChunk {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            // The reader may have finished: then the buffers are simply freed.
            let _ = back.send(std::mem::take(&mut self.rows));
        }
    }
}

pub(super) type Chunk = Result<RowChunk, String>;

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

/// Writes a column's value into `slot`, reusing the text buffer already there.
fn store(slot: &mut Value, value: ValueRef<'_>, is_bool: bool) {
    *slot = match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) if is_bool => Value::Bool(v != 0),
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Float(v),
        // Bytes that are not UTF-8 become U+FFFD: such an address is then reported and
        // skipped as invalid instead of stopping the run (invariant 6).
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            // `from_utf8` checks ASCII a word at a time; the lossy decoder only runs on bytes
            // that are not UTF-8 (it took 130 instructions a column, a twentieth of a resync).
            let text = match std::str::from_utf8(t) {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(t),
            };
            if let Value::Text(s) = slot {
                s.clear();
                s.push_str(&text);
                return;
            }
            Value::Text(text.into_owned())
        }
    };
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
    // One pass in key order reads each page once: a cache beyond the b-tree's upper levels only
    // holds memory (SQLite's default is 2 MiB).
    conn.pragma_update(None, "cache_size", -512)?;
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
    let (back, returned) = std_mpsc::channel::<Vec<Vec<Value>>>();
    let fresh = || Vec::with_capacity(CHUNK);
    let mut rows = stmt.query([])?;
    let mut buffer: Vec<Vec<Value>> = fresh();
    let mut len = 0;
    while let Some(row) = rows.next()? {
        if len == buffer.len() {
            buffer.push(vec![Value::Null; width]);
        }
        let values = &mut buffer[len];
        for (i, (slot, is_bool)) in values.iter_mut().zip(&booleans).enumerate() {
            store(slot, row.get_ref(i)?, *is_bool);
        }
        len += 1;
        if len == CHUNK {
            let next = returned.try_recv().unwrap_or_else(|_| fresh());
            let chunk = RowChunk {
                rows: std::mem::replace(&mut buffer, next),
                len,
                back: Some(back.clone()),
            };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return Ok(());
            }
            len = 0;
        }
    }
    if len > 0 {
        let _ = tx.blocking_send(Ok(RowChunk {
            rows: buffer,
            len,
            back: None,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recycled chunk's rows hold this chunk's values, whatever the buffers held before.
    #[test]
    fn reused_buffers_hold_the_new_values() {
        let mut slot = Value::Text("a much longer old value".into());
        store(&mut slot, ValueRef::Text(b"new"), false);
        assert_eq!(slot, Value::Text("new".into()));
        store(&mut slot, ValueRef::Integer(1), true);
        assert_eq!(slot, Value::Bool(true));
        store(&mut slot, ValueRef::Null, false);
        assert_eq!(slot, Value::Null);
        store(&mut slot, ValueRef::Text(b"\xff@x.org"), false);
        assert_eq!(slot, Value::Text("\u{fffd}@x.org".into()));
    }
}
