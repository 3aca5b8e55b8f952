//! The `contacts` table: what mailbridge last made each member look like at the provider.

use std::collections::HashMap;
use std::fmt;

use futures::TryStreamExt;

use super::{Store, StoreError, Tx, now_text};
use crate::domain::{MemberKey, SubscriptionStatus};

/// What the state DB knows of one member in one audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactState {
    /// The address (identity form) the provider has for this member.
    pub email: Box<str>,
    /// The content hash last pushed, held as 16 bytes (a million contacts fit in memory).
    pub content_hash: StoredHash,
    pub remote_status: SubscriptionStatus,
}

/// A content hash as stored: the 32 hex digits of [`crate::mapping::Contact::content_hash`] as a
/// number; an empty or unreadable stored value never matches.
/// (All zeroes stands for "none": byte arrays keep the map entry small and unpadded.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredHash([u8; 16]);

impl StoredHash {
    pub fn from_hex(hex: &str) -> StoredHash {
        let mut bytes = [0u8; 16];
        match hex::decode_to_slice(hex, &mut bytes) {
            Ok(()) => StoredHash(bytes),
            Err(_) => StoredHash([0; 16]),
        }
    }

    /// Whether this is the hash whose bytes are `digest` (`Contact::content_digest`).
    pub fn matches(&self, digest: &[u8; 16]) -> bool {
        self.0 != [0; 16] && self.0 == *digest
    }
}

/// All contacts of an audience, sorted by member key ([`MemberKey::stream_cmp`]) in one exact-size vector: a million contacts
/// cost about 64 bytes each plus their two strings, with none of a hash table's slack. Lookups
/// are binary searches; [`ContactMap::take`] marks an entry as seen without moving the others.
#[derive(Clone, Debug, Default)]
pub struct ContactMap {
    entries: Vec<(MemberKey, ContactState)>,
    taken: Vec<bool>,
}

impl ContactMap {
    fn from_vec(mut entries: Vec<(MemberKey, ContactState)>) -> ContactMap {
        // Stable sort: cheap when the rows already came in key order. Duplicate keys cannot occur
        // (primary key), but a later one wins if they ever do.
        entries.sort_by(|a, b| a.0.stream_cmp(&b.0));
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let taken = vec![false; entries.len()];
        ContactMap { entries, taken }
    }

    fn index(&self, key: &MemberKey) -> Option<usize> {
        self.entries
            .binary_search_by(|(k, _)| k.stream_cmp(key))
            .ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &MemberKey) -> Option<&ContactState> {
        self.index(key)
            .filter(|&i| !self.taken[i])
            .map(|i| &self.entries[i].1)
    }

    /// Removes and returns a contact (each key can be taken once).
    pub fn take(&mut self, key: &MemberKey) -> Option<ContactState> {
        let i = self.index(key).filter(|&i| !self.taken[i])?;
        self.taken[i] = true;
        let placeholder = ContactState {
            email: Box::from(""),
            content_hash: StoredHash([0; 16]),
            remote_status: SubscriptionStatus::Archived,
        };
        Some(std::mem::replace(&mut self.entries[i].1, placeholder))
    }

