//! Campaign pushes as durable jobs (`POST /v1/campaigns`): the request is checked and stored in
//! `campaign_jobs` (one row per idempotency key), answered at once, and pushed in the background
//! by a [`Worker`]: per audience one job at a time, in the order they were asked for, so a
//! second push for an audience waits behind the first instead of being refused.
//!
//! A worker takes an audience's queue under the lease `campaign-jobs:<audience>` and records it
//! on the job it runs (`lock_name`, `holder`). A job whose worker died (its lease expired) is
//! marked `interrupted` (when, and at which status) by whoever next looks ([`mark_interrupted`]),
//! and the next worker to take the queue runs it again. Running it again is safe: the push is
//! the `campaigns` row's state machine under its own lease (`push.rs`), at most once per key
//! (invariant 5): it finds the campaign it created, reads its status before any send, and a
//! campaign already sent is not sent again.
//!
//! Statuses: `queued`, `syncing`, `creating`, `sending` (a live worker has it), `sent`,
//! `scheduled`, `failed` (final), `interrupted` (its worker died; it runs again).
//!
//! The same table and worker are the one durable queue of audience jobs: a sync asked for over
//! HTTP (`POST /v1/sync`) is a job of kind `sync` ([`enqueue_sync`]) in its audience's queue,
//! keyed by its run id. It is `queued` until the worker takes it, `syncing` while its run goes
//! on, then `done` (its `sync_runs` row tells how the run ended) or `failed` (the run could not
//! start; the job says why). While another run of the audience holds the audience's lock (here
//! or in another process) it waits, first in its queue. A sync job is run once: taken again
//! after its worker died or shut down mid-run, it runs a sync that resumes the interrupted run
//! (`sync/runs.rs`: only what was not committed is written), named by its `resumed_by`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::push::{self, PushContext, PushStage};
use super::store::{self as rows, CampaignRecord};
use super::{CampaignError, CampaignState, PushRequest};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::new_run_id;
use crate::mapping::Mapping;
use crate::progress::Progress;
use crate::providers::ProviderSet;
use crate::source::MemberPool;
use crate::store::locks::LockHolder;
use crate::store::{Store, StoreError};
use crate::sync::SyncError;
use crate::sync::schedule::{RunFailed, SyncRunner};

pub const QUEUED: &str = "queued";
pub const INTERRUPTED: &str = "interrupted";
/// The final status of a sync job whose run happened.
pub const DONE: &str = "done";
const FINAL: [&str; 4] = ["sent", "scheduled", "failed", DONE];
/// `campaign_jobs.kind` of a campaign push and of a queued sync.
const CAMPAIGN: &str = "campaign";
const SYNC: &str = "sync";

/// A job as `GET /v1/campaigns/{key}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    pub key: String,
    pub audience: String,
    pub status: String,
    pub enqueued_at: String,
    pub started_at: Option<String>,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// How many times a worker took it (more than one: it was interrupted or waited).
    pub attempts: i64,
    /// When it was found interrupted, and at which status its worker stopped.
    pub interrupted_at: Option<String>,
    pub interrupted_step: Option<String>,
    pub error: Option<JobError>,
    /// The campaign's record, once the push has recorded it.
    pub campaign: Option<CampaignRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    idempotency_key: String,
    audience: String,
    content_hash: String,
    request: String,
    status: String,
    enqueued_at: String,
    started_at: Option<String>,
    updated_at: String,
    finished_at: Option<String>,
    attempts: i64,
    interrupted_at: Option<String>,
    interrupted_step: Option<String>,
    error_code: Option<String>,
    last_error: Option<String>,
}

const COLUMNS: &str = "kind, idempotency_key, audience, content_hash, request, status, enqueued_at, started_at, updated_at, finished_at, attempts, interrupted_at, interrupted_step, error_code, last_error";

impl Row {
    async fn job(self, store: &Store) -> Result<Job, StoreError> {
        let campaign = rows::get(store, &self.idempotency_key).await?;
        Ok(Job {
            error: match (self.error_code, self.last_error) {
                (Some(code), Some(message)) => Some(JobError { code, message }),
                _ => None,
            },
            key: self.idempotency_key,
            audience: self.audience,
            status: self.status,
            enqueued_at: self.enqueued_at,
            started_at: self.started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            attempts: self.attempts,
            interrupted_at: self.interrupted_at,
            interrupted_step: self.interrupted_step,
            campaign,
        })
    }
}

