//! `[providers.constant_contact]`: the OAuth app (client id and, for a confidential app, its
//! secret), the API and authorization-server URLs (overridden for the simulator and tests), the
//! request budget (requests per second, requests per UTC day) and how often `serve` polls for
//! opt-outs and bounces (Constant Contact has no contact webhooks). The tokens themselves live in
//! the state DB (`mailbridge auth constant-contact` puts them there), because a refresh token
//! rotates on every use and a config file cannot follow it.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::{ProviderKind, ProviderSection};
use crate::config::ConfigError;
use crate::config::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawConstantContact {
    client_id: Raw,
    client_secret: Option<Raw>,
    base_url: Option<Raw>,
    auth_url: Option<Raw>,
    daily_budget: Option<Spanned<u32>>,
    requests_per_second: Option<Spanned<u32>>,
    poll_every: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Clone)]
pub struct ConstantContactConfig {
    pub client_id: String,
    /// A confidential app's secret (Basic auth at the token endpoint); none for a public app
    /// (device flow), which sends its `client_id` in the body instead.
    pub client_secret: Option<SecretString>,
    /// `https://api.cc.email/v3` unless overridden.
    pub base_url: String,
    /// The authorization server, `…/oauth2/default/v1`: `/token` and `/device/authorize` below it.
    pub auth_url: String,
    /// API requests per UTC day this process may spend (the vendor's limit is 10,000 per app).
    pub daily_budget: u32,
    /// API requests per second, shared by every task of the process (the vendor's limit is 4).
    pub requests_per_second: u32,
    /// How often `serve` polls opt-outs and bounces.
    pub poll_every: Duration,
    pub timeout_secs: u64,
}

impl ConstantContactConfig {
    pub const DEFAULT_BASE_URL: &str = "https://api.cc.email/v3";
    pub const DEFAULT_AUTH_URL: &str = "https://authz.constantcontact.com/oauth2/default/v1";
    pub const DEFAULT_DAILY_BUDGET: u32 = 10_000;
    pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 4;
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(15 * 60);

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.auth_url)
    }

    /// The device-authorization endpoint.
    pub fn device_url(&self) -> String {
        format!("{}/device/authorize", self.auth_url)
    }
}

impl ProviderSection for ConstantContactConfig {
    const KIND: ProviderKind = ProviderKind::ConstantContact;
    type Raw = RawConstantContact;

