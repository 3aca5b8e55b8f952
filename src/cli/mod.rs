//! The command line: parsing (clap) and running each command. Exit codes (DESIGN.md): 0 success,
//! 1 failure, 2 bad usage or bad config/mapping, 3 finished with some members failed.

pub mod admin;
pub mod auth;
pub mod bounce;
pub mod campaigns;
pub mod dkim;
pub mod doctor;
mod log_json;
pub mod relay;
pub mod sync;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::config::{ConfigError, LogFormat};
use crate::demo::{self, DemoOptions};
use crate::mapping::MappingError;
use crate::sync::SyncError;

#[derive(Parser, Debug)]
#[command(
    name = "mailbridge",
    version,
    about = "Bridges a club's member database to its newsletter services and an SMTP relay"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "MAILBRIDGE_CONFIG",
        default_value = "mailbridge.toml"
    )]
    pub config: PathBuf,
    /// How log lines are written on stderr: `text`, or `json` (one object per line). Wins over
    /// the config's `[log] format`.
    #[arg(
        long,
        global = true,
        env = "MAILBRIDGE_LOG_FORMAT",
        value_name = "FORMAT",
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::PossibleValuesParser::new(LogFormat::names()),
            |name: String| LogFormat::parse(&name).unwrap_or_default(),
        ),
    )]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A self-contained tour on embedded defaults: no credentials, no network.
    Demo(DemoArgs),
    /// Creates or upgrades the state database (idempotent).
    Migrate,
    /// Connects a provider account whose tokens live in the state database.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Mirrors the member database into the configured audiences (pull, then push).
    Sync(SyncArgs),
    /// Runs the provider simulator (stateful local Mailchimp and Constant Contact APIs) until
    /// interrupted.
    Simulate(SimulateArgs),
    /// Brings provider unsubscribes and cleaned addresses back into the member database only.
    Pull(PullArgs),
    /// Runs the HTTP server (webhooks, admin and message APIs) and the background workers.
    Serve(ServeArgs),
    /// Pushes a newsletter to an audience (at most once per key), or shows a pushed one.
    #[command(subcommand)]
    Campaign(campaigns::CampaignCommand),
    /// Queues one transactional message for the relay; prints its id.
    Send(relay::SendArgs),
    /// Delivers the outbox through the configured routes (`--once`: until nothing is due).
    Relay(relay::RelayArgs),
    /// Bounce mail: apply one to the outbox, the suppression list and the member DB.
    #[command(subcommand)]
    Bounce(bounce::BounceCommand),
    /// DKIM for relay mail: `keygen` writes a key and prints the DNS record to publish.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Checks the sending domain's DNS as receivers do: SPF, DKIM, DMARC, the bounce MX and the
    /// sending IP's PTR; exit 0 all ok, 1 a failure, 3 warnings only.
    Doctor(doctor::DoctorArgs),
    /// The admin web pages of `serve`: `set-password` writes the admin password's hash.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Listen here instead of `[server] bind`.
    #[arg(long)]
    pub bind: Option<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Only this audience (repeatable); all configured audiences by default.
    #[arg(long = "audience", value_name = "NAME")]
    pub audiences: Vec<String>,
    /// Print the run report as JSON (one object per audience and line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8025")]
    pub bind: std::net::SocketAddr,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many sample members to create.
    #[arg(long, default_value_t = 500)]
    pub members: u64,
    /// Folder for the demo's files (default: a new temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// After the steps, keep `serve` with the admin pages running (and the simulator behind
    /// it) until Ctrl-C, and print the pages' address and password.
    #[arg(long)]
    pub serve: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Only this audience (repeatable); all configured audiences by default.
    #[arg(long = "audience", value_name = "NAME")]
    pub audiences: Vec<String>,
    /// Print the plan and write nothing anywhere.
    #[arg(long)]
    pub dry_run: bool,
    /// Ignore stored content hashes.
    #[arg(long)]
    pub full: bool,
    /// Print the run report as JSON (one object per audience and line).
    #[arg(long)]
    pub json: bool,
    /// Proceed even when the run would archive more than the audience allows, or the source
    /// query returned no members (read the `--dry-run` first).
    #[arg(long)]
    pub allow_mass_archive: bool,
}

/// An error and the exit code it maps to.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<TemporaryFailure>()) {
        return 75;
    }
    let bad_input = err.chain().any(|e| {
        e.is::<ConfigError>()
            || e.is::<MappingError>()
            || e.is::<UsageError>()
            || e.downcast_ref::<crate::campaigns::CampaignError>()
                .is_some_and(crate::campaigns::CampaignError::is_bad_input)
            || matches!(
                e.downcast_ref::<crate::http::serve::ServeError>(),
                Some(
                    crate::http::serve::ServeError::Mapping(_)
                        | crate::http::serve::ServeError::NoServerSection { .. }
                )
            )
            || matches!(
                e.downcast_ref::<SyncError>(),
                Some(
                    SyncError::Mapping(_)
                        | SyncError::MergeFieldConflict { .. }
                        | SyncError::TagsNotTaken { .. }
                )
            )
    });
    if bad_input { 2 } else { 1 }
}

