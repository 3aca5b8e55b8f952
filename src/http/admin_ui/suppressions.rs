//! `/admin/suppressions`: the suppression list searched by address, a page at a time, and lifting
//! a bounce with a reason (recorded with who and when: `store::suppressions::lift`). A consent
//! opt-out (a complaint, or what may be one) has no lift button, and a lift of one is refused.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, when, when_opt};
use super::session::{Admin, AdminForm, PageError};
use crate::domain::AddressPrefix;
use crate::http::Shared;
use crate::store::suppressions::{self, LiftOutcome, ListQuery, MAX_WHY_CHARS, Suppression, Which};

/// Addresses per page.
const PAGE: u32 = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct ListParams {
    q: Option<String>,
    show: Option<String>,
    after: Option<String>,
    lifted: Option<String>,
}

/// `/admin/suppressions` with these filters (and from `after`), its query string escaped.
fn href(which: Which, q: Option<&str>, after: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if which == Which::Lifted {
        query.append_pair("show", "lifted");
    }
    if let Some(q) = q {
        query.append_pair("q", q);
    }
    if let Some(a) = after {
        query.append_pair("after", a);
    }
    let query = query.finish();
    if query.is_empty() {
        "/admin/suppressions".to_owned()
    } else {
        format!("/admin/suppressions?{query}")
    }
}

/// The lift form of one active, liftable suppression.
fn lift_form(admin: &Admin, s: &Suppression, n: usize) -> Markup {
    let field = format!("why-{n}");
    html! {
        form.lift method="post" action="/admin/suppressions/lift" {
            (layout::csrf(admin))
            input type="hidden" name="email" value=(s.email);
            label for=(field) { "Why lift it " span.muted { "(recorded)" } }
            input id=(field) type="text" name="why" required maxlength=(MAX_WHY_CHARS) placeholder="e.g. the member fixed their mailbox";
            button.secondary type="submit" aria-label=(format!("Lift the suppression of {}", s.email)) { "Lift" }
        }
    }
}

pub async fn list(
    admin: Admin,
    State(state): State<Shared>,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    let which = match params.show.as_deref() {
        Some("lifted") => Which::Lifted,
        None | Some("" | "active") => Which::Active,
        Some(other) => {
            return Err(PageError::bad_request(format!(
                "`show` is `active` or `lifted`, not `{other}`."
            )));
        }
    };
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let after = params.after.as_deref().filter(|a| !a.is_empty());
    let unavailable = |e| PageError::unavailable("reading the suppression list", e);
    let page = suppressions::list(
        &state.store,
        &ListQuery {
            search: q.and_then(AddressPrefix::parse),
            which,
            after: after.map(str::to_owned),
            limit: PAGE,
        },
    )
    .await
    .map_err(unavailable)?;
    // The notice after a lift names the address only when it is lifted indeed (the query string
    // is anyone's to write).
    let lifted_now = match params.lifted.as_deref() {
        Some(email) => suppressions::get(&state.store, email)
            .await
            .map_err(unavailable)?
            .filter(|s| s.lifted_at.is_some())
            .map(|s| s.email),
        None => None,
    };
    let mut lifts = Vec::new();
    if which == Which::Lifted {
        for s in &page.rows {
            lifts.push(
                suppressions::lifts(&state.store, &s.email)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .next(),
            );
        }
    }
    let body = html! {
        @if let Some(email) = &lifted_now {
            p.notice role="status" { "Lifted: " (email) " gets mail again. A new bounce suppresses it again." }
        }
        p.muted {
            "Addresses that get no mail from any path (newsletters and the relay). A bounce may be lifted, with a reason; a spam complaint or another opt-out cannot be lifted here: only the person can subscribe again."
        }
        nav.tabs aria-label="Which suppressions" {
            ul {
                @for (w, label) in [(Which::Active, "In force"), (Which::Lifted, "Lifted")] {
                    li {
                        @if w == which { a href=(href(w, q, None)) aria-current="page" { (label) } }
                        @else { a href=(href(w, q, None)) { (label) } }
                    }
                }
            }
        }
        form.search method="get" action="/admin/suppressions" role="search" {
            @if which == Which::Lifted { input type="hidden" name="show" value="lifted"; }
            label for="q" { "Address " span.muted { "(the start of it, or the whole address)" } }
            input #q type="search" name="q" value=(q.unwrap_or_default()) autocomplete="off";
            button type="submit" { "Search" }
            @if q.is_some() { " " a href=(href(which, None, None)) { "Clear" } }
        }
        @if page.rows.is_empty() {
            p { @if after.is_some() { "No more addresses." } @else if q.is_some() { "No address starts with that." } @else { "The list is empty." } }
        } @else {
            div.table-wrap {
                table #suppressions {
                    thead {
                        tr {
                            th { "Address" } th { "Reason" } th { "Source" } th { "Detail" } th { "Since" }
                            @if which == Which::Lifted { th { "Lifted" } th { "Why, by whom" } } @else { th { "Lift" } }
                        }
                    }
                    tbody {
                        @for (n, s) in page.rows.iter().enumerate() {
                            tr {
                                td { (s.email) }
                                td { (s.reason) }
                                td { (s.source) }
                                td { (s.detail.clone().unwrap_or_default()) }
                                td { (when(&s.created_at)) }
                                @if which == Which::Lifted {
                                    td { (when_opt(s.lifted_at.as_deref())) }
                                    td {
                                        @if let Some(Some(l)) = lifts.get(n) { (l.why) " " span.muted { "(" (l.lifted_by) ")" } }
                                    }
                                } @else {
                                    td {
                                        @if s.liftable() { (lift_form(&admin, s, n)) }
                                        @else { span.muted { "An opt-out: not lifted here" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (layout::pager(
            &href(which, q, None),
            after.is_none(),
            page.next.as_deref().map(|a| href(which, q, Some(a))),
        ))
    };
    Ok(layout::page("Suppressions", &admin, Nav::Suppressions, body).into_response())
}

/// `POST /admin/suppressions/lift`: lifts a bounce's suppression with the reason given.
pub async fn lift(State(state): State<Shared>, form: AdminForm) -> Result<Response, PageError> {
    let email = form.fields.required("email", "The address")?.to_owned();
    let why = form.fields.get("why").unwrap_or_default();
    let now = state.store.now_text();
    let outcome = suppressions::lift(&state.store, &email, why, &form.admin.who, &now)
        .await
        .map_err(|e| PageError::unavailable("lifting the suppression", e))?;
    match outcome {
        LiftOutcome::Lifted => {
            tracing::info!(who = %form.admin.who, "A suppression was lifted from the admin pages");
            let query: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("lifted", &email)
                .finish();
            Ok(Redirect::to(&format!("/admin/suppressions?{query}")).into_response())
        }
        LiftOutcome::NeedsReason => Err(PageError::bad_request(
            "Say why the suppression is lifted: the reason is recorded.",
        )),
        LiftOutcome::ReasonTooLong => Err(PageError::bad_request(format!(
            "The reason is longer than {MAX_WHY_CHARS} characters."
        ))),
        LiftOutcome::NotSuppressed => Err(PageError::not_found(format!(
            "{email} is not on the suppression list (or was lifted already)."
        ))),
        LiftOutcome::ConsentOptOut { reason } => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "{email} is suppressed for {reason}, which is or may be a consent opt-out: it cannot be lifted here. Only a bounce can."
            ),
        )),
    }
}
