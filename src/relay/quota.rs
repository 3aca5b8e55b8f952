//! Sending limits: the smarthost's monthly quota (`[relay.smtp] monthly_quota`; AuthSMTP counts
//! each recipient, and every outbox message has one) and an optional `[relay] hourly_limit` over
//! all routes. Counts come from the outbox (`sent_at`), so several workers share them. Messages
//! over a limit wait (`queued`) rather than fail; crossing 80% and 100% of the monthly quota logs a
//! WARN and bumps `mailbridge_relay_quota_warnings_total`.

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

/// The warning thresholds (percent of the monthly quota) that going from `before` to `after`
/// messages crosses; usually none, at most both.
pub fn crossed(before: u64, after: u64, limit: u64) -> Vec<u8> {
    if limit == 0 {
        return Vec::new();
    }
    [80u8, 100]
        .into_iter()
        .filter(|&pct| {
            // used * 100 >= limit * pct, in integers.
            let reached = |used: u64| u128::from(used) * 100 >= u128::from(limit) * u128::from(pct);
            !reached(before) && reached(after)
        })
        .collect()
}

/// Records a send through `route` that brought the month's count from `before` to `after`:
/// the gauge, and a WARN per threshold crossed.
pub fn record(route: &str, before: u64, after: u64, limit: u64) {
    metrics::gauge!("mailbridge_relay_quota_used", "route" => route.to_owned()).set(after as f64);
    metrics::gauge!("mailbridge_relay_quota_limit", "route" => route.to_owned()).set(limit as f64);
    for pct in crossed(before, after, limit) {
        tracing::warn!(
            route,
            used = after,
            limit,
            "The {route} route has used {pct}% of its monthly quota ({after} of {limit} messages){}",
            if pct >= 100 {
                "; further messages wait for next month or another route"
            } else {
                ""
            }
        );
        metrics::counter!("mailbridge_relay_quota_warnings_total", "route" => route.to_owned(), "level" => format!("{pct}"))
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_fire_once_when_crossed() {
        assert_eq!(crossed(0, 1, 10), Vec::<u8>::new());
        assert_eq!(crossed(7, 8, 10), vec![80]);
        assert_eq!(crossed(8, 9, 10), Vec::<u8>::new());
        assert_eq!(crossed(9, 10, 10), vec![100]);
        assert_eq!(crossed(10, 11, 10), Vec::<u8>::new());
        assert_eq!(crossed(0, 10, 10), vec![80, 100]);
        assert_eq!(crossed(3999, 4000, 5000), vec![80]);
        assert_eq!(crossed(0, 5, 0), Vec::<u8>::new());
    }

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
