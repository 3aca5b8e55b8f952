//! `/admin/campaigns`: the latest pushes with their status and recipients, and the push form.
//! A push goes through a preflight page (the campaign checked the way the push will check it,
//! shown for review) and an explicit confirm. The preflight page fixes the push's idempotency
//! key, so a double click on "Confirm", a reload of the confirmation or a second tab sends
//! nothing twice: the push is queued once, as `POST /v1/campaigns` with that key would.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, status, when, when_opt};
use super::session::{Admin, AdminForm, Fields, PageError};
use crate::campaigns::jobs::{self, Enqueued, Job};
use crate::campaigns::{self, CampaignError, PushRequest};
use crate::http::Shared;

const LISTED: i64 = 50;

fn push_form(admin: &Admin, state: &Shared, request: &PushRequest) -> Markup {
    html! {
        form method="post" action="/admin/campaigns/preflight" enctype="multipart/form-data" {
            (layout::csrf(admin))
            label for="audience" { "Audience" }
            select #audience name="audience" required {
                @for a in &state.config.audiences {
                    option value=(a.name) selected[a.name == request.audience] { (a.name) }
                }
            }
            label for="subject" { "Subject" }
            input #subject type="text" name="subject" value=(request.subject) required maxlength="150";
            label for="from_name" { "From name " span.muted { "(optional: the audience's default)" } }
            input #from_name type="text" name="from_name" value=(request.from_name.clone().unwrap_or_default());
            label for="reply_to" { "Reply-to address " span.muted { "(optional: the audience's default)" } }
            input #reply_to type="email" name="reply_to" value=(request.reply_to.clone().unwrap_or_default());
            label for="html" { "HTML" }
            textarea #html name="html" { (request.html) }
            label for="html_file" { "…or an HTML file " span.muted { "(used instead of the text above when given)" } }
            input #html_file type="file" name="html_file" accept=".html,.htm,text/html";
            button type="submit" { "Check before sending" }
        }
    }
}

