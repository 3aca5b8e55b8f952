//! `[server]`: `mailbridge serve`: where it listens, its tokens and webhook secrets, the nightly
//! sync, soft-bounce suppression and the connection limits.

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    bind: Option<Raw>,
    api_token: Option<Raw>,
    webhook_secret: Option<Raw>,
    nightly_sync: Option<Raw>,
    public_url: Option<Raw>,
    soft_bounce_threshold: Option<Spanned<u32>>,
    soft_bounce_window_days: Option<Spanned<u32>>,
    transactional_webhook_key: Option<Raw>,
    transactional_webhook_url: Option<Raw>,
    header_read_timeout_secs: Option<Spanned<u64>>,
    request_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    catch_up_missed: Option<Spanned<bool>>,
    shutdown_grace_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: String,
    pub api_token: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub nightly_sync: Option<String>,
    /// The server's public base URL (no trailing slash); when set, `sync` registers the list
    /// webhook `<public_url>/webhooks/mailchimp/<webhook_secret>` on each audience.
    pub public_url: Option<String>,
    /// Soft bounces of one address within the window that put it on the suppression list.
    pub soft_bounce_threshold: u32,
    pub soft_bounce_window_days: u32,
    /// The Mailchimp Transactional webhook key (`auth_key`): `X-Mandrill-Signature` is checked
    /// with it. Without it, transactional webhooks are refused.
    pub transactional_webhook_key: Option<SecretString>,
    /// The URL exactly as registered at Mailchimp Transactional (signed by the provider);
    /// defaults to `<public_url>/webhooks/mailchimp-transactional`.
    pub transactional_webhook_url: Option<String>,
    /// How long a connection may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); then it is closed.
    pub header_read_timeout_secs: u64,
    /// How long a request may take from its headers to the answer, body included; then it is
    /// answered 408 `request_timeout`. `POST /v1/campaigns` is exempt (a push runs as a task of
    /// its own and may take longer).
    pub request_timeout_secs: u64,
    /// Connections served at once; further ones wait in the listen queue until one closes.
    pub max_connections: u64,
    /// Whether `serve`, starting after the last `nightly_sync` time passed without that night's
    /// run (the process was down), runs it at once.
    pub catch_up_missed: bool,
    /// How long a long-running command (`serve`, `relay`, `sync`, `bounce fetch`) may take, after
    /// SIGTERM or SIGINT, to finish or hand back its work and release its leases; past it, it
    /// exits non-zero saying what it abandoned.
    pub shutdown_grace_secs: u64,
}

impl ServerConfig {
    pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
    pub const DEFAULT_MAX_CONNECTIONS: u64 = 512;
    pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

    pub(super) fn read(l: &Loader<'_>, s: &RawServer) -> Result<ServerConfig, ConfigError> {
        let nightly_sync = l.optional(&s.nightly_sync, "server.nightly_sync", read_time)?;
        let bind = l
            .optional(&s.bind, "server.bind", read_bind)?
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        Ok(ServerConfig {
            bind,
            api_token: l.optional(&s.api_token, "server.api_token", Loader::secret)?,
            webhook_secret: l.optional(
                &s.webhook_secret,
                "server.webhook_secret",
                Loader::secret,
            )?,
            nightly_sync,
            public_url: l.optional(&s.public_url, "server.public_url", Loader::http_url)?,
            soft_bounce_threshold: l.within(
                &s.soft_bounce_threshold,
                "server.soft_bounce_threshold",
                1..=u32::MAX,
                "expected a count of at least 1",
                3,
            )?,
            soft_bounce_window_days: l.within(
                &s.soft_bounce_window_days,
                "server.soft_bounce_window_days",
                1..=u32::MAX,
                "expected a number of days of at least 1",
                30,
            )?,
            transactional_webhook_key: l.optional(
                &s.transactional_webhook_key,
                "server.transactional_webhook_key",
                Loader::secret,
            )?,
            transactional_webhook_url: l.optional(
                &s.transactional_webhook_url,
                "server.transactional_webhook_url",
                // Kept exactly as written: the provider signs the URL as registered, trailing
                // slash and query string included.
                |l, u, key| l.http_url(u, key).and_then(|_| l.nonempty(u, key)),
            )?,
            header_read_timeout_secs: l.bounded(
                &s.header_read_timeout_secs,
                "server.header_read_timeout_secs",
                1..=3600,
                ServerConfig::DEFAULT_HEADER_READ_TIMEOUT_SECS,
            )?,
            request_timeout_secs: l.bounded(
                &s.request_timeout_secs,
                "server.request_timeout_secs",
                1..=3600,
                ServerConfig::DEFAULT_REQUEST_TIMEOUT_SECS,
            )?,
            max_connections: l.bounded(
                &s.max_connections,
                "server.max_connections",
                1..=100_000,
                ServerConfig::DEFAULT_MAX_CONNECTIONS,
            )?,
            catch_up_missed: s.catch_up_missed.as_ref().is_some_and(|b| *b.get_ref()),
            shutdown_grace_secs: l.bounded(
                &s.shutdown_grace_secs,
                "server.shutdown_grace_secs",
                1..=3600,
                ServerConfig::DEFAULT_SHUTDOWN_GRACE_SECS,
            )?,
        })
    }
}

