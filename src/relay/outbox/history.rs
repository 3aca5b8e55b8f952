//! A message's history (`outbox_attempts`): every turn that did not end in `sent`, with its
//! route and reply, written in the transaction that records the turn; and an operator's retry of
//! a message that gave up or waits for its next attempt. A sent message's reply stays on its row
//! only, so sending writes nothing here (the relay's hot path).

use serde::Serialize;

use super::{Outcome, Status};
use crate::store::{Param, Store, StoreError, Tx, nul_free};

/// What a turn in the history was (`outbox_attempts.outcome`).
pub mod turn {
    /// A route deferred it (or every route was down): it is retried later.
    pub const DEFERRED: &str = "deferred";
    /// It went back to the queue after a route was tried (misconfigured, or over its quota).
    pub const WAITING: &str = "waiting";
    /// A route was handed the message and its answer was lost: it may have been delivered.
    pub const ANSWER_LOST: &str = "answer_lost";
    /// A route refused it for good.
    pub const BOUNCED: &str = "bounced";
    /// Held back, not sent: the address is suppressed, or the recipient opted out.
    pub const HELD_BACK: &str = "held_back";
    /// Given up (too old).
    pub const FAILED: &str = "failed";
    /// A worker shutting down gave it back before its send began.
    pub const HANDED_BACK: &str = "handed_back";
    /// A bounce mail about it arrived after it was sent.
    pub const BOUNCE_MAIL: &str = "bounce_mail";
    /// An operator put it back in the queue ([`super::retry_now`]).
    pub const REQUEUED: &str = "requeued";
}

/// The history entry an outcome writes, if any: none for a sent message (its reply is on its
/// row), nor for a turn that went back to the queue without trying a route (an hourly limit
/// reached: it says nothing about the message, and comes back every minute while it lasts).
pub(super) fn turn_of(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Sent { .. }
        | Outcome::Waiting {
            attempted: false, ..
        } => None,
        Outcome::Waiting { .. } => Some(turn::WAITING),
        Outcome::Deferred { .. } => Some(turn::DEFERRED),
        Outcome::Ambiguous { .. } => Some(turn::ANSWER_LOST),
        Outcome::Bounced { .. } => Some(turn::BOUNCED),
        Outcome::Suppressed { .. } => Some(turn::HELD_BACK),
        Outcome::Failed { .. } => Some(turn::FAILED),
    }
}

/// Writes a history entry from the message's row as it now is (its attempt count): `$1` at, `$2`
/// outcome, `$3` route, `$4` reply, `$5` the row's key (the column `$key`).
macro_rules! note_sql {
    ($key:literal) => {
        concat!(
            "INSERT INTO outbox_attempts (outbox_id, attempt, at, outcome, route, reply)
             SELECT id, attempts, $1, $2, $3, $4 FROM outbox WHERE ",
            $key,
            " = $5"
        )
    };
}
pub(super) const NOTE_SQL: &str = note_sql!("id");
pub(super) const NOTE_BY_ROWID_SQL: &str = note_sql!("rowid");

/// Writes a history entry for message `id` within `tx` (a path that records a turn on the pool:
/// PostgreSQL's outcomes, bounce mail).
pub(crate) async fn note(
    tx: &mut Tx<'_>,
    id: &str,
    turn: &'static str,
    route: Option<&str>,
    reply: Option<&str>,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(NOTE_SQL)
        .bind(at)
        .bind(turn)
        .bind(route)
        // A reply is the server's to write; PostgreSQL's text cannot hold NUL.
        .bind(reply.map(nul_free))
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("record a message's history"))?;
    Ok(())
}

/// One turn of a message's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// The message's attempt count after this turn (a turn that tried no route keeps it).
    pub attempt: i64,
    pub at: String,
    /// One of [`turn`]'s.
    pub outcome: String,
    pub route: Option<String>,
    pub reply: Option<String>,
}

/// How many turns [`attempts`] returns at most (the oldest first): a message retried until it
/// gives up has a few dozen.
pub const MAX_ATTEMPTS: i64 = 500;

/// Message `id`'s turns that did not end in `sent`, oldest first (none for an unknown id). The
/// final reply of a sent message is its row's `last_reply` ([`super::get`]).
pub async fn attempts(store: &Store, id: &str) -> Result<Vec<Attempt>, StoreError> {
    sqlx::query_as(
        "SELECT attempt, at, outcome, route, reply FROM outbox_attempts
         WHERE outbox_id = $1 ORDER BY id LIMIT $2",
    )
    .bind(id)
    .bind(MAX_ATTEMPTS)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read a message's history"))
}

/// What [`retry_now`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Back in the queue, due now: the next claim takes it.
    Requeued,
    NotFound,
    /// Only a deferred, failed or bounced message is retried; this one is `status`.
    NotRetryable {
        status: Status,
    },
    /// A bounced message whose address is on the suppression list (for `reason`): retrying it
    /// would only hold it back. Once the suppression is lifted, it may be retried.
    AddressSuppressed {
        reason: String,
    },
}

/// The reply an operator's retry writes into the history.
const REQUEUED_REPLY: &str = "put back in the queue by an operator";

