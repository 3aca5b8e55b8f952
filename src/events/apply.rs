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
//!   (from any provider, or from bounce mail) count as a hard bounce once `threshold` of them
//!   fall within `window_days`: written back as cleaned and suppressed (`soft_bounce`).
//! - An event for an address no member has is `unmatched`: applied, reported, not an error.
//! - The member is the one the state DB ties to the list and address (the stored contact);
//!   nothing in an event's body selects one.
//! - An unverified Mailchimp event (an unsigned webhook) is a hint: before it acts, the member is
//!   read from Mailchimp and what Mailchimp says now is applied (its status, its time). A claim
//!   Mailchimp does not bear out is `not_confirmed` and changes nothing; so is any unverified
//!   event when no Mailchimp client is configured.
//! - An event for a list no audience has is `unknown_list` and changes nothing.
//! - The member DB being unreachable stops the round (`member_db_down`); the events stay
//!   unapplied and are retried. A statement that fails for one event backs that event off.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{Duration, Utc};

use crate::config::AudienceConfig;
use crate::domain::parse_time;
use crate::domain::{MemberKey, ReportError, SubscriptionStatus};
use crate::mapping::{Mapping, NamedSql, Writeback};
use crate::providers::RemoteMember;
use crate::providers::{EventMeaning, Provider, ProviderSet, event_meaning};
use crate::source::{MemberSource, Param, SourceError};
use crate::store::contacts::SET_REMOTE_STATUS_SQL;
use crate::store::locks::LeaseWatch;
use crate::store::suppressions::reason;
use crate::store::{ADD_SUPPRESSION_SQL, Param as StateParam, Store, StoreError, now_text};

/// When repeated soft bounces suppress an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftBouncePolicy {
    pub threshold: u32,
    pub window_days: u32,
}

impl SoftBouncePolicy {
    /// `[server] soft_bounce_threshold` and `soft_bounce_window_days`, or the defaults.
    pub fn of_config(config: &crate::config::Config) -> SoftBouncePolicy {
        let default = SoftBouncePolicy::default();
        config
            .server
            .as_ref()
            .map_or(default, |s| SoftBouncePolicy {
                threshold: s.soft_bounce_threshold,
                window_days: s.soft_bounce_window_days,
            })
    }

    /// The rule, for every path (provider bounces, bounce mail): `count` soft bounces of an
    /// address within the window, this one included, count as a hard bounce.
    pub fn counts_as_hard(self, count: i64) -> bool {
        count >= i64::from(self.threshold)
    }
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
    /// Confirms unverified (unsigned) Mailchimp events; without it they are `not_confirmed`.
    /// The connected providers (to confirm unsigned webhook events with their provider).
    pub providers: &'a ProviderSet,
    /// The writeback lease this round runs under: checked before each event's writeback, and the
    /// round stops once it is lost.
    pub lease: Option<&'a LeaseWatch>,
}

