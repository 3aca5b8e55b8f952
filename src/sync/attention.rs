//! Members needing attention (the admin pages): what the state DB already knows of members the
//! mail does not reach, each with why and what to do. From each audience's latest finished sync:
//! the members whose push failed (`sync_errors`) and those it skipped for a bad row (invalid,
//! blank or duplicate addresses, missing keys: the run report's `skipped`); from the suppression
//! list: bounced addresses, complaints and rejections; from the contacts: addresses the provider
//! cleaned that are not suppressed here as well. Consent opt-outs (unsubscribes) are not listed:
//! they need nothing done.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::store::suppressions::{self, reason};
use crate::store::{Store, StoreError, placeholders};

/// Why a member is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concern {
    /// The provider refused the member's last push.
    PushFailed,
    /// The member DB's address is missing, blank or not an address (or the provider refused it
    /// and it has not changed since).
    InvalidAddress,
    /// Another member of the audience has the same address.
    DuplicateAddress,
    /// The member's row cannot be pushed for another reason (no member key, a field the mapping
    /// cannot render).
    BadRow,
    /// The address bounced: suppressed for a hard bounce or repeated soft bounces.
    Bounced,
    /// The provider cleaned the address (it bounced there), and it is not suppressed here.
    Cleaned,
    /// The person reported mail as spam.
    Complained,
    /// Mailchimp Transactional refuses the address, for a reason it does not say.
    Rejected,
}

impl Concern {
    /// In the order a page lists them.
    pub const ALL: [Concern; 8] = [
        Concern::PushFailed,
        Concern::InvalidAddress,
        Concern::DuplicateAddress,
        Concern::BadRow,
        Concern::Bounced,
        Concern::Cleaned,
        Concern::Complained,
        Concern::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Concern::PushFailed => "push_failed",
            Concern::InvalidAddress => "invalid_address",
            Concern::DuplicateAddress => "duplicate_address",
            Concern::BadRow => "bad_row",
            Concern::Bounced => "bounced",
            Concern::Cleaned => "cleaned",
            Concern::Complained => "complained",
            Concern::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Concern> {
        Concern::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// What happened, in a few words.
    pub fn what(self) -> &'static str {
        match self {
            Concern::PushFailed => "Last push failed",
            Concern::InvalidAddress => "Invalid address",
            Concern::DuplicateAddress => "Duplicate address",
            Concern::BadRow => "Row not synced",
            Concern::Bounced => "Address bounced",
            Concern::Cleaned => "Cleaned by the provider",
            Concern::Complained => "Spam complaint",
            Concern::Rejected => "Rejected by the provider",
        }
    }

    /// What to do about it.
    pub fn todo(self) -> &'static str {
        match self {
            Concern::PushFailed => {
                "Read the provider's reason and correct the member's row in the member database; the next sync tries again (an address the provider called invalid waits until the row changes)."
            }
            Concern::InvalidAddress => {
                "Correct the address in the member database; the next sync pushes the member."
            }
            Concern::DuplicateAddress => {
                "Give each member an address of their own in the member database; meanwhile the member named keeps it."
            }
            Concern::BadRow => {
                "Correct the member's row (or the mapping's query) as the reason says; the next sync pushes the member."
            }
            Concern::Bounced => {
                "Ask the member for an address that works and correct it in the member database; if this one works again, lift its suppression."
            }
            Concern::Cleaned => {
                "The provider will not mail this address again: ask the member for a new one and correct it in the member database."
            }
            Concern::Complained => {
                "Nothing: the member reported mail as spam and gets no more; only they can subscribe again."
            }
            Concern::Rejected => {
                "Check the address on Mailchimp Transactional's rejection list (a bounce, a complaint or an unsubscribe there); the suppression stays."
            }
        }
    }

