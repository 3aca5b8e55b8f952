//! `[providers.constant_contact]`: the OAuth client and refresh token, and the API and token URLs
//! (overridden in tests).

use secrecy::SecretString;
use serde::Deserialize;

use super::{ProviderKind, ProviderSection};
use crate::config::ConfigError;
use crate::config::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawConstantContact {
    client_id: Raw,
    refresh_token: Raw,
    base_url: Option<Raw>,
    token_url: Option<Raw>,
}

#[derive(Debug, Clone)]
pub struct ConstantContactConfig {
    pub client_id: String,
    pub refresh_token: SecretString,
    pub base_url: String,
    pub token_url: String,
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
            refresh_token: l.secret(&raw.refresh_token, &Self::key("refresh_token"))?,
            base_url: l
                .optional(&raw.base_url, &Self::key("base_url"), Loader::http_url)?
                .unwrap_or_else(|| "https://api.cc.email/v3".into()),
            token_url: l
                .optional(&raw.token_url, &Self::key("token_url"), Loader::http_url)?
                .unwrap_or_else(|| {
                    "https://authz.constantcontact.com/oauth2/default/v1/token".into()
                }),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::config::testing::{BASE, assert_refused, parse};

    const CC: &str = "[providers.constant_contact]\nclient_id = \"c\"\nrefresh_token = \"r\"\n";

    #[test]
    fn urls_default_to_constant_contacts_own() {
        let cc = parse(&format!("{BASE}{CC}"))
            .constant_contact
            .expect("constant contact");
        assert_eq!(cc.client_id, "c");
        assert_eq!(cc.refresh_token.expose_secret(), "r");
        assert_eq!(cc.base_url, "https://api.cc.email/v3");
        assert_eq!(
            cc.token_url,
            "https://authz.constantcontact.com/oauth2/default/v1/token"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{CC}secret = \"x\"\n"),
                    "mb.toml: TOML parse error at line 7, column 1\n  |\n7 | secret = \"x\"\n  | ^^^^^^\nunknown field `secret`, expected one of `client_id`, `refresh_token`, `base_url`, `token_url`",
                ),
                (
                    "[providers.constant_contact]\nclient_id = 1\nrefresh_token = \"r\"\n".into(),
                    "mb.toml: TOML parse error at line 5, column 13\n  |\n5 | client_id = 1\n  |             ^\ninvalid type: integer `1`, expected a string",
                ),
                (
                    "[providers.constant_contact]\nclient_id = \"\"\nrefresh_token = \"r\"\n"
                        .into(),
                    "mb.toml:5: `providers.constant_contact.client_id`: must not be empty",
                ),
                (
                    "[providers.constant_contact]\nclient_id = \"c\"\nrefresh_token = \"  \"\n"
                        .into(),
                    "mb.toml:6: `providers.constant_contact.refresh_token`: must not be empty",
                ),
                (
                    format!("{CC}base_url = \"x\"\n"),
                    "mb.toml:7: `providers.constant_contact.base_url`: expected an http:// or https:// URL",
                ),
                (
                    format!("{CC}token_url = \"mailto:x\"\n"),
                    "mb.toml:7: `providers.constant_contact.token_url`: expected an http:// or https:// URL",
                ),
                (
                    "[providers.constant_contact]\nclient_id = \"c\"\n".into(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [providers.constant_contact]\n  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\nmissing field `refresh_token`",
                ),
            ],
        );
    }
}
