//! `[providers.mailchimp]`: the Marketing API key (its `-<dc>` suffix names the data centre),
//! how many requests may be in flight, and the request timeout.

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::{ProviderKind, ProviderSection};
use crate::config::ConfigError;
use crate::config::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawMailchimp {
    api_key: Raw,
    base_url: Option<Raw>,
    max_in_flight: Option<Spanned<u32>>,
    timeout_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Clone)]
pub struct MailchimpConfig {
    pub api_key: SecretString,
    /// `https://<dc>.api.mailchimp.com/3.0` unless overridden (simulator, tests).
    pub base_url: String,
    pub max_in_flight: u32,
    pub timeout_secs: u64,
}

impl ProviderSection for MailchimpConfig {
    const KIND: ProviderKind = ProviderKind::Mailchimp;
    type Raw = RawMailchimp;

    fn read(l: &Loader<'_>, raw: &RawMailchimp) -> Result<MailchimpConfig, ConfigError> {
        let key = l.nonempty(&raw.api_key, &Self::key("api_key"))?;
        let base_url = match &raw.base_url {
            Some(u) => l.http_url(u, &Self::key("base_url"))?,
            None => {
                let dc = key.rsplit_once('-').map(|(_, dc)| dc).unwrap_or("");
                if dc.is_empty() || !dc.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(l.invalid(
                        raw.api_key.span(),
                        &Self::key("api_key"),
                        "expected a Mailchimp API key of the form <key>-<dc> (e.g. …-us6), or set base_url",
                    ));
                }
                format!("https://{dc}.api.mailchimp.com/3.0")
            }
        };
        Ok(MailchimpConfig {
            api_key: SecretString::from(key),
            base_url,
            max_in_flight: l.within(
                &raw.max_in_flight,
                &Self::key("max_in_flight"),
                1..=10,
                "expected 1 to 10 (Mailchimp allows 10 simultaneous connections)",
                10,
            )?,
            timeout_secs: l.positive(&raw.timeout_secs, &Self::key("timeout_secs"), 120)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::config::testing::{BASE, assert_refused, parse};

    const MC: &str = "[providers.mailchimp]\napi_key = \"k-us1\"\n";

    #[test]
    fn the_data_centre_comes_from_the_key_unless_base_url_is_set() {
        let mc = parse(&format!("{BASE}{MC}")).mailchimp.expect("mailchimp");
        assert_eq!(mc.base_url, "https://us1.api.mailchimp.com/3.0");
        assert_eq!(mc.api_key.expose_secret(), "k-us1");
        assert_eq!((mc.max_in_flight, mc.timeout_secs), (10, 120));
        let mc = parse(&format!(
            "{BASE}[providers.mailchimp]\napi_key = \"nodc\"\nbase_url = \"http://127.0.0.1:9/3.0/\"\nmax_in_flight = 3\ntimeout_secs = 5\n"
        ))
        .mailchimp
        .expect("mailchimp");
        assert_eq!(mc.base_url, "http://127.0.0.1:9/3.0");
        assert_eq!((mc.max_in_flight, mc.timeout_secs), (3, 5));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{MC}apikey = \"x\"\n"),
                    "mb.toml: TOML parse error at line 6, column 1\n  |\n6 | apikey = \"x\"\n  | ^^^^^^\nunknown field `apikey`, expected one of `api_key`, `base_url`, `max_in_flight`, `timeout_secs`",
                ),
                (
                    format!("{MC}max_in_flight = \"ten\"\n"),
                    "mb.toml: TOML parse error at line 6, column 17\n  |\n6 | max_in_flight = \"ten\"\n  |                 ^^^^^\ninvalid type: string \"ten\", expected u32",
                ),
                (
                    format!("{MC}timeout_secs = -1\n"),
                    "mb.toml: TOML parse error at line 6, column 16\n  |\n6 | timeout_secs = -1\n  |                ^^\ninvalid value: integer `-1`, expected u64",
                ),
                (
                    format!("{MC}max_in_flight = 11\n"),
                    "mb.toml:6: `providers.mailchimp.max_in_flight`: expected 1 to 10 (Mailchimp allows 10 simultaneous connections)",
                ),
                (
                    format!("{MC}max_in_flight = 0\n"),
                    "mb.toml:6: `providers.mailchimp.max_in_flight`: expected 1 to 10 (Mailchimp allows 10 simultaneous connections)",
                ),
                (
                    format!("{MC}timeout_secs = 0\n"),
                    "mb.toml:6: `providers.mailchimp.timeout_secs`: must be at least 1",
                ),
                (
                    format!("{MC}base_url = \"ftp://x\"\n"),
                    "mb.toml:6: `providers.mailchimp.base_url`: expected an http:// or https:// URL",
                ),
                (
                    format!("{MC}base_url = \"\"\n"),
                    "mb.toml:6: `providers.mailchimp.base_url`: must not be empty",
                ),
                (
                    "[providers.mailchimp]\napi_key = \"nodc\"\n".into(),
                    "mb.toml:5: `providers.mailchimp.api_key`: expected a Mailchimp API key of the form <key>-<dc> (e.g. …-us6), or set base_url",
                ),
                (
                    "[providers.mailchimp]\napi_key = \"k-u.s\"\n".into(),
                    "mb.toml:5: `providers.mailchimp.api_key`: expected a Mailchimp API key of the form <key>-<dc> (e.g. …-us6), or set base_url",
                ),
                (
                    "[providers.mailchimp]\napi_key = \"\"\n".into(),
                    "mb.toml:5: `providers.mailchimp.api_key`: must not be empty",
                ),
                (
                    "[providers.mailchimp]\n".into(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [providers.mailchimp]\n  | ^^^^^^^^^^^^^^^^^^^^^\nmissing field `api_key`",
                ),
            ],
        );
    }
}
