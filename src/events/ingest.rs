//! Durable ingest of webhook events with group commit. Handlers hand their decoded events to one
//! writer task and wait for its answer; the writer takes whatever is queued (up to a batch),
//! inserts it in one transaction and answers each caller after the commit. One fsync then covers
//! many deliveries, which is what lets a SQLite state DB take thousands of webhooks a second while
//! still committing each before its 200 (invariant 4).

use tokio::sync::{mpsc, oneshot};

use std::collections::HashSet;

use crate::providers::NewEvent;
use crate::store::{Store, StoreError, now_text};

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Vec<bool>, String>>;

/// A handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<(Vec<NewEvent>, Reply)>,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("storing provider events failed: {0}")]
    Store(String),
    #[error("the event writer has stopped")]
    Stopped,
}

impl EventWriter {
    /// Starts the writer task on the current runtime. It ends when every handle is dropped.
    pub fn start(store: Store) -> EventWriter {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(store, rx));
        EventWriter { tx }
    }

    /// Commits `events` (all or none); returns for each whether it was new (false: duplicate).
    pub async fn write(&self, events: Vec<NewEvent>) -> Result<Vec<bool>, IngestError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((events, reply))
            .await
            .map_err(|_| IngestError::Stopped)?;
        answer
            .await
            .map_err(|_| IngestError::Stopped)?
            .map_err(IngestError::Store)
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<(Vec<NewEvent>, Reply)>) {
    let mut pending: Vec<(Vec<NewEvent>, Reply)> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut count = first.0.len();
        pending.push(first);
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => {
                    count += item.0.len();
                    pending.push(item);
                }
                Err(_) => break,
            }
        }
        match commit(&store, &pending).await {
            Ok(flags) => {
                let mut flags = flags.into_iter();
                for (events, reply) in pending.drain(..) {
                    let mine: Vec<bool> = flags.by_ref().take(events.len()).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            // One delivery's bad row must not fail the others that shared its transaction:
            // each is committed again on its own, and only the one that still fails gets an
            // error (its provider retries it; the others get their 200).
            Err(_) if pending.len() > 1 => {
                for item in pending.drain(..) {
                    let result = commit(&store, std::slice::from_ref(&item))
                        .await
                        .map_err(|e| crate::error_chain(&e));
                    let _ = item.1.send(result);
                }
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// `event` with every NUL character as U+FFFD, or `None` when it has none. PostgreSQL's text
/// type cannot hold NUL, and a delivery that carried one (a JSON `\u0000`) would fail on every
/// retry; both backends store the same text.
fn without_nul(event: &NewEvent) -> Option<NewEvent> {
    let fields = [
        Some(&event.event_type),
        event.audience.as_ref(),
        event.list_id.as_ref(),
        event.email.as_ref(),
        event.member_key.as_ref(),
        event.reason.as_ref(),
        Some(&event.fired_at),
        event.source_id.as_ref(),
        Some(&event.payload),
    ];
    if !fields.iter().flatten().any(|f| f.contains('\0')) {
        return None;
    }
    let clean = |s: &String| crate::store::nul_free(s);
    Some(NewEvent {
        provider: event.provider,
        audience: event.audience.as_ref().map(clean),
        list_id: event.list_id.as_ref().map(clean),
        event_type: clean(&event.event_type),
        email: event.email.as_ref().map(clean),
        member_key: event.member_key.as_ref().map(clean),
        reason: event.reason.as_ref().map(clean),
        fired_at: clean(&event.fired_at),
        source_id: event.source_id.as_ref().map(clean),
        payload: clean(&event.payload),
        verified: event.verified,
        ignored: event.ignored,
    })
}

/// Parameters per row of the INSERT.
const PARAMS_PER_ROW: usize = 14;
/// Rows per multi-row INSERT (far below SQLite's and PostgreSQL's parameter limits).
const ROWS_PER_STATEMENT: usize = 256;
/// The INSERT of provider events up to its VALUES: one statement for both paths of [`commit`].
const INSERT: &str = "INSERT INTO provider_events (dedupe_key, provider, audience, list_id, event_type, email, member_key, reason, fired_at, payload, received_at, verified, outcome, applied_at) VALUES ";
/// Keeps the first of two rows with one dedupe key: the retried delivery is a duplicate.
const ON_CONFLICT: &str = " ON CONFLICT (dedupe_key) DO NOTHING";

async fn commit(
    store: &Store,
    pending: &[(Vec<NewEvent>, Reply)],
) -> Result<Vec<bool>, StoreError> {
    let cleaned: Vec<(usize, NewEvent)> = pending
        .iter()
        .flat_map(|(e, _)| e.iter())
        .enumerate()
        .filter_map(|(i, e)| without_nul(e).map(|c| (i, c)))
        .collect();
    let mut events: Vec<&NewEvent> = pending.iter().flat_map(|(e, _)| e.iter()).collect();
    for (i, clean) in &cleaned {
        events[*i] = clean;
    }
    let keys: Vec<String> = events.iter().map(|e| e.dedupe_key()).collect();
    let received_at = now_text();
    if let Some(writer) = store.writer() {
        let rows: Vec<(String, NewEvent)> =
            keys.into_iter().zip(events.into_iter().cloned()).collect();
        return writer
            .transaction("store provider events", move |conn, err| {
                commit_native(conn, err, &rows, &received_at)
            })
            .await;
    }
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(StoreError::query("begin storing provider events"))?;
    let mut inserted: HashSet<String> = HashSet::new();
    for (chunk, chunk_keys) in events
        .chunks(ROWS_PER_STATEMENT)
        .zip(keys.chunks(ROWS_PER_STATEMENT))
    {
        // One statement per chunk: one round trip instead of one per event.
        let mut sql = String::from(INSERT);
        sql.push_str(&crate::store::row_placeholders(
            store.kind(),
            chunk.len(),
            PARAMS_PER_ROW,
        ));
        sql.push_str(ON_CONFLICT);
        sql.push_str(" RETURNING dedupe_key");
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for (event, key) in chunk.iter().zip(chunk_keys) {
            query = query
                .bind(key.as_str())
                .bind(event.provider)
                .bind(event.audience.as_deref())
                .bind(event.list_id.as_deref())
                .bind(event.event_type.as_str())
                .bind(event.email.as_deref())
                .bind(event.member_key.as_deref())
                .bind(event.reason.as_deref())
                .bind(event.fired_at.as_str())
                .bind(event.payload.as_str())
                .bind(received_at.as_str())
                .bind(i64::from(event.verified))
                .bind(event.ignored)
                // An ignored event is recorded as applied: nothing will ever act on it.
                .bind(event.ignored.map(|_| received_at.as_str()));
        }
        inserted.extend(
            query
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::query("store provider events"))?,
        );
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit provider events"))?;
    // A key inserted by this batch is new for its first event only; a repeat in the same batch
    // (the provider retried while the first was queued) is a duplicate.
    Ok(keys.into_iter().map(|k| inserted.remove(&k)).collect())
}

/// [`commit`] on the store's native SQLite connection (inside its `BEGIN IMMEDIATE`): one cached
/// single-row statement run per event, which is cheaper there than building and parsing a
/// multi-row one; a row the conflict clause skipped is a duplicate.
fn commit_native(
    conn: &rusqlite::Connection,
    err: &dyn Fn(rusqlite::Error) -> StoreError,
    rows: &[(String, NewEvent)],
    received_at: &str,
) -> Result<Vec<bool>, StoreError> {
    let sql = format!(
        "{INSERT}{}{ON_CONFLICT}",
        crate::store::row_placeholders(crate::config::DbKind::Sqlite, 1, PARAMS_PER_ROW)
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let mut fresh = Vec::with_capacity(rows.len());
    for (key, event) in rows {
        let verified = i64::from(event.verified);
        // An ignored event is recorded as applied: nothing will ever act on it.
        let applied_at = event.ignored.map(|_| received_at);
        let values: [&dyn rusqlite::ToSql; PARAMS_PER_ROW] = [
            key,
            &event.provider,
            &event.audience,
            &event.list_id,
            &event.event_type,
            &event.email,
            &event.member_key,
            &event.reason,
            &event.fired_at,
            &event.payload,
            &received_at,
            &verified,
            &event.ignored,
            &applied_at,
        ];
        crate::store::writer::bind_in_order(&mut stmt, &values).map_err(err)?;
        fresh.push(stmt.raw_execute().map_err(err)? == 1);
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbUrl;
    use crate::store::OpenMode;

    fn event(email: &str, reason: &str) -> NewEvent {
        NewEvent {
            provider: "mailchimp",
            audience: None,
            list_id: Some("l1".into()),
            event_type: "unsubscribed".into(),
            email: Some(email.into()),
            member_key: None,
            reason: Some(reason.into()),
            fired_at: "2026-11-28T10:00:00.000Z".into(),
            source_id: None,
            payload: format!("{{\"reason\": \"{reason}\"}}"),
            verified: false,
            ignored: None,
        }
    }

    async fn store(dir: &std::path::Path) -> Store {
        let url = DbUrl::parse("sqlite://state.db", dir).expect("url");
        let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
        store.migrate().await.expect("migrate");
        store
    }

    /// Two deliveries share a group commit and one of them has a row the database refuses
    /// (here a trigger stands in for any row-level failure): the other is still committed and
    /// answered as such; only the bad one fails.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_row_fails_only_its_own_delivery() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path()).await;
        sqlx::query(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON provider_events
             WHEN NEW.email = 'bad@example.org'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .execute(store.pool())
        .await
        .expect("trigger");
        let writer = EventWriter::start(store.clone());
        // On this single-threaded runtime both writes are queued before the writer task runs,
        // so they share one batch.
        let (good, bad) = tokio::join!(
            writer.write(vec![event("good@example.org", "manual")]),
            writer.write(vec![event("bad@example.org", "manual")]),
        );
        assert_eq!(good.expect("the good delivery is committed"), vec![true]);
        let bad = bad.expect_err("the bad delivery fails");
        assert!(bad.to_string().contains("refused by the test"), "{bad}");
        let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM provider_events")
            .fetch_all(store.pool())
            .await
            .expect("read");
        assert_eq!(emails, vec!["good@example.org".to_owned()]);
    }

    /// A NUL in a delivery (PostgreSQL's text cannot hold one) is stored as U+FFFD rather than
    /// failing the delivery on every retry; a delivery without one is stored as it came.
    #[test]
    fn nul_characters_are_replaced_and_clean_events_left_alone() {
        assert_eq!(without_nul(&event("a@example.org", "manual")), None);
        let cleaned = without_nul(&event("a@example.org", "bad\0reason")).expect("cleaned");
        assert_eq!(cleaned.reason.as_deref(), Some("bad\u{FFFD}reason"));
        assert!(!cleaned.payload.contains('\0'));
        assert_eq!(cleaned.email.as_deref(), Some("a@example.org"));
    }
}
