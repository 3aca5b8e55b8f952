//! What every kind of run (sync, pull, writeback) shares: its id, and the per-member error its
//! report lists.

use std::borrow::Cow;

use serde::Serialize;

/// A member the run report names, with a code and a message: one the run could not handle, or
/// one a sync plan skips, archives or samples (its `MemberNote`). The code, and the message when
/// it names nothing of the member, are borrowed constants: a plan holds a note for every member
/// it skips (78,000 of a 1,000,000-member sample), and a copy of each text per note was 2.8 MB
/// of a dry run's peak memory.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReportError {
    pub member_key: Option<String>,
    pub email: Option<String>,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
}

/// A run id: UTC time and 32 random bits, sortable by start.
pub fn new_run_id() -> String {
    format!(
        "{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u32>()
    )
}
