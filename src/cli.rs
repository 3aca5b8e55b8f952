//! The command line: parsing (clap) and running each command. Exit codes (DESIGN.md): 0 success,
//! 1 failure, 2 bad usage or bad config/mapping, 3 finished with some members failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::demo::{self, DemoOptions};
use crate::mapping::{Mapping, MappingError};
use crate::progress::Progress;
use crate::source::MemberSource;
use crate::store::{OpenMode, Store};
use crate::sync::report::{RunReport, new_run_id};
use crate::sync::{self, PlanOptions, SyncError};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A self-contained tour on embedded defaults: no credentials, no network.
    Demo(DemoArgs),
    /// Creates or upgrades the state database (idempotent).
    Migrate,
    /// Mirrors the member database into the configured audiences.
    Sync(SyncArgs),
    /// Runs the provider simulator (a stateful local Mailchimp) until interrupted.
    Simulate(SimulateArgs),
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
}

/// An error and the exit code it maps to.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|e| {
        e.is::<ConfigError>()
            || e.is::<MappingError>()
            || e.is::<UsageError>()
            || matches!(e.downcast_ref::<SyncError>(), Some(SyncError::Mapping(_)))
    });
    if bad_input { 2 } else { 1 }
}

/// Bad usage found after parsing (e.g. an unknown audience name).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; only warnings go to the log there.
    init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
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

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo(args) => {
            demo::run(DemoOptions {
                members: args.members,
                dir: args.dir,
            })
            .await?;
            Ok(0)
        }
        Command::Migrate => {
            let config = Config::load(&cli.config)?;
            let store = Store::open(&config.state.url, OpenMode::ReadWrite).await?;
            let applied = store.migrate().await?;
            store.close().await;
            println!(
                "state database at {} is up to date ({applied} migration(s) applied)",
                store.location()
            );
            Ok(0)
        }
        Command::Sync(args) => sync_command(&cli.config, args).await,
        Command::Simulate(args) => {
            crate::simulator::run_standalone(args.bind)
                .await
                .with_context(|| format!("cannot run the simulator on {}", args.bind))?;
            Ok(0)
        }
    }
}

async fn sync_command(config_path: &std::path::Path, args: SyncArgs) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let mapping = Mapping::load(&config.members.mapping)?;
    let audiences = config
        .select_audiences(&args.audiences)
        .map_err(UsageError)?;
    if audiences.is_empty() {
        return Err(UsageError(format!(
            "{}: no [[audiences]] are configured",
            config.path.display()
        ))
        .into());
    }
    for a in &audiences {
        mapping.audience(&a.name)?;
    }
    if !args.dry_run {
        anyhow::bail!(
            "applying a sync to the provider is not available in this version; run `mailbridge sync --dry-run` to see the plan"
        );
    }
    let started_at = crate::store::now_text();
    let store = Store::open(&config.state.url, OpenMode::ReadOnly)
        .await
        .context("cannot read the state database")?;
    let source = MemberSource::connect(&config.members.url, true).await?;
    let progress = if args.json {
        Progress::hidden()
    } else {
        Progress::auto()
    };
    let result = sync::plan(
        &mapping,
        &audiences,
        &store,
        &source,
        PlanOptions { full: args.full },
        &progress,
    )
    .await;
    source.close().await;
    store.close().await;
    let plans = result?;
    let finished_at = crate::store::now_text();
    for plan in &plans {
        if args.json {
            let report =
                RunReport::from_plan(new_run_id(), started_at.clone(), finished_at.clone(), plan);
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", plan.to_table(50));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
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
