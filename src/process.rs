//! Process-level primitives of the ground that the front (`cli`, `http`) and the engine's workers
//! share: the usage error that maps to exit code 2, the shutdown signal and the graceful shutdown
//! of a long-running command within its grace period ([`until_terminated`]), and the binary's
//! crash-test pause hook.

/// Bad usage found after parsing (e.g. an unknown audience name): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A failure that may pass, for a command an MTA runs (`bounce ingest` from a pipe alias): exit
/// code 75 (EX_TEMPFAIL in sysexits.h), so Postfix or Exim keeps the mail queued and tries again
/// instead of returning it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemporaryFailure(pub String);

/// Test hook of the binary only: `MAILBRIDGE_TEST_PAUSE_AFTER=create` makes a campaign push
/// (`campaign push`, or a job `serve` runs) stop right after recording the provider's campaign
/// id and wait to be killed (the crash tests).
pub const PAUSE_ENV: &str = "MAILBRIDGE_TEST_PAUSE_AFTER";
/// What the paused process prints on stderr before it waits.
pub const PAUSE_MARKER: &str = "mailbridge-test: paused after create";

/// The hook [`PAUSE_ENV`] asks for, else `None`.
pub fn test_pause_hook() -> Option<fn(&str)> {
    std::env::var(PAUSE_ENV)
        .is_ok_and(|v| v == "create")
        .then_some(pause_after_create as fn(&str))
}

fn pause_after_create(campaign_id: &str) {
    eprintln!("{PAUSE_MARKER} ({campaign_id})");
    loop {
        std::thread::park();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// How long a long-running command may take to stop after SIGTERM/SIGINT: `[server]
/// shutdown_grace_secs`, 30 s without it.
pub fn shutdown_grace(config: &crate::config::Config) -> std::time::Duration {
    std::time::Duration::from_secs(config.server.as_ref().map_or(
        crate::config::ServerConfig::DEFAULT_SHUTDOWN_GRACE_SECS,
        |s| s.shutdown_grace_secs,
    ))
}

/// A command stopped by a termination signal did not end within its grace period; what it
/// abandoned is in the message (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped after the {grace_secs} s shutdown grace period without finishing: abandoned {abandoned}; its leases expire by themselves and another worker takes it over then"
)]
pub struct Abandoned {
    pub grace_secs: u64,
    pub abandoned: String,
}

/// Graceful shutdown of a long-running command: runs `work` with a token that is cancelled at
/// SIGTERM or SIGINT (the work then finishes or hands back what it is doing, releases its leases
/// and ends) and, when `store` is given, stops the work under its leases before its next side
/// effect ([`crate::store::Store::stop_leased_work`]). After the signal, `work` has `grace` to
/// end; past it, it is dropped and [`Abandoned`] says what was in flight (`in_flight`, asked then).
pub async fn until_terminated<T, Fut>(
    grace: std::time::Duration,
    store: Option<&crate::store::Store>,
    work: impl FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    in_flight: impl FnOnce() -> String,
) -> Result<T, Abandoned>
where
    Fut: std::future::Future<Output = T>,
{
    let token = tokio_util::sync::CancellationToken::new();
    let work = work(token.clone());
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Ok(done),
        () = termination_signal() => {}
    }
    tracing::info!(
        "Shutting down: finishing or handing back the work in flight (at most {} s)",
        grace.as_secs()
    );
    token.cancel();
    if let Some(store) = store {
        store.stop_leased_work();
    }
    match tokio::time::timeout(grace, work).await {
        Ok(done) => Ok(done),
        Err(_) => {
            let abandoned = Abandoned {
                grace_secs: grace.as_secs(),
                abandoned: in_flight(),
            };
            tracing::error!("{abandoned}");
            Err(abandoned)
        }
    }
}
