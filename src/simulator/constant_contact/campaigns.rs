//! Email campaigns, test sends, account senders and bounce reports under `/v3` (research §6, §7).

use axum::Router;

use crate::simulator::SimState;

pub fn routes() -> Router<SimState> {
    Router::new()
}

use serde_json::Value;

use super::CcError;
use super::state::CcWorld;

/// Records a bounce of `email` on the campaign activity sent last.
pub fn record_bounce(
    cc: &mut CcWorld,
    email: &str,
    code: &str,
    now: i64,
) -> Result<Value, CcError> {
    let _ = (cc, email, code, now);
    Err(CcError::conflict("No campaign has been sent."))
}
