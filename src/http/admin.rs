//! The admin API: start a sync and read its report, list recent provider events (unmatched ones
//! in particular). Every route needs the bearer token.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiAuth, ApiError, Shared};
use crate::campaigns::jobs;
use crate::sync::report::new_run_id;
use crate::sync::runs;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/sync", post(start_sync))
        .route("/v1/sync/runs", get(list_runs))
        .route("/v1/sync/{run_id}", get(sync_status))
        .route("/v1/events", get(list_events))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    /// Audiences to sync (all configured ones when absent or empty).
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    full: bool,
}

/// `POST /v1/sync` → 202 `{"run_id", "run_ids"}`: one run per audience, each queued as a durable
/// job in its audience's queue (behind a run of that audience going on, here or elsewhere);
/// `run_id` is the first.
async fn start_sync(
    _auth: ApiAuth,
    State(state): State<Shared>,
    body: Option<Json<Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: SyncRequest = match body {
        None => SyncRequest::default(),
        Some(Json(v)) => serde_json::from_value(v).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("expected {{\"audiences\": [names], \"full\": bool}}: {e}"),
            )
        })?,
    };
    let audiences = state
        .config
        .select_audiences(&request.audiences)
        .map_err(|e| ApiError::bad_request("unknown_audience", e))?;
    if audiences.is_empty() {
        return Err(ApiError::bad_request(
            "no_audiences",
            "no [[audiences]] are configured",
        ));
    }
    if let Some(Err(e)) = audiences
        .iter()
        .map(|a| state.providers.require(a.provider))
        .find(Result::is_err)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            e.to_string(),
        ));
    }
    let mut ids = Vec::with_capacity(audiences.len());
    for audience in audiences {
        let run_id = new_run_id();
        jobs::enqueue_sync(&state.store, &audience.name, &run_id, request.full)
            .await
            .map_err(|e| ApiError::unavailable("queueing the sync", e))?;
        ids.push(run_id);
    }
    state.start_campaign_jobs();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": ids[0], "run_ids": ids})),
    ))
}

/// `GET /v1/sync/{run_id}`: the stored run report when the run has finished; otherwise where it
/// is (its step and committed count; `interrupted` when its worker died), or, before its run
/// started, its queued job (`queued`; `failed` with the reason when the run could not start).
async fn sync_status(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = runs::get(&state.store, &run_id)
        .await
        .map_err(|e| ApiError::unavailable("reading the run", e))?;
    if let Some(run) = row {
        if let Some(report) = run
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
        {
            let mut report = report;
            if let Some(obj) = report.as_object_mut() {
                obj.insert("status".into(), Value::String(run.status));
            }
            return Ok(Json(report));
        }
        let job = jobs::sync_job(&state.store, &run_id)
            .await
            .map_err(|e| ApiError::unavailable("reading the run", e))?;
        let error = job.and_then(|j| j.error).map(|e| e.message);
        let mut v =
            serde_json::to_value(&run).map_err(|e| ApiError::internal("showing the run", e))?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("error".into(), json!(error));
        }
        return Ok(Json(v));
    }
    let job = jobs::sync_job(&state.store, &run_id)
        .await
        .map_err(|e| ApiError::unavailable("reading the run", e))?;
    match job {
        Some(job) => Ok(Json(json!({
            "run_id": job.run_id,
            "audience": job.audience,
            "status": job.status,
            "enqueued_at": job.enqueued_at,
            "updated_at": job.updated_at,
            // A queued job waiting for another run says so (`waiting`); a failed one, why.
            "error": job.error.as_ref().filter(|e| e.code != "waiting").map(|e| e.message.clone()),
            "waiting_for": job.error.filter(|e| e.code == "waiting").map(|e| e.message),
        }))),
        None => Err(ApiError::not_found(format!("no sync run `{run_id}`"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    audience: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/sync/runs[?audience=NAME][&limit=N]`: the latest runs, newest first, each with its
/// status, step and committed count (no report); a run whose worker died shows `interrupted`.
async fn list_runs(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let runs = runs::list(&state.store, q.audience.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable("listing runs", e))?;
    Ok(Json(json!({ "runs": runs })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    unmatched: bool,
    limit: Option<i64>,
}

type EventListRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// `GET /v1/events[?unmatched=true][&limit=N]`: newest first. `unmatched` lists events that were
/// applied but matched no member.
async fn list_events(
    _auth: ApiAuth,
    State(state): State<Shared>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let sql = if q.unmatched {
        "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, applied_at, outcome, last_error
         FROM provider_events WHERE outcome = 'unmatched' ORDER BY id DESC LIMIT $1"
    } else {
        "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, applied_at, outcome, last_error
         FROM provider_events ORDER BY id DESC LIMIT $1"
    };
    let rows: Vec<EventListRow> = sqlx::query_as(sql)
        .bind(limit)
        .fetch_all(state.store.pool())
        .await
        .map_err(|e| ApiError::unavailable("reading events", e))?;
    let events: Vec<Value> = rows
        .into_iter()
        .map(
            |(
                id,
                provider,
                audience,
                list_id,
                kind,
                email,
                member_key,
                reason,
                fired_at,
                received_at,
                applied_at,
                outcome,
                last_error,
            )| {
                json!({
                    "id": id, "provider": provider, "audience": audience, "list_id": list_id,
                    "type": kind, "email": email, "member_key": member_key, "reason": reason,
                    "fired_at": fired_at, "received_at": received_at, "applied_at": applied_at,
                    "outcome": outcome, "last_error": last_error,
                })
            },
        )
        .collect();
    Ok(Json(json!({"events": events})))
}
