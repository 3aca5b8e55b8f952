//! The `outbox` table: enqueue (render once, commit, then acknowledge), claim with a lease, record
//! each attempt's outcome, read a message's status. SQL for both state DBs: PostgreSQL claims with
//! `FOR UPDATE SKIP LOCKED` so concurrent workers never take the same row; SQLite's single
//! `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING` is atomic under its write lock.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::render::{self, Category, InputError, NewMessage, RenderError};
use super::routes::ROUTE_NAMES;
use super::verp;
use crate::config::{DbKind, RelayConfig};
use crate::store::writer::bind_numbered;
use crate::store::{ADD_SUPPRESSION_SQL, Store, StoreError, nul_free, time_text};

mod history;
mod listing;

pub(crate) use history::note as note_history;
pub use history::{Attempt, MAX_ATTEMPTS, RetryOutcome, attempts, purge_attempts, retry_now, turn};
pub use listing::{
    Counts, Cursor, ListQuery, MAX_PAGE, Order, Page, STATUSES, counts, list, order_of,
};

/// The suppression reason of an address a route refused for good (5.1.x).
const HARD_BOUNCE: &str = crate::store::suppressions::reason::HARD_BOUNCE;

/// A message's delivery status (the `status` column; the API's `status` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sending,
    Sent,
    Deferred,
    Bounced,
    Suppressed,
    Failed,
}

impl Status {
    /// The statuses of a message that is done: nothing sends its bytes again.
    pub const DONE: [Status; 4] = [
        Status::Sent,
        Status::Bounced,
        Status::Suppressed,
        Status::Failed,
    ];

    pub fn is_done(self) -> bool {
        Status::DONE.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Suppressed => "suppressed",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "deferred" => Status::Deferred,
            "bounced" => Status::Bounced,
            "suppressed" => Status::Suppressed,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the idempotency key `{key}` was used within the last 24 hours for a different message (recipient, subject, content or headers differ); use a new key"
    )]
    KeyReused { key: String },
}

/// What the caller gets back once the message is committed.
#[derive(Debug, Clone, Serialize)]
pub struct Enqueued {
    pub id: String,
    pub message_id: String,
    #[serde(skip)]
    pub status: Status,
    /// The request's idempotency key already named this message: nothing new was stored.
    #[serde(skip)]
    pub replayed: bool,
}

/// A new outbox id: 128 random bits in hex (also the Message-ID's local part).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `email` (identity form) is on the suppression list.
pub async fn is_suppressed(store: &Store, email: &str) -> Result<bool, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT email FROM suppressions WHERE email = $1 AND lifted_at IS NULL")
            .bind(email)
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("read a suppression"))?;
    Ok(row.is_some())
}

/// Which of `emails` (identity form) are on the suppression list, in one query.
pub async fn suppressed_among(
    store: &Store,
    emails: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if emails.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (1..=emails.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT email FROM suppressions WHERE lifted_at IS NULL AND email IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
    for e in emails {
        query = query.bind(*e);
    }
    let rows = query
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("read suppressions"))?;
    Ok(rows.into_iter().map(|(e,)| e).collect())
}

/// The (address, category) pairs among `emails` that were opted out of with one-click
/// unsubscribe: read with the suppression list just before a claim's messages are sent, so a
/// message queued before its recipient opted out is held back too.
pub async fn opted_out_among(
    store: &Store,
    emails: &[&str],
) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
    if emails.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (1..=emails.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT email, category FROM unsubscribes WHERE email IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
    for e in emails {
        query = query.bind(*e);
    }
    let rows = query
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("read unsubscribes"))?;
    Ok(rows.into_iter().collect())
}

/// The reply of a message held back by the suppression list.
pub const SUPPRESSED_REPLY: &str = "not sent: the address is on the suppression list";

/// Whether a message of `category` to a suppressed address is held back. Quota alerts are not:
/// their address is the operator's own, configured in `[alerts] to` (see `relay::alerts`).
pub fn blocked_by_suppression(category: &str, config: &RelayConfig) -> bool {
    !(category == Category::Password.as_str() && config.allow_password_to_suppressed)
        && category != Category::Alert.as_str()
}

/// Why a message is held back (stored as `suppressed`, never sent), if it is: the address is on
/// the suppression list ([`blocked_by_suppression`] decides which categories that stops), or the
/// recipient opted out of the message's category with one-click unsubscribe (only categories a
/// member can opt out of; registration and password mail still flow).
pub fn held_back(
    category: Category,
    suppressed: bool,
    opted_out: bool,
    config: &RelayConfig,
) -> Option<&'static str> {
    if suppressed && blocked_by_suppression(category.as_str(), config) {
        return Some(SUPPRESSED_REPLY);
    }
    if opted_out && category.member_can_opt_out() {
        return Some("not sent: the recipient unsubscribed from this category of mail");
    }
    None
}

/// Checks, renders and stores one message. Returns once the row is committed (invariant 4). A
/// message to a suppressed address is stored as `suppressed` and never sent (invariant 8).
pub async fn enqueue(
    store: &Store,
    config: &RelayConfig,
    msg: &NewMessage,
) -> Result<Enqueued, EnqueueError> {
    enqueue_keyed(store, config, msg, None).await
}

/// How long an idempotency key names its message; after that it may name a new one.
pub const KEY_LIFETIME_HOURS: i64 = 24;

/// A caller's idempotency key (`Idempotency-Key`, `send --key`): 1 to 255 characters of
/// printable ASCII (spaces allowed, not at either end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<IdempotencyKey, String> {
        if key.is_empty() || key.len() > 255 {
            return Err("an idempotency key has 1 to 255 characters".into());
        }
        if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) || key.trim() != key {
            return Err(
                "an idempotency key is printable ASCII (letters, digits, punctuation; inner spaces)"
                    .into(),
            );
        }
        Ok(IdempotencyKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SHA-256 (hex) of the request's fields, each length-prefixed so that no two different
/// requests run together into the same bytes. What a retry must repeat for its key to return
/// the first message.
pub fn request_hash(msg: &NewMessage) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |value: Option<&str>| match value {
        None => h.update(b"-"),
        Some(v) => {
            h.update(format!("{}:", v.len()).as_bytes());
            h.update(v.as_bytes());
        }
    };
    field(Some(&msg.to));
    field(Some(&msg.subject));
    field(Some(&msg.text));
    field(msg.html.as_deref());
    field(msg.reply_to.as_deref());
    field(Some(&msg.category));
    field(Some(&msg.headers.len().to_string()));
    for (name, value) in &msg.headers {
        field(Some(name));
        field(Some(value));
    }
    hex::encode(h.finalize())
}

/// What storing a message under a key found: nothing (the message was stored), or the message
/// the key already names (its request hash, id, Message-ID and status).
enum Stored {
    New,
    Existing {
        hash: String,
        id: String,
        message_id: String,
        status: String,
    },
}

/// [`enqueue`] under an idempotency key: the first request with `key` stores its message; a
/// request with the same key within [`KEY_LIFETIME_HOURS`] stores nothing and gets the first
/// message back (`replayed`), or [`EnqueueError::KeyReused`] when its fields differ. A key older
/// than that is taken as new. Concurrent requests with one key store one message (the key is the
/// `message_keys` primary key, written in the message's transaction).
pub async fn enqueue_keyed(
    store: &Store,
    config: &RelayConfig,
    msg: &NewMessage,
    key: Option<&IdempotencyKey>,
) -> Result<Enqueued, EnqueueError> {
    let checked = render::check(msg, config)?;
    enqueue_checked(store, config, msg, checked, key).await
}

/// Stores a quota alert (`relay::alerts`) in the [`Category::Alert`] no caller may use.
pub(crate) async fn enqueue_alert(
    store: &Store,
    config: &RelayConfig,
    msg: &NewMessage,
) -> Result<Enqueued, EnqueueError> {
    let checked = render::check_internal(msg, config, Category::Alert)?;
    enqueue_checked(store, config, msg, checked, None).await
}

