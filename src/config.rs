//! `mailbridge.toml`: loading, `${ENV}` expansion and validation. Every error names the file, the
//! line and the key, and what was expected. Secrets are held in [`SecretString`] and database URLs
//! in [`DbUrl`], whose `Display` hides the password.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

/// Why a configuration could not be loaded. Exit code 2 at the binary's edge.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// A value that may be written as `${ENV_VAR}` (or contain such references), with its position.
type Raw = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state: Option<RawState>,
    members: RawMembers,
    #[serde(default)]
    providers: RawProviders,
    #[serde(default)]
    audiences: Vec<RawAudience>,
    relay: Option<RawRelay>,
    server: Option<RawServer>,
    campaigns: Option<RawCampaigns>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaigns {
    max_sync_age_minutes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Raw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembers {
    url: Raw,
    mapping: Raw,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProviders {
    mailchimp: Option<RawMailchimp>,
    constant_contact: Option<RawConstantContact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailchimp {
    api_key: Raw,
    base_url: Option<Raw>,
    max_in_flight: Option<Spanned<u32>>,
    timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstantContact {
    client_id: Raw,
    refresh_token: Raw,
    base_url: Option<Raw>,
    token_url: Option<Raw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    name: Raw,
    provider: Raw,
    list_id: Raw,
    max_archive_percent: Option<Spanned<f64>>,
    webhook_signing_secret: Option<Raw>,
    from_name: Option<Raw>,
    reply_to: Option<Raw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    from: Raw,
    #[serde(default)]
    routes: Vec<Raw>,
    bounce_domain: Option<Raw>,
    smtp: Option<RawSmtp>,
    verp_secret: Option<Raw>,
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
    mailchimp_transactional: Option<RawMandrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMandrill {
    api_key: Raw,
    base_url: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Raw,
    port: Option<Spanned<u16>>,
    tls: Option<Raw>,
    username: Option<Raw>,
    password: Option<Raw>,
    monthly_quota: Option<Spanned<u64>>,
    ca_file: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
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
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state: StateConfig,
    pub members: MembersConfig,
    pub mailchimp: Option<MailchimpConfig>,
    pub constant_contact: Option<ConstantContactConfig>,
    pub audiences: Vec<AudienceConfig>,
    pub relay: Option<RelayConfig>,
    pub server: Option<ServerConfig>,
    pub campaigns: CampaignsConfig,
}

/// `[campaigns]`: how `campaign push` decides the audience is fresh enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignsConfig {
    /// With `--no-sync`, a push is refused when the audience's last successful sync is older.
    pub max_sync_age_minutes: u64,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        CampaignsConfig {
            max_sync_age_minutes: 60,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub url: DbUrl,
}

#[derive(Debug, Clone)]
pub struct MembersConfig {
    pub url: DbUrl,
    /// The mapping file, resolved against the config file's folder.
    pub mapping: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MailchimpConfig {
    pub api_key: SecretString,
    /// `https://<dc>.api.mailchimp.com/3.0` unless overridden (simulator, tests).
    pub base_url: String,
    pub max_in_flight: u32,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone)]
pub struct ConstantContactConfig {
    pub client_id: String,
    pub refresh_token: SecretString,
    pub base_url: String,
    pub token_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Mailchimp,
    ConstantContact,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Mailchimp => "mailchimp",
            ProviderKind::ConstantContact => "constant_contact",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AudienceConfig {
    pub name: String,
    pub provider: ProviderKind,
    pub list_id: String,
    /// A run that would archive more than this share of the audience stops (issue guardrail).
    pub max_archive_percent: f64,
    /// The list webhook's signing secret: when set, deliveries for this list must carry a valid
    /// `X-Mailchimp-Signature`.
    pub webhook_signing_secret: Option<SecretString>,
    /// Campaign default: the "from" name (`campaign push --from-name` overrides).
    pub from_name: Option<String>,
    /// Campaign default: the reply-to address (`campaign push --reply-to` overrides).
    pub reply_to: Option<crate::domain::Email>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub monthly_quota: Option<u64>,
    pub ca_file: Option<PathBuf>,
    /// Connect and per-command timeout.
    pub timeout_secs: u64,
}

/// `[relay.mailchimp_transactional]`: the Mandrill-style `messages/send-raw` API.
#[derive(Debug, Clone)]
pub struct MandrillConfig {
    pub api_key: SecretString,
    /// `https://mandrillapp.com/api/1.0` unless overridden (tests).
    pub base_url: String,
    pub timeout_secs: u64,
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
}

impl ServerConfig {
    pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
    pub const DEFAULT_MAX_CONNECTIONS: u64 = 512;
}

/// A database URL. `Display` shows it with the password replaced by `***`.
#[derive(Clone)]
pub struct DbUrl {
    url: SecretString,
    redacted: String,
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
    MySql,
}

impl DbUrl {
    /// Parses and checks a URL; relative SQLite paths are resolved against `base_dir`.
    pub fn parse(raw: &str, base_dir: &Path) -> Result<DbUrl, String> {
        let raw = raw.trim();
        let (scheme, _) = raw.split_once(':').ok_or_else(|| {
            "expected a URL such as sqlite://file.db or postgres://host/db".to_owned()
        })?;
        let url = match scheme {
            "sqlite" => {
                let rest = raw
                    .strip_prefix("sqlite://")
                    .or_else(|| raw.strip_prefix("sqlite:"))
                    .unwrap_or_default();
                let (path, query) = match rest.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err("the sqlite URL names no file".into());
                }
                let path = if path == ":memory:" || Path::new(path).is_absolute() {
                    path.to_owned()
                } else {
                    base_dir.join(path).to_string_lossy().into_owned()
                };
                match query {
                    Some(q) => format!("sqlite://{path}?{q}"),
                    None => format!("sqlite://{path}"),
                }
            }
            "postgres" | "postgresql" | "mysql" | "mariadb" => {
                let parsed = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
                if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                    return Err("the URL names no host".into());
                }
                let (url, dialect) = if scheme == "mariadb" || scheme == "mysql" {
                    (
                        format!("mysql{}", &raw[scheme.len()..]),
                        crate::db_tls::Dialect::MySql,
                    )
                } else {
                    (raw.to_owned(), crate::db_tls::Dialect::Postgres)
                };
                crate::db_tls::resolve(dialect, &url, base_dir)?
            }
            other => {
                return Err(format!(
                    "unsupported database `{other}`: expected sqlite://, postgres:// or mysql://"
                ));
            }
        };
        let redacted = redact_url(&url);
        Ok(DbUrl {
            url: SecretString::from(url),
            redacted,
        })
    }

    pub fn kind(&self) -> DbKind {
        let url = self.url.expose_secret();
        if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("mysql:") {
            DbKind::MySql
        } else {
            DbKind::Postgres
        }
    }

    /// The URL with its password, for the database driver only.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// For SQLite URLs: the file path (None for `:memory:`).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.expose().strip_prefix("sqlite://")?;
        let path = rest.split('?').next().unwrap_or(rest);
        (path != ":memory:").then(|| PathBuf::from(path))
    }

    /// Where the database is, for messages: `host:port/database` (as the driver will connect),
    /// or the file. Never the password.
    pub fn location(&self) -> String {
        let url = self.expose();
        let (host, port, db) = match self.kind() {
            DbKind::Sqlite => {
                return self
                    .sqlite_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| ":memory:".into());
            }
            DbKind::Postgres => match sqlx::postgres::PgConnectOptions::from_str(url) {
                Ok(o) => (
                    o.get_host().to_owned(),
                    o.get_port(),
                    o.get_database().map(str::to_owned),
                ),
                Err(_) => return self.redacted.clone(),
            },
            DbKind::MySql => match sqlx::mysql::MySqlConnectOptions::from_str(url) {
                Ok(o) => (
                    o.get_host().to_owned(),
                    o.get_port(),
                    o.get_database().map(str::to_owned),
                ),
                Err(_) => return self.redacted.clone(),
            },
        };
        match db {
            Some(db) => format!("{host}:{port}/{db}"),
            None => format!("{host}:{port}"),
        }
    }

    /// The TLS settings the driver will use (`None` for SQLite).
    pub fn tls(&self) -> Option<crate::db_tls::DbTls> {
        use crate::db_tls::{DbTls, Dialect};
        match self.kind() {
            DbKind::Sqlite => None,
            DbKind::Postgres => Some(DbTls::of_url(Dialect::Postgres, self.expose())),
            DbKind::MySql => Some(DbTls::of_url(Dialect::MySql, self.expose())),
        }
    }
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => {
            // Passwords may also travel as a query parameter.
            if u.query_pairs().any(|(k, _)| k == "password") {
                let mut u2 = u.clone();
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u2.query_pairs_mut().clear().extend_pairs(pairs);
                userinfo_hidden(u2.as_ref())
            } else {
                userinfo_hidden(url)
            }
        }
        Err(_) => userinfo_hidden(url),
    }
}

/// `url` with the text between a `:` and an `@` in any `user:password@` part hidden, wherever it
/// stands: a URL that the url crate does not read as having a password may still carry one (a
/// `postgres://${DATABASE_URL}` whose variable holds a whole URL reads as a host `postgres` and a
/// path `//user:password@host/db`).
fn userinfo_hidden(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        // The user-info part starts after the last `/` before the `@`.
        let start = before.rfind('/').map_or(0, |i| i + 1);
        match before[start..].find(':') {
            Some(colon) => {
                out.push_str(&before[..start + colon + 1]);
                out.push_str("***");
            }
            None => out.push_str(before),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted)
    }
}

