//! `serve`'s poller. A provider without member webhooks (Constant Contact) is asked every
//! `poll_every` what changed for each of its audiences (opt-outs, bounces); the changes are
//! recorded as events and the writeback worker is woken, which writes them back and suppresses
//! exactly as it does for a webhook's events. A failed poll is logged and tried again at the next
//! interval (its cursor has not moved, so nothing is skipped).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::AudienceConfig;
use crate::providers::{Provider, ProviderSet};
use crate::store::Store;

/// What the poller needs: the state DB, the audiences, their providers and the clock it waits on.
pub struct Poller {
    pub store: Store,
    pub audiences: Vec<AudienceConfig>,
    pub providers: ProviderSet,
    pub clock: SharedClock,
}

impl Poller {
    /// The audiences to poll, each with its provider and interval (none for providers that
    /// push their events).
    fn polled(&self) -> Vec<(&AudienceConfig, &Provider, Duration)> {
        self.audiences
            .iter()
            .filter_map(|a| {
                let provider = self.providers.get(a.provider)?;
                Some((a, provider, provider.poll_every()?))
            })
            .collect()
    }

    /// Polls until `shutdown` is cancelled; returns at once when no audience is polled.
    pub async fn run(self, shutdown: CancellationToken, wake: Arc<Notify>) {
        let polled = self.polled();
        let Some(every) = polled.iter().map(|(_, _, every)| *every).min() else {
            return;
        };
        tracing::info!(
            audiences = polled.len(),
            every_secs = every.as_secs(),
            "Polling the providers without webhooks for opt-outs and bounces."
        );
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let recorded = self.poll_once(&polled, &shutdown).await;
            if recorded > 0 {
                wake.notify_one();
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.clock.sleep(every) => {}
            }
        }
    }

    /// One poll of every audience; returns how many changes were recorded.
    async fn poll_once(
        &self,
        polled: &[(&AudienceConfig, &Provider, Duration)],
        shutdown: &CancellationToken,
    ) -> u64 {
        let mut recorded = 0;
        for (audience, provider, _) in polled {
            if shutdown.is_cancelled() {
                break;
            }
            match super::record_changes(audience, &self.store, provider, false).await {
                Ok(n) => {
                    tracing::debug!(audience = %audience.name, changes = n, "Polled the provider.");
                    recorded += n;
                }
                Err(e) => tracing::warn!(
                    audience = %audience.name,
                    "Polling the provider failed; it is tried again at the next interval: {}",
                    crate::error_chain(&e)
                ),
            }
        }
        recorded
    }
}