pub use crate::process::{TemporaryFailure, UsageError};

/// The app's state database, opened (or created) for a command that writes to it.
async fn open_store(app: &App) -> anyhow::Result<&crate::store::Store> {
    app.store().await.context("cannot open the state database")
}

/// The app's provider clients, for a command that works on `audiences`: each audience's
/// provider must be connected. The config already refuses an audience whose provider has no
/// section, so a provider missing here is one this version has no client for.
async fn require_providers<'a>(
    app: &'a App,
    audiences: &[&crate::config::AudienceConfig],
) -> anyhow::Result<&'a crate::providers::ProviderSet> {
    let providers = app
        .providers()
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot set up the provider clients"))?;
    for a in audiences {
        if providers.get(a.provider).is_none() {
            return Err(UsageError(format!(
                "{}: audience `{}` uses provider {}, which this version cannot connect to",
                app.config.path.display(),
                a.name,
                a.provider.as_str()
            ))
            .into());
        }
    }
    Ok(providers)
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logging starts before a command loads its config, so the config's `[log] format` is read
    // on its own here; the flag (or MAILBRIDGE_LOG_FORMAT) wins over it. A config that cannot be
    // read leaves the log as text, and the command's own load reports why.
    let format = cli
        .log_format
        .or_else(|| crate::config::log_format_in_file(&cli.config))
        .unwrap_or_default();
    // The demo prints its own story on stdout; only warnings go to the log there.
    init_tracing(
        if matches!(cli.command, Command::Demo(_)) {
            "warn"
        } else {
            "info"
        },
        format,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The process's log on stderr: the level from MAILBRIDGE_LOG (else `default_level`), written
/// as `format` says.
fn init_tracing(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        // `timestamp`, `level`, `message` and the event's fields at the top level; `target`;
        // `span` and `spans` carry the fields of the spans it happened in (run, job, message ids).
        LogFormat::Json => builder
            .json()
            .event_format(log_json::WithMessage(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_target(true),
            ))
            .try_init(),
    };
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo(args) => {
            demo::run(DemoOptions {
                members: args.members,
                dir: args.dir,
                serve: args.serve,
            })
            .await?;
            Ok(0)
        }
        Command::Migrate => {
            let app = App::load(&cli.config)?;
            let store = app.store().await?;
            let applied = store.migrate().await?;
            app.close().await;
            println!(
                "state database at {} is up to date ({applied} migration(s) applied)",
                store.location()
            );
            Ok(0)
        }
        Command::Auth(command) => auth::run(&cli.config, command).await,
        Command::Sync(args) => sync::sync_command(&cli.config, args).await,
        Command::Campaign(command) => campaigns::run(&cli.config, command).await,
        Command::Simulate(args) => {
            crate::simulator::run_standalone(args.bind)
                .await
                .with_context(|| format!("cannot run the simulator on {}", args.bind))?;
            Ok(0)
        }
        Command::Serve(args) => {
            let app = App::load(&cli.config)?;
            let handle = crate::http::serve::start(app, args.bind.as_deref()).await?;
            tracing::info!(addr = %handle.addr, "mailbridge serve is listening");
            let state = handle.state.clone();
            let grace = crate::process::shutdown_grace(&state.config);
            // SIGTERM/SIGINT: requests in flight finish; leased work (a sync, a campaign push, a
            // relay claim) stops before its next side effect and is handed back; every worker
            // releases its leases; exit 0 within the grace period, else 1 naming what was left.
            let ended = crate::process::until_terminated(
                grace,
                Some(&state.store),
                |stop| {
                    let state = state.clone();
                    async move {
                        tokio::select! {
                            () = stop.cancelled() => state.shutdown.cancel(),
                            () = state.shutdown.cancelled() => {}
                        }
                        handle.wait().await
                    }
                },
                || "the server's background tasks still running (syncs, pushes, deliveries, or connections)".to_owned(),
            )
            .await;
            ended?.context("the HTTP server failed")?;
            Ok(0)
        }
        Command::Send(args) => relay::send(&cli.config, args).await,
        Command::Relay(args) => relay::relay(&cli.config, args).await,
        Command::Bounce(command) => bounce::run(&cli.config, command).await,
        Command::Dkim(command) => dkim::run(command),
        Command::Doctor(args) => doctor::run(&cli.config, args).await,
        Command::Admin(command) => admin::run(&cli.config, command).await,
        Command::Pull(args) => {
            let sync = SyncArgs {
                audiences: args.audiences,
                dry_run: false,
                full: false,
                json: args.json,
                allow_mass_archive: false,
            };
            sync::run_sync(&cli.config, sync, true).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::mapping::Mapping;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_and_mapping_errors_exit_2_others_1() {
        let cfg = Config::from_str_with_env(std::path::Path::new("x.toml"), "nonsense", &|_| None)
            .unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::from(cfg)), 2);
        let mapping = Mapping::from_str(std::path::Path::new("m.toml"), "[source]").unwrap_err();
        assert_eq!(
            exit_code(&anyhow::Error::from(SyncError::Mapping(mapping))),
            2
        );
        assert_eq!(exit_code(&anyhow::anyhow!("connection refused")), 1);
    }
}
