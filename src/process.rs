//! Process-level primitives of the ground that the front (`cli`, `http`) and the engine's workers
//! share: the usage error that maps to exit code 2, the shutdown signal, and the binary's crash-test
//! pause hook.

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