async fn enqueue_checked(
    store: &Store,
    config: &RelayConfig,
    msg: &NewMessage,
    checked: render::Checked,
    key: Option<&IdempotencyKey>,
) -> Result<Enqueued, EnqueueError> {
    let id = new_id();
    let (raw, message_id) = render::render(&checked, &id, config)?;
    let raw = super::dkim::sign_if_configured(raw, config)
        .map_err(|e| RenderError::from_text(e.to_string()))?;
    let envelope_from = match (&config.bounce_domain, &config.verp_secret) {
        (Some(domain), Some(secret)) => {
            use secrecy::ExposeSecret;
            verp::encode(&id, domain, secret.expose_secret().as_bytes())
        }
        _ => config
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| RenderError::from_text(format!("[relay] from: {e}")))?
            .email
            .to_string(),
    };
    let opted_out = checked.category.member_can_opt_out()
        && store
            .is_opted_out(checked.to.as_str(), checked.category.as_str())
            .await?;
    let reply = held_back(
        checked.category,
        is_suppressed(store, checked.to.as_str()).await?,
        opted_out,
        config,
    );
    let status = if reply.is_some() {
        Status::Suppressed
    } else {
        Status::Queued
    };
    let now = store.now_text();
    let hash = key.map(|_| request_hash(msg));
    let keyed = key.zip(hash.clone()).map(|(k, hash)| {
        let expired = store.now() - chrono::Duration::hours(KEY_LIFETIME_HOURS);
        (k.as_str().to_owned(), hash, time_text(expired))
    });
    let row = (
        id.clone(),
        message_id.clone(),
        checked.to.as_str().to_owned(),
        checked.category.as_str().to_owned(),
        status.as_str(),
        now,
        envelope_from,
        reply,
    );
    // The row and its bytes (in `outbox_bodies`, which claims and outcomes never rewrite) are
    // committed together: a claimed message always has its bytes.
    let stored = if let Some(writer) = store.writer() {
        writer
            .transaction("store a message in the outbox", move |tx, err| {
                let (id, message_id, to, category, status, now, from, reply) = &row;
                if let Some((key, hash, expired)) = &keyed {
                    let mut claim = tx.prepare_cached(CLAIM_KEY_SQL).map_err(&err)?;
                    bind_numbered(&mut claim, &[key, hash, id, now, expired]).map_err(&err)?;
                    if claim.raw_execute().map_err(&err)? == 0 {
                        let mut read = tx.prepare_cached(READ_KEY_SQL).map_err(&err)?;
                        return read
                            .query_row([key], |r| {
                                Ok(Stored::Existing {
                                    hash: r.get(0)?,
                                    id: r.get(1)?,
                                    message_id: r.get(2)?,
                                    status: r.get(3)?,
                                })
                            })
                            .map_err(&err);
                    }
                }
                let mut insert = tx.prepare_cached(INSERT_ROW_SQL).map_err(&err)?;
                bind_numbered(
                    &mut insert,
                    &[id, message_id, to, category, status, now, from, reply],
                )
                .map_err(&err)?;
                insert.raw_execute().map_err(&err)?;
                let mut body = tx.prepare_cached(INSERT_BODY_SQL).map_err(&err)?;
                bind_numbered(&mut body, &[id, &raw]).map_err(&err)?;
                body.raw_execute().map_err(&err)?;
                Ok(Stored::New)
            })
            .await?
    } else if store.kind() == DbKind::Postgres {
        let (id, message_id, to, category, status, now, from, reply) = row;
        let insert = sqlx::query(INSERT_ROW_AND_BODY_PG_SQL)
            .bind(id.clone())
            .bind(message_id)
            .bind(to)
            .bind(category)
            .bind(status)
            .bind(now.clone())
            .bind(from)
            .bind(reply)
            .bind(raw);
        match keyed {
            None => {
                insert
                    .execute(store.pool())
                    .await
                    .map_err(StoreError::query("store a message in the outbox"))?;
                Stored::New
            }
            Some((key, hash, expired)) => {
                let mut tx = store.begin().await?;
                // A concurrent request with the same key waits here for this one's commit,
                // then finds its key taken.
                let claimed = sqlx::query(CLAIM_KEY_SQL)
                    .bind(&key)
                    .bind(hash)
                    .bind(id)
                    .bind(now)
                    .bind(expired)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("record an idempotency key"))?
                    .rows_affected();
                let stored = if claimed == 0 {
                    let (hash, id, message_id, status): (String, String, String, String) =
                        sqlx::query_as(READ_KEY_SQL)
                            .bind(&key)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(StoreError::query("read an idempotency key"))?;
                    Stored::Existing {
                        hash,
                        id,
                        message_id,
                        status,
                    }
                } else {
                    insert
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query("store a message in the outbox"))?;
                    Stored::New
                };
                tx.commit()
                    .await
                    .map_err(StoreError::query("store a message in the outbox"))?;
                stored
            }
        }
    } else {
        // A writable SQLite state DB always has the native writer (`sqlite://:memory:` is not
        // a state DB): this one was opened read-only.
        return Err(StoreError::Connection {
            what: "store a message in the outbox",
            message: "the SQLite state database is open read-only".into(),
        }
        .into());
    };
    if let Stored::Existing {
        hash: first_hash,
        id,
        message_id,
        status,
    } = stored
    {
        let key = key.map(|k| k.as_str().to_owned()).unwrap_or_default();
        if Some(&first_hash) != hash.as_ref() {
            return Err(EnqueueError::KeyReused { key });
        }
        let status = Status::parse(&status).ok_or_else(|| StoreError::Corrupt {
            what: "outbox status",
            value: status.clone(),
        })?;
        metrics::counter!("mailbridge_relay_idempotent_replays_total").increment(1);
        return Ok(Enqueued {
            id,
            message_id,
            status,
            replayed: true,
        });
    }
    metrics::counter!("mailbridge_relay_enqueued_total", "category" => checked.category.as_str())
        .increment(1);
    if status == Status::Suppressed {
        metrics::counter!("mailbridge_relay_messages_total", "route" => "none", "outcome" => "suppressed")
            .increment(1);
    }
    Ok(Enqueued {
        id,
        message_id,
        status,
        replayed: false,
    })
}

/// Takes an idempotency key for a new message: `$1` key, `$2` request hash, `$3` outbox id, `$4`
/// now, `$5` the time before which a key has expired (and is taken over). Affects no row when the
/// key names a message of the last [`KEY_LIFETIME_HOURS`].
const CLAIM_KEY_SQL: &str =
    "INSERT INTO message_keys (idempotency_key, request_hash, outbox_id, created_at)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (idempotency_key) DO UPDATE SET request_hash = excluded.request_hash,
         outbox_id = excluded.outbox_id, created_at = excluded.created_at
     WHERE message_keys.created_at < $5";

/// The message a key names: `$1` key.
const READ_KEY_SQL: &str = "SELECT k.request_hash, o.id, o.message_id, o.status
     FROM message_keys k JOIN outbox o ON o.id = k.outbox_id WHERE k.idempotency_key = $1";

/// Deletes idempotency keys recorded before `before` (RFC 3339 text): they name nothing any
/// more. Returns how many.
pub async fn purge_keys(store: &Store, before: &str) -> Result<u64, StoreError> {
    const SQL: &str = "DELETE FROM message_keys WHERE created_at < $1";
    store
        .write("delete expired idempotency keys", SQL, vec![before.into()])
        .await
}

