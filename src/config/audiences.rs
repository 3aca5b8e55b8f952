//! `[[audiences]]`: each a provider's list that the member database is synchronised to, with its
//! guardrail, webhook secret and campaign defaults.

use std::collections::BTreeSet;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::providers::ProviderKind;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudience {
    name: Raw,
    provider: Raw,
    list_id: Raw,
    max_archive_percent: Option<Spanned<f64>>,
    webhook_signing_secret: Option<Raw>,
    from_name: Option<Raw>,
    reply_to: Option<Raw>,
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

/// Reads every audience: names are unique, and each one's provider must be configured.
pub(super) fn read_all(
    l: &Loader<'_>,
    raw: &[RawAudience],
    configured: impl Fn(ProviderKind) -> bool,
) -> Result<Vec<AudienceConfig>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut audiences = Vec::with_capacity(raw.len());
    for (i, a) in raw.iter().enumerate() {
        let key = |k: &str| format!("audiences[{i}].{k}");
        let name = read_name(l, &a.name, &key("name"))?;
        if !names.insert(name.clone()) {
            return Err(l.invalid(
                a.name.span(),
                &key("name"),
                format!("audience `{name}` is defined twice"),
            ));
        }
        let provider = read_provider(l, a, &name, &key("provider"), &configured)?;
        audiences.push(AudienceConfig {
            provider,
            max_archive_percent: l.within(
                &a.max_archive_percent,
                &key("max_archive_percent"),
                0.0..=100.0,
                "expected a percentage from 0 to 100",
                10.0,
            )?,
            list_id: l.nonempty(&a.list_id, &key("list_id"))?,
            webhook_signing_secret: l.optional(
                &a.webhook_signing_secret,
                &key("webhook_signing_secret"),
                Loader::secret,
            )?,
            from_name: l.optional(&a.from_name, &key("from_name"), Loader::nonempty)?,
            reply_to: l.optional(&a.reply_to, &key("reply_to"), read_email)?,
            name,
        });
    }
    Ok(audiences)
}

fn read_name(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<String, ConfigError> {
    let name = l.nonempty(raw, key)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(l.invalid(raw.span(), key, "use letters, digits, `_` and `-` only"));
    }
    Ok(name)
}

fn read_provider(
    l: &Loader<'_>,
    a: &RawAudience,
    name: &str,
    key: &str,
    configured: impl Fn(ProviderKind) -> bool,
) -> Result<ProviderKind, ConfigError> {
    let choices = ProviderKind::ALL.map(|k| (k.as_str(), k));
    let provider = l.choice(&a.provider, key, "provider", &choices)?;
    if !configured(provider) {
        return Err(l.invalid(
            a.provider.span(),
            key,
            format!(
                "audience `{name}` uses {} but [providers.{}] is missing",
                provider.as_str(),
                provider.as_str()
            ),
        ));
    }
    Ok(provider)
}

fn read_email(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<crate::domain::Email, ConfigError> {
    let text = l.nonempty(raw, key)?;
    crate::domain::Email::parse(&text)
        .map_err(|e| l.invalid(raw.span(), key, format!("not an email address: {e}")))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, assert_refused};

    const MC: &str = "[providers.mailchimp]\napi_key = \"k-us1\"\n";
    const AUD: &str =
        "[[audiences]]\nname = \"news\"\nprovider = \"mailchimp\"\nlist_id = \"l1\"\n";

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{MC}{AUD}listid = \"x\"\n"),
                    "mb.toml: TOML parse error at line 10, column 1\n   |\n10 | listid = \"x\"\n   | ^^^^^^\nunknown field `listid`, expected one of `name`, `provider`, `list_id`, `max_archive_percent`, `webhook_signing_secret`, `from_name`, `reply_to`",
                ),
                (
                    format!("{MC}{AUD}max_archive_percent = \"x\"\n"),
                    "mb.toml: TOML parse error at line 10, column 23\n   |\n10 | max_archive_percent = \"x\"\n   |                       ^^^\ninvalid type: string \"x\", expected f64",
                ),
                (
                    "[audiences]\nname = \"x\"\n".into(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [audiences]\n  | ^^^^^^^^^^^\ninvalid type: map, expected a sequence",
                ),
                (
                    format!("{MC}{}", AUD.replace("\"news\"", "\"the news\"")),
                    "mb.toml:7: `audiences[0].name`: use letters, digits, `_` and `-` only",
                ),
                (
                    format!("{MC}{}", AUD.replace("\"news\"", "\"\"")),
                    "mb.toml:7: `audiences[0].name`: must not be empty",
                ),
                (
                    format!("{MC}{AUD}{AUD}"),
                    "mb.toml:11: `audiences[1].name`: audience `news` is defined twice",
                ),
                (
                    format!("{MC}{}", AUD.replace("\"mailchimp\"", "\"sendgrid\"")),
                    "mb.toml:8: `audiences[0].provider`: unknown provider `sendgrid`: expected \"mailchimp\" or \"constant_contact\"",
                ),
                (
                    format!(
                        "{MC}{}",
                        AUD.replace("\"mailchimp\"", "\"constant_contact\"")
                    ),
                    "mb.toml:8: `audiences[0].provider`: audience `news` uses constant_contact but [providers.constant_contact] is missing",
                ),
                (
                    AUD.into(),
                    "mb.toml:6: `audiences[0].provider`: audience `news` uses mailchimp but [providers.mailchimp] is missing",
                ),
                (
                    format!("{MC}{AUD}max_archive_percent = 150.0\n"),
                    "mb.toml:10: `audiences[0].max_archive_percent`: expected a percentage from 0 to 100",
                ),
                (
                    format!("{MC}{AUD}max_archive_percent = -1.0\n"),
                    "mb.toml:10: `audiences[0].max_archive_percent`: expected a percentage from 0 to 100",
                ),
                (
                    format!("{MC}{}", AUD.replace("\"l1\"", "\"\"")),
                    "mb.toml:9: `audiences[0].list_id`: must not be empty",
                ),
                (
                    format!("{MC}{AUD}webhook_signing_secret = \"\"\n"),
                    "mb.toml:10: `audiences[0].webhook_signing_secret`: must not be empty",
                ),
                (
                    format!("{MC}{AUD}from_name = \" \"\n"),
                    "mb.toml:10: `audiences[0].from_name`: must not be empty",
                ),
                (
                    format!("{MC}{AUD}reply_to = \"nope\"\n"),
                    "mb.toml:10: `audiences[0].reply_to`: not an email address: `nope` is not a valid e-mail address: it must contain exactly one @",
                ),
                (
                    format!(
                        "{MC}{AUD}{}",
                        AUD.replace("\"news\"", "\"two\"").replace("\"l1\"", "\"\"")
                    ),
                    "mb.toml:13: `audiences[1].list_id`: must not be empty",
                ),
            ],
        );
    }
}