/// Which events a round looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// The list of one audience, at its provider (the pull).
    List(&'a AudienceConfig),
    /// Every provider and list (the `serve` worker).
    All,
    /// These events (`bounce ingest`: the ones its mail recorded).
    Ids(&'a [i64]),
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
    /// The writeback lease was lost; the round stopped before the next writeback.
    pub lease_lost: bool,
    pub errors: Vec<ReportError>,
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
    verified: i64,
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

impl WritebackKind {
    /// The mapping's statement for this kind, with its key; a complaint without a statement of
    /// its own runs the unsubscribe one.
    fn statement(self, w: &Writeback) -> Option<(&'static str, &NamedSql)> {
        let (key, statement) = match self {
            WritebackKind::Unsubscribed => ("writeback.unsubscribed", &w.unsubscribed),
            WritebackKind::Cleaned => ("writeback.cleaned", &w.cleaned),
            WritebackKind::Complained => ("writeback.complained", &w.complained),
            WritebackKind::EmailChanged => ("writeback.email_changed", &w.email_changed),
        };
        match statement {
            Some(s) => Some((key, s)),
            None if self == WritebackKind::Complained => WritebackKind::Unsubscribed.statement(w),
            None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Unsubscribe,
    Bounce,
    Nothing,
}

/// What an event that changes nothing means.
const NO_EFFECT: Effect = Effect {
    writeback: None,
    status: None,
    suppress: None,
    soft_bounce: false,
    counts_as: Counted::Nothing,
};

/// Where a suppression from a provider's event came from: `provider:list`, or the provider.
fn suppression_source(provider: &str, list_id: Option<&str>) -> String {
    match list_id {
        Some(list) => format!("{provider}:{list}"),
        None => provider.to_owned(),
    }
}

/// What a stored event does: the provider says what it means, and this decides, for every
/// provider, which write-back, suppression and contact status each meaning brings.
fn effect(provider: &str, kind: &str, reason: Option<&str>) -> Effect {
    let none = NO_EFFECT;
    let list_status = |from_list: bool| from_list.then_some(SubscriptionStatus::Unsubscribed);
    match event_meaning(provider, kind, reason) {
        EventMeaning::Subscribed => Effect {
            status: Some(SubscriptionStatus::Subscribed),
            ..none
        },
        EventMeaning::Pending => Effect {
            status: Some(SubscriptionStatus::Pending),
            ..none
        },
        EventMeaning::Unsubscribed { from_list } => Effect {
            writeback: Some(WritebackKind::Unsubscribed),
            status: list_status(from_list),
            counts_as: Counted::Unsubscribe,
            ..none
        },
        EventMeaning::Complained { from_list } => Effect {
            writeback: Some(WritebackKind::Complained),
            status: list_status(from_list),
            suppress: Some(reason::SPAM_COMPLAINT),
            counts_as: Counted::Unsubscribe,
            ..none
        },
        EventMeaning::Cleaned { abuse } => Effect {
            writeback: Some(WritebackKind::Cleaned),
            status: Some(SubscriptionStatus::Cleaned),
            suppress: Some(if abuse {
                reason::SPAM_COMPLAINT
            } else {
                reason::HARD_BOUNCE
            }),
            counts_as: Counted::Bounce,
            ..none
        },
        EventMeaning::EmailChanged => Effect {
            writeback: Some(WritebackKind::EmailChanged),
            ..none
        },
        EventMeaning::HardBounce => Effect {
            writeback: Some(WritebackKind::Cleaned),
            suppress: Some(reason::HARD_BOUNCE),
            counts_as: Counted::Bounce,
            ..none
        },
        EventMeaning::Rejected => Effect {
            suppress: Some(reason::REJECTED),
            counts_as: Counted::Bounce,
            ..none
        },
        EventMeaning::SoftBounce => Effect {
            soft_bounce: true,
            ..none
        },
        EventMeaning::Nothing => none,
    }
}

/// Whether a member DB error means "unreachable" (retry the whole queue later) rather than
/// "this statement failed for this event".
fn is_unreachable(err: &SourceError) -> bool {
    match err {
        SourceError::Connect { .. } | SourceError::Tls { .. } | SourceError::Missing { .. } => true,
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

/// Back-off of an event whose writeback failed `attempts` times: 2^attempts s, at most 60 s.
fn retry_at(attempts: i64) -> String {
    let secs = 1i64 << attempts.clamp(0, 6);
    (Utc::now() + Duration::seconds(secs.min(60)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Records a failed attempt at event `id`: the attempt counts, `error`'s message is kept as the
/// last error and the event waits until `next_attempt_at` (`None`: it is due again at once). The
/// round's report counts the failure and carries `error`; `what` names the write in a store error.
async fn record_failure(
    ctx: &ApplyContext<'_>,
    out: &mut ApplyOutcome,
    id: i64,
    next_attempt_at: Option<String>,
    what: &'static str,
    error: ReportError,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE provider_events SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 WHERE id = $3",
    )
    .bind(error.message.as_ref())
    .bind(next_attempt_at)
    .bind(id)
    .execute(ctx.store.pool())
    .await
    .map_err(StoreError::query(what))?;
    out.failed += 1;
    out.errors.push(error);
    Ok(())
}

/// Whether any event is waiting to be applied now (unapplied, and not waiting for a retry).
pub async fn any_due(store: &Store) -> Result<bool, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM provider_events
         WHERE applied_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
         LIMIT 1",
    )
    .bind(now_text())
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("look for unapplied provider events"))?;
    Ok(row.is_some())
}

/// Applies up to `limit` due events of `scope`, oldest first. Writebacks run one by one outside
/// any state DB transaction; what the round decided for the state DB (events marked applied,
/// contact statuses, suppressions) is committed in one transaction at the end, so a busy round
/// costs one commit instead of one per event. A crash before that commit re-applies the round's
/// events next time, and the writeback statements are idempotent.
pub async fn apply_events(
    ctx: &ApplyContext<'_>,
    scope: Scope<'_>,
    limit: i64,
) -> Result<ApplyOutcome, StoreError> {
    let now = now_text();
    let rows: Vec<Row> = match scope {
        Scope::List(audience) => sqlx::query_as(
            "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, attempts, payload, verified
             FROM provider_events
             WHERE applied_at IS NULL AND provider = $1 AND list_id = $2
               AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
             ORDER BY id LIMIT $4",
        )
        .bind(audience.provider.as_str())
        .bind(&audience.list_id)
        .bind(&now)
        .bind(limit)
        .fetch_all(ctx.store.pool())
        .await,
        Scope::All => sqlx::query_as(
            "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, attempts, payload, verified
             FROM provider_events
             WHERE applied_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
             ORDER BY id LIMIT $2",
        )
        .bind(&now)
        .bind(limit)
        .fetch_all(ctx.store.pool())
        .await,
        Scope::Ids(ids) => {
            let ids = &ids[..ids.len().min(usize::try_from(limit).unwrap_or(0)).min(500)];
            let sql = format!(
                "SELECT id, provider, audience, list_id, event_type, email, member_key, reason, fired_at, received_at, attempts, payload, verified
                 FROM provider_events
                 WHERE applied_at IS NULL AND id IN ({}) ORDER BY id",
                crate::store::placeholders(1, ids.len())
            );
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for id in ids {
                query = query.bind(*id);
            }
            query.fetch_all(ctx.store.pool()).await
        }
    }
    .map_err(StoreError::query("read unapplied provider events"))?;
    let mut out = ApplyOutcome::default();
    let mut round = Round {
        members: prefetch_members(ctx, &rows).await?,
        confirmations: confirm_all(ctx, &rows).await,
        ..Round::default()
    };
    for row in rows {
        if ctx.lease.is_some_and(|l| l.check().is_err()) {
            out.lease_lost = true;
            break;
        }
        out.seen += 1;
        match decide(ctx, row, &round, &mut out).await? {
            Step::Decided(d) => round.push(*d),
            Step::Failed => {}
            Step::Unreachable => {
                out.member_db_down = true;
                break;
            }
        }
    }
    commit(ctx, round, &mut out).await?;
    Ok(out)
}

/// Adds the suppressions that unapplied events ask for (cleaned, complained, spam, hard_bounce,
/// reject), without their writebacks: for when the member DB is down. The suppression list is
/// in the state DB, and the relay must stop mailing a bouncing address now, not once the club's
/// database is back. The events stay unapplied; applying them later finds the addresses
/// suppressed already. Soft bounces, which suppress only past a threshold, wait for that. Run
/// every back-off round of an outage, it reads only events whose address is not suppressed.
/// Only verified events of a list an audience has (or of no list: transactional) count: an
/// unsigned one is a claim until Mailchimp confirms it, which happens in the round that writes it
/// back. Returns how many addresses were newly suppressed.
pub async fn suppress_ahead(
    store: &Store,
    audiences: &[AudienceConfig],
) -> Result<u64, StoreError> {
    /// provider, event_type, email, reason, list_id
    type Waiting = (String, String, String, Option<String>, Option<String>);
    let rows: Vec<Waiting> = sqlx::query_as(
        "SELECT provider, event_type, email, reason, list_id FROM provider_events e
         WHERE applied_at IS NULL AND email IS NOT NULL AND email <> '' AND verified = 1
           AND event_type IN ('cleaned', 'complained', 'spam', 'hard_bounce', 'reject')
           AND NOT EXISTS (SELECT 1 FROM suppressions s
                           WHERE s.email = e.email AND s.lifted_at IS NULL)
         ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read unapplied suppressing events"))?;
    let now = now_text();
    let mut tx = store.begin().await?;
    let mut added = Vec::new();
    for (provider, kind, email, reason, list_id) in &rows {
        let Some(suppress) = effect(provider, kind, reason.as_deref()).suppress else {
            continue;
        };
        if list_id
            .as_ref()
            .is_some_and(|list| !audiences.iter().any(|a| &a.list_id == list))
        {
            continue;
        }
        let source = suppression_source(provider, list_id.as_deref());
        if Store::add_suppression(&mut tx, email, suppress, &source, reason.as_deref(), &now)
            .await?
        {
            added.push(suppress);
        }
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit suppressions"))?;
    for reason in &added {
        metrics::counter!("mailbridge_suppressions_added_total", "reason" => *reason).increment(1);
    }
    Ok(added.len() as u64)
}

/// What a round decided, not yet committed.
#[derive(Default)]
struct Round {
    decisions: Vec<Decision>,
    /// The newest status event decided in this round per (provider, list, address).
    newest: HashMap<(String, String, String), String>,
    /// (audience, address) → member, read in one go for the round's events.
    members: HashMap<(String, String), MemberKey>,
    /// What Mailchimp said of the round's unverified events, by event id.
    confirmations: HashMap<i64, Confirmation>,
}

impl Round {
    fn push(&mut self, d: Decision) {
        if d.is_status && d.outcome == "applied" {
            let key = (
                d.provider.clone(),
                d.list_id.clone().unwrap_or_default(),
                d.email.clone(),
            );
            let newest = self.newest.entry(key).or_default();
            if d.fired_at > *newest {
                newest.clone_from(&d.fired_at);
            }
        }
        self.decisions.push(d);
    }

    fn newest(&self, provider: &str, list: &str, email: &str) -> Option<&String> {
        self.newest
            .get(&(provider.to_owned(), list.to_owned(), email.to_owned()))
    }
}

/// The state DB changes one event asks for.
struct Decision {
    id: i64,
    provider: String,
    event_type: String,
    list_id: Option<String>,
    email: String,
    reason: Option<String>,
    fired_at: String,
    received_at: String,
    member_key: Option<MemberKey>,
    outcome: &'static str,
    /// An unverified event that Mailchimp confirmed: its row takes the provider's version.
    confirmed: bool,
    is_status: bool,
    /// (audience, status) to record on the contact.
    status: Option<(String, SubscriptionStatus)>,
    /// (audience, new address) to record on the contact.
    new_email: Option<(String, String)>,
    suppress: Option<&'static str>,
    counts_as: Counted,
}

enum Step {
    Decided(Box<Decision>),
    /// The writeback failed for this event; it is backed off.
    Failed,
    /// The member DB is unreachable: stop the round.
    Unreachable,
}

/// Runs one event's writeback and decides its state DB changes.
async fn decide(
    ctx: &ApplyContext<'_>,
    row: Row,
    round: &Round,
    out: &mut ApplyOutcome,
) -> Result<Step, StoreError> {
    let mut row = row;
    // Why the event changes nothing, when it does not (its outcome).
    let mut inert: Option<&'static str> = None;
    let mut confirmed = false;
    match round.confirmations.get(&row.id) {
        Some(Confirmation::Confirmed {
            event_type,
            fired_at,
            reason,
        }) => {
            row.event_type = (*event_type).to_owned();
            row.fired_at.clone_from(fired_at);
            row.reason.clone_from(reason);
            confirmed = true;
        }
        Some(Confirmation::NotConfirmed(why)) => {
            tracing::info!(
                event = row.id,
                "An unsigned webhook event was not confirmed by {} and changes nothing: {why}",
                display_name(&row.provider)
            );
            inert = Some("not_confirmed");
        }
        Some(Confirmation::Failed(message)) => {
            tracing::warn!(
                event = row.id,
                "Confirming an unsigned webhook event with {} failed; it is retried: {message}",
                display_name(&row.provider)
            );
            record_failure(
                ctx,
                out,
                row.id,
                Some(retry_at(row.attempts)),
                "record a failed confirmation",
                ReportError {
                    member_key: None,
                    email: row.email.clone(),
                    code: "confirm_failed".into(),
                    message: message.clone().into(),
                },
            )
            .await?;
            return Ok(Step::Failed);
        }
        None => {}
    }
    let email = row.email.clone().unwrap_or_default();
    let audience = audience_of(ctx.audiences, &row);
    // A list event of a list no audience of its provider syncs.
    let unknown_list = row.list_id.is_some() && audience.is_none();
    if unknown_list {
        inert = Some("unknown_list");
    }
    let mut fx = match inert {
        Some(_) => NO_EFFECT,
        None => effect(&row.provider, &row.event_type, row.reason.as_deref()),
    };
    // Repeated soft bounces count as a hard one: written back as cleaned and suppressed.
    if fx.soft_bounce && !email.is_empty() {
        let count = soft_bounces_within(ctx, &email, &row.fired_at).await?;
        if ctx.soft_bounces.counts_as_hard(count) {
            fx = Effect {
                writeback: Some(WritebackKind::Cleaned),
                suppress: Some(reason::SOFT_BOUNCE),
                soft_bounce: false,
                counts_as: Counted::Bounce,
                ..fx
            };
        }
    }
    // Who the event is about: the member the state DB ties to the list and address.
    let member_key = if email.is_empty() || fx == NO_EFFECT {
        None
    } else {
        match row.member_key.as_deref().and_then(MemberKey::parse) {
            Some(k) => Some(k),
            None => match audience {
                Some(a) => round.members.get(&(a.name.clone(), email.clone())).cloned(),
                None => member_by_email_anywhere(ctx.store, &email).await?,
            },
        }
    };
    // Out of order: a status event older than one already applied changes no status.
    let list = row.list_id.as_deref().unwrap_or("");
    let superseded = fx.status.is_some()
        && member_key.is_some()
        && {
            let newest: Option<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(fired_at) FROM provider_events
             WHERE {} AND provider = $2 AND COALESCE(list_id, '') = $3 AND id <> $4
               AND applied_at IS NOT NULL AND (outcome IS NULL OR outcome = 'applied')
               AND event_type IN ('subscribed', 'unsubscribed', 'complained', 'cleaned', 'pending')",
            super::same_email_sql(ctx.store.kind(), "", "$1")
        )))
        .bind(&email)
        .bind(&row.provider)
        .bind(list)
        .bind(row.id)
        .fetch_optional(ctx.store.pool())
        .await
        .map_err(StoreError::query("read the newest applied event of an address"))?;
            let stored = newest.and_then(|(t,)| t);
            let in_round = round.newest(&row.provider, list, &email);
            [stored.as_ref(), in_round]
                .into_iter()
                .flatten()
                .any(|newest| newest.as_str() > row.fired_at.as_str())
        };

    // The writeback, outside any state DB transaction.
    let statement = match fx.writeback {
        _ if superseded || member_key.is_none() => None,
        kind => kind.and_then(|k| k.statement(&ctx.mapping.writeback)),
    };
    let new_email = (fx.writeback == Some(WritebackKind::EmailChanged))
        .then(|| new_email_of(&row.payload))
        .flatten();
    if let (Some((name, stmt)), Some(key)) = (statement, &member_key) {
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
                (
                    "new_email",
                    new_email
                        .clone()
                        .map_or(Param::Null, |(typed, _)| Param::Text(typed)),
                ),
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
                let message = crate::error_chain(&e);
                let unreachable = is_unreachable(&e);
                tracing::warn!(member_key = %key, event = row.id, "Writing a provider event back failed; it is retried: {message}");
                metrics::counter!("mailbridge_writeback_failures_total", "provider" => row.provider.clone())
                    .increment(1);
                record_failure(
                    ctx,
                    out,
                    row.id,
                    (!unreachable).then(|| retry_at(row.attempts)),
                    "record a writeback failure",
                    ReportError {
                        member_key: Some(key.to_string()),
                        email: Some(email.clone()),
                        code: "writeback_failed".into(),
                        message: message.into(),
                    },
                )
                .await?;
                return Ok(if unreachable {
                    Step::Unreachable
                } else {
                    Step::Failed
                });
            }
        }
    }

    let outcome = if let Some(why) = inert {
        why
    } else if superseded {
        "superseded"
    } else if email.is_empty() || fx == NO_EFFECT {
        "ignored"
    } else if member_key.is_none() {
        "unmatched"
    } else {
        "applied"
    };
    let status = match (fx.status, &member_key, audience) {
        (Some(status), Some(_), Some(a)) if !superseded => Some((a.name.clone(), status)),
        _ => None,
    };
    let new_email = match (new_email, &member_key, audience) {
        (Some((_, identity)), Some(_), Some(a)) => Some((a.name.clone(), identity)),
        _ => None,
    };
    Ok(Step::Decided(Box::new(Decision {
        id: row.id,
        provider: row.provider,
        event_type: row.event_type,
        list_id: row.list_id,
        email,
        reason: row.reason,
        fired_at: row.fired_at,
        received_at: row.received_at,
        member_key,
        outcome,
        confirmed,
        is_status: fx.status.is_some(),
        status,
        new_email,
        suppress: fx.suppress,
        counts_as: fx.counts_as,
    })))
}

/// How many soft bounces of `email` (any provider, bounce mail included) fell within the
/// policy's window up to `fired_at`, the one at `fired_at` included: every soft bounce is stored
/// before it is applied.
async fn soft_bounces_within(
    ctx: &ApplyContext<'_>,
    email: &str,
    fired_at: &str,
) -> Result<i64, StoreError> {
    let since = parse_time(fired_at).unwrap_or_else(Utc::now)
        - Duration::days(i64::from(ctx.soft_bounces.window_days));
    let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM provider_events
         WHERE {} AND event_type = 'soft_bounce' AND fired_at >= $2 AND fired_at <= $3",
        super::same_email_sql(ctx.store.kind(), "", "$1")
    )))
    .bind(email)
    .bind(since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    .bind(fired_at)
    .fetch_one(ctx.store.pool())
    .await
    .map_err(StoreError::query("count soft bounces"))?;
    Ok(count)
}

