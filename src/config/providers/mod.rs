//! `[providers.*]`: one module a newsletter provider, each the same shape: a `Raw…` table read by
//! serde, a `…Config` with its defaults filled in, and a [`ProviderSection`] impl that checks one
//! into the other. Adding a provider is a module here, a field in [`RawProviders`] and
//! [`Providers`], and a [`ProviderKind`].

mod constant_contact;
mod mailchimp;

use serde::Deserialize;

use super::ConfigError;
use super::read::Loader;

pub use constant_contact::ConstantContactConfig;
pub use mailchimp::MailchimpConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Mailchimp,
    ConstantContact,
}

impl ProviderKind {
    /// Every provider, in the order error messages list them.
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Mailchimp, ProviderKind::ConstantContact];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Mailchimp => "mailchimp",
            ProviderKind::ConstantContact => "constant_contact",
        }
    }

    /// The name users know the provider by, for messages.
    pub fn display_name(self) -> &'static str {
        match self {
            ProviderKind::Mailchimp => "Mailchimp",
            ProviderKind::ConstantContact => "Constant Contact",
        }
    }

    /// Whether the provider takes the mapping's tags (this version syncs no tags to Constant
    /// Contact: its tags are account-wide objects written by separate bulk activities).
    pub fn takes_tags(self) -> bool {
        match self {
            ProviderKind::Mailchimp => true,
            ProviderKind::ConstantContact => false,
        }
    }
}

/// A provider's section, `[providers.<kind>]`.
pub(super) trait ProviderSection: Sized {
    const KIND: ProviderKind;
    /// The table as written, read by serde (which refuses unknown keys).
    type Raw;

    /// Checks the table and fills in defaults.
    fn read(l: &Loader<'_>, raw: &Self::Raw) -> Result<Self, ConfigError>;

    /// The full name of one of the section's keys, as errors show it.
    fn key(name: &str) -> String {
        format!("providers.{}.{name}", Self::KIND.as_str())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProviders {
    mailchimp: Option<mailchimp::RawMailchimp>,
    constant_contact: Option<constant_contact::RawConstantContact>,
}

/// The providers configured.
pub(super) struct Providers {
    pub(super) mailchimp: Option<MailchimpConfig>,
    pub(super) constant_contact: Option<ConstantContactConfig>,
}

impl Providers {
    pub(super) fn read(l: &Loader<'_>, raw: &RawProviders) -> Result<Providers, ConfigError> {
        Ok(Providers {
            mailchimp: section(l, &raw.mailchimp)?,
            constant_contact: section(l, &raw.constant_contact)?,
        })
    }

    /// Whether `[providers.<kind>]` is present.
    pub(super) fn configured(&self, kind: ProviderKind) -> bool {
        match kind {
            ProviderKind::Mailchimp => self.mailchimp.is_some(),
            ProviderKind::ConstantContact => self.constant_contact.is_some(),
        }
    }
}

fn section<P: ProviderSection>(
    l: &Loader<'_>,
    raw: &Option<P::Raw>,
) -> Result<Option<P>, ConfigError> {
    raw.as_ref().map(|r| P::read(l, r)).transpose()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, error};

    #[test]
    fn an_unknown_provider_is_refused_naming_the_known_ones() {
        assert_eq!(
            error(&format!("{BASE}[providers.sendgrid]\napi_key = \"x\"\n")),
            "mb.toml: TOML parse error at line 4, column 12\n  |\n4 | [providers.sendgrid]\n  |            ^^^^^^^^\nunknown field `sendgrid`, expected `mailchimp` or `constant_contact`"
        );
    }
}
