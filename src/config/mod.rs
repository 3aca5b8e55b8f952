//! `mailbridge.toml`: loading, `${ENV}` expansion and validation. Every error names the file, the
//! line and the key, and what was expected. Secrets are held in
//! [`SecretString`](secrecy::SecretString) and database URLs in [`DbUrl`], whose `Display` hides
//! the password.
//!
//! Each section is read and checked by a module of its own (`state`, `members`, `providers`,
//! `audiences`, `relay`, `server`, `campaigns`, `bounces`, `doctor`, `alerts`), with the key readers they share in `read`; this
//! module parses the file and hands each section to its module. The `Raw…` structs that serde
//! fills keep their names and field order: serde's errors show both.

mod admin;
mod alerts;
mod audiences;
mod bounces;
mod campaigns;
mod db_url;
mod doctor;
mod log;
mod members;
mod providers;
mod read;
mod relay;
mod retention;
mod server;
mod state;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::{
    AdminConfig, hash_password as hash_admin_password, verify_password as verify_admin_password,
    with_password_hash as with_admin_password_hash,
};
pub use alerts::AlertsConfig;
pub use audiences::AudienceConfig;
pub use bounces::{AfterIngest, BouncesConfig, ImapConfig, ImapTls};
pub use campaigns::CampaignsConfig;
pub use db_url::{DbKind, DbUrl};
pub use doctor::{DoctorConfig, parse_resolver};
pub use log::{LogConfig, LogFormat, format_in_file as log_format_in_file};
pub use members::MembersConfig;
pub use providers::{ConstantContactConfig, MailchimpConfig, ProviderKind};
pub(crate) use read::line_of;
pub use relay::{
    DKIM_DEFAULT_HEADERS, DkimAlgorithm, DkimConfig, DkimKey, MandrillConfig, RelayConfig,
    SmtpConfig, SmtpTls,
};
pub use retention::RetentionConfig;
pub use server::ServerConfig;
pub use state::StateConfig;

use providers::Providers;
use read::Loader;

