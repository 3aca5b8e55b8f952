//! Applying a bounce mail (`bounce ingest`, `POST /v1/bounces`): find the relay message it is
//! about, decide what it changes, and record that once. Owns the SQL of `bounce_messages`.
//!
//! Rules (DESIGN.md invariants 4, 8 and 9):
//! - The message is the outbox row its VERP address names (checked with `[relay] verp_secret`;
//!   a forged address, or one naming no message, is refused and changes nothing), or failing a
//!   VERP address, the row whose Message-ID the bounce returns. A bounce naming neither, an
//!   auto-reply and a message that is no bounce change nothing.
//! - Only the message's own recipient is acted on; any other address a bounce lists is ignored.
//! - A hard bounce, or a complaint (ARF), is recorded as an event of the bounce-mail source
//!   ([`crate::providers::BOUNCE_MAIL`]) that the events engine applies like a provider's hard
//!   bounce or complaint: the mapping's write-back, the suppression list. A soft bounce is an event
//!   too, counted by the same rule as providers' soft bounces (`[server] soft_bounce_threshold`).
//!   A failed delivery (hard or soft) sets the outbox message to `bounced` with the reason.
//! - The same raw bytes are applied once: their SHA-256 is the key of `bounce_messages`,
//!   written in the transaction that records the events and the outbox change.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BounceKind, BounceReport, Reason};
use crate::config::RelayConfig;
use crate::events::insert_event;
use crate::providers::{BOUNCE_MAIL, NewEvent};
use crate::relay::{Category, unsubscribe, verp};
use crate::store::{Store, StoreError, nul_free};

/// The largest bounce mail accepted (bytes), on the command line and over HTTP: a DSN returns
/// the headers or the whole of a transactional message, which the relay keeps far smaller.
pub const MAX_BOUNCE_BYTES: usize = 2 * 1024 * 1024;

/// Longest diagnostic kept in the outbox's reply and an event's payload.
const MAX_DIAGNOSTIC: usize = 500;

/// What ingesting needs: the state DB and the relay's VERP settings.
#[derive(Clone, Copy)]
pub struct Ingest<'a> {
    pub store: &'a Store,
    /// `[relay]`: its `bounce_domain` and `verp_secret` check VERP addresses. Without it (or
    /// without those keys) every VERP address is unknown, and a bounce can only be tied to its
    /// message by the Message-ID.
    pub relay: Option<&'a RelayConfig>,
}

/// What ingesting one mail decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It changed something (or, in a dry run, would).
    Applied,
    /// The same bytes were ingested before: nothing changes.
    Duplicate,
    /// An auto-reply, no bounce, a delay notice, or a bounce about no address of its message.
    Ignored,
    /// It names no message of ours (no VERP address, and no Message-ID we sent).
    UnknownMessage,
    /// A forged VERP address, or one naming no message: refused, nothing changes.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::UnknownMessage => "unknown_message",
            Outcome::Refused => "refused",
        }
    }
}

/// The outbox message a bounce is about, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub outbox_id: String,
    pub message_id: String,
    /// `verp` or `message_id`.
    pub by: &'static str,
    /// The message's status before the bounce.
    pub status: String,
    #[serde(skip)]
    recipient: String,
}

/// What the bounce does to one address it lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effect {
    pub email: String,
    pub reason: Reason,
    pub hard: Option<bool>,
    pub status: Option<String>,
    /// `hard_bounce`, `soft_bounce`, `complained`, or `none`.
    pub action: &'static str,
    /// Why, in a sentence.
    pub note: String,
}

/// The answer of `bounce ingest --json` (one object per mail).
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    /// SHA-256 of the raw bytes, hex: the mail's id.
    pub id: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub kind: BounceKind,
    /// What the outcome means, in a sentence.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<Found>,
    pub effects: Vec<Effect>,
    /// The outbox status the message is (or, in a dry run, would be) set to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_status: Option<&'static str>,
    /// A mailed one-click unsubscribe request whose token verified: who opts out of what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Unsubscribe>,
    /// The stored events the effects became (for the events engine to apply).
    #[serde(skip)]
    pub event_ids: Vec<i64>,
}

/// A verified mailed unsubscribe request (`unsubscribe+TOKEN@<bounce_domain>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsubscribe {
    pub email: String,
    pub category: &'static str,
}

