//! Quota alerts: the one place that decides when a sending limit is close enough to biting that
//! the club is told. A limit is a route's monthly quota (`[relay.smtp] monthly_quota`, per UTC
//! month), `[relay] hourly_limit` over all routes (a rolling hour, alerted once per UTC hour) or a
//! provider's daily API budget (per UTC day). Whoever counts usage (the relay worker after a send,
//! the Constant Contact limiter after taking a request) hands it to [`Alerter::observe`]; each
//! threshold of `[alerts] thresholds` that usage has reached is claimed in `quota_alerts` with
//! `INSERT … ON CONFLICT DO NOTHING`, and only the process whose insert added the row acts: a WARN
//! line, `mailbridge_quota_alerts_total{kind,limit,threshold}`, and one mail to each address of
//! `[alerts] to`. So an alert goes once per threshold and period, across restarts and across
//! workers on one state DB.
//!
//! The mail goes through the relay's own outbox in the category [`Category::Alert`] (no caller can
//! ask for it, no member can opt out of it, suppression does not hold it). The worker tries it on
//! a route without a monthly quota first; the smarthost route is its last resort, and even then
//! the quota's room is checked as for any message, so an alert never spends a quota past its
//! limit. When the spent route is the only one, the alert is queued until the quota renews and
//! the WARN line says so.
//!
//! A crash between the claim and the enqueue (one statement apart) loses that alert's mail; the
//! claim is never repeated, so nothing is sent twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

use super::outbox;
use super::quota;
use super::render::{Category, NewMessage};
use crate::config::{AlertsConfig, RelayConfig};
use crate::store::{Param, Store, StoreError, time_text};

/// Which limit an alert is about; each has its own period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A route's monthly quota (the smarthost's), per UTC month.
    MonthlyQuota,
    /// `[relay] hourly_limit` over all routes: a rolling hour, alerted once per UTC hour.
    HourlyLimit,
    /// A provider's daily API request budget, per UTC day.
    DailyApiBudget,
}

impl LimitKind {
    /// The name in `quota_alerts.kind` and the metric's `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::MonthlyQuota => "monthly_quota",
            LimitKind::HourlyLimit => "hourly_limit",
            LimitKind::DailyApiBudget => "api_daily_budget",
        }
    }

    /// The first instant of the period `now` falls in.
    pub fn period_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            LimitKind::MonthlyQuota => quota::month_start(now),
            LimitKind::HourlyLimit => Utc
                .with_ymd_and_hms(now.year(), now.month(), now.day(), now.hour(), 0, 0)
                .single()
                .unwrap_or(now),
            LimitKind::DailyApiBudget => now
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .map_or(now, |d| d.and_utc()),
        }
    }

    /// The first instant after the period that starts at `start`.
    pub fn period_end(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            LimitKind::MonthlyQuota => quota::next_month_start(start),
            LimitKind::HourlyLimit => start + Duration::hours(1),
            LimitKind::DailyApiBudget => start + Duration::days(1),
        }
    }

    /// The period as a person reads it: `2026-12`, `2026-12-06 10:00-11:00 UTC`, `2026-12-06`.
    fn period_name(self, start: DateTime<Utc>) -> String {
        match self {
            LimitKind::MonthlyQuota => start.format("%Y-%m (UTC month)").to_string(),
            LimitKind::HourlyLimit => format!(
                "{}-{} UTC",
                start.format("%Y-%m-%d %H:%M"),
                self.period_end(start).format("%H:%M")
            ),
            LimitKind::DailyApiBudget => start.format("%Y-%m-%d (UTC day)").to_string(),
        }
    }

    /// What the limit is, and the config key that sets it.
    fn describe(self, subject: &str) -> String {
        match self {
            LimitKind::MonthlyQuota => format!(
                "the monthly quota of the {subject} route ([relay.{subject}] monthly_quota)"
            ),
            LimitKind::HourlyLimit => {
                "the hourly limit over all routes ([relay] hourly_limit)".to_owned()
            }
            LimitKind::DailyApiBudget => format!(
                "the daily API request budget of {subject} ([providers.{subject}] daily_budget)"
            ),
        }
    }

    /// What counts against the limit.
    fn unit(self) -> &'static str {
        match self {
            LimitKind::MonthlyQuota | LimitKind::HourlyLimit => "messages",
            LimitKind::DailyApiBudget => "requests",
        }
    }

    /// What happens once the limit is reached.
    fn at_the_limit(self, subject: &str, resets: &str) -> String {
        match self {
            LimitKind::MonthlyQuota => format!(
                "At 100% further messages skip the {subject} route: they go through the next configured route, or wait (queued) until {resets}."
            ),
            LimitKind::HourlyLimit => "At 100% further messages wait (queued) until the sends of the last hour fall below the limit.".to_owned(),
            LimitKind::DailyApiBudget => format!(
                "At 100% mailbridge sends no more {subject} API requests until {resets}: syncs and campaign pushes stop with a quota error and resume then."
            ),
        }
    }
}

