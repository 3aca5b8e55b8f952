//! A real browser per test: Debian's headless Chromium driven through its `chromedriver`
//! (packages `chromium` and `chromium-driver`, installed by `.ci/run`) with the fantoccini
//! WebDriver client, for the admin pages (tests/admin_browser.rs).
//!
//! [`Browser::start`] runs chromedriver on a free loopback port in a process group of its own,
//! waits (with a deadline) until its `/status` says it is ready, and opens a session: Chromium
//! `--headless=new` with a fresh profile in a temp dir, a 1280×900 window, `--no-sandbox` when the
//! tests run as root (Chromium's sandbox refuses root). Dropping the [`Browser`] kills the process
//! group: chromedriver and every Chromium process it started.
//!
//! [`Browser::screenshot`] saves a PNG under the directory the test gives (its temp dir) and
//! prints the path; when `MAILBRIDGE_SCREENSHOTS` names a directory (`.ci/run` sets it to
//! `target/screenshots` and lists what is there) a copy goes to `<that>/<test name>/` too, so the
//! pictures outlive the test's temp dir.
//!
//! Outside CI, a test skips with a message when `/usr/bin/chromium` or `/usr/bin/chromedriver` is
//! missing; with `CI=true` it fails. A browser that is installed but cannot start fails the test.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::in_ci;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long chromedriver may take to say it is ready, and an element to appear.
const READY_LIMIT: Duration = Duration::from_secs(20);
const ELEMENT_LIMIT: Duration = Duration::from_secs(10);
/// How long a click may take to load the next page.
const NAVIGATION_LIMIT: Duration = Duration::from_secs(20);

