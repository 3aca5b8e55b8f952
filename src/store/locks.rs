//! The `locks` table: named leases in the state DB, the same on SQLite and PostgreSQL. A lease is
//! taken with one atomic statement (insert, or steal a row whose lease expired); a lease whose
//! holder process on this host is gone is stolen too, so a killed run does not block the next.

use super::{Store, StoreError, now_text};

/// Who holds a lock: `host:pid:token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder(String);

impl LockHolder {
    /// A holder for this process, with a token unique to the caller (e.g. the run id).
    pub fn this_process(token: &str) -> LockHolder {
        LockHolder(format!("{}:{}:{token}", hostname(), std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the holder is a process on this host that no longer runs.
    fn is_dead_local(holder: &str) -> bool {
        let mut parts = holder.splitn(3, ':');
        let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
            return false;
        };
        host == hostname()
            && pid.parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

fn later(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Takes the lock `name` for `ttl_secs`. `Ok(None)` when taken; `Ok(Some(holder))` names the
    /// live holder that keeps it.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl_secs: i64,
    ) -> Result<Option<String>, StoreError> {
        let q_err = |source| StoreError::Query {
            what: "take a lock",
            source,
        };
        let now = now_text();
        let taken = sqlx::query(
            "INSERT INTO locks (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
               acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
             WHERE locks.expires_at < excluded.acquired_at",
        )
        .bind(name)
        .bind(holder.as_str())
        .bind(&now)
        .bind(later(ttl_secs))
        .execute(self.pool())
        .await
        .map_err(q_err)?
        .rows_affected();
        if taken == 1 {
            return Ok(None);
        }
        let current: Option<(String,)> = sqlx::query_as("SELECT holder FROM locks WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(q_err)?;
        let Some((current,)) = current else {
            // Released between the two statements: try once more.
            return Box::pin(self.try_lock(name, holder, ttl_secs)).await;
        };
        if LockHolder::is_dead_local(&current) {
            let stolen = sqlx::query(
                "UPDATE locks SET holder = $1, acquired_at = $2, expires_at = $3
                 WHERE name = $4 AND holder = $5",
            )
            .bind(holder.as_str())
            .bind(&now)
            .bind(later(ttl_secs))
            .bind(name)
            .bind(&current)
            .execute(self.pool())
            .await
            .map_err(q_err)?
            .rows_affected();
            if stolen == 1 {
                tracing::warn!(
                    lock = name,
                    "Took over a lock whose holder process is gone."
                );
                return Ok(None);
            }
        }
        Ok(Some(current))
    }

    /// Extends a lease this holder has. [`StoreError::LockLost`] when it no longer has it:
    /// whatever the lease protects must stop.
    pub async fn refresh_lock(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let held = sqlx::query("UPDATE locks SET expires_at = $1 WHERE name = $2 AND holder = $3")
            .bind(later(ttl_secs))
            .bind(name)
            .bind(holder.as_str())
            .execute(self.pool())
            .await
            .map_err(|source| StoreError::Query {
                what: "refresh a lock",
                source,
            })?
            .rows_affected()
            == 1;
        if held {
            Ok(())
        } else {
            Err(StoreError::LockLost {
                name: name.to_owned(),
            })
        }
    }

    /// Releases a lock this holder has (a no-op otherwise).
    pub async fn unlock(&self, name: &str, holder: &LockHolder) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM locks WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder.as_str())
            .execute(self.pool())
            .await
            .map_err(|source| StoreError::Query {
                what: "release a lock",
                source,
            })?;
        Ok(())
    }
}
