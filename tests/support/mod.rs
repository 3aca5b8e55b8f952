//! The one test harness: every integration test file includes it with `mod support;`.
//!
//! - [`db`]: a fresh state DB (SQLite or PostgreSQL) or member DB (SQLite, PostgreSQL or MariaDB)
//!   per test, skipped when its server is unreachable unless `CI=true`; member rows; the binary.
//! - [`config`]: config files written from parts.
//! - [`app`]: every application part a test builds (config, store, member source, Mailchimp
//!   client, HTTP state, a running `serve`), so only this module follows the app's assembly.
//! - [`sim`]: the provider simulator in process, optionally behind the spec-proxy.
//! - [`smtp`]: real SMTP servers (aiosmtpd) and the `[relay]` config for them.
//! - [`cc`]: Constant Contact end to end: its simulator's control routes, a campaign sender,
//!   the config and mapping of a `constant_contact` audience, the app connected through the binary.
//! - [`serve`]: a running `serve` with the simulator and a member DB, as serve.rs and attacks.rs
//!   use it.
//! - [`relay`]: a relay on a state DB (system or manual clock) with its usual helpers.
//! - [`bounces`]: bounce ingest on members synced to the simulator, with a VERP relay.
//! - [`dovecot`]: a real Dovecot IMAP server per test (the bounce mailbox), skipped when it
//!   cannot start unless `CI=true`.
//! - [`browser`]: a headless Chromium per test through its chromedriver (the admin pages),
//!   screenshots kept; skipped when Chromium is not installed unless `CI=true`.
//! - [`dns`]: a real DNS server (dnsmasq) per test serving crafted records, skipped when it
//!   cannot start unless `CI=true`.
//! - [`pg_server`]: a private PostgreSQL server per test (initdb in a temp dir, a spare port),
//!   which the test may configure, stop, kill and restart.
//! - [`fault`]: what the fault harnesses share: tunable sizes, a printed seed, waits with a
//!   deadline, the delivery judge and the relay's log readers.
//! - [`admin`]: the admin pages as a client: a known password, a login through the form, a
//!   session that gets pages and posts forms with its CSRF token.
//! - [`clock`]: the steerable clock (`mailbridge::clock::ManualClock`) for code that accepts one.

#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod admin;
pub mod app;
pub mod bounces;
pub mod browser;
pub mod cc;
pub mod clock;
pub mod config;
pub mod db;
pub mod dns;
pub mod dovecot;
pub mod fault;
pub mod pg_server;
pub mod relay;
pub mod serve;
pub mod sim;
pub mod smtp;

pub use config::ConfigFile;
pub use db::{Kind, in_ci};

/// Runs `cmd` to the end and panics, with its stderr, unless it succeeded.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One `#[tokio::test]` per name, each calling `check(Kind::…)`: the same check on each database
/// kind, a test per kind, so the kinds run in parallel and a failure names its kind.
///
/// `kind_tests!(exercise: sqlite_state_db => Sqlite, postgres_state_db => Postgres);`
#[allow(unused_macros)]
macro_rules! kind_tests {
    ($check:ident: $($name:ident => $kind:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $check(crate::support::Kind::$kind).await;
            }
        )+
    };
}
pub(crate) use kind_tests;
