//! The provider transactional API route: Mailchimp Transactional (Mandrill) `messages/send-raw`
//! (<https://mailchimp.com/developer/transactional/api/messages/send-raw-message/>). The raw
//! message goes as is; the answer has one entry per recipient (`sent`, `queued`, `rejected` with a
//! `reject_reason`, `invalid`); API errors come as HTTP 500 with an error `name`. A request that
//! was sent but whose answer was lost (a timeout once connected, a 2xx that cannot be read) is
//! [`Failure::Unanswered`]: the API may have sent the message.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::Delivery;
use super::RouteError;
use crate::config::MandrillConfig;
use crate::relay::classify::Failure;

/// The longest a connection to the API may take to open (at most half the request's timeout,
/// so that a connection that never opens is reported as such, not as a request sent).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MandrillRoute {
    client: reqwest::Client,
    base_url: String,
    api_key: SecretString,
}

#[derive(Serialize)]
struct SendRawRequest<'a> {
    key: &'a str,
    raw_message: &'a str,
    from_email: &'a str,
    to: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    return_path_domain: Option<&'a str>,
}

#[derive(Deserialize)]
struct SendRawResult {
    status: String,
    #[serde(default)]
    reject_reason: Option<String>,
    #[serde(default, rename = "_id")]
    id: Option<String>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    name: Option<String>,
}

impl MandrillRoute {
    pub fn new(config: &MandrillConfig) -> Result<MandrillRoute, RouteError> {
        let timeout = Duration::from_secs(config.timeout_secs);
        // A connection that cannot be made is the route being down (the next route may take
        // the message); only a request that was sent and then timed out is of unknown outcome.
        let client = reqwest::Client::builder()
            .connect_timeout((timeout / 2).min(CONNECT_TIMEOUT))
            .timeout(timeout)
            .build()
            .map_err(|e| RouteError::Mandrill(format!("HTTP client setup failed: {e}")))?;
        Ok(MandrillRoute {
            client,
            base_url: config.base_url.clone(),
            api_key: config.api_key.clone(),
        })
    }

    pub async fn send(&self, delivery: Delivery<'_>) -> Result<String, Failure> {
        let raw_message = String::from_utf8_lossy(delivery.raw);
        let return_path_domain = delivery.envelope_from.rsplit_once('@').map(|(_, d)| d);
        let body = SendRawRequest {
            key: self.api_key.expose_secret(),
            raw_message: &raw_message,
            from_email: delivery.envelope_from,
            to: [delivery.recipient],
            return_path_domain,
        };
        let response = self
            .client
            .post(format!("{}/messages/send-raw.json", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                // reqwest's error text names the URL, never the JSON body with the key.
                let before_sending = e.is_connect() || e.is_builder();
                let detail = e.without_url().to_string();
                if before_sending {
                    Failure::Unreachable { detail }
                } else {
                    // Connected and sent: the API may have taken the message before the
                    // answer was lost (a timeout, a connection closed while waiting).
                    Failure::Unanswered {
                        detail: format!("no answer from the API: {detail}"),
                    }
                }
            })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await;
        if !(200..300).contains(&status) {
            let name = bytes
                .ok()
                .and_then(|b| serde_json::from_slice::<ApiErrorBody>(&b).ok())
                .and_then(|b| b.name);
            return Err(Failure::ApiStatus { status, name });
        }
        // A 2xx: the API took the request. An answer that cannot be read says nothing about
        // whether it sent the message.
        let bytes = bytes.map_err(|e| Failure::Unanswered {
            detail: format!(
                "the API answered {status} but its body could not be read: {}",
                e.without_url()
            ),
        })?;
        let results: Vec<SendRawResult> =
            serde_json::from_slice(&bytes).map_err(|e| Failure::Unanswered {
                detail: format!("the API answered {status} with an unreadable body: {e}"),
            })?;
        let Some(first) = results.into_iter().next() else {
            return Err(Failure::Unanswered {
                detail: format!("the API answered {status} with no result"),
            });
        };
        match first.status.as_str() {
            "sent" | "queued" | "scheduled" => Ok(format!(
                "API {} (id {})",
                first.status,
                first.id.as_deref().unwrap_or("?")
            )),
            "invalid" => Err(Failure::ApiRejected {
                reason: "invalid".into(),
            }),
            _ => Err(Failure::ApiRejected {
                reason: first.reject_reason.unwrap_or(first.status),
            }),
        }
    }
}
