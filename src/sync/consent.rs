//! The consent rule (DESIGN.md invariants 1 and 10) in one place: the [`Planner`](super::plan::Planner)
//! calls it for the dry run and the real run alike, so `--dry-run` shows what the run will push.
//! [`ConsentFacts`] gathers the inputs once per pass (the only effect here); [`rule`] decides one
//! member over plain data; [`ConsentFacts::judge`] applies it to the diff's action for a row;
//! [`ConsentFacts::observe`] says what a real run records about the row's consent column.
//!
//! Never `subscribed` for an address the provider has as unsubscribed or cleaned, nor for a
//! suppressed one; cleaned and complained addresses are never pushed again. A re-consent after an
//! unsubscribe is pushed as `pending` (the provider asks the person to confirm), and only with
//! evidence that the member gave consent *after* the unsubscribe, the row saying consent given
//! now and either
//! - (a) the mapped `consent_at` column later than the unsubscribe, or
//! - (b) a stored observation "consent withheld" (`consent_seen.withheld_at`, written by real
//!   sync runs) later than the unsubscribe.
//!
//! The unsubscribe is the provider's latest status event for the address (its time is the
//! provider's); a contact the state DB has as unsubscribed without such an event has an
//! unsubscribe of unknown time, which no evidence can follow. The row's `updated_at` is never
//! evidence: any profile edit moves it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::diff::{Action, ArchiveReason, SkipReason};
use super::plan::Push;
use crate::config::AudienceConfig;
use crate::domain::WriteStatus;
use crate::domain::parse_time;
use crate::domain::{Consent, EmailError, MemberKey, SubscriptionStatus};
use crate::events::{self, ProviderMark};
use crate::mapping::{CompiledAudience, CompiledSource, Contact};
use crate::source::Value;
use crate::store::consent_seen::SeenConsent;
use crate::store::contacts::ContactState;
use crate::store::{Store, StoreError};

/// Why the rule holds a member back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The provider refused the address as invalid; held until the member row changes.
    RefusedAddress,
    /// Cleaned, complained or suppressed: never pushed again.
    Cleaned,
    /// Unsubscribed, with no evidence of a consent given after it.
    Unsubscribed,
}

/// What may be pushed for one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Push(WriteStatus),
    /// Pending at the provider: write everything but the status (PUT with `status_if_new`), so
    /// it stays pending, or stays subscribed once the person confirmed.
    KeepStatus,
    Hold(Hold),
}

/// Evidence of a consent given in the member DB, for a row that says consent given now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// (a) The mapped `consent_at` column.
    pub consent_at: Option<DateTime<Utc>>,
    /// (b) The latest time a sync saw the member's consent withheld.
    pub withheld_seen_at: Option<DateTime<Utc>>,
}

impl Evidence {
    /// Whether consent was given after an opt-out at `opted_out` (of unknown time: never).
    pub fn after(&self, opted_out: Option<DateTime<Utc>>) -> bool {
        let Some(o) = opted_out else {
            return false;
        };
        self.consent_at.is_some_and(|c| c > o) || self.withheld_seen_at.is_some_and(|w| w > o)
    }
}

/// What the rule knows about one member whose row gives consent (the diff archives or ignores
/// the others), as plain data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Case<'a> {
    /// The provider refused this address, as the row renders now, as invalid.
    pub refused_address: bool,
    /// The address is on the suppression list.
    pub suppressed: bool,
    /// The provider's latest status event for the address.
    pub mark: Option<&'a ProviderMark>,
    /// The status the state DB has for the member's contact (`None`: no contact yet).
    pub remote: Option<SubscriptionStatus>,
    pub evidence: Evidence,
}

/// The consent rule for one member.
pub fn rule(case: &Case<'_>) -> Decision {
    if case.refused_address {
        return Decision::Hold(Hold::RefusedAddress);
    }
    if case.suppressed || case.remote == Some(SubscriptionStatus::Cleaned) {
        return Decision::Hold(Hold::Cleaned);
    }
    let mark = case.mark.map(|m| (m.event_type.as_str(), m.occurred_at));
    match mark {
        Some(("cleaned" | "complained", _)) => return Decision::Hold(Hold::Cleaned),
        Some(("unsubscribed", at)) => {
            return if case.evidence.after(at) {
                Decision::Push(WriteStatus::Pending)
            } else {
                Decision::Hold(Hold::Unsubscribed)
            };
        }
        _ => {}
    }
    // Unsubscribed at the provider without a dated unsubscribe event for this address: there is
    // no time a consent could be later than.
    if case.remote == Some(SubscriptionStatus::Unsubscribed) {
        return Decision::Hold(Hold::Unsubscribed);
    }
    if matches!(mark, Some(("pending", _))) || case.remote == Some(SubscriptionStatus::Pending) {
        return Decision::KeepStatus;
    }
    Decision::Push(WriteStatus::Subscribed)
}

/// A member row after the consent rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    /// Push this contact.
    Push(Push),
    /// Whatever the diff decided (unchanged, archive, skip, ignore), or a member held back.
    Other(Action),
}