/// The members of the round's list events that carry no member key, in one query per audience
/// and chunk instead of one per event.
async fn prefetch_members(
    ctx: &ApplyContext<'_>,
    rows: &[Row],
) -> Result<HashMap<(String, String), MemberKey>, StoreError> {
    let mut wanted: HashMap<&str, Vec<&str>> = HashMap::new();
    for row in rows {
        if row.member_key.is_some() {
            continue;
        }
        if let (Some(a), Some(email)) = (audience_of(ctx.audiences, row), row.email.as_deref()) {
            wanted.entry(a.name.as_str()).or_default().push(email);
        }
    }
    let mut out = HashMap::new();
    for (audience, emails) in wanted {
        for chunk in emails.chunks(500) {
            let sql = format!(
                "SELECT email, member_key FROM contacts WHERE audience = $1 AND email IN ({})",
                crate::store::placeholders(2, chunk.len())
            );
            let mut query =
                sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql)).bind(audience);
            for email in chunk {
                query = query.bind(*email);
            }
            for (email, key) in query
                .fetch_all(ctx.store.pool())
                .await
                .map_err(StoreError::query("find contacts by address"))?
            {
                if let Some(key) = MemberKey::parse(&key) {
                    out.insert((audience.to_owned(), email), key);
                }
            }
        }
    }
    Ok(out)
}

