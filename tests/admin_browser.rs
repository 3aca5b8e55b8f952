//! The admin pages as a user meets them: a real headless Chromium (tests/support/browser.rs)
//! against a real `serve` with the provider simulator and a member DB of five members
//! (tests/support/serve.rs). Each test saves screenshots under its temp dir and prints their
//! paths (`.ci/run` keeps copies under target/screenshots).
//!
//! What the tests rely on in the pages' markup (keep it stable): the login form's `password`
//! field and "Log in" button; the `csrf` hidden field of every form; the runs page's `audience`
//! select and its "Run now" and "Dry run" buttons; a run report's `#failures` heading and the
//! table it labels (`table[aria-labelledby=failures]`: member, email, code, reason); the push
//! form's `subject`, `from_name`, `reply_to` and `html` fields and "Check before sending"
//! button; the confirm page's form (`action=/admin/campaigns/confirm`, hidden `key`) and
//! "Confirm and send" button; a push's `#campaign-status` and `#campaign-recipients`; the
//! "Log out" button; every page's `h1`.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::redirect::Policy;
use support::browser::Browser;
use support::serve::{Env, Options, TOKEN};

/// The admin password the tests log in with (its argon2 hash goes in `[admin] password_hash`).
const PASSWORD: &str = "correct horse battery staple";
/// The session cookie the pages set.
const SESSION: &str = "mailbridge_admin";

/// `[admin]` with the hash of [`PASSWORD`].
fn admin_section() -> String {
    let hash = mailbridge::config::hash_admin_password(PASSWORD).unwrap();
    format!("\n[admin]\npassword_hash = \"{hash}\"\n")
}

/// A `serve` with `[admin]` configured and a browser; `None` (the test skips) without Chromium
/// outside CI.
async fn start(opts: Options) -> Option<(Env, Browser)> {
    let env = Env::start(Options {
        extra_sections: format!("{}{}", opts.extra_sections, admin_section()),
        ..opts
    })
    .await;
    let browser = Browser::start(&env.dir).await?;
    Some((env, browser))
}

/// An HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Where a redirect points.
fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Opens `/admin`, which sends a browser without a session to the login page, and logs in with
/// `secret` (the admin password or the API token); the overview is shown.
async fn log_in(b: &Browser, env: &Env, secret: &str) {
    b.goto(&format!("{}/admin", env.base)).await;
    assert_eq!(b.current_url().await.path(), "/admin/login");
    b.fill("password", secret).await;
    b.click_button("Log in").await;
    assert_eq!(
        b.current_url().await.path(),
        "/admin",
        "{}",
        b.body_text().await
    );
    assert_eq!(b.text("h1").await, "Overview");
}

/// The browser's session cookie, as a `Cookie` header value (the browser must be on a page under
/// `/admin`, where the cookie applies).
async fn session_cookie(b: &Browser) -> String {
    let value = b
        .cookie(SESSION)
        .await
        .expect("the browser holds a session cookie");
    format!("{SESSION}={value}")
}

/// Reloads the page (as its "reload to follow" note asks) until the text of `css` is one of
/// `want`, for at most 60 s; that text.
async fn reload_until(b: &Browser, css: &str, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = b.text(css).await;
        if want.contains(&text.as_str()) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} still `{text}`, not one of {want:?}: {}",
            b.body_text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.client().refresh().await.unwrap();
    }
}

/// The harness itself: the browser reaches a real `serve` and reads what it answers.
#[tokio::test]
async fn the_browser_reads_a_real_serve() {
    let env = Env::start(Options::default()).await;
    let Some(browser) = Browser::start(&env.dir).await else {
        return;
    };
    let url = format!("{}/healthz", env.base);
    browser.goto(&url).await;
    assert_eq!(browser.current_url().await.as_str(), url);
    // Chromium shows a JSON answer as text in a <pre>.
    let shown = browser.text("pre").await;
    let health: serde_json::Value = serde_json::from_str(&shown)
        .unwrap_or_else(|e| panic!("/healthz as the browser shows it is not JSON ({e}): {shown}"));
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["state_db"], "reachable", "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");

    let shot = browser.screenshot("healthz").await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > 1000, "a screenshot of {} bytes", png.len());
    assert!(shot.starts_with(&env.dir), "{}", shot.display());

    browser.close().await;
    env.stop().await;
}

