//! The admin pages as a user meets them: a real headless Chromium (tests/support/browser.rs)
//! against a real `serve` with the provider simulator and a member DB of five members
//! (tests/support/serve.rs). Each test saves screenshots under its temp dir and prints their
//! paths (`.ci/run` keeps copies under target/screenshots).
//!
//! What the tests rely on in the pages' markup (keep it stable, or change the tests with it):
//! - every page's `h1` and the navigation's link texts; the "Log out" button
//!   (`form.logout`, whose `csrf` field the tests read);
//! - login: the `password` field and the "Log in" button;
//! - runs: the `audience` select, the "Run now" and "Dry run" buttons; a run's `#failures`
//!   heading and `table[aria-labelledby=failures]` (member, email, code, reason); the overview's
//!   "1 member" (or "N members") link to the failed run;
//! - attention: `table#attention`, a row per member with the address and the reason in cells;
//! - suppressions: the `q` field and "Search" button; `table#suppressions` (address, reason, …),
//!   each liftable row with a form holding a `why` field and one submit button, an opt-out's row
//!   with no form; the "Lifted" tab link;
//! - outbox: the status tab links ("deferred (1)"); `table#messages` with the recipient and the
//!   last reply in cells and the message's link first in its row; a message's `#message-status`
//!   and "Retry now" button;
//! - campaigns: the push form's `subject`, `from_name`, `reply_to`, `html` fields and "Check
//!   before sending" button; the confirm page's form (`action=/admin/campaigns/confirm`, hidden
//!   `csrf` and `key`) and "Confirm and send" button; a push's `#campaign-status` and
//!   `#campaign-recipients`.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use support::admin::{self, PASSWORD};
use support::browser::Browser;
use support::serve::{Env, Options, TOKEN};
use support::smtp::{self, Sink, SinkOptions};

/// The session cookie the pages set.
const SESSION: &str = "mailbridge_admin";

/// A `serve` with `[admin]` configured and a browser; `None` (the test skips) without Chromium
/// outside CI.
async fn start(opts: Options) -> Option<(Env, Browser)> {
    let env = Env::start(Options {
        extra_sections: format!("{}{}", opts.extra_sections, admin::section()),
        ..opts
    })
    .await;
    let browser = Browser::start(&env.dir).await?;
    Some((env, browser))
}

/// A `serve` with `[admin]`, the relay's `smtp` route to an SMTP sink started with `sink` (in a
/// temp dir of its own, returned to be kept), and a browser; `None` (the test skips) without
/// aiosmtpd or Chromium outside CI.
async fn start_with_relay(sink: SinkOptions) -> Option<(Env, Browser, Sink, tempfile::TempDir)> {
    if !smtp::aiosmtpd_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), None, &sink);
    let route = smtp::smtp_section(sink.port, "none", None, None);
    let (env, browser) = start(Options {
        relay: Some(format!(
            "routes = [\"smtp\"]\nhourly_limit = 100\n{route}monthly_quota = 1000\n"
        )),
        ..Options::default()
    })
    .await?;
    Some((env, browser, sink, dir))
}