/// Decisions committed per state DB transaction ([`commit`]).
const COMMIT_CHUNK: usize = 100;

/// Commits a round's decisions, [`COMMIT_CHUNK`] to a transaction, and counts each piece once it
/// is committed. An event's statements (marked applied, its contact's status, its suppression)
/// are always in one transaction; events are independent of one another, and a round cut short by
/// a failed piece leaves the rest unapplied, to be applied again (the writebacks are idempotent).
/// The statements are collected first and run by [`Store::write_all`]: on a SQLite state DB that
/// is the native connection's thread, where the round takes its turn between webhook group
/// commits instead of contending with them for the write lock. In pieces, no turn holds that
/// writer for long: a whole round of 500 was one commit of several milliseconds that every
/// webhook arriving meanwhile waited behind (the webhooks bench's p99, median of 7 interleaved
/// runs: 9.2 ms with one commit per round, 8.1 ms in pieces, with the writer's binding below).
async fn commit(
    ctx: &ApplyContext<'_>,
    round: Round,
    out: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let applied_at = now_text();
    for chunk in round.decisions.chunks(COMMIT_CHUNK) {
        commit_chunk(ctx, chunk, &applied_at, out).await?;
    }
    Ok(())
}

/// Commits `decisions` in one transaction, then counts them.
async fn commit_chunk(
    ctx: &ApplyContext<'_>,
    decisions: &[Decision],
    applied_at: &str,
    out: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let text = |s: &str| StateParam::Text(s.to_owned());
    let mut statements: Vec<(Cow<'static, str>, Vec<StateParam>)> = Vec::new();
    // Mark the events applied: one statement per (member, outcome) group and chunk of ids.
    let mut groups: HashMap<(Option<&str>, &str), Vec<i64>> = HashMap::new();
    for d in decisions {
        groups
            .entry((d.member_key.as_ref().map(MemberKey::as_str), d.outcome))
            .or_default()
            .push(d.id);
    }
    for ((member_key, outcome), ids) in groups {
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE provider_events SET applied_at = $1, attempts = attempts + 1, member_key = $2, outcome = $3, last_error = NULL
                 WHERE applied_at IS NULL AND id IN ({})",
                crate::store::placeholders(4, chunk.len())
            );
            let mut params = vec![
                text(applied_at),
                member_key.map_or(StateParam::Null, text),
                text(outcome),
            ];
            params.extend(chunk.iter().map(|id| StateParam::Int(*id)));
            statements.push((sql.into(), params));
        }
    }
    for d in decisions.iter().filter(|d| d.confirmed) {
        statements.push((
            "UPDATE provider_events SET verified = 1, event_type = $1, fired_at = $2, reason = $3 WHERE id = $4".into(),
            vec![
                text(&d.event_type),
                text(&d.fired_at),
                d.reason.as_deref().map_or(StateParam::Null, text),
                StateParam::Int(d.id),
            ],
        ));
    }
    // (decision, statement) of each suppression: it added the address when it changed a row.
    let mut suppressions: Vec<(usize, usize)> = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        if let (Some((audience, status)), Some(key)) = (&d.status, &d.member_key) {
            statements.push((
                SET_REMOTE_STATUS_SQL.into(),
                vec![
                    text(status.as_str()),
                    StateParam::Text(now_text()),
                    text(audience),
                    text(key.as_str()),
                ],
            ));
        }
        // The provider already has the new address: record it, so the next sync does not try
        // to move the contact from the old one.
        if let (Some((audience, new)), Some(key)) = (&d.new_email, &d.member_key) {
            statements.push((
                "UPDATE contacts SET email = $1 WHERE audience = $2 AND member_key = $3".into(),
                vec![text(new), text(audience), text(key.as_str())],
            ));
        }
        if let (Some(reason), false) = (d.suppress, d.email.is_empty()) {
            suppressions.push((i, statements.len()));
            statements.push((
                ADD_SUPPRESSION_SQL.into(),
                vec![
                    text(&d.email),
                    text(reason),
                    StateParam::Text(suppression_source(&d.provider, d.list_id.as_deref())),
                    d.reason.as_deref().map_or(StateParam::Null, text),
                    text(applied_at),
                ],
            ));
        }
    }
    let changed = ctx
        .store
        .write_all("commit applied events", statements)
        .await?;
    let mut suppressed: Vec<Option<&'static str>> = vec![None; decisions.len()];
    for (i, statement) in suppressions {
        if changed.get(statement).is_some_and(|n| *n > 0) {
            suppressed[i] = decisions[i].suppress;
        }
    }

    let now = Utc::now();
    for (d, added) in decisions.iter().zip(suppressed) {
        out.applied += 1;
        match d.outcome {
            "superseded" => out.superseded += 1,
            "unmatched" => out.unmatched += 1,
            _ => {}
        }
        if let Some(reason) = added {
            out.suppressed += 1;
            metrics::counter!("mailbridge_suppressions_added_total", "reason" => reason)
                .increment(1);
        }
        if d.outcome != "superseded" {
            match d.counts_as {
                Counted::Unsubscribe => out.unsubscribes += 1,
                Counted::Bounce => out.bounces += 1,
                Counted::Nothing => {}
            }
        }
        metrics::counter!(
            "mailbridge_events_applied_total",
            "provider" => d.provider.clone(),
            "type" => d.event_type.clone(),
            "outcome" => d.outcome
        )
        .increment(1);
        if let Some(received) = parse_time(&d.received_at) {
            let secs = (now - received).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics::histogram!("mailbridge_writeback_latency_seconds").record(secs.max(0.0));
        }
    }
    Ok(())
}

