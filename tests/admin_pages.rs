//! The admin pages of `serve` over HTTP (issue 21): login (admin password or API token), the
//! session cookie's flags, login rate limiting, CSRF on every form, the security headers, the
//! pages' content, the run and dry-run buttons, the campaign confirm step sent once, logout,
//! `mailbridge admin set-password`, and that no secret is ever rendered. The same flows in a
//! real browser are in tests/admin_browser.rs.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use support::admin::{PASSWORD, client, hidden, password_hash};
use support::serve::{Env, MANDRILL_KEY, Options, SECRET, TOKEN};

async fn env_with(extra_admin: &str) -> Env {
    Env::start(Options {
        extra_server: format!("{}{extra_admin}", support::admin::section()),
        ..Options::default()
    })
    .await
}

/// The value of cookie `name` among a response's `Set-Cookie` headers, with the header itself:
/// the flags are checked here.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap().to_owned();
            (value, v.to_owned())
        })
}

struct Session {
    base: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

/// Logs in with `password`: the login page's form token and cookie, then the form.
async fn try_login(base: &str, password: &str) -> reqwest::Response {
    let http = client();
    let page = http
        .get(format!("{base}/admin/login?next=/admin/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let (login_cookie, _) = set_cookie(&page, "mailbridge_login").expect("login cookie");
    let html = page.text().await.unwrap();
    let token = hidden(&html, "csrf");
    assert_eq!(token, login_cookie);
    http.post(format!("{base}/admin/login"))
        .header(COOKIE, format!("mailbridge_login={login_cookie}"))
        .form(&[
            ("csrf", token.as_str()),
            ("next", "/admin/runs"),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

async fn login(base: &str, password: &str) -> Session {
    let response = try_login(base, password).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin/runs");
    let (cookie, header) = set_cookie(&response, "mailbridge_admin").expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(header.contains(flag), "{flag} missing: {header}");
    }
    // Served over plain HTTP here ([server] public_url is not https://).
    assert!(!header.contains("Secure"), "{header}");
    let http = client();
    let html = http
        .get(format!("{base}/admin"))
        .header(COOKIE, format!("mailbridge_admin={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    Session {
        base: base.to_owned(),
        http,
        cookie,
        csrf,
    }
}

impl Session {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("mailbridge_admin={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }

    /// Posts `fields` with the session's CSRF token (`with_csrf`) or without it.
    async fn post(
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

async fn jobs(env: &Env, kind: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM campaign_jobs WHERE kind = $1")
        .bind(kind)
        .fetch_one(&env.state)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn pages_need_a_login_and_forms_their_csrf_token() {
    let env = env_with("").await;
    let http = client();
    // Logged out: a page sends to the login, a form is refused and does nothing.
    let page = http
        .get(format!("{}/admin/runs", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers()[LOCATION],
        "/admin/login?next=%2Fadmin%2Fruns"
    );
    let post = http
        .post(format!("{}/admin/runs/start", env.base))
        .form(&[("audience", "newsletter")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
    // A made-up session cookie is no session.
    let forged = http
        .get(format!("{}/admin", env.base))
        .header(COOKIE, "mailbridge_admin=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::SEE_OTHER);
    // A wrong password, and a login form without its token, log nobody in.
    let wrong = try_login(&env.base, "wrong password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&wrong, "mailbridge_admin").is_none());
    let tokenless = client()
        .post(format!("{}/admin/login", env.base))
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(tokenless.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&tokenless, "mailbridge_admin").is_none());

    let session = login(&env.base, PASSWORD).await;
    for path in ["/admin", "/admin/runs", "/admin/campaigns"] {
        let response = session.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let h = response.headers();
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    }
    assert!(session.page("/admin").await.contains("Audience newsletter"));

    // A form without the CSRF token, or with another one, is refused and queues nothing.
    for fields in [
        vec![("audience", "newsletter")],
        vec![("audience", "newsletter"), ("csrf", "guess")],
    ] {
        let refused = session.post("/admin/runs/start", &fields, false).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(jobs(&env, "sync").await, 0);
    // With it, the run is queued and shown.
    let started = session
        .post("/admin/runs/start", &[("audience", "newsletter")], true)
        .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let location = started.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/admin/runs/"), "{location}");
    assert_eq!(jobs(&env, "sync").await, 1);
    let run_id = location.trim_start_matches("/admin/runs/").to_owned();
    // The run finishes (the server's job worker) and its page shows its report.
    support::serve::wait_until(
        "the run's report",
        std::time::Duration::from_secs(60),
        || async { session.page(&location).await.contains("Members read") },
    )
    .await;
    let report = session.page(&location).await;
    assert!(report.contains("succeeded"), "{report}");
    assert!(session.page("/admin/runs").await.contains(&run_id));
    // An unknown audience is a clear 400.
    let unknown = session
        .post("/admin/runs/start", &[("audience", "nope")], true)
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("There is no audience `nope`")
    );
}

#[tokio::test]
async fn the_dry_run_shows_the_plan_and_writes_nothing() {
    let env = env_with("").await;
    let session = login(&env.base, PASSWORD).await;
    let response = session
        .post("/admin/runs/dry-run", &[("audience", "newsletter")], true)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.contains("Dry run: nothing was written"), "{html}");
    // Five members, none at the provider yet: five to create.
    assert!(
        html.contains("<tr><th>Create</th><td class=\"num\">5</td></tr>"),
        "{html}"
    );
    assert!(html.contains("Would create (first ones)"), "{html}");
    let (runs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sync_runs")
        .fetch_one(&env.state)
        .await
        .unwrap();
    assert_eq!(runs, 0);
    let members = env
        .sim
        .get_json(&format!("/lists/{}/members?count=10", env.list))
        .await;
    assert_eq!(members["total_items"], 0, "{members}");
}

#[tokio::test]
async fn login_attempts_are_limited_per_client() {
    let env = env_with("login_attempts_per_minute = 3\n").await;
    for _ in 0..3 {
        assert_eq!(
            try_login(&env.base, "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Over the limit even the right password is not checked.
    let limited = try_login(&env.base, PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "60");
    assert!(set_cookie(&limited, "mailbridge_admin").is_none());
}

#[tokio::test]
async fn the_api_token_logs_in_and_no_secret_is_ever_rendered() {
    let env = env_with("").await;
    let session = login(&env.base, TOKEN).await;
    let dry = session
        .post("/admin/runs/dry-run", &[("audience", "newsletter")], true)
        .await
        .text()
        .await
        .unwrap();
    let mut pages = vec![dry];
    for path in ["/admin", "/admin/runs", "/admin/campaigns", "/admin/login"] {
        pages.push(session.get(path).await.text().await.unwrap());
    }
    for html in &pages {
        for secret in [
            TOKEN,
            SECRET,
            MANDRILL_KEY,
            "test-key",
            password_hash(),
            PASSWORD,
        ] {
            assert!(!html.contains(secret), "a secret in:\n{html}");
        }
    }
}

#[tokio::test]
async fn a_campaign_is_pushed_once_through_the_confirm_step() {
    let env = env_with("").await;
    let session = login(&env.base, PASSWORD).await;
    let fields = [
        ("audience", "newsletter"),
        ("subject", "Spring regatta"),
        ("from_name", "Riverside Rowing Club"),
        ("reply_to", "club@club.example"),
        ("html", "<p>Boats at <b>nine</b>.</p>"),
    ];
    let preflight = session
        .post("/admin/campaigns/preflight", &fields, true)
        .await;
    assert_eq!(preflight.status(), StatusCode::OK);
    let html = preflight.text().await.unwrap();
    assert!(html.contains("Confirm and send"), "{html}");
    assert!(
        html.contains("Boats at **nine**."),
        "the text version: {html}"
    );
    // The preflight queued nothing.
    assert_eq!(jobs(&env, "campaign").await, 0);
    let key = hidden(&html, "key");
    let mut confirm: Vec<(&str, &str)> = fields.to_vec();
    confirm.push(("key", &key));
    // Confirmed twice (a double click, a reload): one job, the same page.
    let mut locations = Vec::new();
    for _ in 0..2 {
        let done = session
            .post("/admin/campaigns/confirm", &confirm, true)
            .await;
        assert_eq!(done.status(), StatusCode::SEE_OTHER);
        locations.push(done.headers()[LOCATION].to_str().unwrap().to_owned());
    }
    assert_eq!(locations[0], format!("/admin/campaigns/{key}"));
    assert_eq!(locations[0], locations[1]);
    assert_eq!(jobs(&env, "campaign").await, 1);
    // The same key with another campaign is refused.
    let mut other = confirm.clone();
    other[1] = ("subject", "Something else");
    let conflict = session.post("/admin/campaigns/confirm", &other, true).await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert_eq!(jobs(&env, "campaign").await, 1);
    // Its page, and the list, show it.
    assert!(session.page(&locations[0]).await.contains("newsletter"));
    assert!(session.page("/admin/campaigns").await.contains(&key));
    // A push without its CSRF token queues nothing.
    let mut fresh = fields.to_vec();
    fresh.push(("key", "admin-another"));
    let refused = session
        .post("/admin/campaigns/confirm", &fresh, false)
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(jobs(&env, "campaign").await, 1);
    // Bad input is named.
    let bad = session
        .post(
            "/admin/campaigns/preflight",
            &[
                ("audience", "newsletter"),
                ("subject", "x"),
                ("from_name", "Club"),
                ("html", "<p>x</p>"),
                ("reply_to", "not-an-address"),
            ],
            true,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let why = bad.text().await.unwrap();
    assert!(
        why.contains("reply_to: `not-an-address` is not an email address"),
        "{why}"
    );
}

/// Sessions on either state DB: logging in, using and ending one.
async fn logout_ends_the_session(pg_state: bool) {
    let env = Env::start(Options {
        extra_server: support::admin::section(),
        pg_state,
        ..Options::default()
    })
    .await;
    let session = login(&env.base, PASSWORD).await;
    let out = session.post("/admin/logout", &[], true).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (cleared, _) = set_cookie(&out, "mailbridge_admin").unwrap();
    assert_eq!(cleared, "");
    // The old cookie is dead on the server, not only in the browser.
    assert_eq!(session.get("/admin").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn logout_ends_the_session_sqlite_state_db() {
    logout_ends_the_session(false).await;
}

#[tokio::test]
async fn logout_ends_the_session_postgres_state_db() {
    logout_ends_the_session(true).await;
}

#[tokio::test]
async fn set_password_writes_the_hash_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbridge.toml");
    let original = format!(
        "# the club's settings\n[state]\nurl = \"sqlite://{}/state.db\"\n\n[members]\nurl = \"sqlite://{}/m.db\" # members\nmapping = \"m.toml\"\n",
        dir.path().display(),
        dir.path().display()
    );
    std::fs::write(&path, &original).unwrap();
    let run = |password: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(support::db::binary())
            .args(["--config", path.to_str().unwrap(), "admin", "set-password"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let short = run("short");
    assert_eq!(short.status.code(), Some(2), "{short:?}");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    let out = run(PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with(&original), "{written}");
    assert!(
        written.contains("[admin]\npassword_hash = \"$argon2id$v=19$"),
        "{written}"
    );
    assert!(!written.contains(PASSWORD));
    let config = mailbridge::config::Config::load(&path).unwrap();
    assert!(mailbridge::config::verify_admin_password(
        PASSWORD,
        config.admin.password_hash.as_ref().unwrap()
    ));
    // Nothing the command printed holds the password or its hash.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !printed.contains(PASSWORD) && !printed.contains("$argon2"),
        "{printed}"
    );
}