/// A new outbox row: `$1` id, `$2` message_id, `$3` recipient, `$4` category, `$5` status, `$6`
/// now, `$7` envelope_from, `$8` last_reply.
macro_rules! insert_row_sql {
    () => {
        "INSERT INTO outbox (id, message_id, recipient, category, status,
             attempts, next_attempt_at, envelope_from, last_reply, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $6, $6)"
    };
}
const INSERT_ROW_SQL: &str = insert_row_sql!();

/// A new row's bytes: `$1` id, `$2` raw.
const INSERT_BODY_SQL: &str = "INSERT INTO outbox_bodies (id, raw) VALUES ($1, $2)";

/// PostgreSQL: the row and its bytes (`$9`) in one statement, so one round trip and no
/// transaction to open and commit around two.
const INSERT_ROW_AND_BODY_PG_SQL: &str = concat!(
    "WITH new_row AS (",
    insert_row_sql!(),
    " RETURNING id) INSERT INTO outbox_bodies (id, raw) SELECT id, $9 FROM new_row"
);

/// A message claimed by one worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub message_id: String,
    pub recipient: String,
    pub category: String,
    pub raw: Vec<u8>,
    pub attempts: i64,
    pub envelope_from: String,
    pub created_at: String,
    /// The route whose answer to the last attempt was lost ([`Outcome::Ambiguous`]): this
    /// attempt goes to it first.
    pub retry_route: Option<String>,
    /// The row's SQLite rowid, when the native connection claimed it: its outcome is recorded
    /// by rowid rather than through the `id` index.
    pub rowid: Option<i64>,
}