/// Expands `${NAME}` references; `$$` is a literal `$`. One pass: a value is never expanded again.
/// Errors give the character position of the `$` and never the text after it, which may be part of
/// a secret written literally (a password containing `${`). Public for the fuzz tests only.
#[doc(hidden)]
pub fn expand_env(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(inner) = after.strip_prefix('{') {
            // 1-based, in characters, as an editor counts.
            let at = || value[..value.len() - rest.len() + pos].chars().count() + 1;
            let end = inner.find('}').ok_or_else(|| {
                format!(
                    "`${{` at character {} is not closed by `}}` (write `$$` for a literal `$`)",
                    at()
                )
            })?;
            let name = &inner[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "`${{…}}` at character {} is not a valid environment variable name: use letters, digits and `_` (write `$$` for a literal `$`)",
                    at()
                ));
            }
            let val =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&val);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

struct Loader<'a> {
    path: &'a Path,
    text: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Loader<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn invalid(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn string(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        expand_env(raw.get_ref(), self.lookup).map_err(|m| self.invalid(raw.span(), key, m))
    }

    fn nonempty(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        let value = self.string(raw, key)?;
        if value.trim().is_empty() {
            return Err(self.invalid(raw.span(), key, "must not be empty"));
        }
        Ok(value)
    }

    fn secret(&self, raw: &Raw, key: &str) -> Result<SecretString, ConfigError> {
        self.nonempty(raw, key).map(SecretString::from)
    }

    fn db_url(&self, raw: &Raw, key: &str) -> Result<DbUrl, ConfigError> {
        let value = self.nonempty(raw, key)?;
        let base = self.path.parent().unwrap_or(Path::new("."));
        DbUrl::parse(&value, base).map_err(|m| self.invalid(raw.span(), key, m))
    }

    fn http_url(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        let value = self.nonempty(raw, key)?;
        match url::Url::parse(&value) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                Ok(value.trim_end_matches('/').to_owned())
            }
            _ => Err(self.invalid(raw.span(), key, "expected an http:// or https:// URL")),
        }
    }
}