impl IngestResult {
    /// Whether the command exits non-zero: a refused mail is an error the sender must see.
    pub fn is_refusal(&self) -> bool {
        self.outcome == Outcome::Refused
    }
}

/// Why a mail could not be ingested (apart from refusals, which are an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the bounce mail is {size} bytes, more than the {max} accepted")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The id of a raw mail: SHA-256, hex.
pub fn mail_id(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// Parses `raw` and ingests it ([`ingest_report`]).
pub async fn ingest(
    ctx: Ingest<'_>,
    raw: &[u8],
    dry_run: bool,
) -> Result<IngestResult, IngestError> {
    check_size(raw)?;
    let id = mail_id(raw);
    if let Some(done) = previous(ctx.store, &id).await? {
        return Ok(done);
    }
    let report = super::parse(raw);
    ingest_report(ctx, &report, raw, dry_run).await
}

fn check_size(raw: &[u8]) -> Result<(), IngestError> {
    if raw.len() > MAX_BOUNCE_BYTES {
        return Err(IngestError::TooLarge {
            size: raw.len(),
            max: MAX_BOUNCE_BYTES,
        });
    }
    Ok(())
}

/// Applies what `report` (the parse of `raw`) says: decides, then (unless `dry_run`) records the
/// mail, its events and the outbox change in one transaction. A refused mail records nothing.
/// The events' write-back to the member DB is the events engine's (the caller runs it, or
/// `serve`'s worker does).
pub async fn ingest_report(
    ctx: Ingest<'_>,
    report: &BounceReport,
    raw: &[u8],
    dry_run: bool,
) -> Result<IngestResult, IngestError> {
    check_size(raw)?;
    let id = mail_id(raw);
    let mut result = decide(ctx, report, &id).await?;
    result.dry_run = dry_run;
    if dry_run || result.outcome == Outcome::Refused {
        return Ok(result);
    }
    record(ctx.store, raw, &mut result, Claim::Insert).await?;
    count(&result);
    Ok(result)
}

/// `POST /v1/bounces`, before its answer: stores the raw mail to be processed. Returns the mail's
/// id, and whether it was new (a mail posted twice is stored and processed once).
pub async fn receive(store: &Store, raw: &[u8]) -> Result<(String, bool), IngestError> {
    check_size(raw)?;
    let id = mail_id(raw);
    let done = sqlx::query(
        "INSERT INTO bounce_messages (hash, raw, received_at) VALUES ($1, $2, $3)
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(&id)
    .bind(raw)
    .bind(store.now_text())
    .execute(store.pool())
    .await
    .map_err(StoreError::query("store a bounce mail"))?;
    Ok((id, done.rows_affected() > 0))
}

/// Processes up to `limit` stored mails not yet processed (received over HTTP), oldest first;
/// returns their results. Each is claimed in the transaction that records it, so two processes
/// never apply one mail twice.
pub async fn process_pending(
    ctx: Ingest<'_>,
    limit: i64,
) -> Result<Vec<IngestResult>, IngestError> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT hash, raw FROM bounce_messages WHERE processed_at IS NULL
         ORDER BY received_at, hash LIMIT $1",
    )
    .bind(limit)
    .fetch_all(ctx.store.pool())
    .await
    .map_err(StoreError::query("read stored bounce mails"))?;
    let mut out = Vec::with_capacity(rows.len());
    for (hash, raw) in rows {
        // The stored hash is the key: a mail changed in the table is still the one received.
        let report = super::parse(&raw);
        let mut result = decide(ctx, &report, &hash).await?;
        if record(ctx.store, &raw, &mut result, Claim::Pending).await? {
            count(&result);
            out.push(result);
        }
    }
    Ok(out)
}

