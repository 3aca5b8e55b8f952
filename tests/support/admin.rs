//! The admin pages as a client sees them: the `[admin]` section with a known password, a login
//! through the real login form (its token cookie and hidden field), and a session that gets pages
//! and posts forms with its cookie and CSRF token.

use std::sync::OnceLock;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};

pub const PASSWORD: &str = "correct horse battery staple";

/// The admin password's hash, computed once per process.
pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| mailbridge::config::hash_admin_password(PASSWORD).unwrap())
}

/// The `[admin]` section with [`PASSWORD`], for `serve::Options::extra_server`.
pub fn section() -> String {
    format!("\n[admin]\npassword_hash = \"{}\"\n", password_hash())
}

/// A client that follows no redirects and keeps no cookies (the session sends its own).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v[name.len() + 1..].split(';').next().unwrap().to_owned())
}

/// The `value` of the first hidden input `name` in `html`.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

/// The `href` of the link marked `rel="next"` in `html`, unescaped.
pub fn next_link(html: &str) -> Option<String> {
    let marker = "rel=\"next\" href=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].replace("&amp;", "&"))
}

/// A logged-in admin.
pub struct Session {
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: String,
    pub csrf: String,
}

/// Logs in to the server at `base` with [`PASSWORD`] through the login form, as a browser does.
pub async fn login(base: &str) -> Session {
    let http = client();
    let page = http
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let login_cookie = set_cookie(&page, "mailbridge_login").expect("the login form's cookie");
    let token = hidden(&page.text().await.unwrap(), "csrf");
    let response = http
        .post(format!("{base}/admin/login"))
        .header(COOKIE, format!("mailbridge_login={login_cookie}"))
        .form(&[
            ("csrf", token.as_str()),
            ("next", "/admin"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "the login failed");
    let cookie = set_cookie(&response, "mailbridge_admin").expect("the session cookie");
    let mut session = Session {
        base: base.to_owned(),
        http,
        cookie,
        csrf: String::new(),
    };
    session.csrf = hidden(&session.page("/admin").await, "csrf");
    session
}

impl Session {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("mailbridge_admin={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    /// The page at `path`, which must answer 200.
    pub async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.unwrap()
    }

    /// Posts `fields`, with the session's CSRF token when `with_csrf`.
    pub async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        with_csrf: bool,
    ) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        if with_csrf {
            form.push(("csrf", &self.csrf));
        }
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, format!("mailbridge_admin={}", self.cookie))
            .form(&form)
            .send()
            .await
            .unwrap()
    }
}
