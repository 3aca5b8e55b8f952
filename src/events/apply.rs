//! Applying stored provider events, oldest first: writeback to the member DB with the mapping's
//! statements, the contact's remote status in the state DB, and the suppression list. One engine
//! for the pull (one list) and for `serve`'s worker (everything).
//!
//! Rules:
//! - A status event (subscribed, unsubscribed, complained, cleaned, pending) older than a status
//!   event already applied for the same address and list is `superseded`: it changes neither the
//!   member DB nor the contact's status (events arrive out of order). Suppressions still apply:
//!   an address that bounced stays bounced whatever came later.
//! - cleaned, complained, spam, hard_bounce and reject suppress the address; soft bounces
//!   suppress once `threshold` of them fall within `window_days`.
//! - An event for an address no member has is `unmatched`: applied, reported, not an error.
//! - The member DB being unreachable stops the round (`member_db_down`); the events stay
//!   unapplied and are retried. A statement that fails for one event backs that event off.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::parse_time;
use crate::config::AudienceConfig;
use crate::domain::{MemberKey, SubscriptionStatus};
use crate::mapping::{Mapping, NamedSql};
use crate::source::{MemberSource, Param, SourceError};
use crate::store::{Store, StoreError, now_text};
use crate::sync::report::ReportError;

/// When repeated soft bounces suppress an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftBouncePolicy {
    pub threshold: u32,
    pub window_days: u32,
}

impl Default for SoftBouncePolicy {
    fn default() -> Self {
        SoftBouncePolicy {
            threshold: 3,
            window_days: 30,
        }
    }
}

/// What applying needs.
pub struct ApplyContext<'a> {
    pub mapping: &'a Mapping,
    pub store: &'a Store,
    pub source: &'a MemberSource,
    /// The configured audiences (list id → audience name).
    pub audiences: &'a [AudienceConfig],
    pub soft_bounces: SoftBouncePolicy,
}

/// Which events a round looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// One Mailchimp list (the pull).
    List(&'a str),
    /// Every provider and list (the `serve` worker).
    All,
}

/// What one round did.
#[derive(Clone, Debug, Default)]
pub struct ApplyOutcome {
    /// Events looked at.
    pub seen: u64,
    pub applied: u64,
    pub unsubscribes: u64,
    pub bounces: u64,
    pub superseded: u64,
    pub unmatched: u64,
    pub suppressed: u64,
    /// Writebacks that failed (retried later).
    pub failed: u64,
    /// The member DB could not be reached; the round stopped early.
    pub member_db_down: bool,
    pub errors: Vec<ReportError>,
}

fn q_err(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    provider: String,
    audience: Option<String>,
    list_id: Option<String>,
    event_type: String,
    email: Option<String>,
    member_key: Option<String>,
    reason: Option<String>,
    fired_at: String,
    received_at: String,
    attempts: i64,
    payload: String,
}

/// What an event means for the member DB and the state DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Effect {
    /// The mapping's writeback statement to run.
    writeback: Option<WritebackKind>,
    /// The contact's remote status to record.
    status: Option<SubscriptionStatus>,
    /// The suppression reason to add.
    suppress: Option<&'static str>,
    soft_bounce: bool,
    counts_as: Counted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WritebackKind {
    Unsubscribed,
    Cleaned,
    Complained,
    EmailChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Unsubscribe,
    Bounce,
    Nothing,
}

fn effect(provider: &str, kind: &str, reason: Option<&str>) -> Effect {
    let none = Effect {
        writeback: None,
        status: None,
        suppress: None,
        soft_bounce: false,
        counts_as: Counted::Nothing,
    };
    match (provider, kind) {
        ("mailchimp", "subscribed") => Effect {
            status: Some(SubscriptionStatus::Subscribed),
            ..none
        },
        ("mailchimp", "pending") => Effect {
            status: Some(SubscriptionStatus::Pending),
            ..none
        },
        ("mailchimp", "unsubscribed") | ("mailchimp_transactional", "unsub") => Effect {
            writeback: Some(WritebackKind::Unsubscribed),
            status: (provider == "mailchimp").then_some(SubscriptionStatus::Unsubscribed),
            counts_as: Counted::Unsubscribe,
            ..none
        },
        ("mailchimp", "complained") | ("mailchimp_transactional", "spam") => Effect {
            writeback: Some(WritebackKind::Complained),
            status: (provider == "mailchimp").then_some(SubscriptionStatus::Unsubscribed),
            suppress: Some("spam_complaint"),
            counts_as: Counted::Unsubscribe,
            ..none
        },
        ("mailchimp", "cleaned") => Effect {
            writeback: Some(WritebackKind::Cleaned),
            status: Some(SubscriptionStatus::Cleaned),
            suppress: Some(if reason == Some("abuse") {
                "spam_complaint"
            } else {
                "hard_bounce"
            }),
            counts_as: Counted::Bounce,
            ..none
        },
        ("mailchimp", "upemail") => Effect {
            writeback: Some(WritebackKind::EmailChanged),
            ..none
        },
        ("mailchimp_transactional", "hard_bounce") => Effect {
            writeback: Some(WritebackKind::Cleaned),
            suppress: Some("hard_bounce"),
            counts_as: Counted::Bounce,
            ..none
        },
        ("mailchimp_transactional", "reject") => Effect {
            suppress: Some("rejected"),
            counts_as: Counted::Bounce,
            ..none
        },
        ("mailchimp_transactional", "soft_bounce") => Effect {
            soft_bounce: true,
            ..none
        },
        _ => none,
    }
}