    /// The contacts not taken, in stream order ([`MemberKey::stream_cmp`]).
    pub fn iter(&self) -> impl Iterator<Item = (&MemberKey, &ContactState)> {
        self.entries
            .iter()
            .zip(&self.taken)
            .filter(|(_, t)| !**t)
            .map(|((k, v), _)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &ContactState> {
        self.iter().map(|(_, v)| v)
    }
}

impl IntoIterator for ContactMap {
    type Item = (MemberKey, ContactState);
    type IntoIter = Box<dyn Iterator<Item = (MemberKey, ContactState)> + Send>;

    /// The contacts not taken, in member key order.
    fn into_iter(self) -> Self::IntoIter {
        Box::new(
            self.entries
                .into_iter()
                .zip(self.taken)
                .filter(|(_, t)| !*t)
                .map(|(e, _)| e),
        )
    }
}

impl<'a> IntoIterator for &'a ContactMap {
    type Item = (&'a MemberKey, &'a ContactState);
    type IntoIter = Box<dyn Iterator<Item = (&'a MemberKey, &'a ContactState)> + Send + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<(MemberKey, ContactState)> for ContactMap {
    fn from_iter<I: IntoIterator<Item = (MemberKey, ContactState)>>(iter: I) -> Self {
        ContactMap::from_vec(iter.into_iter().collect())
    }
}

/// An audience's contacts one at a time, in stream order ([`MemberKey::stream_cmp`]), for the
/// sync to merge with the member rows as both are read: on a SQLite state DB they are read on a
/// thread of their own and handed over in chunks, so memory does not grow with the audience.
pub struct ContactFeed {
    /// How many contacts the audience has (sizes the run's table of addresses).
    len: u64,
    rows: Box<dyn Iterator<Item = Result<(MemberKey, ContactState), StoreError>> + Send>,
}

impl ContactFeed {
    /// The contacts of `rows`, `len` of them, which should come in stream order (the diff
    /// checks, and copes with any other).
    pub fn new(
        len: u64,
        rows: impl Iterator<Item = Result<(MemberKey, ContactState), StoreError>> + Send + 'static,
    ) -> ContactFeed {
        ContactFeed {
            len,
            rows: Box::new(rows),
        }
    }

    /// How many contacts the feed gives in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for ContactFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactFeed")
            .field("len", &self.len)
            .finish()
    }
}

impl Iterator for ContactFeed {
    type Item = Result<(MemberKey, ContactState), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rows.next()
    }
}

/// Contacts already in memory, in stream order.
impl From<ContactMap> for ContactFeed {
    fn from(map: ContactMap) -> ContactFeed {
        ContactFeed {
            len: map.len() as u64,
            rows: Box::new(map.into_iter().map(Ok)),
        }
    }
}

/// Contacts per chunk handed over by the SQLite reader thread.
const FEED_CHUNK: usize = 1024;

/// Sets a contact's provider status: `$1` status, `$2` now, `$3` audience, `$4` member key
/// ([`Store::set_remote_status`], and the writeback worker's round on either connection).
pub(crate) const SET_REMOTE_STATUS_SQL: &str = "UPDATE contacts SET remote_status = $1, synced_at = $2 WHERE audience = $3 AND member_key = $4";

type FeedChunk = Result<Vec<(MemberKey, ContactState)>, StoreError>;

/// The chunks of a reader thread, one contact at a time. `recv` blocks only until the thread has
/// read the next chunk (it needs no runtime, so waiting on it from async code cannot deadlock);
/// dropping the feed stops the thread at its next send.
struct ChunkedFeed {
    rx: std::sync::mpsc::Receiver<FeedChunk>,
    chunk: std::vec::IntoIter<(MemberKey, ContactState)>,
}

impl Iterator for ChunkedFeed {
    type Item = Result<(MemberKey, ContactState), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.chunk.next() {
                return Some(Ok(c));
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk.into_iter(),
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) => return None,
            }
        }
    }
}

/// One `contacts` row as the sync reads it.
fn parse_contact(
    key: String,
    email: String,
    hash: &str,
    status: &str,
) -> Result<(MemberKey, ContactState), StoreError> {
    let member_key = MemberKey::parse_owned(key).map_err(|value| StoreError::Corrupt {
        what: "contacts.member_key",
        value,
    })?;
    let remote_status = status.parse().map_err(|_| StoreError::Corrupt {
        what: "contacts.remote_status",
        value: status.to_owned(),
    })?;
    Ok((
        member_key,
        ContactState {
            email: email.into_boxed_str(),
            content_hash: StoredHash::from_hex(hash),
            remote_status,
        },
    ))
}

