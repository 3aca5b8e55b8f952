//! `GET /admin`: the overview. Per audience its last sync run, the next scheduled one and
//! whether provider events still arrive; the providers' daily budgets; the relay's outbox,
//! limits and routes; the bounce mails of the past week.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Local, Utc};
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{self, Nav, gauge, status, when, when_opt};
use super::session::{Admin, PageError};
use crate::http::Shared;
use crate::relay::{outbox, quota};
use crate::store::time_text;
use crate::sync::{runs, schedule};

/// The counts of a finished run's report: created, updated, archived, failed.
fn report_counts(report: Option<&str>) -> Option<[u64; 4]> {
    let v: Value = serde_json::from_str(report?).ok()?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some([n("created"), n("updated"), n("archived"), n("failed")])
}

pub async fn page(admin: Admin, State(state): State<Shared>) -> Result<Response, PageError> {
    let body = html! {
        (audiences(&state).await?)
        (relay(&state).await?)
        (bounces(&state).await?)
    };
    Ok(layout::page("Overview", &admin, Nav::Overview, body).into_response())
}

async fn audiences(state: &Shared) -> Result<Markup, PageError> {
    let store = &state.store;
    let next = schedule::nightly_time(&state.config)
        .map(|at| schedule::next_occurrence(Local::now(), at).with_timezone(&Utc));
    let mut cards = Vec::new();
    for audience in &state.config.audiences {
        let last = runs::list(store, Some(&audience.name), 1)
            .await
            .map_err(|e| PageError::unavailable("reading the sync runs", e))?
            .into_iter()
            .next();
        let (event, cursor) = crate::events::last_received(store, &audience.name)
            .await
            .map_err(|e| PageError::unavailable("reading the provider events", e))?;
        let budget = crate::providers::budget_use(&state.config, audience.provider, store)
            .await
            .map_err(|e| PageError::unavailable("reading the request budget", e))?;
        cards.push(html! {
            section.card aria-labelledby=(format!("audience-{}", audience.name)) {
                h2 id=(format!("audience-{}", audience.name)) { "Audience " (audience.name) }
                p.muted { (audience.provider.display_name()) }
                @match &last {
                    None => p { "No sync run yet." },
                    Some(run) => {
                        dl {
                            dt { "Last run" }
                            dd { a href=(format!("/admin/runs/{}", run.run_id)) { (when(&run.started_at)) } " " (status(&run.status)) }
                            dt { "Took" }
                            dd { (layout::duration(&run.started_at, run.finished_at.as_deref())) }
                            @if let Some([c, u, a, f]) = report_counts(run.report.as_deref()) {
                                dt { "Changes" }
                                dd { (c) " created, " (u) " updated, " (a) " archived" }
                                dt { "Failed" }
                                dd { @if f > 0 { a.error href=(format!("/admin/runs/{}", run.run_id)) { (f) (if f == 1 { " member" } else { " members" }) } } @else { "none" } }
                            }
                        }
                    }
                }
                dl {
                    dt { "Next scheduled run" }
                    dd { (next.map_or_else(|| "no nightly schedule ([server] nightly_sync)".to_owned(), |t| when(&time_text(t)))) }
                    dt { "Last event received" }
                    dd { (when_opt(event.as_deref())) }
                    @if cursor.is_some() {
                        dt { "Last poll moved on" }
                        dd { (when_opt(cursor.as_deref())) }
                    }
                }
                @if let Some(b) = budget {
                    (gauge("Provider requests today", b.used_today, b.daily_budget))
                    p.muted { "Resets " (when(&b.resets_at)) }
                }
            }
        });
    }
    Ok(html! {
        h2 { "Audiences" }
        @if cards.is_empty() { p { "No [[audiences]] are configured." } }
        div.cards { @for c in cards { (c) } }
    })
}

async fn relay(state: &Shared) -> Result<Markup, PageError> {
    let Some(relay) = state.config.relay.as_ref() else {
        return Ok(
            html! { h2 { "Relay" } p { "The relay is not configured ([relay] is missing)." } },
        );
    };
    let store = &state.store;
    let unavailable = |e| PageError::unavailable("reading the outbox", e);
    let now = store.clock().now();
    let pending = outbox::pending(store, &time_text(now))
        .await
        .map_err(unavailable)?;
    let hour = outbox::sent_since(store, None, &time_text(now - Duration::hours(1)))
        .await
        .map_err(unavailable)?;
    let monthly = match relay.smtp.as_ref().and_then(|s| s.monthly_quota) {
        Some(limit) if relay.routes.iter().any(|r| r == "smtp") => Some((
            outbox::sent_since(store, Some("smtp"), &time_text(quota::month_start(now)))
                .await
                .map_err(unavailable)?,
            limit,
        )),
        _ => None,
    };
    let deferrals = outbox::deferrals(store).await.map_err(unavailable)?;
    Ok(html! {
        h2 { "Relay" }
        div.cards {
            section.card aria-labelledby="outbox-now" {
                h2 #outbox-now { "Outbox" }
                dl {
                    dt { "Waiting" } dd { a href="/admin/outbox?status=queued" { (pending.waiting) } }
                    dt { "Being sent" } dd { (pending.leased) }
                    @if pending.expired > 0 { dt { "Lease expired" } dd.error { (pending.expired) } }
                    dt { "Next due" } dd { (when_opt(pending.next_due.as_deref())) }
                    dt { "Sent, last hour" } dd { (hour) }
                }
                p { a href="/admin/outbox" { "All messages" } }
            }
            section.card aria-labelledby="relay-limits" {
                h2 #relay-limits { "Limits" }
                @if let Some(limit) = relay.hourly_limit { (gauge("Sent in the last hour", hour, limit)) }
                @if let Some((used, limit)) = monthly { (gauge("SMTP quota this month", used, limit)) }
                @if relay.hourly_limit.is_none() && monthly.is_none() { p { "No hourly limit or monthly quota is configured." } }
            }
            section.card aria-labelledby="relay-routes" {
                h2 #relay-routes { "Routes" }
                table {
                    thead { tr { th { "Route" } th.num { "Deferred" } th { "Latest reply" } } }
                    tbody {
                        @for route in &relay.routes {
                            @let d = deferrals.iter().find(|d| &d.route == route);
                            tr {
                                td { (route) " " (status(if d.is_some() { "deferred" } else { "ok" })) }
                                td.num { (d.map_or(0, |d| d.count)) }
                                td { (d.and_then(|d| d.last_reply.clone()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    })
}

async fn bounces(state: &Shared) -> Result<Markup, PageError> {
    let since = time_text(state.store.clock().now() - Duration::days(7));
    let counts = crate::bounces::received_since(&state.store, &since)
        .await
        .map_err(|e| PageError::unavailable("counting bounce mails", e))?;
    Ok(html! {
        h2 { "Bounces this week" }
        @if counts.is_empty() {
            p { "No bounce mail in the past 7 days." }
        } @else {
            table {
                thead { tr { th { "Kind" } th.num { "Mails" } } }
                tbody { @for (kind, n) in &counts { tr { td { (kind) } td.num { (n) } } } }
            }
        }
        p { a href="/admin/attention" { "Members needing attention" } " · " a href="/admin/suppressions" { "Suppression list" } }
    })
}