/// The configured audience an event belongs to (by name, else by list id).
fn audience_of<'c>(audiences: &'c [AudienceConfig], row: &Row) -> Option<&'c AudienceConfig> {
    // An event acts only on an audience of the provider that sent it.
    let ours = audiences
        .iter()
        .filter(|a| a.provider.as_str() == row.provider);
    match (&row.audience, &row.list_id) {
        (Some(name), _) => ours.clone().find(|a| &a.name == name),
        (None, Some(list)) => ours.clone().find(|a| &a.list_id == list),
        (None, None) => None,
    }
}

/// What Mailchimp says of an unverified event.
#[derive(Clone, Debug, PartialEq)]
enum Confirmation {
    /// It bears the claim out; apply the provider's version (its status, its time).
    Confirmed {
        event_type: &'static str,
        fired_at: String,
        reason: Option<String>,
    },
    /// It does not; the event changes nothing.
    NotConfirmed(String),
    /// Mailchimp could not be asked; the event is retried after a back-off.
    Failed(String),
}

/// Whether `row` must be confirmed with its provider before it acts: unverified, of a list we
/// sync, about an address, and meaning something.
fn needs_confirmation(ctx: &ApplyContext<'_>, row: &Row) -> bool {
    row.verified == 0
        && row.email.as_deref().is_some_and(|e| !e.is_empty())
        && audience_of(ctx.audiences, row).is_some()
        && effect(&row.provider, &row.event_type, row.reason.as_deref()) != NO_EFFECT
}

