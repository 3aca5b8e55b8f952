//! `mailbridge bounce fetch [--json]`: one run over the bounce mailbox (`[bounces.imap]`), then
//! the write-back of what it applied. Exit codes: 0 every message handled; 1 the mailbox could
//! not be read, or a message was left in the folder (too large, or a failure stopped the run);
//! 2 no `[bounces.imap]`; 3 handled, but the write-back to the member DB failed (retried by
//! `serve`).

use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{Writeback, print_writeback, write_back};
use crate::app::App;
use crate::bounces::imap::{self, FetchReport};
use crate::bounces::ingest::Ingest;
use crate::process::UsageError;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Printed<'a> {
    #[serde(flatten)]
    report: &'a FetchReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    writeback: Option<Writeback>,
}

pub(super) async fn run(config_path: &Path, args: FetchArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let Some(config) = app.config.bounces.imap.clone() else {
        return Err(UsageError(format!(
            "{}: [bounces.imap] is not configured; `bounce fetch` reads the mailbox it names",
            config_path.display()
        ))
        .into());
    };
    let store = crate::cli::open_store(&app).await?;
    store
        .migrate()
        .await
        .context("cannot migrate the state database")?;
    let relay = app.relay();
    let ctx = Ingest {
        store,
        relay: relay.as_deref(),
    };
    // SIGTERM/SIGINT: the message being ingested finishes, the rest stays in the folder for the
    // next run, and the command exits 0 (unless something else went wrong).
    let grace = crate::process::shutdown_grace(&app.config);
    let (fetched, terminated) = crate::process::until_terminated(
        grace,
        Some(store),
        |stop| async move {
            let r = imap::fetch(ctx, &config, Some(&stop)).await;
            (r, stop.is_cancelled())
        },
        || "the bounce mail being ingested (it stays in the folder and is read again)".to_owned(),
    )
    .await?;
    let report = fetched.context("cannot read the bounce mailbox")?;
    // Messages left because of the shutdown are handed back, not a failure.
    let handed_back = terminated && report.stopped.is_some();
    if handed_back {
        eprintln!(
            "Stopped for the shutdown: {} message(s) left in the folder for the next run",
            report.left
        );
    }
    let writeback = if report.event_ids.is_empty() {
        None
    } else {
        Some(write_back(&app, &report.event_ids).await)
    };
    let code = if (report.left > 0 || report.stopped.is_some()) && !handed_back {
        1
    } else if writeback.as_ref().is_some_and(|w| !w.errors.is_empty()) {
        3
    } else {
        0
    };
    if args.json {
        let printed = Printed {
            report: &report,
            writeback,
        };
        println!(
            "{}",
            serde_json::to_string(&printed).context("cannot print the result")?
        );
        return Ok(code);
    }
    println!(
        "bounce mailbox {} {}: {} fetched, {} applied, {} refused, {} duplicates, {} ignored, {} left",
        report.server,
        report.folder,
        report.fetched,
        report.applied,
        report.refused,
        report.duplicates,
        report.ignored,
        report.left
    );
    for m in &report.messages {
        let size = m.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        match &m.ingest {
            Some(r) => println!("  uid {}{size}: {}: {}", m.uid, m.note, r.message),
            None => println!("  uid {}{size}: {}", m.uid, m.note),
        }
    }
    if let Some(w) = &writeback {
        print_writeback(w);
    }
    if let Some(why) = &report.stopped {
        eprintln!("error: the run stopped, the rest is left for the next one: {why}");
    } else if report.left > 0 {
        eprintln!(
            "error: {} message(s) left in {}: see the lines above",
            report.left, report.folder
        );
    }
    Ok(code)
}
