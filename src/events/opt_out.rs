//! One-click opt-outs (RFC 8058), per address and category of relay mail: the `unsubscribes`
//! table (the suppression list's per-category companion; the relay holds a message of an
//! opted-out category back) and the event each opt-out stores, which the engine in [`super::apply`]
//! writes back to the member DB like a provider's unsubscribe and which `GET /v1/events` lists.
//! The sync reads the opt-outs as unsubscribes ([`opted_out`]): it archives the address's live
//! contacts and never subscribes it again without a consent given later.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::parse_time;
use crate::providers::{NewEvent, ONE_CLICK};
use crate::store::{Store, StoreError, Tx};

/// Records that `email` (identity form) opted out of `category`, in `tx`, with its event.
/// Returns the event's id, or `None` when the address had opted out of the category before
/// (then nothing changes: a repeated request is idempotent).
pub(crate) async fn record(
    tx: &mut Tx<'_>,
    email: &str,
    category: &str,
    via: &str,
    now: &str,
) -> Result<Option<i64>, StoreError> {
    let added = sqlx::query(
        "INSERT INTO unsubscribes (email, category, via, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email, category) DO NOTHING",
    )
    .bind(email)
    .bind(category)
    .bind(via)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("record an unsubscribe"))?
    .rows_affected();
    if added == 0 {
        return Ok(None);
    }
    let event = NewEvent {
        provider: ONE_CLICK,
        audience: None,
        list_id: None,
        event_type: "unsubscribed".to_owned(),
        email: Some(email.to_owned()),
        // The member is the one the state DB ties to the address, found when applied.
        member_key: None,
        reason: Some(category.to_owned()),
        fired_at: now.to_owned(),
        source_id: Some(via.to_owned()),
        payload: serde_json::json!({"category": category, "via": via}).to_string(),
        // The token was signed by us.
        verified: true,
        ignored: None,
    };
    super::insert_event(&mut **tx, &event)
        .await
        .map_err(StoreError::query("record an unsubscribe event"))?;
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM provider_events WHERE dedupe_key = $1")
        .bind(event.dedupe_key())
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("read an unsubscribe event's id"))?;
    Ok(Some(id))
}

/// Whether `email` (identity form) opted out of `category`.
pub async fn is_opted_out(store: &Store, email: &str, category: &str) -> Result<bool, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT email FROM unsubscribes WHERE email = $1 AND category = $2")
            .bind(email)
            .bind(category)
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("read an unsubscribe"))?;
    Ok(row.is_some())
}

/// Every address that opted out of any category, with the time of its latest opt-out (the one a
/// later consent must follow).
pub async fn opted_out(store: &Store) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT email, MAX(created_at) FROM unsubscribes GROUP BY email")
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("read unsubscribes"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(email, at)| Some((email, parse_time(&at)?)))
        .collect())
}
