//! The command line: parsing (clap) and running each command. Exit codes (DESIGN.md): 0 success,
//! 1 failure, 2 bad usage or bad config/mapping, 3 finished with some members failed.

pub mod campaigns;
pub mod relay;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::demo::{self, DemoOptions};
use crate::mapping::{Mapping, MappingError};
use crate::progress::Progress;
use crate::providers::mailchimp::MailchimpClient;
use crate::source::MemberSource;
use crate::store::{OpenMode, Store};
use crate::sync::apply::{self, SyncContext, SyncOptions};
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
    /// Mirrors the member database into the configured audiences (pull, then push).
    Sync(SyncArgs),
    /// Runs the provider simulator (a stateful local Mailchimp) until interrupted.
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
                Some(SyncError::Mapping(_) | SyncError::MergeFieldConflict { .. })
            )
    });
    if bad_input { 2 } else { 1 }
}

pub use crate::process::UsageError;

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
        Command::Campaign(command) => campaigns::run(&cli.config, command).await,
        Command::Simulate(args) => {
            crate::simulator::run_standalone(args.bind)
                .await
                .with_context(|| format!("cannot run the simulator on {}", args.bind))?;
            Ok(0)
        }
        Command::Serve(args) => {
            let config = Config::load(&cli.config)?;
            let handle =
                crate::http::serve::start_from_config(config, args.bind.as_deref()).await?;
            tracing::info!(addr = %handle.addr, "mailbridge serve is listening");
            let state = handle.state.clone();
            tokio::select! {
                () = crate::process::termination_signal() => {
                    tracing::info!("shutting down: finishing in-flight requests and tasks");
                    state.shutdown.cancel();
                }
                () = state.shutdown.cancelled() => {}
            }
            handle.wait().await.context("the HTTP server failed")?;
            Ok(0)
        }
        Command::Send(args) => relay::send(&cli.config, args).await,
        Command::Relay(args) => relay::relay(&cli.config, args).await,
        Command::Pull(args) => {
            let sync = SyncArgs {
                audiences: args.audiences,
                dry_run: false,
                full: false,
                json: args.json,
                allow_mass_archive: false,
            };
            run_sync(&cli.config, sync, true).await
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
        return run_sync(config_path, args, false).await;
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

/// A real sync (or, with `pull_only`, a pull) of the selected audiences. Exit 0, 3 when some
/// members failed; errors (lock held, guardrail, provider) exit 1.
async fn run_sync(
    config_path: &std::path::Path,
    args: SyncArgs,
    pull_only: bool,
) -> anyhow::Result<u8> {
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
    let mailchimp = config.mailchimp.as_ref().ok_or_else(|| {
        UsageError(format!(
            "{}: [providers.mailchimp] is missing, but audiences use Mailchimp",
            config.path.display()
        ))
    })?;
    let client = MailchimpClient::new(mailchimp).context("cannot set up the Mailchimp client")?;
    let store = Store::open(&config.state.url, OpenMode::ReadWrite)
        .await
        .context("cannot open the state database")?;
    let source = MemberSource::connect(&config.members.url, false).await?;
    let progress = if args.json {
        Progress::hidden()
    } else {
        Progress::auto()
    };
    let ctx = SyncContext {
        mapping: &mapping,
        store: &store,
        source: &source,
        client: &client,
    };
    let options = SyncOptions {
        full: args.full,
        allow_mass_archive: args.allow_mass_archive,
        pull_only,
    };
    let mut code = 0u8;
    let mut failure = None;
    let webhook = (!pull_only)
        .then(|| crate::sync::webhooks::target(&config))
        .flatten();
    for a in &audiences {
        if let Some(target) = &webhook
            && let Err(e) = crate::sync::webhooks::ensure(&client, &store, a, target).await
        {
            eprintln!(
                "error: audience `{}`: registering the webhook failed: {e:#}",
                a.name
            );
            failure.get_or_insert(SyncError::from(e));
            continue;
        }
        match apply::sync_audience(&ctx, a, options, &progress).await {
            Ok(report) => {
                if report.failed > 0 {
                    code = 3;
                }
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_summary(&report, pull_only);
                }
            }
            Err(e) => {
                eprintln!("error: audience `{}`: {e:#}", a.name);
                failure.get_or_insert(e);
            }
        }
    }
    source.close().await;
    store.close().await;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(code),
    }
}

fn print_summary(r: &RunReport, pull_only: bool) {
    let what = if pull_only { "pull" } else { "sync" };
    println!(
        "Audience `{}` ({}): {what} finished",
        r.audience, r.provider
    );
    let mut rows = vec![
        ("unsubscribes pulled", r.unsubscribes_pulled),
        ("bounces pulled", r.bounces_pulled),
    ];
    if !pull_only {
        rows.extend([
            ("members read", r.members_read),
            ("created", r.created),
            ("updated", r.updated),
            ("archived", r.archived),
            ("unchanged", r.unchanged),
            ("skipped (invalid)", r.skipped_invalid),
            ("skipped (opted out)", r.skipped_opted_out),
            ("failed", r.failed),
        ]);
    }
    rows.extend([
        ("API reads", r.api_calls.read),
        ("API writes", r.api_calls.write),
    ]);
    for (label, n) in rows {
        println!("  {label:<22}{n:>10}");
    }
    if !r.errors.is_empty() {
        println!("\n  Failed members:");
        for e in r.errors.iter().take(50) {
            println!(
                "    member {:<10} {:<36} {:<24} {}",
                e.member_key.as_deref().unwrap_or("?"),
                e.email.as_deref().unwrap_or(""),
                e.code,
                e.message
            );
        }
        if r.errors.len() > 50 {
            println!(
                "    … {} more (use --json for the full list)",
                r.errors.len() - 50
            );
        }
    }
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
