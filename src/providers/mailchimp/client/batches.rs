//! Batch operations (`POST /batches`, `GET /batches/{batch_id}`; spec `postBatches`,
//! `getBatchesId`): many single calls sent as one, run by Mailchimp in the background. The client
//! submits them, polls the batch with a growing wait until it is `finished` (an error naming the
//! batch past a bound), downloads the results archive at `response_body_url` (a gzipped tar of
//! JSON files, each an array of `{"status_code", "operation_id", "response"}`, `response` a JSON
//! string) and hands back each operation's result by its `operation_id`.
//!
//! The archive is provider input: its download and its unpacked size and entry count are
//! bounded, entries that are not JSON arrays of results are skipped, and only the operation ids
//! this client sent are kept. It comes from a storage host, so it is fetched without the API key,
//! and it is not counted as an API call.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{Call, MailchimpClient, decode_json};
use crate::providers::mailchimp::error::{ErrorKind, MailchimpError};
use crate::providers::mailchimp::wire;

/// Operations per batch. Mailchimp publishes no cap (its docs submit 1,000 at once); 2,500 keeps
/// a request body near 1 MB and 10,000 member changes to a few batches.
pub const MAX_BATCH_OPERATIONS: usize = 2500;
/// Bytes of operations per batch request (bodies, paths and ids), well under what the API takes.
pub const MAX_BATCH_BODY_BYTES: usize = 1 << 20;
/// Largest results archive downloaded (gzipped).
pub const MAX_ARCHIVE_BYTES: usize = 64 << 20;
/// Largest results archive unpacked (all entries, tar headers included).
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;
/// Most entries read from one results archive.
pub const MAX_ARCHIVE_ENTRIES: usize = 10_000;

/// How a batch is waited for: the first wait, doubling up to `max_wait`, and the bound after
/// which the batch counts as failed.
#[derive(Clone, Debug)]
pub struct BatchPolling {
    pub first_wait: Duration,
    pub max_wait: Duration,
    pub give_up_after: Duration,
}

impl Default for BatchPolling {
    fn default() -> Self {
        BatchPolling {
            first_wait: Duration::from_millis(250),
            max_wait: Duration::from_secs(15),
            give_up_after: Duration::from_secs(30 * 60),
        }
    }
}

/// One operation of a batch: a single call's method, path (under `/3.0`) and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOperation {
    /// `PUT`, `POST`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// E.g. `/lists/abc/members/<hash>`.
    pub path: String,
    pub body: Option<String>,
    /// Unique within the operations sent together; the result comes back under it.
    pub operation_id: String,
}

impl BatchOperation {
    fn bytes(&self) -> usize {
        64 + self.path.len()
            + self.operation_id.len()
            + self.body.as_ref().map_or(0, |b| b.len() + b.len() / 8)
    }
}

/// What one operation answered.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationResult {
    pub status_code: u16,
    /// The body as Mailchimp gave it (JSON text, or empty for a 204).
    pub response: String,
}

impl MailchimpClient {
    /// Replaces how batches are waited for.
    pub fn with_batch_polling(mut self, polling: BatchPolling) -> MailchimpClient {
        self.batch_polling = polling;
        self
    }

    /// Runs `operations` as one or more batches (at most [`MAX_BATCH_OPERATIONS`] and
    /// [`MAX_BATCH_BODY_BYTES`] each, all submitted before the first is waited for) and returns
    /// each operation's result by its id. An operation missing from the results is absent from
    /// the map; an `Err` means no result of the batch it names could be read.
    #[tracing::instrument(skip_all, fields(operations = operations.len()))]
    pub async fn run_batch(
        &self,
        list_id: Option<&str>,
        operations: &[BatchOperation],
    ) -> Result<HashMap<String, OperationResult>, MailchimpError> {
        let mut chunks: Vec<&[BatchOperation]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, op) in operations.iter().enumerate() {
            let b = op.bytes();
            if i > start && (i - start >= MAX_BATCH_OPERATIONS || bytes + b > MAX_BATCH_BODY_BYTES)
            {
                chunks.push(&operations[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += b;
        }
        if start < operations.len() {
            chunks.push(&operations[start..]);
        }
        let mut submitted = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            submitted.push((self.submit_batch(list_id, chunk).await?, chunk));
        }
        let mut results = HashMap::with_capacity(operations.len());
        for (batch_id, chunk) in submitted {
            let url = self.wait_for_batch(list_id, &batch_id).await?;
            let wanted: HashSet<&str> = chunk.iter().map(|o| o.operation_id.as_str()).collect();
            results.extend(
                self.batch_results(list_id, &batch_id, &url, &wanted)
                    .await?,
            );
        }
        Ok(results)
    }

    /// `POST /batches`; returns the batch id. Retried like an idempotent write: the operations
    /// this client sends are upserts and tag updates, harmless when run twice.
    async fn submit_batch(
        &self,
        list_id: Option<&str>,
        operations: &[BatchOperation],
    ) -> Result<String, MailchimpError> {
        let request = wire::PostBatchesRequest {
            operations: operations
                .iter()
                .map(|o| wire::BatchOperation {
                    method: o.method,
                    path: &o.path,
                    body: o.body.as_deref(),
                    operation_id: &o.operation_id,
                })
                .collect(),
        };
        let call: Call<'_> = self.call_json(
            "submit_batch",
            list_id,
            reqwest::Method::POST,
            &["batches"],
            &request,
            true,
        )?;
        let batch: wire::Batch = self.execute(&call, decode_json).await?;
        Ok(batch.id)
    }

