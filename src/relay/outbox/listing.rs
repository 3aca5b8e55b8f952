//! The outbox as the admin pages list it: messages newest first, by status, by a prefix of the
//! recipient's address, a page at a time from a cursor, and the count of each status. The outbox
//! may hold millions of rows: every page is read from index ranges that stop after the page (the
//! `outbox_list_*` indexes, `outbox_sent` and `outbox_leases`), so a page costs the same on the
//! first day and after a year, on page 1 and on page 10,000, and behind a backlog.

use super::{MessageStatus, STATUS_COLUMNS, StatusRow};
use crate::config::DbKind;
use crate::domain::AddressPrefix;
use crate::relay::Status;
use crate::relay::routes::ROUTE_NAMES;
use crate::store::{Store, StoreError};

/// Rows per page at most.
pub const MAX_PAGE: u32 = 200;

/// Where a page starts: after this message, in the listing's order. The last row of a page
/// makes the next page's cursor ([`Page::next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The time the listing is ordered by: when the message was queued, or for the sent
    /// messages when it was sent.
    pub at: String,
    pub id: String,
    /// Read only by a listing by recipient, whose order is by address first.
    pub recipient: String,
}

impl Cursor {
    /// As one query-string value: `{at}~{id}~{recipient}`. Neither a time nor an id holds `~`;
    /// the address, which may, comes last.
    pub fn to_param(&self) -> String {
        format!("{}~{}~{}", self.at, self.id, self.recipient)
    }

    /// A cursor from [`Cursor::to_param`]; `None` for anything else.
    pub fn parse(param: &str) -> Option<Cursor> {
        let mut parts = param.splitn(3, '~');
        let (Some(at), Some(id), Some(recipient)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if at.is_empty() || id.is_empty() {
            return None;
        }
        Some(Cursor {
            at: at.to_owned(),
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

/// The order a page lists its messages in ([`order_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest first: by the time each message was queued.
    Queued,
    /// Most recently sent first: the sent messages.
    Sent,
    /// By address, then newest first: a recipient search over all or the sent messages.
    Address,
}

/// How a listing reads the outbox: which index, in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// Every message newest first (`outbox_list_all`).
    All,
    /// The sent messages, most recently sent first: `outbox_sent` (route, sent_at), which the
    /// quota counts keep anyway, one range per route merged. (Walking every message newest first
    /// and skipping the unsent ones, as the migration that made the listing indexes still says,
    /// read the whole backlog first: 200 ms a page behind 100,000 queued messages.)
    Sent,
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
        match (query.status, &query.recipient) {
            (None, Some(_)) => Walk::ByRecipient { sent_only: false },
            (Some(Status::Sent), Some(_)) => Walk::ByRecipient { sent_only: true },
            (None, None) => Walk::All,
            (Some(Status::Sent), None) => Walk::Sent,
            (Some(Status::Sending), _) => Walk::Leased,
            (Some(state), _) => Walk::State(state),
        }
    }

    fn order(self) -> Order {
        match self {
            Walk::Sent => Order::Sent,
            Walk::ByRecipient { .. } => Order::Address,
            Walk::All | Walk::State(_) | Walk::Leased => Order::Queued,
        }
    }

    /// The index a page of this walk reads (SQLite names it, so that the plan does not depend on
    /// statistics the state DB never gathers).
    fn index(self) -> &'static str {
        match self {
            Walk::All => "outbox_list_all",
            Walk::Sent | Walk::State(Status::Sent) => "outbox_sent",
            Walk::State(Status::Queued) => "outbox_list_queued",
            Walk::State(Status::Deferred) => "outbox_list_deferred",
            Walk::State(Status::Bounced) => "outbox_list_bounced",
            Walk::State(Status::Suppressed) => "outbox_list_suppressed",
            Walk::State(Status::Failed) => "outbox_list_failed",
            Walk::State(Status::Sending) | Walk::Leased => "outbox_leases",
            Walk::ByRecipient { .. } => "outbox_list_recipient",
        }
    }

    /// The state condition: a literal, so that SQLite sees the partial index applies.
    fn state(self) -> Option<&'static str> {
        match self {
            Walk::All | Walk::ByRecipient { sent_only: false } => None,
            Walk::ByRecipient { sent_only: true } | Walk::State(Status::Sent) => {
                Some("status = 'sent'")
            }
            Walk::Sent => Some("status = 'sent' AND sent_at IS NOT NULL"),
            Walk::Leased | Walk::State(Status::Sending) => Some("status = 'sending'"),
            Walk::State(Status::Queued) => Some("status = 'queued'"),
            Walk::State(Status::Deferred) => Some("status = 'deferred'"),
            Walk::State(Status::Bounced) => Some("status = 'bounced'"),
            Walk::State(Status::Suppressed) => Some("status = 'suppressed'"),
            Walk::State(Status::Failed) => Some("status = 'failed'"),
        }
    }

    /// The time column the walk is ordered by, newest first.
    fn time(self) -> &'static str {
        match self.order() {
            Order::Sent => "sent_at",
            Order::Queued | Order::Address => "created_at",
        }
    }

    /// The cursor after `m` in this walk's order.
    fn cursor_after(self, m: &MessageStatus) -> Cursor {
        let at = match self.order() {
            Order::Sent => m.sent_at.clone().unwrap_or_else(|| m.created_at.clone()),
            Order::Queued | Order::Address => m.created_at.clone(),
        };
        Cursor {
            at,
            id: m.id.clone(),
            recipient: m.to.clone(),
        }
    }
}

/// One SELECT of a listing, its parameters bound in order: one branch, or several (one per
/// route) each read to the page's end and merged.
struct Select {
    branches: Vec<String>,
    params: Vec<String>,
    order: String,
}

