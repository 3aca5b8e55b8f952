//! The `webhook_signing_secrets` table: signing secrets a provider returned when `sync`
//! registered a list webhook. The secrets leave this module only as [`SecretString`]s.

use secrecy::{ExposeSecret, SecretString};

use super::{Store, StoreError};

/// One stored signing secret: the list whose deliveries it signs.
#[derive(Clone, Debug)]
pub struct StoredSigningSecret {
    pub list_id: String,
    pub webhook_id: String,
    pub secret: SecretString,
}

impl Store {
    /// Stores the signing secret of a webhook `sync` just registered (replacing one stored for
    /// the same webhook).
    pub async fn save_signing_secret(
        &self,
        provider: &str,
        list_id: &str,
        webhook_id: &str,
        secret: &SecretString,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO webhook_signing_secrets (provider, list_id, webhook_id, secret, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (provider, list_id, webhook_id) DO UPDATE SET secret = excluded.secret,
                 created_at = excluded.created_at";
        let statement = sqlx::query(SQL)
            .bind(provider)
            .bind(list_id)
            .bind(webhook_id)
            .bind(secret.expose_secret())
            .bind(self.now_text());
        self.execute("store a webhook signing secret", statement)
            .await
            .map(drop)
    }

    /// Forgets the secret of a webhook that was deleted.
    pub async fn delete_signing_secret(
        &self,
        provider: &str,
        list_id: &str,
        webhook_id: &str,
    ) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM webhook_signing_secrets
             WHERE provider = $1 AND list_id = $2 AND webhook_id = $3";
        let statement = sqlx::query(SQL)
            .bind(provider)
            .bind(list_id)
            .bind(webhook_id);
        self.execute("delete a webhook signing secret", statement)
            .await
            .map(drop)
    }

    /// Every stored signing secret of `provider`.
    pub async fn signing_secrets(
        &self,
        provider: &str,
    ) -> Result<Vec<StoredSigningSecret>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT list_id, webhook_id, secret FROM webhook_signing_secrets WHERE provider = $1
             ORDER BY list_id, webhook_id",
        )
        .bind(provider)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("read webhook signing secrets"))?;
        Ok(rows
            .into_iter()
            .map(|(list_id, webhook_id, secret)| StoredSigningSecret {
                list_id,
                webhook_id,
                secret: SecretString::from(secret),
            })
            .collect())
    }
}

/// How long [`SigningSecretCache`] answers from memory before it reads the table again.
pub const SIGNING_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The stored signing secrets of one provider as the webhook endpoint checks them, read from the
/// state DB at most once per [`SIGNING_CACHE_TTL`] instead of once per delivery (a query on the
/// hot path of every webhook). `sync` may store or delete a secret in another process; a delivery
/// that the cached secrets would refuse is checked again against a fresh read
/// ([`SigningSecretCache::fresh`]) before it is refused, so a secret registered a moment ago is
/// honoured at once. What a cached read can still do, for at most the TTL: accept a delivery
/// signed with a secret deleted that second, or take an unsigned delivery for a list whose
/// secret was stored that second as an unsigned hint (which the writeback worker confirms with
/// the provider before it acts).
#[derive(Debug)]
pub struct SigningSecretCache {
    provider: &'static str,
    read: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<[StoredSigningSecret]>)>>,
}

impl SigningSecretCache {
    pub fn new(provider: &'static str) -> SigningSecretCache {
        SigningSecretCache {
            provider,
            read: std::sync::Mutex::new(None),
        }
    }

    /// The secrets as read at most [`SIGNING_CACHE_TTL`] ago.
    pub async fn get(
        &self,
        store: &Store,
    ) -> Result<std::sync::Arc<[StoredSigningSecret]>, StoreError> {
        let cached = match self.read.lock() {
            Ok(read) => read
                .as_ref()
                .filter(|(at, _)| at.elapsed() < SIGNING_CACHE_TTL)
                .map(|(_, secrets)| secrets.clone()),
            Err(_) => None,
        };
        match cached {
            Some(secrets) => Ok(secrets),
            None => self.fresh(store).await,
        }
    }

    /// The secrets read from the state DB now (and kept for the next [`SigningSecretCache::get`]).
    pub async fn fresh(
        &self,
        store: &Store,
    ) -> Result<std::sync::Arc<[StoredSigningSecret]>, StoreError> {
        let at = std::time::Instant::now();
        let secrets: std::sync::Arc<[StoredSigningSecret]> =
            store.signing_secrets(self.provider).await?.into();
        if let Ok(mut read) = self.read.lock() {
            *read = Some((at, secrets.clone()));
        }
        Ok(secrets)
    }
}