/// Puts message `id` back in the queue, due `now`, if it is deferred (it goes now instead of at
/// its next attempt), failed (given up: it gets one more attempt, after which its age gives up
/// on it again unless that attempt delivers it) or bounced (only while its address is not
/// suppressed: a hard bounce suppressed it, and a lift says it may work again). Its attempt
/// count and route stay. Any other message is refused: queued or being sent, it goes anyway;
/// sent, it went; held back, it was not to go.
///
/// The change is one conditional UPDATE (the message is still in the state read, and for a
/// bounce its address still not suppressed), with the history entry in its transaction: a worker
/// that claims the message in between makes it refused, never sent twice by this.
pub async fn retry_now(store: &Store, id: &str, now: &str) -> Result<RetryOutcome, StoreError> {
    let Some(message) = super::get(store, id).await? else {
        return Ok(RetryOutcome::NotFound);
    };
    let status = message.status;
    match status {
        Status::Deferred | Status::Failed => {}
        Status::Bounced => {
            if let Some(entry) = crate::store::suppressions::get(store, &message.to).await?
                && entry.lifted_at.is_none()
            {
                return Ok(RetryOutcome::AddressSuppressed {
                    reason: entry.reason,
                });
            }
        }
        _ => return Ok(RetryOutcome::NotRetryable { status }),
    }
    // Both statements hold under the same condition, so either both change a row or neither.
    let condition = "id = $1 AND status = $2 AND (status <> 'bounced' OR NOT EXISTS (
             SELECT 1 FROM suppressions s WHERE s.email = outbox.recipient AND s.lifted_at IS NULL))";
    let key = || vec![Param::from(id), Param::from(status.as_str())];
    let mut note = key();
    note.extend([now.into(), turn::REQUEUED.into(), REQUEUED_REPLY.into()]);
    let mut requeue = key();
    requeue.push(now.into());
    let changed = store
        .write_all(
            "put a message back in the queue",
            vec![
                (
                    format!(
                        "INSERT INTO outbox_attempts (outbox_id, attempt, at, outcome, route, reply)
                         SELECT id, attempts, $3, $4, NULL, $5 FROM outbox WHERE {condition}"
                    )
                    .into(),
                    note,
                ),
                (
                    format!(
                        "UPDATE outbox SET status = 'queued', next_attempt_at = $3, updated_at = $3,
                             lease_until = NULL, leased_by = NULL
                         WHERE {condition}"
                    )
                    .into(),
                    requeue,
                ),
            ],
        )
        .await?;
    if changed.last() == Some(&1) {
        metrics::counter!("mailbridge_relay_retried_by_operator_total", "status" => status.as_str())
            .increment(1);
        return Ok(RetryOutcome::Requeued);
    }
    // It changed in between: say what it is now.
    Ok(match super::get(store, id).await? {
        None => RetryOutcome::NotFound,
        Some(m) => match crate::store::suppressions::get(store, &m.to).await? {
            Some(s) if m.status == Status::Bounced && s.lifted_at.is_none() => {
                RetryOutcome::AddressSuppressed { reason: s.reason }
            }
            _ => RetryOutcome::NotRetryable { status: m.status },
        },
    })
}

/// How many history entries one purge statement deletes at most.
const PURGE_BATCH: i64 = 1000;

/// Deletes the history of messages that are done and whose outcome is older than `before` (RFC
/// 3339 text), as [`super::purge_bodies`] deletes their bytes: replies name addresses and servers,
/// kept as long as the bytes are. Returns how many entries it deleted.
pub async fn purge_attempts(store: &Store, before: &str) -> Result<u64, StoreError> {
    const SQL: &str = "DELETE FROM outbox_attempts WHERE id IN (
         SELECT a.id FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id
         WHERE a.at < $1 AND o.updated_at < $1
           AND o.status IN ('sent', 'bounced', 'suppressed', 'failed')
         ORDER BY a.at LIMIT $2)";
    let mut total = 0;
    loop {
        let n = store
            .write(
                "delete the history of messages that are done",
                SQL,
                vec![before.into(), PURGE_BATCH.into()],
            )
            .await?;
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_message_and_a_wait_without_a_route_write_no_history() {
        let sent = Outcome::Sent {
            route: "smtp".into(),
            reply: "250 ok".into(),
        };
        assert_eq!(turn_of(&sent), None);
        let quota = Outcome::Waiting {
            route: None,
            reply: "waiting".into(),
            next_attempt_at: "t".into(),
            attempted: false,
        };
        assert_eq!(turn_of(&quota), None);
        let tried = Outcome::Waiting {
            attempted: true,
            route: Some("smtp".into()),
            reply: "misconfigured".into(),
            next_attempt_at: "t".into(),
        };
        assert_eq!(turn_of(&tried), Some(turn::WAITING));
        let held = Outcome::Suppressed { reply: "held" };
        assert_eq!(turn_of(&held), Some(turn::HELD_BACK));
        let gave_up = Outcome::Failed {
            route: None,
            reply: "too old".into(),
            attempted: false,
        };
        assert_eq!(turn_of(&gave_up), Some(turn::FAILED));
    }
}
