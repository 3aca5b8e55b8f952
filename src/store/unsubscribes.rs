//! The `unsubscribes` table (one-click opt-outs per address and category of relay mail), as the
//! relay reads it: whether a message may go. Recording an opt-out (with its event) is the events
//! engine's (`events::opt_out`).

use super::{Store, StoreError};

impl Store {
    /// Whether `email` (identity form) opted out of `category`.
    pub async fn is_opted_out(&self, email: &str, category: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT email FROM unsubscribes WHERE email = $1 AND category = $2")
                .bind(email)
                .bind(category)
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query("read an unsubscribe"))?;
        Ok(row.is_some())
    }
}