/// Claims up to `limit` messages that are due (`next_attempt_at <= cutoff`) or whose previous
/// worker's lease ran out (`lease_until <= now`), leasing them to `worker` until `lease_until`.
pub async fn claim(
    store: &Store,
    worker: &str,
    cutoff: &str,
    now: &str,
    lease_until: &str,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    if let Some(writer) = store.writer() {
        let (worker, cutoff, now, lease_until) = (
            worker.to_owned(),
            cutoff.to_owned(),
            now.to_owned(),
            lease_until.to_owned(),
        );
        return writer
            .transaction("claim outbox messages", move |tx, err| {
                let mut due = tx.prepare_cached(DUE_ROWS_SQL).map_err(&err)?;
                bind_numbered(&mut due, &[&now, &cutoff, &limit]).map_err(&err)?;
                let mut rows = due.raw_query();
                let mut keys = Vec::new();
                while let Some(r) = rows.next().map_err(&err)? {
                    keys.push(r.get::<_, i64>(0).map_err(&err)?);
                }
                drop(rows);
                let mut read = tx.prepare_cached(READ_ROW_SQL).map_err(&err)?;
                let mut lease = tx.prepare_cached(LEASE_ROW_SQL).map_err(&err)?;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    let claimed = read
                        .query_row([key], |r| {
                            Ok(Claimed {
                                id: r.get(0)?,
                                message_id: r.get(1)?,
                                recipient: r.get(2)?,
                                category: r.get(3)?,
                                raw: r.get(4)?,
                                attempts: r.get(5)?,
                                envelope_from: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                                created_at: r.get(7)?,
                                retry_route: r.get(8)?,
                                rowid: Some(key),
                            })
                        })
                        .map_err(&err)?;
                    bind_numbered(&mut lease, &[&lease_until, &worker, &now, &key])
                        .map_err(&err)?;
                    lease.raw_execute().map_err(&err)?;
                    out.push(claimed);
                }
                Ok(out)
            })
            .await;
    }
    // PostgreSQL (a read-only SQLite state DB fails here on the UPDATE, as before).
    let mut tx = store.begin().await?;
    sqlx::query(CLAIM_PLAN_PG_SQL)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("claim outbox messages"))?;
    let rows = sqlx::query(CLAIM_PG_SQL)
        .bind(lease_until)
        .bind(worker)
        .bind(now)
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query("claim outbox messages"))?;
    let read = |e: sqlx::Error| StoreError::Read {
        what: "outbox row",
        message: e.to_string(),
    };
    let claimed = rows
        .iter()
        .map(|r| {
            let id: String = r.try_get("id").map_err(read)?;
            // The bytes are committed with each row at enqueue and never change: a row without
            // them is corrupt. Nothing is leased then (the transaction rolls back).
            let raw = r
                .try_get::<Option<Vec<u8>>, _>("raw")
                .map_err(read)?
                .ok_or_else(|| StoreError::Read {
                    what: "outbox message bytes",
                    message: format!("message {id} has no row in outbox_bodies"),
                })?;
            Ok(Claimed {
                message_id: r.try_get("message_id").map_err(read)?,
                recipient: r.try_get("recipient").map_err(read)?,
                category: r.try_get("category").map_err(read)?,
                raw,
                attempts: r.try_get("attempts").map_err(read)?,
                envelope_from: r
                    .try_get::<Option<String>, _>("envelope_from")
                    .map_err(read)?
                    .unwrap_or_default(),
                created_at: r.try_get("created_at").map_err(read)?,
                retry_route: r.try_get("retry_route").map_err(read)?,
                rowid: None,
                id,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    tx.commit()
        .await
        .map_err(StoreError::query("claim outbox messages"))?;
    Ok(claimed)
}

/// PostgreSQL: the claim's transaction plans it on the partial indexes alone, read in order and
/// stopping at the limit. The planner's estimate of the due rows comes from statistics taken
/// before the backlog arrived (none at all on a new table, or a handful when the last ANALYZE saw
/// an empty queue), so on its own it read every due row through a bitmap and sorted them all, for
/// every claim: 30 ms per claim of 256 out of 20,000 due (about 1 s of the server's CPU per
/// 20,000 messages, and the senders waited for the claims). Only for this transaction.
const CLAIM_PLAN_PG_SQL: &str = "SELECT set_config('enable_bitmapscan', 'off', true),
         set_config('enable_seqscan', 'off', true)";

/// PostgreSQL's claim. Parameters: `$1` lease_until, `$2` worker, `$3` now, `$4` cutoff, `$5`
/// limit. The columns it returns are [`Claimed`]'s; `raw` is NULL only for a row without bytes.
///
/// One index range per kind of due row (the partial indexes `outbox_queued`, `outbox_deferred`
/// and `outbox_leases`), each stopping at the limit; only those few rows are merged and sorted. A
/// single `OR` over the statuses made the database read and sort every due row for every claim:
/// quadratic in the backlog. PostgreSQL allows no locking clause over a UNION, hence the locking
/// CTEs; the rows they lock but the claim does not take are released when the claim commits,
/// and another worker's claim in that instant skips them. The ids chosen are handed to the UPDATE
/// as an array (`= ANY (ARRAY(…))`), so it finds each row through the primary key; as a join
/// (`IN (…)`) the planner could hash every row of the table. The bytes come back with each row,
/// read through `outbox_bodies`' key: no second round trip for them.
const CLAIM_PG_SQL: &str = "WITH queued AS (
         SELECT id, next_attempt_at FROM outbox
         WHERE status = 'queued' AND next_attempt_at <= $4
         ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED),
     deferred AS (
         SELECT id, next_attempt_at FROM outbox
         WHERE status = 'deferred' AND next_attempt_at <= $4
         ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED),
     expired AS (
         SELECT id, next_attempt_at FROM outbox
         WHERE status = 'sending' AND lease_until <= $3
         LIMIT $5 FOR UPDATE SKIP LOCKED)
     UPDATE outbox AS o SET status = 'sending', lease_until = $1, leased_by = $2, updated_at = $3
     WHERE o.id = ANY (ARRAY(
         SELECT id FROM (
             SELECT id, next_attempt_at FROM queued
             UNION ALL SELECT id, next_attempt_at FROM deferred
             UNION ALL SELECT id, next_attempt_at FROM expired) AS due
         ORDER BY next_attempt_at LIMIT $5))
     RETURNING o.id, o.message_id, o.recipient, o.category, o.attempts, o.envelope_from,
         o.created_at, o.retry_route,
         (SELECT b.raw FROM outbox_bodies AS b WHERE b.id = o.id) AS raw";

/// The SQLite claim's first step, inside its `BEGIN IMMEDIATE` (one writer at a time, so the
/// rows it reads are still due when they are leased): the rowids of the due messages, oldest
/// first, read from the per-state indexes alone. `$1` now, `$2` cutoff, `$3` limit. One
/// `UPDATE … WHERE id IN (…) RETURNING` did the same work at about twice the cost: SQLite
/// buffers RETURNING rows and the `IN` list in temporary b-trees.
const DUE_ROWS_SQL: &str = "WITH queued AS (
         SELECT rowid AS r, next_attempt_at AS t FROM outbox
         WHERE status = 'queued' AND next_attempt_at <= $2
         ORDER BY next_attempt_at LIMIT $3),
     deferred AS (
         SELECT rowid AS r, next_attempt_at AS t FROM outbox
         WHERE status = 'deferred' AND next_attempt_at <= $2
         ORDER BY next_attempt_at LIMIT $3),
     expired AS (
         SELECT rowid AS r, next_attempt_at AS t FROM outbox
         WHERE status = 'sending' AND lease_until <= $1
         LIMIT $3)
     SELECT r FROM (
         SELECT r, t FROM queued UNION ALL SELECT r, t FROM deferred
         UNION ALL SELECT r, t FROM expired)
     ORDER BY t LIMIT $3";

/// One due message's columns ([`Claimed`]'s, in order), by rowid.
const READ_ROW_SQL: &str = "SELECT o.id, o.message_id, o.recipient, o.category, b.raw,
         o.attempts, o.envelope_from, o.created_at, o.retry_route
     FROM outbox o JOIN outbox_bodies b ON b.id = o.id WHERE o.rowid = ?1";

/// Leases one message: `$1` lease_until, `$2` worker, `$3` now, `$4` rowid.
const LEASE_ROW_SQL: &str = "UPDATE outbox SET status = 'sending', lease_until = $1,
         leased_by = $2, updated_at = $3 WHERE rowid = $4";

/// Extends `worker`'s lease on `claimed` to `until`, if `worker` still holds it (whether or not
/// the lease has run out: nobody else claimed it). Returns whether it did.
pub async fn renew_lease(
    store: &Store,
    worker: &str,
    claimed: &Claimed,
    until: &str,
) -> Result<bool, StoreError> {
    // A row the native connection claimed is found by its rowid; any other by its id.
    let (sql, key) = match (store.writer(), claimed.rowid) {
        (Some(_), Some(rowid)) => (RENEW_BY_ROWID_SQL, rowid.into()),
        _ => (RENEW_SQL, claimed.id.as_str().into()),
    };
    let params = vec![until.into(), key, worker.into()];
    Ok(store.write("renew a message's lease", sql, params).await? == 1)
}

/// Hands `claimed` back (graceful shutdown, before its send began): its lease ends `now`, so
/// any worker's next claim takes it at once, and its history says so. Returns whether this worker
/// still held it.
pub async fn hand_back(
    store: &Store,
    worker: &str,
    claimed: &Claimed,
    now: &str,
) -> Result<bool, StoreError> {
    let (note, renew, key): (_, _, crate::store::Param) = match (store.writer(), claimed.rowid) {
        (Some(_), Some(rowid)) => (
            HAND_BACK_NOTE_BY_ROWID_SQL,
            RENEW_BY_ROWID_SQL,
            rowid.into(),
        ),
        _ => (HAND_BACK_NOTE_SQL, RENEW_SQL, claimed.id.as_str().into()),
    };
    // The entry first, read from the row while this worker holds it; both statements ask the
    // same of the row, so both change it or neither does.
    let changed = store
        .write_all(
            "hand a message back",
            vec![
                (
                    note.into(),
                    vec![
                        now.into(),
                        turn::HANDED_BACK.into(),
                        "handed back at shutdown before its send began".into(),
                        key.clone(),
                        worker.into(),
                    ],
                ),
                (renew.into(), vec![now.into(), key, worker.into()]),
            ],
        )
        .await?;
    Ok(changed.last() == Some(&1))
}

/// A handed-back message's history entry: `$1` at, `$2` outcome, `$3` reply, `$4` the row's key,
/// `$5` the worker that must hold it.
macro_rules! hand_back_note_sql {
    ($key:literal) => {
        concat!(
            "INSERT INTO outbox_attempts (outbox_id, attempt, at, outcome, route, reply)
             SELECT id, attempts, $1, $2, NULL, $3 FROM outbox WHERE ",
            $key,
            " = $4 AND leased_by = $5 AND status = 'sending'"
        )
    };
}
const HAND_BACK_NOTE_SQL: &str = hand_back_note_sql!("id");
const HAND_BACK_NOTE_BY_ROWID_SQL: &str = hand_back_note_sql!("rowid");

/// Renews a lease: `$1` lease_until, `$2` the row's key, `$3` the worker.
macro_rules! renew_sql {
    ($key:literal) => {
        concat!(
            "UPDATE outbox SET lease_until = $1 WHERE ",
            $key,
            " = $2 AND leased_by = $3 AND status = 'sending'"
        )
    };
}
const RENEW_SQL: &str = renew_sql!("id");
const RENEW_BY_ROWID_SQL: &str = renew_sql!("rowid");

/// How one claimed message's turn ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent {
        route: String,
        reply: String,
    },
    /// Retry later (`deferred`).
    Deferred {
        route: Option<String>,
        reply: String,
        next_attempt_at: String,
        attempted: bool,
    },
    /// Back to `queued` without counting as a failure of the message: every route is
    /// misconfigured or over quota. `reply` says why.
    Waiting {
        route: Option<String>,
        reply: String,
        next_attempt_at: String,
        attempted: bool,
    },
    /// The route was handed the message and its answer was lost: it may have been delivered.
    /// Back to `deferred`, retried on `route` first at `next_attempt_at`.
    Ambiguous {
        route: String,
        reply: String,
        next_attempt_at: String,
    },
    Bounced {
        route: String,
        reply: String,
        suppress: bool,
    },
    /// Held back, not sent: `reply` says why (the suppression list, or a one-click opt-out of
    /// the message's category).
    Suppressed {
        reply: &'static str,
    },
    /// Given up (max age). `attempted`: this turn talked to a route (the attempt counts).
    Failed {
        route: Option<String>,
        reply: String,
        attempted: bool,
    },
}

/// Records the outcome of `claimed`'s attempt, if `worker` still holds its lease. Returns false
/// when the lease was lost (another worker took the message over; it may be sent twice, which
/// at-least-once allows).
pub async fn finish(
    store: &Store,
    worker: &str,
    claimed: &Claimed,
    outcome: &Outcome,
) -> Result<bool, StoreError> {
    let kept = finish_many(store, worker, &[(claimed, outcome)]).await?;
    Ok(kept.first().copied().unwrap_or(false))
}

