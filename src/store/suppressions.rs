//! The suppression list as an operator sees and changes it (the admin pages): the reasons an
//! address is suppressed for, which of them may be lifted ([`liftable`], the one rule), a search
//! by address a page at a time, and lifting with a recorded reason (`suppression_lifts`).
//! Adding to the list is [`super::ADD_SUPPRESSION_SQL`]'s, written by the paths that find an
//! address bad (events, the relay, bounce mail).

use serde::Serialize;

use super::{Param, Store, StoreError, nul_free};
use crate::config::DbKind;
use crate::domain::AddressPrefix;

/// The reasons an address is put on the suppression list for (`suppressions.reason`). Every path
/// that adds one names it by these.
pub mod reason {
    /// The address does not exist: a route's 5.1.x, a provider's hard bounce or cleaned (not for
    /// abuse), a bounce mail's hard bounce.
    pub const HARD_BOUNCE: &str = "hard_bounce";
    /// Soft bounces past `[server] soft_bounce_threshold` within the window.
    pub const SOFT_BOUNCE: &str = "soft_bounce";
    /// Mailchimp Transactional refused to send to it (its rejection list holds bounces,
    /// complaints and unsubscribes alike: which one, it does not say).
    pub const REJECTED: &str = "rejected";
    /// The person reported mail as spam (a complaint, an ARF report, a list cleaned for abuse).
    pub const SPAM_COMPLAINT: &str = "spam_complaint";
    /// Every reason written.
    pub const ALL: [&str; 4] = [HARD_BOUNCE, SOFT_BOUNCE, REJECTED, SPAM_COMPLAINT];
}

/// Whether an operator may lift a suppression of `reason`: only a bounce, which says the address
/// did not work then, and may work now (a mailbox that was full, a domain that was down, a typo
/// the member has fixed). Never a consent opt-out: a complaint is the person saying no, and only
/// they can say yes again. A rejection by Mailchimp Transactional may be either, and an unknown
/// reason is not known to be a bounce: both stay.
///
/// The source (which provider, list or route) never changes the answer: every path writes what
/// the event meant into the reason.
pub fn liftable(reason: &str) -> bool {
    matches!(reason, reason::HARD_BOUNCE | reason::SOFT_BOUNCE)
}

/// The most a lift's reason may hold (characters).
pub const MAX_WHY_CHARS: usize = 500;

/// One address on the list, lifted or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Suppression {
    pub email: String,
    pub reason: String,
    pub source: String,
    pub detail: Option<String>,
    pub created_at: String,
    pub lifted_at: Option<String>,
}

impl Suppression {
    /// Whether an operator may lift it ([`liftable`]); a lifted one may not be lifted again.
    pub fn liftable(&self) -> bool {
        self.lifted_at.is_none() && liftable(&self.reason)
    }
}

/// Which suppressions a listing shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Which {
    /// Those in force (the default).
    #[default]
    Active,
    /// Those an operator lifted.
    Lifted,
}

/// Rows per page at most.
pub const MAX_PAGE: u32 = 200;

/// A listing: by address, from the address after `after` (the last one of the previous page).
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub search: Option<AddressPrefix>,
    pub which: Which,
    pub after: Option<String>,
    /// Rows per page, 1 to [`MAX_PAGE`].
    pub limit: u32,
}

/// One page of a listing, and the address to go on after, when there is more.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub rows: Vec<Suppression>,
    pub next: Option<String>,
}

/// A page of the list by address (byte order), read from the address index: the search is one
/// range of it, and the page starts after the previous one's last address.
pub async fn list(store: &Store, query: &ListQuery) -> Result<Page, StoreError> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    // PostgreSQL compares in byte order ("C"), as SQLite does, through its own index of it.
    let email = match store.kind() {
        DbKind::Postgres => r#"email COLLATE "C""#,
        _ => "email",
    };
    let mut sql = format!(
        "SELECT email, reason, source, detail, created_at, lifted_at FROM suppressions WHERE {}",
        match query.which {
            Which::Active => "lifted_at IS NULL",
            Which::Lifted => "lifted_at IS NOT NULL",
        }
    );
    let mut params = Vec::new();
    let mut bound = |sql: &mut String, condition: &str, value: &str| {
        params.push(value.to_owned());
        sql.push_str(&format!(" AND {email} {condition} ${}", params.len()));
    };
    if let Some(p) = &query.search {
        bound(&mut sql, ">=", p.start());
        bound(&mut sql, "<", p.end());
    }
    if let Some(after) = &query.after {
        bound(&mut sql, ">", after);
    }
    sql.push_str(&format!(" ORDER BY {email} LIMIT {}", i64::from(limit) + 1));
    let mut q = sqlx::query_as::<_, Suppression>(sqlx::AssertSqlSafe(sql));
    for p in params {
        q = q.bind(p);
    }
    let mut rows = q
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("list suppressions"))?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.email.clone())
    } else {
        None
    };
    Ok(Page { rows, next })
}

/// `email`'s entry, lifted or not.
pub async fn get(store: &Store, email: &str) -> Result<Option<Suppression>, StoreError> {
    sqlx::query_as(
        "SELECT email, reason, source, detail, created_at, lifted_at FROM suppressions WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read a suppression"))
}

