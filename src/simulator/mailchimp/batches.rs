//! Batch operations (`POST /batches`, `GET /batches/{batch_id}`, spec operations `postBatches`
//! and `getBatchesId`): a batch is stored `pending` and answered at once; its operations run
//! later, each through the same `/3.0` handlers a single call reaches (so validation and errors
//! are the single calls'), and the results are a gzipped tar of JSON files at
//! `response_body_url`, each file an array of `{"status_code", "operation_id", "response"}` with
//! `response` the handler's body as a JSON string.
//!
//! Progress is tied to the simulator's own work, not to wall-clock time: each status read of an
//! unfinished batch runs its next [`SimConfig::batch_operations_per_read`] operations (`started`),
//! and the read that runs the last one builds the archive and answers `finished`. A batch nobody
//! reads stays `pending`, and a test sees the same states whatever the machine's speed.
//!
//! Limits: Mailchimp publishes no cap on operations per batch (its docs submit 1,000 at once);
//! it refuses a new batch (429) while 500 are unfinished, and so does this.
//!
//! [`SimConfig::batch_operations_per_read`]: crate::simulator::SimConfig

use std::collections::{HashMap, VecDeque};
use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::problem::Problem;
use super::{ApiResult, json_response, parse_body};
use crate::simulator::SimState;
use crate::simulator::state::{format_time, random_id};

/// Unfinished batches an account may have (Mailchimp: 500).
pub const MAX_PENDING_BATCHES: usize = 500;
/// Results per JSON file of an archive.
const RESULTS_PER_FILE: usize = 1000;

/// Every batch of the simulator, by id.
#[derive(Default)]
pub struct Batches {
    by_id: HashMap<String, Batch>,
}

struct Batch {
    id: String,
    submitted_at: String,
    completed_at: Option<String>,
    total: usize,
    /// Operations not run yet, in the order they were sent.
    queue: VecDeque<Operation>,
    /// Operations taken off the queue by a status read that has not recorded them yet.
    running: usize,
    finished: usize,
    errored: usize,
    results: Vec<Value>,
    archive: Option<Bytes>,
}

/// One operation as sent: the spec's `Operations` object.
#[derive(Clone)]
struct Operation {
    method: Method,
    path: String,
    params: Option<serde_json::Map<String, Value>>,
    body: Option<String>,
    operation_id: Option<String>,
}

impl Batch {
    fn status(&self) -> &'static str {
        if self.archive.is_some() {
            "finished"
        } else if self.finished == 0 && self.running == 0 {
            "pending"
        } else {
            "started"
        }
    }

    fn to_json(&self, host: &str) -> Value {
        json!({
            "id": self.id,
            "status": self.status(),
            "total_operations": self.total,
            "finished_operations": self.finished,
            "errored_operations": self.errored,
            "submitted_at": self.submitted_at,
            "completed_at": self.completed_at.clone().unwrap_or_default(),
            "response_body_url": if self.archive.is_some() {
                format!("http://{host}/_sim/batch-results/{}.tar.gz", self.id)
            } else {
                String::new()
            },
            "_links": [],
        })
    }
}

/// `POST /batches` → 200 with the batch, `pending`.
pub async fn post_batch(
    State(state): State<SimState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let items = super::required(&body, "operations", Value::as_array)?;
    let mut queue = VecDeque::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        queue.push_back(parse_operation(i, item)?);
    }
    let submitted_at = format_time(state.world().clock.now());
    let mut batches = state.batches();
    let unfinished = batches
        .by_id
        .values()
        .filter(|b| b.archive.is_none())
        .count();
    if unfinished >= MAX_PENDING_BATCHES {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!("You have more than {MAX_PENDING_BATCHES} pending batches."),
        ));
    }
    let batch = Batch {
        id: random_id(10),
        submitted_at,
        completed_at: None,
        total: queue.len(),
        queue,
        running: 0,
        finished: 0,
        errored: 0,
        results: Vec::new(),
        archive: None,
    };
    let json = batch.to_json(host(&headers));
    batches.by_id.insert(batch.id.clone(), batch);
    Ok(json_response(json))
}