/// [`finish`] for several messages in one transaction (one commit, one fsync: the worker records
/// whatever outcomes are ready together). Returns, per message, whether the lease was still held.
pub async fn finish_many(
    store: &Store,
    worker: &str,
    outcomes: &[(&Claimed, &Outcome)],
) -> Result<Vec<bool>, StoreError> {
    let now = store.now_text();
    if let Some(writer) = store.writer() {
        let items: Vec<(String, Option<i64>, String, Outcome)> = outcomes
            .iter()
            .map(|(c, o)| (c.id.clone(), c.rowid, c.recipient.clone(), (*o).clone()))
            .collect();
        let worker = worker.to_owned();
        return writer
            .transaction("record delivery attempts", move |tx, err| {
                let mut kept = Vec::with_capacity(items.len());
                let mut by_rowid = tx.prepare_cached(RECORD_BY_ROWID_SQL).map_err(&err)?;
                let mut by_id = tx.prepare_cached(RECORD_SQL).map_err(&err)?;
                for (id, rowid, recipient, outcome) in &items {
                    let u = Update::of(outcome, &now);
                    let (update, key): (_, &dyn rusqlite::ToSql) = match rowid {
                        Some(rowid) => (&mut by_rowid, rowid),
                        None => (&mut by_id, id),
                    };
                    bind_numbered(
                        update,
                        &[
                            &u.status.as_str(),
                            &i64::from(u.attempted),
                            &u.next,
                            &u.reply,
                            &u.route,
                            &u.sent_at,
                            &now,
                            key,
                            &worker,
                            &u.retry_route,
                        ],
                    )
                    .map_err(&err)?;
                    let recorded = update.raw_execute().map_err(&err)? == 1;
                    kept.push(recorded);
                    if let (true, Some(turn)) = (recorded, history::turn_of(outcome)) {
                        let (sql, key): (_, &dyn rusqlite::ToSql) = match rowid {
                            Some(rowid) => (history::NOTE_BY_ROWID_SQL, rowid),
                            None => (history::NOTE_SQL, id),
                        };
                        let mut note = tx.prepare_cached(sql).map_err(&err)?;
                        bind_numbered(&mut note, &[&now, &turn, &u.route, &u.reply, key])
                            .map_err(&err)?;
                        note.raw_execute().map_err(&err)?;
                    }
                    if let Some((source, detail)) = suppression(outcome) {
                        let mut add = tx.prepare_cached(ADD_SUPPRESSION_SQL).map_err(&err)?;
                        bind_numbered(&mut add, &[recipient, &HARD_BOUNCE, &source, &detail, &now])
                            .map_err(&err)?;
                        add.raw_execute().map_err(&err)?;
                    }
                }
                Ok(kept)
            })
            .await;
    }
    // Only PostgreSQL gets here (a SQLite state DB records through its writer above).
    let mut kept = vec![false; outcomes.len()];
    // The common case, sent messages, in one statement for the whole batch: a smarthost's reply
    // carries its queue id, so every sent message has a reply of its own, and a statement per
    // reply was a round trip per message.
    let mut sent: Vec<SentRow<'_>> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut others = Vec::new();
    for (i, (claimed, outcome)) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Sent { route, reply } => {
                sent.push(SentRow {
                    id: &claimed.id,
                    route,
                    // A reply is the server's to write; PostgreSQL's text cannot hold NUL.
                    reply: nul_free(reply),
                });
                at.insert(&claimed.id, i);
            }
            _ => others.push((i, *claimed, *outcome)),
        }
    }
    let rows = serde_json::to_string(&sent).map_err(|e| StoreError::Read {
        what: "sent messages to record",
        message: e.to_string(),
    })?;
    let record_sent = sqlx::query_scalar::<_, String>(RECORD_SENT_PG_SQL)
        .bind(&now)
        .bind(rows)
        .bind(worker);
    let done: Vec<String> = if others.is_empty() {
        if sent.is_empty() {
            return Ok(kept);
        }
        // Only sent messages (a batch's usual content): their one statement commits on its own,
        // without the round trips of BEGIN and COMMIT around it.
        record_sent
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("record sent messages"))?
    } else {
        let mut tx = store.begin().await?;
        for (i, claimed, outcome) in others {
            kept[i] = record(&mut tx, worker, claimed, outcome, &now).await?;
        }
        let done = if sent.is_empty() {
            Vec::new()
        } else {
            record_sent
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::query("record sent messages"))?
        };
        tx.commit()
            .await
            .map_err(StoreError::query("commit delivery attempts"))?;
        done
    };
    for id in done {
        if let Some(i) = at.get(id.as_str()) {
            kept[*i] = true;
        }
    }
    Ok(kept)
}

/// One sent message in [`RECORD_SENT_PG_SQL`]'s JSON rows.
#[derive(Serialize)]
struct SentRow<'a> {
    id: &'a str,
    route: &'a str,
    reply: String,
}

/// PostgreSQL: records a batch of sent messages, each with its own route and reply, where this
/// worker still holds the lease. `$1` now, `$2` the messages as a JSON array of
/// `{"id", "route", "reply"}`, `$3` the worker. Returns the ids it recorded.
///
/// The rows are found through the primary key (`id = ANY (…)`). The lease check is `leased_by`
/// alone: a claim sets it together with `status = 'sending'` and every outcome clears it, so a
/// row with this worker's name is a row in `sending`. Spelled out, `status = 'sending'` let the
/// planner read the `outbox_leases` partial index instead, which (with the few rows it expects
/// there, on a table not yet analysed) meant reading every leased row and hashing them for each
/// batch: about 1,200 msg/s in the bench instead of 9,000.
const RECORD_SENT_PG_SQL: &str = "UPDATE outbox AS o SET status = 'sent',
         attempts = o.attempts + 1, last_reply = v.reply, route = v.route, sent_at = $1,
         retry_route = NULL, lease_until = NULL, leased_by = NULL, updated_at = $1
     FROM jsonb_to_recordset($2::jsonb) AS v (id TEXT, route TEXT, reply TEXT)
     WHERE o.id = v.id AND o.leased_by = $3
       AND o.id = ANY (ARRAY(SELECT jsonb_array_elements($2::jsonb) ->> 'id'))
     RETURNING o.id";

/// Records one outcome if the worker still holds the lease; parameters `$1`…`$10` as bound in
/// [`record`], the row found by `$key = $8`.
macro_rules! record_sql {
    ($key:literal) => {
        concat!(
            "UPDATE outbox SET status = $1, attempts = attempts + $2,
                 next_attempt_at = COALESCE($3, next_attempt_at),
                 last_reply = COALESCE($4, last_reply),
                 route = COALESCE($5, route), sent_at = COALESCE($6, sent_at),
                 retry_route = $10, lease_until = NULL, leased_by = NULL, updated_at = $7
             WHERE ",
            $key,
            " = $8 AND leased_by = $9 AND status = 'sending'"
        )
    };
}
const RECORD_SQL: &str = record_sql!("id");
/// The same on SQLite for a row claimed by the native connection, which knows its rowid.
const RECORD_BY_ROWID_SQL: &str = record_sql!("rowid");

/// What recording an outcome writes into its row.
struct Update<'a> {
    status: Status,
    /// Whether the turn counts as an attempt.
    attempted: bool,
    next: Option<&'a str>,
    reply: Option<&'a str>,
    route: Option<&'a str>,
    sent_at: Option<&'a str>,
    /// The route the next attempt goes to first (an ambiguous outcome), else none.
    retry_route: Option<&'a str>,
}

impl<'a> Update<'a> {
    fn of(outcome: &'a Outcome, now: &'a str) -> Update<'a> {
        let (status, attempted, next, reply, route, sent_at) = match outcome {
            Outcome::Sent { route, reply } => (
                Status::Sent,
                true,
                None,
                Some(reply.as_str()),
                Some(route.as_str()),
                Some(now),
            ),
            // The same row but for its status: a wait goes back to `queued`.
            Outcome::Deferred {
                route,
                reply,
                next_attempt_at,
                attempted,
            }
            | Outcome::Waiting {
                route,
                reply,
                next_attempt_at,
                attempted,
            } => (
                if matches!(outcome, Outcome::Waiting { .. }) {
                    Status::Queued
                } else {
                    Status::Deferred
                },
                *attempted,
                Some(next_attempt_at.as_str()),
                Some(reply.as_str()),
                route.as_deref(),
                None,
            ),
            Outcome::Ambiguous {
                route,
                reply,
                next_attempt_at,
            } => (
                Status::Deferred,
                true,
                Some(next_attempt_at.as_str()),
                Some(reply.as_str()),
                Some(route.as_str()),
                None,
            ),
            Outcome::Bounced { route, reply, .. } => (
                Status::Bounced,
                true,
                None,
                Some(reply.as_str()),
                Some(route.as_str()),
                None,
            ),
            Outcome::Suppressed { reply } => {
                (Status::Suppressed, false, None, Some(*reply), None, None)
            }
            Outcome::Failed {
                route,
                reply,
                attempted,
            } => (
                Status::Failed,
                *attempted,
                None,
                Some(reply.as_str()),
                route.as_deref(),
                None,
            ),
        };
        let retry_route = match outcome {
            Outcome::Ambiguous { route, .. } => Some(route.as_str()),
            _ => None,
        };
        Update {
            status,
            attempted,
            next,
            reply,
            route,
            sent_at,
            retry_route,
        }
    }
}

