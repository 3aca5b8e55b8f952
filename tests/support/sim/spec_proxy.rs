//! Runs `../shared/tools/spec-proxy` (Prism driven by the provider's official spec: Mailchimp's, or
//! Constant Contact's with `spec-proxy constant-contact <upstream>/v3 <port>`) in front of the
//! simulator when `MAILBRIDGE_SPEC_PROXY=1`, so every request a test sends is validated against the
//! spec; a violation answers 422. Prism serves the API at its root: the proxy URL has no `/3.0`
//! (or `/v3`).
//!
//! The first run installs Prism with npm (node 20 + npm needed; about 30 s here); later runs start
//! in about 4 s. `MAILBRIDGE_SHARED` overrides where `shared/` is (default: `../shared` beside the
//! repository).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SpecProxy {
    child: Child,
    port: u16,
}

pub fn enabled() -> bool {
    std::env::var("MAILBRIDGE_SPEC_PROXY").is_ok_and(|v| v == "1")
}

fn script() -> PathBuf {
    let shared = std::env::var_os("MAILBRIDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    shared.join("tools/spec-proxy")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl SpecProxy {
    /// Starts the proxy in front of `upstream` (a URL ending in `/3.0`) if enabled.
    pub async fn start_if_enabled(upstream: &str) -> Option<Self> {
        Self::start_if_enabled_for("mailchimp", upstream).await
    }

    /// Starts the proxy for `provider` (`mailchimp` or `constant-contact`) in front of `upstream`
    /// (a URL ending in `/3.0` or `/v3`) if enabled.
    pub async fn start_if_enabled_for(provider: &str, upstream: &str) -> Option<Self> {
        if !enabled() {
            return None;
        }
        Some(Self::start_for(provider, upstream).await)
    }

    pub async fn start(upstream: &str) -> Self {
        Self::start_for("mailchimp", upstream).await
    }

    pub async fn start_for(provider: &str, upstream: &str) -> Self {
        let script = script();
        assert!(
            script.exists(),
            "spec-proxy not found at {}",
            script.display()
        );
        let port = free_port();
        let log = std::env::temp_dir().join(format!("mailbridge-spec-proxy-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create the spec-proxy log");
        let child = Command::new("bash")
            .arg(&script)
            .arg(provider)
            .arg(upstream)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start spec-proxy");
        let proxy = Self { child, port };
        proxy.wait_ready(&log).await;
        proxy
    }

    /// Waits until Prism answers anything (an unauthenticated ping gets 401 from Prism itself).
    async fn wait_ready(&self, log: &std::path::Path) {
        let started = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if client
                .get(format!("{}/ping", self.base_url()))
                .send()
                .await
                .is_ok()
            {
                eprintln!(
                    "spec-proxy ready on port {} after {:?}",
                    self.port,
                    started.elapsed()
                );
                return;
            }
            let waited = started.elapsed();
            assert!(
                waited < Duration::from_secs(240),
                "spec-proxy did not start within {waited:?}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SpecProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