    fn read(
        l: &Loader<'_>,
        raw: &RawConstantContact,
    ) -> Result<ConstantContactConfig, ConfigError> {
        Ok(ConstantContactConfig {
            client_id: l.nonempty(&raw.client_id, &Self::key("client_id"))?,
            client_secret: l.optional(
                &raw.client_secret,
                &Self::key("client_secret"),
                Loader::secret,
            )?,
            base_url: l
                .optional(&raw.base_url, &Self::key("base_url"), Loader::http_url)?
                .unwrap_or_else(|| Self::DEFAULT_BASE_URL.into()),
            auth_url: l
                .optional(&raw.auth_url, &Self::key("auth_url"), Loader::http_url)?
                .unwrap_or_else(|| Self::DEFAULT_AUTH_URL.into()),
            daily_budget: l.within(
                &raw.daily_budget,
                &Self::key("daily_budget"),
                1..=u32::MAX,
                "expected a number of requests of at least 1",
                Self::DEFAULT_DAILY_BUDGET,
            )?,
            requests_per_second: l.bounded(
                &raw.requests_per_second,
                &Self::key("requests_per_second"),
                1..=100,
                Self::DEFAULT_REQUESTS_PER_SECOND,
            )?,
            poll_every: l
                .optional(&raw.poll_every, &Self::key("poll_every"), Loader::duration)?
                .unwrap_or(Self::DEFAULT_POLL_EVERY),
            timeout_secs: l.positive(&raw.timeout_secs, &Self::key("timeout_secs"), 30)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use crate::config::testing::{BASE, assert_refused, parse};

    const CC: &str = "[providers.constant_contact]\nclient_id = \"c\"\n";

    #[test]
    fn urls_and_budget_default_to_constant_contacts_own() {
        let cc = parse(&format!("{BASE}{CC}"))
            .constant_contact
            .expect("constant contact");
        assert_eq!(cc.client_id, "c");
        assert!(cc.client_secret.is_none());
        assert_eq!(cc.base_url, "https://api.cc.email/v3");
        assert_eq!(
            cc.token_url(),
            "https://authz.constantcontact.com/oauth2/default/v1/token"
        );
        assert_eq!(
            cc.device_url(),
            "https://authz.constantcontact.com/oauth2/default/v1/device/authorize"
        );
        assert_eq!(cc.daily_budget, 10_000);
        assert_eq!(cc.requests_per_second, 4);
        assert_eq!(cc.poll_every, Duration::from_secs(900));
    }

    #[test]
    fn every_key_can_be_set() {
        let cc = parse(&format!(
            "{BASE}{CC}client_secret = \"s3cret\"\nbase_url = \"http://127.0.0.1:8025/v3\"\n\
             auth_url = \"http://127.0.0.1:8025/oauth2/default/v1\"\ndaily_budget = 500\n\
             requests_per_second = 20\npoll_every = \"90s\"\ntimeout_secs = 5\n"
        ))
        .constant_contact
        .expect("constant contact");
        assert_eq!(
            cc.client_secret.as_ref().map(|s| s.expose_secret()),
            Some("s3cret")
        );
        assert_eq!(cc.base_url, "http://127.0.0.1:8025/v3");
        assert_eq!(
            cc.token_url(),
            "http://127.0.0.1:8025/oauth2/default/v1/token"
        );
        assert_eq!(cc.daily_budget, 500);
        assert_eq!(cc.requests_per_second, 20);
        assert_eq!(cc.poll_every, Duration::from_secs(90));
        assert_eq!(cc.timeout_secs, 5);
        // The secret is redacted wherever the config is printed.
        assert!(!format!("{cc:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{CC}refresh_token = \"x\"\n"),
                    "mb.toml: TOML parse error at line 6, column 1\n  |\n6 | refresh_token = \"x\"\n  | ^^^^^^^^^^^^^\nunknown field `refresh_token`, expected one of `client_id`, `client_secret`, `base_url`, `auth_url`, `daily_budget`, `requests_per_second`, `poll_every`, `timeout_secs`",
                ),
                (
                    "[providers.constant_contact]\nclient_id = 1\n".into(),
                    "mb.toml: TOML parse error at line 5, column 13\n  |\n5 | client_id = 1\n  |             ^\ninvalid type: integer `1`, expected a string",
                ),
                (
                    "[providers.constant_contact]\nclient_id = \"\"\n".into(),
                    "mb.toml:5: `providers.constant_contact.client_id`: must not be empty",
                ),
                (
                    format!("{CC}client_secret = \"  \"\n"),
                    "mb.toml:6: `providers.constant_contact.client_secret`: must not be empty",
                ),
                (
                    format!("{CC}base_url = \"x\"\n"),
                    "mb.toml:6: `providers.constant_contact.base_url`: expected an http:// or https:// URL",
                ),
                (
                    format!("{CC}auth_url = \"mailto:x\"\n"),
                    "mb.toml:6: `providers.constant_contact.auth_url`: expected an http:// or https:// URL",
                ),
                (
                    format!("{CC}daily_budget = 0\n"),
                    "mb.toml:6: `providers.constant_contact.daily_budget`: expected a number of requests of at least 1",
                ),
                (
                    format!("{CC}requests_per_second = 0\n"),
                    "mb.toml:6: `providers.constant_contact.requests_per_second`: expected 1 to 100",
                ),
                (
                    format!("{CC}poll_every = \"soon\"\n"),
                    "mb.toml:6: `providers.constant_contact.poll_every`: expected a duration such as \"90s\", \"15m\" or \"1h\"",
                ),
                (
                    format!("{CC}poll_every = \"0m\"\n"),
                    "mb.toml:6: `providers.constant_contact.poll_every`: expected a duration such as \"90s\", \"15m\" or \"1h\"",
                ),
                (
                    "[providers.constant_contact]\nclient_secret = \"s\"\n".into(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [providers.constant_contact]\n  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\nmissing field `client_id`",
                ),
            ],
        );
    }
}