/// A wrong password is refused on the login page; the admin password logs in, with a session
/// cookie the page's scripts could not read (none run anyway) and that other sites' requests do
/// not carry.
#[tokio::test]
async fn an_admin_logs_in_with_the_password() {
    let Some((env, b)) = start(Options::default()).await else {
        return;
    };
    b.goto(&format!("{}/admin/runs", env.base)).await;
    let login = b.current_url().await;
    assert_eq!(login.path(), "/admin/login");
    assert_eq!(login.query(), Some("next=%2Fadmin%2Fruns"));
    assert_eq!(b.text("h1").await, "Log in");

    b.fill("password", "not the password").await;
    b.click_button("Log in").await;
    assert_eq!(b.current_url().await.path(), "/admin/login");
    assert!(
        b.body_text().await.contains("Wrong password."),
        "{}",
        b.body_text().await
    );
    assert!(b.cookie(SESSION).await.is_none());
    b.screenshot("wrong-password").await;

    b.fill("password", PASSWORD).await;
    b.click_button("Log in").await;
    // Back where the login was asked for.
    assert_eq!(b.current_url().await.path(), "/admin/runs");
    assert_eq!(b.text("h1").await, "Sync runs");
    let cookie = b
        .client()
        .get_named_cookie(SESSION)
        .await
        .expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Strict));
    assert_eq!(cookie.path(), Some("/admin"));

    b.click_link("Overview").await;
    assert_eq!(b.text("h1").await, "Overview");
    let overview = b.body_text().await;
    assert!(overview.contains("Audience newsletter"), "{overview}");
    assert!(overview.contains("No sync run yet."), "{overview}");
    assert!(
        !b.source().await.contains("argon2"),
        "the hash is never shown"
    );
    b.screenshot("overview").await;

    b.close().await;
    env.stop().await;
}

/// "Run now" from the runs page runs the sync; a member the provider refuses (an address
/// Mailchimp deleted for good) is listed on the run's page with its email and the reason, and the
/// overview links to it. "Dry run" shows the plan and writes nothing.
#[tokio::test]
async fn a_sync_runs_failures_are_shown_after_run_now() {
    let Some((env, b)) = start(Options::default()).await else {
        return;
    };
    // Mailchimp refuses to subscribe again an address deleted permanently.
    let refused = "m3@example.org";
    env.sim.subscribe(&env.list, refused).await;
    let path = format!(
        "{}/actions/delete-permanent",
        support::sim::member_path(&env.list, refused)
    );
    let r = env
        .sim
        .send_json(reqwest::Method::POST, &path, &serde_json::json!({}))
        .await;
    assert_eq!(r.status(), 204);

    log_in(&b, &env, TOKEN).await;
    b.click_link("Sync runs").await;
    assert!(b.body_text().await.contains("No sync run yet."));
    b.click_button("Run now").await;
    let run_url = b.current_url().await;
    let run_id = run_url
        .path()
        .strip_prefix("/admin/runs/")
        .unwrap_or_else(|| panic!("not a run's page: {run_url}"))
        .to_owned();
    let report = env.wait_for_run(&run_id).await;
    assert_eq!(report["failed"], 1, "{report}");
    b.client().refresh().await.unwrap();
    assert_eq!(b.text("h1").await, format!("Sync run {run_id}"));
    assert_eq!(b.text("#failures").await, "Failed members (1)");
    let rows = b.find_all("table[aria-labelledby=failures] tbody tr").await;
    assert_eq!(rows.len(), 1);
    let cells: Vec<String> = {
        let mut cells = Vec::new();
        for td in rows[0]
            .find_all(fantoccini::Locator::Css("td"))
            .await
            .unwrap()
        {
            cells.push(td.text().await.unwrap());
        }
        cells
    };
    assert_eq!(cells.len(), 4, "{cells:?}");
    assert_eq!((cells[0].as_str(), cells[1].as_str()), ("3", refused));
    assert_eq!(
        cells[2],
        report["errors"][0]["code"].as_str().unwrap(),
        "{report}"
    );
    assert!(!cells[3].is_empty(), "a reason is given: {cells:?}");
    b.screenshot("run-failures").await;

    // The overview links to the failures.
    b.click_link("Overview").await;
    b.click_link("1 members").await;
    assert_eq!(b.current_url().await, run_url);

    // The dry run plans the same audience and changes nothing.
    let jobs_before = env.state_count("SELECT COUNT(*) FROM campaign_jobs").await;
    b.click_link("Sync runs").await;
    b.click_button("Dry run").await;
    assert_eq!(b.text("h1").await, "Dry run of newsletter");
    let plan = b.body_text().await;
    assert!(plan.contains("Dry run: nothing was written."), "{plan}");
    assert!(plan.contains("Members read"), "{plan}");
    b.screenshot("dry-run").await;
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM campaign_jobs").await,
        jobs_before
    );

    b.close().await;
    env.stop().await;
}

