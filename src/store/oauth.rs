//! The `oauth_tokens` table: one OAuth token pair per provider account (Constant Contact's, keyed
//! by the app's client id). A refresh token that rotates on every use lives here rather than in
//! the config file, and every process sharing the state DB reads the one its last refresh left.
//! Tokens are [`SecretString`]s from the row to the caller: nothing here prints them.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::{Param, Store, StoreError, time_text};

/// A stored token pair. `Debug` shows no token.
#[derive(Clone, Debug)]
pub struct OAuthToken {
    pub refresh_token: SecretString,
    /// The access token of the last refresh, if one is stored.
    pub access_token: Option<SecretString>,
    /// When the access token expires, when the provider said.
    pub expires_at: Option<DateTime<Utc>>,
    /// When this pair was stored: a pair rotated later by another process is newer.
    pub rotated_at: DateTime<Utc>,
}

const SAVE_SQL: &str = "INSERT INTO oauth_tokens
         (provider, account, refresh_token, access_token, expires_at, rotated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (provider, account) DO UPDATE SET refresh_token = excluded.refresh_token,
         access_token = excluded.access_token, expires_at = excluded.expires_at,
         rotated_at = excluded.rotated_at";

fn parse(what: &'static str, value: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt {
            what,
            value: value.to_owned(),
        })
}

impl Store {
    /// The token pair stored for `provider`'s `account`, if any.
    pub async fn oauth_token(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<OAuthToken>, StoreError> {
        let row: Option<(String, Option<String>, Option<String>, String)> = sqlx::query_as(
            "SELECT refresh_token, access_token, expires_at, rotated_at FROM oauth_tokens
             WHERE provider = $1 AND account = $2",
        )
        .bind(provider)
        .bind(account)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read an OAuth token"))?;
        let Some((refresh, access, expires_at, rotated_at)) = row else {
            return Ok(None);
        };
        Ok(Some(OAuthToken {
            refresh_token: SecretString::from(refresh),
            access_token: access.filter(|a| !a.is_empty()).map(SecretString::from),
            expires_at: expires_at
                .filter(|e| !e.is_empty())
                .map(|e| parse("oauth_tokens.expires_at", &e))
                .transpose()?,
            rotated_at: parse("oauth_tokens.rotated_at", &rotated_at)?,
        }))
    }

    /// Stores `token` as `provider`'s `account`'s pair, replacing the one there. The statement is
    /// committed when this returns, so a caller may then use the new access token: a crash after
    /// that point cannot lose a rotated refresh token.
    pub async fn save_oauth_token(
        &self,
        provider: &str,
        account: &str,
        token: &OAuthToken,
    ) -> Result<(), StoreError> {
        let text = |s: &SecretString| Param::Text(s.expose_secret().to_owned());
        let params = vec![
            Param::from(provider),
            Param::from(account),
            text(&token.refresh_token),
            token.access_token.as_ref().map_or(Param::Null, text),
            token
                .expires_at
                .map_or(Param::Null, |t| Param::Text(time_text(t))),
            Param::Text(time_text(token.rotated_at)),
        ];
        self.write("save an OAuth token", SAVE_SQL, params).await?;
        Ok(())
    }
}