/// What [`enqueue`] did.
#[derive(Debug)]
pub enum Enqueued {
    /// A new job (HTTP 202).
    New(Job),
    /// The key was asked for before with the same campaign (HTTP 200).
    Existing(Job),
}

/// Checks `request` under `key` the way the push will (bad input is refused here, before
/// anything is stored) and stores it as a queued job.
pub async fn enqueue(
    store: &Store,
    config: &Config,
    request: &PushRequest,
    key: &str,
) -> Result<Enqueued, CampaignError> {
    super::validate_key(key)?;
    let audience = push::find_audience(config, &request.audience)?;
    let spec = super::validate(request, audience)?;
    let hash = super::content_hash(&spec);
    store.ensure_migrated().await?;
    if let Some(job) = existing(store, key, &hash).await? {
        return Ok(Enqueued::Existing(job));
    }
    // A key pushed before without a job (the CLI): the same campaign or a conflict.
    if let Some(record) = rows::get(store, key).await? {
        push::check_hash(&record, &hash)?;
    }
    if let Some(at) = spec.schedule {
        super::check_future(at, store.now())?;
    }
    let body = serde_json::to_string(request).map_err(|e| StoreError::Read {
        what: "campaign request",
        message: e.to_string(),
    })?;
    let now = store.now_text();
    let statement = sqlx::query(
        "INSERT INTO campaign_jobs (idempotency_key, seq, audience, content_hash, request, status, enqueued_at, updated_at)
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $6 FROM campaign_jobs WHERE TRUE
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(&audience.name)
    .bind(&hash)
    .bind(body)
    .bind(QUEUED)
    .bind(now);
    let inserted = store.execute("queue a campaign push", statement).await? == 1;
    let job = existing(store, key, &hash)
        .await?
        .ok_or_else(|| CampaignError::UnknownKey(key.to_owned()))?;
    Ok(if inserted {
        Enqueued::New(job)
    } else {
        Enqueued::Existing(job)
    })
}

/// The job of `key` when there is one with this content hash; a conflict when its hash differs.
async fn existing(store: &Store, key: &str, hash: &str) -> Result<Option<Job>, CampaignError> {
    let Some(row) = row(store, key).await? else {
        return Ok(None);
    };
    if row.content_hash != hash {
        return Err(CampaignError::KeyConflict {
            key: key.to_owned(),
            existing: row.content_hash,
            given: hash.to_owned(),
        });
    }
    Ok(Some(row.job(store).await?))
}

async fn row(store: &Store, key: &str) -> Result<Option<Row>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM campaign_jobs WHERE idempotency_key = $1 AND kind = $2"
    )))
    .bind(key)
    .bind(CAMPAIGN)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a campaign job"))
}

/// The job of `key`, after marking dead ones interrupted; `None` when there is no job (a key
/// pushed with the CLI has only its campaign record).
pub async fn get(store: &Store, key: &str) -> Result<Option<Job>, StoreError> {
    store.ensure_migrated().await?;
    mark_interrupted(store).await?;
    match row(store, key).await? {
        Some(r) => Ok(Some(r.job(store).await?)),
        None => Ok(None),
    }
}

/// The latest `limit` campaign push jobs, newest first (after marking dead ones interrupted),
/// each with its campaign's record once it has one.
pub async fn recent(store: &Store, limit: i64) -> Result<Vec<Job>, StoreError> {
    store.ensure_migrated().await?;
    mark_interrupted(store).await?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM campaign_jobs WHERE kind = $1 ORDER BY seq DESC LIMIT $2"
    )))
    .bind(CAMPAIGN)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("list campaign jobs"))?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(row.job(store).await?);
    }
    Ok(jobs)
}

/// Marks every job a worker had (`syncing`, `creating`, `sending`) whose lease is not alive
/// `interrupted`, with when and at which status; returns how many.
pub async fn mark_interrupted(store: &Store) -> Result<u64, StoreError> {
    let now = store.now_text();
    let statement = sqlx::query(
        "UPDATE campaign_jobs SET status = $1, interrupted_at = $2, interrupted_step = status, updated_at = $2
         WHERE status IN ('syncing', 'creating', 'sending') AND NOT EXISTS (
             SELECT 1 FROM locks WHERE locks.name = campaign_jobs.lock_name
               AND locks.holder = campaign_jobs.holder AND locks.expires_at >= $2)",
    )
    .bind(INTERRUPTED)
    .bind(now);
    let n = store
        .execute("mark interrupted campaign jobs", statement)
        .await?;
    if n > 0 {
        tracing::warn!(
            jobs = n,
            "Campaign jobs whose worker stopped without finishing are now recorded as interrupted; they run again"
        );
    }
    Ok(n)
}