/// A newsletter pushed from the campaigns page: the form, the preflight summary, "Confirm and
/// send". The same confirmation sent again (a double click, a reload that posts it again)
/// queues nothing more: the simulator delivers the campaign once to each of the five members.
#[tokio::test]
async fn a_campaign_is_pushed_through_the_confirm_step_and_sent_once() {
    let Some((env, b)) = start(Options::default()).await else {
        return;
    };
    log_in(&b, &env, PASSWORD).await;
    b.click_link("Campaigns").await;
    assert!(b.body_text().await.contains("Nothing pushed"));
    b.fill("subject", "Spring regatta").await;
    b.fill("from_name", "Riverside Rowing").await;
    b.fill("reply_to", "secretary@club.example").await;
    b.fill(
        "html",
        "<h1>Spring regatta</h1><p>The boats are back on the water.</p>",
    )
    .await;
    b.click_button("Check before sending").await;
    assert_eq!(b.text("h1").await, "Confirm the push");
    let preflight = b.body_text().await;
    assert!(preflight.contains("Spring regatta"), "{preflight}");
    assert!(
        preflight.contains("The boats are back on the water."),
        "{preflight}"
    );
    b.screenshot("campaign-preflight").await;
    // Nothing is queued before the confirmation.
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM campaign_jobs").await,
        0
    );

    // The confirm form as the browser would send it again.
    let mut confirm_form = Vec::new();
    for input in b
        .find_all("form[action='/admin/campaigns/confirm'] input[type=hidden]")
        .await
    {
        let name = input.attr("name").await.unwrap().unwrap();
        let value = input.attr("value").await.unwrap().unwrap_or_default();
        confirm_form.push((name, value));
    }
    assert!(
        confirm_form.iter().any(|(n, _)| n == "csrf")
            && confirm_form.iter().any(|(n, _)| n == "key"),
        "{confirm_form:?}"
    );
    let cookie = session_cookie(&b).await;

    b.click_button("Confirm and send").await;
    let pushed = b.current_url().await;
    let key = pushed
        .path()
        .strip_prefix("/admin/campaigns/")
        .unwrap_or_else(|| panic!("not a push's page: {pushed}"))
        .to_owned();
    // The second click: the same push, no new job.
    let again = no_redirects()
        .post(format!("{}/admin/campaigns/confirm", env.base))
        .header(COOKIE, &cookie)
        .form(&confirm_form)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&again), pushed.path());
    assert_eq!(
        env.state_count("SELECT COUNT(*) FROM campaign_jobs").await,
        1
    );

    let status = reload_until(&b, "#campaign-status", &["sent", "scheduled", "failed"]).await;
    assert_eq!(status, "sent", "{}", b.body_text().await);
    assert_eq!(b.text("#campaign-recipients").await, "5");
    b.screenshot("campaign-sent").await;

    let deliveries = env.sim.campaign_deliveries().await;
    let to: Vec<String> = deliveries
        .iter()
        .map(|d| d["email"].as_str().unwrap().to_lowercase())
        .collect();
    let unique: BTreeSet<&String> = to.iter().collect();
    assert_eq!(to.len(), 5, "{deliveries:#?}");
    assert_eq!(unique.len(), 5, "someone got it twice: {to:?}");
    let campaigns: BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d["campaign_id"].as_str().unwrap())
        .collect();
    assert_eq!(campaigns.len(), 1, "{deliveries:#?}");

    // A later reload of the confirmation still sends nothing.
    let late = no_redirects()
        .post(format!("{}/admin/campaigns/confirm", env.base))
        .header(COOKIE, &cookie)
        .form(&confirm_form)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&late), pushed.path());
    b.click_link("Campaigns").await;
    assert_eq!(b.find_all("main table tbody tr").await.len(), 1);
    assert_eq!(env.sim.campaign_deliveries().await.len(), 5);
    assert!(key.starts_with("admin-"), "{key}");

    b.close().await;
    env.stop().await;
}

