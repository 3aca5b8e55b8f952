//! `/admin/outbox`: the relay's messages by status, searched by a prefix of the recipient, a page
//! at a time (`relay::outbox::list`: one index range per page, whatever the outbox holds); one
//! message's attempts and SMTP replies; and "Retry now" for a deferred or failed message (or a
//! bounced one whose address is no longer suppressed).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, when, when_opt};
use super::session::{Admin, AdminForm, PageError};
use crate::domain::AddressPrefix;
use crate::http::Shared;
use crate::relay::Status;
use crate::relay::outbox::{self, Cursor, ListQuery, MessageStatus, Order, RetryOutcome, STATUSES};

/// Messages per page.
const PAGE: u32 = 50;
/// The most of a reply a list shows (the message's page shows it whole).
const REPLY_SHOWN: usize = 120;

#[derive(Debug, Default, serde::Deserialize)]
pub struct ListParams {
    status: Option<String>,
    q: Option<String>,
    after: Option<String>,
}

/// `/admin/outbox` with these filters (and from `after`), its query string escaped.
fn href(status: Option<Status>, q: Option<&str>, after: Option<&Cursor>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(s) = status {
        query.append_pair("status", s.as_str());
    }
    if let Some(q) = q.filter(|q| !q.trim().is_empty()) {
        query.append_pair("q", q);
    }
    if let Some(c) = after {
        query.append_pair("after", &c.to_param());
    }
    let query = query.finish();
    if query.is_empty() {
        "/admin/outbox".to_owned()
    } else {
        format!("/admin/outbox?{query}")
    }
}

/// Whether the page offers "Retry now" for a message in `status`.
fn retryable(status: Status) -> bool {
    matches!(status, Status::Deferred | Status::Failed | Status::Bounced)
}

/// The inline "Retry now" form of message `id`.
fn retry_form(admin: &Admin, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(format!("/admin/outbox/{id}/retry")) {
            (layout::csrf(admin))
            button.secondary type="submit" aria-label=(format!("Retry message {id} now")) { "Retry now" }
        }
    }
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

pub async fn list(
    admin: Admin,
    State(state): State<Shared>,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    let status =
        match params.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                PageError::bad_request(format!("There is no message status `{s}`."))
            })?),
        };
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let after = match params.after.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(Cursor::parse(a).ok_or_else(|| {
            PageError::bad_request("The page link is damaged: start again from the first page.")
        })?),
    };
    let unavailable = |e| PageError::unavailable("reading the outbox", e);
    let query = ListQuery {
        status,
        recipient: q.and_then(AddressPrefix::parse),
        after: after.clone(),
        limit: PAGE,
    };
    let page = outbox::list(&state.store, &query)
        .await
        .map_err(unavailable)?;
    let counts = outbox::counts(&state.store).await.map_err(unavailable)?;
    let order = outbox::order_of(&query);
    let body = html! {
        nav.tabs aria-label="Message status" {
            ul {
                li { (tab(None, status, q, None)) }
                @for s in STATUSES { li { (tab(Some(s), status, q, counts.of(s))) } }
            }
        }
        form.search method="get" action="/admin/outbox" role="search" {
            @if let Some(s) = status { input type="hidden" name="status" value=(s.as_str()); }
            label for="q" { "Recipient " span.muted { "(the start of the address: " code { "anna@" } " or the whole address)" } }
            input #q type="search" name="q" value=(q.unwrap_or_default()) autocomplete="off";
            button type="submit" { "Search" }
            @if q.is_some() { " " a href=(href(status, None, None)) { "Clear" } }
        }
        @if page.messages.is_empty() {
            p { @if after.is_some() { "No more messages." } @else { "No messages." } }
        } @else {
            div.table-wrap {
                table #messages {
                    caption.muted {
                        @match order {
                            Order::Queued => "Newest first.",
                            Order::Sent => "Most recently sent first.",
                            Order::Address => "By address, then newest first.",
                        }
                    }
                    thead { tr { th { "Queued" } th { "To" } th { "Category" } th { "Status" } th.num { "Attempts" } th { "Route" } th { "Last reply" } th { "Next attempt" } th { span.visually-hidden { "Action" } } } }
                    tbody {
                        @for m in &page.messages {
                            tr {
                                td { a href=(format!("/admin/outbox/{}", m.id)) { (when(&m.created_at)) } }
                                td { (m.to) }
                                td { (m.category) }
                                td { (layout::status(m.status.as_str())) }
                                td.num { (m.attempts) }
                                td { (m.route.clone().unwrap_or_default()) }
                                td { (m.last_reply.as_deref().map(|r| cut(r, REPLY_SHOWN)).unwrap_or_default()) }
                                td { (when_opt(m.next_attempt_at.as_deref())) }
                                td { @if matches!(m.status, Status::Deferred | Status::Failed) { (retry_form(&admin, &m.id)) } }
                            }
                        }
                    }
                }
            }
        }
        (layout::pager(
            &href(status, q, None),
            after.is_none(),
            page.next.as_ref().map(|c| href(status, q, Some(c))),
        ))
    };
    Ok(layout::page("Outbox", &admin, Nav::Outbox, body).into_response())
}

