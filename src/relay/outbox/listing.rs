//! The outbox as the admin pages list it: messages newest first, by status, by a prefix of the
//! recipient's address, a page at a time from a cursor, and the count of each status. The outbox
//! may hold millions of rows: every page is read from one index range (the `outbox_list_*`
//! indexes and `outbox_leases`) and stops after the page, so a page costs the same on the first
//! day and after a year, and on page 1 and page 10,000.

use super::{MessageStatus, STATUS_COLUMNS, StatusRow};
use crate::config::DbKind;
use crate::domain::AddressPrefix;
use crate::relay::Status;
use crate::store::{Store, StoreError};

/// Rows per page at most.
pub const MAX_PAGE: u32 = 200;

/// Where a page starts: after this message, in the listing's order. The last row of a page
/// makes the next page's cursor ([`Page::next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: String,
    pub id: String,
    /// Read only by a listing by recipient, whose order is by address first.
    pub recipient: String,
}

impl Cursor {
    /// The cursor after `message`.
    pub fn after(message: &MessageStatus) -> Cursor {
        Cursor {
            created_at: message.created_at.clone(),
            id: message.id.clone(),
            recipient: message.to.clone(),
        }
    }

    /// As one query-string value: `{created_at}~{id}~{recipient}`. Neither a time nor an id
    /// holds `~`; the address, which may, comes last.
    pub fn to_param(&self) -> String {
        format!("{}~{}~{}", self.created_at, self.id, self.recipient)
    }

    /// A cursor from [`Cursor::to_param`]; `None` for anything else.
    pub fn parse(param: &str) -> Option<Cursor> {
        let mut parts = param.splitn(3, '~');
        let (Some(created_at), Some(id), Some(recipient)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if created_at.is_empty() || id.is_empty() {
            return None;
        }
        Some(Cursor {
            created_at: created_at.to_owned(),
            id: id.to_owned(),
            recipient: recipient.to_owned(),
        })
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub recipient: Option<AddressPrefix>,
    /// The previous page's [`Page::next`]; none for the first page.
    pub after: Option<Cursor>,
    /// Rows per page, 1 to [`MAX_PAGE`].
    pub limit: u32,
}

/// One page, and the cursor of the next when there is one.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub messages: Vec<MessageStatus>,
    pub next: Option<Cursor>,
}

/// How a listing reads the outbox: which index, in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// Every message newest first (`outbox_list_all`); `sent_only` skips the others. Sent
    /// messages are nearly all rows, so a page of them is found within a few more rows than it
    /// holds: the rows skipped are the messages not sent yet, newer than the page.
    All { sent_only: bool },
    /// The messages in one state that has an index of its own (`outbox_list_{state}`), newest
    /// first.
    State(Status),
    /// The messages being sent: every leased one (`outbox_leases`, as many as the workers hold),
    /// sorted newest first.
    Leased,
    /// A recipient search over all messages, or the sent ones: by address, then newest first
    /// (`outbox_list_recipient`), so that a prefix is one range of the index, read in order.
    ByRecipient { sent_only: bool },
}

impl Walk {
    fn of(query: &ListQuery) -> Walk {
        let sent_only = query.status == Some(Status::Sent);
        match query.status {
            None | Some(Status::Sent) if query.recipient.is_some() => {
                Walk::ByRecipient { sent_only }
            }
            None | Some(Status::Sent) => Walk::All { sent_only },
            Some(Status::Sending) => Walk::Leased,
            Some(state) => Walk::State(state),
        }
    }

    /// The index a page of this walk reads (SQLite names it, so that the plan does not depend on
    /// statistics the state DB never gathers).
    fn index(self) -> &'static str {
        match self {
            Walk::All { .. } => "outbox_list_all",
            Walk::State(Status::Queued) => "outbox_list_queued",
            Walk::State(Status::Deferred) => "outbox_list_deferred",
            Walk::State(Status::Bounced) => "outbox_list_bounced",
            Walk::State(Status::Suppressed) => "outbox_list_suppressed",
            Walk::State(Status::Failed) => "outbox_list_failed",
            Walk::State(Status::Sending | Status::Sent) | Walk::Leased => "outbox_leases",
            Walk::ByRecipient { .. } => "outbox_list_recipient",
        }
    }

    /// The state condition: a literal, so that SQLite sees the partial index applies.
    fn state(self) -> Option<&'static str> {
        match self {
            Walk::All { sent_only: false } | Walk::ByRecipient { sent_only: false } => None,
            Walk::All { sent_only: true } | Walk::ByRecipient { sent_only: true } => {
                Some("status = 'sent'")
            }
            Walk::Leased => Some("status = 'sending'"),
            Walk::State(Status::Queued) => Some("status = 'queued'"),
            Walk::State(Status::Deferred) => Some("status = 'deferred'"),
            Walk::State(Status::Bounced) => Some("status = 'bounced'"),
            Walk::State(Status::Suppressed) => Some("status = 'suppressed'"),
            Walk::State(Status::Failed) => Some("status = 'failed'"),
            Walk::State(Status::Sending) => Some("status = 'sending'"),
            Walk::State(Status::Sent) => Some("status = 'sent'"),
        }
    }
}