/// Everything the rule reads about one audience, gathered once per pass.
#[derive(Debug, Default)]
pub struct ConsentFacts {
    /// Address → the provider's latest status event.
    pub marks: HashMap<String, ProviderMark>,
    /// Suppressed addresses (not lifted) and the reason each was added for.
    pub suppressed: HashMap<String, String>,
    /// Member → content hash the provider refused as an invalid address.
    pub invalid: HashMap<MemberKey, String>,
    /// Contacts pending or unsubscribed at the provider: member → (address, status). The
    /// contacts stream past the planner, so it holds the one of the member row being planned
    /// ([`ConsentFacts::hold_row`]): the rule reads no other.
    pub held: HashMap<MemberKey, (String, SubscriptionStatus)>,
    /// What earlier real runs saw in the consent column.
    pub seen: HashMap<MemberKey, SeenConsent>,
    /// Addresses that opted out with one-click unsubscribe (relay mail), and when: an
    /// unsubscribe from every audience, as binding as the provider's own.
    pub opted_out: HashMap<String, DateTime<Utc>>,
}

impl ConsentFacts {
    /// Reads the facts for `audience`.
    pub async fn load(
        store: &Store,
        audience: &AudienceConfig,
    ) -> Result<ConsentFacts, StoreError> {
        Ok(ConsentFacts {
            marks: events::provider_marks(store, audience.provider.as_str(), &audience.list_id)
                .await?,
            suppressed: events::suppressed(store).await?,
            invalid: invalid_errors(store, &audience.name).await?,
            held: HashMap::new(),
            seen: store.consent_seen(&audience.name).await?,
            opted_out: events::opt_out::opted_out(store).await?,
        })
    }

    /// Before a member row is judged: its contact as the state DB has it, if any, is the one
    /// [`ConsentFacts::held`] holds when it is pending or unsubscribed.
    pub fn hold_row(&mut self, contact: Option<(&MemberKey, &ContactState)>) {
        if !self.held.is_empty() {
            self.held.clear();
        }
        if let Some((key, c)) = contact
            && is_held(c.remote_status)
        {
            self.held
                .insert(key.clone(), (c.email.to_string(), c.remote_status));
        }
    }

    fn evidence(&self, key: &MemberKey, source: &CompiledSource, row: &[Value]) -> Evidence {
        Evidence {
            consent_at: source.consent_at(row).as_deref().and_then(consent_time),
            withheld_seen_at: self.seen.get(key).map(|s| s.withheld_at),
        }
    }

    fn decide(
        &self,
        contact: &Contact,
        remote: Option<SubscriptionStatus>,
        evidence: Evidence,
    ) -> Decision {
        let email = contact.email.as_str();
        let one_click = self.one_click_mark(email);
        rule(&Case {
            refused_address: self
                .invalid
                .get(&contact.member_key)
                .is_some_and(|h| *h == contact.content_hash()),
            suppressed: self.suppressed.contains_key(email),
            mark: one_click.as_ref().or(self.marks.get(email)),
            remote,
            evidence,
        })
    }

    /// A one-click opt-out of `email` as the unsubscribe the rule weighs, when it is later than
    /// what the provider last said of the address (else the provider's mark stands).
    fn one_click_mark(&self, email: &str) -> Option<ProviderMark> {
        let at = *self.opted_out.get(email)?;
        let provider = self.marks.get(email);
        if provider.is_some_and(|m| m.occurred_at.is_some_and(|t| t >= at)) {
            return None;
        }
        Some(ProviderMark {
            event_type: "unsubscribed".to_owned(),
            occurred_at: Some(at),
        })
    }

    /// Whether [`ConsentFacts::judge`] reads a live contact's address: only a suppressed or
    /// one-click unsubscribed one (the planner passes `live` for those alone).
    pub fn reads_live(&self, email: &str) -> bool {
        self.suppressed.contains_key(email) || self.opted_out.contains_key(email)
    }

    /// Applies the rule to the diff's action for one member row. `live` is the member's contact
    /// as the provider has it before this run, when it is live there (its address, identity
    /// form): a suppressed address leaves every audience it is in, whatever the row says
    /// (invariant 8: no mail from any path).
    pub fn judge(
        &self,
        action: Action,
        live: Option<(MemberKey, String)>,
        row: &[Value],
        source: &CompiledSource,
        audience: &CompiledAudience,
    ) -> Judged {
        if let Some((member_key, email)) = &live
            && let Some(why) = self.suppressed.get(email)
        {
            return Judged::Other(Action::Archive {
                member_key: member_key.clone(),
                email: email.clone(),
                reason: ArchiveReason::Suppressed(why.clone()),
            });
        }
        // A live contact whose address opted out with one-click unsubscribe leaves the audience,
        // unless the member gave consent again after it (then the rule below re-subscribes
        // through the provider's confirmation).
        if let Some((member_key, email)) = &live
            && let Some(at) = self.opted_out.get(email)
            && !self.evidence(member_key, source, row).after(Some(*at))
        {
            return Judged::Other(Action::Archive {
                member_key: member_key.clone(),
                email: email.clone(),
                reason: ArchiveReason::Unsubscribed,
            });
        }
        let (contact, create, previous_email, remote) = match action {
            Action::Create(contact) => (contact, true, None, None),
            Action::Update {
                contact,
                previous_email,
            } => {
                let remote = self.held.get(&contact.member_key).map(|(_, s)| *s);
                (contact, false, previous_email, remote)
            }
            Action::Skip {
                member_key: Some(key),
                email,
                reason: SkipReason::OptedOut(SubscriptionStatus::Unsubscribed),
            } => match self.reconsent_candidate(&key, row, source, audience) {
                Some(contact) => (contact, false, None, Some(SubscriptionStatus::Unsubscribed)),
                None => {
                    return Judged::Other(Action::Skip {
                        member_key: Some(key),
                        email,
                        reason: SkipReason::OptedOut(SubscriptionStatus::Unsubscribed),
                    });
                }
            },
            other => return Judged::Other(other),
        };
        let evidence = self.evidence(&contact.member_key, source, row);
        let status = match self.decide(&contact, remote, evidence) {
            Decision::Push(status) => Some(status),
            Decision::KeepStatus => None,
            Decision::Hold(hold) => return Judged::Other(hold_action(&contact, hold)),
        };
        Judged::Push(Push {
            contact,
            create,
            previous_email,
            status,
        })
    }

