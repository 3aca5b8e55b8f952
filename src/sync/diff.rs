//! The diff: desired contacts (member rows rendered through the mapping) against what the state
//! DB says the provider has. Pure: member rows in, one [`Action`] per row out, then the archives
//! for members that disappeared from the member DB.
//!
//! Rules (documented in the README):
//! - a member in the audience with consent and a valid, unique address is created when the state
//!   DB has no contact for it, updated when its content hash differs, unchanged otherwise;
//! - a synced member who left the audience or withdrew consent is archived, and so is a synced
//!   member who is no longer in the member DB;
//! - a member whose contact is unsubscribed or cleaned at the provider is never pushed again
//!   (skipped as `opted_out`; invariant 1);
//! - NULL, blank or invalid addresses and unrenderable fields are skipped with the reason; the
//!   contact, if any, is left alone (no archive on a typo);
//! - two members with the same address (identity form) in one audience: the member with the
//!   lowest member key (the first in the ordered stream) keeps it; the others are skipped as
//!   `duplicate_email`, naming the member that kept it.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::domain::{EmailError, MemberKey, SubscriptionStatus};
use crate::mapping::{CompiledAudience, CompiledSource, Contact, RenderError, Selection};
use crate::source::Value;
use crate::store::contacts::{ContactMap, ContactState};

/// Why a synced member is archived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveReason {
    LeftAudience,
    WithdrewConsent,
    RemovedFromMemberDb,
    /// The address the provider has is on the suppression list (the reason it was added for:
    /// hard_bounce, spam_complaint, soft_bounce, …): it gets no mail from any path.
    Suppressed(String),
    /// The address opted out with one-click unsubscribe (RFC 8058) from relay mail.
    Unsubscribed,
}

impl ArchiveReason {
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveReason::LeftAudience => "left_audience",
            ArchiveReason::WithdrewConsent => "withdrew_consent",
            ArchiveReason::RemovedFromMemberDb => "removed_from_member_db",
            ArchiveReason::Suppressed(_) => "suppressed",
            ArchiveReason::Unsubscribed => "one_click_unsubscribe",
        }
    }
}

/// Why a member row is not pushed.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipReason {
    MissingKey,
    DuplicateKey,
    Email(EmailError),
    Field(RenderError),
    DuplicateEmail { kept_by: MemberKey },
    OptedOut(SubscriptionStatus),
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::MissingKey => "missing_member_key",
            SkipReason::DuplicateKey => "duplicate_member_key",
            SkipReason::Email(e) => e.code(),
            SkipReason::Field(e) => e.code(),
            SkipReason::DuplicateEmail { .. } => "duplicate_email",
            SkipReason::OptedOut(_) => "opted_out",
        }
    }

    /// Invalid input (counted in `skipped_invalid`), as opposed to a consent hold.
    pub fn is_invalid(&self) -> bool {
        !matches!(self, SkipReason::OptedOut(_))
    }

    pub fn message(&self) -> String {
        match self {
            SkipReason::MissingKey => "the member key column is NULL or blank".into(),
            SkipReason::DuplicateKey => {
                "the source query returned this member key more than once".into()
            }
            SkipReason::Email(e) => e.to_string(),
            SkipReason::Field(e) => e.to_string(),
            SkipReason::DuplicateEmail { kept_by } => {
                format!("same address as member {kept_by}, who keeps it")
            }
            SkipReason::OptedOut(s) => {
                format!("the contact is {s} at the provider; only the person can subscribe again")
            }
        }
    }
}

/// What to do about one member.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Create(Contact),
    Update {
        contact: Contact,
        /// The address the provider has, when the member's address changed.
        previous_email: Option<String>,
    },
    Unchanged,
    Archive {
        member_key: MemberKey,
        email: String,
        reason: ArchiveReason,
    },
    Skip {
        member_key: Option<MemberKey>,
        email: Option<String>,
        reason: SkipReason,
    },
    /// Not in the audience and never synced: nothing to do.
    Ignore,
}

/// Diffs one audience, a member row at a time.
pub struct Differ<'a> {
    source: &'a CompiledSource,
    audience: &'a CompiledAudience,
    state: ContactMap,
    /// Identity hash of each address already taken in this run → the member who took it.
    emails: HashMap<u128, Box<str>>,
    last_key: Option<MemberKey>,
    ignore_hashes: bool,
}

