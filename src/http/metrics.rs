//! Prometheus metrics. Code anywhere records through the `metrics` facade
//! (`metrics::counter!("mailbridge_…", "label" => value).increment(1)`); this module installs the
//! process-wide recorder once and renders `GET /metrics`. Metric names start with `mailbridge_`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (first call) and returns its handle; `None` when another recorder was
/// installed first (then `/metrics` says so instead of lying with zeros).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("metrics are off: {e}");
                None
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    match handle() {
        Some(h) => h.render(),
        None => "# metrics recorder unavailable in this process\n".to_owned(),
    }
}