/// The suppression a hard bounce adds: (source, detail).
fn suppression(outcome: &Outcome) -> Option<(String, &str)> {
    match outcome {
        Outcome::Bounced {
            route,
            reply,
            suppress: true,
        } => Some((format!("relay:{route}"), reply.as_str())),
        _ => None,
    }
}

async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    worker: &str,
    claimed: &Claimed,
    outcome: &Outcome,
    now: &str,
) -> Result<bool, StoreError> {
    let u = Update::of(outcome, now);
    let done = sqlx::query(RECORD_SQL)
        .bind(u.status.as_str())
        .bind(i64::from(u.attempted))
        .bind(u.next)
        // A reply is the server's to write; PostgreSQL's text cannot hold NUL.
        .bind(u.reply.map(nul_free))
        .bind(u.route)
        .bind(u.sent_at)
        .bind(now)
        .bind(&claimed.id)
        .bind(worker)
        .bind(u.retry_route)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("record a delivery attempt"))?
        .rows_affected()
        == 1;
    if let (true, Some(turn)) = (done, history::turn_of(outcome)) {
        history::note(tx, &claimed.id, turn, u.route, u.reply, now).await?;
    }
    if let Some((source, detail)) = suppression(outcome) {
        Store::add_suppression(
            tx,
            &claimed.recipient,
            HARD_BOUNCE,
            &source,
            Some(detail),
            now,
        )
        .await?;
    }
    Ok(done)
}

/// `GET /v1/messages/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageStatus {
    pub id: String,
    pub message_id: String,
    pub to: String,
    pub category: String,
    pub status: Status,
    pub attempts: i64,
    pub last_reply: Option<String>,
    pub route: Option<String>,
    pub next_attempt_at: Option<String>,
    pub sent_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An `outbox` row as `GET /v1/messages/{id}` reads it (the status not yet checked).
#[derive(sqlx::FromRow)]
struct StatusRow {
    id: String,
    message_id: String,
    recipient: String,
    category: String,
    status: String,
    attempts: i64,
    last_reply: Option<String>,
    route: Option<String>,
    next_attempt_at: String,
    sent_at: Option<String>,
    created_at: String,
    updated_at: String,
}

/// The columns of a [`StatusRow`], in its order.
const STATUS_COLUMNS: &str = "id, message_id, recipient, category, status, attempts, last_reply, route, next_attempt_at, sent_at, created_at, updated_at";

/// One message's status, or `None` for an unknown id.
pub async fn get(store: &Store, id: &str) -> Result<Option<MessageStatus>, StoreError> {
    let row: Option<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATUS_COLUMNS} FROM outbox WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a message's status"))?;
    row.map(MessageStatus::try_from).transpose()
}

impl TryFrom<StatusRow> for MessageStatus {
    type Error = StoreError;