/// Every form needs its CSRF token and every page a session: a POST with the session cookie but
/// without the token (or with another) is refused and does nothing, and so is anything without a
/// session; after "Log out" the old cookie opens nothing.
#[tokio::test]
async fn a_post_without_its_csrf_token_and_a_logged_out_get_are_refused() {
    let Some((env, b)) = start(Options::default()).await else {
        return;
    };
    let http = no_redirects();
    let jobs = || env.state_count("SELECT COUNT(*) FROM campaign_jobs");

    // Logged out: a page sends to the login, a form is refused.
    let r = http
        .get(format!("{}/admin/runs", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/admin/login?next=%2Fadmin%2Fruns");
    let r = http
        .post(format!("{}/admin/runs/start", env.base))
        .form(&[("audience", "newsletter")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    log_in(&b, &env, TOKEN).await;
    b.click_link("Sync runs").await;
    let cookie = session_cookie(&b).await;
    let csrf = b
        .find("form[action='/admin/runs/start'] input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();

    for (what, form) in [
        ("no token", vec![("audience", "newsletter")]),
        (
            "another token",
            vec![("audience", "newsletter"), ("csrf", "forged")],
        ),
    ] {
        let r = http
            .post(format!("{}/admin/runs/start", env.base))
            .header(COOKIE, &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        let page = r.text().await.unwrap();
        assert!(page.contains("security token"), "{what}: {page}");
    }
    let r = http
        .post(format!("{}/admin/campaigns/confirm", env.base))
        .header(COOKIE, &cookie)
        .form(&[
            ("key", "admin-forged"),
            ("audience", "newsletter"),
            ("subject", "Forged"),
            ("from_name", "Riverside Rowing"),
            ("reply_to", "secretary@club.example"),
            ("html", "<p>Forged</p>"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(jobs().await, 0, "a refused form queued something");

    // The same request with the page's token is taken: the refusals were the token's doing.
    let r = http
        .post(format!("{}/admin/runs/start", env.base))
        .header(COOKIE, &cookie)
        .form(&[("audience", "newsletter"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with("/admin/runs/"), "{}", location(&r));
    assert_eq!(jobs().await, 1);

    // Logging out ends the session for the browser and for the cookie it had.
    b.click_button("Log out").await;
    assert_eq!(b.current_url().await.path(), "/admin/login");
    b.goto(&format!("{}/admin/campaigns", env.base)).await;
    assert_eq!(b.current_url().await.path(), "/admin/login");
    b.screenshot("logged-out").await;
    let r = http
        .get(format!("{}/admin", env.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with("/admin/login"), "{}", location(&r));
    let r = http
        .post(format!("{}/admin/runs/start", env.base))
        .header(COOKIE, &cookie)
        .form(&[("audience", "newsletter"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(jobs().await, 1);

    b.close().await;
    env.stop().await;
}