async fn set_status(store: &Store, key: &str, status: &str) -> Result<(), StoreError> {
    let statement = sqlx::query(
        "UPDATE campaign_jobs SET status = $1, updated_at = $2 WHERE idempotency_key = $3",
    )
    .bind(status)
    .bind(store.now_text())
    .bind(key);
    store
        .execute("record a campaign job's status", statement)
        .await
        .map(drop)
}

async fn finish(
    store: &Store,
    key: &str,
    status: &str,
    error: Option<(&str, &str)>,
) -> Result<(), StoreError> {
    let now = store.now_text();
    let statement = sqlx::query(
        "UPDATE campaign_jobs SET status = $1, finished_at = $2, updated_at = $2, error_code = $3, last_error = $4
         WHERE idempotency_key = $5",
    )
    .bind(status)
    .bind(now)
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .bind(key);
    store
        .execute("record a campaign job's end", statement)
        .await
        .map(drop)
}

/// What a sync job stores as its request.
#[derive(serde::Deserialize, Serialize)]
struct SyncJobRequest {
    full: bool,
}

/// A queued sync as `GET /v1/sync/{run_id}` shows it until its run is recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncJob {
    pub run_id: String,
    pub audience: String,
    pub status: String,
    pub enqueued_at: String,
    pub updated_at: String,
    pub error: Option<JobError>,
}

/// Queues a sync of `audience` under `run_id` behind the audience's jobs; `false` when a job
/// of that id was queued before (a night's sync that another worker queued first).
pub async fn enqueue_sync(
    store: &Store,
    audience: &str,
    run_id: &str,
    full: bool,
) -> Result<bool, StoreError> {
    store.ensure_migrated().await?;
    let body = serde_json::to_string(&SyncJobRequest { full }).map_err(|e| StoreError::Read {
        what: "sync request",
        message: e.to_string(),
    })?;
    let now = store.now_text();
    let statement = sqlx::query(
        "INSERT INTO campaign_jobs (kind, idempotency_key, seq, audience, content_hash, request, status, enqueued_at, updated_at)
         SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, '', $4, $5, $6, $6 FROM campaign_jobs WHERE TRUE
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(SYNC)
    .bind(run_id)
    .bind(audience)
    .bind(body)
    .bind(QUEUED)
    .bind(now);
    Ok(store.execute("queue a sync", statement).await? == 1)
}

/// The run id of the nightly sync of `audience` for the night whose time is `slot`: the same in
/// every worker, so the night's sync is queued, and run, once.
pub fn nightly_run_id(slot: DateTime<Utc>, audience: &str) -> String {
    format!("nightly-{}-{audience}", slot.format("%Y%m%dT%H%MZ"))
}

/// The nightly schedule of one `serve` (`[server] nightly_sync`): at each night's time it queues
/// a sync of every audience under [`nightly_run_id`], which the job queue runs. With several
/// workers on one state DB each queues the night's syncs; the first insert wins and the others
/// change nothing, so every scheduled run happens once. With `[server] catch_up_missed`, a
/// `serve` starting after a night's time whose syncs were never queued (no process was up then)
/// queues them at once.
pub struct Nightly {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    /// Wakes this process's job worker.
    pub wake: Arc<Notify>,
    /// When the process started: the first night is the first after it.
    pub started: DateTime<Utc>,
}

impl Nightly {
    /// Until `shutdown`; nothing when `nightly_sync` is not set.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(at) = crate::sync::schedule::nightly_time(&self.config) else {
            return;
        };
        let catch_up = self
            .config
            .server
            .as_ref()
            .is_some_and(|s| s.catch_up_missed);
        if catch_up {
            let missed =
                crate::sync::schedule::previous_occurrence(self.started.with_timezone(&Local), at);
            self.queue_night(missed.with_timezone(&Utc), "missed nightly sync")
                .await;
        }
        let this = &self;
        crate::sync::schedule::nightly(at, &self.clock, &shutdown, self.started, |slot| {
            this.queue_night(slot, "nightly sync")
        })
        .await;
    }

    async fn queue_night(&self, slot: DateTime<Utc>, what: &str) {
        let mut queued = 0;
        for audience in &self.config.audiences {
            let run_id = nightly_run_id(slot, &audience.name);
            match enqueue_sync(&self.store, &audience.name, &run_id, false).await {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    audience = %audience.name,
                    "The {what} {run_id} could not be queued: {}",
                    crate::error_chain(&e)
                ),
            }
        }
        if queued > 0 {
            tracing::info!(
                audiences = queued,
                "Queued the {what} of {}",
                slot.with_timezone(&Local).format("%Y-%m-%d %H:%M %Z")
            );
            self.wake.notify_one();
        }
    }
}