    fn try_from(row: StatusRow) -> Result<MessageStatus, StoreError> {
        let status = Status::parse(&row.status).ok_or_else(|| StoreError::Corrupt {
            what: "outbox status",
            value: row.status.clone(),
        })?;
        Ok(MessageStatus {
            next_attempt_at: matches!(status, Status::Queued | Status::Deferred)
                .then_some(row.next_attempt_at),
            id: row.id,
            message_id: row.message_id,
            to: row.recipient,
            category: row.category,
            status,
            attempts: row.attempts,
            last_reply: row.last_reply,
            route: row.route,
            sent_at: row.sent_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Messages accepted since `since` (RFC 3339 text), through `route` or through any route.
pub async fn sent_since(
    store: &Store,
    route: Option<&str>,
    since: &str,
) -> Result<u64, StoreError> {
    let (n,): (i64,) = match route {
        Some(r) => sqlx::query_as(SENT_ON_ROUTE_SQL).bind(r).bind(since),
        None => ROUTE_NAMES
            .iter()
            .fold(sqlx::query_as(SENT_ANY_ROUTE_SQL), |q, name| q.bind(*name))
            .bind(since),
    }
    .fetch_one(store.pool())
    .await
    .map_err(StoreError::query("count sent messages"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A route's deferred messages (waiting for a retry): how many, and the newest one's reply and
/// time. A route that keeps deferring is down or refusing (the admin overview's health line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferrals {
    pub route: String,
    pub count: u64,
    pub last_reply: Option<String>,
    pub last_at: Option<String>,
}

/// [`Deferrals`] per route, over the deferred messages only (a partial index).
pub async fn deferrals(store: &Store) -> Result<Vec<Deferrals>, StoreError> {
    let rows: Vec<(Option<String>, i64, Option<String>)> = sqlx::query_as(
        "SELECT route, COUNT(*), MAX(updated_at) FROM outbox WHERE status = 'deferred'
         AND next_attempt_at IS NOT NULL GROUP BY route",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("count deferred messages"))?;
    let mut out = Vec::with_capacity(rows.len());
    for (route, count, last_at) in rows {
        let reply: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT last_reply FROM outbox WHERE status = 'deferred' AND next_attempt_at IS NOT NULL
             AND route IS NOT DISTINCT FROM $1 ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(&route)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::query("read a deferred message's reply"))?;
        out.push(Deferrals {
            route: route.unwrap_or_else(|| "(none yet)".to_owned()),
            count: u64::try_from(count).unwrap_or(0),
            last_reply: reply.and_then(|(r,)| r),
            last_at,
        });
    }
    Ok(out)
}

/// Counts on the `outbox_sent` (route, sent_at) index: `$1` route, `$2` since.
const SENT_ON_ROUTE_SQL: &str = "SELECT COUNT(*) FROM outbox WHERE route = $1 AND sent_at >= $2";

/// The same over every route ([`ROUTE_NAMES`], `$1`…`$3`), `$4` since: one index range per
/// route, where `sent_at >= $1` alone read the whole table.
const SENT_ANY_ROUTE_SQL: &str =
    "SELECT COUNT(*) FROM outbox WHERE route IN ($1, $2, $3) AND sent_at >= $4";

/// What is left in the outbox: messages waiting for a retry, and messages leased by a live
/// worker (lease not yet expired at `now`) with the latest such lease's end.
pub async fn pending(store: &Store, now: &str) -> Result<Pending, StoreError> {
    let (waiting,): (i64,) = sqlx::query_as(PENDING_WAITING_SQL)
        .fetch_one(store.pool())
        .await
        .map_err(StoreError::query("count waiting messages"))?;
    let (leased, lease_end, expired): (i64, Option<String>, i64) =
        sqlx::query_as(PENDING_LEASED_SQL)
            .bind(now)
            .fetch_one(store.pool())
            .await
            .map_err(StoreError::query("count leased messages"))?;
    let (next_due,): (Option<String>,) = sqlx::query_as(PENDING_NEXT_SQL)
        .fetch_one(store.pool())
        .await
        .map_err(StoreError::query("read the next due message"))?;
    Ok(Pending {
        waiting: u64::try_from(waiting).unwrap_or(0),
        leased: u64::try_from(leased).unwrap_or(0),
        lease_end,
        expired: u64::try_from(expired).unwrap_or(0),
        next_due,
    })
}

// [`pending`]'s queries read one index range per state (the partial indexes `outbox_queued`,
// `outbox_deferred` and `outbox_leases`): an `IN` over the states would read the whole table,
// every message ever sent included.
const PENDING_WAITING_SQL: &str = "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'queued')
     + (SELECT COUNT(*) FROM outbox WHERE status = 'deferred')";
const PENDING_LEASED_SQL: &str = "SELECT
         COALESCE(SUM(CASE WHEN lease_until > $1 THEN 1 ELSE 0 END), 0),
         MAX(lease_until),
         COALESCE(SUM(CASE WHEN lease_until > $1 THEN 0 ELSE 1 END), 0)
     FROM outbox WHERE status = 'sending'";
const PENDING_NEXT_SQL: &str = "SELECT MIN(next_at) FROM (
         SELECT MIN(next_attempt_at) AS next_at FROM outbox WHERE status = 'queued'
         UNION ALL SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'deferred') AS due";

/// How many message bodies one SQLite purge transaction looks at: claims and outcomes, which
/// share the writer thread, wait for at most one such batch.
const PURGE_BATCH: i64 = 1000;

/// Deletes the bytes of messages that are done (sent, bounced, suppressed, failed) and whose
/// outcome is older than `before` (RFC 3339 text); their `outbox` rows (status, reply, route,
/// times) stay for `GET /v1/messages/{id}`, the quota counts and bounce matching. Returns how
/// many bodies it deleted.
///
/// A message's bytes hold what it said: a password reset link, a confirmation token, a member's
/// name. Kept forever they are a liability, and the table only grows.
pub async fn purge_bodies(store: &Store, before: &str) -> Result<u64, StoreError> {
    let Some(writer) = store.writer() else {
        // PostgreSQL: one statement. It locks only the rows it deletes, which no claim wants.
        let done: Vec<String> = Status::DONE
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let sql = format!(
            "DELETE FROM outbox_bodies b USING outbox o
             WHERE o.id = b.id AND o.status IN ({}) AND o.updated_at < $1",
            done.join(", ")
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .execute(store.pool())
            .await
            .map_err(StoreError::query(
                "delete the bytes of messages that are done",
            ))?;
        return Ok(done.rows_affected());
    };
    // SQLite: short transactions through the writer, so claims and outcomes go on between them.
    // Bodies are read in insertion order (each row's message found by key), and the scan stops at
    // the first message created after `before`: its outcome is later still, and so is every
    // message after it (give or take clock steps). A purge reads the purgeable rows and the few
    // still pending, not the whole retention window.
    let mut purged = 0u64;
    let mut after = 0i64;
    loop {
        let before = before.to_owned();
        let (deleted, last, done) = writer
            .transaction(
                "delete the bytes of messages that are done",
                move |tx, err| {
                    let mut scan = tx.prepare_cached(PURGE_SCAN_SQL).map_err(&err)?;
                    let mut rows = scan.query([after, PURGE_BATCH]).map_err(&err)?;
                    let mut doomed = Vec::new();
                    let (mut last, mut seen, mut reached_recent) = (after, 0i64, false);
                    while let Some(r) = rows.next().map_err(&err)? {
                        let rowid: i64 = r.get(0).map_err(&err)?;
                        let status: String = r.get(1).map_err(&err)?;
                        let updated_at: String = r.get(2).map_err(&err)?;
                        let created_at: String = r.get(3).map_err(&err)?;
                        if created_at.as_str() >= before.as_str() {
                            reached_recent = true;
                            break;
                        }
                        (last, seen) = (rowid, seen + 1);
                        let is_done = Status::parse(&status).is_some_and(Status::is_done);
                        if is_done && updated_at.as_str() < before.as_str() {
                            doomed.push(rowid);
                        }
                    }
                    drop(rows);
                    let mut delete = tx
                        .prepare_cached("DELETE FROM outbox_bodies WHERE rowid = ?1")
                        .map_err(&err)?;
                    for rowid in &doomed {
                        delete.execute([rowid]).map_err(&err)?;
                    }
                    Ok((
                        doomed.len() as u64,
                        last,
                        reached_recent || seen < PURGE_BATCH,
                    ))
                },
            )
            .await?;
        purged += deleted;
        after = last;
        if done {
            return Ok(purged);
        }
    }
}

/// [`purge_bodies`]' scan on SQLite: `$1` the last body's rowid seen, `$2` how many. `CROSS
/// JOIN` keeps `outbox_bodies` the outer table (insertion order); `outbox` is looked up by key.
const PURGE_SCAN_SQL: &str = "SELECT b.rowid, o.status, o.updated_at, o.created_at
     FROM outbox_bodies b CROSS JOIN outbox o
     WHERE o.id = b.id AND b.rowid > ?1 ORDER BY b.rowid LIMIT ?2";

/// See [`pending`].
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub waiting: u64,
    pub leased: u64,
    pub lease_end: Option<String>,
    /// Messages whose worker's lease ran out: the next claim takes them over.
    pub expired: u64,
    pub next_due: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbUrl;
    use crate::store::OpenMode;

    fn new_message(subject: &str, text: &str) -> NewMessage {
        NewMessage {
            to: "ana@example.org".into(),
            subject: subject.into(),
            text: text.into(),
            html: None,
            reply_to: None,
            headers: Default::default(),
            category: "password".into(),
        }
    }

    /// Two requests hash alike only when every field is alike: moving bytes from one field to
    /// the next, or a missing part versus an empty one, is a different request.
    #[test]
    fn request_hashes_tell_fields_apart() {
        let base = new_message("ab", "c");
        assert_eq!(request_hash(&base), request_hash(&base.clone()));
        assert_ne!(request_hash(&base), request_hash(&new_message("a", "bc")));
        let mut empty_html = base.clone();
        empty_html.html = Some(String::new());
        assert_ne!(request_hash(&base), request_hash(&empty_html));
        let mut header = base.clone();
        header.headers.insert("X-Ref".into(), "1".into());
        assert_ne!(request_hash(&base), request_hash(&header));
        let mut category = base.clone();
        category.category = "registration".into();
        assert_ne!(request_hash(&base), request_hash(&category));
    }

    #[test]
    fn idempotency_keys_are_short_printable_ascii() {
        assert!(IdempotencyKey::parse("order-42/retry 1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", " lead", "trail ", "tab\there", "schlüssel"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    /// The claim, the idle checks and the quota counts must read only the rows they ask for: a
    /// plan that scans `outbox` reads every message ever sent, on every claim (the table only
    /// grows).
    #[tokio::test]
    async fn claim_and_pending_read_index_ranges_not_the_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
        store.migrate().await.expect("migrate");
        let queries = [
            DUE_ROWS_SQL.to_owned(),
            PENDING_WAITING_SQL.to_owned(),
            PENDING_LEASED_SQL.to_owned(),
            PENDING_NEXT_SQL.to_owned(),
            SENT_ON_ROUTE_SQL.to_owned(),
            SENT_ANY_ROUTE_SQL.to_owned(),
        ];
        for sql in queries {
            let params = (1..=5).filter(|i| sql.contains(&format!("${i}"))).count();
            let mut explain = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(
                format!("EXPLAIN QUERY PLAN {sql}"),
            ));
            for _ in 0..params {
                explain = explain.bind("2026-01-01T00:00:00.000Z");
            }
            let plan = explain.fetch_all(store.pool()).await.expect("explain");
            let scans: Vec<&str> = plan
                .iter()
                .map(|(_, _, _, detail)| detail.as_str())
                // A scan of a per-state index reads only the rows in that state; a scan of any
                // other (`outbox_sent` holds every message ever sent) grows with the table.
                .filter(|d| {
                    d.starts_with("SCAN outbox")
                        && !["outbox_queued", "outbox_deferred", "outbox_leases"]
                            .iter()
                            .any(|i| d.contains(&format!("INDEX {i}")))
                })
                .collect();
            assert!(scans.is_empty(), "{sql}\nscans the table: {plan:#?}");
            assert!(
                plan.iter().any(|(_, _, _, d)| d.contains("INDEX outbox_")),
                "{sql}\nuses none of the outbox indexes: {plan:#?}"
            );
        }
        // A claimed row and its bytes: one lookup by key in each table, nothing scanned.
        let plan = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {READ_ROW_SQL}"
        )))
        .fetch_all(store.pool())
        .await
        .expect("explain");
        assert_eq!(plan.len(), 2, "{plan:#?}");
        assert!(
            plan.iter().all(|(_, _, _, d)| d.starts_with("SEARCH")),
            "{READ_ROW_SQL}\nscans: {plan:#?}"
        );
        // The purge walks `outbox_bodies` from a rowid on and finds each message by key: it never
        // reads the whole `outbox` (every message ever sent) to find the few bodies left.
        let plan = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {PURGE_SCAN_SQL}"
        )))
        .bind(0i64)
        .bind(10i64)
        .fetch_all(store.pool())
        .await
        .expect("explain");
        let details: Vec<&str> = plan.iter().map(|(_, _, _, d)| d.as_str()).collect();
        assert_eq!(details.len(), 2, "{details:#?}");
        assert!(
            details[0].starts_with("SEARCH b USING INTEGER PRIMARY KEY (rowid>?)"),
            "{details:#?}"
        );
        assert!(
            details[1].starts_with("SEARCH o USING INDEX"),
            "{details:#?}"
        );
    }

