//! Logging in to the admin pages, and what every page and form checks.
//!
//! - **Login** (`/admin/login`): the admin password (`[admin] password_hash`, argon2) or the API
//!   token (`[server] api_token`). The form carries a one-time login token that must match a
//!   cookie set with the form (so another site cannot log a browser in to an account of its
//!   choosing). Attempts are limited per client address and for all clients together
//!   (`[admin] login_attempts_per_minute`); over the limit the password is not even checked.
//! - **Session**: a random 256-bit token in the `mailbridge_admin` cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Path=/admin`, `Secure` when `[server] public_url` is `https://`), stored
//!   hashed in the state DB with the session's CSRF token and who logged in.
//! - **[`Admin`]**: the extractor every page takes; without a live session a GET is sent to the
//!   login page and anything else is refused (403).
//! - **[`AdminForm`]**: the extractor every form handler takes: a live session and a `csrf` field
//!   equal to the session's (compared in constant time), or 403 and nothing done.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Multipart, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use cookie::{Cookie, SameSite};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use maud::html;
use secrecy::ExposeSecret;

use super::layout;
use crate::http::{Shared, constant_time_eq};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "mailbridge_admin";
/// The login form's token cookie.
const LOGIN_COOKIE: &str = "mailbridge_login";
/// The most fields a form may have, and the longest field name.
const MAX_FIELDS: usize = 64;
const MAX_FIELD_NAME: usize = 64;

/// A logged-in admin.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token forms carry back.
    pub csrf: String,
    /// Who logged in, and from where: recorded with what they change.
    pub who: String,
    token: String,
}

/// A page that could not be shown, as a page.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }

    /// The state DB (or another part) failed: logged with its cause, shown without internals.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> PageError {
        tracing::error!("admin page: {what}: {e}");
        PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} failed; the server's log has the cause. Try again shortly."),
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        (
            self.status,
            layout::bare(
                &title,
                html! {
                    p role="alert" { (self.message) }
                    p { a href="/admin" { "Back to the overview" } }
                },
            ),
        )
            .into_response()
    }
}

/// The login limits: per client address, and for all clients together (ten times as many).
pub struct LoginLimiter {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    all: DefaultDirectRateLimiter,
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> LoginLimiter {
        let per_client = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let all = per_client.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
        LoginLimiter {
            per_client: RateLimiter::keyed(Quota::per_minute(per_client)),
            all: RateLimiter::direct(Quota::per_minute(all)),
        }
    }

    /// Whether one more attempt from `ip` may be checked now.
    fn allow(&self, ip: IpAddr) -> bool {
        if self.per_client.len() > 10_000 {
            self.per_client.retain_recent();
        }
        self.per_client.check_key(&ip).is_ok() && self.all.check().is_ok()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// 32 random bytes, URL-safe base64 (no padding).
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether cookies must be `Secure`: the server is reached over HTTPS.
fn over_tls(state: &Shared) -> bool {
    state
        .config
        .server
        .as_ref()
        .and_then(|s| s.public_url.as_deref())
        .is_some_and(|u| u.starts_with("https://"))
}

fn set_cookie(
    state: &Shared,
    name: &str,
    value: String,
    path: &str,
    max_age_secs: i64,
) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path(path.to_owned())
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(state))
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Where to go after logging in: a path of the admin pages, else the overview (never another
/// site: `//evil.example` and `/\evil.example` are refused).
fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/admin".to_owned(),
    }
}

impl FromRequestParts<Shared> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Admin, Response> {
        let token = cookie_value(&parts.headers, SESSION_COOKIE);
        let session =
            match &token {
                Some(t) => state.store.admin_session(t).await.map_err(|e| {
                    PageError::unavailable("reading the session", e).into_response()
                })?,
                None => None,
            };
        match (session, token) {
            (Some(s), Some(token)) => Ok(Admin {
                csrf: s.csrf,
                who: s.who,
                token,
            }),
            _ if parts.method == Method::GET || parts.method == Method::HEAD => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or("/admin", |p| p.as_str())
                    .to_owned();
                let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
                Err(Redirect::to(&format!("/admin/login?next={next}")).into_response())
            }
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "You are not logged in (or your session ended): log in and send the form again.",
            )
            .into_response()),
        }
    }
}