/// The sync job `run_id`, after marking dead jobs interrupted; `None` when there is none.
pub async fn sync_job(store: &Store, run_id: &str) -> Result<Option<SyncJob>, StoreError> {
    store.ensure_migrated().await?;
    mark_interrupted(store).await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM campaign_jobs WHERE idempotency_key = $1 AND kind = $2"
    )))
    .bind(run_id)
    .bind(SYNC)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a sync job"))?;
    Ok(row.map(|r| SyncJob {
        error: match (r.error_code, r.last_error) {
            (Some(code), Some(message)) => Some(JobError { code, message }),
            _ => None,
        },
        run_id: r.idempotency_key,
        audience: r.audience,
        status: r.status,
        enqueued_at: r.enqueued_at,
        updated_at: r.updated_at,
    }))
}

/// How a job's run ended.
enum Outcome {
    /// Final (sent, scheduled or failed): the next job of the audience may go.
    Done,
    /// Not now (a sync of the audience is running, the push's key is held, a database was
    /// unreachable): the job stays first in its queue and is tried again later.
    Later(String),
}

/// Runs queued campaign jobs: one per process (`serve`), woken when a job is queued and every
/// [`Worker::poll`] otherwise (to take over jobs of a worker elsewhere that died).
#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    pub mapping: Arc<Mapping>,
    pub store: Store,
    pub providers: ProviderSet,
    pub members: MemberPool,
    pub clock: SharedClock,
    /// Passed to every push (the crash test of the binary stops the process there).
    pub after_create: Option<fn(&str)>,
    /// Runs queued syncs (sharing the process's one-sync-at-a-time gate).
    pub sync: SyncRunner,
}

impl Worker {
    /// How long the worker waits between looks when nothing wakes it: a third of a lease, so a
    /// job whose worker died runs again soon after its lease ran out.
    fn poll(&self) -> Duration {
        (self.store.lease_ttl() / 3).max(Duration::from_millis(100))
    }

    /// Runs jobs until `shutdown` (a job being pushed is finished first).
    pub async fn run(self, shutdown: CancellationToken, wake: Arc<Notify>) {
        let holder = LockHolder::this_process(&format!("campaign-jobs-{}", new_run_id()));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = self.round(&holder, &shutdown).await {
                tracing::warn!(
                    "The campaign job worker could not read its queue (tried again): {}",
                    crate::error_chain(&e)
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => {}
                () = self.clock.sleep(self.poll()) => {}
            }
        }
    }