/// Confirms the round's unverified events with Mailchimp, a few at a time.
async fn confirm_all(ctx: &ApplyContext<'_>, rows: &[Row]) -> HashMap<i64, Confirmation> {
    let mut out = HashMap::new();
    let mut wanted = Vec::new();
    for row in rows.iter().filter(|r| needs_confirmation(ctx, r)) {
        match ctx.providers.by_name(&row.provider) {
            Some(client) => wanted.push((client, row)),
            None => {
                out.insert(
                    row.id,
                    Confirmation::NotConfirmed(format!(
                        "no {} client is configured to confirm it",
                        display_name(&row.provider)
                    )),
                );
            }
        }
    }
    // A few at a time: the client keeps within Mailchimp's connection limit anyway.
    let mut chunks = wanted.chunks(4);
    for chunk in chunks.by_ref() {
        let asked =
            futures::future::join_all(chunk.iter().map(|(client, row)| confirm(client, row))).await;
        let failed = asked.iter().find_map(|c| match c {
            Confirmation::Failed(message) => Some(message.clone()),
            _ => None,
        });
        out.extend(chunk.iter().map(|(_, row)| row.id).zip(asked));
        if let Some(message) = failed {
            // Mailchimp cannot be asked now (its client already retried): the round's other
            // unsigned events wait for the back-off too, instead of each retrying on its own.
            for (_, row) in chunks.flatten() {
                out.insert(row.id, Confirmation::Failed(message.clone()));
            }
            break;
        }
    }
    out
}