/// Reads an audience's contacts in stream order from a SQLite state DB, sending them in chunks.
fn read_sqlite_feed(
    path: &std::path::Path,
    audience: &str,
    tx: &std::sync::mpsc::SyncSender<FeedChunk>,
) -> Result<(), StoreError> {
    let read_err = |e: rusqlite::Error| StoreError::Read {
        what: "read contacts",
        message: e.to_string(),
    };
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(read_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(read_err)?;
    // Through `contacts_key_order`: the index gives the order, nothing is sorted.
    let mut stmt = conn
        .prepare(
            "SELECT member_key, email, content_hash, remote_status FROM contacts
             WHERE audience = ?1 ORDER BY length(member_key), member_key",
        )
        .map_err(read_err)?;
    let mut rows = stmt.query([audience]).map_err(read_err)?;
    let mut chunk = Vec::with_capacity(FEED_CHUNK);
    while let Some(row) = rows.next().map_err(read_err)? {
        let text = |i: usize| {
            row.get_ref(i)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(read_err)
        };
        chunk.push(parse_contact(
            text(0)?.to_owned(),
            text(1)?.to_owned(),
            text(2)?,
            text(3)?,
        )?);
        if chunk.len() == FEED_CHUNK
            && tx
                .send(Ok(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(FEED_CHUNK),
                )))
                .is_err()
        {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
    Ok(())
}

/// The upsert of contact rows, before its `VALUES` (8 columns a row).
macro_rules! upsert_contacts_head {
    () => {
        "INSERT INTO contacts (audience, member_key, email, remote_id, content_hash, remote_status, synced_at, tags)"
    };
}

/// The upsert of contact rows, after its `VALUES`.
macro_rules! upsert_contacts_tail {
    () => {
        "ON CONFLICT (audience, member_key) DO UPDATE SET
           email = excluded.email, remote_id = excluded.remote_id, content_hash = excluded.content_hash,
           remote_status = excluded.remote_status, synced_at = excluded.synced_at, tags = excluded.tags"
    };
}

/// The upsert for one row, as the native SQLite connection caches it.
const UPSERT_CONTACT_SQL: &str = concat!(
    upsert_contacts_head!(),
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
    upsert_contacts_tail!()
);

/// A contact row to write after the provider accepted it.
#[derive(Clone, Debug)]
pub struct ContactRow<'a> {
    pub member_key: &'a MemberKey,
    pub email: &'a str,
    pub remote_id: Option<&'a str>,
    pub content_hash: &'a str,
    pub remote_status: SubscriptionStatus,
}

impl Store {
    /// An audience's contacts, one at a time in stream order (see [`ContactFeed`]). On PostgreSQL
    /// they are read into memory first ([`Store::contacts`]).
    pub async fn contact_feed(&self, audience: &str) -> Result<ContactFeed, StoreError> {
        let Some(path) = self.sqlite_file() else {
            return Ok(ContactFeed::from(self.contacts(audience).await?));
        };
        let len: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE audience = $1")
            .bind(audience)
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::query("count contacts"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let (path, audience) = (path.to_owned(), audience.to_owned());
        std::thread::Builder::new()
            .name("contact-feed".into())
            .spawn(move || {
                if let Err(e) = read_sqlite_feed(&path, &audience, &tx) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Read {
                what: "read contacts",
                message: e.to_string(),
            })?;
        Ok(ContactFeed {
            len: u64::try_from(len).unwrap_or(0),
            rows: Box::new(ChunkedFeed {
                rx,
                chunk: Vec::new().into_iter(),
            }),
        })
    }

    /// All contacts of an audience, keyed by member key.
    pub async fn contacts(&self, audience: &str) -> Result<ContactMap, StoreError> {
        let q_err = StoreError::query("read contacts");
        const SQL: &str = "SELECT member_key, email, content_hash, remote_status FROM contacts WHERE audience = $1";
        let parse = |key: String, email: String, hash: String, status: String| {
            parse_contact(key, email, &hash, &status)
        };
        if let Some(path) = self.sqlite_file() {
            // A whole audience at once: read natively on a blocking thread (see
            // `source::sqlite_reader` for why not through sqlx row by row).
            let audience = audience.to_owned();
            let path = path.to_owned();
            return tokio::task::spawn_blocking(move || -> Result<ContactMap, StoreError> {
                let read_err = |e: rusqlite::Error| StoreError::Read {
                    what: "read contacts",
                    message: e.to_string(),
                };
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(read_err)?;
                conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(read_err)?;
                let mut stmt = conn
                    .prepare("SELECT member_key, email, content_hash, remote_status FROM contacts WHERE audience = ?1 ORDER BY member_key")
                    .map_err(read_err)?;
                let count: i64 = conn
                    .query_row("SELECT COUNT(*) FROM contacts WHERE audience = ?1", [&audience], |r| r.get(0))
                    .map_err(read_err)?;
                let mut rows = stmt.query([&audience]).map_err(read_err)?;
                let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
                while let Some(row) = rows.next().map_err(read_err)? {
                    let text = |i: usize| -> Result<String, StoreError> { row.get::<_, String>(i).map_err(read_err) };
                    out.push(parse(text(0)?, text(1)?, text(2)?, text(3)?)?);
                }
                Ok(ContactMap::from_vec(out))
            })
            .await
            .map_err(|e| StoreError::Read {
                what: "read contacts",
                message: e.to_string(),
            })?;
        }
        let mut out = Vec::new();
        let mut rows = sqlx::query_as::<_, (String, String, String, String)>(SQL)
            .bind(audience)
            .fetch(self.pool());
        while let Some((key, email, hash, status)) = rows.try_next().await.map_err(q_err)? {
            out.push(parse(key, email, hash, status)?);
        }
        Ok(ContactMap::from_vec(out))
    }

    /// Inserts or replaces contact rows in one transaction (one applied batch).
    pub async fn upsert_contacts(
        &self,
        audience: &str,
        rows: &[ContactRow<'_>],
    ) -> Result<(), StoreError> {
        let q_err = StoreError::query("write contacts");
        let now = self.now_text();
        let mut tx = self.pool().begin().await.map_err(q_err)?;
        for r in rows {
            sqlx::query(
                "INSERT INTO contacts (audience, member_key, email, remote_id, content_hash, remote_status, synced_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (audience, member_key) DO UPDATE SET
                   email = excluded.email, remote_id = excluded.remote_id, content_hash = excluded.content_hash,
                   remote_status = excluded.remote_status, synced_at = excluded.synced_at",
            )
            .bind(audience)
            .bind(r.member_key.as_str())
            .bind(r.email)
            .bind(r.remote_id)
            .bind(r.content_hash)
            .bind(r.remote_status.as_str())
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(q_err)?;
        }
        tx.commit().await.map_err(q_err)?;
        Ok(())
    }
}

/// A contact as the sync writes it after the provider accepted it (owned, with its owned tags).
#[derive(Clone, Debug)]
pub struct SyncedContact {
    pub member_key: MemberKey,
    pub email: String,
    pub remote_id: Option<String>,
    pub content_hash: String,
    pub remote_status: SubscriptionStatus,
    /// The mapping-owned tags pushed, newline-separated.
    pub tags: String,
}

impl Store {
    /// Writes contact rows inside the caller's transaction (one applied batch).
    pub async fn write_contacts(
        tx: &mut Tx<'_>,
        audience: &str,
        rows: &[SyncedContact],
    ) -> Result<(), StoreError> {
        // Several rows per statement: far fewer round trips through the driver per batch.
        const ROWS: usize = 50;
        let now = now_text();
        let kind = super::tx_kind(tx);
        for chunk in rows.chunks(ROWS) {
            let sql = format!(
                concat!(
                    upsert_contacts_head!(),
                    " VALUES {} ",
                    upsert_contacts_tail!()
                ),
                super::row_placeholders(kind, chunk.len(), 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(audience)
                    .bind(r.member_key.as_str())
                    .bind(&r.email)
                    .bind(r.remote_id.as_deref())
                    .bind(&r.content_hash)
                    .bind(r.remote_status.as_str())
                    .bind(&now)
                    .bind(&r.tags);
            }
            q.execute(&mut **tx)
                .await
                .map_err(StoreError::query("write contacts"))?;
        }
        Ok(())
    }

    /// Writes contact rows inside a transaction of the native SQLite connection
    /// ([`super::writer::Writer::transaction`]): one cached single-row statement, executed per
    /// row. A first sync of 1,000,000 members spent about a third of its CPU writing them through
    /// sqlx (its worker thread, and the statement text and binds of every 50 rows).
    pub(crate) fn write_contacts_native(
        tx: &rusqlite::Connection,
        err: &dyn Fn(rusqlite::Error) -> StoreError,
        audience: &str,
        rows: &[SyncedContact],
    ) -> Result<(), StoreError> {
        let now = now_text();
        let mut stmt = tx.prepare_cached(UPSERT_CONTACT_SQL).map_err(err)?;
        for r in rows {
            super::writer::bind_numbered(
                &mut stmt,
                &[
                    &audience,
                    &r.member_key.as_str(),
                    &r.email,
                    &r.remote_id,
                    &r.content_hash,
                    &r.remote_status.as_str(),
                    &now,
                    &r.tags,
                ],
            )
            .map_err(err)?;
            stmt.raw_execute().map_err(err)?;
        }
        Ok(())
    }

    /// Sets the provider status of one contact (pull, archive).
    pub async fn set_remote_status(
        tx: &mut Tx<'_>,
        audience: &str,
        member_key: &MemberKey,
        status: SubscriptionStatus,
    ) -> Result<(), StoreError> {
        sqlx::query(SET_REMOTE_STATUS_SQL)
            .bind(status.as_str())
            .bind(now_text())
            .bind(audience)
            .bind(member_key.as_str())
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("update a contact's status"))?;
        Ok(())
    }

    /// The member whose contact has this address (identity form) in an audience.
    pub async fn member_by_email(
        &self,
        audience: &str,
        email: &str,
    ) -> Result<Option<MemberKey>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT member_key FROM contacts WHERE audience = $1 AND email = $2")
                .bind(audience)
                .bind(email)
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query("find a contact by address"))?;
        Ok(row.and_then(|(k,)| MemberKey::parse(&k)))
    }

    /// The owned tags last pushed for these members (members without a row are absent).
    pub async fn contact_tags(
        &self,
        audience: &str,
        keys: &[&MemberKey],
    ) -> Result<HashMap<MemberKey, Vec<String>>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(200) {
            let sql = format!(
                "SELECT member_key, tags FROM contacts WHERE audience = $1 AND member_key IN ({})",
                super::placeholders(2, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, Option<String>)>(sqlx::AssertSqlSafe(sql))
                .bind(audience);
            for k in chunk {
                q = q.bind(k.as_str());
            }
            let rows = q
                .fetch_all(self.pool())
                .await
                .map_err(StoreError::query("read contact tags"))?;
            for (k, tags) in rows {
                if let Some(k) = MemberKey::parse(&k) {
                    let tags = tags
                        .unwrap_or_default()
                        .lines()
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect();
                    out.insert(k, tags);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::StoredHash;

    #[test]
    fn stored_hashes_match_only_the_same_readable_hash() {
        let h = "0123456789abcdef0123456789abcdef";
        let mut digest = [0u8; 16];
        hex::decode_to_slice(h, &mut digest).unwrap();
        assert!(StoredHash::from_hex(h).matches(&digest));
        let mut other = digest;
        other[15] ^= 1;
        assert!(!StoredHash::from_hex(h).matches(&other));
        // An empty or unreadable stored value (e.g. a contact repaired by --full) never matches,
        // not even a digest of all zeroes.
        assert!(!StoredHash::from_hex("").matches(&[0; 16]));
        assert!(!StoredHash::from_hex("zz").matches(&[0; 16]));
        assert!(!StoredHash::from_hex("00000000000000000000000000000000").matches(&[0; 16]));
    }
}
