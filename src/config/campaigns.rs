//! `[campaigns]`: how `campaign push` decides the audience is fresh enough.

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::Loader;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCampaigns {
    max_sync_age_minutes: Option<Spanned<u64>>,
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

impl CampaignsConfig {
    pub(super) fn read(
        l: &Loader<'_>,
        raw: Option<&RawCampaigns>,
    ) -> Result<CampaignsConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(CampaignsConfig::default());
        };
        Ok(CampaignsConfig {
            max_sync_age_minutes: l.positive(
                &raw.max_sync_age_minutes,
                "campaigns.max_sync_age_minutes",
                CampaignsConfig::default().max_sync_age_minutes,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, assert_refused, parse};

    #[test]
    fn the_age_defaults_to_an_hour_also_in_an_empty_section() {
        assert_eq!(parse(BASE).campaigns.max_sync_age_minutes, 60);
        let cfg = parse(&format!("{BASE}[campaigns]\n"));
        assert_eq!(cfg.campaigns.max_sync_age_minutes, 60);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    "[campaigns]\nmax_age = 1\n",
                    "mb.toml: TOML parse error at line 5, column 1\n  |\n5 | max_age = 1\n  | ^^^^^^^\nunknown field `max_age`, expected `max_sync_age_minutes`",
                ),
                (
                    "[campaigns]\nmax_sync_age_minutes = \"1h\"\n",
                    "mb.toml: TOML parse error at line 5, column 24\n  |\n5 | max_sync_age_minutes = \"1h\"\n  |                        ^^^^\ninvalid type: string \"1h\", expected u64",
                ),
                (
                    "[campaigns]\nmax_sync_age_minutes = 0\n",
                    "mb.toml:5: `campaigns.max_sync_age_minutes`: must be at least 1",
                ),
            ],
        );
    }
}