async fn read_member(
    client: &Provider,
    list: &str,
    address: &str,
) -> Result<Option<RemoteMember>, String> {
    client
        .member(list, address)
        .await
        .map_err(|e| crate::error_chain(&e))
}

fn is_opt_out(kind: &str) -> bool {
    matches!(kind, "unsubscribed" | "complained" | "cleaned")
}

/// The name users know a stored event's provider by.
fn display_name(provider: &str) -> &str {
    crate::config::ProviderKind::ALL
        .into_iter()
        .find(|k| k.as_str() == provider)
        .map_or(provider, |k| k.display_name())
}

/// Reads what the provider has now for an unverified event's address (both addresses for an
/// `upemail`) and compares it with the claim.
async fn confirm(client: &Provider, row: &Row) -> Confirmation {
    let provider = client.kind().display_name();
    let list = row.list_id.as_deref().unwrap_or_default();
    let email = row.email.as_deref().unwrap_or_default();
    let now = Utc::now();
    let when = |m: &RemoteMember| {
        m.last_changed
            .map_or(now, |t| crate::providers::not_after_now(t, now))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    if row.event_type == "upemail" {
        let Some((_, new_address)) = new_email_of(&row.payload) else {
            return Confirmation::NotConfirmed("it names no valid new address".to_owned());
        };
        let (new, old) = match (
            read_member(client, list, &new_address).await,
            read_member(client, list, email).await,
        ) {
            (Ok(new), Ok(old)) => (new, old),
            (Err(e), _) | (_, Err(e)) => return Confirmation::Failed(e),
        };
        return match (new, old) {
            (Some(new), None) if new.status != SubscriptionStatus::Archived => {
                Confirmation::Confirmed {
                    event_type: "upemail",
                    fired_at: when(&new),
                    reason: None,
                }
            }
            _ => Confirmation::NotConfirmed(format!(
                "{provider} does not show the change: the new address is not on the list, or the old one still is"
            )),
        };
    }
    let member = match read_member(client, list, email).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Confirmation::NotConfirmed(format!(
                "{provider} has no such member on the list"
            ));
        }
        Err(e) => return Confirmation::Failed(e),
    };
    match client.status_event(&member) {
        Some(said)
            if said == row.event_type || (is_opt_out(said) && is_opt_out(&row.event_type)) =>
        {
            Confirmation::Confirmed {
                event_type: said,
                fired_at: when(&member),
                // A cleaned member has no reason in its record; the event's says hard or abuse,
                // and both suppress.
                reason: if said == "cleaned" {
                    row.reason.clone()
                } else {
                    member.unsubscribe_reason.clone()
                },
            }
        }
        _ => Confirmation::NotConfirmed(format!(
            "{provider} says the member is {}",
            member.status.as_str()
        )),
    }
}

