//! `[relay.mailchimp_transactional]`: the Mandrill-style `messages/send-raw` route.

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;
use crate::config::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawMandrill {
    api_key: Raw,
    base_url: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
}

/// `[relay.mailchimp_transactional]`: the Mandrill-style `messages/send-raw` API.
#[derive(Debug, Clone)]
pub struct MandrillConfig {
    pub api_key: SecretString,
    /// `https://mandrillapp.com/api/1.0` unless overridden (tests).
    pub base_url: String,
    pub timeout_secs: u64,
}

impl MandrillConfig {
    pub(super) fn read(l: &Loader<'_>, m: &RawMandrill) -> Result<MandrillConfig, ConfigError> {
        Ok(MandrillConfig {
            api_key: l.secret(&m.api_key, "relay.mailchimp_transactional.api_key")?,
            base_url: l
                .optional(
                    &m.base_url,
                    "relay.mailchimp_transactional.base_url",
                    Loader::http_url,
                )?
                .unwrap_or_else(|| "https://mandrillapp.com/api/1.0".into()),
            timeout_secs: l.positive(
                &m.timeout_secs,
                "relay.mailchimp_transactional.timeout_secs",
                30,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, assert_refused, parse};

    const MANDRILL: &str = "[relay]\nfrom = \"Club <c@example.org>\"\n[relay.mailchimp_transactional]\napi_key = \"k\"\n";

    #[test]
    fn the_url_defaults_to_mandrills_and_loses_its_trailing_slash() {
        let section = |text: &str| {
            parse(&format!("{BASE}{text}"))
                .relay
                .and_then(|r| r.mailchimp_transactional)
                .expect("mailchimp_transactional")
        };
        let m = section(MANDRILL);
        assert_eq!(m.base_url, "https://mandrillapp.com/api/1.0");
        assert_eq!(m.timeout_secs, 30);
        let m = section(&format!(
            "{MANDRILL}base_url = \"http://127.0.0.1:9/api/\"\n"
        ));
        assert_eq!(m.base_url, "http://127.0.0.1:9/api");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{MANDRILL}key = \"x\"\n"),
                    "mb.toml: TOML parse error at line 8, column 1\n  |\n8 | key = \"x\"\n  | ^^^\nunknown field `key`, expected one of `api_key`, `base_url`, `timeout_secs`",
                ),
                (
                    format!("{MANDRILL}timeout_secs = \"x\"\n"),
                    "mb.toml: TOML parse error at line 8, column 16\n  |\n8 | timeout_secs = \"x\"\n  |                ^^^\ninvalid type: string \"x\", expected u64",
                ),
                (
                    MANDRILL.replace("\"k\"", "\"\""),
                    "mb.toml:7: `relay.mailchimp_transactional.api_key`: must not be empty",
                ),
                (
                    format!("{MANDRILL}base_url = \"x\"\n"),
                    "mb.toml:8: `relay.mailchimp_transactional.base_url`: expected an http:// or https:// URL",
                ),
                (
                    format!("{MANDRILL}timeout_secs = 0\n"),
                    "mb.toml:8: `relay.mailchimp_transactional.timeout_secs`: must be at least 1",
                ),
            ],
        );
    }
}
