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

fn q_err(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

type Row = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    String,
    String,
    String,
    Option<String>,
);

/// Records the intent for `key`. `true` when this call inserted it; `false` when the key exists.
pub async fn insert_intent(
    store: &Store,
    key: &str,
    audience: &str,
    content_hash: &str,
) -> Result<bool, StoreError> {
    let now = store.now_text();
    let inserted = sqlx::query(
        "INSERT INTO campaigns (idempotency_key, audience, content_hash, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(audience)
    .bind(content_hash)
    .bind(CampaignState::Draft.as_str())
    .bind(&now)
    .execute(store.pool())
    .await
    .map_err(q_err("record a campaign intent"))?
    .rows_affected();
    Ok(inserted == 1)
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
    .map_err(q_err("read a campaign"))?;
    row.map(
        |(
            key,
            audience,
            state,
            provider_campaign_id,
            recipients,
            content_hash,
            created_at,
            updated_at,
            last_error,
        )| {
            Ok(CampaignRecord {
                state: CampaignState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                    what: "campaigns.state",
                    value: state.clone(),
                })?,
                key,
                audience,
                provider_campaign_id,
                recipients: recipients.and_then(|r| u64::try_from(r).ok()),
                content_hash,
                created_at,
                updated_at,
                last_error,
            })
        },
    )
    .transpose()
}

/// Records the provider's campaign id, the moment it is known.
pub async fn set_provider_id(store: &Store, key: &str, id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaigns SET provider_campaign_id = $1, updated_at = $2 WHERE idempotency_key = $3",
    )
    .bind(id)
    .bind(store.now_text())
    .bind(key)
    .execute(store.pool())
    .await
    .map_err(q_err("record a campaign id"))?;
    Ok(())
}

/// Moves the row to `state`; `recipients` is kept when `None`; `last_error` is replaced.
pub async fn set_state(
    store: &Store,
    key: &str,
    state: CampaignState,
    recipients: Option<u64>,
    last_error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaigns SET state = $1, recipients = COALESCE($2, recipients), last_error = $3,
                updated_at = $4
         WHERE idempotency_key = $5",
    )
    .bind(state.as_str())
    .bind(recipients.and_then(|r| i64::try_from(r).ok()))
    .bind(last_error)
    .bind(store.now_text())
    .bind(key)
    .execute(store.pool())
    .await
    .map_err(q_err("record a campaign state"))?;
    Ok(())
}

/// Removes an intent that created nothing at the provider (a push refused in its preflight).
pub async fn delete_unstarted(store: &Store, key: &str) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM campaigns WHERE idempotency_key = $1 AND provider_campaign_id IS NULL",
    )
    .bind(key)
    .execute(store.pool())
    .await
    .map_err(q_err("remove a refused campaign intent"))?;
    Ok(())
}