/// One SELECT of a listing, its parameters bound in order.
struct Select {
    sql: String,
    params: Vec<String>,
    order: String,
}

impl Select {
    fn new(kind: DbKind, walk: Walk, order: &str) -> Select {
        let from = match kind {
            DbKind::Postgres => "outbox".to_owned(),
            _ => format!("outbox INDEXED BY {}", walk.index()),
        };
        let mut select = Select {
            sql: format!("SELECT {STATUS_COLUMNS} FROM {from} WHERE 1 = 1"),
            params: Vec::new(),
            order: order.to_owned(),
        };
        if let Some(state) = walk.state() {
            select.sql.push_str(" AND ");
            select.sql.push_str(state);
        }
        select
    }

    /// Adds `AND {left} {op} ${n}`, binding `value` as `$n`.
    fn and(mut self, left: &str, op: &str, value: &str) -> Select {
        self.params.push(value.to_owned());
        self.sql
            .push_str(&format!(" AND {left} {op} ${}", self.params.len()));
        self
    }

    /// Only the rows of `prefix`'s addresses.
    fn within(self, recipient: &str, prefix: &AddressPrefix) -> Select {
        self.and(recipient, ">=", prefix.start())
            .and(recipient, "<", prefix.end())
    }

    /// Only the rows before `cursor` in newest-first order.
    fn before(mut self, cursor: &Cursor) -> Select {
        self.params.push(cursor.created_at.clone());
        self.params.push(cursor.id.clone());
        let n = self.params.len();
        self.sql
            .push_str(&format!(" AND (created_at, id) < (${}, ${n})", n - 1));
        self
    }

    /// The statement's text for at most `limit` rows.
    fn text(&self, limit: usize) -> String {
        format!("{} ORDER BY {} LIMIT {limit}", self.sql, self.order)
    }

    async fn fetch(&self, store: &Store, limit: usize) -> Result<Vec<StatusRow>, StoreError> {
        let mut query = sqlx::query_as::<_, StatusRow>(sqlx::AssertSqlSafe(self.text(limit)));
        for p in &self.params {
            query = query.bind(p.clone());
        }
        query
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("list outbox messages"))
    }
}

const NEWEST_FIRST: &str = "created_at DESC, id DESC";

/// The statements a page of `query` is read with, in order: each one's rows come after the
/// previous one's, and reading stops once the page is full.
fn plan(kind: DbKind, query: &ListQuery) -> Vec<Select> {
    let walk = Walk::of(query);
    // The recipient as compared and ordered: in byte order on both state DBs (PostgreSQL's
    // `outbox_list_recipient` is on this expression).
    let recipient = match kind {
        DbKind::Postgres => r#"recipient COLLATE "C""#,
        _ => "recipient",
    };
    let by_address = format!("{recipient}, {NEWEST_FIRST}");
    match (walk, &query.recipient, &query.after) {
        // The rest of the cursor's address, then the addresses after it.
        (Walk::ByRecipient { .. }, Some(prefix), Some(c)) if prefix.matches(&c.recipient) => vec![
            Select::new(kind, walk, NEWEST_FIRST)
                .and(recipient, "=", &c.recipient)
                .before(c),
            Select::new(kind, walk, &by_address)
                .and(recipient, ">", &c.recipient)
                .and(recipient, "<", prefix.end()),
        ],
        // A cursor of another search: nothing comes after it in this one.
        (Walk::ByRecipient { .. }, Some(_), Some(_)) => Vec::new(),
        (Walk::ByRecipient { .. }, Some(prefix), None) => {
            vec![Select::new(kind, walk, &by_address).within(recipient, prefix)]
        }
        (_, search, after) => {
            let mut select = Select::new(kind, walk, NEWEST_FIRST);
            if let Some(prefix) = search {
                select = select.within(recipient, prefix);
            }
            if let Some(c) = after {
                select = select.before(c);
            }
            vec![select]
        }
    }
}