/// Why a configuration file (the config, or a mapping) could not be loaded. Exit code 2 at the
/// binary's edge.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `what` names the file's kind: "config", "mapping".
    #[error("cannot read {what} file {path}")]
    Read {
        what: &'static str,
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

/// The file as serde reads it: the struct names show in type errors ("expected struct
/// RawMembers") and the field order in unknown-key errors, so both stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state: Option<state::RawState>,
    members: members::RawMembers,
    #[serde(default)]
    providers: providers::RawProviders,
    #[serde(default)]
    audiences: Vec<audiences::RawAudience>,
    relay: Option<relay::RawRelay>,
    server: Option<server::RawServer>,
    campaigns: Option<campaigns::RawCampaigns>,
    bounces: Option<bounces::RawBounces>,
    doctor: Option<doctor::RawDoctor>,
    alerts: Option<alerts::RawAlerts>,
    log: Option<log::RawLog>,
    retention: Option<retention::RawRetention>,
    admin: Option<admin::RawAdmin>,
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
    pub bounces: BouncesConfig,
    pub doctor: DoctorConfig,
    /// `[alerts]`: quota alerts (defaults when absent).
    pub alerts: AlertsConfig,
    /// `[log]`: the log format (the `--log-format` flag wins over it).
    pub log: LogConfig,
    /// `[retention]`: how long `serve` keeps old data.
    pub retention: RetentionConfig,
    /// `[admin]`: the admin web pages' login.
    pub admin: AdminConfig,
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

/// The text of a TOML file, or why it could not be read; `what` names its kind ("config",
/// "mapping").
pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// `text` read as TOML into `T`, or the parser's message against `path`.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

impl Config {
    /// Loads `path`, expanding `${ENV}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file("config", path)?;
        Config::from_str_with_env(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses configuration text; `lookup` answers environment variables (tests pass their own).
    /// Sections are checked in the order they are listed, so the first error is reported.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(path, text)?;
        let l = Loader { path, text, lookup };
        let state = StateConfig::read(&l, raw.state.as_ref())?;
        let members = MembersConfig::read(&l, &raw.members)?;
        let providers = Providers::read(&l, &raw.providers)?;
        let audiences = audiences::read_all(&l, &raw.audiences, |k| providers.configured(k))?;
        let server = raw
            .server
            .as_ref()
            .map(|s| ServerConfig::read(&l, s))
            .transpose()?;
        let mut relay = raw
            .relay
            .as_ref()
            .map(|r| RelayConfig::read(&l, r))
            .transpose()?;
        let retention = RetentionConfig::read(
            &l,
            raw.retention.as_ref(),
            raw.relay
                .as_ref()
                .and_then(relay::RawRelay::body_retention_days),
            server.as_ref().map_or(30, |s| s.soft_bounce_window_days),
        )?;
        if let Some(relay) = &mut relay {
            relay.body_retention_days = retention.outbox_body_days;
            relay.unsubscribe_base = server
                .as_ref()
                .and_then(|s| s.public_url.as_deref())
                .filter(|u| u.starts_with("https://"))
                .map(str::to_owned);
        }
        Ok(Config {
            path: path.to_owned(),
            state,
            members,
            mailchimp: providers.mailchimp,
            constant_contact: providers.constant_contact,
            audiences,
            relay,
            server,
            campaigns: CampaignsConfig::read(&l, raw.campaigns.as_ref())?,
            bounces: BouncesConfig::read(&l, raw.bounces.as_ref())?,
            doctor: DoctorConfig::read(&l, raw.doctor.as_ref())?,
            alerts: AlertsConfig::read(&l, raw.alerts.as_ref(), raw.relay.is_some())?,
            log: LogConfig::read(&l, raw.log.as_ref())?,
            retention,
            admin: AdminConfig::read(&l, raw.admin.as_ref())?,
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
    use secrecy::ExposeSecret;

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

    /// The error `text`, read as `mb.toml` with `vars` set, is refused with.
    fn refused(text: &str, vars: &'static [(&'static str, &'static str)]) -> String {
        Config::from_str_with_env(Path::new("mb.toml"), text, &env(vars))
            .unwrap_err()
            .to_string()
    }

    /// `err` contains every one of `parts`.
    fn assert_names(err: &str, parts: &[&str]) {
        for part in parts {
            assert!(err.contains(part), "{part}: {err}");
        }
    }

    /// Each case edits GOOD (`from` becomes `to`); the result is refused with an error naming `key`.
    fn assert_good_edited_is_refused_naming(cases: &[(&str, &str, &str)]) {
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            assert_names(&refused(&text, VARS), &[key]);
        }
    }

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
        let cfg = testing::parse(base);
        assert_eq!(cfg.campaigns.max_sync_age_minutes, 60);
        assert_eq!(cfg.audiences[0].from_name, None);
        let good = format!(
            "{base}from_name = \"Riverside Rowing\"\nreply_to = \"Secretary@Club.example\"\n[campaigns]\nmax_sync_age_minutes = 15\n"
        );
        let cfg = testing::parse(&good);
        assert_eq!(cfg.campaigns.max_sync_age_minutes, 15);
        assert_eq!(
            cfg.audiences[0].from_name.as_deref(),
            Some("Riverside Rowing")
        );
        assert_eq!(
            cfg.audiences[0].reply_to.as_ref().unwrap().as_str(),
            "secretary@club.example"
        );
        let err = testing::error(&format!("{base}reply_to = \"not an address\"\n"));
        assert!(
            err.starts_with("mb.toml:10: `audiences[0].reply_to`"),
            "{err}"
        );
        let err = testing::error(&format!("{base}[campaigns]\nmax_sync_age_minutes = 0\n"));
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
        assert_names(
            &refused(GOOD, &[]),
            &["mb.toml:6", "members.url", "DB_PASSWORD"],
        );
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_key() {
        let text = GOOD.replace(
            "list_id = \"abc123\"",
            "list_id = \"abc123\"\nlistid = \"x\"",
        );
        assert_names(&refused(&text, VARS), &["mb.toml", "line 16", "listid"]);
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
        assert_good_edited_is_refused_naming(&cases);
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
        assert_good_edited_is_refused_naming(&cases);
    }

    #[test]
    fn audience_needs_its_provider_section() {
        let text = GOOD.replace(
            "[providers.mailchimp]\napi_key = \"${MAILCHIMP_API_KEY}\"",
            "",
        );
        assert_names(&refused(&text, VARS), &["[providers.mailchimp] is missing"]);
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
    fn file_level_errors_name_file_line_and_key() {
        use testing::{BASE, assert_refused};
        assert_refused(
            "",
            &[
                (
                    format!("{BASE}[smtp]\nhost = \"x\"\n"),
                    "mb.toml: TOML parse error at line 4, column 2\n  |\n4 | [smtp]\n  |  ^^^^\nunknown field `smtp`, expected one of `state`, `members`, `providers`, `audiences`, `relay`, `server`, `campaigns`, `bounces`, `doctor`, `alerts`, `log`, `retention`, `admin`",
                ),
                (
                    format!("{BASE}[state\n"),
                    "mb.toml: TOML parse error at line 4, column 7\n  |\n4 | [state\n  |       ^\nunclosed table, expected `]`",
                ),
                (
                    "[state]\nurl = \"sqlite://s.db\"\n".into(),
                    "mb.toml: TOML parse error at line 1, column 1\n  |\n1 | [state]\n  | ^\nmissing field `members`",
                ),
                (
                    "members = 5\n".into(),
                    "mb.toml: TOML parse error at line 1, column 11\n  |\n1 | members = 5\n  |           ^\ninvalid type: integer `5`, expected struct RawMembers",
                ),
            ],
        );
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
