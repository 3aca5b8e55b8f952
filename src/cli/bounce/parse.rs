//! `mailbridge bounce parse FILE... [--json]`: what the bounce parser makes of each file. Pure:
//! no config, no database.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::bounces::{self, BounceReport};

#[derive(Args, Debug)]
pub struct ParseArgs {
    /// The messages, one raw RFC 5322 message per file.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One JSON object per file and line.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints for one file: the report with the file's name first.
#[derive(Serialize)]
struct FileReport<'a> {
    file: String,
    #[serde(flatten)]
    report: &'a BounceReport,
}

/// Prints each readable file's report; a file that cannot be read is named on stderr and makes
/// the exit code 1, the other files are still printed.
pub(super) fn parse(args: &ParseArgs) -> anyhow::Result<u8> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for path in &args.files {
        let raw = match std::fs::read(path) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let report = bounces::parse(&raw);
        let file = path.display().to_string();
        if args.json {
            let line = serde_json::to_string(&FileReport {
                file,
                report: &report,
            })
            .context("cannot encode the report as JSON")?;
            writeln!(out, "{line}").context("cannot write to stdout")?;
        } else {
            for line in human_lines(&file, &report) {
                writeln!(out, "{line}").context("cannot write to stdout")?;
            }
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(if failed > 0 { 1 } else { 0 })
}

/// One readable line per recipient (or one for the file when there is none).
fn human_lines(file: &str, r: &BounceReport) -> Vec<String> {
    let kind = serde_json::to_value(r.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if r.recipients.is_empty() {
        let why = r
            .not_bounce_reason
            .as_deref()
            .unwrap_or("no recipient found");
        return vec![format!("{file}: {kind}: {why}")];
    }
    r.recipients
        .iter()
        .map(|p| {
            let hard = match p.hard {
                Some(true) => "hard",
                Some(false) => "soft",
                None => "-",
            };
            let mut line = format!("{file}: {kind} {} {} {hard}", p.email, p.reason.as_str());
            if let Some(s) = &p.status {
                line.push_str(&format!(" status={s}"));
            }
            if let Some(c) = p.reply_code {
                line.push_str(&format!(" reply={c}"));
            }
            if let Some(t) = &r.feedback_type {
                line.push_str(&format!(" feedback={t}"));
            }
            if let Some(d) = &p.diagnostic {
                let short: String = d.chars().take(120).collect();
                line.push_str(&format!(" \"{short}\""));
            }
            line
        })
        .collect()
}
