//! Durable ingest of webhook events with group commit. Handlers hand their decoded events to one
//! writer task and wait for its answer; the writer takes whatever is queued (up to a batch),
//! inserts it in one transaction and answers each caller after the commit. One fsync then covers
//! many deliveries, which is what lets a SQLite state DB take thousands of webhooks a second while
//! still committing each before its 200 (invariant 4).

use tokio::sync::{mpsc, oneshot};

use super::{NewEvent, insert_event};
use crate::store::{Store, StoreError};

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

async fn commit(
    store: &Store,
    pending: &[(Vec<NewEvent>, Reply)],
) -> Result<Vec<bool>, StoreError> {
    let q_err = |what| move |source| StoreError::Query { what, source };
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(q_err("begin storing provider events"))?;
    let mut flags = Vec::new();
    for (events, _) in pending {
        for event in events {
            flags.push(
                insert_event(&mut *tx, event)
                    .await
                    .map_err(q_err("store a provider event"))?,
            );
        }
    }
    tx.commit().await.map_err(q_err("commit provider events"))?;
    Ok(flags)
}