/// A status tab (`None`: all messages) with its count when it has one (all and sent messages
/// are not counted), marked when it is the one shown.
fn tab(this: Option<Status>, shown: Option<Status>, q: Option<&str>, count: Option<u64>) -> Markup {
    let label = match (this.map_or("All", Status::as_str), count) {
        (l, Some(n)) => format!("{l} ({n})"),
        (l, None) => l.to_owned(),
    };
    html! {
        @if this == shown {
            a href=(href(this, q, None)) aria-current="page" { (label) }
        } @else {
            a href=(href(this, q, None)) { (label) }
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct ShowParams {
    retried: Option<String>,
}

/// `GET /admin/outbox/{id}`: the message, its turns and their replies.
pub async fn show(
    admin: Admin,
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(params): Query<ShowParams>,
) -> Result<Response, PageError> {
    let unavailable = |e| PageError::unavailable("reading the message", e);
    let message = outbox::get(&state.store, &id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| PageError::not_found(format!("There is no message `{id}`.")))?;
    let attempts = outbox::attempts(&state.store, &id)
        .await
        .map_err(unavailable)?;
    let body = html! {
        @if params.retried.is_some() && message.status == Status::Queued {
            p.notice role="status" { "Back in the queue: the relay sends it at its next pass." }
        }
        (details(&message))
        @if retryable(message.status) { (retry_form(&admin, &message.id)) }
        h2 #history { "Attempts and replies" }
        @if attempts.is_empty() && message.status != Status::Sent {
            p { "No attempt has failed yet." }
        } @else {
            div.table-wrap {
                table aria-labelledby="history" {
                    thead { tr { th { "When" } th { "Outcome" } th.num { "Attempt" } th { "Route" } th { "Reply" } } }
                    tbody {
                        @for a in &attempts {
                            tr {
                                td { (when(&a.at)) }
                                td { (layout::status(&a.outcome)) }
                                td.num { (a.attempt) }
                                td { (a.route.clone().unwrap_or_default()) }
                                td { (a.reply.clone().unwrap_or_default()) }
                            }
                        }
                        @if message.status == Status::Sent {
                            tr {
                                td { (when_opt(message.sent_at.as_deref())) }
                                td { (layout::status("sent")) }
                                td.num { (message.attempts) }
                                td { (message.route.clone().unwrap_or_default()) }
                                td { (message.last_reply.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/admin/outbox" { "All messages" } }
    };
    Ok(layout::page(&format!("Message {id}"), &admin, Nav::Outbox, body).into_response())
}

fn details(m: &MessageStatus) -> Markup {
    html! {
        dl {
            dt { "To" } dd { (m.to) }
            dt { "Category" } dd { (m.category) }
            dt { "Status" } dd #message-status { (layout::status(m.status.as_str())) }
            dt { "Attempts" } dd { (m.attempts) }
            dt { "Route" } dd { (m.route.clone().unwrap_or_else(|| "—".into())) }
            dt { "Last reply" } dd { (m.last_reply.clone().unwrap_or_else(|| "—".into())) }
            dt { "Queued" } dd { (when(&m.created_at)) }
            @if let Some(next) = &m.next_attempt_at { dt { "Next attempt" } dd { (when(next)) } }
            @if let Some(sent) = &m.sent_at { dt { "Sent" } dd { (when(sent)) } }
            dt { "Last change" } dd { (when(&m.updated_at)) }
            dt { "Message-ID" } dd { code { (m.message_id) } }
        }
    }
}

/// `POST /admin/outbox/{id}/retry`: puts the message back in the queue, due now.
pub async fn retry(
    State(state): State<Shared>,
    Path(id): Path<String>,
    form: AdminForm,
) -> Result<Response, PageError> {
    let now = state.store.now_text();
    let outcome = outbox::retry_now(&state.store, &id, &now)
        .await
        .map_err(|e| PageError::unavailable("putting the message back in the queue", e))?;
    match outcome {
        RetryOutcome::Requeued => {
            tracing::info!(who = %form.admin.who, %id, "A message was put back in the queue from the admin pages");
            state.outbox_ready.notify_one();
            Ok(Redirect::to(&format!("/admin/outbox/{id}?retried=1")).into_response())
        }
        RetryOutcome::NotFound => Err(PageError::not_found(format!("There is no message `{id}`."))),
        RetryOutcome::NotRetryable { status } => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "The message is {}: only a deferred, failed or bounced message is retried.",
                status.as_str()
            ),
        )),
        RetryOutcome::AddressSuppressed { reason } => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "The message's address is on the suppression list ({reason}): lift the suppression first (Suppressions), then retry."
            ),
        )),
    }
}