/// How much of a limit is used now.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    pub kind: LimitKind,
    /// The route (`smtp`), `relay` for the hourly limit, or the provider (`constant_contact`).
    pub subject: &'a str,
    pub used: u64,
    pub limit: u64,
}

/// The thresholds (percent, from `thresholds`) that `used` of `limit` has reached.
pub fn reached(thresholds: &[u8], used: u64, limit: u64) -> Vec<u8> {
    if limit == 0 {
        return Vec::new();
    }
    thresholds
        .iter()
        .copied()
        // used * 100 >= limit * pct, in integers.
        .filter(|&pct| u128::from(used) * 100 >= u128::from(limit) * u128::from(pct))
        .collect()
}

/// `used` as a whole percentage of `limit` (rounded down).
fn percent(used: u64, limit: u64) -> u128 {
    u128::from(used) * 100 / u128::from(limit.max(1))
}

/// An alert already claimed (by this process or another): kind, subject, threshold, period.
type Key = (LimitKind, String, u8, DateTime<Utc>);

/// Decides and sends quota alerts. Cheap to clone; clones share what they know was claimed.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AlertsConfig,
    relay: Option<Arc<RelayConfig>>,
    /// Alerts known to be claimed, so that usage past a threshold costs no statement per send.
    known: Mutex<HashSet<Key>>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("thresholds", &self.inner.config.thresholds)
            .field("to", &self.inner.config.to.len())
            .finish()
    }
}

