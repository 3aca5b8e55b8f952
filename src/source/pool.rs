//! The member DB of a long-running process: connected on first use, dropped after an error that
//! suggests it is gone, and connected again by the next use (the member DB may be down for a
//! while; work waits rather than fails).

use std::sync::Arc;

use super::{MemberSource, SourceError};
use crate::config::DbUrl;

/// A member DB connection shared by the workers and handlers of one application (cheap to
/// clone; clones share the connection).
#[derive(Clone)]
pub struct MemberPool {
    url: DbUrl,
    read_only: bool,
    current: Arc<tokio::sync::Mutex<Option<MemberSource>>>,
}

impl MemberPool {
    /// Connects to `url` at the first [`MemberPool::get`], read-only when `read_only`.
    pub fn new(url: DbUrl, read_only: bool) -> MemberPool {
        MemberPool {
            url,
            read_only,
            current: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The member DB pool, connected on first use; a failed connection is retried on the next
    /// call.
    pub async fn get(&self) -> Result<MemberSource, SourceError> {
        let mut guard = self.current.lock().await;
        if let Some(source) = guard.as_ref() {
            return Ok(source.clone());
        }
        let source = MemberSource::connect(&self.url, self.read_only).await?;
        *guard = Some(source.clone());
        Ok(source)
    }

    /// Closes the connection, if any, so that the next [`MemberPool::get`] connects again.
    pub async fn reset(&self) {
        if let Some(source) = self.current.lock().await.take() {
            source.close().await;
        }
    }
}

impl std::fmt::Debug for MemberPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberPool")
            .field("url", &self.url)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}