    /// The contact of a member unsubscribed at the provider, for the rule to judge: only at the
    /// address that unsubscribed (a new address would only rename the unsubscribed member, on
    /// every run).
    fn reconsent_candidate(
        &self,
        key: &MemberKey,
        row: &[Value],
        source: &CompiledSource,
        audience: &CompiledAudience,
    ) -> Option<Contact> {
        let (stored_email, _) = self.held.get(key)?;
        let email = source.email(row).ok()?;
        if email.as_str() != stored_email {
            return None;
        }
        audience.render(key.clone(), email, row).ok()
    }

    /// What a real run records about a member row's consent column (`None`: nothing to write).
    /// `email` gives the row's address (identity form), if it has a valid one (asked only for a
    /// member still withheld); `now` is when the row was read (not later).
    pub fn observe(
        &self,
        key: &MemberKey,
        consent: Consent,
        email: impl FnOnce() -> Option<String>,
        now: DateTime<Utc>,
    ) -> Option<SeenConsent> {
        let before = self.seen.get(key);
        match (consent, before) {
            (Consent::Given, Some(b)) if b.consent == Consent::Withheld => Some(SeenConsent {
                consent,
                seen_at: now,
                withheld_at: b.withheld_at,
            }),
            (Consent::Given, _) => None,
            (Consent::Withheld, Some(b))
                if b.consent == Consent::Withheld
                    && !self.unsubscribed_since(key, email().as_deref(), b.withheld_at) =>
            {
                None
            }
            (Consent::Withheld, _) => Some(SeenConsent {
                consent,
                seen_at: now,
                withheld_at: now,
            }),
        }
    }

    /// Whether an unsubscribe of the member's address (as the row has it, or as the provider
    /// has it) is dated at or after `t`: then the stored "withheld" must move past it.
    fn unsubscribed_since(&self, key: &MemberKey, email: Option<&str>, t: DateTime<Utc>) -> bool {
        let stored = self.held.get(key).map(|(e, _)| e.as_str());
        [email, stored].into_iter().flatten().any(|e| {
            self.marks.get(e).is_some_and(|m| {
                m.event_type == "unsubscribed" && m.occurred_at.is_some_and(|o| o >= t)
            })
        })
    }
}

/// The skip a hold is reported as.
fn hold_action(contact: &Contact, hold: Hold) -> Action {
    Action::Skip {
        member_key: Some(contact.member_key.clone()),
        email: Some(contact.email.original().to_owned()),
        reason: match hold {
            Hold::RefusedAddress => SkipReason::Email(EmailError::Invalid(
                contact.email.original().to_owned(),
                "the provider refused this address; it is skipped until the member row changes",
            )),
            Hold::Cleaned => SkipReason::OptedOut(SubscriptionStatus::Cleaned),
            Hold::Unsubscribed => SkipReason::OptedOut(SubscriptionStatus::Unsubscribed),
        },
    }
}

/// A `consent_at` value: a timestamp as the member DB spells it (without a zone: UTC), or a
/// date, taken as its first instant (UTC), so a consent dated the day of an unsubscribe is not
/// later than it. Anything else is no evidence.
fn consent_time(value: &str) -> Option<DateTime<Utc>> {
    parse_time(value).or_else(|| {
        chrono::NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
    })
}

/// The contacts the rule reads: pending or unsubscribed at the provider.
fn is_held(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Pending | SubscriptionStatus::Unsubscribed
    )
}

async fn invalid_errors(
    store: &Store,
    audience: &str,
) -> Result<HashMap<MemberKey, String>, StoreError> {
    let rows: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT member_key, content_hash FROM sync_errors WHERE audience = $1 AND content_hash IS NOT NULL ORDER BY id",
    )
    .bind(audience)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read refused addresses"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, h)| Some((MemberKey::parse(&k?)?, h)))
        .collect())
}

#[cfg(test)]
mod tests;