    /// The concern of a suppression for `reason` (the rule of [`suppressions::liftable`]: a
    /// liftable reason is a bounce).
    fn of_suppression(reason: &str) -> Concern {
        if suppressions::liftable(reason) {
            Concern::Bounced
        } else if reason == reason::SPAM_COMPLAINT {
            Concern::Complained
        } else {
            Concern::Rejected
        }
    }

    /// The concern of a member a sync skipped with `code`, or none for a consent hold.
    fn of_skip(code: &str) -> Option<Concern> {
        match code {
            "opted_out" => None,
            "invalid_email" | "blank_email" | "missing_email" => Some(Concern::InvalidAddress),
            "duplicate_email" => Some(Concern::DuplicateAddress),
            _ => Some(Concern::BadRow),
        }
    }
}

/// One member (or address) needing attention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attention {
    pub concern: Concern,
    /// The audience it is about (none for an address on the suppression list).
    pub audience: Option<String>,
    /// The member, when the state DB knows it.
    pub member_key: Option<String>,
    pub email: Option<String>,
    /// Why, as the provider, the sync or the suppression list says it.
    pub why: String,
    /// When it was found.
    pub at: String,
    /// The sync run that found it.
    pub run_id: Option<String>,
}

/// The newest rows needing attention, how many there are in all, and of each concern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttentionList {
    pub rows: Vec<Attention>,
    pub total: u64,
    /// Every [`Concern`], in [`Concern::ALL`] order (whatever concern the rows are of).
    pub counts: Vec<(Concern, u64)>,
}

impl AttentionList {
    pub fn count(&self, concern: Concern) -> u64 {
        self.counts
            .iter()
            .find(|(c, _)| *c == concern)
            .map_or(0, |(_, n)| *n)
    }
}

/// Rows returned at most.
pub const MAX_ROWS: u32 = 1000;

/// The report fields read here.
#[derive(Deserialize)]
struct StoredReport {
    #[serde(default)]
    skipped: Vec<Note>,
}

#[derive(Deserialize)]
struct Note {
    member_key: Option<String>,
    email: Option<String>,
    code: String,
    message: String,
}