pub struct Browser {
    client: Option<Client>,
    driver: Child,
    driver_log: PathBuf,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    test_name: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group (see `start`): a negative pid kills the whole
        // group, the Chromium processes it started included. The signal is given with `-s` and
        // the group after `--`: procps's kill reads `kill -KILL -12345` as signal options and
        // signals group -1 or -2 instead, which as root is every process on the machine.
        let group = self.driver.id();
        if group > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The name of the running test (libtest names each test's thread after it; `#[tokio::test]`
/// runs its body on that thread), made fit for a directory name.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-")
        .replace(
            |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "_",
        )
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl Browser {
    /// A headless Chromium session whose screenshots go under `shots` (the test's temp dir);
    /// `None` (the test skips) when Chromium or chromedriver is not installed and `CI` is not
    /// `true`.
    pub async fn start(shots: &Path) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (Debian: apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            if in_ci() {
                panic!("no browser and CI=true: {why}");
            }
            eprintln!("SKIPPED: {why}; CI=true makes this a failure");
            return None;
        }

        let profile = tempfile::Builder::new()
            .prefix("mailbridge-chromium-")
            .tempdir()
            .unwrap();
        let driver_log = profile.path().join("chromedriver.log");
        let port = super::smtp::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let mut browser = Browser {
            client: None,
            driver,
            driver_log,
            _profile: profile,
            shots: shots.to_owned(),
            test_name: test_name(),
        };
        let url = format!("http://127.0.0.1:{port}");
        browser.wait_ready(&url).await;

        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!(
                "--user-data-dir={}",
                browser._profile.path().join("profile").display()
            ),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-breakpad".to_owned(),
        ];
        if running_as_root() {
            args.push("--no-sandbox".to_owned());
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            // A page that does not load in 20 s fails its step instead of waiting for
            // chromedriver's default of five minutes.
            "timeouts": { "pageLoad": 20_000, "script": 10_000, "implicit": 0 },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "open a Chromium session through chromedriver at {url}: {e}\n{}",
                    browser.driver_log_tail()
                )
            });
        browser.client = Some(client);
        Some(browser)
    }

    /// Polls chromedriver's `/status` until it reports `ready`, for at most [`READY_LIMIT`].
    async fn wait_ready(&mut self, url: &str) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["value"]["ready"] == true
            {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited before it was ready ({status})\n{}",
                    self.driver_log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver at {url} not ready within {READY_LIMIT:?}\n{}",
                self.driver_log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn driver_log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.driver_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("chromedriver log ({}):\n{tail}", self.driver_log.display())
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Loads `url` and waits for it to finish loading.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    pub async fn current_url(&self) -> url::Url {
        self.client().current_url().await.unwrap()
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.client().source().await.unwrap()
    }

    pub async fn title(&self) -> String {
        self.client().title().await.unwrap()
    }

    /// The element `css` selects, once there is one (for at most [`ELEMENT_LIMIT`]).
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for(Locator::Css(css), css).await
    }

    /// Every element `css` selects now (none is not an error).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    async fn wait_for(&self, locator: Locator<'_>, what: &str) -> Element {
        let found = self
            .client()
            .wait()
            .at_most(ELEMENT_LIMIT)
            .for_element(locator)
            .await;
        match found {
            Ok(element) => element,
            Err(e) => {
                let url = self.current_url().await;
                let shot = self.screenshot("not-found").await;
                panic!(
                    "no {what} on {url} within {ELEMENT_LIMIT:?} ({e}); the page: {}",
                    shot.display()
                )
            }
        }
    }

    /// Types `value` into the form field named `name` (an input, textarea or select), replacing
    /// what it held.
    pub async fn fill(&self, name: &str, value: &str) {
        let field = self.find(&format!("[name=\"{name}\"]")).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear field {name}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into field {name}: {e}"));
    }

    /// Clicks `element` (`what`, for messages), which loads another page (a link, a form's
    /// button: the admin pages run no scripts), and returns once the page the click started on is
    /// gone. chromedriver's click does not always wait for a form's submission to navigate, so
    /// the old page's root element is watched until it goes stale; the commands after that wait
    /// for the new page to load, as chromedriver makes every command wait for a navigation
    /// going on.
    async fn click_to_leave(&self, element: Element, what: &str) {
        let old = self
            .client()
            .find(Locator::Css("html"))
            .await
            .unwrap_or_else(|e| panic!("find the page's root before clicking {what}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {what}: {e}"));
        let deadline = Instant::now() + NAVIGATION_LIMIT;
        loop {
            match old.tag_name().await {
                Err(e) if gone(&e) => return,
                Err(e) => panic!("after clicking {what}: {e}"),
                Ok(_) => {}
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("click-stuck").await;
                panic!(
                    "clicking {what} loaded no other page within {NAVIGATION_LIMIT:?}; the page: {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clicks the element `css` selects (a link or a button that loads another page) and waits
    /// for the page to change.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.click_to_leave(element, css).await;
    }

    /// Clicks the button (`<button>` or `<input type=submit>`) whose text is `text`, with
    /// white space trimmed, and waits for the page to change.
    pub async fn click_button(&self, text: &str) {
        let xpath = format!(
            "//button[normalize-space(.)={q}] | //input[(@type='submit' or @type='button') and @value={q}]",
            q = xpath_literal(text)
        );
        let what = format!("button {text:?}");
        let button = self.wait_for(Locator::XPath(&xpath), &what).await;
        self.click_to_leave(button, &what).await;
    }

    /// Clicks the link whose text is `text` and waits for the page to change.
    pub async fn click_link(&self, text: &str) {
        let what = format!("link {text:?}");
        let link = self.wait_for(Locator::LinkText(text), &what).await;
        self.click_to_leave(link, &what).await;
    }

    /// Clicks `element` (a link or a button that loads another page, found by the caller: in a
    /// table row, say) and waits for the page to change; `what` names it in messages.
    pub async fn click_element(&self, element: Element, what: &str) {
        self.click_to_leave(element, what).await;
    }

    /// Types `value` into the field named `name` inside `scope` (one row's form, say), replacing
    /// what it held.
    pub async fn fill_in(&self, scope: &Element, name: &str, value: &str) {
        let field = scope
            .find(Locator::Css(&format!("[name=\"{name}\"]")))
            .await
            .unwrap_or_else(|e| panic!("find field {name} in its scope: {e}"));
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear field {name}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into field {name}: {e}"));
    }

    /// The rows (`tbody tr`) of the table `table_css` selects, each as the texts of its cells;
    /// none when there is no such table.
    pub async fn rows(&self, table_css: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for row in self.find_all(&format!("{table_css} tbody tr")).await {
            let mut cells = Vec::new();
            for cell in row
                .find_all(Locator::Css("td, th"))
                .await
                .unwrap_or_else(|e| panic!("read a row of {table_css}: {e}"))
            {
                cells.push(cell.text().await.unwrap_or_default());
            }
            rows.push(cells);
        }
        rows
    }

    /// The row (`tbody tr`) of the table `table_css` selects one of whose cells reads `text`
    /// exactly, once there is one (for at most [`ELEMENT_LIMIT`]).
    pub async fn row_with(&self, table_css: &str, text: &str) -> Element {
        let deadline = Instant::now() + ELEMENT_LIMIT;
        loop {
            for row in self.find_all(&format!("{table_css} tbody tr")).await {
                for cell in row
                    .find_all(Locator::Css("td, th"))
                    .await
                    .unwrap_or_default()
                {
                    if cell.text().await.is_ok_and(|t| t == text) {
                        return row;
                    }
                }
            }
            if Instant::now() >= deadline {
                let url = self.current_url().await;
                let shot = self.screenshot("row-not-found").await;
                panic!(
                    "no row reading {text:?} in {table_css} on {url}; the page: {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rendered text of the element `css` selects (as a user sees it: hidden parts left out).
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("read the text of {css}: {e}"))
    }

    /// The rendered text of the whole page.
    pub async fn body_text(&self) -> String {
        self.text("body").await
    }

    /// The value of the cookie `name` the browser holds for the current page's site, HttpOnly
    /// ones included.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client()
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    /// Saves what the window shows as `<shots>/<name>.png` (and a copy under
    /// `$MAILBRIDGE_SCREENSHOTS/<test name>/` when that is set), prints the path, and returns it.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take screenshot {name}: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "screenshot {name} is not a PNG"
        );
        let path = self.shots.join(format!("{name}.png"));
        std::fs::create_dir_all(&self.shots).unwrap();
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
        if let Some(keep) = std::env::var_os("MAILBRIDGE_SCREENSHOTS").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(keep).join(&self.test_name);
            std::fs::create_dir_all(&dir).unwrap();
            let kept = dir.join(format!("{name}.png"));
            std::fs::write(&kept, &png).unwrap_or_else(|e| panic!("write {}: {e}", kept.display()));
            eprintln!("screenshot kept: {}", kept.display());
        }
        path
    }

    /// Resizes the window (a phone: 390×844).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client()
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resize to {width}x{height}: {e}"));
    }

    /// Ends the session (Chromium quits); chromedriver goes when the [`Browser`] is dropped.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

/// Whether `e`, the answer to a command on an element, says the element's document is gone: a
/// stale reference, or, while the next page replaces it, chromedriver's "unknown error" that the
/// node "does not belong to the document".
fn gone(e: &fantoccini::error::CmdError) -> bool {
    e.is_stale_element_reference()
        || e.is_no_such_element()
        || (e.is_unknown_error() && e.to_string().contains("does not belong to the document"))
}

/// `s` as an XPath 1.0 string literal (which has no escapes: quotes are joined with `concat`).
fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}
