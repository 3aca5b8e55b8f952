//! `/admin/runs`: the latest sync runs, one run's report with its per-member failures, and the
//! "run now" and "dry run" buttons (the run is queued as a job like `POST /v1/sync`; the dry run
//! plans from the member DB and the state DB and writes nothing, as `sync --dry-run`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{self, Nav, status, when, when_opt};
use super::session::{Admin, AdminForm, PageError};
use crate::campaigns::jobs;
use crate::http::Shared;
use crate::progress::Progress;
use crate::sync::plan::{MemberNote, Plan};
use crate::sync::report::new_run_id;
use crate::sync::{PlanOptions, runs};

/// Runs listed on the page.
const LISTED: i64 = 100;
/// Members listed per section of a report or plan.
const NOTES_SHOWN: usize = 500;

/// The buttons to run or plan an audience.
fn actions(admin: &Admin, state: &Shared) -> Markup {
    html! {
        @if !state.config.audiences.is_empty() {
            form method="post" action="/admin/runs/start" {
                (layout::csrf(admin))
                label for="audience" { "Audience" }
                select #audience name="audience" {
                    @for a in &state.config.audiences { option value=(a.name) { (a.name) } }
                }
                button type="submit" name="do" value="run" { "Run now" }
                " "
                button.secondary type="submit" formaction="/admin/runs/dry-run" { "Dry run" }
            }
        }
    }
}

pub async fn list(admin: Admin, State(state): State<Shared>) -> Result<Response, PageError> {
    let runs = runs::list(&state.store, None, LISTED)
        .await
        .map_err(|e| PageError::unavailable("reading the sync runs", e))?;
    let body = html! {
        (actions(&admin, &state))
        @if runs.is_empty() {
            p { "No sync run yet." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Started" } th { "Audience" } th { "Status" } th { "Took" } th.num { "Created" } th.num { "Updated" } th.num { "Archived" } th.num { "Failed" } } }
                    tbody {
                        @for run in &runs {
                            @let counts = run.report.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok());
                            @let n = |k: &str| counts.as_ref().and_then(|v| v.get(k)).and_then(Value::as_u64);
                            tr {
                                td { a href=(format!("/admin/runs/{}", run.run_id)) { (when(&run.started_at)) } }
                                td { (run.audience) }
                                td { (status(&run.status)) }
                                td { (layout::duration(&run.started_at, run.finished_at.as_deref())) }
                                @for k in ["created", "updated", "archived", "failed"] {
                                    td.num { (n(k).map_or_else(|| "—".to_owned(), |v| v.to_string())) }
                                }
                            }
                        }
                    }
                }
            }
            p.muted { "The latest " (LISTED) " runs." }
        }
    };
    Ok(layout::page("Sync runs", &admin, Nav::Runs, body).into_response())
}

/// A table of members (key, address, code, reason), the first [`NOTES_SHOWN`].
fn notes(id: &str, title: &str, notes: &[Value]) -> Markup {
    html! {
        @if !notes.is_empty() {
            h2 id=(id) { (title) " (" (notes.len()) ")" }
            div.table-wrap {
                table aria-labelledby=(id) {
                    thead { tr { th { "Member" } th { "Email" } th { "Code" } th { "Reason" } } }
                    tbody {
                        @for n in notes.iter().take(NOTES_SHOWN) {
                            @let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                            tr { td { (s("member_key")) } td { (s("email")) } td { code { (s("code")) } } td { (s("message")) } }
                        }
                    }
                }
            }
            @if notes.len() > NOTES_SHOWN { p.muted { "The first " (NOTES_SHOWN) " of " (notes.len()) "; the API (" code { "GET /v1/sync/{run_id}" } ") has them all." } }
        }
    }
}