/// An upemail event's new address: as the member typed it (trimmed, for the member DB) and in
/// identity form (for the state DB's contact).
fn new_email_of(payload: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let raw = v.get("data")?.get("new_email")?.as_str()?.trim();
    crate::domain::Email::parse(raw)
        .ok()
        .map(|e| (raw.to_owned(), e.as_str().to_owned()))
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
            .map_err(StoreError::query("find a contact by address"))?;
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

    /// The attack table (tests/attacks.rs) has a case for each Mailchimp Transactional type
    /// that changes something; a type with an effect must be on that list.
    #[test]
    fn exactly_the_listed_transactional_types_have_effects() {
        for kind in [
            "send",
            "deferral",
            "delivered",
            "open",
            "click",
            "hard_bounce",
            "soft_bounce",
            "reject",
            "spam",
            "unsub",
            "blacklist",
            "whitelist",
            "inbound",
        ] {
            let listed = crate::providers::mailchimp::webhook::MANDRILL_TYPES.contains(&kind);
            let acts = effect("mailchimp_transactional", kind, None) != NO_EFFECT;
            assert_eq!(listed, acts, "{kind}");
        }
    }

    #[test]
    fn retry_backoff_is_capped() {
        let at = |n| parse_time(&retry_at(n)).unwrap() - Utc::now();
        assert!(at(0) <= Duration::seconds(1));
        assert!(at(20) <= Duration::seconds(60) && at(20) > Duration::seconds(50));
    }

    /// An event acts only on an audience of the provider that sent it: found by its list (or the
    /// audience it was pulled for) among that provider's audiences, never another provider's
    /// audience that happens to share the list id or the name.
    #[test]
    fn an_event_finds_only_an_audience_of_its_own_provider() {
        use crate::config::ProviderKind;
        let audience = |name: &str, provider, list: &str| AudienceConfig {
            name: name.into(),
            provider,
            list_id: list.into(),
            max_archive_percent: 10.0,
            webhook_signing_secret: None,
            from_name: None,
            reply_to: None,
        };
        let audiences = [
            audience("news", ProviderKind::Mailchimp, "L1"),
            audience("cc-news", ProviderKind::ConstantContact, "L2"),
        ];
        let row = |provider: &str, audience: Option<&str>, list: Option<&str>| Row {
            id: 1,
            provider: provider.into(),
            audience: audience.map(Into::into),
            list_id: list.map(Into::into),
            event_type: "unsubscribed".into(),
            email: Some("a@example.org".into()),
            member_key: None,
            reason: None,
            fired_at: String::new(),
            received_at: String::new(),
            attempts: 0,
            payload: String::new(),
            verified: 1,
        };
        let found = |r: &Row| audience_of(&audiences, r).map(|a| a.name.as_str());
        assert_eq!(found(&row("mailchimp", None, Some("L1"))), Some("news"));
        assert_eq!(
            found(&row("mailchimp", Some("news"), Some("L1"))),
            Some("news")
        );
        assert_eq!(found(&row("mailchimp", None, Some("L2"))), None);
        assert_eq!(found(&row("mailchimp", Some("cc-news"), None)), None);
        assert_eq!(
            found(&row("constant_contact", None, Some("L2"))),
            Some("cc-news")
        );
        assert_eq!(found(&row("mailchimp_transactional", None, None)), None);
    }
}
