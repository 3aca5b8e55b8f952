//! The `sync_runs` rows as others read them, and what a run records about itself between its
//! start and its end (apply.rs writes those two): the step it is at, how many members it has
//! committed and when it last did, and which lease keeps it alive.
//!
//! A run is alive exactly while its lease (`lock_name`, `holder` in `locks`) has not expired
//! (`store/locks.rs`). A row still `running` whose lease has expired or is held by someone
//! else belongs to a worker that died: [`mark_interrupted`] turns it `interrupted`, keeping its
//! last step, its committed count and `progress_at`, the time of its last commit (where and
//! when it stopped), and `finished_at`, when it was found. Whoever next looks does it: the next
//! sync of any audience, `serve` at start and between jobs, and every read of runs over HTTP,
//! so nothing shows `running` without a live lease.
//!
//! Resuming: a sync commits its contacts per applied batch (with the run's `committed` count in
//! the same transaction), so the next run's plan starts from what was committed: members
//! already written are unchanged for it and cost nothing; only the rest are written. That run
//! names the interrupted one it takes over (`resumed_from` in its report, `resumed_by` on the
//! interrupted row).

use serde::Serialize;

use crate::store::{Store, StoreError, Tx};

/// The status of a run whose worker died.
pub const INTERRUPTED: &str = "interrupted";

/// Where a run is; stored in `sync_runs.step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Pulling,
    Planning,
    MergeFields,
    Applying,
    Archiving,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pulling => "pulling",
            Step::Planning => "planning",
            Step::MergeFields => "merge_fields",
            Step::Applying => "applying",
            Step::Archiving => "archiving",
        }
    }
}

/// Records that `run_id` has reached `step`.
pub(crate) async fn note_step(store: &Store, run_id: &str, step: Step) -> Result<(), StoreError> {
    let statement =
        sqlx::query("UPDATE sync_runs SET step = $1, progress_at = $2 WHERE run_id = $3")
            .bind(step.as_str())
            .bind(store.now_text())
            .bind(run_id);
    store
        .execute("record a run's step", statement)
        .await
        .map(drop)
}

/// Counts `$1` more members committed on run `$3` at `$2`.
pub(crate) const NOTE_COMMITTED_SQL: &str =
    "UPDATE sync_runs SET committed = committed + $1, progress_at = $2 WHERE run_id = $3";

/// Adds `n` committed members to `run_id`, in the transaction that commits them.
pub(crate) async fn note_committed(
    tx: &mut Tx<'_>,
    run_id: &str,
    n: u64,
    now: &str,
) -> Result<(), StoreError> {
    if n == 0 {
        return Ok(());
    }
    sqlx::query(NOTE_COMMITTED_SQL)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(now)
        .bind(run_id)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("record a run's progress"))?;
    Ok(())
}

/// Marks every `running` run whose lease is not alive (expired, released, or taken by another
/// holder) `interrupted`; returns how many.
pub async fn mark_interrupted(store: &Store) -> Result<u64, StoreError> {
    let now = store.now_text();
    let statement = sqlx::query(
        "UPDATE sync_runs SET status = $1, finished_at = $2
         WHERE status = 'running' AND NOT EXISTS (
             SELECT 1 FROM locks WHERE locks.name = sync_runs.lock_name
               AND locks.holder = sync_runs.holder AND locks.expires_at >= $2)",
    )
    .bind(INTERRUPTED)
    .bind(now);
    let n = store.execute("mark interrupted runs", statement).await?;
    if n > 0 {
        tracing::warn!(
            runs = n,
            "Sync runs whose worker stopped without finishing are now recorded as interrupted"
        );
    }
    Ok(n)
}

/// Run by a run of `audience` that holds the audience's lease: the interrupted runs of that
/// audience not resumed yet are resumed by `run_id`; returns the latest of them.
pub(crate) async fn take_over_interrupted(
    store: &Store,
    audience: &str,
    run_id: &str,
) -> Result<Option<String>, StoreError> {
    mark_interrupted(store).await?;
    let latest: Option<(String,)> = sqlx::query_as(
        "SELECT run_id FROM sync_runs WHERE audience = $1 AND status = $2 AND resumed_by IS NULL
         ORDER BY started_at DESC LIMIT 1",
    )
    .bind(audience)
    .bind(INTERRUPTED)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read interrupted runs"))?;
    if latest.is_some() {
        let statement = sqlx::query(
            "UPDATE sync_runs SET resumed_by = $1
             WHERE audience = $2 AND status = $3 AND resumed_by IS NULL",
        )
        .bind(run_id)
        .bind(audience)
        .bind(INTERRUPTED);
        store.execute("record which run resumes", statement).await?;
    }
    Ok(latest.map(|(id,)| id))
}

/// A run as listings show it (the report, when it finished, is read separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub audience: String,
    pub provider: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The step it reached.
    pub step: Option<String>,
    /// Members committed so far.
    pub committed: i64,
    /// When it last committed a member or reached a step.
    pub progress_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_by: Option<String>,
    #[serde(skip)]
    pub report: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    run_id: String,
    audience: String,
    provider: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    step: Option<String>,
    committed: i64,
    progress_at: Option<String>,
    resumed_by: Option<String>,
    report: Option<String>,
}

impl From<Row> for RunSummary {
    fn from(r: Row) -> RunSummary {
        RunSummary {
            run_id: r.run_id,
            audience: r.audience,
            provider: r.provider,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            step: r.step,
            committed: r.committed,
            progress_at: r.progress_at,
            resumed_by: r.resumed_by,
            report: r.report,
        }
    }
}

const COLUMNS: &str = "run_id, audience, provider, status, started_at, finished_at, step, committed, progress_at, resumed_by, report";

/// The run `run_id`, after marking dead runs interrupted.
pub async fn get(store: &Store, run_id: &str) -> Result<Option<RunSummary>, StoreError> {
    mark_interrupted(store).await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_runs WHERE run_id = $1"
    )))
    .bind(run_id)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a run"))?;
    Ok(row.map(RunSummary::from))
}

/// The latest `limit` runs (of `audience`, when given), newest first, after marking dead runs
/// interrupted.
pub async fn list(
    store: &Store,
    audience: Option<&str>,
    limit: i64,
) -> Result<Vec<RunSummary>, StoreError> {
    mark_interrupted(store).await?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_runs WHERE ($1 IS NULL OR audience = $1)
         ORDER BY started_at DESC, run_id DESC LIMIT $2"
    )))
    .bind(audience)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("list runs"))?;
    Ok(rows.into_iter().map(RunSummary::from).collect())
}