    /// One look at every audience with unfinished jobs.
    async fn round(
        &self,
        holder: &LockHolder,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.store.ensure_migrated().await?;
        mark_interrupted(&self.store).await?;
        let audiences: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT audience FROM campaign_jobs WHERE status NOT IN ($1, $2, $3, $4)",
        )
        .bind(FINAL[0])
        .bind(FINAL[1])
        .bind(FINAL[2])
        .bind(FINAL[3])
        .fetch_all(self.store.pool())
        .await
        .map_err(StoreError::query("read the campaign queues"))?;
        for (audience,) in audiences {
            if shutdown.is_cancelled() {
                break;
            }
            let name = format!("campaign-jobs:{audience}");
            let Ok(lease) = self.store.lease(&name, holder.clone()).await? else {
                continue; // Another worker has this queue.
            };
            let drained = self.drain(&audience, &name, holder, &lease, shutdown).await;
            lease.release().await;
            drained?;
        }
        Ok(())
    }

    /// The audience's jobs in order, while this worker holds its queue.
    async fn drain(
        &self,
        audience: &str,
        lock: &str,
        holder: &LockHolder,
        lease: &crate::store::locks::Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let store = &self.store;
        while !shutdown.is_cancelled() && lease.is_held() {
            let next: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM campaign_jobs WHERE audience = $1 AND status NOT IN ($2, $3, $4, $5)
                 ORDER BY seq, enqueued_at, idempotency_key LIMIT 1"
            )))
            .bind(audience)
            .bind(FINAL[0])
            .bind(FINAL[1])
            .bind(FINAL[2])
            .bind(FINAL[3])
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("read the next campaign job"))?;
            let Some(job) = next else { return Ok(()) };
            let now = store.now_text();
            let statement = sqlx::query(
                "UPDATE campaign_jobs SET status = 'syncing', lock_name = $1, holder = $2, attempts = attempts + 1,
                        started_at = COALESCE(started_at, $3), updated_at = $3
                 WHERE idempotency_key = $4",
            )
            .bind(lock)
            .bind(holder.as_str())
            .bind(now)
            .bind(&job.idempotency_key);
            store.execute("take a campaign job", statement).await?;
            if job.status == INTERRUPTED {
                tracing::info!(key = %job.idempotency_key, "Campaign job interrupted at `{}`; running it again (at most once per key)", job.interrupted_step.as_deref().unwrap_or("?"));
            }
            match self.run_job(&job).await? {
                Outcome::Done => {}
                Outcome::Later(why) => {
                    tracing::info!(key = %job.idempotency_key, "Campaign job waits: {why}");
                    set_status(store, &job.idempotency_key, QUEUED).await?;
                    let statement = sqlx::query(
                        "UPDATE campaign_jobs SET last_error = $1, error_code = 'waiting' WHERE idempotency_key = $2",
                    )
                    .bind(why)
                    .bind(&job.idempotency_key);
                    store.execute("note why a job waits", statement).await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs one job: a queued sync, or a campaign push.
    async fn run_job(&self, job: &Row) -> Result<Outcome, StoreError> {
        if job.kind == SYNC {
            self.run_sync(job).await
        } else {
            self.run_push(job).await
        }
    }

    /// Runs a queued sync under its run id (once: see the module docs).
    async fn run_sync(&self, job: &Row) -> Result<Outcome, StoreError> {
        let store = &self.store;
        let job_id = job.idempotency_key.as_str();
        // Its run under its own id, or, when that run was interrupted (its worker died or shut
        // down) and nothing resumed it yet, a run that resumes it (under a new id, which the
        // interrupted run names as `resumed_by`). Once that has happened, the job is done.
        let run_id = match crate::sync::runs::get(store, job_id).await? {
            None => job_id.to_owned(),
            Some(run)
                if run.status == crate::sync::runs::INTERRUPTED && run.resumed_by.is_none() =>
            {
                new_run_id()
            }
            Some(_) => {
                finish(store, job_id, DONE, None).await?;
                return Ok(Outcome::Done);
            }
        };
        let run_id = run_id.as_str();
        let full = match serde_json::from_str::<SyncJobRequest>(&job.request) {
            Ok(r) => r.full,
            Err(e) => {
                let message = format!("the stored request cannot be read: {e}");
                finish(store, job_id, "failed", Some(("invalid_request", &message))).await?;
                return Ok(Outcome::Done);
            }
        };
        let Some(audience) = self
            .config
            .audiences
            .iter()
            .find(|a| a.name == job.audience)
        else {
            let message = format!("audience `{}` is no longer configured", job.audience);
            finish(
                store,
                run_id,
                "failed",
                Some(("unknown_audience", &message)),
            )
            .await?;
            return Ok(Outcome::Done);
        };
        let _gate = self.sync.gate.lock().await;
        match self.sync.run_one(audience, run_id, full).await {
            Ok(()) => {
                finish(store, job_id, DONE, None).await?;
                tracing::info!(run_id, audience = %audience.name, "Queued sync finished");
                Ok(Outcome::Done)
            }
            Err(RunFailed::Locked(why) | RunFailed::Stopped(why)) => Ok(Outcome::Later(why)),
            Err(RunFailed::Other(message)) => {
                tracing::warn!(audience = %audience.name, "Sync run {run_id} did not complete: {message}");
                finish(store, job_id, "failed", Some(("sync_failed", &message))).await?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Pushes one job, recording its stages as the push reaches them.
    async fn run_push(&self, job: &Row) -> Result<Outcome, StoreError> {
        let store = &self.store;
        let key = job.idempotency_key.as_str();
        let request: PushRequest = match serde_json::from_str(&job.request) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("the stored request cannot be read: {e}");
                finish(store, key, "failed", Some(("invalid_request", &message))).await?;
                return Ok(Outcome::Done);
            }
        };
        let source = match self.members.get().await {
            Ok(s) => s,
            Err(e) => {
                return Ok(Outcome::Later(format!(
                    "the member database is unreachable: {e}"
                )));
            }
        };
        let (stage_tx, mut stage_rx) = tokio::sync::watch::channel(None);
        let progress = Progress::hidden();
        let ctx = PushContext {
            config: &self.config,
            mapping: &self.mapping,
            store,
            source: &source,
            providers: &self.providers,
            progress: &progress,
            after_create: self.after_create,
            stage: Some(&stage_tx),
        };
        let pushing = push::push(&ctx, &request, Some(key));
        tokio::pin!(pushing);
        let result = loop {
            tokio::select! {
                r = &mut pushing => break r,
                Ok(()) = stage_rx.changed() => {
                    let stage: Option<PushStage> = *stage_rx.borrow_and_update();
                    if let Some(stage) = stage {
                        set_status(store, key, stage.as_str()).await?;
                    }
                }
            }
        };
        match result {
            Ok(outcome) => {
                let status = match outcome.record.state {
                    CampaignState::Sent | CampaignState::Sending => "sent",
                    CampaignState::Scheduled => "scheduled",
                    state if !outcome.acted => {
                        return Ok(Outcome::Later(format!(
                            "another push holds key `{key}` (its campaign is `{state}`)"
                        )));
                    }
                    state => {
                        let message = format!("the push ended with the campaign `{state}`");
                        finish(store, key, "failed", Some(("not_sent", &message))).await?;
                        return Ok(Outcome::Done);
                    }
                };
                finish(store, key, status, None).await?;
                tracing::info!(key, status, "Campaign job finished");
                Ok(Outcome::Done)
            }
            Err(CampaignError::Sync { source, .. })
                if matches!(*source, SyncError::Locked { .. }) =>
            {
                Ok(Outcome::Later(format!(
                    "its preflight sync waits for another: {source}"
                )))
            }
            // The key's lease is held by a push that recorded nothing (a worker killed as it
            // started this job): once that lease runs out, this job goes on.
            Err(e @ CampaignError::KeyBusy(_)) => Ok(Outcome::Later(e.to_string())),
            Err(e @ (CampaignError::Store(_) | CampaignError::Source(_))) => Ok(Outcome::Later(
                format!("the push could not go on: {}", crate::error_chain(&e)),
            )),
            Err(e) => {
                // Provider failures are told without their bodies (as the API always did).
                let message = match &e {
                    CampaignError::Provider(p) => {
                        format!(
                            "{} {} failed ({})",
                            p.provider_name(),
                            p.operation(),
                            p.code()
                        )
                    }
                    other => other.to_string(),
                };
                tracing::warn!(key, "Campaign job failed: {}", crate::error_chain(&e));
                finish(store, key, "failed", Some((error_code(&e), &message))).await?;
                Ok(Outcome::Done)
            }
        }
    }
}

/// The code a failed job shows (the same codes the synchronous API answered with).
fn error_code(e: &CampaignError) -> &'static str {
    match e {
        CampaignError::Invalid { .. } => "invalid_request",
        CampaignError::Refused(_) | CampaignError::KeyBusy(_) => "refused",
        CampaignError::KeyConflict { .. } => "conflict",
        CampaignError::UnknownKey(_) => "not_found",
        CampaignError::NotReady { .. } => "not_ready",
        CampaignError::Unconfirmed { .. } => "unconfirmed",
        CampaignError::ProviderState { .. } => "provider_state",
        CampaignError::Provider(_) => "provider_error",
        CampaignError::Sync { .. } => "sync_failed",
        CampaignError::Store(_) | CampaignError::Source(_) => "unavailable",
    }
}
