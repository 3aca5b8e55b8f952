//! One-click opt-outs (RFC 8058), per address and category of relay mail: the `unsubscribes`
//! table (the suppression list's per-category companion; the relay holds a message of an
//! opted-out category back) and the event each opt-out stores, which the engine in [`super::apply`]
//! writes back to the member DB like a provider's unsubscribe and which `GET /v1/events` lists.
//! The sync reads the opt-outs as unsubscribes ([`opted_out`]): it archives the address's live
//! contacts and never subscribes it again without a consent given later.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::config::RelayConfig;
use crate::domain::{Email, parse_time};
use crate::providers::{NewEvent, ONE_CLICK};
use crate::relay::Category;
use crate::relay::unsubscribe::{self, Via};
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

/// What [`opt_out`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptedOut {
    pub email: Email,
    pub category: Category,
    /// The stored event, when this request was the first for the address and category (a
    /// repeated request changes nothing).
    pub event_id: Option<i64>,
}

/// Why [`opt_out`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum OptOutError {
    #[error(transparent)]
    BadToken(#[from] unsubscribe::BadToken),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies `token` and records the opt-out durably (committed before this returns; invariant
/// 4): the category is held back for the address from now on, and an event is stored that the
/// events engine writes back to the member DB through the mapping (`writeback.unsubscribed`).
/// Idempotent: a second request for the same address and category changes nothing.
pub async fn opt_out(
    store: &Store,
    config: Option<&RelayConfig>,
    token: &str,
    via: Via,
) -> Result<OptedOut, OptOutError> {
    let (email, category) = unsubscribe::check(config, token)?;
    let now = store.now_text();
    let mut tx = store.begin().await?;
    let event_id = record(
        &mut tx,
        email.as_str(),
        category.as_str(),
        via.as_str(),
        &now,
    )
    .await?;
    tx.commit()
        .await
        .map_err(StoreError::query("commit an unsubscribe"))?;
    if event_id.is_some() {
        metrics::counter!("mailbridge_unsubscribes_total", "category" => category.as_str(), "via" => via.as_str())
            .increment(1);
    }
    Ok(OptedOut {
        email,
        category,
        event_id,
    })
}
