//! The admin web pages of `serve` (`/admin`, issue 21): server-rendered HTML (maud), no
//! JavaScript, no single-page app. What an operator needs at a glance (last night's sync, members
//! needing attention, the suppression list, the outbox, campaigns, budgets) and the few actions
//! they take (run a sync, a dry run, lift a bounce suppression, retry a message, push a
//! campaign). Pages read through the same engine and store functions as the API; nothing secret
//! (API keys, tokens, passwords, hashes) is ever rendered.
//!
//! Every page needs a login ([`session`]); every form carries the session's CSRF token. The
//! responses forbid framing, scripts and resources from elsewhere, and caching.

mod attention;
mod campaigns;
mod layout;
mod outbox;
mod overview;
mod runs;
mod session;
mod suppressions;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};

pub use session::LoginLimiter;

use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/admin", get(overview::page))
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/style.css", get(layout::stylesheet))
        .route(
            "/admin/login",
            get(session::login_form).post(session::login),
        )
        .route("/admin/logout", post(session::logout))
        .route("/admin/runs", get(runs::list))
        .route("/admin/runs/start", post(runs::start))
        .route("/admin/runs/dry-run", post(runs::dry_run))
        .route("/admin/runs/{id}", get(runs::show))
        .route("/admin/attention", get(attention::page))
        .route("/admin/suppressions", get(suppressions::list))
        .route("/admin/suppressions/lift", post(suppressions::lift))
        .route("/admin/outbox", get(outbox::list))
        .route("/admin/outbox/{id}", get(outbox::show))
        .route("/admin/outbox/{id}/retry", post(outbox::retry))
        .route("/admin/campaigns", get(campaigns::list))
        .route("/admin/campaigns/preflight", post(campaigns::preflight))
        .route("/admin/campaigns/confirm", post(campaigns::confirm))
        .route("/admin/campaigns/{key}", get(campaigns::show))
        .layer(axum::middleware::map_response(protect))
}

/// What every admin response says about itself: no scripts, nothing from elsewhere, no framing,
/// forms post only here, no caching of pages (the stylesheet keeps its own cache header).
async fn protect(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
