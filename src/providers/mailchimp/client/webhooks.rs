//! List webhook calls (`/lists/{list_id}/webhooks`): what `sync` needs to keep exactly one
//! webhook pointing at `serve`. Webhook URLs carry a secret: they are never logged.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{MailchimpClient, decode_json};
use crate::providers::mailchimp::MailchimpError;

/// A list webhook as Mailchimp reports it. Its `Debug` hides the URL's path (ours ends in the
/// webhook secret) and the signing secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteWebhook {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub events: WebhookEvents,
    #[serde(default)]
    pub sources: WebhookSources,
    /// Only in the create response of accounts with signing (research §6); shown once.
    #[serde(default)]
    pub signing_secret: Option<String>,
}

impl std::fmt::Debug for RemoteWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = url::Url::parse(&self.url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "(unparsable)".into());
        f.debug_struct("RemoteWebhook")
            .field("id", &self.id)
            .field("url", &format_args!("{origin}/[hidden]"))
            .field("events", &self.events)
            .field("sources", &self.sources)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "[hidden]"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvents {
    #[serde(default)]
    pub subscribe: bool,
    #[serde(default)]
    pub unsubscribe: bool,
    #[serde(default)]
    pub profile: bool,
    #[serde(default)]
    pub cleaned: bool,
    #[serde(default)]
    pub upemail: bool,
    #[serde(default)]
    pub campaign: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSources {
    #[serde(default)]
    pub user: bool,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub api: bool,
}

#[derive(Deserialize)]
struct ListWebhooks {
    #[serde(default)]
    webhooks: Vec<RemoteWebhook>,
}

#[derive(Serialize)]
struct CreateWebhook<'a> {
    url: &'a str,
    events: WebhookEvents,
    sources: WebhookSources,
}

impl MailchimpClient {
    /// The list's webhooks (`GET /lists/{list_id}/webhooks`).
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn list_webhooks(&self, list_id: &str) -> Result<Vec<RemoteWebhook>, MailchimpError> {
        let call = self.call(
            "list_webhooks",
            Some(list_id),
            Method::GET,
            &["lists", list_id, "webhooks"],
            None,
            true,
        );
        let out: ListWebhooks = self.execute(&call, decode_json).await?;
        Ok(out.webhooks)
    }

    /// Creates a webhook (`POST /lists/{list_id}/webhooks`); Mailchimp first checks the URL with
    /// a GET. Not idempotent: a timeout is reported, and the next sync's listing finds it.
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn create_webhook(
        &self,
        list_id: &str,
        url: &str,
        events: WebhookEvents,
        sources: WebhookSources,
    ) -> Result<RemoteWebhook, MailchimpError> {
        let call = self.call_json(
            "create_webhook",
            Some(list_id),
            Method::POST,
            &["lists", list_id, "webhooks"],
            &CreateWebhook {
                url,
                events,
                sources,
            },
            false,
        )?;
        self.execute(&call, decode_json).await
    }

    /// Deletes a webhook (`DELETE /lists/{list_id}/webhooks/{id}`, 204).
    #[tracing::instrument(skip_all, fields(list_id = %list_id, webhook_id = %webhook_id))]
    pub async fn delete_webhook(
        &self,
        list_id: &str,
        webhook_id: &str,
    ) -> Result<(), MailchimpError> {
        let call = self.call(
            "delete_webhook",
            Some(list_id),
            Method::DELETE,
            &["lists", list_id, "webhooks", webhook_id],
            None,
            true,
        );
        self.execute(&call, |_| Ok(())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_url_secret_and_the_signing_secret() {
        let hook = RemoteWebhook {
            id: "wh1".into(),
            url: "https://club.example/webhooks/mailchimp/url-secret-123".into(),
            events: WebhookEvents::default(),
            sources: WebhookSources::default(),
            signing_secret: Some("signing-secret-456".into()),
        };
        let shown = format!("{hook:?}");
        assert!(shown.contains("https://club.example"), "{shown}");
        assert!(!shown.contains("url-secret-123"), "{shown}");
        assert!(!shown.contains("signing-secret-456"), "{shown}");
    }
}