    /// The admin pages' listings (every status, with and without a recipient search and a
    /// cursor) and the counts read index ranges that stop after a page, on a state DB that has
    /// never been analysed (as none is): no scan of the table and no sort, but for the messages
    /// being sent (`outbox_leases`, as many as the workers hold), which are read whole and sorted.
    #[tokio::test]
    async fn listings_read_one_index_range_each() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
        store.migrate().await.expect("migrate");
        let explain = async |sql: &str, params: usize| {
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {sql}"
            )));
            for _ in 0..params {
                q = q.bind("2026-01-01T00:00:00.000Z");
            }
            let plan = q.fetch_all(store.pool()).await.expect("explain");
            plan.into_iter().map(|(_, _, _, d)| d).collect::<Vec<_>>()
        };
        let statements = listing::tests::listing_sql();
        assert_eq!(
            statements.len(),
            8 * 4 + 2,
            "each status and none, with and without a search and a cursor (a search over all or sent messages from a cursor takes two statements)"
        );
        for (name, sql, params) in statements {
            let plan = explain(&sql, params).await;
            let leased = sql.contains("INDEXED BY outbox_leases");
            let merged = sql.contains("UNION ALL");
            for d in &plan {
                let ranged = d.starts_with("SEARCH outbox USING ")
                    || d.starts_with("SCAN outbox USING INDEX outbox_list_")
                    || d.starts_with("SCAN outbox USING COVERING INDEX outbox_list_");
                let bounded_sort = leased
                    && (d == "SCAN outbox USING INDEX outbox_leases"
                        || d == "USE TEMP B-TREE FOR ORDER BY");
                // The sent messages: a range of `outbox_sent` per route, each cut at the page's
                // end and sorted (a page of rows, the ties of one sent_at by id: the messages of
                // one recorded batch), then merged.
                let merge = merged
                    && (d.starts_with("SEARCH outbox USING INDEX outbox_sent (route=?")
                        || [
                            "MERGE (UNION ALL)",
                            "LEFT",
                            "RIGHT",
                            "USE TEMP B-TREE FOR ORDER BY",
                            "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY",
                            "USE TEMP B-TREE FOR LAST TERM OF ORDER BY",
                        ]
                        .contains(&d.as_str())
                        || d.starts_with("CO-ROUTINE r")
                        || d.starts_with("SCAN r"));
                assert!(
                    ranged || bounded_sort || merge,
                    "{name}: `{d}` in\n{sql}\n{plan:#?}"
                );
            }
            assert!(
                plan.iter().any(|d| d.contains("INDEX outbox_")),
                "{name}: {plan:#?}"
            );
        }
        let plan = explain(listing::COUNTS_SQL, 0).await;
        for d in &plan {
            assert!(
                !d.starts_with("SCAN outbox") || d.contains("USING COVERING INDEX outbox_"),
                "the counts read the table: {plan:#?}"
            );
        }
        assert!(
            plan.iter().any(|d| d.ends_with("INDEX outbox_leases")),
            "sending is not counted from its partial index: {plan:#?}"
        );
        for state in ["queued", "deferred", "bounced", "suppressed", "failed"] {
            assert!(
                plan.iter()
                    .any(|d| d.ends_with(&format!("INDEX outbox_list_{state}"))
                        || d.ends_with(&format!("INDEX outbox_{state}"))),
                "{state} is not counted from its partial index: {plan:#?}"
            );
        }
        // A message's history is one lookup by message.
        let plan = explain(
            "SELECT attempt, at, outcome, route, reply FROM outbox_attempts WHERE outbox_id = $1 ORDER BY id LIMIT 500",
            1,
        )
        .await;
        assert!(
            plan.iter()
                .all(|d| d.starts_with("SEARCH outbox_attempts USING")),
            "{plan:#?}"
        );
    }

    /// PostgreSQL's claim on a backlog the statistics have not seen (a new table here; in
    /// production, a campaign queued after the last ANALYZE): it reads the due rows in index
    /// order and stops at the limit. Planned freely, it read every due row through a bitmap and
    /// sorted them all, for every claim. Skipped without a server at `MAILBRIDGE_TEST_PG`
    /// (default the CI server), unless `CI` is set.
    #[tokio::test]
    async fn postgres_claim_reads_index_ranges_on_a_backlog_not_yet_analysed() {
        use sqlx::Connection;
        let admin = std::env::var("MAILBRIDGE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut conn = match sqlx::postgres::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: no PostgreSQL at {admin}: {e}");
                return;
            }
            Err(e) => panic!("no PostgreSQL at {admin} and CI is set: {e}"),
        };
        let name = format!("mbunit_claim_{:08x}", rand::random::<u32>());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, _) = admin.rsplit_once('/').expect("a URL ending in /<database>");
        let url = DbUrl::parse(&format!("{base}/{name}"), std::path::Path::new(".")).expect("url");
        let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
        store.migrate().await.expect("migrate");
        sqlx::query(
            "INSERT INTO outbox (id, message_id, recipient, category, status, attempts,
                 next_attempt_at, created_at, updated_at)
             SELECT 'm' || i, '<m' || i || '@x>', 'a' || i || '@example.org', 'registration',
                 'queued', 0, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z',
                 '2026-01-01T00:00:00.000Z'
             FROM generate_series(1, 5000) AS i",
        )
        .execute(store.pool())
        .await
        .expect("queue messages");
        let mut tx = store.begin().await.expect("begin");
        sqlx::query(CLAIM_PLAN_PG_SQL)
            .execute(&mut *tx)
            .await
            .expect("plan settings");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN {}",
            CLAIM_PG_SQL
                .replace("$1", "'2026-01-02T00:00:00.000Z'")
                .replace("$2", "'w'")
                .replace("$3", "'2026-01-01T00:00:00.000Z'")
                .replace("$4", "'2026-01-01T00:00:00.000Z'")
                .replace("$5", "256")
        )))
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
        tx.rollback().await.expect("rollback");
        store.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Scan using outbox_queued"),
            "the due rows are not read in index order:\n{plan}"
        );
        for scan in ["Seq Scan", "Bitmap"] {
            assert!(!plan.contains(scan), "{scan} in the claim:\n{plan}");
        }
    }
}
