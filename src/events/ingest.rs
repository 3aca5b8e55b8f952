//! Durable ingest of webhook events with group commit. Handlers hand their decoded events to one
//! writer task and wait for its answer; the writer takes whatever is queued (up to a batch),
//! inserts it in one transaction and answers each caller after the commit. One fsync then covers
//! many deliveries, which is what lets a SQLite state DB take thousands of webhooks a second while
//! still committing each before its 200 (invariant 4).

use tokio::sync::{mpsc, oneshot};

use std::collections::HashSet;

use super::NewEvent;
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
        let result = commit(&store, &pending).await;
        match result {
            Ok(flags) => {
                let mut flags = flags.into_iter();
                for (events, reply) in pending.drain(..) {
                    let mine: Vec<bool> = flags.by_ref().take(events.len()).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = match std::error::Error::source(&e) {
                    Some(s) => format!("{e}: {s}"),
                    None => e.to_string(),
                };
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Rows per multi-row INSERT (11 parameters each; far below SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 256;

async fn commit(
    store: &Store,
    pending: &[(Vec<NewEvent>, Reply)],
) -> Result<Vec<bool>, StoreError> {
    let q_err = |what| move |source| StoreError::Query { what, source };
    let events: Vec<&NewEvent> = pending.iter().flat_map(|(e, _)| e.iter()).collect();
    let keys: Vec<String> = events.iter().map(|e| e.dedupe_key()).collect();
    let received_at = now_text();
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(q_err("begin storing provider events"))?;
    let mut inserted: HashSet<String> = HashSet::new();
    for (chunk, chunk_keys) in events
        .chunks(ROWS_PER_STATEMENT)
        .zip(keys.chunks(ROWS_PER_STATEMENT))
    {
        // One statement per chunk: one round trip instead of one per event.
        let mut sql = String::from(
            "INSERT INTO provider_events (dedupe_key, provider, audience, list_id, event_type, email, member_key, reason, fired_at, payload, received_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 11;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10,
                b + 11
            ));
        }
        sql.push_str(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key");
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
                .bind(received_at.as_str());
        }
        inserted.extend(
            query
                .fetch_all(&mut *tx)
                .await
                .map_err(q_err("store provider events"))?,
        );
    }
    tx.commit().await.map_err(q_err("commit provider events"))?;
    // A key inserted by this batch is new for its first event only; a repeat in the same batch
    // (the provider retried while the first was queued) is a duplicate.
    Ok(keys.into_iter().map(|k| inserted.remove(&k)).collect())
}
