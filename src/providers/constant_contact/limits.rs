//! The request budget: a pace of `requests_per_second` shared by every client of the process
//! with the same client id (one registry for the process, as Constant Contact counts per app),
//! one token call per second per token endpoint, and a per-UTC-day count in the state DB against
//! `daily_budget`, taken before each API request so every process on the state DB stays under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Days, NaiveTime, Utc};
use tokio::time::Instant;

use super::error::ErrorKind;
use crate::config::AlertsConfig;
use crate::relay::alerts::{Alerter, LimitKind, Usage};
use crate::store::Store;

/// The name the budget is counted under in `api_budget`.
pub(super) const BUDGET_PROVIDER: &str = "constant_contact";

/// Hands out evenly spaced send times: at most one per `interval`, in the order asked.
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(per_second: u32) -> Pacer {
        // A tenth more than the even spacing: requests leave a little after their turn and reach
        // the server after varying delays, and four turns exactly 250 ms apart can arrive as five
        // within one second of the server's clock (seen against the simulator's sliding window).
        Pacer {
            interval: Duration::from_secs(1) * 11 / (10 * per_second.max(1)),
            next: Mutex::new(None),
        }
    }

    /// Waits for this caller's turn.
    pub(super) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

type Registry = Mutex<HashMap<String, Arc<Pacer>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The process's pacer for `key`, made at `per_second` by its first caller (later callers share
/// it whatever rate they ask for: one app has one rate).
fn pacer(key: String, per_second: u32) -> Arc<Pacer> {
    let mut pacers = registry().lock().unwrap_or_else(|e| e.into_inner());
    pacers
        .entry(key)
        .or_insert_with(|| Arc::new(Pacer::new(per_second)))
        .clone()
}

/// The pace of API requests of the app `client_id`.
pub(super) fn api_pacer(client_id: &str, per_second: u32) -> Arc<Pacer> {
    pacer(format!("api {client_id}"), per_second)
}

/// One call per second to the token endpoint at `token_url` (Constant Contact's limit).
pub(super) fn token_pacer(token_url: &str) -> Arc<Pacer> {
    pacer(format!("token {token_url}"), 1)
}

/// The next 00:00 UTC after `now`: when a day's quota comes back.
pub fn next_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.date_naive();
    let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
    tomorrow.and_time(NaiveTime::MIN).and_utc()
}

/// The daily request budget in the state DB, on the store's clock, with quota alerts on it.
#[derive(Clone, Debug)]
pub(super) struct DailyBudget {
    store: Store,
    limit: u32,
    alerts: Alerter,
}

impl DailyBudget {
    /// A budget of `limit` a day whose alerts are logged and counted, not mailed (see
    /// [`DailyBudget::with_alerts`]).
    pub(super) fn new(store: Store, limit: u32) -> DailyBudget {
        let alerts = Alerter::new(store.clone(), AlertsConfig::default(), None);
        DailyBudget {
            store,
            limit,
            alerts,
        }
    }

    /// Raises the budget's quota alerts with `alerts`.
    pub(super) fn set_alerts(&mut self, alerts: Alerter) {
        self.alerts = alerts;
    }

    /// Takes one request from today's budget, or says when the next one is available.
    pub(super) async fn take(&self) -> Result<(), ErrorKind> {
        let now = self.store.now();
        let taken = self
            .store
            .take_api_budget_counted(BUDGET_PROVIDER, now.date_naive(), self.limit)
            .await
            .map_err(|e| ErrorKind::Store {
                detail: crate::error_chain(&e),
            })?;
        if let Some(used) = taken {
            let usage = Usage {
                kind: LimitKind::DailyApiBudget,
                subject: BUDGET_PROVIDER,
                used,
                limit: u64::from(self.limit),
            };
            self.alerts.observe(usage).await;
            Ok(())
        } else {
            Err(ErrorKind::QuotaExceeded {
                resets_at: next_midnight(now),
                local: true,
            })
        }
    }
}
