//! `[relay]`: the transactional relay: its sender, its routes (`smtp`, `sendmail`,
//! `mailchimp_transactional`, in order of preference), VERP bounces, and the queue's limits
//! (size, hourly quota, age, retries, leases, concurrency, retention). The SMTP and Mailchimp
//! Transactional routes have sections of their own, read by the submodules, as has DKIM signing.

mod dkim;
mod mandrill;
mod smtp;

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw, value};

pub use dkim::{DEFAULT_HEADERS as DKIM_DEFAULT_HEADERS, DkimAlgorithm, DkimConfig, DkimKey};
pub use mandrill::MandrillConfig;
pub use smtp::{SmtpConfig, SmtpTls};

/// The routes a relay may name, in the order error messages list them.
const ROUTES: [&str; 3] = ["smtp", "sendmail", "mailchimp_transactional"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    from: Raw,
    #[serde(default)]
    routes: Vec<Raw>,
    bounce_domain: Option<Raw>,
    smtp: Option<smtp::RawSmtp>,
    verp_secret: Option<Raw>,
    unsubscribe_secret: Option<Raw>,
    max_message_bytes: Option<Spanned<u64>>,
    hourly_limit: Option<Spanned<u64>>,
    max_age_hours: Option<Spanned<u64>>,
    allow_password_to_suppressed: Option<bool>,
    sendmail_path: Option<Raw>,
    retry_base_secs: Option<Spanned<u64>>,
    retry_max_secs: Option<Spanned<u64>>,
    route_backoff_secs: Option<Spanned<u64>>,
    lease_secs: Option<Spanned<u64>>,
    concurrency: Option<Spanned<u32>>,
    body_retention_days: Option<Spanned<u64>>,
    mailchimp_transactional: Option<mandrill::RawMandrill>,
    dkim: Option<dkim::RawDkim>,
}