/// Claims one alert: `$1` kind, `$2` subject, `$3` threshold, `$4` period start, `$5` used, `$6`
/// limit, `$7` now. Adds a row (1) only for the first claimer.
const CLAIM_SQL: &str = "INSERT INTO quota_alerts
     (kind, subject, threshold, period_start, used, limit_value, claimed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (kind, subject, threshold, period_start) DO NOTHING";

/// Gives a claim back when its mail could not be queued, so a later send tries again.
const UNCLAIM_SQL: &str = "DELETE FROM quota_alerts
     WHERE kind = $1 AND subject = $2 AND threshold = $3 AND period_start = $4";

/// Forgets alerts of periods long over (`$1`: every period started before it has ended).
const PURGE_SQL: &str = "DELETE FROM quota_alerts WHERE period_start < $1";

/// Longer than any period: a claim whose period started this long ago is over.
fn past_every_period(now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::days(32)
}

impl Alerter {
    /// Alerts at `config`'s thresholds, claimed in `store`'s `quota_alerts` on its clock, mailed
    /// through `relay` (none: logged and counted only).
    pub fn new(store: Store, config: AlertsConfig, relay: Option<Arc<RelayConfig>>) -> Alerter {
        Alerter {
            inner: Arc::new(Inner {
                store,
                config,
                relay,
                known: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Looks at `usage` and raises the alerts it calls for that nobody raised yet this period;
    /// returns their thresholds (usually none). Never fails: a claim the state DB refused is
    /// logged and tried again at the next observation.
    pub async fn observe(&self, usage: Usage<'_>) -> Vec<u8> {
        let inner = &self.inner;
        let now = inner.store.now();
        let start = usage.kind.period_start(now);
        let mut claimed = Vec::new();
        for pct in reached(&inner.config.thresholds, usage.used, usage.limit) {
            let key: Key = (usage.kind, usage.subject.to_owned(), pct, start);
            if self.knows(&key) {
                continue;
            }
            match self.claim(&usage, pct, start, now).await {
                Ok(won) => {
                    self.remember(key, now);
                    if won {
                        claimed.push(pct);
                    }
                }
                Err(e) => tracing::warn!(
                    kind = usage.kind.as_str(),
                    limit = usage.subject,
                    "Could not record a quota alert in the state database; the next count tries again: {}",
                    crate::error_chain(&e)
                ),
            }
        }
        let Some(&highest) = claimed.last() else {
            return claimed;
        };
        for pct in &claimed {
            metrics::counter!(
                "mailbridge_quota_alerts_total",
                "kind" => usage.kind.as_str(),
                "limit" => usage.subject.to_owned(),
                "threshold" => pct.to_string()
            )
            .increment(1);
        }
        let mail = self.mail_note(&usage);
        tracing::warn!(
            kind = usage.kind.as_str(),
            limit = usage.subject,
            threshold = highest,
            used = usage.used,
            limit_value = usage.limit,
            period = %time_text(start),
            "Quota alert: {} has reached {highest}% ({} of {} {} used, {}%) in {}; {mail}",
            usage.kind.describe(usage.subject),
            usage.used,
            usage.limit,
            usage.kind.unit(),
            percent(usage.used, usage.limit),
            usage.kind.period_name(start),
        );
        if !self.send(&usage, &claimed, start).await {
            for pct in &claimed {
                self.unclaim(&usage, *pct, start).await;
            }
        }
        claimed
    }

    fn knows(&self, key: &Key) -> bool {
        let known = self.inner.known.lock().unwrap_or_else(|p| p.into_inner());
        known.contains(key)
    }

    fn remember(&self, key: Key, now: DateTime<Utc>) {
        let mut known = self.inner.known.lock().unwrap_or_else(|p| p.into_inner());
        let over = past_every_period(now);
        known.retain(|(_, _, _, start)| *start >= over);
        known.insert(key);
    }

    /// Claims the alert; true when this call added its row (and so sends it).
    async fn claim(
        &self,
        usage: &Usage<'_>,
        pct: u8,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let store = &self.inner.store;
        let int = |n: u64| Param::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let added = store
            .write(
                "claim a quota alert",
                CLAIM_SQL,
                vec![
                    Param::from(usage.kind.as_str()),
                    Param::from(usage.subject),
                    Param::Int(i64::from(pct)),
                    Param::Text(time_text(start)),
                    int(usage.used),
                    int(usage.limit),
                    Param::Text(time_text(now)),
                ],
            )
            .await?;
        if added > 0 {
            // Rare (a few claims per period), so the table is kept short here.
            let _ = store
                .write(
                    "forget old quota alerts",
                    PURGE_SQL,
                    vec![Param::Text(time_text(past_every_period(now)))],
                )
                .await;
        }
        Ok(added > 0)
    }

    async fn unclaim(&self, usage: &Usage<'_>, pct: u8, start: DateTime<Utc>) {
        let key: Key = (usage.kind, usage.subject.to_owned(), pct, start);
        self.inner
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Err(e) = self
            .inner
            .store
            .write(
                "give back a quota alert",
                UNCLAIM_SQL,
                vec![
                    Param::from(usage.kind.as_str()),
                    Param::from(usage.subject),
                    Param::Int(i64::from(pct)),
                    Param::Text(time_text(start)),
                ],
            )
            .await
        {
            tracing::warn!(
                "Could not give back a quota alert whose mail was not queued; it is not mailed again this period: {}",
                crate::error_chain(&e)
            );
        }
    }

    /// The routes other than the one the alert is about, that an alert mail may take.
    fn other_routes(&self, usage: &Usage<'_>) -> Vec<String> {
        let Some(relay) = &self.inner.relay else {
            return Vec::new();
        };
        relay
            .routes
            .iter()
            .filter(|r| usage.kind != LimitKind::MonthlyQuota || r.as_str() != usage.subject)
            .cloned()
            .collect()
    }

    /// How the alert mail goes (for the WARN line).
    fn mail_note(&self, usage: &Usage<'_>) -> String {
        let config = &self.inner.config;
        if config.to.is_empty() {
            return "no mail is sent ([alerts] to is not set)".to_owned();
        }
        if self.inner.relay.is_none() {
            return "no mail is sent (no [relay] is configured)".to_owned();
        }
        let to = config
            .to
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let spent = usage.used >= usage.limit;
        match usage.kind {
            LimitKind::MonthlyQuota if self.other_routes(usage).is_empty() && spent => format!(
                "an alert mail to {to} is queued, but the {} route is the only one and its quota is spent: it goes out when the quota renews (add a second route to get alerts in time)",
                usage.subject
            ),
            LimitKind::HourlyLimit if spent => format!(
                "an alert mail to {to} is queued; it goes out when the hour has room, like every message"
            ),
            _ => format!("an alert mail to {to} is queued"),
        }
    }

    /// The alert mail's subject and text.
    fn message(&self, usage: &Usage<'_>, claimed: &[u8], start: DateTime<Utc>) -> (String, String) {
        let config = &self.inner.config;
        let highest = claimed.last().copied().unwrap_or_default();
        let kind = usage.kind;
        let end = kind.period_end(start);
        let resets = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let subject = format!(
            "{} {highest}% of {}: {} of {} {} used",
            config.subject_prefix,
            match kind {
                LimitKind::MonthlyQuota => format!("the {} route's monthly quota", usage.subject),
                LimitKind::HourlyLimit => "the relay's hourly limit".to_owned(),
                LimitKind::DailyApiBudget => format!("{}'s daily API budget", usage.subject),
            },
            usage.used,
            usage.limit,
            kind.unit()
        );
        let subject = subject.trim().to_owned();
        let thresholds = claimed
            .iter()
            .map(|p| format!("{p}%"))
            .collect::<Vec<_>>()
            .join(" and ");
        let route = match kind {
            LimitKind::MonthlyQuota => {
                let others = self.other_routes(usage);
                if others.is_empty() {
                    format!(
                        "No other route is configured, so this mail went through the {} route itself and counted toward its quota.",
                        usage.subject
                    )
                } else {
                    format!(
                        "This mail was sent through another route ({}) where one took it; the {} route is an alert's last resort.",
                        others.join(", "),
                        usage.subject
                    )
                }
            }
            LimitKind::HourlyLimit => {
                "This mail counted toward the hourly limit like every message.".to_owned()
            }
            LimitKind::DailyApiBudget => String::new(),
        };
        let text = format!(
            "mailbridge quota alert\n\n\
             Limit:     {limit_name}\n\
             Period:    {period}\n\
             Used:      {used} of {limit} {unit} ({pct}%)\n\
             Threshold: {thresholds} reached\n\
             Resets:    {resets}\n\n\
             {consequence}\n\
             {route}\n\n\
             This alert is sent once per threshold and period ([alerts] thresholds = {all:?}).\n",
            limit_name = kind.describe(usage.subject),
            period = kind.period_name(start),
            used = usage.used,
            limit = usage.limit,
            unit = kind.unit(),
            pct = percent(usage.used, usage.limit),
            consequence = kind.at_the_limit(usage.subject, &resets),
            all = config.thresholds,
        );
        (subject, text)
    }

    /// Queues the alert mail to each `[alerts] to`; false when one could not be queued (the
    /// claims are then given back).
    async fn send(&self, usage: &Usage<'_>, claimed: &[u8], start: DateTime<Utc>) -> bool {
        let inner = &self.inner;
        let Some(relay) = &inner.relay else {
            return true;
        };
        if inner.config.to.is_empty() {
            return true;
        }
        let (subject, text) = self.message(usage, claimed, start);
        let mut all = true;
        for to in &inner.config.to {
            let msg = NewMessage {
                to: to.original().to_owned(),
                subject: subject.clone(),
                text: text.clone(),
                html: None,
                reply_to: None,
                headers: Default::default(),
                category: Category::Alert.as_str().to_owned(),
            };
            if let Ok(true) = outbox::is_suppressed(&inner.store, to.as_str()).await {
                tracing::warn!(
                    to = to.as_str(),
                    "The alert address {} is on the suppression list (a bounce or complaint); quota alerts are sent to it anyway: check the address, then lift the suppression",
                    to.as_str()
                );
            }
            match outbox::enqueue_alert(&inner.store, relay, &msg).await {
                Ok(queued) => tracing::info!(
                    id = %queued.id,
                    to = to.as_str(),
                    "Queued a quota alert mail"
                ),
                Err(e) => {
                    all = false;
                    tracing::error!(
                        to = to.as_str(),
                        "Could not queue a quota alert mail; it is tried again at the next count: {}",
                        crate::error_chain(&e)
                    );
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    #[test]
    fn thresholds_are_reached_in_integers() {
        let t = [80, 95];
        assert_eq!(reached(&t, 0, 10), Vec::<u8>::new());
        assert_eq!(reached(&t, 7, 10), Vec::<u8>::new());
        assert_eq!(reached(&t, 8, 10), vec![80]);
        assert_eq!(reached(&t, 9, 10), vec![80]);
        assert_eq!(reached(&t, 10, 10), vec![80, 95]);
        assert_eq!(reached(&t, 11, 10), vec![80, 95]);
        assert_eq!(reached(&t, 3999, 5000), Vec::<u8>::new());
        assert_eq!(reached(&t, 4000, 5000), vec![80]);
        assert_eq!(reached(&t, 4749, 5000), vec![80]);
        assert_eq!(reached(&t, 4750, 5000), vec![80, 95]);
        assert_eq!(reached(&t, 5, 0), Vec::<u8>::new());
        assert_eq!(reached(&[100], u64::MAX, u64::MAX), vec![100]);
        assert_eq!(reached(&[], 10, 10), Vec::<u8>::new());
    }

    #[test]
    fn periods_are_utc_months_hours_and_days() {
        let t = at("2026-12-31T23:59:59.999Z");
        let month = LimitKind::MonthlyQuota.period_start(t);
        assert_eq!(month, at("2026-12-01T00:00:00Z"));
        assert_eq!(
            LimitKind::MonthlyQuota.period_end(month),
            at("2027-01-01T00:00:00Z")
        );
        let hour = LimitKind::HourlyLimit.period_start(t);
        assert_eq!(hour, at("2026-12-31T23:00:00Z"));
        assert_eq!(
            LimitKind::HourlyLimit.period_end(hour),
            at("2027-01-01T00:00:00Z")
        );
        let day = LimitKind::DailyApiBudget.period_start(t);
        assert_eq!(day, at("2026-12-31T00:00:00Z"));
        assert_eq!(
            LimitKind::DailyApiBudget.period_name(day),
            "2026-12-31 (UTC day)"
        );
        assert_eq!(
            LimitKind::HourlyLimit.period_name(hour),
            "2026-12-31 23:00-00:00 UTC"
        );
    }
}
