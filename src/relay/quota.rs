//! Sending limits: the smarthost's monthly quota (`[relay.smtp] monthly_quota`; AuthSMTP counts
//! each recipient, and every outbox message has one) and an optional `[relay] hourly_limit` over
//! all routes. Counts come from the outbox (`sent_at`), so several workers share them. Messages
//! over a limit wait (`queued`) rather than fail; alerts before a limit bites are
//! [`super::alerts`]'s.

use chrono::{DateTime, Datelike, TimeZone, Utc};

/// The first instant of `now`'s UTC month.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

/// The first instant of the next UTC month (when a spent monthly quota is available again).
pub fn next_month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

/// Records a send through `route` that brought the month's count to `used` of `limit` (the
/// gauges; alerts at thresholds are `alerts`'s).
pub fn record(route: &str, used: u64, limit: u64) {
    metrics::gauge!("mailbridge_relay_quota_used", "route" => route.to_owned()).set(used as f64);
    metrics::gauge!("mailbridge_relay_quota_limit", "route" => route.to_owned()).set(limit as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_boundaries() {
        let t = Utc.with_ymd_and_hms(2026, 12, 17, 13, 5, 0).unwrap();
        assert_eq!(
            month_start(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next_month_start(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let t = Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap();
        assert_eq!(
            next_month_start(t),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
    }
}
