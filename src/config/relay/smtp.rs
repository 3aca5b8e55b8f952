//! `[relay.smtp]`: the SMTP route: server, TLS, login, monthly quota and timeout.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;
use crate::config::read::{Loader, Raw, value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawSmtp {
    host: Raw,
    port: Option<Spanned<u16>>,
    tls: Option<Raw>,
    username: Option<Raw>,
    password: Option<Raw>,
    monthly_quota: Option<Spanned<u64>>,
    ca_file: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
    spf_include: Option<Raw>,
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
    /// The domain the smarthost's SPF record lives at (`authsmtp.com`): the sender's SPF record
    /// must reach it with `include:`. `mailbridge doctor` checks it; without it, the host's own
    /// addresses must pass the sender's SPF.
    pub spf_include: Option<String>,
}

impl SmtpConfig {
    pub(super) fn read(l: &Loader<'_>, s: &RawSmtp) -> Result<SmtpConfig, ConfigError> {
        let tls = [
            ("starttls", SmtpTls::StartTls),
            ("tls", SmtpTls::Tls),
            ("none", SmtpTls::None),
        ];
        Ok(SmtpConfig {
            host: l.nonempty(&s.host, "relay.smtp.host")?,
            port: value(&s.port).unwrap_or(587),
            tls: l
                .optional(&s.tls, "relay.smtp.tls", |l, t, key| {
                    l.choice(t, key, "value", &tls)
                })?
                .unwrap_or(SmtpTls::StartTls),
            username: l.optional(&s.username, "relay.smtp.username", Loader::string)?,
            password: l.optional(&s.password, "relay.smtp.password", Loader::secret)?,
            monthly_quota: value(&s.monthly_quota),
            ca_file: l.optional(&s.ca_file, "relay.smtp.ca_file", Loader::path)?,
            timeout_secs: l.positive(&s.timeout_secs, "relay.smtp.timeout_secs", 30)?,
            spf_include: l
                .optional(&s.spf_include, "relay.smtp.spf_include", Loader::nonempty)?
                .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase()),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, assert_refused, parse};

    const SMTP: &str = "[relay]\nfrom = \"Club <c@example.org>\"\n[relay.smtp]\nhost = \"h\"\n";

    #[test]
    fn defaults_to_starttls_on_the_submission_port() {
        let smtp = parse(&format!("{BASE}{SMTP}"))
            .relay
            .and_then(|r| r.smtp)
            .expect("smtp");
        assert_eq!((smtp.port, smtp.tls), (587, super::SmtpTls::StartTls));
        assert_eq!((smtp.monthly_quota, smtp.timeout_secs), (None, 30));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{SMTP}hots = \"x\"\n"),
                    "mb.toml: TOML parse error at line 8, column 1\n  |\n8 | hots = \"x\"\n  | ^^^^\nunknown field `hots`, expected one of `host`, `port`, `tls`, `username`, `password`, `monthly_quota`, `ca_file`, `timeout_secs`, `spf_include`",
                ),
                (
                    format!("{SMTP}port = \"x\"\n"),
                    "mb.toml: TOML parse error at line 8, column 8\n  |\n8 | port = \"x\"\n  |        ^^^\ninvalid type: string \"x\", expected u16",
                ),
                (
                    format!("{SMTP}port = 70000\n"),
                    "mb.toml: TOML parse error at line 8, column 8\n  |\n8 | port = 70000\n  |        ^^^^^\ninvalid value: integer `70000`, expected u16",
                ),
                (
                    format!("{SMTP}monthly_quota = 1.5\n"),
                    "mb.toml: TOML parse error at line 8, column 17\n  |\n8 | monthly_quota = 1.5\n  |                 ^^^\ninvalid type: floating point `1.5`, expected u64",
                ),
                (
                    SMTP.replace("host = \"h\"", "port = 25"),
                    "mb.toml: TOML parse error at line 6, column 1\n  |\n6 | [relay.smtp]\n  | ^^^^^^^^^^^^\nmissing field `host`",
                ),
                (
                    SMTP.replace("\"h\"", "\"\""),
                    "mb.toml:7: `relay.smtp.host`: must not be empty",
                ),
                (
                    format!("{SMTP}tls = \"ssl\"\n"),
                    "mb.toml:8: `relay.smtp.tls`: unknown value `ssl`: expected \"starttls\", \"tls\" or \"none\"",
                ),
                (
                    format!("{SMTP}username = \"${{U}}\"\n"),
                    "mb.toml:8: `relay.smtp.username`: environment variable U is not set",
                ),
                (
                    format!("{SMTP}password = \"\"\n"),
                    "mb.toml:8: `relay.smtp.password`: must not be empty",
                ),
                (
                    format!("{SMTP}ca_file = \"\"\n"),
                    "mb.toml:8: `relay.smtp.ca_file`: must not be empty",
                ),
                (
                    format!("{SMTP}timeout_secs = 0\n"),
                    "mb.toml:8: `relay.smtp.timeout_secs`: must be at least 1",
                ),
            ],
        );
    }
}