impl RawRelay {
    /// `body_retention_days` as written: `[retention] outbox_body_days` is its newer name.
    pub(in crate::config) fn body_retention_days(&self) -> Option<&Spanned<u64>> {
        self.body_retention_days.as_ref()
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub from: String,
    pub routes: Vec<String>,
    pub bounce_domain: Option<String>,
    pub smtp: Option<SmtpConfig>,
    pub mailchimp_transactional: Option<MandrillConfig>,
    /// Key of the VERP token's HMAC; required with `bounce_domain`.
    pub verp_secret: Option<SecretString>,
    /// Key of the one-click unsubscribe tokens' HMAC (RFC 8058); without it relay mail carries
    /// no `List-Unsubscribe` and `/u/…` knows no token. A key of its own, never the VERP one.
    pub unsubscribe_secret: Option<SecretString>,
    /// Where the `https://…/u/TOKEN` unsubscribe link points: `[server] public_url` when it is
    /// an https:// URL (RFC 8058 asks for HTTPS); otherwise only the mailto link is offered.
    pub unsubscribe_base: Option<String>,
    /// Largest text or HTML body accepted (bytes); larger requests are refused.
    pub max_message_bytes: u64,
    /// Messages per hour over all routes; `None` = no limit.
    pub hourly_limit: Option<u64>,
    /// A message still undelivered after this long fails.
    pub max_age_hours: u64,
    /// Password mails still go to suppressed addresses (the member asked for them).
    pub allow_password_to_suppressed: bool,
    pub sendmail_path: PathBuf,
    /// First retry delay after a temporary failure; doubles per attempt up to `retry_max_secs`.
    pub retry_base_secs: u64,
    pub retry_max_secs: u64,
    /// How long a route that is down or misconfigured is skipped.
    pub route_backoff_secs: u64,
    /// How long a claimed message belongs to one worker before another may take it over.
    pub lease_secs: u64,
    /// Messages in flight per worker (also the SMTP connection pool size).
    pub concurrency: u32,
    /// The bytes of a message that is done (sent, bounced, suppressed, failed) are deleted this
    /// many days after its outcome; its row (status, reply, route, times) stays.
    pub body_retention_days: u64,
    /// `[relay.dkim]`: every relayed message is signed once, when it is queued.
    pub dkim: Option<DkimConfig>,
    /// The key `dkim.private_key_file` holds, read and checked when the config was loaded
    /// (present exactly when `dkim` is).
    pub dkim_key: Option<DkimKey>,
}

/// What `[relay]` says about how mail leaves: routes, their sections, the sender and VERP.
struct Routes {
    from: String,
    routes: Vec<String>,
    bounce_domain: Option<String>,
    smtp: Option<SmtpConfig>,
    mailchimp_transactional: Option<MandrillConfig>,
    verp_secret: Option<SecretString>,
}

impl RelayConfig {
    pub(super) fn read(l: &Loader<'_>, r: &RawRelay) -> Result<RelayConfig, ConfigError> {
        let routes = read_routes(l, r)?;
        let (retry_base_secs, retry_max_secs) = read_retry(l, r)?;
        let (dkim, dkim_key) = match &r.dkim {
            None => (None, None),
            Some(d) => {
                let (dkim, key) = DkimConfig::read(l, d, &from_domain(&routes.from))?;
                (Some(dkim), Some(key))
            }
        };
        Ok(RelayConfig {
            from: routes.from,
            routes: routes.routes,
            bounce_domain: routes.bounce_domain,
            smtp: routes.smtp,
            mailchimp_transactional: routes.mailchimp_transactional,
            verp_secret: routes.verp_secret,
            unsubscribe_secret: l.optional(
                &r.unsubscribe_secret,
                "relay.unsubscribe_secret",
                Loader::secret,
            )?,
            // Filled from `[server] public_url` once both sections are read.
            unsubscribe_base: None,
            max_message_bytes: l.positive(
                &r.max_message_bytes,
                "relay.max_message_bytes",
                1_000_000,
            )?,
            hourly_limit: value(&r.hourly_limit),
            max_age_hours: l.positive(&r.max_age_hours, "relay.max_age_hours", 72)?,
            allow_password_to_suppressed: r.allow_password_to_suppressed.unwrap_or(false),
            sendmail_path: l
                .optional(&r.sendmail_path, "relay.sendmail_path", Loader::path)?
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/sendmail")),
            retry_base_secs,
            retry_max_secs,
            route_backoff_secs: value(&r.route_backoff_secs).unwrap_or(60),
            lease_secs: l.positive(&r.lease_secs, "relay.lease_secs", 300)?,
            concurrency: l.bounded(&r.concurrency, "relay.concurrency", 1..=64, 4)?,
            body_retention_days: l.positive(
                &r.body_retention_days,
                "relay.body_retention_days",
                30,
            )?,
            dkim,
            dkim_key,
        })
    }
}

/// The domain of `[relay] from`, which `read_routes` has checked is an address.
fn from_domain(from: &str) -> String {
    from.parse::<lettre::message::Mailbox>()
        .map(|m| m.email.domain().to_ascii_lowercase())
        .unwrap_or_default()
}

fn read_routes(l: &Loader<'_>, r: &RawRelay) -> Result<Routes, ConfigError> {
    let choices = ROUTES.map(|route| (route, route));
    let routes = r
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            l.choice(route, &format!("relay.routes[{i}]"), "route", &choices)
                .map(str::to_owned)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let smtp = r
        .smtp
        .as_ref()
        .map(|s| SmtpConfig::read(l, s))
        .transpose()?;
    needs_section(l, r, &routes, "smtp", smtp.is_some())?;
    let mailchimp_transactional = r
        .mailchimp_transactional
        .as_ref()
        .map(|m| MandrillConfig::read(l, m))
        .transpose()?;
    needs_section(
        l,
        r,
        &routes,
        "mailchimp_transactional",
        mailchimp_transactional.is_some(),
    )?;
    let bounce_domain = l.optional(&r.bounce_domain, "relay.bounce_domain", Loader::nonempty)?;
    let verp_secret = l.optional(&r.verp_secret, "relay.verp_secret", Loader::secret)?;
    if let (Some(d), None) = (&r.bounce_domain, &verp_secret) {
        return Err(l.invalid(
            d.span(),
            "relay.verp_secret",
            "bounce_domain needs verp_secret (the key that signs VERP bounce addresses)",
        ));
    }
    let from = l.nonempty(&r.from, "relay.from")?;
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(l.invalid(
            r.from.span(),
            "relay.from",
            "expected an address such as \"Club Name <club@myclub.example>\"",
        ));
    }
    Ok(Routes {
        from,
        routes,
        bounce_domain,
        smtp,
        mailchimp_transactional,
        verp_secret,
    })
}

/// A route named in `routes` needs its section, `[relay.<route>]`.
fn needs_section(
    l: &Loader<'_>,
    r: &RawRelay,
    routes: &[String],
    route: &str,
    present: bool,
) -> Result<(), ConfigError> {
    if routes.iter().any(|r| r == route) && !present {
        return Err(l.invalid(
            r.from.span(),
            "relay.routes",
            format!("the route \"{route}\" needs a [relay.{route}] section"),
        ));
    }
    Ok(())
}

