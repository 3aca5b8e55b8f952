//! `[retention]`: how many days `serve` keeps what it no longer needs: the bytes of sent outbox
//! messages, applied provider events, the raw bytes of processed bounce mails, and finished sync
//! run reports. `[relay] body_retention_days`, the older name of `outbox_body_days`, is still
//! read.

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::Loader;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    outbox_body_days: Option<Spanned<u64>>,
    provider_event_days: Option<Spanned<u64>>,
    bounce_mail_days: Option<Spanned<u64>>,
    sync_run_days: Option<Spanned<u64>>,
}

/// `[retention]`: ages in days past which `serve` deletes old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// The bytes of messages done (sent, bounced, suppressed, failed) longer ago; their status
    /// rows stay. Also `[relay] body_retention_days`.
    pub outbox_body_days: u64,
    /// Provider events applied (or ignored) longer ago. Unapplied events are never deleted, nor
    /// the newest status event of an address (the consent rule reads it).
    pub provider_event_days: u64,
    /// The raw bytes of bounce mails processed longer ago; the row (hash, outcome) stays, so the
    /// same mail arriving again is still recognised.
    pub bounce_mail_days: u64,
    /// Sync runs finished longer ago, with their member errors (except those that hold an
    /// address back until its row changes).
    pub sync_run_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            outbox_body_days: 30,
            provider_event_days: 90,
            bounce_mail_days: 30,
            sync_run_days: 90,
        }
    }
}

/// Longest age accepted: a hundred years is "keep".
const MAX_DAYS: u64 = 36_500;

impl RetentionConfig {
    /// `[retention]` (defaults when absent). `relay_body_days` is `[relay] body_retention_days`;
    /// `soft_bounce_window_days` the window soft bounces are counted over, which events must
    /// outlive.
    pub(super) fn read(
        l: &Loader<'_>,
        raw: Option<&RawRetention>,
        relay_body_days: Option<&Spanned<u64>>,
        soft_bounce_window_days: u32,
    ) -> Result<RetentionConfig, ConfigError> {
        let d = RetentionConfig::default();
        let none = RawRetention {
            outbox_body_days: None,
            provider_event_days: None,
            bounce_mail_days: None,
            sync_run_days: None,
        };
        let raw = raw.unwrap_or(&none);
        let days = |v: &Option<Spanned<u64>>, key: &str, default: u64| {
            l.within(
                v,
                key,
                1..=MAX_DAYS,
                &format!("expected a number of days from 1 to {MAX_DAYS}"),
                default,
            )
        };
        let outbox_body_days = match (&raw.outbox_body_days, relay_body_days) {
            (Some(new), Some(old)) if new.get_ref() != old.get_ref() => {
                return Err(l.invalid(
                    new.span(),
                    "retention.outbox_body_days",
                    format!(
                        "{} differs from [relay] body_retention_days = {} (its older name): keep one",
                        new.get_ref(),
                        old.get_ref()
                    ),
                ));
            }
            (Some(_), _) => days(
                &raw.outbox_body_days,
                "retention.outbox_body_days",
                d.outbox_body_days,
            )?,
            // Checked (at least 1) where `[relay]` is read; kept as it was.
            (None, Some(old)) => *old.get_ref(),
            (None, None) => d.outbox_body_days,
        };
        let provider_event_days = days(
            &raw.provider_event_days,
            "retention.provider_event_days",
            d.provider_event_days
                .max(u64::from(soft_bounce_window_days)),
        )?;
        if provider_event_days < u64::from(soft_bounce_window_days) {
            let span = raw.provider_event_days.as_ref().map_or(0..0, |v| v.span());
            return Err(l.invalid(
                span,
                "retention.provider_event_days",
                format!(
                    "{provider_event_days} is shorter than [server] soft_bounce_window_days = {soft_bounce_window_days}: soft bounces are counted over that window, so events must be kept at least as long"
                ),
            ));
        }
        Ok(RetentionConfig {
            outbox_body_days,
            provider_event_days,
            bounce_mail_days: days(
                &raw.bounce_mail_days,
                "retention.bounce_mail_days",
                d.bounce_mail_days,
            )?,
            sync_run_days: days(
                &raw.sync_run_days,
                "retention.sync_run_days",
                d.sync_run_days,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, assert_refused, parse};
    use super::*;

    const RELAY: &str = "[relay]\nfrom = \"Club <club@club.example>\"\nroutes = [\"sendmail\"]\n";

    #[test]
    fn defaults_and_a_full_section() {
        assert_eq!(parse(BASE).retention, RetentionConfig::default());
        let cfg = parse(&format!(
            "{BASE}{RELAY}[retention]\noutbox_body_days = 7\nprovider_event_days = 45\nbounce_mail_days = 14\nsync_run_days = 365\n"
        ));
        assert_eq!(
            cfg.retention,
            RetentionConfig {
                outbox_body_days: 7,
                provider_event_days: 45,
                bounce_mail_days: 14,
                sync_run_days: 365,
            }
        );
        assert_eq!(cfg.relay.unwrap().body_retention_days, 7);
    }

    #[test]
    fn the_relay_key_is_still_read_and_may_agree_but_not_differ() {
        let cfg = parse(&format!("{BASE}{RELAY}body_retention_days = 10\n"));
        assert_eq!(cfg.retention.outbox_body_days, 10);
        assert_eq!(cfg.relay.unwrap().body_retention_days, 10);
        let cfg = parse(&format!(
            "{BASE}{RELAY}body_retention_days = 10\n[retention]\noutbox_body_days = 10\n"
        ));
        assert_eq!(cfg.relay.unwrap().body_retention_days, 10);
        assert_refused(
            &format!("{BASE}{RELAY}body_retention_days = 10\n"),
            &[(
                "[retention]\noutbox_body_days = 20\n",
                "mb.toml:9: `retention.outbox_body_days`: 20 differs from [relay] body_retention_days = 10 (its older name): keep one",
            )],
        );
    }

    #[test]
    fn events_outlive_the_soft_bounce_window() {
        let cfg = parse(&format!(
            "{BASE}[server]\nbind = \"127.0.0.1:0\"\nsoft_bounce_window_days = 120\n"
        ));
        assert_eq!(cfg.retention.provider_event_days, 120, "the default grows");
        assert_refused(
            &format!("{BASE}[server]\nbind = \"127.0.0.1:0\"\nsoft_bounce_window_days = 60\n"),
            &[(
                "[retention]\nprovider_event_days = 30\n",
                "mb.toml:8: `retention.provider_event_days`: 30 is shorter than [server] soft_bounce_window_days = 60: soft bounces are counted over that window, so events must be kept at least as long",
            )],
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    "[retention]\nsync_run_days = 0\n",
                    "mb.toml:5: `retention.sync_run_days`: expected a number of days from 1 to 36500",
                ),
                (
                    "[retention]\nbounce_mail_days = 99999\n",
                    "mb.toml:5: `retention.bounce_mail_days`: expected a number of days from 1 to 36500",
                ),
                (
                    "[retention]\nevents_days = 3\n",
                    "mb.toml: TOML parse error at line 5, column 1\n  |\n5 | events_days = 3\n  | ^^^^^^^^^^^\nunknown field `events_days`, expected one of `outbox_body_days`, `provider_event_days`, `bounce_mail_days`, `sync_run_days`",
                ),
            ],
        );
    }
}
