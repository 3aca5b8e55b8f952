//! The admin pages as a user meets them: a real headless Chromium (tests/support/browser.rs)
//! against a real `serve` with the provider simulator and a member DB (tests/support/serve.rs).
//! Each test saves screenshots under its temp dir and prints their paths (`.ci/run` keeps copies
//! under target/screenshots).

mod support;

use support::browser::Browser;
use support::serve::{Env, Options};

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
