//! The frame of every admin page: head, navigation, the logout form, the stylesheet, and the
//! small pieces pages share (the CSRF field, times, gauges, pagination). No JavaScript, no
//! resource from elsewhere; readable on a phone.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, html};

use super::session::Admin;

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Runs,
    Attention,
    Suppressions,
    Outbox,
    Campaigns,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Overview, "/admin", "Overview"),
    (Nav::Runs, "/admin/runs", "Sync runs"),
    (Nav::Attention, "/admin/attention", "Needs attention"),
    (Nav::Suppressions, "/admin/suppressions", "Suppressions"),
    (Nav::Outbox, "/admin/outbox", "Outbox"),
    (Nav::Campaigns, "/admin/campaigns", "Campaigns"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · mailbridge" }
            link rel="stylesheet" href="/admin/style.css";
        }
    }
}

/// A page of a logged-in admin.
pub fn page(title: &str, admin: &Admin, active: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    a.brand href="/admin" { "mailbridge" }
                    nav aria-label="Admin sections" {
                        ul {
                            @for (nav, href, label) in NAV {
                                li {
                                    @if nav == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/admin/logout" {
                        (csrf(admin))
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (login, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden field every form carries.
pub fn csrf(admin: &Admin) -> Markup {
    html! { input type="hidden" name="csrf" value=(admin.csrf); }
}

/// An RFC 3339 time as the pages show it: `2026-12-07 14:03:12 UTC`.
pub fn when(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        Err(_) => ts.to_owned(),
    }
}

/// An optional time, or a dash.
pub fn when_opt(ts: Option<&str>) -> String {
    ts.map_or_else(|| "—".to_owned(), when)
}

/// How long from `start` to `end` (RFC 3339), as `1 h 2 min`, `3 min 4 s` or `5.6 s`.
pub fn duration(start: &str, end: Option<&str>) -> String {
    let (Ok(a), Some(Ok(b))) = (
        chrono::DateTime::parse_from_rfc3339(start),
        end.map(chrono::DateTime::parse_from_rfc3339),
    ) else {
        return "—".to_owned();
    };
    let ms = (b - a).num_milliseconds().max(0);
    let s = ms / 1000;
    if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// A gauge of `used` out of `limit`, with the figures in words beside it.
pub fn gauge(label: &str, used: u64, limit: u64) -> Markup {
    let pct = if limit == 0 {
        0.0
    } else {
        used as f64 * 100.0 / limit as f64
    };
    html! {
        div.gauge {
            span.gauge-label { (label) }
            meter min="0" max=(limit) low=(limit * 3 / 4) high=(limit * 9 / 10) optimum="0" value=(used.min(limit)) {
                (used) " of " (limit)
            }
            span.gauge-figures { (used) " of " (limit) " (" (format!("{pct:.0}")) "%)" }
        }
    }
}

/// "Newer" and "older" links of a keyset-paginated list: `first` is the list's first page,
/// `next` the link to the page after this one when there is one.
pub fn pager(first: &str, showing_first: bool, next: Option<String>) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if !showing_first { a href=(first) { "« First page" } }
            @if let Some(n) = next { a rel="next" href=(n) { "Next page »" } }
        }
    }
}

/// A status as a small label with a class of its own (colours in the stylesheet).
pub fn status(s: &str) -> Markup {
    html! { span class=(format!("status status-{s}")) { (s) } }
}

/// `GET /admin/style.css`.
pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #59636e; --line: #d1d9e0; --accent: #0b5cad; --bad: #b3261e; --ok: #1a7f37; --warn: #9a6700; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d; --accent: #4493f8; --bad: #f85149; --ok: #3fb950; --warn: #d29922; } }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem; padding: .6rem 1rem; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; text-decoration: none; color: var(--fg); }
header nav ul { display: flex; flex-wrap: wrap; gap: .25rem .9rem; list-style: none; margin: 0; padding: 0; }
header nav a[aria-current=page] { font-weight: 700; text-decoration: underline; }
header .logout { margin-left: auto; }
main { padding: 1rem; max-width: 72rem; }
body.bare main { max-width: 26rem; margin: 3rem auto; }
a { color: var(--accent); }
h1 { font-size: 1.5rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; font-size: .95rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; }
form { margin: .5rem 0; }
form.inline { display: inline; }
label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
input[type=text], input[type=email], input[type=password], input[type=search], select, textarea { width: 100%; max-width: 36rem; padding: .4rem; font: inherit; color: inherit; background: var(--bg); border: 1px solid var(--line); border-radius: 4px; }
textarea { min-height: 10rem; font-family: ui-monospace, monospace; }
button { font: inherit; padding: .35rem .9rem; border: 1px solid var(--accent); border-radius: 4px; background: var(--accent); color: #fff; cursor: pointer; margin-top: .5rem; }
button.secondary { background: transparent; color: var(--accent); }
.error, [role=alert] { color: var(--bad); font-weight: 600; }
.notice { color: var(--ok); font-weight: 600; }
.muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: 1rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem; }
.card h2 { margin-top: 0; }
.gauge { display: grid; grid-template-columns: 1fr; gap: .1rem; margin: .4rem 0; }
.gauge meter { width: 100%; height: 1rem; }
.gauge-figures { color: var(--muted); font-size: .9rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .5rem 0; }
dt { color: var(--muted); }
dd { margin: 0; }
.status { display: inline-block; padding: 0 .4rem; border-radius: 3px; border: 1px solid var(--line); font-size: .85rem; }
.status-succeeded, .status-sent, .status-ok { color: var(--ok); border-color: var(--ok); }
.status-failed, .status-bounced, .status-interrupted { color: var(--bad); border-color: var(--bad); }
.status-deferred, .status-running, .status-queued, .status-sending, .status-partial { color: var(--warn); border-color: var(--warn); }
.pager { display: flex; gap: 1.5rem; margin: .5rem 0 1.5rem; }
.tabs ul { display: flex; flex-wrap: wrap; gap: .25rem 1rem; list-style: none; margin: 0 0 .5rem; padding: 0; }
.tabs a[aria-current=page] { font-weight: 700; text-decoration: underline; }
form.search button, form.lift button { margin-left: .25rem; }
form.lift label { font-weight: 400; margin-top: 0; }
form.lift input[type=text] { max-width: 18rem; }
caption { caption-side: top; text-align: left; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
.status-held_back, .status-answer_lost, .status-waiting, .status-handed_back, .status-requeued { color: var(--warn); border-color: var(--warn); }
.status-bounce_mail, .status-suppressed { color: var(--bad); border-color: var(--bad); }
@media (max-width: 40rem) { th, td { padding: .3rem .25rem; font-size: .9rem; } header .logout { margin-left: 0; } }
"#;