fn jobs_table(jobs: &[Job]) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr { th { "Queued" } th { "Audience" } th { "Status" } th.num { "Recipients" } th { "Finished" } } }
                tbody {
                    @for job in jobs {
                        tr {
                            td { a href=(format!("/admin/campaigns/{}", job.key)) { (when(&job.enqueued_at)) } }
                            td { (job.audience) }
                            td { (status(&job.status)) }
                            td.num { (job.campaign.as_ref().and_then(|c| c.recipients).map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                            td { (when_opt(job.finished_at.as_deref())) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn list(admin: Admin, State(state): State<Shared>) -> Result<Response, PageError> {
    let jobs = jobs::recent(&state.store, LISTED)
        .await
        .map_err(|e| PageError::unavailable("reading the campaigns", e))?;
    let body = html! {
        h2 { "Push a newsletter" }
        @if state.config.audiences.is_empty() {
            p { "No [[audiences]] are configured." }
        } @else {
            (push_form(&admin, &state, &PushRequest::default()))
        }
        h2 { "Latest pushes" }
        @if jobs.is_empty() { p { "Nothing pushed from here or the API yet." } } @else { (jobs_table(&jobs)) }
    };
    Ok(layout::page("Campaigns", &admin, Nav::Campaigns, body).into_response())
}

/// The push the form describes (an uploaded file's HTML wins over the text area's).
fn request_of(fields: &Fields) -> Result<PushRequest, PageError> {
    let html = fields
        .optional("html_file")
        .or_else(|| fields.optional("html"))
        .ok_or_else(|| {
            PageError::bad_request("The HTML is required (in the text area or as a file).")
        })?;
    Ok(PushRequest {
        audience: fields.required("audience", "The audience")?.to_owned(),
        subject: fields.required("subject", "The subject")?.to_owned(),
        html: html.to_owned(),
        from_name: fields.optional("from_name").map(str::to_owned),
        reply_to: fields.optional("reply_to").map(str::to_owned),
        ..PushRequest::default()
    })
}

fn refused(e: CampaignError) -> PageError {
    match e {
        CampaignError::Invalid { .. } | CampaignError::Refused(_) => {
            PageError::bad_request(format!("The campaign cannot be pushed: {e}"))
        }
        CampaignError::KeyConflict { .. } => PageError::new(
            StatusCode::CONFLICT,
            "This confirmation was already used for a different campaign: start again from the campaigns page.",
        ),
        CampaignError::Store(_) | CampaignError::Source(_) => {
            PageError::unavailable("queueing the push", e)
        }
        other => PageError::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

/// `POST /admin/campaigns/preflight`: the push checked and shown, with the confirm button.
pub async fn preflight(
    State(state): State<Shared>,
    form: AdminForm,
) -> Result<Response, PageError> {
    let request = request_of(&form.fields)?;
    let audience =
        crate::campaigns::push::find_audience(&state.config, &request.audience).map_err(refused)?;
    let spec = campaigns::validate(&request, audience).map_err(refused)?;
    state
        .providers
        .require(audience.provider)
        .map_err(|e| PageError::new(StatusCode::CONFLICT, format!("{e} on this server.")))?;
    let key = format!("admin-{}", hex::encode(rand::random::<[u8; 16]>()));
    let body = html! {
        p { "Check the campaign. It is pushed only when you confirm, and once whatever you click afterwards." }
        dl {
            dt { "Audience" } dd { (spec.audience) " (" (audience.provider.display_name()) ")" }
            dt { "Goes to" } dd { "the audience's subscribed members" @if let Some(s) = &spec.segment { " tagged " (s) } ", after a sync of the member database" }
            dt { "Subject" } dd { (spec.subject) }
            dt { "From" } dd { (spec.from_name) }
            dt { "Reply-to" } dd { (spec.reply_to.to_string()) }
            dt { "HTML" } dd { (spec.html.len()) " bytes" }
        }
        h2 { "Text version" }
        pre.preview { (spec.text.chars().take(2000).collect::<String>()) }
        form method="post" action="/admin/campaigns/confirm" {
            (layout::csrf(&form.admin))
            input type="hidden" name="key" value=(key);
            input type="hidden" name="audience" value=(request.audience);
            input type="hidden" name="subject" value=(request.subject);
            input type="hidden" name="from_name" value=(request.from_name.clone().unwrap_or_default());
            input type="hidden" name="reply_to" value=(request.reply_to.clone().unwrap_or_default());
            input type="hidden" name="html" value=(request.html);
            button #confirm type="submit" { "Confirm and send" }
        }
        p { a href="/admin/campaigns" { "Cancel" } }
    };
    Ok(layout::page("Confirm the push", &form.admin, Nav::Campaigns, body).into_response())
}

/// `POST /admin/campaigns/confirm`: queues the push under the preflight's key (a repeat of the
/// same confirmation finds the job already queued) and shows it.
pub async fn confirm(State(state): State<Shared>, form: AdminForm) -> Result<Response, PageError> {
    let request = request_of(&form.fields)?;
    let key = form.fields.required("key", "The confirmation key")?;
    let enqueued = jobs::enqueue(&state.store, &state.config, &request, key)
        .await
        .map_err(refused)?;
    state.start_campaign_jobs();
    let key = match enqueued {
        Enqueued::New(job) => {
            tracing::info!(who = %form.admin.who, audience = %job.audience, key = %job.key, "A campaign push was queued from the admin pages");
            job.key
        }
        Enqueued::Existing(job) => job.key,
    };
    Ok(Redirect::to(&format!("/admin/campaigns/{key}")).into_response())
}

/// `GET /admin/campaigns/{key}`.
pub async fn show(
    admin: Admin,
    State(state): State<Shared>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    let job = jobs::get(&state.store, &key)
        .await
        .map_err(|e| PageError::unavailable("reading the campaign", e))?
        .ok_or_else(|| PageError::not_found(format!("There is no campaign push `{key}`.")))?;
    let body = html! {
        dl {
            dt { "Audience" } dd { (job.audience) }
            dt { "Status" } dd #campaign-status { (status(&job.status)) }
            dt { "Queued" } dd { (when(&job.enqueued_at)) }
            dt { "Started" } dd { (when_opt(job.started_at.as_deref())) }
            dt { "Finished" } dd { (when_opt(job.finished_at.as_deref())) }
            @if let Some(c) = &job.campaign {
                dt { "Provider campaign" } dd { (c.provider_campaign_id.clone().unwrap_or_default()) }
                dt { "Recipients" } dd #campaign-recipients { (c.recipients.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
            }
            @if let Some(e) = &job.error { dt { "Error" } dd.error { (e.message) } }
        }
        p.muted { "Reload to follow the push." }
        p { a href="/admin/campaigns" { "All campaigns" } }
    };
    Ok(layout::page(
        &format!("Campaign push {key}"),
        &admin,
        Nav::Campaigns,
        body,
    )
    .into_response())
}