impl Select {
    fn new(kind: DbKind, walk: Walk, order: &str) -> Select {
        let from = match kind {
            DbKind::Postgres => "outbox".to_owned(),
            _ => format!("outbox INDEXED BY {}", walk.index()),
        };
        let state = walk
            .state()
            .map(|s| format!(" AND {s}"))
            .unwrap_or_default();
        let branch = |route: Option<&str>| {
            format!(
                "SELECT {STATUS_COLUMNS} FROM {from} WHERE {}{state}",
                route.map_or_else(|| "1 = 1".to_owned(), |r| format!("route = '{r}'"))
            )
        };
        let branches = match walk {
            Walk::Sent => ROUTE_NAMES.iter().map(|r| branch(Some(r))).collect(),
            _ => vec![branch(None)],
        };
        Select {
            branches,
            params: Vec::new(),
            order: order.to_owned(),
        }
    }

    fn push(&mut self, condition: &str) {
        for b in &mut self.branches {
            b.push_str(" AND ");
            b.push_str(condition);
        }
    }

    /// Adds `AND {left} {op} ${n}`, binding `value` as `$n`.
    fn and(mut self, left: &str, op: &str, value: &str) -> Select {
        self.params.push(value.to_owned());
        let n = self.params.len();
        self.push(&format!("{left} {op} ${n}"));
        self
    }

    /// Only the rows of `prefix`'s addresses.
    fn within(self, recipient: &str, prefix: &AddressPrefix) -> Select {
        self.and(recipient, ">=", prefix.start())
            .and(recipient, "<", prefix.end())
    }

    /// Only the rows before `cursor` in the newest-first order of `time`.
    fn before(mut self, time: &str, cursor: &Cursor) -> Select {
        self.params.push(cursor.at.clone());
        self.params.push(cursor.id.clone());
        let n = self.params.len();
        self.push(&format!("({time}, id) < (${}, ${n})", n - 1));
        self
    }

    /// The statement's text for at most `limit` rows.
    fn text(&self, limit: usize) -> String {
        let (order, limit) = (&self.order, limit);
        match self.branches.as_slice() {
            [one] => format!("{one} ORDER BY {order} LIMIT {limit}"),
            many => {
                let merged: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        format!("SELECT * FROM ({b} ORDER BY {order} LIMIT {limit}) AS r{i}")
                    })
                    .collect();
                format!(
                    "{} ORDER BY {order} LIMIT {limit}",
                    merged.join(" UNION ALL ")
                )
            }
        }
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
    let time = walk.time();
    let newest_first = format!("{time} DESC, id DESC");
    let by_address = format!("{recipient}, {newest_first}");
    match (walk, &query.recipient, &query.after) {
        // The rest of the cursor's address, then the addresses after it.
        (Walk::ByRecipient { .. }, Some(prefix), Some(c)) if prefix.matches(&c.recipient) => vec![
            Select::new(kind, walk, &newest_first)
                .and(recipient, "=", &c.recipient)
                .before(time, c),
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
            let mut select = Select::new(kind, walk, &newest_first);
            if let Some(prefix) = search {
                select = select.within(recipient, prefix);
            }
            if let Some(c) = after {
                select = select.before(time, c);
            }
            vec![select]
        }
    }
}

/// The order a page of `query` lists its messages in.
pub fn order_of(query: &ListQuery) -> Order {
    Walk::of(query).order()
}

/// A page of the outbox (see [`ListQuery`]): newest first, the sent messages most recently sent
/// first, a recipient search over all or the sent messages by address and then newest first
/// ([`order_of`]). Each row as `GET /v1/messages/{id}` shows it, without the message's bytes.
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
    let walk = Walk::of(query);
    let next = if messages.len() > limit {
        messages.truncate(limit);
        messages.last().map(|m| walk.cursor_after(m))
    } else {
        None
    };
    Ok(Page { messages, next })
}

/// How many messages are in each state but `sent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every [`Status`] but [`Status::Sent`], in [`STATUSES`] order.
    pub by_status: Vec<(Status, u64)>,
}

impl Counts {
    /// The count of `status`; `None` for [`Status::Sent`], which is not counted.
    pub fn of(&self, status: Status) -> Option<u64> {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| *n)
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

/// [`counts`]' one statement (one snapshot), each state counted from its partial index. Sent
/// messages, nearly all rows, are not counted: with 1,000,000 messages, counting them (or all
/// messages, from the smallest index) took 12 to 23 ms of each outbox page's 25 (benches/
/// admin_pages.rs), where the other states together take well under a millisecond (4 ms with
/// 100,000 queued).
pub(super) const COUNTS_SQL: &str = "SELECT
     (SELECT COUNT(*) FROM outbox WHERE status = 'queued'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'sending'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'deferred'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'bounced'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'suppressed'),
     (SELECT COUNT(*) FROM outbox WHERE status = 'failed')";

/// The number of messages in each state but `sent` (exact).
pub async fn counts(store: &Store) -> Result<Counts, StoreError> {
    type Row = (i64, i64, i64, i64, i64, i64);
    let (queued, sending, deferred, bounced, suppressed, failed): Row = sqlx::query_as(COUNTS_SQL)
        .fetch_one(store.pool())
        .await
        .map_err(StoreError::query("count outbox messages"))?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Counts {
        by_status: vec![
            (Status::Queued, n(queued)),
            (Status::Sending, n(sending)),
            (Status::Deferred, n(deferred)),
            (Status::Bounced, n(bounced)),
            (Status::Suppressed, n(suppressed)),
            (Status::Failed, n(failed)),
        ],
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_a_query_value() {
        let c = Cursor {
            at: "2026-12-13T10:00:00.000Z".into(),
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
            at: "2026-01-01T00:00:00.000Z".into(),
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