pub async fn show(
    admin: Admin,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let run = runs::get(&state.store, &id)
        .await
        .map_err(|e| PageError::unavailable("reading the run", e))?;
    let job = jobs::sync_job(&state.store, &id)
        .await
        .map_err(|e| PageError::unavailable("reading the run", e))?;
    let body = match (run, job) {
        (Some(run), _) => {
            let report: Option<Value> = run
                .report
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok());
            let n = |k: &str| {
                report
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let list = |k: &str| {
                report
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            html! {
                dl {
                    dt { "Audience" } dd { (run.audience) " (" (run.provider) ")" }
                    dt { "Status" } dd { (status(&run.status)) }
                    dt { "Started" } dd { (when(&run.started_at)) }
                    dt { "Finished" } dd { (when_opt(run.finished_at.as_deref())) }
                    dt { "Took" } dd { (layout::duration(&run.started_at, run.finished_at.as_deref())) }
                    @if report.is_none() {
                        dt { "Step" } dd { (run.step.clone().unwrap_or_default()) }
                        dt { "Members committed" } dd { (run.committed) }
                    }
                }
                @if let Some(r) = &report {
                    table.summary {
                        tbody {
                            @for (k, label) in [("members_read", "Members read"), ("created", "Created"), ("updated", "Updated"), ("archived", "Archived"), ("unchanged", "Unchanged"), ("skipped_invalid", "Skipped (invalid)"), ("skipped_opted_out", "Skipped (opted out)"), ("failed", "Failed"), ("unsubscribes_pulled", "Unsubscribes pulled"), ("bounces_pulled", "Bounces pulled")] {
                                tr { th { (label) } td.num { (n(k)) } }
                            }
                        }
                    }
                    @if let Some(w) = r.get("warning").and_then(Value::as_str) { p.error { (w) } }
                    (notes("failures", "Failed members", &list("errors")))
                    (notes("skipped", "Skipped members", &list("skipped")))
                    (notes("archives", "Archived", &list("archives")))
                }
                (actions(&admin, &state))
            }
        }
        (None, Some(job)) => html! {
            dl {
                dt { "Audience" } dd { (job.audience) }
                dt { "Status" } dd { (status(&job.status)) }
                dt { "Queued" } dd { (when(&job.enqueued_at)) }
                @if let Some(e) = &job.error { dt { "Note" } dd { (e.message) } }
            }
            p.muted { "The run has not started yet; reload to follow it." }
        },
        (None, None) => {
            return Err(PageError::not_found(format!(
                "There is no sync run `{id}`."
            )));
        }
    };
    Ok(layout::page(&format!("Sync run {id}"), &admin, Nav::Runs, body).into_response())
}

/// The audience a form names, among the configured ones.
fn audience<'a>(
    state: &'a Shared,
    form: &AdminForm,
) -> Result<&'a crate::config::AudienceConfig, PageError> {
    let name = form.fields.required("audience", "The audience")?;
    state
        .config
        .audiences
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| PageError::bad_request(format!("There is no audience `{name}`.")))
}

/// `POST /admin/runs/start`: queues a run of the audience (behind one going on), then shows it.
pub async fn start(State(state): State<Shared>, form: AdminForm) -> Result<Response, PageError> {
    let audience = audience(&state, &form)?;
    state.providers.require(audience.provider).map_err(|e| {
        PageError::new(
            axum::http::StatusCode::CONFLICT,
            format!("{e} on this server."),
        )
    })?;
    let run_id = new_run_id();
    jobs::enqueue_sync(&state.store, &audience.name, &run_id, false)
        .await
        .map_err(|e| PageError::unavailable("queueing the sync", e))?;
    state.start_campaign_jobs();
    tracing::info!(who = %form.admin.who, audience = %audience.name, %run_id, "A sync was started from the admin pages");
    Ok(Redirect::to(&format!("/admin/runs/{run_id}")).into_response())
}

/// `POST /admin/runs/dry-run`: the plan of the audience, as `sync --dry-run` prints it.
pub async fn dry_run(State(state): State<Shared>, form: AdminForm) -> Result<Response, PageError> {
    let audience = audience(&state, &form)?;
    let source = state
        .member_source()
        .await
        .map_err(|e| PageError::unavailable("connecting to the member database", e))?;
    let plans = crate::sync::dry_run(
        &state.config,
        &state.mapping,
        &[audience],
        &state.store,
        &source,
        PlanOptions::default(),
        &Progress::hidden(),
    )
    .await
    .map_err(|e| {
        PageError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("The dry run failed: {e}"),
        )
    })?;
    let body = html! {
        p.notice { "Dry run: nothing was written." }
        @for plan in &plans { (plan_table(plan)) }
        (actions(&form.admin, &state))
    };
    Ok(layout::page(
        &format!("Dry run of {}", audience.name),
        &form.admin,
        Nav::Runs,
        body,
    )
    .into_response())
}

fn plan_table(plan: &Plan) -> Markup {
    let as_values = |n: &[MemberNote]| -> Vec<Value> {
        n.iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect()
    };
    html! {
        table.summary {
            tbody {
                @for (label, n) in [("Members read", plan.members_read), ("Create", plan.create), ("Update", plan.update), ("Archive", plan.archive()), ("Unchanged", plan.unchanged), ("Skipped (invalid)", plan.skipped_invalid), ("Skipped (opted out)", plan.skipped_opted_out)] {
                    tr { th { (label) } td.num { (n) } }
                }
                @if let Some(c) = plan.calls { tr { th { "API calls (about)" } td.num { (c.read + c.write) } } }
            }
        }
        @if let Some(b) = &plan.budget {
            (layout::gauge("Daily request budget after this run", b.used_today + plan.calls.map_or(0, |c| c.read + c.write), b.daily_budget))
        }
        @if let Some(g) = plan.guardrail() { p.error { (g) } }
        (notes("plan-archive", "Would archive", &as_values(&plan.archives)))
        (notes("plan-skipped", "Skipped", &as_values(&plan.skipped)))
        (notes("plan-create", "Would create (first ones)", &as_values(&plan.samples.create)))
        (notes("plan-update", "Would update (first ones)", &as_values(&plan.samples.update)))
    }
}
