//! Constant Contact's request budget per application (`client_id`), as rate_limits.html states it:
//! at most N requests in any one second of real time (429 `throttled`) and at most M accepted
//! requests per UTC day (429 `quota_exceeded`, until 00:00 UTC). The day is the simulated clock's,
//! so a test can cross midnight with `POST /_sim/clock/advance`; the second is real time, since a
//! client paces itself with its own sleeps.
//!
//! Order: the per-second check first, so a throttled request uses no quota; a request that passes
//! it occupies its slot in the second even when the daily quota then refuses it (it still reached
//! the API).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day number (days since 1970-01-01) of a simulated time in µs.
pub fn utc_day(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS)
}

/// The limits in force (from `SimConfig`); 0 turns a limit off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_second: u32,
    pub per_day: u64,
}

/// What the budget says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    Throttled,
    QuotaExceeded,
}

/// One application's budget.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Real instants of the requests in the last second that passed the per-second check.
    recent: VecDeque<Instant>,
    /// The UTC day `used` counts for.
    day: i64,
    used: u64,
}

impl Budget {
    /// Decides one request arriving at real time `now` and simulated time `sim_micros`.
    pub fn admit(&mut self, now: Instant, sim_micros: i64, limits: Limits) -> Verdict {
        if limits.per_second > 0 {
            while self
                .recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= limits.per_second as usize {
                return Verdict::Throttled;
            }
            self.recent.push_back(now);
        }
        let day = utc_day(sim_micros);
        if day != self.day {
            self.day = day;
            self.used = 0;
        }
        if limits.per_day > 0 && self.used >= limits.per_day {
            return Verdict::QuotaExceeded;
        }
        self.used += 1;
        Verdict::Admitted
    }

    /// Accepted requests on the current day.
    pub fn used_today(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 19_000 * DAY_MICROS + DAY_MICROS / 2;

    #[test]
    fn the_day_turns_at_utc_midnight() {
        assert_eq!(utc_day(0), 0);
        assert_eq!(utc_day(DAY_MICROS - 1), 0);
        assert_eq!(utc_day(DAY_MICROS), 1);
        assert_eq!(utc_day(-1), -1);
    }

    #[test]
    fn per_second_limit_refuses_the_fifth_request_in_a_second_and_frees_after_it() {
        let limits = Limits {
            per_second: 4,
            per_day: 0,
        };
        let mut budget = Budget::default();
        let t0 = Instant::now();
        for i in 0..4 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(budget.admit(at, NOON, limits), Verdict::Admitted);
        }
        let fifth = t0 + Duration::from_millis(500);
        assert_eq!(budget.admit(fifth, NOON, limits), Verdict::Throttled);
        // The first request's second is over: one slot is free again.
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(budget.admit(later, NOON, limits), Verdict::Admitted);
        assert_eq!(budget.admit(later, NOON, limits), Verdict::Throttled);
    }

    #[test]
    fn daily_quota_refuses_until_midnight_and_throttled_requests_use_none() {
        let limits = Limits {
            per_second: 2,
            per_day: 3,
        };
        let mut budget = Budget::default();
        let t0 = Instant::now();
        assert_eq!(budget.admit(t0, NOON, limits), Verdict::Admitted);
        assert_eq!(budget.admit(t0, NOON, limits), Verdict::Admitted);
        assert_eq!(budget.admit(t0, NOON, limits), Verdict::Throttled);
        assert_eq!(budget.used_today(), 2);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.admit(t1, NOON, limits), Verdict::Admitted);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(budget.admit(t2, NOON, limits), Verdict::QuotaExceeded);
        let before_midnight = 19_001 * DAY_MICROS - 1;
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(
            budget.admit(t3, before_midnight, limits),
            Verdict::QuotaExceeded
        );
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(
            budget.admit(t4, 19_001 * DAY_MICROS, limits),
            Verdict::Admitted
        );
        assert_eq!(budget.used_today(), 1);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits {
            per_second: 0,
            per_day: 0,
        };
        let mut budget = Budget::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(budget.admit(t0, NOON, limits), Verdict::Admitted);
        }
    }
}