/// A form's fields, in order.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The field's value (the first, if sent twice).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field's value, trimmed; a missing or blank one is a 400 naming it.
    pub fn required(&self, name: &str, label: &str) -> Result<&str, PageError> {
        match self.get(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(PageError::bad_request(format!("{label} is required."))),
        }
    }

    /// The field's value, trimmed, or `None` when missing or blank.
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    fn push(&mut self, name: String, value: String) -> Result<(), PageError> {
        if self.0.len() >= MAX_FIELDS || name.len() > MAX_FIELD_NAME {
            return Err(PageError::bad_request(
                "The form has too many or too long fields.",
            ));
        }
        self.0.push((name, value));
        Ok(())
    }

    /// The body of a form: `application/x-www-form-urlencoded` or `multipart/form-data` (whose
    /// file fields are read as UTF-8 text).
    async fn read(req: Request, state: &Shared) -> Result<Fields, PageError> {
        let multipart = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let mut fields = Fields::default();
        if multipart {
            let mut form = Multipart::from_request(req, state)
                .await
                .map_err(|e| PageError::bad_request(format!("The form could not be read: {e}")))?;
            loop {
                let field = match form.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(PageError::bad_request(format!(
                            "The form could not be read: {e}"
                        )));
                    }
                };
                let name = field.name().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.map_err(|e| {
                    PageError::bad_request(format!(
                        "The form field `{name}` could not be read: {e}"
                    ))
                })?;
                let value = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    PageError::bad_request(format!("The form field `{name}` is not UTF-8 text."))
                })?;
                fields.push(name, value)?;
            }
        } else {
            let bytes = axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|e| {
                    PageError::new(e.status(), format!("The form could not be read: {e}"))
                })?;
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                .map_err(|e| PageError::bad_request(format!("The form could not be read: {e}")))?;
            for (n, v) in pairs {
                fields.push(n, v)?;
            }
        }
        Ok(fields)
    }
}

/// A submitted form of a logged-in admin whose CSRF token checked out.
pub struct AdminForm {
    pub admin: Admin,
    pub fields: Fields,
}

impl FromRequest<Shared> for AdminForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Shared) -> Result<AdminForm, Response> {
        let (mut parts, body) = req.into_parts();
        let admin = Admin::from_request_parts(&mut parts, state).await?;
        let fields = Fields::read(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        match fields.get("csrf") {
            Some(given) if constant_time_eq(given.as_bytes(), admin.csrf.as_bytes()) => {
                Ok(AdminForm { admin, fields })
            }
            _ => {
                tracing::warn!(who = %admin.who, "An admin form came without its CSRF token; refused");
                Err(PageError::new(
                    StatusCode::FORBIDDEN,
                    "The form's security token is missing or out of date: reload the page and send it again.",
                )
                .into_response())
            }
        }
    }
}