/// The members needing attention, newest first: up to `limit` rows (at most [`MAX_ROWS`]) of
/// `only` that concern or of all, with the count of each concern.
pub async fn needing_attention(
    store: &Store,
    only: Option<Concern>,
    limit: u32,
) -> Result<AttentionList, StoreError> {
    let limit = i64::from(limit.clamp(1, MAX_ROWS));
    let wanted = |c: Concern| only.is_none_or(|o| o == c);
    let mut counts: HashMap<Concern, u64> = HashMap::new();
    let mut rows = Vec::new();

    for run in latest_runs(store).await? {
        let (errors,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sync_errors WHERE run_id = $1")
                .bind(&run.run_id)
                .fetch_one(store.pool())
                .await
                .map_err(StoreError::query("count a run's member errors"))?;
        *counts.entry(Concern::PushFailed).or_default() += u64::try_from(errors).unwrap_or(0);
        if wanted(Concern::PushFailed) && errors > 0 {
            let failed: Vec<MemberError> = sqlx::query_as(
                "SELECT member_key, email, code, message, created_at FROM sync_errors
                     WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(&run.run_id)
            .bind(limit)
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("read a run's member errors"))?;
            rows.extend(
                failed
                    .into_iter()
                    .map(|(member_key, email, code, message, at)| Attention {
                        concern: Concern::PushFailed,
                        audience: Some(run.audience.clone()),
                        member_key,
                        email,
                        why: format!("{code}: {message}"),
                        at,
                        run_id: Some(run.run_id.clone()),
                    }),
            );
        }
        // A report that cannot be read lists nothing; the run's page shows it as it is.
        let skipped = run
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str::<StoredReport>(r).ok())
            .map(|r| r.skipped)
            .unwrap_or_default();
        for note in skipped {
            let Some(concern) = Concern::of_skip(&note.code) else {
                continue;
            };
            *counts.entry(concern).or_default() += 1;
            if wanted(concern) {
                rows.push(Attention {
                    concern,
                    audience: Some(run.audience.clone()),
                    member_key: note.member_key,
                    email: note.email,
                    why: format!("{}: {}", note.code, note.message),
                    at: run.finished_at.clone(),
                    run_id: Some(run.run_id.clone()),
                });
            }
        }
    }

    let by_reason: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, COUNT(*) FROM suppressions WHERE lifted_at IS NULL GROUP BY reason",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("count suppressions"))?;
    for (reason, n) in &by_reason {
        *counts.entry(Concern::of_suppression(reason)).or_default() +=
            u64::try_from(*n).unwrap_or(0);
    }
    let suppression_concern = matches!(
        only,
        None | Some(Concern::Bounced | Concern::Complained | Concern::Rejected)
    );
    if suppression_concern {
        // The reasons of the concern asked for (a reason no concern names is a rejection).
        let (filter, reasons): (&str, Vec<&str>) = match only {
            None => ("", Vec::new()),
            Some(Concern::Rejected) => (
                "NOT IN",
                reason::ALL
                    .into_iter()
                    .filter(|r| Concern::of_suppression(r) != Concern::Rejected)
                    .collect(),
            ),
            Some(c) => (
                "IN",
                reason::ALL
                    .into_iter()
                    .filter(|r| Concern::of_suppression(r) == c)
                    .collect(),
            ),
        };
        let condition = if reasons.is_empty() {
            String::new()
        } else {
            format!(" AND reason {filter} ({})", placeholders(2, reasons.len()))
        };
        let mut q = sqlx::query_as::<_, suppressions::Suppression>(sqlx::AssertSqlSafe(format!(
            "SELECT email, reason, source, detail, created_at, lifted_at FROM suppressions
             WHERE lifted_at IS NULL{condition} ORDER BY created_at DESC LIMIT $1"
        )))
        .bind(limit);
        for r in reasons {
            q = q.bind(r);
        }
        let listed = q
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("read suppressions"))?;
        rows.extend(listed.into_iter().map(|s| Attention {
            concern: Concern::of_suppression(&s.reason),
            audience: None,
            member_key: None,
            why: match &s.detail {
                Some(d) => format!("{} from {}: {d}", s.reason, s.source),
                None => format!("{} from {}", s.reason, s.source),
            },
            email: Some(s.email),
            at: s.created_at,
            run_id: None,
        }));
    }

    let cleaned_where = "c.remote_status = 'cleaned' AND NOT EXISTS (
             SELECT 1 FROM suppressions s WHERE s.email = c.email AND s.lifted_at IS NULL)";
    let (cleaned,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM contacts c WHERE {cleaned_where}"
    )))
    .fetch_one(store.pool())
    .await
    .map_err(StoreError::query("count cleaned contacts"))?;
    *counts.entry(Concern::Cleaned).or_default() += u64::try_from(cleaned).unwrap_or(0);
    if wanted(Concern::Cleaned) && cleaned > 0 {
        let listed: Vec<(String, String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT c.audience, c.member_key, c.email, c.synced_at FROM contacts c
                 WHERE {cleaned_where} ORDER BY c.synced_at DESC LIMIT $1"
            )))
            .bind(limit)
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("read cleaned contacts"))?;
        rows.extend(
            listed
                .into_iter()
                .map(|(audience, member_key, email, at)| Attention {
                    concern: Concern::Cleaned,
                    audience: Some(audience),
                    member_key: Some(member_key),
                    email: Some(email),
                    why: "cleaned at the provider: the address bounced there".into(),
                    at,
                    run_id: None,
                }),
        );
    }

    rows.sort_by(|a, b| b.at.cmp(&a.at));
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    name_members(store, &mut rows).await?;
    let counts: Vec<(Concern, u64)> = Concern::ALL
        .iter()
        .map(|c| (*c, counts.get(c).copied().unwrap_or(0)))
        .collect();
    let total = counts
        .iter()
        .filter(|(c, _)| wanted(*c))
        .map(|(_, n)| n)
        .sum();
    Ok(AttentionList {
        rows,
        total,
        counts,
    })
}

