//! The diff: desired contacts (member rows rendered through the mapping) against what the state
//! DB says the provider has. Pure: member rows in, one [`Action`] per row out, then the archives
//! for members that disappeared from the member DB.
//!
//! Both sides stream: the contacts come from a [`ContactFeed`] in stream order
//! ([`MemberKey::stream_cmp`]), the member rows ordered by member key, and the diff merges them.
//! When the member DB orders its keys otherwise (a text key under a locale's collation), the
//! contacts the merge passed over are kept until their member comes; the result is the same, only
//! the memory differs.
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

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::taken::TakenAddresses;
use crate::domain::{EmailError, MemberKey, SubscriptionStatus};
use crate::mapping::{CompiledAudience, CompiledSource, Contact, RenderError, Selection};
use crate::source::Value;
use crate::store::StoreError;
use crate::store::contacts::{ContactFeed, ContactState};

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

    /// What the report says: a constant when the reason names nothing of the member.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            SkipReason::MissingKey => "the member key column is NULL or blank".into(),
            SkipReason::DuplicateKey => {
                "the source query returned this member key more than once".into()
            }
            SkipReason::Email(EmailError::Missing) => "the address is missing".into(),
            SkipReason::Email(EmailError::Blank) => "the address is blank".into(),
            SkipReason::Email(e) => e.to_string().into(),
            SkipReason::Field(e) => e.to_string().into(),
            SkipReason::DuplicateEmail { kept_by } => {
                format!("same address as member {kept_by}, who keeps it").into()
            }
            SkipReason::OptedOut(s) => {
                format!("the contact is {s} at the provider; only the person can subscribe again")
                    .into()
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

/// The contacts of the state DB, merged with the member rows as both stream.
struct Cursor {
    feed: ContactFeed,
    /// The next contact of the feed, not yet reached by the member rows.
    head: Option<(MemberKey, ContactState)>,
    /// The key of the last contact the feed gave, to check its order.
    last_fed: Option<MemberKey>,
    exhausted: bool,
    /// Contacts the merge went past without their member (gone from the member DB, or coming
    /// later in the member DB's own order), and every contact after the feed was out of order.
    passed: BTreeMap<MemberKey, ContactState>,
    /// The member looked up last and its contact, until the diff takes it.
    current: Option<(MemberKey, Option<ContactState>)>,
    /// Live contacts the feed gave (the base of the mass-archive guardrail).
    live: u64,
    error: Option<StoreError>,
}

impl Cursor {
    fn new(feed: ContactFeed) -> Cursor {
        Cursor {
            feed,
            head: None,
            last_fed: None,
            exhausted: false,
            passed: BTreeMap::new(),
            current: None,
            live: 0,
            error: None,
        }
    }

    /// The next contact of the feed (`None` at its end or after an error, which is kept).
    fn pull(&mut self) -> Option<(MemberKey, ContactState)> {
        if self.exhausted {
            return None;
        }
        match self.feed.next() {
            Some(Ok(c)) => {
                if is_live(c.1.remote_status) {
                    self.live += 1;
                }
                Some(c)
            }
            Some(Err(e)) => {
                self.error = Some(e);
                self.exhausted = true;
                None
            }
            None => {
                self.exhausted = true;
                None
            }
        }
    }

    /// Fills `head` from the feed. A contact out of stream order (another order than this
    /// version's) turns the merge into lookups: the rest of the feed is read into `passed`.
    fn fill(&mut self) {
        if self.head.is_some() {
            return;
        }
        let Some(next) = self.pull() else {
            return;
        };
        if let Some(last) = &self.last_fed
            && last.stream_cmp(&next.0) != Ordering::Less
        {
            self.passed.insert(next.0, next.1);
            while let Some((k, s)) = self.pull() {
                self.passed.insert(k, s);
            }
            return;
        }
        self.last_fed = Some(next.0.clone());
        self.head = Some(next);
    }

    /// The contact of `key`, looked up once per member row. A contact found keeps the key the
    /// feed gave it (no copy of the row's).
    fn get(&mut self, key: &MemberKey) -> Option<&ContactState> {
        if self.current.as_ref().is_none_or(|(k, _)| k != key) {
            self.current = Some(match self.find(key) {
                Some((k, s)) => (k, Some(s)),
                None => (key.clone(), None),
            });
        }
        self.current.as_ref().and_then(|(_, s)| s.as_ref())
    }

    fn find(&mut self, key: &MemberKey) -> Option<(MemberKey, ContactState)> {
        loop {
            self.fill();
            let Some((k, _)) = &self.head else { break };
            match k.stream_cmp(key) {
                Ordering::Less => {
                    if let Some((k, s)) = self.head.take() {
                        self.passed.insert(k, s);
                    }
                }
                Ordering::Equal => return self.head.take(),
                Ordering::Greater => break,
            }
        }
        self.passed.remove_entry(key)
    }

    /// Removes and returns the contact of `key` (each can be taken once).
    fn take(&mut self, key: &MemberKey) -> Option<ContactState> {
        self.get(key);
        self.current.take().and_then(|(_, s)| s)
    }

    /// The contacts no member row asked for, in member key order, and the live count.
    fn rest(mut self) -> Result<(Vec<(MemberKey, ContactState)>, u64), StoreError> {
        let mut rest: Vec<(MemberKey, ContactState)> = std::mem::take(&mut self.passed)
            .into_iter()
            .filter(|(_, s)| is_live(s.remote_status))
            .collect();
        // Looked up but not taken: still the state's.
        if let Some((k, Some(s))) = self.current.take()
            && is_live(s.remote_status)
        {
            rest.push((k, s));
        }
        rest.extend(self.head.take().filter(|(_, s)| is_live(s.remote_status)));
        while let Some(c) = self.pull() {
            if is_live(c.1.remote_status) {
                rest.push(c);
            }
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((rest, self.live))
    }
}

/// Diffs one audience, a member row at a time.
pub struct Differ<'a> {
    source: &'a CompiledSource,
    audience: &'a CompiledAudience,
    state: Cursor,
    /// Each address already taken in this run, and the member who took it.
    emails: TakenAddresses,
    /// Member rows observed so far (the duplicate table's forecast reads it).
    rows_seen: usize,
    /// The previous row's member key (to refuse a key returned twice), as text kept between rows.
    last_key: Option<String>,
    ignore_hashes: bool,
}

/// What is left once every member row is diffed.
#[derive(Debug)]
pub struct Finished {
    /// Archives for synced members that the member DB no longer returns, in member key order.
    pub archives: Vec<Action>,
    /// How many contacts the state DB held that were live at the provider (not archived or
    /// opted out) before this run: the base for the mass-archive guardrail.
    pub live_before: u64,
}

impl<'a> Differ<'a> {
    /// `state` gives the state DB's contacts in stream order; `ignore_hashes` (`--full`) plans
    /// an update for every synced contact still wanted.
    pub fn new(
        source: &'a CompiledSource,
        audience: &'a CompiledAudience,
        state: impl Into<ContactFeed>,
        ignore_hashes: bool,
    ) -> Differ<'a> {
        let state = state.into();
        let expected = usize::try_from(state.len()).unwrap_or(usize::MAX);
        Differ {
            source,
            audience,
            emails: TakenAddresses::with_capacity(expected),
            rows_seen: 0,
            state: Cursor::new(state),
            last_key: None,
            ignore_hashes,
        }
    }

    pub fn audience(&self) -> &CompiledAudience {
        self.audience
    }

    /// How many contacts the state DB gave for the audience.
    pub fn contacts_known(&self) -> u64 {
        self.state.feed.len()
    }

    /// Tells the duplicate table how many member rows are coming (it is sized from the state
    /// DB's contacts, which a first sync does not have).
    pub fn expect_members(&mut self, members: u64) {
        self.emails
            .expect_rows(usize::try_from(members).unwrap_or(usize::MAX));
    }

    /// The member's contact as the state DB has it, when this run has not looked at it yet.
    pub fn contact(&mut self, key: &MemberKey) -> Option<&ContactState> {
        self.state.get(key)
    }

    /// The member's contact, when the provider has it live (subscribed, pending or
    /// transactional) and this run has not looked at it yet: its address (identity form).
    pub fn live_email(&mut self, key: &MemberKey) -> Option<&str> {
        self.state
            .get(key)
            .filter(|s| is_live(s.remote_status))
            .map(|s| &*s.email)
    }

    /// Decides what to do about one member row. Rows must come ordered by member key.
    pub fn observe(&mut self, row: &[Value]) -> Action {
        let key = self.source.member_key(row);
        self.observe_keyed(row, key.as_ref())
    }

    /// [`Differ::observe`] with the row's member key read already (the planner reads it first).
    /// An unchanged member's row costs no copy of its key.
    pub fn observe_keyed(&mut self, row: &[Value], key: Option<&MemberKey>) -> Action {
        self.rows_seen += 1;
        let raw_email = || self.source.raw_email(row).map(|e| e.into_owned());
        let Some(key) = key else {
            return Action::Skip {
                member_key: None,
                email: raw_email(),
                reason: SkipReason::MissingKey,
            };
        };
        if self.last_key.as_deref() == Some(key.as_str()) {
            return Action::Skip {
                member_key: Some(key.clone()),
                email: raw_email(),
                reason: SkipReason::DuplicateKey,
            };
        }
        // The previous key's text is overwritten in place: no allocation per row.
        let last = self.last_key.get_or_insert_with(String::new);
        last.clear();
        last.push_str(key.as_str());
        let state = self.state.take(key);

        let selection = self.audience.select(self.source, row);
        if selection != Selection::In {
            return match state {
                Some(s) if is_live(s.remote_status) => Action::Archive {
                    member_key: key.clone(),
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
                    member_key: Some(key.clone()),
                    email: raw_email(),
                    reason: SkipReason::Email(e),
                };
            }
        };
        if let Some(kept_by) = self.emails.take(email.as_str(), key, self.rows_seen) {
            return Action::Skip {
                member_key: Some(key.clone()),
                email: Some(email.original().to_owned()),
                reason: SkipReason::DuplicateEmail { kept_by },
            };
        }

        // Most members of a resync are unchanged: their hash, from the row, says so without
        // rendering the contact (the same bytes: `CompiledAudience::digest`).
        if let Some(s) = &state
            && !self.ignore_hashes
            && is_live(s.remote_status)
            && self
                .audience
                .digest(key, &email, row)
                .is_some_and(|d| s.content_hash.matches(&d))
        {
            return Action::Unchanged;
        }

        let contact = match self.audience.render(key.clone(), email, row) {
            Ok(c) => c,
            Err(e) => {
                return Action::Skip {
                    member_key: Some(key.clone()),
                    email: raw_email(),
                    reason: SkipReason::Field(e),
                };
            }
        };
        match state {
            None => Action::Create(contact),
            Some(s) if s.remote_status.is_opted_out() => Action::Skip {
                member_key: Some(key.clone()),
                email: Some(contact.email.original().to_owned()),
                reason: SkipReason::OptedOut(s.remote_status),
            },
            Some(s) => {
                let same =
                    s.content_hash.matches(&contact.content_digest()) && is_live(s.remote_status);
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

    /// Archives for synced members that the member DB no longer returns, and the live count
    /// before the run. Fails if the state DB could not be read to the end (then the actions
    /// decided so far are not to be trusted either).
    pub fn finish(self) -> Result<Finished, StoreError> {
        let (gone, live_before) = self.state.rest()?;
        let archives = gone
            .into_iter()
            .map(|(member_key, s)| Action::Archive {
                member_key,
                email: s.email.into_string(),
                reason: ArchiveReason::RemovedFromMemberDb,
            })
            .collect();
        Ok(Finished {
            archives,
            live_before,
        })
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

    #[test]
    fn a_skip_says_what_its_error_says() {
        for e in [
            EmailError::Missing,
            EmailError::Blank,
            EmailError::Invalid("a@@b".into(), "it must contain exactly one @"),
        ] {
            let reason = SkipReason::Email(e.clone());
            assert_eq!(reason.message(), e.to_string());
            let borrowed = matches!(e, EmailError::Missing | EmailError::Blank);
            assert_eq!(
                matches!(reason.message(), Cow::Borrowed(_)),
                borrowed,
                "{e}"
            );
        }
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
            let state: crate::store::contacts::ContactMap =
                contacts.iter().map(|(r, s)| synced(self, r, *s)).collect();
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
        assert!(d.finish().unwrap().archives.is_empty());
    }

    /// The merge decides the same whatever order the member DB and the state DB give their keys
    /// in: member rows out of stream order (a text key under a locale's collation), and a feed
    /// out of order.
    #[test]
    fn the_merge_does_not_depend_on_the_order_of_either_side() {
        let f = fixture();
        let rows: Vec<Vec<Value>> = [10, 2, 9, 1, 30]
            .iter()
            .map(|&id| row(id, Some(&format!("m{id}@x.org")), "full", true))
            .collect();
        let gone = row(20, Some("gone@x.org"), "full", true);
        let contacts: Vec<(MemberKey, ContactState)> = rows[..4]
            .iter()
            .chain([&gone])
            .map(|r| synced(&f, r, SubscriptionStatus::Subscribed))
            .collect();
        let feeds: [Vec<(MemberKey, ContactState)>; 2] = [
            contacts
                .iter()
                .cloned()
                .collect::<crate::store::contacts::ContactMap>()
                .into_iter()
                .collect(),
            contacts.clone(),
        ];
        for feed in feeds {
            let feed = ContactFeed::new(feed.len() as u64, feed.into_iter().map(Ok));
            let mut d = Differ::new(&f.source, &f.audience, feed, false);
            let actions: Vec<Action> = rows.iter().map(|r| d.observe(r)).collect();
            assert_eq!(&actions[..4], [const { Action::Unchanged }; 4]);
            assert!(matches!(&actions[4], Action::Create(c) if c.member_key.as_str() == "30"));
            let finished = d.finish().unwrap();
            assert_eq!(finished.live_before, 5);
            assert!(
                matches!(&finished.archives[..], [Action::Archive { member_key, .. }] if member_key.as_str() == "20"),
                "{:?}",
                finished.archives
            );
        }
    }

    #[test]
    fn a_state_db_read_that_fails_fails_the_plan() {
        let f = fixture();
        let feed = ContactFeed::new(
            1,
            [Err(StoreError::Read {
                what: "read contacts",
                message: "disk I/O error".into(),
            })]
            .into_iter(),
        );
        let mut d = Differ::new(&f.source, &f.audience, feed, false);
        let _ = d.observe(&row(1, Some("a@x.org"), "full", true));
        assert!(d.finish().is_err());
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
        let finished = d.finish().unwrap();
        assert_eq!(finished.live_before, 3);
        let rest = finished.archives;
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
        assert!(
            d.finish().unwrap().archives.is_empty(),
            "opted-out contacts are not archived"
        );
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
            d.finish().unwrap().archives.is_empty(),
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