fn email_id(identity: &str) -> u128 {
    let d = Sha256::digest(identity.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

impl<'a> Differ<'a> {
    /// `ignore_hashes` (`--full`) plans an update for every synced contact still wanted.
    pub fn new(
        source: &'a CompiledSource,
        audience: &'a CompiledAudience,
        state: ContactMap,
        ignore_hashes: bool,
    ) -> Differ<'a> {
        Differ {
            source,
            audience,
            state,
            emails: HashMap::new(),
            last_key: None,
            ignore_hashes,
        }
    }

    pub fn audience(&self) -> &CompiledAudience {
        self.audience
    }

    /// How many contacts the state DB holds that are live at the provider (not archived or
    /// opted out), before this run: the base for the mass-archive guardrail.
    pub fn live_contacts(&self) -> usize {
        self.state
            .values()
            .filter(|s| is_live(s.remote_status))
            .count()
    }

    /// The member's contact, when the provider has it live (subscribed, pending or
    /// transactional) and this run has not looked at it yet: its address (identity form).
    pub fn live_email(&self, key: &MemberKey) -> Option<&str> {
        self.state
            .get(key)
            .filter(|s| is_live(s.remote_status))
            .map(|s| &*s.email)
    }

    /// Decides what to do about one member row. Rows must come ordered by member key.
    pub fn observe(&mut self, row: &[Value]) -> Action {
        let raw_email = || self.source.raw_email(row).map(|e| e.into_owned());
        let Some(key) = self.source.member_key(row) else {
            return Action::Skip {
                member_key: None,
                email: raw_email(),
                reason: SkipReason::MissingKey,
            };
        };
        if self.last_key.as_ref() == Some(&key) {
            return Action::Skip {
                member_key: Some(key),
                email: raw_email(),
                reason: SkipReason::DuplicateKey,
            };
        }
        self.last_key = Some(key.clone());
        let state = self.state.take(&key);

        let selection = self.audience.select(self.source, row);
        if selection != Selection::In {
            return match state {
                Some(s) if is_live(s.remote_status) => Action::Archive {
                    member_key: key,
                    email: s.email.into_string(),
                    reason: if selection == Selection::NoConsent {
                        ArchiveReason::WithdrewConsent
                    } else {
                        ArchiveReason::LeftAudience
                    },
                },
                _ => Action::Ignore,
            };
        }

        let email = match self.source.email(row) {
            Ok(e) => e,
            Err(e) => {
                return Action::Skip {
                    member_key: Some(key),
                    email: raw_email(),
                    reason: SkipReason::Email(e),
                };
            }
        };
        let id = email_id(email.as_str());
        if let Some(kept_by) = self.emails.get(&id) {
            let kept_by = MemberKey::parse(kept_by).unwrap_or_else(|| key.clone());
            return Action::Skip {
                member_key: Some(key),
                email: Some(email.original().to_owned()),
                reason: SkipReason::DuplicateEmail { kept_by },
            };
        }
        self.emails.insert(id, key.as_str().into());

        let contact = match self.audience.render(key.clone(), email, row) {
            Ok(c) => c,
            Err(e) => {
                return Action::Skip {
                    member_key: Some(key),
                    email: raw_email(),
                    reason: SkipReason::Field(e),
                };
            }
        };
        match state {
            None => Action::Create(contact),
            Some(s) if s.remote_status.is_opted_out() => Action::Skip {
                member_key: Some(key),
                email: Some(contact.email.original().to_owned()),
                reason: SkipReason::OptedOut(s.remote_status),
            },
            Some(s) => {
                let same =
                    s.content_hash.matches(&contact.content_hash()) && is_live(s.remote_status);
                if same && !self.ignore_hashes {
                    Action::Unchanged
                } else {
                    let previous_email =
                        (&*s.email != contact.email.as_str()).then(|| s.email.into_string());
                    Action::Update {
                        contact,
                        previous_email,
                    }
                }
            }
        }
    }

    /// Archives for synced members that the member DB no longer returns.
    pub fn finish(self) -> Vec<Action> {
        let mut gone: Vec<(MemberKey, ContactState)> = self
            .state
            .into_iter()
            .filter(|(_, s)| is_live(s.remote_status))
            .collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        gone.into_iter()
            .map(|(member_key, s)| Action::Archive {
                member_key,
                email: s.email.into_string(),
                reason: ArchiveReason::RemovedFromMemberDb,
            })
            .collect()
    }
}

/// A contact the provider will still mail (or may, once confirmed).
fn is_live(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Subscribed
            | SubscriptionStatus::Pending
            | SubscriptionStatus::Transactional
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use std::path::Path;

    const MAPPING: &str = include_str!("../../mappings/members.toml");

    fn cols() -> Vec<String> {
        crate::mapping::SHIPPED_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub(in crate::sync) fn row(
        id: i64,
        email: Option<&str>,
        membership: &str,
        newsletter: bool,
    ) -> Vec<Value> {
        vec![
            Value::Int(id),
            email.map_or(Value::Null, |e| Value::Text(e.into())),
            Value::Text("Ann".into()),
            Value::Text("Lee".into()),
            Value::Text(membership.into()),
            Value::Bool(newsletter),
            Value::Text("ok".into()),
            Value::Text("2026-01-01 00:00:00".into()),
        ]
    }

    pub(in crate::sync) struct Fixture {
        pub source: CompiledSource,
        pub audience: CompiledAudience,
    }

    pub(in crate::sync) fn fixture() -> Fixture {
        let m = Mapping::from_str(Path::new("m.toml"), MAPPING).unwrap();
        Fixture {
            source: m.compile_source(&cols()).unwrap(),
            audience: m
                .compile_audience(m.audience("newsletter").unwrap(), &cols())
                .unwrap(),
        }
    }

    impl Fixture {
        /// A differ whose state holds `contacts`, each synced before with its status.
        fn differ(
            &self,
            contacts: &[(&[Value], SubscriptionStatus)],
            ignore_hashes: bool,
        ) -> Differ<'_> {
            let state = contacts.iter().map(|(r, s)| synced(self, r, *s)).collect();
            Differ::new(&self.source, &self.audience, state, ignore_hashes)
        }
    }

    pub(in crate::sync) fn synced(
        f: &Fixture,
        r: &[Value],
        status: SubscriptionStatus,
    ) -> (MemberKey, ContactState) {
        let key = f.source.member_key(r).unwrap();
        let c = f
            .audience
            .render(key.clone(), f.source.email(r).unwrap(), r)
            .unwrap();
        (
            key,
            ContactState {
                email: c.email.as_str().into(),
                content_hash: crate::store::contacts::StoredHash::from_hex(&c.content_hash()),
                remote_status: status,
            },
        )
    }

    #[test]
    fn create_update_unchanged() {
        let f = fixture();
        let same = row(1, Some("a@x.org"), "full", true);
        let changed_before = row(2, Some("b@x.org"), "full", true);
        let changed_after = row(2, Some("b@x.org"), "family", true);
        let mut d = f.differ(
            &[
                (&same, SubscriptionStatus::Subscribed),
                (&changed_before, SubscriptionStatus::Subscribed),
            ],
            false,
        );
        assert_eq!(d.observe(&same), Action::Unchanged);
        assert!(matches!(
            d.observe(&changed_after),
            Action::Update {
                previous_email: None,
                ..
            }
        ));
        assert!(
            matches!(d.observe(&row(3, Some("c@x.org"), "junior", true)), Action::Create(c) if c.tags.contains("junior"))
        );
        assert!(d.finish().is_empty());
    }

    #[test]
    fn full_mode_updates_even_unchanged_contacts() {
        let f = fixture();
        let same = row(1, Some("a@x.org"), "full", true);
        let mut d = f.differ(&[(&same, SubscriptionStatus::Subscribed)], true);
        assert!(matches!(d.observe(&same), Action::Update { .. }));
    }

    #[test]
    fn address_change_is_an_update_of_the_same_member() {
        let f = fixture();
        let before = row(5, Some("old@x.org"), "full", true);
        let after = row(5, Some("New@X.org"), "full", true);
        let mut d = f.differ(&[(&before, SubscriptionStatus::Subscribed)], false);
        match d.observe(&after) {
            Action::Update {
                contact,
                previous_email,
            } => {
                assert_eq!(previous_email.as_deref(), Some("old@x.org"));
                assert_eq!(contact.email.as_str(), "new@x.org");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn archives_with_reasons() {
        let f = fixture();
        let a = row(1, Some("a@x.org"), "full", true);
        let b = row(2, Some("b@x.org"), "full", true);
        let c = row(3, Some("c@x.org"), "full", true);
        let mut d = f.differ(
            &[
                (&a, SubscriptionStatus::Subscribed),
                (&b, SubscriptionStatus::Pending),
                (&c, SubscriptionStatus::Subscribed),
            ],
            false,
        );
        assert_eq!(d.live_contacts(), 3);
        assert!(matches!(
            d.observe(&row(1, Some("a@x.org"), "lapsed", true)),
            Action::Archive {
                reason: ArchiveReason::LeftAudience,
                ..
            }
        ));
        assert!(matches!(
            d.observe(&row(2, Some("b@x.org"), "full", false)),
            Action::Archive {
                reason: ArchiveReason::WithdrewConsent,
                ..
            }
        ));
        let rest = d.finish();
        assert_eq!(rest.len(), 1);
        assert!(
            matches!(&rest[0], Action::Archive { reason: ArchiveReason::RemovedFromMemberDb, email, .. } if email == "c@x.org")
        );
    }

    #[test]
    fn opted_out_contacts_are_never_pushed_nor_archived() {
        let f = fixture();
        let a = row(1, Some("a@x.org"), "full", true);
        let b = row(2, Some("b@x.org"), "full", true);
        let gone = row(3, Some("g@x.org"), "full", true);
        let mut d = f.differ(
            &[
                (&a, SubscriptionStatus::Unsubscribed),
                (&b, SubscriptionStatus::Cleaned),
                (&gone, SubscriptionStatus::Unsubscribed),
            ],
            false,
        );
        assert!(matches!(
            d.observe(&a),
            Action::Skip {
                reason: SkipReason::OptedOut(SubscriptionStatus::Unsubscribed),
                ..
            }
        ));
        // Changed content does not make a cleaned address pushable either.
        assert!(matches!(
            d.observe(&row(2, Some("b@x.org"), "family", true)),
            Action::Skip {
                reason: SkipReason::OptedOut(SubscriptionStatus::Cleaned),
                ..
            }
        ));
        assert!(d.finish().is_empty(), "opted-out contacts are not archived");
    }

    #[test]
    fn invalid_rows_are_skipped_with_reasons_and_never_archived() {
        let f = fixture();
        let synced_row = row(4, Some("d@x.org"), "full", true);
        let mut d = f.differ(&[(&synced_row, SubscriptionStatus::Subscribed)], false);
        let codes: Vec<&str> = [
            row(1, None, "full", true),
            row(2, Some("  "), "full", true),
            row(3, Some("not-an-address"), "full", true),
            row(4, Some("d@x"), "full", true),
        ]
        .iter()
        .map(|r| match d.observe(r) {
            Action::Skip { reason, .. } => reason.code(),
            other => panic!("{other:?}"),
        })
        .collect();
        assert_eq!(
            codes,
            [
                "missing_email",
                "blank_email",
                "invalid_email",
                "invalid_email"
            ]
        );
        assert!(
            d.finish().is_empty(),
            "a typo in an address must not archive the contact"
        );
    }

    #[test]
    fn duplicate_addresses_lowest_key_wins_and_is_named() {
        let f = fixture();
        let mut d = f.differ(&[], false);
        assert!(matches!(
            d.observe(&row(3, Some("Same@X.org"), "full", true)),
            Action::Create(_)
        ));
        match d.observe(&row(8, Some(" same@x.ORG"), "family", true)) {
            Action::Skip {
                reason: SkipReason::DuplicateEmail { kept_by },
                member_key,
                ..
            } => {
                assert_eq!(kept_by.as_str(), "3");
                assert_eq!(member_key.unwrap().as_str(), "8");
            }
            other => panic!("{other:?}"),
        }
        // Members outside the audience do not claim addresses.
        let mut d = f.differ(&[], false);
        assert_eq!(
            d.observe(&row(1, Some("p@x.org"), "lapsed", true)),
            Action::Ignore
        );
        assert!(matches!(
            d.observe(&row(2, Some("p@x.org"), "full", true)),
            Action::Create(_)
        ));
    }

    #[test]
    fn duplicate_member_key_and_missing_key_are_reported() {
        let f = fixture();
        let mut d = f.differ(&[], false);
        assert!(matches!(
            d.observe(&row(1, Some("a@x.org"), "full", true)),
            Action::Create(_)
        ));
        assert!(matches!(
            d.observe(&row(1, Some("b@x.org"), "full", true)),
            Action::Skip {
                reason: SkipReason::DuplicateKey,
                ..
            }
        ));
        let mut no_key = row(2, Some("c@x.org"), "full", true);
        no_key[0] = Value::Null;
        assert!(matches!(
            d.observe(&no_key),
            Action::Skip {
                reason: SkipReason::MissingKey,
                ..
            }
        ));
    }
}