fn parse_operation(i: usize, item: &Value) -> Result<Operation, Problem> {
    let field = |name: &str| format!("operations.{i}.{name}");
    let method = match item.get("method").and_then(Value::as_str) {
        Some(m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE")) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| Problem::internal())?
        }
        Some(_) => {
            return Err(Problem::invalid_field(
                field("method"),
                "Value is not one of enum values: GET, POST, PUT, PATCH, DELETE",
            ));
        }
        None => return Err(Problem::blank(field("method"))),
    };
    let path = item
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| Problem::blank(field("path")))?;
    let params = match item.get("params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => {
            return Err(Problem::invalid_field(
                field("params"),
                "Schema describes object, but another type was found",
            ));
        }
    };
    let body = match item.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Problem::invalid_field(
                field("body"),
                "Schema describes string, but another type was found",
            ));
        }
    };
    let operation_id = match item.get("operation_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Problem::invalid_field(
                field("operation_id"),
                "Schema describes string, but another type was found",
            ));
        }
    };
    Ok(Operation {
        method,
        path: path.to_owned(),
        params,
        body,
        operation_id,
    })
}

/// `GET /batches/{batch_id}`: runs the batch's next operations, then answers its status.
pub async fn get_batch(
    State(state): State<SimState>,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let step = state.config().batch_operations_per_read.max(1);
    let taken: Vec<Operation> = {
        let mut batches = state.batches();
        let batch = batches
            .by_id
            .get_mut(&batch_id)
            .ok_or_else(Problem::not_found)?;
        let n = step.min(batch.queue.len());
        batch.running += n;
        batch.queue.drain(..n).collect()
    };
    let mut results = Vec::with_capacity(taken.len());
    for op in &taken {
        results.push(run_operation(&state, op).await);
    }
    let mut batches = state.batches();
    // A reset while the operations ran leaves nothing to record.
    let batch = batches
        .by_id
        .get_mut(&batch_id)
        .ok_or_else(Problem::not_found)?;
    batch.running -= taken.len();
    for (op, (status, response)) in taken.iter().zip(results) {
        batch.finished += 1;
        if !(200..300).contains(&status) {
            batch.errored += 1;
        }
        batch.results.push(json!({
            "status_code": status,
            "operation_id": op.operation_id,
            "response": response,
        }));
    }
    if batch.queue.is_empty() && batch.running == 0 && batch.archive.is_none() {
        batch.archive = Some(archive(&batch.id, &batch.results).map_err(|_| Problem::internal())?);
        batch.results = Vec::new();
        batch.completed_at = Some(format_time(state.world().clock.now()));
    }
    Ok(json_response(batch.to_json(host(&headers))))
}

/// `GET /_sim/batch-results/{batch_id}.tar.gz`: a finished batch's results (Mailchimp serves
/// them from a storage host, without the API key; so does this, outside `/3.0`).
pub async fn download(State(state): State<SimState>, Path(file): Path<String>) -> Response {
    let id = file.strip_suffix(".tar.gz").unwrap_or(&file);
    let archive = state
        .batches()
        .by_id
        .get(id)
        .and_then(|b| b.archive.clone());
    match archive {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/x-gzip")],
            Body::from(bytes),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Runs one operation through the `/3.0` handlers (without the stats, auth, concurrency and fault
/// layers: it is not a request of its own); returns the status and the body as a string.
async fn run_operation(state: &SimState, op: &Operation) -> (u16, String) {
    let mut uri = op.path.clone();
    if !uri.starts_with('/') {
        uri.insert(0, '/');
    }
    if let Some(params) = &op.params {
        let pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        if let Ok(q) = serde_urlencoded::to_string(&pairs)
            && !q.is_empty()
        {
            uri.push('?');
            uri.push_str(&q);
        }
    }
    let request = Request::builder()
        .method(op.method.clone())
        .uri(&uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(op.body.clone().unwrap_or_default()));
    let Ok(request) = request else {
        let p = Problem::bad_request(format!("`{}` is not a path", op.path));
        return (p.status.as_u16(), p.body().to_string());
    };
    let router = super::operation_routes().with_state(state.clone());
    let Ok(response) = router.oneshot(request).await;
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The results as Mailchimp packs them: a gzipped tar of JSON files, each an array of results.
fn archive(id: &str, results: &[Value]) -> std::io::Result<Bytes> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (n, chunk) in results.chunks(RESULTS_PER_FILE).enumerate() {
        let json = serde_json::to_vec(chunk)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{id}/{n}.json"), json.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    Ok(Bytes::from(gz.finish()?))
}

fn host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
}
