//! `mailbridge sync [--dry-run]` and `mailbridge pull`: select the audiences, run the plan or
//! the sync, print the table or the JSON report.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{SyncArgs, UsageError};
use crate::app::App;
use crate::config::AudienceConfig;
use crate::progress::Progress;
use crate::sync::apply::{self, SyncContext, SyncOptions};
use crate::sync::report::{RunReport, new_run_id};
use crate::sync::{self, PlanOptions, SyncError};

/// The audiences `--audience` selects (all by default), each with a mapping section.
fn selected<'a>(app: &'a App, names: &[String]) -> anyhow::Result<Vec<&'a AudienceConfig>> {
    let mapping = app.mapping()?;
    let audiences = app.config.select_audiences(names).map_err(UsageError)?;
    if audiences.is_empty() {
        return Err(UsageError(format!(
            "{}: no [[audiences]] are configured",
            app.config.path.display()
        ))
        .into());
    }
    for a in &audiences {
        mapping.audience(&a.name)?;
    }
    Ok(audiences)
}

fn progress(json: bool) -> Progress {
    if json {
        Progress::hidden()
    } else {
        Progress::auto()
    }
}

/// `mailbridge sync`: the plan with `--dry-run`, else a real run.
pub async fn sync_command(config_path: &Path, args: SyncArgs) -> anyhow::Result<u8> {
    if !args.dry_run {
        return run_sync(config_path, args, false).await;
    }
    let app = App::load(config_path)?.read_only();
    let audiences = selected(&app, &args.audiences)?;
    let mapping = app.mapping()?;
    let started_at = crate::store::now_text();
    let store = app
        .store()
        .await
        .context("cannot read the state database")?;
    let source = app.member_source().await?;
    let result = sync::dry_run(
        &app.config,
        mapping,
        &audiences,
        store,
        &source,
        PlanOptions { full: args.full },
        &progress(args.json),
    )
    .await;
    let plans = match result {
        Ok(plans) => plans,
        Err(e) => {
            app.close().await;
            return Err(e.into());
        }
    };
    app.close().await;
    let finished_at = crate::store::now_text();
    for plan in plans {
        if args.json {
            let report =
                RunReport::from_plan(new_run_id(), started_at.clone(), finished_at.clone(), plan);
            // Written as it is serialised: the report of a large audience is megabytes of JSON.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
            out.flush()?;
        } else {
            println!("{}", plan.to_table(50));
        }
    }
    Ok(0)
}

/// A real sync (or, with `pull_only`, a pull) of the selected audiences. Exit 0, 3 when some
/// members failed; errors (lock held, guardrail, provider) exit 1.
pub async fn run_sync(config_path: &Path, args: SyncArgs, pull_only: bool) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let audiences = selected(&app, &args.audiences)?;
    let mapping = app.mapping()?;
    let providers = super::require_providers(&app, &audiences).await?;
    let store = super::open_store(&app).await?;
    let source = app.member_source().await?;
    let progress = progress(args.json);
    let ctx = SyncContext {
        mapping,
        store,
        source: &source,
        providers,
    };
    let options = SyncOptions {
        full: args.full,
        allow_mass_archive: args.allow_mass_archive,
        pull_only,
    };
    let mut code = 0u8;
    let mut failure = None;
    let webhook = (!pull_only)
        .then(|| crate::providers::WebhookEndpoint::of_config(&app.config))
        .flatten();
    // SIGTERM/SIGINT: the run going on stops before its next provider write, is recorded
    // `interrupted` (the next run resumes from what it committed), releases the audience's lease,
    // and the command exits 0; the audiences after it are not started.
    let current = std::sync::Mutex::new(String::new());
    let grace = crate::process::shutdown_grace(&app.config);
    let (code_out, failure_out, current_ref) = (&mut code, &mut failure, &current);
    let (audiences, webhook, ctx, progress, json) =
        (&audiences, &webhook, &ctx, &progress, args.json);
    let work = move |stop: tokio_util::sync::CancellationToken| async move {
        let (current, code, failure) = (current_ref, code_out, failure_out);
        for a in audiences {
            if stop.is_cancelled() {
                eprintln!("Stopped for the shutdown before audience `{}`", a.name);
                break;
            }
            if let Ok(mut c) = current.lock() {
                *c = format!("the sync of audience `{}`", a.name);
            }
            if let Some(target) = &webhook
                && let Some(client) = providers.get(a.provider)
                && let Err(e) = client.ensure_webhook(store, a, target).await
            {
                eprintln!(
                    "error: audience `{}`: registering the webhook failed: {e:#}",
                    a.name
                );
                failure.get_or_insert(SyncError::from(e));
                continue;
            }
            match apply::sync_audience(ctx, a, options, progress).await {
                Ok(report) => {
                    if report.failed > 0 {
                        *code = 3;
                    }
                    if json {
                        println!("{}", serde_json::to_string(&report)?);
                    } else {
                        print_summary(&report, pull_only);
                    }
                }
                Err(SyncError::Store(crate::store::StoreError::Stopped { .. })) => {
                    eprintln!(
                        "Audience `{}`: stopped for the shutdown; the run is recorded interrupted and the next run resumes from what it committed",
                        a.name
                    );
                    break;
                }
                Err(e) => {
                    eprintln!("error: audience `{}`: {e:#}", a.name);
                    failure.get_or_insert(e);
                }
            }
        }
        anyhow::Ok(())
    };
    let ended = crate::process::until_terminated(grace, Some(store), work, || {
        current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| "a sync".to_owned())
    })
    .await;
    match ended {
        Ok(r) => r?,
        Err(abandoned) => {
            app.close().await;
            return Err(abandoned.into());
        }
    }
    app.close().await;
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
