//! The engine's requests in Constant Contact's terms: what [`crate::providers::Provider`] asks
//! and how each answer reads in the engine's types (outcomes per member, pages with opaque
//! tokens, changes to record as events, and what a recorded event means).

use chrono::{DateTime, Utc};

use super::{Bounce, ConstantContactClient, ConstantContactError, OptOut, OptOutSource};
use crate::domain::{SubscriptionStatus, WriteStatus};
use crate::mapping::Contact;
use crate::providers::{
    Archive, ChangesPage, EventMeaning, MemberRefusal, MembersPage, RemoteChange, RemoteField,
    UpsertOutcome,
};

/// The name events from Constant Contact are stored under.
pub const PROVIDER: &str = "constant_contact";

/// The page token of the bounce stage of [`ConstantContactClient::changes_page`].
const BOUNCES: &str = "bounces";
/// The prefix of a page token that continues the opt-outs at a `_links.next.href`.
const OPT_OUTS: &str = "optouts:";

/// What a stored Constant Contact event means. Opt-outs are list events (the contact is off the
/// list); a hard bounce (codes B and S) is a cleaned address; other bounces are soft, and count
/// towards `[server] soft_bounce_threshold`.
pub fn event_meaning(kind: &str) -> EventMeaning {
    match kind {
        "subscribed" => EventMeaning::Subscribed,
        "pending" => EventMeaning::Pending,
        "unsubscribed" => EventMeaning::Unsubscribed { from_list: true },
        "cleaned" => EventMeaning::Cleaned { abuse: false },
        "soft_bounce" => EventMeaning::SoftBounce,
        _ => EventMeaning::Nothing,
    }
}

/// Activity polls expected per import or removal (the poll backs off from 100 ms; an import of
/// 40,000 contacts takes the vendor seconds to minutes, so this is a floor).
const POLLS_PER_ACTIVITY: u64 = 3;

/// A run's calls at Constant Contact: the pull (one opt-out page, the campaigns since the last
/// pull), the custom fields, an import per 40,000 members and its polls, a lookup and a PUT per
/// address change, a lookup per archive and a removal per 500 with its polls.
pub fn estimate_calls(
    pushes: u64,
    address_changes: u64,
    archives: u64,
) -> crate::providers::CallEstimate {
    let imports = pushes
        .saturating_sub(address_changes)
        .div_ceil(super::MAX_IMPORT_CONTACTS as u64);
    let removals = archives.div_ceil(super::MAX_REMOVE_CONTACTS as u64);
    crate::providers::CallEstimate {
        read: 2 + 1 + (imports + removals) * POLLS_PER_ACTIVITY + address_changes + archives,
        write: imports + removals + address_changes,
    }
}