/// Queues a message to `to` through the API; its outbox id.
async fn send(env: &Env, to: &str) -> String {
    let r = env
        .api(reqwest::Method::POST, "/v1/messages")
        .json(&json!({"to": to, "subject": "Your membership", "text": "See you on the water.", "category": "notification"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `GET /v1/messages/{id}` until the message is `want`, for at most 20 s; the message.
async fn wait_message(env: &Env, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = env.api_json(&format!("/v1/messages/{id}")).await;
        if m["status"] == want {
            return m;
        }
        assert!(Instant::now() < deadline, "message {id} is not {want}: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
/// Mailchimp deleted for good) is listed on the run's page with its email and the reason, the
/// overview links to it, and the member needs attention. "Dry run" shows the plan and writes
/// nothing.
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
    let rows = b.rows("table[aria-labelledby=failures]").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cells = &rows[0];
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
    b.click_link("1 member").await;
    assert_eq!(b.current_url().await, run_url);

    // The member is among those needing attention, with the provider's reason.
    b.click_link("Needs attention").await;
    let row = b.row_with("#attention", refused).await;
    let why = row.text().await.unwrap();
    assert!(why.contains(cells[3].as_str()), "{why}");
    b.screenshot("attention").await;

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

/// A hard bounce at the relay suppresses the address; the suppression page lists it beside a spam
/// complaint, which has no lift button; lifting the bounce with a reason takes it off the list
/// (and onto the lifted one, with the reason and who lifted it). A forged lift of the complaint
/// is refused.
#[tokio::test]
async fn a_bounce_suppression_is_lifted_with_a_reason_and_is_gone() {
    let bounced = "m2@example.org";
    let complained = "m5@example.org";
    let Some((env, b, _sink, _dir)) = start_with_relay(SinkOptions {
        reject: vec![(bounced.into(), "550 5.1.1 No such user here".into())],
        ..SinkOptions::default()
    })
    .await
    else {
        return;
    };
    let id = send(&env, bounced).await;
    wait_message(&env, &id, "bounced").await;
    assert_eq!(
        env.suppression(bounced).await,
        Some(("hard_bounce".to_owned(), "relay:smtp".to_owned()))
    );
    // A complaint, as the provider's events record one: a consent opt-out.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sqlx::query(mailbridge::store::ADD_SUPPRESSION_SQL)
        .bind(complained)
        .bind("spam_complaint")
        .bind("mailchimp")
        .bind("abuse report")
        .bind(now.as_str())
        .execute(&env.state)
        .await
        .unwrap();

    log_in(&b, &env, TOKEN).await;
    b.click_link("Suppressions").await;
    assert_eq!(b.text("h1").await, "Suppressions");
    let rows = b.rows("#suppressions").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let complaint = b.row_with("#suppressions", complained).await;
    assert!(
        complaint
            .find_all(fantoccini::Locator::Css("form"))
            .await
            .unwrap()
            .is_empty(),
        "a complaint has no lift form"
    );
    assert!(complaint.text().await.unwrap().contains("not lifted here"));

    // Found by the start of the address.
    b.fill("q", "m2@").await;
    b.click_button("Search").await;
    let rows = b.rows("#suppressions").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], bounced);
    assert_eq!(rows[0][1], "hard_bounce");
    b.screenshot("suppression-found").await;

    let row = b.row_with("#suppressions", bounced).await;
    b.fill_in(&row, "why", "The member fixed their mailbox")
        .await;
    let lift = row
        .find(fantoccini::Locator::Css("button[type=submit]"))
        .await
        .unwrap();
    b.click_element(lift, "Lift").await;
    assert_eq!(b.current_url().await.path(), "/admin/suppressions");
    let page = b.body_text().await;
    assert!(page.contains(&format!("Lifted: {bounced}")), "{page}");
    let left: Vec<String> = b
        .rows("#suppressions")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        left,
        [complained],
        "the lifted address is gone from the list"
    );
    b.screenshot("suppression-lifted").await;

    // Recorded: the reason and who lifted it.
    b.click_link("Lifted").await;
    let row = b.row_with("#suppressions", bounced).await;
    let recorded = row.text().await.unwrap();
    assert!(
        recorded.contains("The member fixed their mailbox"),
        "{recorded}"
    );
    assert!(recorded.contains("API token login"), "{recorded}");
    let lifted_at: Option<String> =
        sqlx::query_scalar("SELECT lifted_at FROM suppressions WHERE email = $1")
            .bind(bounced)
            .fetch_one(&env.state)
            .await
            .unwrap();
    assert!(lifted_at.is_some());

    // The complaint cannot be lifted even by a form the page never offered.
    let csrf = b
        .find("form.logout input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let r = no_redirects()
        .post(format!("{}/admin/suppressions/lift", env.base))
        .header(COOKIE, session_cookie(&b).await)
        .form(&[
            ("email", complained),
            ("why", "asked nicely"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        env.suppression(complained).await,
        Some(("spam_complaint".to_owned(), "mailchimp".to_owned()))
    );

    b.close().await;
    env.stop().await;
}

/// A message the smarthost deferred (451) waits for its next attempt a minute later; "Retry now"
/// on its page sends it at once: the page shows it sent, with the 451 in its history, and the
/// smarthost has it. The overview then shows the relay's figures.
#[tokio::test]
async fn a_deferred_message_is_retried_from_the_outbox() {
    let to = "m1@example.org";
    let Some((env, b, sink, _dir)) = start_with_relay(SinkOptions {
        rcpt_fail: Some(("451 4.3.0 Try again later".into(), 1)),
        ..SinkOptions::default()
    })
    .await
    else {
        return;
    };
    let id = send(&env, to).await;
    let deferred = wait_message(&env, &id, "deferred").await;
    let next_attempt =
        chrono::DateTime::parse_from_rfc3339(deferred["next_attempt_at"].as_str().unwrap())
            .unwrap();
    assert!(
        next_attempt > chrono::Utc::now() + chrono::Duration::seconds(20),
        "the next attempt is not far enough off to tell a retry from it: {deferred}"
    );
    assert_eq!(sink.count(), 0);

    log_in(&b, &env, TOKEN).await;
    b.click_link("Outbox").await;
    b.click_link("deferred (1)").await;
    let rows = b.rows("#messages").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].iter().any(|c| c == to), "{rows:?}");
    assert!(
        rows[0].iter().any(|c| c == "451 4.3.0 Try again later"),
        "{rows:?}"
    );
    b.screenshot("outbox-deferred").await;

    let row = b.row_with("#messages", to).await;
    let open = row.find(fantoccini::Locator::Css("a")).await.unwrap();
    b.click_element(open, "the message's link").await;
    assert_eq!(b.current_url().await.path(), format!("/admin/outbox/{id}"));
    assert_eq!(b.text("#message-status").await, "deferred");
    let history = b.body_text().await;
    assert!(history.contains("451 4.3.0 Try again later"), "{history}");

    b.click_button("Retry now").await;
    assert_eq!(b.current_url().await.path(), format!("/admin/outbox/{id}"));
    let status = reload_until(
        &b,
        "#message-status",
        &["sent", "deferred", "bounced", "failed"],
    )
    .await;
    assert_eq!(status, "sent", "{}", b.body_text().await);
    let sent = wait_message(&env, &id, "sent").await;
    let sent_at = chrono::DateTime::parse_from_rfc3339(sent["sent_at"].as_str().unwrap()).unwrap();
    assert!(
        sent_at < next_attempt,
        "sent at {sent_at}, not before {next_attempt}"
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, [to]);
    let history = b.body_text().await;
    assert!(history.contains("451 4.3.0 Try again later"), "{history}");
    b.screenshot("outbox-retried").await;

    b.click_link("Overview").await;
    b.resize(1280, 1120).await;
    b.screenshot("overview-with-relay").await;

    b.close().await;
    env.stop().await;
}
