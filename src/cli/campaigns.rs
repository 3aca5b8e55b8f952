//! `mailbridge campaign push` and `mailbridge campaign status`: flags, reading the content files,
//! printing the record. Exit codes come from [`CampaignError::is_bad_input`] (2) or 1.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::app::App;
use crate::campaigns::push::{self, PushContext};
use crate::campaigns::{CampaignError, CampaignRecord, PushRequest};
use crate::progress::Progress;

pub use crate::process::{PAUSE_ENV, PAUSE_MARKER, test_pause_hook};

#[derive(Subcommand, Debug)]
pub enum CampaignCommand {
    /// Syncs the audience, then creates and sends (or schedules) a campaign, at most once per key.
    Push(Box<PushArgs>),
    /// Shows a pushed campaign's state by its key.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The audience (`[[audiences]] name`).
    #[arg(long, value_name = "NAME")]
    pub audience: String,
    /// The subject line (at most 150 characters).
    #[arg(long)]
    pub subject: String,
    /// The HTML content (a UTF-8 file).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// The plain-text part (a UTF-8 file); derived from the HTML when absent.
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// The "from" name; default: the audience's `from_name`.
    #[arg(long)]
    pub from_name: Option<String>,
    /// The reply-to address; default: the audience's `reply_to`.
    #[arg(long, value_name = "EMAIL")]
    pub reply_to: Option<String>,
    /// Only members with this tag.
    #[arg(long, value_name = "TAG")]
    pub segment: Option<String>,
    /// Schedule instead of sending now: an RFC 3339 time on a quarter hour UTC.
    #[arg(long, value_name = "RFC3339")]
    pub schedule: Option<String>,
    /// Send a test email here first (repeatable, at most 5).
    #[arg(long = "test-to", value_name = "EMAIL")]
    pub test_to: Vec<String>,
    /// The idempotency key; default: derived from the audience and the content.
    #[arg(long)]
    pub key: Option<String>,
    /// Skip the preflight sync (refused when the last successful sync is older than
    /// `[campaigns] max_sync_age_minutes`).
    #[arg(long)]
    pub no_sync: bool,
    /// Print the campaign record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The idempotency key the push used (printed by `campaign push`).
    pub key: String,
    /// Print the campaign record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `campaign` subcommand; returns the exit code.
pub async fn run(config_path: &Path, command: CampaignCommand) -> anyhow::Result<u8> {
    match command {
        CampaignCommand::Push(args) => push_command(config_path, *args).await,
        CampaignCommand::Status(args) => status_command(config_path, args).await,
    }
}

fn read_utf8(path: &Path, field: &str) -> Result<String, CampaignError> {
    let bytes = std::fs::read(path).map_err(|e| CampaignError::Invalid {
        field: field.to_owned(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    String::from_utf8(bytes).map_err(|e| CampaignError::Invalid {
        field: field.to_owned(),
        message: format!(
            "{} is not UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
    })
}

async fn push_command(config_path: &Path, args: PushArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let request = PushRequest {
        audience: args.audience,
        subject: args.subject,
        html: read_utf8(&args.html, "--html")?,
        text: args
            .text
            .as_deref()
            .map(|p| read_utf8(p, "--text"))
            .transpose()?,
        from_name: args.from_name,
        reply_to: args.reply_to,
        segment: args.segment,
        schedule: args.schedule,
        test_to: args.test_to,
        no_sync: args.no_sync,
    };
    let mapping = app.mapping()?;
    let audience: Vec<_> = app
        .config
        .audiences
        .iter()
        .filter(|a| a.name == request.audience)
        .collect();
    let providers = super::require_providers(&app, &audience).await?;
    let store = super::open_store(&app).await?;
    let source = app.member_source().await?;
    let progress = if args.json {
        Progress::hidden()
    } else {
        Progress::auto()
    };
    let ctx = PushContext {
        config: &app.config,
        mapping,
        store,
        source: &source,
        providers,
        progress: &progress,
        after_create: test_pause_hook(),
        stage: None,
    };
    let result = push::push(&ctx, &request, args.key.as_deref()).await;
    app.close().await;
    let outcome = result?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome.record)?);
    } else {
        if let Some(r) = &outcome.preflight {
            println!(
                "Preflight sync of `{}`: created {}, updated {}, archived {}, {} unsubscribe(s) and {} bounce(s) pulled",
                r.audience,
                r.created,
                r.updated,
                r.archived,
                r.unsubscribes_pulled,
                r.bounces_pulled
            );
        }
        if !outcome.acted && outcome.record.state.is_final() {
            println!("This campaign was pushed before with the same key: nothing was sent again.");
        } else if !outcome.acted {
            println!(
                "Another push is working on this key, or one stopped less than a minute ago and its lease has not run out yet: nothing was done. Ask again with `mailbridge campaign status`, or push again in a minute."
            );
        }
        print_record(&outcome.record);
    }
    for a in &audience {
        if let Some(client) = providers.get(a.provider) {
            let calls = client.calls();
            tracing::info!(
                reads = calls.read,
                writes = calls.write,
                provider = a.provider.display_name(),
                "Provider calls made by this push (the preflight sync included)."
            );
        }
    }
    Ok(0)
}

async fn status_command(config_path: &Path, args: StatusArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?.read_only();
    let store = super::open_store(&app).await?;
    let result = push::status(store, &args.key).await;
    app.close().await;
    let record = result?;
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        print_record(&record);
    }
    Ok(0)
}

fn print_record(r: &CampaignRecord) {
    println!(
        "Campaign `{}` (audience `{}`): {}",
        r.key, r.audience, r.state
    );
    let rows = [
        (
            "provider campaign id",
            r.provider_campaign_id.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "recipients",
            r.recipients.map_or_else(|| "-".into(), |n| n.to_string()),
        ),
        ("content hash", r.content_hash.clone()),
        ("created at", r.created_at.clone()),
        ("updated at", r.updated_at.clone()),
    ];
    for (label, value) in rows {
        println!("  {label:<22}{value}");
    }
    if let Some(e) = &r.last_error {
        println!("  {:<22}{e}", "last error");
    }
}