    /// Polls `GET /batches/{batch_id}` until `finished`; returns its `response_body_url`.
    async fn wait_for_batch(
        &self,
        list_id: Option<&str>,
        batch_id: &str,
    ) -> Result<String, MailchimpError> {
        let polling = &self.batch_polling;
        let started = tokio::time::Instant::now();
        let mut wait = polling.first_wait;
        loop {
            tokio::time::sleep(wait).await;
            let call = self.call(
                "batch_status",
                list_id,
                reqwest::Method::GET,
                &["batches", batch_id],
                None,
                true,
            );
            let batch: wire::Batch = self.execute(&call, decode_json).await?;
            if batch.status == "finished" {
                return Ok(batch.response_body_url);
            }
            let waited = started.elapsed();
            if waited >= polling.give_up_after {
                return Err(MailchimpError::new(
                    "batch_status",
                    list_id,
                    ErrorKind::BatchUnfinished {
                        batch_id: batch_id.to_owned(),
                        status: batch.status,
                        waited_secs: waited.as_secs(),
                    },
                ));
            }
            wait = (wait * 2)
                .min(polling.max_wait)
                .min(polling.give_up_after.saturating_sub(waited))
                .max(Duration::from_millis(1));
        }
    }

    /// Downloads and unpacks a finished batch's results (without the API key: the URL is a
    /// storage host's).
    async fn batch_results(
        &self,
        list_id: Option<&str>,
        batch_id: &str,
        url: &str,
        wanted: &HashSet<&str>,
    ) -> Result<HashMap<String, OperationResult>, MailchimpError> {
        let fail = |detail: String| {
            MailchimpError::new(
                "batch_results",
                list_id,
                ErrorKind::BatchResults {
                    batch_id: batch_id.to_owned(),
                    detail,
                },
            )
        };
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| fail(format!("response_body_url `{url}` is not an http(s) URL")))?;
        let bytes = self
            .retry
            .run("batch_results", true, |_| {
                let url = parsed.clone();
                async move { self.download(url).await }
            })
            .await
            .map(|done| done.value)
            .map_err(|gave_up| MailchimpError {
                operation: "batch_results",
                list_id: list_id.map(str::to_owned),
                attempts: gave_up.attempts,
                stop: None,
                kind: gave_up.error,
            })?;
        unpack_results(&bytes, wanted).map_err(fail)
    }

    async fn download(&self, url: url::Url) -> Result<Vec<u8>, ErrorKind> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| super::transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(super::error_from_response(
                status,
                &HeaderMap::new(),
                b"",
                &self.shown_base,
                chrono::Utc::now(),
            ));
        }
        let too_big = || ErrorKind::MalformedResponse {
            detail: format!("the results archive is over {MAX_ARCHIVE_BYTES} bytes"),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ARCHIVE_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| super::transport_error(&e))?
        {
            if body.len() + chunk.len() > MAX_ARCHIVE_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The error an operation's non-2xx result stands for, decided as for the single call.
    pub(in crate::providers::mailchimp) fn operation_error(
        &self,
        operation: &'static str,
        list_id: &str,
        result: &OperationResult,
    ) -> MailchimpError {
        let kind = match reqwest::StatusCode::from_u16(result.status_code) {
            Ok(status) => super::error_from_response(
                status,
                &HeaderMap::new(),
                result.response.as_bytes(),
                &self.shown_base,
                chrono::Utc::now(),
            ),
            Err(_) => ErrorKind::MalformedResponse {
                detail: format!("status code {} in a batch result", result.status_code),
            },
        };
        MailchimpError::new(operation, Some(list_id), kind)
    }
}

/// Reads a results archive: every `.json` entry that is an array of results; keeps those whose
/// `operation_id` is in `wanted` (the first one of each). Bounded by [`MAX_UNPACKED_BYTES`] and
/// [`MAX_ARCHIVE_ENTRIES`]; entries of another kind or that do not parse are skipped.
pub(in crate::providers::mailchimp) fn unpack_results(
    gzipped: &[u8],
    wanted: &HashSet<&str>,
) -> Result<HashMap<String, OperationResult>, String> {
    let unpacked = flate2::read::GzDecoder::new(gzipped).take(MAX_UNPACKED_BYTES);
    let mut archive = tar::Archive::new(unpacked);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    let mut out = HashMap::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ARCHIVE_ENTRIES {
            return Err(format!("more than {MAX_ARCHIVE_ENTRIES} entries"));
        }
        let mut entry = entry.map_err(|e| {
            format!("entry {n} cannot be read (not a gzipped tar, or over {MAX_UNPACKED_BYTES} bytes unpacked): {e}")
        })?;
        let is_json = entry
            .path()
            .ok()
            .and_then(|p| p.extension().map(|x| x.eq_ignore_ascii_case("json")))
            .unwrap_or(false);
        if !entry.header().entry_type().is_file() || !is_json {
            continue;
        }
        let mut text = Vec::new();
        entry.read_to_end(&mut text).map_err(|e| {
            format!("entry {n} cannot be read (over {MAX_UNPACKED_BYTES} bytes unpacked?): {e}")
        })?;
        let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        for item in items {
            let Some(id) = item.get("operation_id").and_then(Value::as_str) else {
                continue;
            };
            if !wanted.contains(id) || out.contains_key(id) {
                continue;
            }
            let Some(status_code) = item
                .get("status_code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
            else {
                continue;
            };
            let response = match item.get("response") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            out.insert(
                id.to_owned(),
                OperationResult {
                    status_code,
                    response,
                },
            );
        }
    }
    Ok(out)
}