/// The client's address (the peer of the TCP connection; behind a reverse proxy, the proxy's).
fn client_ip(peer: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(a)| a.ip())
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /admin/login`.
pub async fn login_form(
    State(state): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    login_page(&state, StatusCode::OK, &local_next(q.next.as_deref()), None)
}

fn login_page(state: &Shared, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let token = random_token();
    let off = state.config.admin.password_hash.is_none() && state.api_token().is_none();
    let body = html! {
        @if off {
            p role="alert" { "Logging in is off: set " code { "[admin] password_hash" } " (" code { "mailbridge admin set-password" } ") or " code { "[server] api_token" } " in the configuration." }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form method="post" action="/admin/login" {
            input type="hidden" name="csrf" value=(token);
            input type="hidden" name="next" value=(next);
            label for="password" { "Admin password or API token" }
            input #password type="password" name="password" autocomplete="current-password" required autofocus;
            button type="submit" { "Log in" }
        }
    };
    let mut response = (status, layout::bare("Log in", body)).into_response();
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, token, "/admin/login", 3600),
    );
    response
}

/// `POST /admin/login`.
pub async fn login(State(state): State<Shared>, req: Request) -> Response {
    let ip = client_ip(req.extensions().get::<ConnectInfo<SocketAddr>>());
    let headers = req.headers().clone();
    let fields = match Fields::read(req, &state).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let next = local_next(fields.get("next"));
    let cookie = cookie_value(&headers, LOGIN_COOKIE);
    let token_ok = match (fields.get("csrf"), cookie.as_deref()) {
        (Some(given), Some(expected)) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
        _ => false,
    };
    if !token_ok {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            Some("The login form was out of date (or cookies are off): try again."),
        );
    }
    if !state.admin_logins.allow(ip) {
        tracing::warn!(%ip, "Too many admin login attempts; refused without checking");
        let mut response = login_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many login attempts: wait a minute and try again."),
        );
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("60"));
        return response;
    }
    let password = fields.get("password").unwrap_or_default().to_owned();
    let hash = state.config.admin.password_hash.clone();
    let by_password = match hash {
        Some(hash) if !password.is_empty() => {
            let password = password.clone();
            tokio::task::spawn_blocking(move || {
                crate::config::verify_admin_password(&password, &hash)
            })
            .await
            .unwrap_or(false)
        }
        _ => false,
    };
    let by_token = !by_password
        && !password.is_empty()
        && state
            .api_token()
            .is_some_and(|t| constant_time_eq(password.as_bytes(), t.expose_secret().as_bytes()));
    if !by_password && !by_token {
        tracing::warn!(%ip, "An admin login failed (wrong password)");
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("Wrong password."),
        );
    }
    let how = if by_password { "password" } else { "API token" };
    let who = format!("admin ({how} login from {ip})");
    let token = random_token();
    let csrf = random_token();
    let hours = state.config.admin.session_hours;
    let expires =
        state.store.clock().now() + chrono::Duration::hours(i64::try_from(hours).unwrap_or(12));
    if let Err(e) = state
        .store
        .create_admin_session(&token, &csrf, &who, &crate::store::time_text(expires))
        .await
    {
        return PageError::unavailable("recording the session", e).into_response();
    }
    tracing::info!(%ip, how, "An admin logged in");
    let mut response = Redirect::to(&next).into_response();
    let max_age = i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, token, "/admin", max_age),
    );
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(&state, LOGIN_COOKIE, String::new(), "/admin/login", 0),
    );
    response
}

/// `POST /admin/logout`.
pub async fn logout(State(state): State<Shared>, form: AdminForm) -> Response {
    if let Err(e) = state.store.end_admin_session(&form.admin.token).await {
        return PageError::unavailable("ending the session", e).into_response();
    }
    let mut response = Redirect::to("/admin/login").into_response();
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, String::new(), "/admin", 0),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::local_next;

    #[test]
    fn after_login_only_admin_paths_are_followed() {
        for (given, expected) in [
            (Some("/admin/runs?x=1"), "/admin/runs?x=1"),
            (Some("/admin"), "/admin"),
            (None, "/admin"),
            (Some("https://evil.example/admin"), "/admin"),
            (Some("//evil.example"), "/admin"),
            (Some("/admin//evil.example"), "/admin"),
            (Some("/admin\\evil"), "/admin"),
            (Some("/v1/sync"), "/admin"),
            (Some("/admin\r\nSet-Cookie: x=1"), "/admin"),
        ] {
            assert_eq!(local_next(given), expected, "{given:?}");
        }
    }
}