/// An optional whole number that must be at least 1, or `default`.
fn positive(
    l: &Loader<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        Some(v) if *v.get_ref() == 0 => Err(l.invalid(v.span(), key, "must be at least 1")),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    }
}

/// An optional whole number within `range`, or `default`.
fn bounded(
    l: &Loader<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        Some(v) if !range.contains(v.get_ref()) => Err(l.invalid(
            v.span(),
            key,
            format!("expected {} to {}", range.start(), range.end()),
        )),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Loads `path`, expanding `${ENV}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_str_with_env(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses configuration text; `lookup` answers environment variables (tests pass their own).
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let l = Loader { path, text, lookup };
        let base = path.parent().unwrap_or(Path::new("."));

        let state = match &raw.state {
            Some(s) => StateConfig {
                url: l.db_url(&s.url, "state.url")?,
            },
            None => StateConfig {
                url: DbUrl::parse("sqlite://mailbridge.db", base).map_err(|m| {
                    ConfigError::Parse {
                        path: path.to_owned(),
                        message: m,
                    }
                })?,
            },
        };
        let members = MembersConfig {
            url: l.db_url(&raw.members.url, "members.url")?,
            mapping: base.join(l.nonempty(&raw.members.mapping, "members.mapping")?),
        };

        let mailchimp = match &raw.providers.mailchimp {
            None => None,
            Some(mc) => {
                let key = l.nonempty(&mc.api_key, "providers.mailchimp.api_key")?;
                let base_url = match &mc.base_url {
                    Some(u) => l.http_url(u, "providers.mailchimp.base_url")?,
                    None => {
                        let dc = key.rsplit_once('-').map(|(_, dc)| dc).unwrap_or("");
                        if dc.is_empty() || !dc.bytes().all(|b| b.is_ascii_alphanumeric()) {
                            return Err(l.invalid(
                                mc.api_key.span(),
                                "providers.mailchimp.api_key",
                                "expected a Mailchimp API key of the form <key>-<dc> (e.g. …-us6), or set base_url",
                            ));
                        }
                        format!("https://{dc}.api.mailchimp.com/3.0")
                    }
                };
                let max_in_flight = match &mc.max_in_flight {
                    Some(n) if !(1..=10).contains(n.get_ref()) => {
                        return Err(l.invalid(
                            n.span(),
                            "providers.mailchimp.max_in_flight",
                            "expected 1 to 10 (Mailchimp allows 10 simultaneous connections)",
                        ));
                    }
                    Some(n) => *n.get_ref(),
                    None => 10,
                };
                let timeout_secs = match &mc.timeout_secs {
                    Some(t) if *t.get_ref() == 0 => {
                        return Err(l.invalid(
                            t.span(),
                            "providers.mailchimp.timeout_secs",
                            "must be at least 1",
                        ));
                    }
                    Some(t) => *t.get_ref(),
                    None => 120,
                };
                Some(MailchimpConfig {
                    api_key: SecretString::from(key),
                    base_url,
                    max_in_flight,
                    timeout_secs,
                })
            }
        };

        let constant_contact = match &raw.providers.constant_contact {
            None => None,
            Some(cc) => Some(ConstantContactConfig {
                client_id: l.nonempty(&cc.client_id, "providers.constant_contact.client_id")?,
                refresh_token: l.secret(
                    &cc.refresh_token,
                    "providers.constant_contact.refresh_token",
                )?,
                base_url: match &cc.base_url {
                    Some(u) => l.http_url(u, "providers.constant_contact.base_url")?,
                    None => "https://api.cc.email/v3".into(),
                },
                token_url: match &cc.token_url {
                    Some(u) => l.http_url(u, "providers.constant_contact.token_url")?,
                    None => "https://authz.constantcontact.com/oauth2/default/v1/token".into(),
                },
            }),
        };

        let mut names = BTreeSet::new();
        let mut audiences = Vec::new();
        for (i, a) in raw.audiences.iter().enumerate() {
            let key = |k: &str| format!("audiences[{i}].{k}");
            let name = l.nonempty(&a.name, &key("name"))?;
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(l.invalid(
                    a.name.span(),
                    &key("name"),
                    "use letters, digits, `_` and `-` only",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(l.invalid(
                    a.name.span(),
                    &key("name"),
                    format!("audience `{name}` is defined twice"),
                ));
            }
            let provider = match l.string(&a.provider, &key("provider"))?.as_str() {
                "mailchimp" => ProviderKind::Mailchimp,
                "constant_contact" => ProviderKind::ConstantContact,
                other => {
                    return Err(l.invalid(
                        a.provider.span(),
                        &key("provider"),
                        format!("unknown provider `{other}`: expected \"mailchimp\" or \"constant_contact\""),
                    ));
                }
            };
            let configured = match provider {
                ProviderKind::Mailchimp => mailchimp.is_some(),
                ProviderKind::ConstantContact => constant_contact.is_some(),
            };
            if !configured {
                return Err(l.invalid(
                    a.provider.span(),
                    &key("provider"),
                    format!(
                        "audience `{name}` uses {} but [providers.{}] is missing",
                        provider.as_str(),
                        provider.as_str()
                    ),
                ));
            }
            let max_archive_percent = match &a.max_archive_percent {
                Some(p) if !(0.0..=100.0).contains(p.get_ref()) => {
                    return Err(l.invalid(
                        p.span(),
                        &key("max_archive_percent"),
                        "expected a percentage from 0 to 100",
                    ));
                }
                Some(p) => *p.get_ref(),
                None => 10.0,
            };
            audiences.push(AudienceConfig {
                name,
                provider,
                list_id: l.nonempty(&a.list_id, &key("list_id"))?,
                max_archive_percent,
                webhook_signing_secret: a
                    .webhook_signing_secret
                    .as_ref()
                    .map(|t| l.secret(t, &key("webhook_signing_secret")))
                    .transpose()?,
                from_name: a
                    .from_name
                    .as_ref()
                    .map(|v| l.nonempty(v, &key("from_name")))
                    .transpose()?,
                reply_to: match &a.reply_to {
                    None => None,
                    Some(v) => {
                        let text = l.nonempty(v, &key("reply_to"))?;
                        Some(crate::domain::Email::parse(&text).map_err(|e| {
                            l.invalid(
                                v.span(),
                                &key("reply_to"),
                                format!("not an email address: {e}"),
                            )
                        })?)
                    }
                },
            });
        }

        let relay = match &raw.relay {
            None => None,
            Some(r) => {
                let mut routes = Vec::new();
                for (i, route) in r.routes.iter().enumerate() {
                    let value = l.string(route, &format!("relay.routes[{i}]"))?;
                    if !["smtp", "sendmail", "mailchimp_transactional"].contains(&value.as_str()) {
                        return Err(l.invalid(
                            route.span(),
                            &format!("relay.routes[{i}]"),
                            format!("unknown route `{value}`: expected \"smtp\", \"sendmail\" or \"mailchimp_transactional\""),
                        ));
                    }
                    routes.push(value);
                }
                let smtp = match &r.smtp {
                    None => None,
                    Some(s) => Some(SmtpConfig {
                        host: l.nonempty(&s.host, "relay.smtp.host")?,
                        port: s.port.as_ref().map(|p| *p.get_ref()).unwrap_or(587),
                        tls: match &s.tls {
                            None => SmtpTls::StartTls,
                            Some(t) => match l.string(t, "relay.smtp.tls")?.as_str() {
                                "starttls" => SmtpTls::StartTls,
                                "tls" => SmtpTls::Tls,
                                "none" => SmtpTls::None,
                                other => {
                                    return Err(l.invalid(
                                        t.span(),
                                        "relay.smtp.tls",
                                        format!("unknown value `{other}`: expected \"starttls\", \"tls\" or \"none\""),
                                    ));
                                }
                            },
                        },
                        username: s
                            .username
                            .as_ref()
                            .map(|u| l.string(u, "relay.smtp.username"))
                            .transpose()?,
                        password: s
                            .password
                            .as_ref()
                            .map(|p| l.secret(p, "relay.smtp.password"))
                            .transpose()?,
                        monthly_quota: s.monthly_quota.as_ref().map(|q| *q.get_ref()),
                        ca_file: s
                            .ca_file
                            .as_ref()
                            .map(|c| l.nonempty(c, "relay.smtp.ca_file").map(|p| base.join(p)))
                            .transpose()?,
                        timeout_secs: positive(&l, &s.timeout_secs, "relay.smtp.timeout_secs", 30)?,
                    }),
                };
                if routes.iter().any(|r| r == "smtp") && smtp.is_none() {
                    return Err(l.invalid(
                        r.from.span(),
                        "relay.routes",
                        "the route \"smtp\" needs a [relay.smtp] section",
                    ));
                }
                let mailchimp_transactional = match &r.mailchimp_transactional {
                    None => None,
                    Some(m) => Some(MandrillConfig {
                        api_key: l.secret(&m.api_key, "relay.mailchimp_transactional.api_key")?,
                        base_url: match &m.base_url {
                            Some(u) => l.http_url(u, "relay.mailchimp_transactional.base_url")?,
                            None => "https://mandrillapp.com/api/1.0".into(),
                        },
                        timeout_secs: positive(
                            &l,
                            &m.timeout_secs,
                            "relay.mailchimp_transactional.timeout_secs",
                            30,
                        )?,
                    }),
                };
                if routes.iter().any(|r| r == "mailchimp_transactional")
                    && mailchimp_transactional.is_none()
                {
                    return Err(l.invalid(
                        r.from.span(),
                        "relay.routes",
                        "the route \"mailchimp_transactional\" needs a [relay.mailchimp_transactional] section",
                    ));
                }
                let bounce_domain = r
                    .bounce_domain
                    .as_ref()
                    .map(|d| l.nonempty(d, "relay.bounce_domain"))
                    .transpose()?;
                let verp_secret = r
                    .verp_secret
                    .as_ref()
                    .map(|s| l.secret(s, "relay.verp_secret"))
                    .transpose()?;
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
                let retry_base_secs = r
                    .retry_base_secs
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .unwrap_or(60);
                let retry_max_secs = r
                    .retry_max_secs
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .unwrap_or(3600);
                if let Some(v) = &r.retry_max_secs
                    && retry_max_secs < retry_base_secs
                {
                    return Err(l.invalid(
                        v.span(),
                        "relay.retry_max_secs",
                        "must not be smaller than retry_base_secs",
                    ));
                }
                Some(RelayConfig {
                    from,
                    routes,
                    bounce_domain,
                    smtp,
                    mailchimp_transactional,
                    verp_secret,
                    max_message_bytes: positive(
                        &l,
                        &r.max_message_bytes,
                        "relay.max_message_bytes",
                        1_000_000,
                    )?,
                    hourly_limit: r.hourly_limit.as_ref().map(|v| *v.get_ref()),
                    max_age_hours: positive(&l, &r.max_age_hours, "relay.max_age_hours", 72)?,
                    allow_password_to_suppressed: r.allow_password_to_suppressed.unwrap_or(false),
                    sendmail_path: match &r.sendmail_path {
                        Some(p) => base.join(l.nonempty(p, "relay.sendmail_path")?),
                        None => PathBuf::from("/usr/sbin/sendmail"),
                    },
                    retry_base_secs,
                    retry_max_secs,
                    route_backoff_secs: r
                        .route_backoff_secs
                        .as_ref()
                        .map(|v| *v.get_ref())
                        .unwrap_or(60),
                    lease_secs: positive(&l, &r.lease_secs, "relay.lease_secs", 300)?,
                    concurrency: match &r.concurrency {
                        Some(c) if !(1..=64).contains(c.get_ref()) => {
                            return Err(l.invalid(
                                c.span(),
                                "relay.concurrency",
                                "expected 1 to 64",
                            ));
                        }
                        Some(c) => *c.get_ref(),
                        None => 4,
                    },
                    body_retention_days: positive(
                        &l,
                        &r.body_retention_days,
                        "relay.body_retention_days",
                        30,
                    )?,
                })
            }
        };

        let server = match &raw.server {
            None => None,
            Some(s) => {
                let nightly_sync = match &s.nightly_sync {
                    None => None,
                    Some(t) => {
                        let v = l.string(t, "server.nightly_sync")?;
                        if chrono::NaiveTime::parse_from_str(&v, "%H:%M").is_err() {
                            return Err(l.invalid(
                                t.span(),
                                "server.nightly_sync",
                                "expected a local time HH:MM, e.g. \"02:30\"",
                            ));
                        }
                        Some(v)
                    }
                };
                let bind = match &s.bind {
                    None => "127.0.0.1:8080".to_owned(),
                    Some(b) => {
                        let v = l.nonempty(b, "server.bind")?;
                        if v.parse::<std::net::SocketAddr>().is_err() {
                            return Err(l.invalid(
                                b.span(),
                                "server.bind",
                                "expected an address such as 127.0.0.1:8080",
                            ));
                        }
                        v
                    }
                };
                Some(ServerConfig {
                    bind,
                    api_token: s
                        .api_token
                        .as_ref()
                        .map(|t| l.secret(t, "server.api_token"))
                        .transpose()?,
                    webhook_secret: s
                        .webhook_secret
                        .as_ref()
                        .map(|t| l.secret(t, "server.webhook_secret"))
                        .transpose()?,
                    nightly_sync,
                    public_url: s
                        .public_url
                        .as_ref()
                        .map(|u| l.http_url(u, "server.public_url"))
                        .transpose()?,
                    soft_bounce_threshold: match &s.soft_bounce_threshold {
                        Some(n) if *n.get_ref() == 0 => {
                            return Err(l.invalid(
                                n.span(),
                                "server.soft_bounce_threshold",
                                "expected a count of at least 1",
                            ));
                        }
                        Some(n) => *n.get_ref(),
                        None => 3,
                    },
                    soft_bounce_window_days: match &s.soft_bounce_window_days {
                        Some(n) if *n.get_ref() == 0 => {
                            return Err(l.invalid(
                                n.span(),
                                "server.soft_bounce_window_days",
                                "expected a number of days of at least 1",
                            ));
                        }
                        Some(n) => *n.get_ref(),
                        None => 30,
                    },
                    transactional_webhook_key: s
                        .transactional_webhook_key
                        .as_ref()
                        .map(|t| l.secret(t, "server.transactional_webhook_key"))
                        .transpose()?,
                    transactional_webhook_url: s
                        .transactional_webhook_url
                        .as_ref()
                        // Kept exactly as written: the provider signs the URL as registered,
                        // trailing slash and query string included.
                        .map(|u| {
                            l.http_url(u, "server.transactional_webhook_url")
                                .and_then(|_| l.nonempty(u, "server.transactional_webhook_url"))
                        })
                        .transpose()?,
                    header_read_timeout_secs: bounded(
                        &l,
                        &s.header_read_timeout_secs,
                        "server.header_read_timeout_secs",
                        1..=3600,
                        ServerConfig::DEFAULT_HEADER_READ_TIMEOUT_SECS,
                    )?,
                    request_timeout_secs: bounded(
                        &l,
                        &s.request_timeout_secs,
                        "server.request_timeout_secs",
                        1..=3600,
                        ServerConfig::DEFAULT_REQUEST_TIMEOUT_SECS,
                    )?,
                    max_connections: bounded(
                        &l,
                        &s.max_connections,
                        "server.max_connections",
                        1..=100_000,
                        ServerConfig::DEFAULT_MAX_CONNECTIONS,
                    )?,
                })
            }
        };

        let campaigns = match raw
            .campaigns
            .as_ref()
            .and_then(|c| c.max_sync_age_minutes.as_ref())
        {
            None => CampaignsConfig::default(),
            Some(m) if *m.get_ref() == 0 => {
                return Err(l.invalid(
                    m.span(),
                    "campaigns.max_sync_age_minutes",
                    "must be at least 1",
                ));
            }
            Some(m) => CampaignsConfig {
                max_sync_age_minutes: *m.get_ref(),
            },
        };

        Ok(Config {
            path: path.to_owned(),
            state,
            members,
            mailchimp,
            constant_contact,
            audiences,
            relay,
            server,
            campaigns,
        })
    }

    /// The audiences selected by `--audience` (all when none named); unknown names are an error.
    pub fn select_audiences(&self, names: &[String]) -> Result<Vec<&AudienceConfig>, String> {
        if names.is_empty() {
            return Ok(self.audiences.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.audiences.iter().find(|a| &a.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.audiences.iter().map(|a| a.name.as_str()).collect();
                    format!(
                        "{}: no audience named `{n}` (configured: {})",
                        self.path.display(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const GOOD: &str = r#"
[state]
url = "sqlite://state.db"

[members]
url = "postgres://club:${DB_PASSWORD}@db.example:5432/club"
mapping = "mappings/members.toml"

[providers.mailchimp]
api_key = "${MAILCHIMP_API_KEY}"

[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "abc123"

[relay]
from = "Club <club@example.org>"
routes = ["smtp"]
[relay.smtp]
host = "mail.authsmtp.com"
port = 2525
tls = "starttls"
username = "${SMTP_USER}"
password = "${SMTP_PASSWORD}"
monthly_quota = 5000

[server]
bind = "127.0.0.1:8080"
api_token = "${TOKEN}"
nightly_sync = "02:30"
"#;

    const VARS: &[(&str, &str)] = &[
        ("DB_PASSWORD", "s3cr3t-db"),
        ("MAILCHIMP_API_KEY", "0123456789abcdef-us6"),
        ("SMTP_USER", "ac12345"),
        ("SMTP_PASSWORD", "smtp-pass"),
        ("TOKEN", "tok"),
    ];

    #[test]
    fn loads_the_design_example_and_derives_the_datacenter() {
        let cfg = Config::from_str_with_env(Path::new("/etc/mb/mailbridge.toml"), GOOD, &env(VARS))
            .unwrap();
        let mc = cfg.mailchimp.as_ref().unwrap();
        assert_eq!(mc.base_url, "https://us6.api.mailchimp.com/3.0");
        assert_eq!(mc.api_key.expose_secret(), "0123456789abcdef-us6");
        assert_eq!(
            cfg.members.mapping,
            Path::new("/etc/mb/mappings/members.toml")
        );
        assert_eq!(
            cfg.state.url.sqlite_path().unwrap(),
            Path::new("/etc/mb/state.db")
        );
        assert_eq!(cfg.members.url.kind(), DbKind::Postgres);
        assert_eq!(cfg.audiences[0].max_archive_percent, 10.0);
        assert_eq!(
            cfg.relay.as_ref().unwrap().smtp.as_ref().unwrap().port,
            2525
        );
    }

    #[test]
    fn campaign_defaults_load_and_bad_ones_name_key_and_line() {
        let base = "[members]\nurl = \"sqlite://m.db\"\nmapping = \"m.toml\"\n[providers.mailchimp]\napi_key = \"k-us1\"\n[[audiences]]\nname = \"news\"\nprovider = \"mailchimp\"\nlist_id = \"l1\"\n";
        let cfg = Config::from_str_with_env(Path::new("c.toml"), base, &env(&[])).unwrap();
        assert_eq!(cfg.campaigns.max_sync_age_minutes, 60);
        assert_eq!(cfg.audiences[0].from_name, None);
        let good = format!(
            "{base}from_name = \"Riverside Rowing\"\nreply_to = \"Secretary@Club.example\"\n[campaigns]\nmax_sync_age_minutes = 15\n"
        );
        let cfg = Config::from_str_with_env(Path::new("c.toml"), &good, &env(&[])).unwrap();
        assert_eq!(cfg.campaigns.max_sync_age_minutes, 15);
        assert_eq!(
            cfg.audiences[0].from_name.as_deref(),
            Some("Riverside Rowing")
        );
        assert_eq!(
            cfg.audiences[0].reply_to.as_ref().unwrap().as_str(),
            "secretary@club.example"
        );
        let bad = format!("{base}reply_to = \"not an address\"\n");
        let err = Config::from_str_with_env(Path::new("c.toml"), &bad, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:10: `audiences[0].reply_to`"),
            "{err}"
        );
        let bad = format!("{base}[campaigns]\nmax_sync_age_minutes = 0\n");
        let err = Config::from_str_with_env(Path::new("c.toml"), &bad, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`campaigns.max_sync_age_minutes`: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let cfg = Config::from_str_with_env(Path::new("m.toml"), GOOD, &env(VARS)).unwrap();
        let dump = format!("{cfg:?} {}", cfg.members.url);
        for secret in ["s3cr3t-db", "0123456789abcdef", "smtp-pass"] {
            assert!(!dump.contains(secret), "{secret} leaked in {dump}");
        }
        assert!(cfg.members.url.to_string().contains("club:***@db.example"));
        assert_eq!(cfg.members.url.location(), "db.example:5432/club");
    }

    #[test]
    fn missing_env_var_names_variable_key_and_line() {
        let err = Config::from_str_with_env(Path::new("mb.toml"), GOOD, &env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mb.toml:6"), "{msg}");
        assert!(msg.contains("members.url"), "{msg}");
        assert!(msg.contains("DB_PASSWORD"), "{msg}");
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_key() {
        let text = GOOD.replace(
            "list_id = \"abc123\"",
            "list_id = \"abc123\"\nlistid = \"x\"",
        );
        let err = Config::from_str_with_env(Path::new("mb.toml"), &text, &env(VARS)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mb.toml"), "{msg}");
        assert!(msg.contains("line 16"), "{msg}");
        assert!(msg.contains("listid"), "{msg}");
    }

    #[test]
    fn database_tls_options_are_checked_and_their_files_found_beside_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        std::fs::write(dir.path().join("certs/ca.pem"), "x").expect("write");
        let config = dir.path().join("mb.toml");
        let with = |query: &str| {
            GOOD.replace(
                "@db.example:5432/club\"",
                &format!("@db.example:5432/club?{query}\""),
            )
        };
        let cfg = Config::from_str_with_env(
            &config,
            &with("sslmode=verify-full&sslrootcert=certs/ca.pem"),
            &env(VARS),
        )
        .expect("valid");
        let tls = cfg.members.url.tls().expect("postgres");
        assert_eq!(tls.mode, crate::db_tls::TlsMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(dir.path().join("certs/ca.pem")));
        assert!(!cfg.members.url.to_string().contains("s3cr3t-db"));

        let err = Config::from_str_with_env(&config, &with("sslmode=strict"), &env(VARS))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`members.url`: sslmode=strict is not a TLS mode here: expected one of disable, prefer, require, verify-ca, verify-full"),
            "{err}"
        );
        let err = Config::from_str_with_env(
            &config,
            &with("sslmode=verify-ca&sslrootcert=ca.pem"),
            &env(VARS),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "`members.url`: sslrootcert: no file at {}",
                dir.path().join("ca.pem").display()
            )),
            "{err}"
        );
        assert!(!err.contains("s3cr3t-db"), "{err}");
    }

    #[test]
    fn a_password_is_hidden_wherever_a_url_carries_it() {
        assert_eq!(
            userinfo_hidden("postgres://postgres://club:pw@db.example/club"),
            "postgres://postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("postgres://postgres://club:pw@db.example/club"),
            "postgres://postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("postgres://club:pw@db.example/club"),
            "postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/members@2026.db"),
            "sqlite:///var/lib/members@2026.db"
        );
        assert_eq!(redact_url("not a url: x:y@z"), "not a url:***@z");
    }

    #[test]
    fn server_limits_default_and_are_checked() {
        let config = Config::from_str_with_env(Path::new("mb.toml"), GOOD, &env(VARS)).unwrap();
        let server = config.server.unwrap();
        assert_eq!(
            (
                server.header_read_timeout_secs,
                server.request_timeout_secs,
                server.max_connections
            ),
            (10, 30, 512)
        );
        let set = GOOD.replace(
            "nightly_sync = \"02:30\"",
            "nightly_sync = \"02:30\"\nheader_read_timeout_secs = 5\nrequest_timeout_secs = 20\nmax_connections = 64",
        );
        let server = Config::from_str_with_env(Path::new("mb.toml"), &set, &env(VARS))
            .unwrap()
            .server
            .unwrap();
        assert_eq!(
            (
                server.header_read_timeout_secs,
                server.request_timeout_secs,
                server.max_connections
            ),
            (5, 20, 64)
        );
        for (line, key) in [
            (
                "header_read_timeout_secs = 0",
                "server.header_read_timeout_secs",
            ),
            ("request_timeout_secs = 0", "server.request_timeout_secs"),
            (
                "request_timeout_secs = 86400",
                "server.request_timeout_secs",
            ),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let text = GOOD.replace(
                "nightly_sync = \"02:30\"",
                &format!("nightly_sync = \"02:30\"\n{line}"),
            );
            let err = Config::from_str_with_env(Path::new("mb.toml"), &text, &env(VARS))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("mb.toml:") && err.contains(&format!("`{key}`")),
                "{line}: {err}"
            );
            assert!(err.contains("expected 1 to"), "{line}: {err}");
        }
    }

    #[test]
    fn bad_values_name_key_and_expectation() {
        let cases = [
            (
                "provider = \"mailchimp\"",
                "provider = \"sendgrid\"",
                "audiences[0].provider",
            ),
            ("tls = \"starttls\"", "tls = \"ssl\"", "relay.smtp.tls"),
            (
                "nightly_sync = \"02:30\"",
                "nightly_sync = \"2am\"",
                "server.nightly_sync",
            ),
            (
                "url = \"sqlite://state.db\"",
                "url = \"oracle://x\"",
                "state.url",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            let err =
                Config::from_str_with_env(Path::new("mb.toml"), &text, &env(VARS)).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let no_dc = [
            ("MAILCHIMP_API_KEY", "nodatacenter"),
            ("DB_PASSWORD", "x"),
            ("SMTP_USER", "u"),
            ("SMTP_PASSWORD", "p"),
            ("TOKEN", "t"),
        ];
        let err = Config::from_str_with_env(Path::new("mb.toml"), GOOD, &move |n: &str| {
            no_dc
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("providers.mailchimp.api_key"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("nodatacenter"),
            "key leaked: {err}"
        );
    }

    #[test]
    fn relay_keys_have_defaults_and_checked_values() {
        let cfg = Config::from_str_with_env(Path::new("mb.toml"), GOOD, &env(VARS)).unwrap();
        let relay = cfg.relay.unwrap();
        assert_eq!(relay.max_age_hours, 72);
        assert!(!relay.allow_password_to_suppressed);
        assert_eq!(relay.concurrency, 4);
        assert_eq!(relay.body_retention_days, 30);
        assert_eq!(relay.sendmail_path, Path::new("/usr/sbin/sendmail"));
        assert_eq!(relay.smtp.unwrap().timeout_secs, 30);
        let cases = [
            (
                "monthly_quota = 5000",
                "monthly_quota = 5000\nfrom_name = \"x\"",
                "from_name",
            ),
            (
                "routes = [\"smtp\"]",
                "routes = [\"smtp\"]\nbounce_domain = \"b.example\"",
                "relay.verp_secret",
            ),
            (
                "routes = [\"smtp\"]",
                "routes = [\"smtp\", \"mailchimp_transactional\"]",
                "[relay.mailchimp_transactional]",
            ),
            (
                "routes = [\"smtp\"]",
                "routes = [\"smtp\"]\nconcurrency = 0",
                "relay.concurrency",
            ),
            (
                "routes = [\"smtp\"]",
                "routes = [\"smtp\"]\nmax_age_hours = 0",
                "relay.max_age_hours",
            ),
            (
                "routes = [\"smtp\"]",
                "routes = [\"smtp\"]\nbody_retention_days = 0",
                "relay.body_retention_days",
            ),
            (
                "from = \"Club <club@example.org>\"",
                "from = \"not an address\"",
                "relay.from",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let err =
                Config::from_str_with_env(Path::new("mb.toml"), &text, &env(VARS)).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn audience_needs_its_provider_section() {
        let text = GOOD.replace(
            "[providers.mailchimp]\napi_key = \"${MAILCHIMP_API_KEY}\"",
            "",
        );
        let err = Config::from_str_with_env(Path::new("mb.toml"), &text, &env(VARS)).unwrap_err();
        assert!(
            err.to_string().contains("[providers.mailchimp] is missing"),
            "{err}"
        );
    }

    #[test]
    fn env_expansion_rules() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand_env("a${A}b", &lookup).unwrap(), "axb");
        assert_eq!(
            expand_env("cost $$5 and $x", &lookup).unwrap(),
            "cost $5 and $x"
        );
        assert!(
            expand_env("${B}", &lookup)
                .unwrap_err()
                .contains("B is not set")
        );
        assert_eq!(
            expand_env("ab${A", &lookup).unwrap_err(),
            "`${` at character 3 is not closed by `}` (write `$$` for a literal `$`)"
        );
        // A literal password that happens to contain `${…}` is not echoed in the error.
        let err = expand_env("pässw${0rd!}", &lookup).unwrap_err();
        assert!(err.contains("at character 6"), "{err}");
        assert!(!err.contains("0rd"), "{err}");
        assert!(expand_env("${A-B}", &lookup).is_err());
    }

    #[test]
    fn selecting_an_unknown_audience_names_the_known_ones() {
        let cfg = Config::from_str_with_env(Path::new("m.toml"), GOOD, &env(VARS)).unwrap();
        let err = cfg.select_audiences(&["members".into()]).unwrap_err();
        assert!(
            err.contains("members") && err.contains("newsletter"),
            "{err}"
        );
        assert_eq!(cfg.select_audiences(&[]).unwrap().len(), 1);
    }
}