/// What [`lift`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiftOutcome {
    /// Lifted and recorded: mail goes to the address again.
    Lifted,
    /// The address is not on the list (or was lifted already).
    NotSuppressed,
    /// Not a bounce ([`liftable`]): a consent opt-out, or what may be one, is never lifted here.
    ConsentOptOut { reason: String },
    /// A lift needs a reason: none was given.
    NeedsReason,
    /// The reason is longer than [`MAX_WHY_CHARS`].
    ReasonTooLong,
}

/// One lift as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Lift {
    pub email: String,
    /// The suppression lifted: its reason, source, detail and since when.
    pub reason: String,
    pub source: String,
    pub detail: Option<String>,
    pub suppressed_at: String,
    /// Why the operator lifted it, and who.
    pub why: String,
    pub lifted_by: String,
    pub lifted_at: String,
}

/// Lifts `email`'s suppression (identity form), if it is a bounce ([`liftable`]): `why` (1 to
/// [`MAX_WHY_CHARS`] characters, trimmed) and `by` (who) are recorded in `suppression_lifts` in
/// the transaction that sets its `lifted_at` to `now`. A later bounce suppresses the address again.
pub async fn lift(
    store: &Store,
    email: &str,
    why: &str,
    by: &str,
    now: &str,
) -> Result<LiftOutcome, StoreError> {
    let why = why.trim();
    if why.is_empty() {
        return Ok(LiftOutcome::NeedsReason);
    }
    if why.chars().count() > MAX_WHY_CHARS {
        return Ok(LiftOutcome::ReasonTooLong);
    }
    // The entry is read, judged, then lifted only if it is still the entry judged (its reason and
    // time): one that changed in between (lifted, or suppressed anew for another reason) is read
    // and judged again.
    for _ in 0..3 {
        let Some(entry) = get(store, email).await? else {
            return Ok(LiftOutcome::NotSuppressed);
        };
        if entry.lifted_at.is_some() {
            return Ok(LiftOutcome::NotSuppressed);
        }
        if !liftable(&entry.reason) {
            return Ok(LiftOutcome::ConsentOptOut {
                reason: entry.reason,
            });
        }
        let same = |first: usize| {
            format!(
                "email = ${first} AND lifted_at IS NULL AND reason = ${} AND created_at = ${}",
                first + 1,
                first + 2
            )
        };
        let key = |first: Vec<Param>| {
            let mut p = first;
            p.extend([
                Param::from(email),
                entry.reason.as_str().into(),
                entry.created_at.as_str().into(),
            ]);
            p
        };
        let changed = store
            .write_all(
                "lift a suppression",
                vec![
                    (
                        format!(
                            "INSERT INTO suppression_lifts (email, reason, source, detail, suppressed_at, why, lifted_by, lifted_at)
                             SELECT email, reason, source, detail, created_at, $1, $2, $3 FROM suppressions
                             WHERE {}",
                            same(4)
                        )
                        .into(),
                        key(vec![
                            Param::Text(nul_free(why)),
                            Param::Text(nul_free(by)),
                            now.into(),
                        ]),
                    ),
                    (
                        format!("UPDATE suppressions SET lifted_at = $1 WHERE {}", same(2)).into(),
                        key(vec![now.into()]),
                    ),
                ],
            )
            .await?;
        if changed.last() == Some(&1) {
            metrics::counter!("mailbridge_suppressions_lifted_total", "reason" => reason_label(&entry.reason))
                .increment(1);
            return Ok(LiftOutcome::Lifted);
        }
    }
    Ok(LiftOutcome::NotSuppressed)
}

/// A lifted reason as a metric label (a fixed set).
fn reason_label(reason: &str) -> &'static str {
    reason::ALL
        .into_iter()
        .find(|r| *r == reason)
        .unwrap_or("other")
}

/// The lifts of `email`'s suppressions, newest first.
pub async fn lifts(store: &Store, email: &str) -> Result<Vec<Lift>, StoreError> {
    sqlx::query_as(
        "SELECT email, reason, source, detail, suppressed_at, why, lifted_by, lifted_at
         FROM suppression_lifts WHERE email = $1 ORDER BY id DESC LIMIT 100",
    )
    .bind(email)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read a suppression's lifts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason the code writes, with whether an operator may lift it: bounces yes, anything
    /// that is or may be a consent opt-out no. A new reason fails here until it is decided.
    #[test]
    fn only_bounces_are_liftable() {
        let table = [
            (reason::HARD_BOUNCE, true),
            (reason::SOFT_BOUNCE, true),
            (reason::REJECTED, false),
            (reason::SPAM_COMPLAINT, false),
        ];
        assert_eq!(
            table.map(|(r, _)| r),
            reason::ALL,
            "every reason written has a row here"
        );
        for (r, want) in table {
            assert_eq!(liftable(r), want, "{r}");
        }
        for other in [
            "unsubscribed",
            "complained",
            "abuse",
            "",
            "HARD_BOUNCE",
            "manual",
        ] {
            assert!(!liftable(other), "{other}");
        }
    }
}