/// A local time of day, `HH:MM`, kept as written.
fn read_time(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<String, ConfigError> {
    let v = l.string(raw, key)?;
    if chrono::NaiveTime::parse_from_str(&v, "%H:%M").is_err() {
        return Err(l.invalid(
            raw.span(),
            key,
            "expected a local time HH:MM, e.g. \"02:30\"",
        ));
    }
    Ok(v)
}

fn read_bind(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<String, ConfigError> {
    let v = l.nonempty(raw, key)?;
    if v.parse::<std::net::SocketAddr>().is_err() {
        return Err(l.invalid(
            raw.span(),
            key,
            "expected an address such as 127.0.0.1:8080",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, assert_refused, parse};

    #[test]
    fn an_empty_section_listens_on_localhost_with_default_limits() {
        let server = parse(&format!("{BASE}[server]\n")).server.expect("server");
        assert_eq!(server.bind, "127.0.0.1:8080");
        assert_eq!(
            (server.soft_bounce_threshold, server.soft_bounce_window_days),
            (3, 30)
        );
        let url = "https://p.example/x/?q=1";
        let server = parse(&format!(
            "{BASE}[server]\npublic_url = \"https://p.example/\"\ntransactional_webhook_url = \"{url}\"\n"
        ))
        .server
        .expect("server");
        assert_eq!(server.public_url.as_deref(), Some("https://p.example"));
        assert_eq!(server.transactional_webhook_url.as_deref(), Some(url));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            &format!("{BASE}[server]\n"),
            &[
                (
                    "bnd = \"x\"\n",
                    "mb.toml: TOML parse error at line 5, column 1\n  |\n5 | bnd = \"x\"\n  | ^^^\nunknown field `bnd`, expected one of `bind`, `api_token`, `webhook_secret`, `nightly_sync`, `public_url`, `soft_bounce_threshold`, `soft_bounce_window_days`, `transactional_webhook_key`, `transactional_webhook_url`, `header_read_timeout_secs`, `request_timeout_secs`, `max_connections`, `catch_up_missed`, `shutdown_grace_secs`",
                ),
                (
                    "max_connections = \"x\"\n",
                    "mb.toml: TOML parse error at line 5, column 19\n  |\n5 | max_connections = \"x\"\n  |                   ^^^\ninvalid type: string \"x\", expected u64",
                ),
                (
                    "soft_bounce_threshold = -3\n",
                    "mb.toml: TOML parse error at line 5, column 25\n  |\n5 | soft_bounce_threshold = -3\n  |                         ^^\ninvalid value: integer `-3`, expected u32",
                ),
                (
                    "bind = \"localhost\"\n",
                    "mb.toml:5: `server.bind`: expected an address such as 127.0.0.1:8080",
                ),
                ("bind = \"\"", "mb.toml:5: `server.bind`: must not be empty"),
                (
                    "nightly_sync = \"25:00\"\n",
                    "mb.toml:5: `server.nightly_sync`: expected a local time HH:MM, e.g. \"02:30\"",
                ),
                (
                    "api_token = \"\"\n",
                    "mb.toml:5: `server.api_token`: must not be empty",
                ),
                (
                    "webhook_secret = \"${{S}}\"\n",
                    "mb.toml:5: `server.webhook_secret`: `${…}` at character 1 is not a valid environment variable name: use letters, digits and `_` (write `$$` for a literal `$`)",
                ),
                (
                    "public_url = \"example.org\"\n",
                    "mb.toml:5: `server.public_url`: expected an http:// or https:// URL",
                ),
                (
                    "soft_bounce_threshold = 0\n",
                    "mb.toml:5: `server.soft_bounce_threshold`: expected a count of at least 1",
                ),
                (
                    "soft_bounce_window_days = 0\n",
                    "mb.toml:5: `server.soft_bounce_window_days`: expected a number of days of at least 1",
                ),
                (
                    "transactional_webhook_key = \"\"\n",
                    "mb.toml:5: `server.transactional_webhook_key`: must not be empty",
                ),
                (
                    "transactional_webhook_url = \"x\"\n",
                    "mb.toml:5: `server.transactional_webhook_url`: expected an http:// or https:// URL",
                ),
                (
                    "header_read_timeout_secs = 3601\n",
                    "mb.toml:5: `server.header_read_timeout_secs`: expected 1 to 3600",
                ),
                (
                    "request_timeout_secs = 0\n",
                    "mb.toml:5: `server.request_timeout_secs`: expected 1 to 3600",
                ),
                (
                    "max_connections = 100001\n",
                    "mb.toml:5: `server.max_connections`: expected 1 to 100000",
                ),
            ],
        );
    }
}
