//! RFC 8058 one-click unsubscribe: `POST /u/{token}` with the body `List-Unsubscribe=One-Click`
//! (form-urlencoded or multipart/form-data, as receivers send it; no cookie, no login, no
//! redirect) records the opt-out durably and answers 200, again 200 for a repeat; `GET /u/{token}`
//! shows a confirmation page with a button that posts the same body, and never unsubscribes
//! (mail scanners prefetch links). A token that does not verify is a 404 saying nothing of why.
//! The token is in the path only: the request span names the route template, never the path.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, Shared};
use crate::events::opt_out::{self, OptOutError};
use crate::relay::unsubscribe::{self, BadToken, ONE_CLICK, Via};

/// The largest body read: the one-click body is 26 bytes, 1 KiB leaves room for multipart framing.
const MAX_BODY: usize = 1024;

pub fn routes() -> Router<Shared> {
    Router::new().route(
        "/u/{token}",
        get(page)
            .post(one_click)
            .layer(DefaultBodyLimit::max(MAX_BODY)),
    )
}

/// The answer to a token that does not verify: nothing about why.
fn unknown() -> Response {
    ApiError::not_found("no such unsubscribe link").into_response()
}

fn wrong_body() -> Response {
    ApiError::bad_request(
        "invalid_body",
        format!("the body must be exactly `{ONE_CLICK}` (RFC 8058)"),
    )
    .into_response()
}

/// A small HTML page that no cache keeps and whose URL (the token) no referrer carries on.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// HTML-escapes text (five characters; too small a need for a templating crate).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page_of(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    )
}

/// `GET /u/{token}`: what the button does, and the button. Changes nothing.
async fn page(State(state): State<Shared>, Path(token): Path<String>) -> Response {
    let Ok((email, category)) = unsubscribe::check(state.config.relay.as_ref(), &token) else {
        return unknown();
    };
    let body = format!(
        "<p>Stop sending {category} mail to <strong>{email}</strong>, and unsubscribe this address from the club's newsletters?</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
        category = escape(category.as_str()),
        email = escape(email.as_str()),
    );
    html(StatusCode::OK, page_of("Unsubscribe", &body))
}

/// Whether the body is exactly the one-click request, as either encoding a receiver may use.
async fn is_one_click(headers: &HeaderMap, body: Bytes) -> bool {
    let media = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        None | Some("application/x-www-form-urlencoded") => serde_urlencoded::from_bytes::<
            Vec<(String, String)>,
        >(&body)
        .is_ok_and(|pairs| pairs == [("List-Unsubscribe".to_owned(), "One-Click".to_owned())]),
        Some("multipart/form-data") => {
            let mut request = Request::new(Body::from(body));
            *request.headers_mut() = headers.clone();
            let Ok(mut form) = Multipart::from_request(request, &()).await else {
                return false;
            };
            let mut fields = Vec::new();
            loop {
                match form.next_field().await {
                    Ok(Some(field)) => {
                        let name = field.name().map(str::to_owned);
                        let Ok(value) = field.text().await else {
                            return false;
                        };
                        fields.push((name, value));
                        if fields.len() > 1 {
                            return false;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            fields == [(Some("List-Unsubscribe".to_owned()), "One-Click".to_owned())]
        }
        Some(_) => false,
    }
}

/// `POST /u/{token}`: the one-click opt-out, committed before the 200.
async fn one_click(
    State(state): State<Shared>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let relay = state.config.relay.as_ref();
    if unsubscribe::check(relay, &token).is_err() {
        return unknown();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::from_body_rejection(rejection, MAX_BODY).into_response();
        }
    };
    if !is_one_click(&headers, body).await {
        return wrong_body();
    }
    match opt_out::opt_out(&state.store, relay, &token, Via::Https).await {
        Ok(done) => {
            if done.event_id.is_some() {
                // The writeback worker writes the opt-out back to the member DB.
                state.events_ready.notify_one();
            }
            let body = format!(
                "<p>Done: <strong>{}</strong> gets no more {} mail and is unsubscribed from the club's newsletters.</p>",
                escape(done.email.as_str()),
                escape(done.category.as_str())
            );
            html(StatusCode::OK, page_of("Unsubscribed", &body))
        }
        Err(OptOutError::BadToken(BadToken)) => unknown(),
        Err(OptOutError::Store(e)) => {
            ApiError::unavailable("recording an unsubscribe", e).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    async fn check(content_type: Option<&str>, body: &str) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(t) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        }
        is_one_click(&headers, Bytes::from(body.to_owned())).await
    }

    #[tokio::test]
    async fn only_the_one_click_body_is_taken() {
        let form = Some("application/x-www-form-urlencoded");
        assert!(check(form, "List-Unsubscribe=One-Click").await);
        assert!(check(None, "List-Unsubscribe=One-Click").await);
        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(check(Some("multipart/form-data; boundary=XyZ"), multipart).await);
        for (t, body) in [
            (form, ""),
            (form, "List-Unsubscribe=One-Click&x=1"),
            (form, "List-Unsubscribe=one-click"),
            (
                form,
                "List-Unsubscribe=One-Click&List-Unsubscribe=One-Click",
            ),
            (form, "Unsubscribe=One-Click"),
            (
                Some("application/json"),
                "{\"List-Unsubscribe\":\"One-Click\"}",
            ),
            (Some("text/plain"), "List-Unsubscribe=One-Click"),
            (Some("multipart/form-data; boundary=XyZ"), "garbage"),
            (
                Some("multipart/form-data; boundary=XyZ"),
                "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n--XyZ--\r\n",
            ),
        ] {
            assert!(!check(t, body).await, "{t:?} {body}");
        }
    }
}
