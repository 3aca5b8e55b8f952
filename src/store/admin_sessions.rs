//! The `admin_sessions` table: who is logged in to the admin pages. The cookie holds a random
//! token; the table holds its SHA-256 (a read of the state DB logs nobody in), the session's CSRF
//! token, who logged in (for the audit of what they change) and when the session ends. Sessions
//! live in the state DB so that several `serve` processes behind one address share them and a
//! restart logs nobody out.

use sha2::{Digest, Sha256};

use super::{Store, StoreError};

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// The token every form must carry back (compared in constant time by the pages).
    pub csrf: String,
    /// Who logged in ("password" or "api token", and from where), as recorded with their changes.
    pub who: String,
    pub expires_at: String,
}

/// The stored form of a session token.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Store {
    /// Records a new session for `token` until `expires_at`; expired sessions are deleted on the
    /// way, so the table holds only live ones.
    pub async fn create_admin_session(
        &self,
        token: &str,
        csrf: &str,
        who: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let now = self.now_text();
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
            .bind(&now)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("delete expired admin sessions"))?;
        sqlx::query(
            "INSERT INTO admin_sessions (token_hash, csrf, who, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(token))
        .bind(csrf)
        .bind(who)
        .bind(&now)
        .bind(expires_at)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("record an admin session"))?;
        Ok(())
    }

    /// The live session of `token`, if any (an expired one is none).
    pub async fn admin_session(&self, token: &str) -> Result<Option<AdminSession>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT csrf, who, expires_at FROM admin_sessions
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(self.now_text())
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read an admin session"))?;
        Ok(row.map(|(csrf, who, expires_at)| AdminSession {
            csrf,
            who,
            expires_at,
        }))
    }

    /// Ends the session of `token` (logout).
    pub async fn end_admin_session(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(self.pool())
            .await
            .map_err(StoreError::query("end an admin session"))?;
        Ok(())
    }

    /// Ends every session (the password changed); how many there were.
    pub async fn end_all_admin_sessions(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM admin_sessions")
            .execute(self.pool())
            .await
            .map_err(StoreError::query("end the admin sessions"))?;
        Ok(done.rows_affected())
    }
}
