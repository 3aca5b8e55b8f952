//! The `contacts` table: what mailbridge last made each member look like at the provider.

use std::collections::HashMap;

use futures::TryStreamExt;

use super::{Store, StoreError, now_text};
use crate::domain::{MemberKey, SubscriptionStatus};

/// What the state DB knows of one member in one audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactState {
    /// The address (identity form) the provider has for this member.
    pub email: String,
    pub content_hash: String,
    pub remote_status: SubscriptionStatus,
}

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
    /// All contacts of an audience, keyed by member key.
    pub async fn contacts(
        &self,
        audience: &str,
    ) -> Result<HashMap<MemberKey, ContactState>, StoreError> {
        let q_err = |source| StoreError::Query {
            what: "read contacts",
            source,
        };
        let mut out = HashMap::new();
        let mut rows = sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT member_key, email, content_hash, remote_status FROM contacts WHERE audience = $1",
        )
        .bind(audience)
        .fetch(self.pool());
        while let Some((key, email, hash, status)) = rows.try_next().await.map_err(q_err)? {
            let member_key = MemberKey::parse(&key).ok_or_else(|| StoreError::Corrupt {
                what: "contacts.member_key",
                value: key.clone(),
            })?;
            let remote_status = status.parse().map_err(|_| StoreError::Corrupt {
                what: "contacts.remote_status",
                value: status.clone(),
            })?;
            out.insert(
                member_key,
                ContactState {
                    email,
                    content_hash: hash,
                    remote_status,
                },
            );
        }
        Ok(out)
    }

    /// Inserts or replaces contact rows in one transaction (one applied batch).
    pub async fn upsert_contacts(
        &self,
        audience: &str,
        rows: &[ContactRow<'_>],
    ) -> Result<(), StoreError> {
        let q_err = |source| StoreError::Query {
            what: "write contacts",
            source,
        };
        let now = now_text();
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
