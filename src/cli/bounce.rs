//! `mailbridge bounce parse FILE... [--json]` (in `parse`: no config, no database), and
//! `mailbridge bounce ingest [FILE | -] [--dry-run] [--json]`: one bounce mail, as an MTA pipe
//! alias hands it over (stdin), applied to the outbox, the suppression list and the member DB.
//! Exit codes: 0 applied or nothing to do (an auto-reply, a duplicate, a bounce of a message we
//! do not know); 1 refused (a forged or unknown VERP address) or a failure; 2 bad usage or
//! config; 3 recorded, but the write-back to the member DB failed (retried by `serve`).

mod fetch;
mod parse;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::app::App;
use crate::bounces::ingest::{self, Ingest, IngestError, IngestResult, Outcome};
use crate::domain::ReportError;
use crate::events::apply::SoftBouncePolicy;
use crate::process::UsageError;

#[derive(Subcommand, Debug)]
pub enum BounceCommand {
    /// Parses and classifies bounce mails (DSNs, MTA bounce texts, ARF reports, auto-replies);
    /// reads no config and no database.
    Parse(parse::ParseArgs),
    /// Applies one bounce mail (RFC 5322, DSN or not) from FILE or stdin: a hard bounce or a
    /// complaint suppresses the address and marks the member; soft bounces are counted.
    Ingest(IngestArgs),
    /// Reads the bounce mailbox (`[bounces.imap]`) once: ingests every message in the folder,
    /// then moves or deletes it.
    Fetch(fetch::FetchArgs),
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// The mail; `-` or nothing reads stdin (an MTA pipe alias).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config_path: &Path, command: BounceCommand) -> anyhow::Result<u8> {
    match command {
        BounceCommand::Parse(args) => parse::parse(&args),
        BounceCommand::Ingest(args) => ingest_command(config_path, args).await,
        BounceCommand::Fetch(args) => fetch::run(config_path, args).await,
    }
}

/// What `--json` prints: the ingest result and what writing it back did.
#[derive(Serialize)]
struct Printed<'a> {
    #[serde(flatten)]
    result: &'a IngestResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    writeback: Option<Writeback>,
}

#[derive(Serialize, Default)]
pub(super) struct Writeback {
    bounces: u64,
    complaints: u64,
    suppressed: u64,
    /// Events about an address no member has (suppressed all the same).
    unmatched: u64,
    /// The process the write-back was left to (a running `serve`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    left_to: Option<String>,
    errors: Vec<ReportError>,
}

/// Reads at most the accepted size and one byte more (to tell a mail that is too large).
fn read_mail(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let limit = u64::try_from(ingest::MAX_BOUNCE_BYTES).unwrap_or(u64::MAX) + 1;
    let mut raw = Vec::new();
    match file {
        None => {
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut raw)
                .context("cannot read the bounce mail from stdin")?;
        }
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut raw)
                .context("cannot read the bounce mail from stdin")?;
        }
        Some(p) => {
            std::fs::File::open(p)
                .and_then(|f| f.take(limit).read_to_end(&mut raw))
                .map_err(|e| UsageError(format!("{}: {e}", p.display())))?;
        }
    }
    Ok(raw)
}

/// `e` as a [`super::TemporaryFailure`] (exit 75), its whole message kept.
fn temporary(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(super::TemporaryFailure(format!("{e:#}")))
}

async fn ingest_command(config_path: &Path, args: IngestArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let raw = read_mail(args.file.as_deref())?;
    // From here on, a failure to store the mail may pass (the state DB down, a disk full): exit
    // 75, so the MTA that piped it keeps it and tries again, and no bounce is lost.
    let store = super::open_store(&app).await.map_err(temporary)?;
    if args.dry_run {
        // A dry run writes nothing, not even the schema.
        store
            .ensure_migrated()
            .await
            .context("the state database is not ready (run `mailbridge migrate`)")?;
    } else {
        store
            .migrate()
            .await
            .context("cannot migrate the state database")
            .map_err(temporary)?;
    }
    let relay = app.relay();
    let ctx = Ingest {
        store,
        relay: relay.as_deref(),
    };
    let result = match ingest::ingest(ctx, &raw, args.dry_run).await {
        Ok(r) => r,
        Err(IngestError::TooLarge { size, max }) => {
            return Err(UsageError(format!(
                "the bounce mail is {size} bytes or more, more than the {max} accepted"
            ))
            .into());
        }
        Err(e) => {
            return Err(temporary(
                anyhow::Error::new(e).context("cannot ingest the bounce mail"),
            ));
        }
    };
    let writeback = if result.event_ids.is_empty() {
        None
    } else {
        Some(write_back(&app, &result.event_ids).await)
    };
    if args.json {
        let printed = Printed {
            result: &result,
            writeback,
        };
        println!(
            "{}",
            serde_json::to_string(&printed).context("cannot print the result")?
        );
        return Ok(exit_code(&result, printed.writeback.as_ref()));
    }
    print_human(&result, writeback.as_ref());
    if result.is_refusal() {
        eprintln!("error: {}", result.message);
    }
    Ok(exit_code(&result, writeback.as_ref()))
}