/// Whether a member DB error means "unreachable" (retry the whole queue later) rather than
/// "this statement failed for this event".
fn is_unreachable(err: &SourceError) -> bool {
    match err {
        SourceError::Connect { .. } | SourceError::Missing { .. } => true,
        SourceError::Writeback { source, .. } | SourceError::Query { source, .. } => matches!(
            source,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}

fn message_of(err: &SourceError) -> String {
    match std::error::Error::source(err) {
        Some(s) => format!("{err}: {s}"),
        None => err.to_string(),
    }
}

/// Back-off of an event whose writeback failed `attempts` times: 2^attempts s, at most 60 s.
fn retry_at(attempts: i64) -> String {
    let secs = 1i64 << attempts.clamp(0, 6);
    (Utc::now() + Duration::seconds(secs.min(60)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Applies up to `limit` due events of `scope`, oldest first.
pub async fn apply_events(
    ctx: &ApplyContext<'_>,
    scope: Scope<'_>,
    limit: i64,
) -> Result<ApplyOutcome, StoreError> {
    let now = now_text();
    let rows: Vec<Row> = match scope {
        Scope::List(list_id) => sqlx::query_as(
            "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, attempts, payload
             FROM provider_events
             WHERE applied_at IS NULL AND provider = 'mailchimp' AND list_id = $1
               AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
             ORDER BY id LIMIT $3",
        )
        .bind(list_id)
        .bind(&now)
        .bind(limit)
        .fetch_all(ctx.store.pool())
        .await,
        Scope::All => sqlx::query_as(
            "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, attempts, payload
             FROM provider_events
             WHERE applied_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
             ORDER BY id LIMIT $2",
        )
        .bind(&now)
        .bind(limit)
        .fetch_all(ctx.store.pool())
        .await,
    }
    .map_err(q_err("read unapplied provider events"))?;
    let mut out = ApplyOutcome::default();
    for row in rows {
        out.seen += 1;
        if !apply_one(ctx, row, &mut out).await? {
            out.member_db_down = true;
            break;
        }
    }
    Ok(out)
}

/// Applies one event; `Ok(false)` when the member DB is unreachable (stop the round).
async fn apply_one(
    ctx: &ApplyContext<'_>,
    row: Row,
    out: &mut ApplyOutcome,
) -> Result<bool, StoreError> {
    let email = row.email.clone().unwrap_or_default();
    let fx = effect(&row.provider, &row.event_type, row.reason.as_deref());
    let audience: Option<&AudienceConfig> = match (&row.audience, &row.list_id) {
        (Some(name), _) => ctx.audiences.iter().find(|a| &a.name == name),
        (None, Some(list)) => ctx.audiences.iter().find(|a| &a.list_id == list),
        (None, None) => None,
    };
    let unknown_list = row.provider == "mailchimp" && row.list_id.is_some() && audience.is_none();
    // Who the event is about.
    let member_key = if email.is_empty() {
        None
    } else {
        match row.member_key.as_deref().and_then(MemberKey::parse) {
            Some(k) => Some(k),
            None => match audience {
                Some(a) => ctx.store.member_by_email(&a.name, &email).await?,
                None if !unknown_list => member_by_email_anywhere(ctx.store, &email).await?,
                None => None,
            },
        }
    };
    // Out of order: a status event older than one already applied changes no status.
    let superseded = fx.status.is_some()
        && !email.is_empty()
        && {
            let newest: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT MAX(fired_at) FROM provider_events
             WHERE email = $1 AND provider = $2 AND COALESCE(list_id, '') = $3 AND id <> $4
               AND applied_at IS NOT NULL AND (outcome IS NULL OR outcome = 'applied')
               AND event_type IN ('subscribed', 'unsubscribed', 'complained', 'cleaned', 'pending')",
        )
        .bind(&email)
        .bind(&row.provider)
        .bind(row.list_id.as_deref().unwrap_or(""))
        .bind(row.id)
        .fetch_optional(ctx.store.pool())
        .await
        .map_err(q_err("read the newest applied event of an address"))?;
            newest
                .and_then(|(t,)| t)
                .is_some_and(|newest| newest.as_str() > row.fired_at.as_str())
        };

    // The writeback, outside any state DB transaction.
    let statement: Option<(&str, &NamedSql)> = match fx.writeback {
        _ if superseded || member_key.is_none() => None,
        Some(WritebackKind::Unsubscribed) => ctx
            .mapping
            .writeback
            .unsubscribed
            .as_ref()
            .map(|s| ("writeback.unsubscribed", s)),
        Some(WritebackKind::Cleaned) => ctx
            .mapping
            .writeback
            .cleaned
            .as_ref()
            .map(|s| ("writeback.cleaned", s)),
        Some(WritebackKind::Complained) => ctx
            .mapping
            .writeback
            .complained
            .as_ref()
            .map(|s| ("writeback.complained", s))
            .or_else(|| {
                ctx.mapping
                    .writeback
                    .unsubscribed
                    .as_ref()
                    .map(|s| ("writeback.unsubscribed", s))
            }),
        Some(WritebackKind::EmailChanged) => ctx
            .mapping
            .writeback
            .email_changed
            .as_ref()
            .map(|s| ("writeback.email_changed", s)),
        None => None,
    };
    if let (Some((name, stmt)), Some(key)) = (statement, &member_key) {
        let new_email = (fx.writeback == Some(WritebackKind::EmailChanged))
            .then(|| new_email_of(&row.payload))
            .flatten();
        if fx.writeback == Some(WritebackKind::EmailChanged) && new_email.is_none() {
            tracing::warn!(
                event = row.id,
                "An upemail event has no new address; ignored"
            );
        } else {
            let occurred = parse_time(&row.fired_at).unwrap_or_else(Utc::now);
            let params: HashMap<&str, Param> = HashMap::from([
                (
                    "member_key",
                    key.as_int()
                        .map_or_else(|| Param::Text(key.as_str().to_owned()), Param::Int),
                ),
                ("email", Param::Text(email.clone())),
                ("new_email", new_email.map_or(Param::Null, Param::Text)),
                (
                    "reason",
                    row.reason.clone().map_or(Param::Null, Param::Text),
                ),
                ("occurred_at", Param::Timestamp(occurred)),
                (
                    "audience",
                    audience.map_or(Param::Null, |a| Param::Text(a.name.clone())),
                ),
                (
                    "list_id",
                    row.list_id.clone().map_or(Param::Null, Param::Text),
                ),
            ]);
            if let Err(e) = ctx.source.execute(name, stmt, &params).await {
                let message = message_of(&e);
                let unreachable = is_unreachable(&e);
                tracing::warn!(member_key = %key, event = row.id, "Writing a provider event back failed; it is retried: {message}");
                metrics::counter!("mailbridge_writeback_failures_total", "provider" => row.provider.clone())
                    .increment(1);
                sqlx::query(
                    "UPDATE provider_events SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 WHERE id = $3",
                )
                .bind(&message)
                .bind(if unreachable { None } else { Some(retry_at(row.attempts)) })
                .bind(row.id)
                .execute(ctx.store.pool())
                .await
                .map_err(q_err("record a writeback failure"))?;
                out.failed += 1;
                out.errors.push(ReportError {
                    member_key: Some(key.to_string()),
                    email: Some(email.clone()),
                    code: "writeback_failed".into(),
                    message,
                });
                return Ok(!unreachable);
            }
        }
    }

    let outcome = if unknown_list {
        "unknown_list"
    } else if superseded {
        "superseded"
    } else if email.is_empty() || (fx == effect("", "", None)) {
        "ignored"
    } else if member_key.is_none() {
        "unmatched"
    } else {
        "applied"
    };
    let mut tx = ctx.store.pool().begin().await.map_err(q_err("begin"))?;
    let applied_at = now_text();
    sqlx::query(
        "UPDATE provider_events SET applied_at = $1, attempts = attempts + 1, member_key = $2, outcome = $3, last_error = NULL
         WHERE id = $4 AND applied_at IS NULL",
    )
    .bind(&applied_at)
    .bind(member_key.as_ref().map(MemberKey::as_str))
    .bind(outcome)
    .bind(row.id)
    .execute(&mut *tx)
    .await
    .map_err(q_err("mark an event applied"))?;
    if let (Some(status), Some(key), Some(a), false) =
        (fx.status, &member_key, audience, superseded)
    {
        Store::set_remote_status(&mut tx, &a.name, key, status).await?;
    }
    let mut suppress = fx.suppress;
    if fx.soft_bounce && !email.is_empty() {
        let since = parse_time(&row.fired_at).unwrap_or_else(Utc::now)
            - Duration::days(i64::from(ctx.soft_bounces.window_days));
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM provider_events
             WHERE email = $1 AND event_type = 'soft_bounce' AND fired_at >= $2 AND fired_at <= $3",
        )
        .bind(&email)
        .bind(since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .bind(&row.fired_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(q_err("count soft bounces"))?;
        if count >= i64::from(ctx.soft_bounces.threshold) {
            suppress = Some("soft_bounce");
        }
    }
    let mut newly_suppressed = false;
    if let (Some(reason), false) = (suppress, email.is_empty()) {
        let source = match &row.list_id {
            Some(list) => format!("{}:{list}", row.provider),
            None => row.provider.clone(),
        };
        newly_suppressed = sqlx::query(
            "INSERT INTO suppressions (email, reason, source, detail, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(&email)
        .bind(reason)
        .bind(source)
        .bind(row.reason.as_deref())
        .bind(&applied_at)
        .execute(&mut *tx)
        .await
        .map_err(q_err("add a suppression"))?
        .rows_affected()
            > 0;
    }
    tx.commit()
        .await
        .map_err(q_err("commit an applied event"))?;

    out.applied += 1;
    match outcome {
        "superseded" => out.superseded += 1,
        "unmatched" => out.unmatched += 1,
        _ => {}
    }
    if newly_suppressed {
        out.suppressed += 1;
        metrics::counter!("mailbridge_suppressions_added_total", "reason" => suppress.unwrap_or("").to_owned())
            .increment(1);
    }
    if outcome != "superseded" {
        match fx.counts_as {
            Counted::Unsubscribe => out.unsubscribes += 1,
            Counted::Bounce => out.bounces += 1,
            Counted::Nothing => {}
        }
    }
    metrics::counter!(
        "mailbridge_events_applied_total",
        "provider" => row.provider.clone(),
        "type" => row.event_type.clone(),
        "outcome" => outcome
    )
    .increment(1);
    if let Some(received) = parse_time(&row.received_at) {
        let latency: DateTime<Utc> = Utc::now();
        let secs = (latency - received).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!("mailbridge_writeback_latency_seconds").record(secs.max(0.0));
    }
    Ok(true)
}

fn new_email_of(payload: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let raw = v.get("data")?.get("new_email")?.as_str()?;
    crate::domain::Email::parse(raw)
        .ok()
        .map(|e| e.as_str().to_owned())
}

/// The member whose contact has this address in any audience (transactional events name no list).
async fn member_by_email_anywhere(
    store: &Store,
    email: &str,
) -> Result<Option<MemberKey>, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT member_key FROM contacts WHERE email = $1 LIMIT 1")
            .bind(email)
            .fetch_optional(store.pool())
            .await
            .map_err(q_err("find a contact by address"))?;
    Ok(row.and_then(|(k,)| MemberKey::parse(&k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_follow_the_suppression_rules() {
        assert_eq!(
            effect("mailchimp", "cleaned", Some("hard")).suppress,
            Some("hard_bounce")
        );
        assert_eq!(
            effect("mailchimp", "cleaned", Some("abuse")).suppress,
            Some("spam_complaint")
        );
        assert_eq!(
            effect("mailchimp", "complained", None).suppress,
            Some("spam_complaint")
        );
        assert_eq!(effect("mailchimp", "unsubscribed", None).suppress, None);
        assert_eq!(
            effect("mailchimp_transactional", "hard_bounce", None).suppress,
            Some("hard_bounce")
        );
        assert_eq!(
            effect("mailchimp_transactional", "reject", None).suppress,
            Some("rejected")
        );
        assert_eq!(
            effect("mailchimp_transactional", "spam", None).suppress,
            Some("spam_complaint")
        );
        assert!(effect("mailchimp_transactional", "soft_bounce", None).soft_bounce);
        assert_eq!(
            effect("mailchimp_transactional", "soft_bounce", None).suppress,
            None
        );
        assert_eq!(
            effect("mailchimp_transactional", "open", None),
            effect("", "", None)
        );
        assert_eq!(effect("mailchimp", "subscribed", None).writeback, None);
    }

    #[test]
    fn retry_backoff_is_capped() {
        let at = |n| parse_time(&retry_at(n)).unwrap() - Utc::now();
        assert!(at(0) <= Duration::seconds(1));
        assert!(at(20) <= Duration::seconds(60) && at(20) > Duration::seconds(50));
    }
}
