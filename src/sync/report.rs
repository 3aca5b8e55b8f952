//! The run report of DESIGN.md ("Sync run report"), printed by `--json` and stored in `sync_runs`.

use serde::Serialize;

use super::plan::{MemberNote, Plan, Samples};
use crate::store::{Store, StoreError};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ApiCalls {
    pub read: u64,
    pub write: u64,
}

pub use crate::domain::{ReportError, new_run_id};

/// What one [`prune_runs`] step deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrunedRuns {
    pub runs: u64,
    pub errors: u64,
}

/// Deletes up to `limit` member errors of sync runs finished before `before` (RFC 3339 text) or,
/// once there are none left, up to `limit` such runs; returns what it deleted (both zero: nothing
/// is left to delete). A run still `running` is kept. An error that holds a member back until
/// its row changes (the provider refused that content as an invalid address) is kept however
/// old: the consent rule reads it, not only the report.
pub async fn prune_runs(store: &Store, before: &str, limit: i64) -> Result<PrunedRuns, StoreError> {
    let errors = sqlx::query(
        "DELETE FROM sync_errors WHERE id IN (
             SELECT e.id FROM sync_errors e JOIN sync_runs r ON r.run_id = e.run_id
             WHERE r.status <> 'running' AND r.finished_at IS NOT NULL AND r.finished_at < $1
               AND e.content_hash IS NULL
             ORDER BY e.id LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(store.pool())
    .await
    .map_err(StoreError::query(
        "delete the member errors of old sync runs",
    ))?
    .rows_affected();
    if errors > 0 {
        return Ok(PrunedRuns { runs: 0, errors });
    }
    let runs = sqlx::query(
        "DELETE FROM sync_runs WHERE run_id IN (
             SELECT run_id FROM sync_runs
             WHERE status <> 'running' AND finished_at IS NOT NULL AND finished_at < $1
             ORDER BY finished_at LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(store.pool())
    .await
    .map_err(StoreError::query("delete old sync runs"))?
    .rows_affected();
    Ok(PrunedRuns { runs, errors: 0 })
}

/// The contract fields first (DESIGN.md), then additions: `skipped_opted_out`, `skipped` (every
/// skipped member with its reason), `archives` (every planned archive) and `samples`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunReport {
    pub run_id: String,
    pub audience: String,
    pub provider: String,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: String,
    pub members_read: u64,
    pub created: u64,
    pub updated: u64,
    pub archived: u64,
    pub unchanged: u64,
    pub skipped_invalid: u64,
    pub failed: u64,
    pub unsubscribes_pulled: u64,
    pub bounces_pulled: u64,
    pub api_calls: ApiCalls,
    pub errors: Vec<ReportError>,
    pub skipped_opted_out: u64,
    pub skipped: Vec<MemberNote>,
    pub archives: Vec<MemberNote>,
    pub samples: Samples,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A dry run's estimate of the API calls the run will make.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_estimate: Option<crate::providers::CallEstimate>,
    /// A dry run's look at the provider's daily request budget (Constant Contact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::providers::BudgetUse>,
    /// The interrupted run (its worker died) this run took over: it went on from what that run
    /// had committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

impl RunReport {
    /// The report of a dry run: counts are what the run would do. Takes the plan's member
    /// lists rather than copying them (a plan of 1,000,000 members may name tens of thousands).
    pub fn from_plan(
        run_id: String,
        started_at: String,
        finished_at: String,
        plan: Plan,
    ) -> RunReport {
        RunReport {
            run_id,
            audience: plan.audience.clone(),
            provider: plan.provider.clone(),
            dry_run: true,
            started_at,
            finished_at,
            members_read: plan.members_read,
            created: plan.create,
            updated: plan.update,
            archived: plan.archive(),
            unchanged: plan.unchanged,
            skipped_invalid: plan.skipped_invalid,
            failed: 0,
            unsubscribes_pulled: 0,
            bounces_pulled: 0,
            api_calls: ApiCalls::default(),
            errors: Vec::new(),
            skipped_opted_out: plan.skipped_opted_out,
            warning: plan.guardrail(),
            skipped: plan.skipped,
            archives: plan.archives,
            samples: plan.samples,
            calls_estimate: plan.calls,
            budget: plan.budget,
            resumed_from: None,
        }
    }
}
