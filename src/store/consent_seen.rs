//! The `consent_seen` table: what real sync runs saw in the member DB's consent column, per
//! audience and member. It is the stored half of the evidence a re-consent after an opt-out needs
//! (the rule is `sync::consent`); a dry run reads it and never writes it.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;

use super::{Store, StoreError};
use crate::domain::{Consent, MemberKey};

/// One member's stored observation. A row exists once a sync saw the consent withheld.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenConsent {
    /// The value last recorded.
    pub consent: Consent,
    /// When the sync that recorded it read the row.
    pub seen_at: DateTime<Utc>,
    /// The latest time a sync saw the consent withheld (moved forward when an opt-out is newer).
    pub withheld_at: DateTime<Utc>,
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse(what: &'static str, value: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt {
            what,
            value: value.to_owned(),
        })
}

impl Store {
    /// Every stored observation of an audience (members never seen withheld have none).
    pub async fn consent_seen(
        &self,
        audience: &str,
    ) -> Result<HashMap<MemberKey, SeenConsent>, StoreError> {
        let mut out = HashMap::new();
        let mut rows = sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT member_key, consent, seen_at, withheld_at FROM consent_seen WHERE audience = $1",
        )
        .bind(audience)
        .fetch(self.pool());
        while let Some((key, consent, seen_at, withheld_at)) = rows
            .try_next()
            .await
            .map_err(StoreError::query("read consent observations"))?
        {
            let member_key = MemberKey::parse(&key).ok_or_else(|| StoreError::Corrupt {
                what: "consent_seen.member_key",
                value: key.clone(),
            })?;
            let consent = match consent.as_str() {
                "given" => Consent::Given,
                "withheld" => Consent::Withheld,
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "consent_seen.consent",
                        value: consent,
                    });
                }
            };
            out.insert(
                member_key,
                SeenConsent {
                    consent,
                    seen_at: parse("consent_seen.seen_at", &seen_at)?,
                    withheld_at: parse("consent_seen.withheld_at", &withheld_at)?,
                },
            );
        }
        Ok(out)
    }

    /// Inserts or replaces observations, in one transaction.
    pub async fn record_consent_seen(
        &self,
        audience: &str,
        rows: &[(MemberKey, SeenConsent)],
    ) -> Result<(), StoreError> {
        // Several rows per statement: far fewer round trips on a first run after the upgrade,
        // which records every member whose consent is withheld.
        const ROWS: usize = 100;
        let q_err = StoreError::query("record consent observations");
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await.map_err(q_err)?;
        for chunk in rows.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO consent_seen (audience, member_key, consent, seen_at, withheld_at)
                 VALUES {}
                 ON CONFLICT (audience, member_key) DO UPDATE SET
                   consent = excluded.consent, seen_at = excluded.seen_at,
                   withheld_at = excluded.withheld_at",
                super::row_placeholders(self.kind(), chunk.len(), 5)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (key, seen) in chunk {
                q = q
                    .bind(audience)
                    .bind(key.as_str())
                    .bind(if seen.consent.is_given() {
                        "given"
                    } else {
                        "withheld"
                    })
                    .bind(text(seen.seen_at))
                    .bind(text(seen.withheld_at));
            }
            q.execute(&mut *tx).await.map_err(q_err)?;
        }
        tx.commit().await.map_err(q_err)?;
        Ok(())
    }
}