/// A `sync_errors` row: member key, email, code, message, created_at.
type MemberError = (Option<String>, Option<String>, String, String, String);

/// The latest finished run of an audience, with its report.
struct LatestRun {
    run_id: String,
    audience: String,
    finished_at: String,
    report: Option<String>,
}

/// Each audience's latest run that finished its push (succeeded, or partly): each read from the
/// end of the audience's runs (`sync_runs_by_audience`), not from all of them.
async fn latest_runs(store: &Store) -> Result<Vec<LatestRun>, StoreError> {
    let audiences: Vec<(String,)> = sqlx::query_as("SELECT name FROM audiences ORDER BY name")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("read audiences"))?;
    let mut runs = Vec::with_capacity(audiences.len());
    for (audience,) in audiences {
        let run: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT run_id, finished_at, report FROM sync_runs
             WHERE audience = $1 AND dry_run = 0 AND status IN ('succeeded', 'partial')
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(&audience)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::query("read an audience's latest run"))?;
        if let Some((run_id, finished_at, report)) = run {
            runs.push(LatestRun {
                run_id,
                audience,
                finished_at: finished_at.unwrap_or_default(),
                report,
            });
        }
    }
    Ok(runs)
}

/// Fills in the audience and member of each row that names an address only (a suppression),
/// from the contacts that have that address (the first audience's, when several do).
async fn name_members(store: &Store, rows: &mut [Attention]) -> Result<(), StoreError> {
    let emails: Vec<String> = rows
        .iter()
        .filter(|r| r.member_key.is_none())
        .filter_map(|r| r.email.clone())
        .collect();
    if emails.is_empty() {
        return Ok(());
    }
    let audiences: Vec<(String,)> = sqlx::query_as("SELECT name FROM audiences ORDER BY name")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("read audiences"))?;
    let mut members: HashMap<String, (String, String)> = HashMap::new();
    for (audience,) in audiences {
        for chunk in emails.chunks(100) {
            let sql = format!(
                "SELECT email, member_key FROM contacts WHERE audience = $1 AND email IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q =
                sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql)).bind(&audience);
            for e in chunk {
                q = q.bind(e);
            }
            for (email, key) in q
                .fetch_all(store.pool())
                .await
                .map_err(StoreError::query("find members by address"))?
            {
                members
                    .entry(email)
                    .or_insert_with(|| (audience.clone(), key));
            }
        }
    }
    for row in rows.iter_mut().filter(|r| r.member_key.is_none()) {
        if let Some((audience, key)) = row.email.as_ref().and_then(|e| members.get(e)) {
            row.audience = Some(audience.clone());
            row.member_key = Some(key.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every skip code a sync writes lands in a concern, but a consent hold, which needs nothing.
    #[test]
    fn skips_and_suppressions_have_their_concern() {
        for (code, want) in [
            ("opted_out", None),
            ("invalid_email", Some(Concern::InvalidAddress)),
            ("blank_email", Some(Concern::InvalidAddress)),
            ("missing_email", Some(Concern::InvalidAddress)),
            ("duplicate_email", Some(Concern::DuplicateAddress)),
            ("missing_member_key", Some(Concern::BadRow)),
            ("duplicate_member_key", Some(Concern::BadRow)),
        ] {
            assert_eq!(Concern::of_skip(code), want, "{code}");
        }
        for (r, want) in [
            (reason::HARD_BOUNCE, Concern::Bounced),
            (reason::SOFT_BOUNCE, Concern::Bounced),
            (reason::SPAM_COMPLAINT, Concern::Complained),
            (reason::REJECTED, Concern::Rejected),
        ] {
            assert_eq!(Concern::of_suppression(r), want, "{r}");
        }
        for c in Concern::ALL {
            assert_eq!(Concern::parse(c.as_str()), Some(c));
        }
    }
}
