//! `/admin/attention`: the members the mail does not reach, from what the state DB knows
//! (`sync::attention`): failed pushes, invalid and duplicate addresses, bounces, cleaned
//! addresses, complaints; each with why and what to do, newest first, by concern.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, when};
use super::session::{Admin, PageError};
use crate::http::Shared;
use crate::sync::attention::{self, Attention, Concern};

/// Rows shown at most.
const SHOWN: u32 = 200;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Params {
    concern: Option<String>,
}

fn href(concern: Option<Concern>) -> String {
    match concern {
        None => "/admin/attention".to_owned(),
        Some(c) => format!("/admin/attention?concern={}", c.as_str()),
    }
}

/// Where a row's address or member leads: the suppression list for a suppressed address, the run
/// for a sync's finding.
fn address(row: &Attention) -> Markup {
    let Some(email) = row.email.as_deref() else {
        return html! { span.muted { "none" } };
    };
    let suppressed = matches!(
        row.concern,
        Concern::Bounced | Concern::Complained | Concern::Rejected
    );
    if suppressed {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("q", email)
            .finish();
        html! { a href=(format!("/admin/suppressions?{q}")) { (email) } }
    } else {
        html! { (email) }
    }
}

pub async fn page(
    admin: Admin,
    State(state): State<Shared>,
    Query(params): Query<Params>,
) -> Result<Response, PageError> {
    let only = match params.concern.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            Concern::parse(c)
                .ok_or_else(|| PageError::bad_request(format!("There is no concern `{c}`.")))?,
        ),
    };
    let list = attention::needing_attention(&state.store, only, SHOWN)
        .await
        .map_err(|e| PageError::unavailable("reading the members needing attention", e))?;
    let all: u64 = list.counts.iter().map(|(_, n)| n).sum();
    let body = html! {
        nav.tabs aria-label="Concern" {
            ul {
                li {
                    @if only.is_none() { a href=(href(None)) aria-current="page" { "All (" (all) ")" } }
                    @else { a href=(href(None)) { "All (" (all) ")" } }
                }
                @for (c, n) in &list.counts {
                    @if *n > 0 || only == Some(*c) {
                        li {
                            @if only == Some(*c) { a href=(href(Some(*c))) aria-current="page" { (c.what()) " (" (n) ")" } }
                            @else { a href=(href(Some(*c))) { (c.what()) " (" (n) ")" } }
                        }
                    }
                }
            }
        }
        @if list.rows.is_empty() {
            p { "Nothing needs attention." }
        } @else {
            @if let Some(c) = only { p { strong { "What to do: " } (c.todo()) } }
            div.table-wrap {
                table #attention {
                    thead { tr { th { "Found" } th { "What" } th { "Audience" } th { "Member" } th { "Address" } th { "Why" } @if only.is_none() { th { "What to do" } } } }
                    tbody {
                        @for row in &list.rows {
                            tr {
                                td {
                                    @if let Some(run) = &row.run_id { a href=(format!("/admin/runs/{run}")) { (when(&row.at)) } }
                                    @else { (when(&row.at)) }
                                }
                                td { (row.concern.what()) }
                                td { (row.audience.clone().unwrap_or_default()) }
                                td { (row.member_key.clone().unwrap_or_default()) }
                                td { (address(row)) }
                                td { (row.why) }
                                @if only.is_none() { td { (row.concern.todo()) } }
                            }
                        }
                    }
                }
            }
            @if list.total > list.rows.len() as u64 {
                p.muted { "The newest " (list.rows.len()) " of " (list.total) "; pick a concern above to see more of one kind." }
            }
        }
        p.muted { "From each audience's latest finished sync, the suppression list and the contacts the provider cleaned. Unsubscribes need nothing done and are not listed." }
    };
    Ok(layout::page("Members needing attention", &admin, Nav::Attention, body).into_response())
}
