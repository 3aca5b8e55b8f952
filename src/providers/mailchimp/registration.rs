//! Keeping each audience's list webhook pointed at `serve`: with `[server] public_url` and
//! `webhook_secret` set, a sync makes sure the list has exactly one webhook to
//! `<public_url>/webhooks/mailchimp/<secret>`, with the events we handle and `sources.api = false`
//! (our own API writes must not echo back). Webhooks to our server under an old secret are
//! removed; other people's webhooks are left alone. The engine asks for this through
//! [`crate::providers::Provider::ensure_webhook`].

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::{MailchimpClient, RemoteWebhook, WebhookEvents, WebhookSources};
use crate::config::AudienceConfig;
use crate::providers::{EnsureError, Ensured, ProviderError, WebhookEndpoint};
use crate::store::Store;

/// Where the webhook must point. The URL holds the secret, so `Debug` hides it.
#[derive(Clone)]
pub struct WebhookTarget {
    prefix: String,
    url: SecretString,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookTarget({}[secret])", self.prefix)
    }
}

impl WebhookTarget {
    /// The list webhook's URL for `serve` at `endpoint`.
    pub fn of(endpoint: &WebhookEndpoint) -> WebhookTarget {
        WebhookTarget::new(endpoint.public_url(), endpoint.secret().expose_secret())
    }

    pub fn new(public_url: &str, secret: &str) -> WebhookTarget {
        let prefix = format!("{}/webhooks/mailchimp/", public_url.trim_end_matches('/'));
        WebhookTarget {
            url: SecretString::from(format!("{prefix}{secret}")),
            prefix,
        }
    }
}

/// The provider name the signing secrets are stored under.
pub const PROVIDER: &str = super::webhook::PROVIDER;

pub const EVENTS: WebhookEvents = WebhookEvents {
    subscribe: true,
    unsubscribe: true,
    profile: true,
    cleaned: true,
    upemail: true,
    campaign: false,
};

pub const SOURCES: WebhookSources = WebhookSources {
    user: true,
    admin: true,
    api: false,
};

/// What to do with the list's current webhooks: ids to delete, and whether to create ours.
pub fn decide(current: &[RemoteWebhook], target: &WebhookTarget) -> (Vec<String>, bool) {
    let url = target.url.expose_secret();
    let mut keep: Option<&str> = None;
    let mut delete = Vec::new();
    for hook in current {
        if !hook.url.starts_with(&target.prefix) {
            continue;
        }
        let right = hook.url == url && hook.events == EVENTS && hook.sources == SOURCES;
        if right && keep.is_none() {
            keep = Some(&hook.id);
        } else {
            delete.push(hook.id.clone());
        }
    }
    (delete, keep.is_none())
}

/// Makes the list have exactly one webhook to us with the right settings. A signing secret that
/// Mailchimp returns for a new webhook is stored in the state DB (it is shown only once); from
/// then on the list's deliveries must be signed with it.
pub async fn ensure(
    client: &MailchimpClient,
    store: &Store,
    audience: &AudienceConfig,
    target: &WebhookTarget,
) -> Result<Ensured, EnsureError> {
    let current = client
        .list_webhooks(&audience.list_id)
        .await
        .map_err(ProviderError::from)?;
    let (delete, create) = decide(&current, target);
    let mut done = Ensured::default();
    for id in delete {
        client
            .delete_webhook(&audience.list_id, &id)
            .await
            .map_err(ProviderError::from)?;
        store
            .delete_signing_secret(PROVIDER, &audience.list_id, &id)
            .await?;
        done.deleted += 1;
    }
    if create {
        let hook = client
            .create_webhook(
                &audience.list_id,
                target.url.expose_secret(),
                EVENTS,
                SOURCES,
            )
            .await
            .map_err(ProviderError::from)?;
        done.created += 1;
        tracing::info!(audience = %audience.name, webhook_id = %hook.id, "Registered the list webhook to this server");
        match hook.signing_secret {
            Some(secret) if !secret.is_empty() => {
                let secret = SecretString::from(secret);
                store
                    .save_signing_secret(PROVIDER, &audience.list_id, &hook.id, &secret)
                    .await?;
                tracing::info!(audience = %audience.name, webhook_id = %hook.id,
                    "Stored the new webhook's signing secret; the list's deliveries must be signed from now on");
            }
            _ => tracing::info!(audience = %audience.name,
                "Mailchimp returned no signing secret for the new webhook: its deliveries are unsigned, \
                 and each is confirmed with Mailchimp's API before it is applied"),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, url: &str, api: bool) -> RemoteWebhook {
        RemoteWebhook {
            id: id.into(),
            url: url.into(),
            events: EVENTS,
            sources: WebhookSources { api, ..SOURCES },
            signing_secret: None,
        }
    }

    #[test]
    fn keeps_one_right_hook_and_removes_stale_ones() {
        let t = WebhookTarget::new("https://club.example/", "s3");
        let ours = "https://club.example/webhooks/mailchimp/s3";
        let old = "https://club.example/webhooks/mailchimp/old";
        let foreign = "https://zapier.example/hook";
        assert_eq!(decide(&[], &t), (vec![], true));
        assert_eq!(decide(&[hook("a", ours, false)], &t), (vec![], false));
        assert_eq!(
            decide(
                &[
                    hook("a", ours, false),
                    hook("b", ours, false),
                    hook("c", old, false),
                    hook("d", foreign, true)
                ],
                &t
            ),
            (vec!["b".to_owned(), "c".to_owned()], false)
        );
        // Ours but echoing API writes: replaced.
        assert_eq!(
            decide(&[hook("a", ours, true)], &t),
            (vec!["a".to_owned()], true)
        );
        assert!(!format!("{t:?}").contains("s3"));
    }
}