/// Where today's request budget stands, as the state DB counts it (read-only).
pub async fn budget_use(
    config: &crate::config::ConstantContactConfig,
    store: &crate::store::Store,
) -> Result<crate::providers::BudgetUse, crate::store::StoreError> {
    let now = store.now();
    let used = store
        .api_budget_used(super::limits::BUDGET_PROVIDER, now.date_naive())
        .await?;
    Ok(crate::providers::BudgetUse {
        used_today: used,
        daily_budget: u64::from(config.daily_budget),
        resets_at: super::next_midnight(now).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// Why a re-consent is not imported: an import re-subscribes a contact who unsubscribed without
/// asking them (the vendor documents it), which the consent rule forbids.
fn needs_opt_in() -> MemberRefusal {
    MemberRefusal {
        code: "needs_opt_in".to_owned(),
        message: "the contact unsubscribed at Constant Contact, and an import would re-subscribe them without asking: only they can opt in again (a Constant Contact sign-up form, or its re-subscribe email)".to_owned(),
        invalid_address: false,
    }
}

impl ConstantContactClient {
    /// The engine's batch upsert: subscribed members imported, unsubscribed ones removed from
    /// the list, a re-consent after an unsubscribe (`pending`) refused (see [`needs_opt_in`]).
    pub async fn upsert_contacts(
        &self,
        list_id: &str,
        members: &[(&Contact, WriteStatus)],
    ) -> Result<Vec<UpsertOutcome>, ConstantContactError> {
        let sent: Vec<(usize, (&Contact, WriteStatus))> = members
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, (_, status))| *status != WriteStatus::Pending)
            .collect();
        let batch: Vec<(&Contact, WriteStatus)> = sent.iter().map(|(_, m)| *m).collect();
        let done = if batch.is_empty() {
            Vec::new()
        } else {
            self.import_contacts(list_id, &batch).await?
        };
        let mut outcomes: Vec<UpsertOutcome> = members
            .iter()
            .map(|_| UpsertOutcome::Refused(needs_opt_in()))
            .collect();
        for ((i, _), outcome) in sent.into_iter().zip(done) {
            outcomes[i] = outcome;
        }
        Ok(outcomes)
    }

    /// Removes each address from the list; what each removal found, in order.
    pub async fn archive_many(
        &self,
        list_id: &str,
        emails: &[&str],
    ) -> Result<Vec<Archive>, ConstantContactError> {
        let removed = self.remove_from_list(list_id, emails).await?;
        Ok(removed.into_iter().map(|(_, archive)| archive).collect())
    }

    /// The account's custom fields as the mapping's fields: the mapping's tag is the label.
    pub async fn fields_by_tag(&self) -> Result<Vec<RemoteField>, ConstantContactError> {
        Ok(self
            .custom_fields()
            .await?
            .into_iter()
            .map(|f| RemoteField {
                tag: f.label,
                name: f.name,
                kind: f.kind,
            })
            .collect())
    }

    /// One page of the list's members with `status` (`--full` reads them all). Constant Contact
    /// has no cleaned status at the contact (bounces are per campaign): that page is empty.
    pub async fn members_page(
        &self,
        list_id: &str,
        status: SubscriptionStatus,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<MembersPage, ConstantContactError> {
        let filter = match status {
            SubscriptionStatus::Subscribed => "active",
            SubscriptionStatus::Pending => "pending_confirmation",
            SubscriptionStatus::Unsubscribed => "unsubscribed",
            _ => {
                return Ok(MembersPage {
                    members: Vec::new(),
                    next: None,
                });
            }
        };
        let (members, next) = self
            .contacts_page(list_id, filter, since, page.map(str::to_owned))
            .await?;
        Ok(MembersPage { members, next })
    }

    /// One page of what changed since `since`: the list's opt-outs (by `optout_after`, page by
    /// page), then the bounces of the campaigns sent since (hard ones as cleaned addresses; an
    /// auto-reply, code V, is no bounce and is left out).
    pub async fn changes_page(
        &self,
        list_id: &str,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<ChangesPage, ConstantContactError> {
        if page == Some(BOUNCES) {
            let bounces = self
                .bounces_since(since.unwrap_or(DateTime::UNIX_EPOCH))
                .await?;
            return Ok(ChangesPage {
                changes: bounces.iter().filter_map(bounce_change).collect(),
                next: None,
            });
        }
        let href = page
            .and_then(|p| p.strip_prefix(OPT_OUTS))
            .map(str::to_owned);
        let (opt_outs, next) = self.opt_outs_page(list_id, since, href).await?;
        Ok(ChangesPage {
            changes: opt_outs.iter().map(opt_out_change).collect(),
            next: Some(next.map_or_else(|| BOUNCES.to_owned(), |n| format!("{OPT_OUTS}{n}"))),
        })
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn opt_out_change(o: &OptOut) -> RemoteChange {
    let m = &o.member;
    RemoteChange {
        email: m.email_address.clone(),
        event_type: "unsubscribed",
        at: m.last_changed,
        reason: m.unsubscribe_reason.clone().filter(|r| !r.is_empty()),
        payload: serde_json::json!({
            "contact_id": m.id,
            "permission_to_send": "unsubscribed",
            "opt_out_source": o.source.map(|s| match s {
                OptOutSource::Contact => "Contact",
                OptOutSource::Account => "Account",
            }),
            "opt_out_date": m.last_changed.map(rfc3339),
            "opt_out_reason": m.unsubscribe_reason,
        }),
    }
}

fn bounce_change(b: &Bounce) -> Option<RemoteChange> {
    let event_type = match b.code.as_str() {
        "V" => return None,
        _ if b.is_hard() => "cleaned",
        _ => "soft_bounce",
    };
    Some(RemoteChange {
        email: b.email.clone(),
        event_type,
        at: Some(b.at),
        reason: Some(if b.is_hard() {
            "hard".to_owned()
        } else {
            format!("bounce code {}", b.code)
        }),
        payload: serde_json::json!({
            "campaign_activity_id": b.activity_id,
            "bounce_code": b.code,
            "created_time": rfc3339(b.at),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounce(code: &str) -> Bounce {
        Bounce {
            email: "a@example.org".into(),
            code: code.into(),
            at: DateTime::UNIX_EPOCH,
            activity_id: "act".into(),
        }
    }

    #[test]
    fn a_dry_run_counts_an_import_per_40000_members_and_a_removal_per_500() {
        let e = estimate_calls(100_000, 0, 0);
        assert_eq!(e.write, 3, "ceil(100,000 / 40,000) imports");
        assert_eq!(e.read, 3 + 3 * POLLS_PER_ACTIVITY);
        let e = estimate_calls(10, 2, 501);
        // 8 members in one import, 2 address changes one by one, 2 removals.
        assert_eq!(e.write, 1 + 2 + 2);
        assert_eq!(e.read, 3 + 3 * POLLS_PER_ACTIVITY + 2 + 501);
        assert_eq!(estimate_calls(0, 0, 0).write, 0);
    }

    #[test]
    fn hard_bounces_clean_the_address_soft_ones_count_and_auto_replies_are_no_bounce() {
        for code in ["B", "S"] {
            let c = bounce_change(&bounce(code)).unwrap();
            assert_eq!(c.event_type, "cleaned", "{code}");
            assert_eq!(
                event_meaning(c.event_type),
                EventMeaning::Cleaned { abuse: false }
            );
        }
        for code in ["D", "F", "X", "Z"] {
            let c = bounce_change(&bounce(code)).unwrap();
            assert_eq!(c.event_type, "soft_bounce", "{code}");
            assert_eq!(event_meaning(c.event_type), EventMeaning::SoftBounce);
        }
        assert_eq!(bounce_change(&bounce("V")), None);
        assert_eq!(
            event_meaning("unsubscribed"),
            EventMeaning::Unsubscribed { from_list: true }
        );
        assert_eq!(event_meaning("opened"), EventMeaning::Nothing);
    }
}
