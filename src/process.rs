//! Process-level primitives of the ground that the front (`cli`, `http`) and the engine's workers
//! share: the usage error that maps to exit code 2, and the shutdown signal.

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