/// A page of the outbox (see [`ListQuery`]): newest first, or, for a recipient search over all
/// or sent messages, by address and then newest first. Each row as `GET /v1/messages/{id}` shows
/// it, without the message's bytes.
pub async fn list(store: &Store, query: &ListQuery) -> Result<Page, StoreError> {
    let limit = query.limit.clamp(1, MAX_PAGE) as usize;
    // One row more than the page: whether there is a next page.
    let want = limit + 1;
    let mut rows = Vec::with_capacity(want);
    for select in plan(store.kind(), query) {
        if rows.len() >= want {
            break;
        }
        rows.extend(select.fetch(store, want - rows.len()).await?);
    }
    let mut messages = rows
        .into_iter()
        .map(MessageStatus::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if messages.len() > limit {
        messages.truncate(limit);
        messages.last().map(Cursor::after)
    } else {
        None
    };
    Ok(Page { messages, next })
}

/// How many messages are in each state, and in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    /// Every [`Status`], in [`STATUSES`] order.
    pub by_status: Vec<(Status, u64)>,
}

impl Counts {
    pub fn of(&self, status: Status) -> u64 {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// Every status, in the order pages show them.
pub const STATUSES: [Status; 7] = [
    Status::Queued,
    Status::Sending,
    Status::Deferred,
    Status::Sent,
    Status::Bounced,
    Status::Suppressed,
    Status::Failed,
];

/// [`counts`]' one statement (one snapshot): all rows, then each state but `sent`, each counted
/// from its partial index. Sent is the rest: counting it on its own read every sent row (120 ms
/// for 1,000,000 on SQLite), while all rows are counted from the smallest index (8 ms).
pub(super) const COUNTS_SQL: &str = "SELECT (SELECT COUNT(*) FROM outbox),
     (SELECT COUNT(*) FROM outbox WHERE status = 'queued'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'sending'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'deferred'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'bounced'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'suppressed'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'failed')";

/// The number of messages in each state (exact).
pub async fn counts(store: &Store) -> Result<Counts, StoreError> {
    type Row = (i64, i64, i64, i64, i64, i64, i64);
    let (total, queued, sending, deferred, bounced, suppressed, failed): Row =
        sqlx::query_as(COUNTS_SQL)
            .fetch_one(store.pool())
            .await
            .map_err(StoreError::query("count outbox messages"))?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let total = n(total);
    let others = [queued, sending, deferred, bounced, suppressed, failed]
        .into_iter()
        .map(n)
        .sum::<u64>();
    let count = |s: Status| match s {
        Status::Queued => n(queued),
        Status::Sending => n(sending),
        Status::Deferred => n(deferred),
        Status::Bounced => n(bounced),
        Status::Suppressed => n(suppressed),
        Status::Failed => n(failed),
        Status::Sent => total.saturating_sub(others),
    };
    Ok(Counts {
        total,
        by_status: STATUSES.iter().map(|s| (*s, count(*s))).collect(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_a_query_value() {
        let c = Cursor {
            created_at: "2026-12-13T10:00:00.000Z".into(),
            id: "0af3".into(),
            recipient: "odd~name@example.org".into(),
        };
        assert_eq!(Cursor::parse(&c.to_param()), Some(c));
        for bad in ["", "a~b", "~id~x@y.z", "t~~x@y.z"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    /// Every listing's statements (each status, with and without a recipient search and a
    /// cursor) as SQLite runs them, named, with their number of parameters.
    pub(in crate::relay::outbox) fn listing_sql() -> Vec<(String, String, usize)> {
        let prefix = AddressPrefix::parse("anna@").unwrap();
        let cursor = Cursor {
            created_at: "2026-01-01T00:00:00.000Z".into(),
            id: "x".into(),
            recipient: "anna@example.org".into(),
        };
        let mut out = Vec::new();
        for status in std::iter::once(None).chain(STATUSES.map(Some)) {
            for search in [None, Some(prefix.clone())] {
                for after in [None, Some(cursor.clone())] {
                    let name = format!(
                        "status {status:?}, search {:?}, cursor {}",
                        search.as_ref().map(AddressPrefix::start),
                        after.is_some()
                    );
                    let query = ListQuery {
                        status,
                        recipient: search.clone(),
                        after,
                        limit: 50,
                    };
                    for select in plan(DbKind::Sqlite, &query) {
                        out.push((name.clone(), select.text(51), select.params.len()));
                    }
                }
            }
        }
        out
    }
}