/// Empties the raw bytes of up to `limit` bounce mails processed before `before` (RFC 3339
/// text); returns how many. The row stays: its hash still recognises the same mail arriving
/// again, and its outcome still answers for it. A mail not yet processed keeps its bytes.
pub async fn prune_raw(store: &Store, before: &str, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE bounce_messages SET raw = $3 WHERE hash IN (
             SELECT hash FROM bounce_messages
             WHERE processed_at IS NOT NULL AND processed_at < $1 AND length(raw) > 0
             ORDER BY processed_at LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .bind(Vec::<u8>::new())
    .execute(store.pool())
    .await
    .map_err(StoreError::query("empty the bytes of old bounce mails"))?;
    Ok(done.rows_affected())
}

/// `serve`'s bounce worker: processes the mails `POST /v1/bounces` stored, at start (a mail
/// stored before a crash) and whenever woken, then wakes the writeback worker, which writes
/// their events back. Stops at its next step once `shutdown` is cancelled.
pub struct Worker {
    pub store: Store,
    pub relay: Option<std::sync::Arc<RelayConfig>>,
}

/// Mails processed per round of the worker.
const ROUND: i64 = 100;

/// How often the worker looks for stored mails without being woken (another process may have
/// stored them, or a round failed).
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

impl Worker {
    pub async fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
        wake: std::sync::Arc<tokio::sync::Notify>,
        events_ready: std::sync::Arc<tokio::sync::Notify>,
    ) {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let ctx = Ingest {
                store: &self.store,
                relay: self.relay.as_deref(),
            };
            match process_pending(ctx, ROUND).await {
                Ok(done) => {
                    if done.iter().any(|r| !r.event_ids.is_empty()) {
                        events_ready.notify_one();
                    }
                    for r in &done {
                        if r.is_refusal() {
                            tracing::warn!(mail = %r.id, "A bounce mail was refused: {}", r.message);
                        } else {
                            tracing::info!(mail = %r.id, outcome = r.outcome.as_str(), "{}", r.message);
                        }
                    }
                    if done.len() as i64 == ROUND {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "Processing stored bounce mails failed; they are retried: {}",
                        crate::error_chain(&e)
                    );
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

/// The result stored for mail `id`, as a duplicate, if it was processed before.
async fn previous(store: &Store, id: &str) -> Result<Option<IngestResult>, StoreError> {
    let row: Option<(Option<String>, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT processed_at, kind, outcome FROM bounce_messages WHERE hash = $1")
            .bind(id)
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("look up a bounce mail"))?;
    Ok(row.map(|(processed_at, kind, outcome)| duplicate(id, processed_at, kind, outcome)))
}

fn duplicate(
    id: &str,
    processed_at: Option<String>,
    kind: Option<String>,
    outcome: Option<String>,
) -> IngestResult {
    let kind = match kind.as_deref() {
        Some("dsn") => BounceKind::Dsn,
        Some("arf") => BounceKind::Arf,
        Some("autoreply") => BounceKind::Autoreply,
        _ => BounceKind::NotBounce,
    };
    let message = match (processed_at, outcome) {
        (Some(at), Some(outcome)) => format!(
            "this mail was ingested before ({at}, {outcome}); nothing changes the second time"
        ),
        _ => "this mail was received before and is waiting to be processed; nothing changes the second time".to_owned(),
    };
    IngestResult {
        id: id.to_owned(),
        outcome: Outcome::Duplicate,
        dry_run: false,
        kind,
        message,
        found: None,
        effects: Vec::new(),
        outbox_status: None,
        unsubscribe: None,
        event_ids: Vec::new(),
    }
}

/// Decides what `report` changes, reading only.
async fn decide(
    ctx: Ingest<'_>,
    report: &BounceReport,
    id: &str,
) -> Result<IngestResult, StoreError> {
    let mut result = IngestResult {
        id: id.to_owned(),
        outcome: Outcome::Ignored,
        dry_run: false,
        kind: report.kind,
        message: String::new(),
        found: None,
        effects: Vec::new(),
        outbox_status: None,
        unsubscribe: None,
        event_ids: Vec::new(),
    };
    if let Some(address) = report.unsubscribe.as_deref() {
        decide_unsubscribe(ctx, address, &mut result).await?;
        return Ok(result);
    }
    match report.kind {
        BounceKind::Autoreply => {
            result.message = "an auto-reply: nothing changes".to_owned();
            return Ok(result);
        }
        BounceKind::NotBounce => {
            result.message = format!(
                "not a bounce ({}): nothing changes",
                report
                    .not_bounce_reason
                    .as_deref()
                    .unwrap_or("no delivery report or complaint in it")
            );
            return Ok(result);
        }
        BounceKind::Dsn | BounceKind::Arf => {}
    }
    let found = match find_message(ctx, report).await? {
        Lookup::Found(found) => found,
        Lookup::Refused(why) => {
            result.outcome = Outcome::Refused;
            result.message = format!("refused, nothing changed: {why}");
            return Ok(result);
        }
        Lookup::Unknown(why) => {
            result.outcome = Outcome::UnknownMessage;
            result.message = format!("{why}: nothing changes");
            return Ok(result);
        }
    };
    result.effects = effects(report, &found.recipient);
    let failed = result
        .effects
        .iter()
        .any(|e| matches!(e.action, "hard_bounce" | "soft_bounce"));
    if result.effects.iter().any(|e| e.action != "none") {
        result.outcome = Outcome::Applied;
        result.outbox_status = failed.then_some("bounced");
        result.message = format!(
            "{} about message {}: {}",
            if report.kind == BounceKind::Arf {
                "a complaint"
            } else {
                "a bounce"
            },
            found.message_id,
            result
                .effects
                .iter()
                .filter(|e| e.action != "none")
                .map(|e| format!("{} {}", e.email, e.action))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        result.message = format!(
            "about message {}, but it reports no failure of its recipient: nothing changes",
            found.message_id
        );
    }
    result.found = Some(found);
    Ok(result)
}

/// A mail to `unsubscribe+TOKEN@<bounce_domain>`: applied when the token verifies and names a
/// message of this relay whose category its recipient may opt out of (the recipient and category
/// are the message's), refused otherwise, changing nothing.
async fn decide_unsubscribe(
    ctx: Ingest<'_>,
    address: &str,
    result: &mut IngestResult,
) -> Result<(), StoreError> {
    let token = ctx
        .relay
        .and_then(|r| r.bounce_domain.as_deref())
        .and_then(|domain| unsubscribe::token_of_address(address, domain));
    let Some(token) = token else {
        result.outcome = Outcome::Refused;
        result.message = "refused, nothing changed: an unsubscribe request to an address that is not this relay's ([relay] bounce_domain)".to_owned();
        return Ok(());
    };
    let refuse = |result: &mut IngestResult| {
        result.outcome = Outcome::Refused;
        // Nothing about why: the token is someone's, or forged.
        result.message =
            "refused, nothing changed: the unsubscribe request's token does not verify".to_owned();
    };
    let Ok(id) = unsubscribe::check_mail(ctx.relay, token) else {
        refuse(result);
        return Ok(());
    };
    let message = crate::relay::outbox::get(ctx.store, &id).await?;
    let opted = message.and_then(|m| {
        let category = Category::parse(&m.category).filter(|c| c.member_can_opt_out())?;
        let email = crate::domain::Email::parse(&m.to).ok()?;
        Some((email, category))
    });
    let Some((email, category)) = opted else {
        // A message purged from the outbox, or one no member can opt out of.
        refuse(result);
        return Ok(());
    };
    result.outcome = Outcome::Applied;
    result.message = format!(
        "a one-click unsubscribe request: {} opts out of {} mail",
        email.as_str(),
        category.as_str()
    );
    result.unsubscribe = Some(Unsubscribe {
        email: email.as_str().to_owned(),
        category: category.as_str(),
    });
    Ok(())
}

enum Lookup {
    Found(Found),
    Refused(String),
    Unknown(String),
}

/// The outbox message a report names: by its VERP address (which must be genuine), else by the
/// returned Message-ID.
async fn find_message(ctx: Ingest<'_>, report: &BounceReport) -> Result<Lookup, StoreError> {
    if let Some(address) = report.verp.as_deref() {
        let keys = ctx
            .relay
            .and_then(|r| Some((r.bounce_domain.as_deref()?, r.verp_secret.as_ref()?)));
        let Some((domain, secret)) = keys else {
            return Ok(Lookup::Refused(format!(
                "it was sent to the VERP address `{}`, but [relay] bounce_domain and verp_secret are not configured to check it",
                bounded(address, 200)
            )));
        };
        use secrecy::ExposeSecret;
        let outbox_id = match verp::decode(address, domain, secret.expose_secret().as_bytes()) {
            Ok(id) => id,
            Err(e) => return Ok(Lookup::Refused(bounded(&e.to_string(), 300))),
        };
        return Ok(match outbox_row(ctx.store, "id", &outbox_id).await? {
            Some(found) => Lookup::Found(Found {
                by: "verp",
                ..found
            }),
            None => Lookup::Refused(format!(
                "the VERP address names message {outbox_id}, which the outbox does not have"
            )),
        });
    }
    if let Some(mid) = report.original_message_id.as_deref() {
        let mid = mid.trim().trim_start_matches('<').trim_end_matches('>');
        if !mid.is_empty() && mid.len() <= 998 {
            if let Some(found) = outbox_row(ctx.store, "message_id", &format!("<{mid}>")).await? {
                return Ok(Lookup::Found(Found {
                    by: "message_id",
                    ..found
                }));
            }
            return Ok(Lookup::Unknown(format!(
                "the returned Message-ID <{}> is not one the relay sent",
                bounded(mid, 200)
            )));
        }
    }
    Ok(Lookup::Unknown(
        "it names no message of ours (no VERP address, no returned Message-ID)".to_owned(),
    ))
}

async fn outbox_row(store: &Store, column: &str, value: &str) -> Result<Option<Found>, StoreError> {
    let sql = match column {
        "id" => "SELECT id, message_id, recipient, status FROM outbox WHERE id = $1",
        _ => "SELECT id, message_id, recipient, status FROM outbox WHERE message_id = $1",
    };
    let row: Option<(String, String, String, String)> = sqlx::query_as(sql)
        .bind(nul_free(value))
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::query("find a bounced message in the outbox"))?;
    Ok(row.map(|(outbox_id, message_id, recipient, status)| Found {
        outbox_id,
        message_id,
        by: "",
        status,
        recipient,
    }))
}

/// What the report does to each address it lists; only the message's `recipient` (identity
/// form) is acted on. An ARF report that names nobody (providers often redact it) is about the
/// message's recipient.
fn effects(report: &BounceReport, recipient: &str) -> Vec<Effect> {
    let ours = |email: &str| email.trim().to_lowercase() == recipient;
    if report.kind == BounceKind::Arf && !report.recipients.iter().any(|r| ours(&r.email)) {
        let mut out: Vec<Effect> = report
            .recipients
            .iter()
            .map(|r| Effect {
                email: bounded(&r.email, 320),
                reason: r.reason,
                hard: r.hard,
                status: r.status.clone(),
                action: "none",
                note: "not the recipient of the message: ignored".to_owned(),
            })
            .collect();
        if report.recipients.is_empty() {
            out.push(Effect {
                email: recipient.to_owned(),
                reason: Reason::Feedback,
                hard: None,
                status: None,
                action: "complained",
                note: format!(
                    "a complaint ({}) about the message",
                    report.feedback_type.as_deref().unwrap_or("abuse")
                ),
            });
        }
        return out;
    }
    report
        .recipients
        .iter()
        .map(|r| {
            let (action, note) = if !ours(&r.email) {
                (
                    "none",
                    "not the recipient of the message: ignored".to_owned(),
                )
            } else {
                classify(report, r)
            };
            Effect {
                email: if ours(&r.email) {
                    recipient.to_owned()
                } else {
                    bounded(&r.email, 320)
                },
                reason: r.reason,
                hard: r.hard,
                status: r.status.clone(),
                action,
                note,
            }
        })
        .collect()
}

/// What one report line about the message's own recipient does.
fn classify(report: &BounceReport, r: &super::Recipient) -> (&'static str, String) {
    if report.kind == BounceKind::Arf {
        let feedback = report.feedback_type.as_deref().unwrap_or("abuse");
        return ("complained", format!("a complaint ({feedback})"));
    }
    let action = r.action.as_deref().map(str::to_ascii_lowercase);
    match (r.hard, action.as_deref()) {
        (_, Some("delayed" | "delivered" | "relayed" | "expanded")) => (
            "none",
            format!(
                "a `{}` notice, not a failure",
                action.as_deref().unwrap_or_default()
            ),
        ),
        (Some(true), _) => (
            "hard_bounce",
            format!("a hard bounce ({})", r.reason.as_str()),
        ),
        (Some(false), _) => (
            "soft_bounce",
            format!(
                "a soft bounce ({}): counted towards [server] soft_bounce_threshold",
                r.reason.as_str()
            ),
        ),
        (None, _) => ("none", format!("`{}` is no failure", r.reason.as_str())),
    }
}

/// How a processed mail is claimed: inserted (the command line), or the stored pending row
/// (HTTP).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Insert,
    Pending,
}

/// Records a decided mail in one transaction: the mail (claimed), its events, the outbox
/// change. Returns false when the mail was already claimed (recorded by another ingest): then
/// `result` becomes a duplicate and nothing is written.
async fn record(
    store: &Store,
    raw: &[u8],
    result: &mut IngestResult,
    claim: Claim,
) -> Result<bool, StoreError> {
    let now = store.now_text();
    let mut tx = store.begin().await?;
    let stored = serde_json::to_string(&*result).unwrap_or_default();
    let kind = serde_json::to_value(result.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    let outbox_id = result.found.as_ref().map(|f| f.outbox_id.clone());
    let claimed = match claim {
        Claim::Insert => sqlx::query(
            "INSERT INTO bounce_messages (hash, raw, received_at, processed_at, kind, outcome, outbox_id, result)
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&result.id)
        .bind(raw)
        .bind(&now)
        .bind(kind.as_deref())
        .bind(result.outcome.as_str())
        .bind(outbox_id.as_deref())
        .bind(&stored),
        Claim::Pending => sqlx::query(
            "UPDATE bounce_messages SET processed_at = $1, kind = $2, outcome = $3, outbox_id = $4, result = $5
             WHERE hash = $6 AND processed_at IS NULL",
        )
        .bind(&now)
        .bind(kind.as_deref())
        .bind(result.outcome.as_str())
        .bind(outbox_id.as_deref())
        .bind(&stored)
        .bind(&result.id),
    }
    .execute(&mut *tx)
    .await
    .map_err(StoreError::query("record a bounce mail"))?
    .rows_affected()
        == 1;
    if !claimed {
        drop(tx);
        *result = match previous(store, &result.id).await? {
            Some(done) => done,
            None => duplicate(&result.id, None, None, None),
        };
        return Ok(false);
    }
    if let (Outcome::Applied, Some(u)) = (result.outcome, &result.unsubscribe) {
        let event = crate::events::opt_out::record(
            &mut tx,
            &u.email,
            u.category,
            unsubscribe::Via::Mail.as_str(),
            &now,
        )
        .await?;
        result.event_ids.extend(event);
    }
    if let (Outcome::Applied, Some(found)) = (result.outcome, &result.found) {
        for effect in result.effects.iter().filter(|e| e.action != "none") {
            let event = NewEvent {
                provider: BOUNCE_MAIL,
                audience: None,
                list_id: None,
                event_type: effect.action.to_owned(),
                email: Some(effect.email.clone()),
                // The member is found through the state DB when the event is applied.
                member_key: None,
                reason: Some(effect.reason.as_str().to_owned()),
                fired_at: now.clone(),
                // The mail's id: another mail about the same message is another event.
                source_id: Some(format!("{}:{}", found.outbox_id, result.id)),
                payload: serde_json::json!({
                    "mail": result.id,
                    "outbox_id": found.outbox_id,
                    "message_id": found.message_id,
                    "found_by": found.by,
                    "status": effect.status,
                    "hard": effect.hard,
                })
                .to_string(),
                // Tied to a message we sent, by a signed address or its Message-ID.
                verified: true,
                ignored: None,
            };
            insert_event(&mut *tx, &event)
                .await
                .map_err(StoreError::query("record a bounce event"))?;
            let (event_id,): (i64,) =
                sqlx::query_as("SELECT id FROM provider_events WHERE dedupe_key = $1")
                    .bind(event.dedupe_key())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::query("read a bounce event's id"))?;
            if !result.event_ids.contains(&event_id) {
                result.event_ids.push(event_id);
            }
        }
        if result.outbox_status.is_some() {
            let reply = bounce_reply(result);
            // A message still being handed to a route keeps its lease holder's status; a
            // later bounce of it is the route's to record.
            let bounced = sqlx::query(
                "UPDATE outbox SET status = 'bounced', last_reply = $1, updated_at = $2
                 WHERE id = $3 AND status IN ('sent', 'deferred', 'failed', 'bounced')",
            )
            .bind(nul_free(&reply))
            .bind(&now)
            .bind(&found.outbox_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("mark a message bounced"))?
            .rows_affected();
            if bounced == 1 {
                crate::relay::outbox::note_history(
                    &mut tx,
                    &found.outbox_id,
                    crate::relay::outbox::turn::BOUNCE_MAIL,
                    None,
                    Some(&reply),
                    &now,
                )
                .await?;
            }
        }
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit a bounce mail"))?;
    Ok(true)
}

/// The outbox's `last_reply` for a bounced message: the reason, status and diagnostic.
fn bounce_reply(result: &IngestResult) -> String {
    let mut parts = Vec::new();
    for e in result
        .effects
        .iter()
        .filter(|e| matches!(e.action, "hard_bounce" | "soft_bounce"))
    {
        let mut s = format!(
            "bounce mail: {} ({})",
            e.reason.as_str(),
            e.action.replace('_', " ")
        );
        if let Some(status) = &e.status {
            s.push_str(&format!(", status {}", bounded(status, 20)));
        }
        parts.push(s);
    }
    bounded(&parts.join("; "), MAX_DIAGNOSTIC)
}

/// Counts a processed mail in `/metrics`: per address acted on or listed, by kind, reason and
/// action; a mail with no address by kind and outcome.
fn count(result: &IngestResult) {
    let kind = match result.kind {
        BounceKind::Dsn => "dsn",
        BounceKind::Arf => "arf",
        BounceKind::Autoreply => "autoreply",
        BounceKind::NotBounce => "not_bounce",
    };
    metrics::counter!(
        "mailbridge_bounce_mails_total",
        "kind" => kind,
        "outcome" => result.outcome.as_str()
    )
    .increment(1);
    for e in &result.effects {
        metrics::counter!(
            "mailbridge_bounces_total",
            "kind" => kind,
            "reason" => e.reason.as_str(),
            "action" => e.action
        )
        .increment(1);
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounces::Recipient;

    fn recipient(email: &str, reason: Reason, hard: Option<bool>, action: &str) -> Recipient {
        Recipient {
            email: email.into(),
            action: Some(action.into()),
            status: Some("5.1.1".into()),
            reply_code: Some(550),
            reason,
            hard,
            diagnostic: None,
        }
    }

    fn report(kind: BounceKind, recipients: Vec<Recipient>) -> BounceReport {
        BounceReport {
            kind,
            recipients,
            feedback_type: None,
            original_message_id: None,
            verp: None,
            unsubscribe: None,
            not_bounce_reason: None,
        }
    }

    #[test]
    fn only_the_messages_recipient_is_acted_on() {
        let r = report(
            BounceKind::Dsn,
            vec![
                recipient(" A@Example.org ", Reason::UserUnknown, Some(true), "failed"),
                recipient("b@example.org", Reason::UserUnknown, Some(true), "failed"),
            ],
        );
        let fx = effects(&r, "a@example.org");
        assert_eq!(fx[0].action, "hard_bounce");
        assert_eq!(fx[0].email, "a@example.org");
        assert_eq!(fx[1].action, "none");
    }

    #[test]
    fn classification_table() {
        let cases = [
            (Reason::UserUnknown, Some(true), "failed", "hard_bounce"),
            (Reason::MailboxFull, Some(false), "failed", "soft_bounce"),
            (Reason::MailboxFull, Some(false), "delayed", "none"),
            (Reason::Delivered, None, "delivered", "none"),
            (Reason::Expired, Some(false), "FAILED", "soft_bounce"),
            (Reason::Vacation, None, "failed", "none"),
        ];
        for (reason, hard, action, want) in cases {
            let r = report(
                BounceKind::Dsn,
                vec![recipient("a@x.org", reason, hard, action)],
            );
            assert_eq!(
                effects(&r, "a@x.org")[0].action,
                want,
                "{reason:?} {action}"
            );
        }
    }

    #[test]
    fn a_complaint_naming_nobody_is_about_the_recipient() {
        let mut r = report(BounceKind::Arf, vec![]);
        r.feedback_type = Some("abuse".into());
        let fx = effects(&r, "a@x.org");
        assert_eq!(fx.len(), 1);
        assert_eq!(
            (fx[0].email.as_str(), fx[0].action),
            ("a@x.org", "complained")
        );
        let other = report(
            BounceKind::Arf,
            vec![recipient("z@x.org", Reason::Feedback, None, "failed")],
        );
        assert!(
            effects(&other, "a@x.org")
                .iter()
                .all(|e| e.action == "none")
        );
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary() {
        assert_eq!(bounded("ééé", 3), "é…");
        assert_eq!(bounded("abc", 3), "abc");
    }
}
