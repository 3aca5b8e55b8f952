//! The ways out, tried in the configured order: `smtp` (a smarthost through lettre's pooled
//! transport), `sendmail` (the local MTA's binary), `mailchimp_transactional` (the Mandrill-style
//! `messages/send-raw` API). Each reports success with the server's reply, or a
//! [`Failure`](super::classify::Failure) for [`classify`](super::classify::classify) to judge.

pub mod mandrill;
pub mod sendmail;
pub mod smtp;

use super::classify::Failure;
use crate::config::RelayConfig;

/// A route could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("[relay.smtp] ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("[relay] route `{0}` is listed but not configured")]
    NotConfigured(String),
    #[error("[relay.smtp]: {0}")]
    Smtp(String),
    #[error("[relay.mailchimp_transactional]: {0}")]
    Mandrill(String),
}

/// The names of the routes, as `[relay] routes` lists them and the outbox records them.
pub const ROUTE_NAMES: [&str; 3] = ["smtp", "sendmail", "mailchimp_transactional"];

/// One message for one recipient, as every route takes it: `envelope_from` is the reverse path,
/// `raw` the rendered message.
#[derive(Clone, Copy)]
pub struct Delivery<'a> {
    pub envelope_from: &'a str,
    pub recipient: &'a str,
    pub raw: &'a [u8],
}

/// One configured route.
pub enum Route {
    Smtp(smtp::SmtpRoute),
    Sendmail(sendmail::SendmailRoute),
    Mandrill(mandrill::MandrillRoute),
}

impl Route {
    pub fn name(&self) -> &'static str {
        match self {
            Route::Smtp(_) => "smtp",
            Route::Sendmail(_) => "sendmail",
            Route::Mandrill(_) => "mailchimp_transactional",
        }
    }

    /// Hands the message to the route. Returns the server's acceptance reply.
    pub async fn send(&self, delivery: Delivery<'_>) -> Result<String, Failure> {
        match self {
            Route::Smtp(r) => r.send(delivery).await,
            Route::Sendmail(r) => r.send(delivery).await,
            Route::Mandrill(r) => r.send(delivery).await,
        }
    }

    /// Closes pooled connections (SMTP QUIT).
    pub async fn shutdown(&self) {
        if let Route::Smtp(r) = self {
            r.shutdown().await;
        }
    }
}

/// The routes of `[relay] routes`, in order.
pub fn build(config: &RelayConfig) -> Result<Vec<Route>, RouteError> {
    config
        .routes
        .iter()
        .map(|name| match name.as_str() {
            "smtp" => {
                let smtp = config
                    .smtp
                    .as_ref()
                    .ok_or_else(|| RouteError::NotConfigured(name.clone()))?;
                Ok(Route::Smtp(smtp::SmtpRoute::new(smtp, config.concurrency)?))
            }
            "sendmail" => Ok(Route::Sendmail(sendmail::SendmailRoute::new(
                config.sendmail_path.clone(),
            ))),
            "mailchimp_transactional" => {
                let m = config
                    .mailchimp_transactional
                    .as_ref()
                    .ok_or_else(|| RouteError::NotConfigured(name.clone()))?;
                Ok(Route::Mandrill(mandrill::MandrillRoute::new(m)?))
            }
            other => Err(RouteError::NotConfigured(other.to_owned())),
        })
        .collect()
}
