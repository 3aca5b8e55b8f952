//! The `campaigns` table: one row per idempotency key, written before anything is created at the
//! provider (the intent), then moved through its [`CampaignState`]s. The key is the primary key,
//! so of two pushes inserting the same key exactly one inserts.

use serde::Serialize;

use super::CampaignState;
use crate::store::{Store, StoreError};

/// A campaign as `campaign status --json` and `GET /v1/campaigns/{key}` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CampaignRecord {
    pub key: String,
    pub audience: String,
    pub state: CampaignState,
    pub provider_campaign_id: Option<String>,
    /// How many members the provider sends it to (known once it is created).
    pub recipients: Option<u64>,
    pub content_hash: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
}

/// A `campaigns` row as stored (the state and the count not yet checked).
#[derive(sqlx::FromRow)]
struct Row {
    idempotency_key: String,
    audience: String,
    state: String,
    provider_campaign_id: Option<String>,
    recipients: Option<i64>,
    content_hash: String,
    created_at: String,
    updated_at: String,
    last_error: Option<String>,
}

impl Row {
    fn record(self) -> Result<CampaignRecord, StoreError> {
        Ok(CampaignRecord {
            state: CampaignState::parse(&self.state).ok_or_else(|| StoreError::Corrupt {
                what: "campaigns.state",
                value: self.state.clone(),
            })?,
            key: self.idempotency_key,
            audience: self.audience,
            provider_campaign_id: self.provider_campaign_id,
            recipients: self.recipients.and_then(|r| u64::try_from(r).ok()),
            content_hash: self.content_hash,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_error: self.last_error,
        })
    }
}

/// Records the intent for `key`. `true` when this call inserted it; `false` when the key exists.
pub async fn insert_intent(
    store: &Store,
    key: &str,
    audience: &str,
    content_hash: &str,
) -> Result<bool, StoreError> {
    let statement = sqlx::query(
        "INSERT INTO campaigns (idempotency_key, audience, content_hash, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(audience)
    .bind(content_hash)
    .bind(CampaignState::Draft.as_str())
    .bind(store.now_text());
    Ok(store.execute("record a campaign intent", statement).await? == 1)
}

/// The record for `key`, if any.
pub async fn get(store: &Store, key: &str) -> Result<Option<CampaignRecord>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT idempotency_key, audience, state, provider_campaign_id, recipients, content_hash,
                created_at, updated_at, last_error
         FROM campaigns WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a campaign"))?;
    row.map(Row::record).transpose()
}

/// Records the provider's campaign id, the moment it is known.
pub async fn set_provider_id(store: &Store, key: &str, id: &str) -> Result<(), StoreError> {
    let statement = sqlx::query(
        "UPDATE campaigns SET provider_campaign_id = $1, updated_at = $2 WHERE idempotency_key = $3",
    )
    .bind(id)
    .bind(store.now_text())
    .bind(key);
    store
        .execute("record a campaign id", statement)
        .await
        .map(drop)
}

/// Moves the row to `state`; `recipients` is kept when `None`; `last_error` is replaced.
pub async fn set_state(
    store: &Store,
    key: &str,
    state: CampaignState,
    recipients: Option<u64>,
    last_error: Option<&str>,
) -> Result<(), StoreError> {
    let statement = sqlx::query(
        "UPDATE campaigns SET state = $1, recipients = COALESCE($2, recipients), last_error = $3,
                updated_at = $4
         WHERE idempotency_key = $5",
    )
    .bind(state.as_str())
    .bind(recipients.and_then(|r| i64::try_from(r).ok()))
    .bind(last_error)
    .bind(store.now_text())
    .bind(key);
    store
        .execute("record a campaign state", statement)
        .await
        .map(drop)
}

/// Removes an intent that created nothing at the provider (a push refused in its preflight).
pub async fn delete_unstarted(store: &Store, key: &str) -> Result<(), StoreError> {
    let statement = sqlx::query(
        "DELETE FROM campaigns WHERE idempotency_key = $1 AND provider_campaign_id IS NULL",
    )
    .bind(key);
    store
        .execute("remove a refused campaign intent", statement)
        .await
        .map(drop)
}
