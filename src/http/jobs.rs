//! Sync runs started over HTTP (`POST /v1/sync`): their state until their `sync_runs` row tells
//! the rest. The run itself is the engine's ([`crate::sync::schedule::SyncRunner`]).

use super::Shared;
use crate::config::AudienceConfig;

/// What the server knows about a sync run that has no finished row yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Queued { audience: String },
    Running,
    Failed(String),
    Done,
}

pub fn job_state(state: &Shared, run_id: &str) -> Option<JobState> {
    state.jobs().get(run_id).cloned()
}

fn set_job(state: &Shared, run_id: &str, job: JobState) {
    state.jobs().insert(run_id.to_owned(), job);
}

/// Runs the given syncs one after another in the background (one at a time per process; the
/// audience lock keeps other processes out).
pub fn spawn_syncs(state: &Shared, runs: Vec<(AudienceConfig, String)>, full: bool) {
    for (audience, run_id) in &runs {
        set_job(
            state,
            run_id,
            JobState::Queued {
                audience: audience.name.clone(),
            },
        );
    }
    let state = state.clone();
    let runner = state.sync_runner();
    state.tasks.clone().spawn(async move {
        let _gate = runner.gate.lock().await;
        for (audience, run_id) in runs {
            if state.shutdown.is_cancelled() {
                set_job(&state, &run_id, JobState::Failed("the server shut down before the run started".into()));
                continue;
            }
            set_job(&state, &run_id, JobState::Running);
            match runner.run_one(&audience, &run_id, full).await {
                Ok(()) => set_job(&state, &run_id, JobState::Done),
                Err(message) => {
                    tracing::warn!(audience = %audience.name, "Sync run {run_id} did not complete: {message}");
                    set_job(&state, &run_id, JobState::Failed(message));
                }
            }
        }
    });
}
