//! `[alerts]`: who is told, and at which percentages, that a sending limit is about to bite (the
//! smarthost's monthly quota, `[relay] hourly_limit`, a provider's daily API budget). Without a
//! section the thresholds are the defaults and alerts are logged and counted but not mailed.

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw};
use crate::domain::Email;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    to: Option<Vec<Raw>>,
    thresholds: Option<Vec<Spanned<i64>>>,
    subject_prefix: Option<Raw>,
}

/// `[alerts]`: where quota alerts are mailed and at which percentages of a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Who gets the alert mails (one message each); none: alerts are logged and counted only.
    pub to: Vec<Email>,
    /// Percentages of a limit that raise an alert, ascending, each once; empty: no alerts.
    pub thresholds: Vec<u8>,
    /// Put before every alert mail's subject.
    pub subject_prefix: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            to: Vec::new(),
            thresholds: vec![80, 95],
            subject_prefix: "[mailbridge]".into(),
        }
    }
}

impl AlertsConfig {
    /// `[alerts]` (or its defaults when absent). `relay_configured`: mail needs a `[relay]`.
    pub(super) fn read(
        l: &Loader<'_>,
        raw: Option<&RawAlerts>,
        relay_configured: bool,
    ) -> Result<AlertsConfig, ConfigError> {
        let defaults = AlertsConfig::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let mut to = Vec::new();
        for (i, r) in raw.to.iter().flatten().enumerate() {
            let key = format!("alerts.to[{i}]");
            let text = l.nonempty(r, &key)?;
            let email = Email::parse(text.trim())
                .map_err(|e| l.invalid(r.span(), &key, format!("not an email address: {e}")))?;
            if !to.contains(&email) {
                to.push(email);
            }
        }
        if !to.is_empty() && !relay_configured {
            let span = raw.to.iter().flatten().next().map(|r| r.span());
            return Err(l.invalid(
                span.unwrap_or(0..0),
                "alerts.to",
                "alert mail goes through the relay: add a [relay] section, or remove `to` to only log alerts",
            ));
        }
        let thresholds = match &raw.thresholds {
            None => defaults.thresholds,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, pct) in list.iter().enumerate() {
                    let value = u8::try_from(*pct.get_ref())
                        .ok()
                        .filter(|p| (1..=100).contains(p))
                        .ok_or_else(|| {
                            l.invalid(
                                pct.span(),
                                &format!("alerts.thresholds[{i}]"),
                                format!(
                                    "{} is not a percentage of a limit: expected 1 to 100",
                                    pct.get_ref()
                                ),
                            )
                        })?;
                    out.push(value);
                }
                out.sort_unstable();
                out.dedup();
                out
            }
        };
        let subject_prefix = match &raw.subject_prefix {
            None => defaults.subject_prefix,
            Some(r) => {
                let text = l.string(r, "alerts.subject_prefix")?;
                if text.chars().any(char::is_control) {
                    return Err(l.invalid(
                        r.span(),
                        "alerts.subject_prefix",
                        "must not contain line breaks or other control characters",
                    ));
                }
                text.trim().to_owned()
            }
        };
        Ok(AlertsConfig {
            to,
            thresholds,
            subject_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, assert_refused, parse};

    const RELAY: &str = "[relay]\nfrom = \"Club <club@club.example>\"\nroutes = [\"sendmail\"]\n";

    #[test]
    fn defaults_without_a_section_and_a_full_section_loads_sorted() {
        let cfg = parse(BASE);
        assert_eq!(cfg.alerts.thresholds, vec![80, 95]);
        assert!(cfg.alerts.to.is_empty());
        assert_eq!(cfg.alerts.subject_prefix, "[mailbridge]");
        let cfg = parse(&format!(
            "{BASE}{RELAY}[alerts]\nto = [\"Treasurer@Club.example\", \"it@club.example\", \"treasurer@club.example\"]\nthresholds = [95, 50, 80, 95, 100]\nsubject_prefix = \"[Riverside]\"\n"
        ));
        let to: Vec<&str> = cfg.alerts.to.iter().map(|e| e.as_str()).collect();
        assert_eq!(to, ["treasurer@club.example", "it@club.example"]);
        assert_eq!(cfg.alerts.thresholds, vec![50, 80, 95, 100]);
        assert_eq!(cfg.alerts.subject_prefix, "[Riverside]");
        // An empty list turns alerts off.
        let cfg = parse(&format!("{BASE}[alerts]\nthresholds = []\n"));
        assert!(cfg.alerts.thresholds.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            &format!("{BASE}{RELAY}"),
            &[
                (
                    "[alerts]\nthresholds = [80, 0]\n",
                    "mb.toml:8: `alerts.thresholds[1]`: 0 is not a percentage of a limit: expected 1 to 100",
                ),
                (
                    "[alerts]\nthresholds = [101]\n",
                    "mb.toml:8: `alerts.thresholds[0]`: 101 is not a percentage of a limit: expected 1 to 100",
                ),
                (
                    "[alerts]\nthresholds = [-5]\n",
                    "mb.toml:8: `alerts.thresholds[0]`: -5 is not a percentage of a limit: expected 1 to 100",
                ),
                (
                    "[alerts]\nto = [\"ops@club.example\", \"not an address\"]\n",
                    "mb.toml:8: `alerts.to[1]`: not an email address: `not an address` is not a valid e-mail address: it must contain exactly one @",
                ),
                (
                    "[alerts]\nto = [\"\"]\n",
                    "mb.toml:8: `alerts.to[0]`: must not be empty",
                ),
                (
                    "[alerts]\nsubject_prefix = \"a\\nb\"\n",
                    "mb.toml:8: `alerts.subject_prefix`: must not contain line breaks or other control characters",
                ),
            ],
        );
        assert_refused(
            BASE,
            &[(
                "[alerts]\nto = [\"ops@club.example\"]\n",
                "mb.toml:5: `alerts.to`: alert mail goes through the relay: add a [relay] section, or remove `to` to only log alerts",
            )],
        );
    }
}