/// The first retry delay and the largest, which may not be smaller.
fn read_retry(l: &Loader<'_>, r: &RawRelay) -> Result<(u64, u64), ConfigError> {
    let base = value(&r.retry_base_secs).unwrap_or(60);
    let max = value(&r.retry_max_secs).unwrap_or(3600);
    if let Some(v) = &r.retry_max_secs
        && max < base
    {
        return Err(l.invalid(
            v.span(),
            "relay.retry_max_secs",
            "must not be smaller than retry_base_secs",
        ));
    }
    Ok((base, max))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{BASE, assert_refused, parse};

    const RELAY: &str = "[relay]\nfrom = \"Club <c@example.org>\"\n";

    #[test]
    fn defaults_fill_what_is_not_written() {
        let relay = parse(&format!("{BASE}{RELAY}")).relay.expect("relay");
        assert!(relay.routes.is_empty());
        assert_eq!(relay.sendmail_path, Path::new("/usr/sbin/sendmail"));
        assert_eq!(
            (
                relay.max_message_bytes,
                relay.hourly_limit,
                relay.max_age_hours,
                relay.retry_base_secs,
                relay.retry_max_secs,
                relay.route_backoff_secs,
                relay.lease_secs,
                relay.concurrency,
                relay.body_retention_days,
            ),
            (1_000_000, None, 72, 60, 3600, 60, 300, 4, 30)
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{RELAY}fromm = \"x\"\n"),
                    "mb.toml: TOML parse error at line 6, column 1\n  |\n6 | fromm = \"x\"\n  | ^^^^^\nunknown field `fromm`, expected one of `from`, `routes`, `bounce_domain`, `smtp`, `verp_secret`, `unsubscribe_secret`, `max_message_bytes`, `hourly_limit`, `max_age_hours`, `allow_password_to_suppressed`, `sendmail_path`, `retry_base_secs`, `retry_max_secs`, `route_backoff_secs`, `lease_secs`, `concurrency`, `body_retention_days`, `mailchimp_transactional`, `dkim`",
                ),
                (
                    format!("{RELAY}concurrency = \"x\"\n"),
                    "mb.toml: TOML parse error at line 6, column 15\n  |\n6 | concurrency = \"x\"\n  |               ^^^\ninvalid type: string \"x\", expected u32",
                ),
                (
                    format!("{RELAY}allow_password_to_suppressed = \"yes\"\n"),
                    "mb.toml: TOML parse error at line 6, column 32\n  |\n6 | allow_password_to_suppressed = \"yes\"\n  |                                ^^^^^\ninvalid type: string \"yes\", expected a boolean",
                ),
                (
                    format!("{RELAY}routes = \"smtp\"\n"),
                    "mb.toml: TOML parse error at line 6, column 10\n  |\n6 | routes = \"smtp\"\n  |          ^^^^^^\ninvalid type: string \"smtp\", expected a sequence",
                ),
                (
                    "[relay]\nroutes = []\n".into(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [relay]\n  | ^^^^^^^\nmissing field `from`",
                ),
                (
                    format!("{RELAY}routes = [\"sendmail\", \"pigeon\"]\n"),
                    "mb.toml:6: `relay.routes[1]`: unknown route `pigeon`: expected \"smtp\", \"sendmail\" or \"mailchimp_transactional\"",
                ),
                (
                    "[relay]\nfrom = \"not an address\"\n".into(),
                    "mb.toml:5: `relay.from`: expected an address such as \"Club Name <club@myclub.example>\"",
                ),
                (
                    "[relay]\nfrom = \"\"\n".into(),
                    "mb.toml:5: `relay.from`: must not be empty",
                ),
                (
                    format!("{RELAY}routes = [\"smtp\"]\n"),
                    "mb.toml:5: `relay.routes`: the route \"smtp\" needs a [relay.smtp] section",
                ),
                (
                    format!("{RELAY}routes = [\"mailchimp_transactional\"]\n"),
                    "mb.toml:5: `relay.routes`: the route \"mailchimp_transactional\" needs a [relay.mailchimp_transactional] section",
                ),
                (
                    format!("{RELAY}bounce_domain = \"b.example\"\n"),
                    "mb.toml:6: `relay.verp_secret`: bounce_domain needs verp_secret (the key that signs VERP bounce addresses)",
                ),
                (
                    format!("{RELAY}bounce_domain = \"\"\nverp_secret = \"s\"\n"),
                    "mb.toml:6: `relay.bounce_domain`: must not be empty",
                ),
                (
                    format!("{RELAY}verp_secret = \"\"\n"),
                    "mb.toml:6: `relay.verp_secret`: must not be empty",
                ),
                (
                    format!("{RELAY}retry_base_secs = 100\nretry_max_secs = 50\n"),
                    "mb.toml:7: `relay.retry_max_secs`: must not be smaller than retry_base_secs",
                ),
                (
                    format!("{RELAY}retry_max_secs = 30\n"),
                    "mb.toml:6: `relay.retry_max_secs`: must not be smaller than retry_base_secs",
                ),
                (
                    format!("{RELAY}concurrency = 0\n"),
                    "mb.toml:6: `relay.concurrency`: expected 1 to 64",
                ),
                (
                    format!("{RELAY}concurrency = 65\n"),
                    "mb.toml:6: `relay.concurrency`: expected 1 to 64",
                ),
                (
                    format!("{RELAY}max_message_bytes = 0\n"),
                    "mb.toml:6: `relay.max_message_bytes`: must be at least 1",
                ),
                (
                    format!("{RELAY}max_age_hours = 0\n"),
                    "mb.toml:6: `relay.max_age_hours`: must be at least 1",
                ),
                (
                    format!("{RELAY}lease_secs = 0\n"),
                    "mb.toml:6: `relay.lease_secs`: must be at least 1",
                ),
                (
                    format!("{RELAY}body_retention_days = 0\n"),
                    "mb.toml:6: `relay.body_retention_days`: must be at least 1",
                ),
                (
                    format!("{RELAY}sendmail_path = \"\"\n"),
                    "mb.toml:6: `relay.sendmail_path`: must not be empty",
                ),
            ],
        );
    }
}