fn exit_code(result: &IngestResult, writeback: Option<&Writeback>) -> u8 {
    if result.is_refusal() {
        1
    } else if writeback.is_some_and(|w| !w.errors.is_empty()) {
        3
    } else {
        0
    }
}

/// Writes the recorded events back now (the events engine, under the writeback lease). A member
/// DB that cannot be reached leaves them for `serve`; the suppressions apply at once all the same.
async fn write_back(app: &App, event_ids: &[i64]) -> Writeback {
    let mut out = Writeback::default();
    let failed = |out: &mut Writeback, code: &'static str, message: String| {
        out.errors.push(ReportError {
            member_key: None,
            email: None,
            code: code.into(),
            message: message.into(),
        });
    };
    let (mapping, store) = match (app.mapping(), app.store().await) {
        (Ok(m), Ok(s)) => (m, s),
        (Err(e), _) => {
            failed(&mut out, "mapping", crate::error_chain(&e));
            return out;
        }
        (_, Err(e)) => {
            failed(&mut out, "state_db", crate::error_chain(&e));
            return out;
        }
    };
    let source = match app.member_source().await {
        Ok(s) => s,
        Err(e) => {
            // The suppression list is ours: the address gets no more mail now, whatever the
            // member DB's state.
            if let Err(e) = crate::events::apply::suppress_ahead(store, &app.config.audiences).await
            {
                tracing::warn!(
                    "Suppressing ahead of the write-back failed: {}",
                    crate::error_chain(&e)
                );
            }
            failed(
                &mut out,
                "member_db_unreachable",
                format!(
                    "{}; the bounce is recorded and `mailbridge serve` writes it back",
                    crate::error_chain(&e)
                ),
            );
            return out;
        }
    };
    match crate::events::apply_now(
        mapping,
        store,
        &source,
        SoftBouncePolicy::of_config(&app.config),
        event_ids,
    )
    .await
    {
        Ok(done) => {
            out.bounces = done.bounces;
            out.complaints = done.unsubscribes;
            out.suppressed = done.suppressed;
            out.unmatched = done.unmatched;
            out.left_to = done.left_to;
            out.errors = done.errors;
        }
        Err(e) => failed(&mut out, "writeback_failed", crate::error_chain(&e)),
    }
    out
}

/// The write-back's line (and its errors on stderr), as `ingest` and `fetch` print it.
fn print_writeback(w: &Writeback) {
    if let Some(holder) = &w.left_to {
        println!("  write-back left to {holder}");
    } else {
        println!(
            "  written back: {} bounce(s), {} complaint(s), {} address(es) suppressed, {} without a member",
            w.bounces, w.complaints, w.suppressed, w.unmatched
        );
    }
    for e in &w.errors {
        eprintln!("  {}: {}", e.code, e.message);
    }
}

fn print_human(result: &IngestResult, writeback: Option<&Writeback>) {
    let would = if result.dry_run { " (dry run)" } else { "" };
    println!(
        "bounce mail {}: {}{would}: {}",
        &result.id[..12.min(result.id.len())],
        result.outcome.as_str(),
        result.message
    );
    if let Some(found) = &result.found {
        println!(
            "  message {} (outbox {}, found by {}, {})",
            found.message_id, found.outbox_id, found.by, found.status
        );
    }
    for e in &result.effects {
        println!(
            "  {}: {} ({}): {}",
            e.email,
            e.action,
            e.reason.as_str(),
            e.note
        );
    }
    if result.dry_run && result.outcome == Outcome::Applied {
        let mut would = Vec::new();
        if result.effects.iter().any(|e| e.action == "hard_bounce") {
            would.push("suppress the address and write the member back as cleaned");
        }
        if result.effects.iter().any(|e| e.action == "complained") {
            would.push("suppress the address and write the member back as complained");
        }
        if result.effects.iter().any(|e| e.action == "soft_bounce") {
            would.push("count a soft bounce (suppressed and written back as cleaned at [server] soft_bounce_threshold)");
        }
        if let Some(status) = result.outbox_status {
            would.push(match status {
                "bounced" => "set the message to bounced",
                _ => "change the message's status",
            });
        }
        println!("  would: {}", would.join("; "));
    }
    if let Some(w) = writeback {
        print_writeback(w);
    }
}
