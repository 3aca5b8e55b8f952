//! The SMTP smarthost route: lettre's async transport with a connection pool, `tls = starttls`
//! (STARTTLS required, no downgrade), `tls` (implicit TLS) or `none`, AUTH PLAIN/LOGIN, timeouts,
//! and an optional private CA (`ca_file`, PEM) for internal relays and tests.

use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{self, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::ExposeSecret;

use super::RouteError;
use crate::config::{SmtpConfig, SmtpTls};
use crate::relay::classify::Failure;

pub struct SmtpRoute {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpRoute {
    pub fn new(config: &SmtpConfig, pool_size: u32) -> Result<SmtpRoute, RouteError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(Duration::from_secs(config.timeout_secs)))
            .pool_config(PoolConfig::new().max_size(pool_size.max(1)));
        if config.tls != SmtpTls::None {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let ca_err = |message: String| RouteError::CaFile {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| ca_err(format!("not a PEM certificate: {e}")))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| RouteError::Smtp(format!("TLS setup failed: {e}")))?;
            builder = builder.tls(match config.tls {
                SmtpTls::StartTls => Tls::Required(params),
                _ => Tls::Wrapper(params),
            });
        } else {
            builder = builder.tls(Tls::None);
        }
        if let Some(user) = &config.username {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder
                .credentials(Credentials::new(user.clone(), password))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(SmtpRoute {
            transport: builder.build(),
        })
    }

    pub async fn send(
        &self,
        envelope_from: &str,
        recipient: &str,
        raw: &[u8],
    ) -> Result<String, Failure> {
        let envelope = envelope(envelope_from, recipient)?;
        match self.transport.send_raw(&envelope, raw).await {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => Err(failure(&e)),
        }
    }

    pub async fn shutdown(&self) {
        self.transport.shutdown().await;
    }
}

pub(crate) fn envelope(envelope_from: &str, recipient: &str) -> Result<Envelope, Failure> {
    let from: Address = envelope_from.parse().map_err(|e| Failure::Setup {
        detail: format!("envelope sender `{envelope_from}`: {e}"),
    })?;
    let to: Address = recipient.parse().map_err(|e| Failure::Setup {
        detail: format!("recipient `{recipient}`: {e}"),
    })?;
    Envelope::new(Some(from), vec![to]).map_err(|e| Failure::Setup {
        detail: e.to_string(),
    })
}

/// A lettre error as a [`Failure`]: a negative reply keeps its code and the server's text; a
/// client-side problem (no common AUTH mechanism …) is a setup failure; everything else
/// (refused, timeout, TLS, broken connection) means the route is unreachable.
pub fn failure(e: &smtp::Error) -> Failure {
    if let Some(code) = e.status() {
        let text = e.to_string();
        let text = text
            .split_once("): ")
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        let code = code.to_string().parse::<u16>().unwrap_or(0);
        return Failure::Smtp { code, text };
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !detail.contains(&s_text) {
            detail.push_str(": ");
            detail.push_str(&s_text);
        }
        source = s.source();
    }
    if e.is_client() {
        Failure::Setup { detail }
    } else {
        Failure::Unreachable { detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bad_envelope_is_a_setup_failure() {
        assert!(matches!(
            envelope("not an address", "ana@example.org"),
            Err(Failure::Setup { .. })
        ));
    }
}
