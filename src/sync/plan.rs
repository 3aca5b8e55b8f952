//! The plan: what a sync does to one audience, counted and listed. [`Planner`] makes it, a member
//! row at a time, with the diff and the consent rule; `sync --dry-run` prints it (a table, or the
//! run report) and a real run applies its [`Change`]s, the same ones, in the same order. Rows in,
//! plan out; the caller reads the rows and the facts. A real run's changes past a few thousand are
//! kept in a temporary file ([`Changes`]), the plan's only I/O.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::changes::Changes;
use super::consent::{ConsentFacts, Judged};
use super::diff::{Action, Differ, SkipReason};
use crate::config::AudienceConfig;
use crate::domain::MemberKey;
use crate::domain::WriteStatus;
use crate::mapping::{CompiledAudience, CompiledSource, Contact};
use crate::source::Value;
use crate::store::StoreError;
use crate::store::consent_seen::SeenConsent;
use crate::store::contacts::ContactFeed;

/// How many creates/updates are listed by name (the counts are always complete).
const SAMPLES: usize = 10;

/// A member the plan names (a skip, an archive, a sample), as the run report lists it.
pub type MemberNote = crate::domain::ReportError;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Samples {
    pub create: Vec<MemberNote>,
    pub update: Vec<MemberNote>,
}

/// A contact to push: created, or updated (moved from `previous_email` when the address
/// changed), with `status`, or keeping the status the provider has (`None`: pending there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub contact: Contact,
    pub create: bool,
    pub previous_email: Option<String>,
    pub status: Option<WriteStatus>,
}

/// One write of a plan: what the dry run counts is what the run applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    Push(Push),
    Archive {
        member_key: MemberKey,
        email: String,
    },
}

/// The plan for one audience.
#[derive(Debug)]
pub struct Plan {
    pub audience: String,
    pub provider: String,
    pub list_id: String,
    pub members_read: u64,
    pub create: u64,
    pub update: u64,
    pub unchanged: u64,
    pub skipped_invalid: u64,
    pub skipped_opted_out: u64,
    /// Live contacts the state DB had before the run (base of the mass-archive guardrail).
    pub live_before: u64,
    pub max_archive_percent: f64,
    pub archives: Vec<MemberNote>,
    pub skipped: Vec<MemberNote>,
    pub samples: Samples,
    /// The writes, in the order decided, when planned for a real run (a dry run only counts them).
    pub changes: Changes,
    /// Updates that change the member's address (written one by one).
    pub address_changes: u64,
    /// A dry run's estimate of the calls the run will make, and of the provider's daily budget
    /// (set by the caller, which knows the provider's settings).
    pub calls: Option<crate::providers::CallEstimate>,
    pub budget: Option<crate::providers::BudgetUse>,
}

impl Plan {
    pub fn new(audience: &AudienceConfig) -> Plan {
        Plan {
            audience: audience.name.clone(),
            provider: audience.provider.as_str().to_owned(),
            list_id: audience.list_id.clone(),
            members_read: 0,
            create: 0,
            update: 0,
            unchanged: 0,
            skipped_invalid: 0,
            skipped_opted_out: 0,
            live_before: 0,
            max_archive_percent: audience.max_archive_percent,
            archives: Vec::new(),
            skipped: Vec::new(),
            samples: Samples::default(),
            changes: Changes::default(),
            address_changes: 0,
            calls: None,
            budget: None,
        }
    }

    pub fn archive(&self) -> u64 {
        self.archives.len() as u64
    }

    /// Archives the mass-archive guardrail weighs: not those of suppressed addresses, which
    /// bounced or complained (the guardrail is against a source query gone wrong).
    fn guarded_archives(&self) -> u64 {
        self.archives
            .iter()
            .filter(|a| a.code != "suppressed")
            .count() as u64
    }

    /// Records one action.
    pub fn record(&mut self, action: &Action) {
        match action {
            Action::Create(c) => self.count_push(c, true, None),
            Action::Update {
                contact,
                previous_email,
            } => self.count_push(contact, false, previous_email.as_deref()),
            Action::Unchanged => self.unchanged += 1,
            Action::Archive {
                member_key,
                email,
                reason,
            } => self.archives.push(MemberNote {
                member_key: Some(member_key.to_string()),
                email: Some(email.clone()),
                code: reason.code().into(),
                message: match reason {
                    super::diff::ArchiveReason::LeftAudience => {
                        "no longer matches the audience's conditions".into()
                    }
                    super::diff::ArchiveReason::WithdrewConsent => {
                        "consent withdrawn in the member database".into()
                    }
                    super::diff::ArchiveReason::RemovedFromMemberDb => {
                        "no longer returned by the source query".into()
                    }
                    super::diff::ArchiveReason::Unsubscribed => {
                        "unsubscribed with one-click unsubscribe from relay mail".into()
                    }
                    super::diff::ArchiveReason::Suppressed(why) => format!(
                        "the address is on the suppression list ({why}): it gets no mail from any path"
                    )
                    .into(),
                },
            }),
            Action::Skip {
                member_key,
                email,
                reason,
            } => {
                if reason.is_invalid() {
                    self.skipped_invalid += 1;
                } else {
                    self.skipped_opted_out += 1;
                }
                self.skipped.push(MemberNote {
                    member_key: member_key.as_ref().map(ToString::to_string),
                    email: email.clone(),
                    code: reason.code().into(),
                    message: reason.message(),
                });
            }
            Action::Ignore => {}
        }
    }

    /// Records a member after the consent rule, keeping the write it asks for if `keep`.
    fn note(&mut self, judged: Judged, keep: bool) {
        match judged {
            Judged::Push(push) => {
                self.count_push(&push.contact, push.create, push.previous_email.as_deref());
                if keep {
                    self.changes.push(Change::Push(push));
                }
            }
            Judged::Other(action) => {
                self.record(&action);
                if keep
                    && let Action::Archive {
                        member_key, email, ..
                    } = action
                {
                    self.changes.push(Change::Archive { member_key, email });
                }
            }
        }
    }

    /// Counts a create or an update, naming the first few.
    fn count_push(&mut self, contact: &Contact, create: bool, previous_email: Option<&str>) {
        let (count, samples) = if create {
            (&mut self.create, &mut self.samples.create)
        } else {
            (&mut self.update, &mut self.samples.update)
        };
        *count += 1;
        if !create && previous_email.is_some() {
            self.address_changes += 1;
        }
        if samples.len() < SAMPLES {
            samples.push(MemberNote {
                member_key: Some(contact.member_key.to_string()),
                email: Some(contact.email.original().to_owned()),
                code: match (create, previous_email) {
                    (true, _) => "create".into(),
                    (false, Some(_)) => "email_changed".into(),
                    (false, None) => "update".into(),
                },
                message: previous_email
                    .map(|p| format!("address was {p}").into())
                    .unwrap_or_default(),
            });
        }
    }

    /// Why a real run of this plan would stop before writing (DESIGN: guardrails), if it would.
    pub fn guardrail(&self) -> Option<String> {
        if self.live_before > 0
            && self.create + self.update + self.unchanged + self.skipped_opted_out == 0
        {
            return Some(format!(
                "the source query returned no members for audience `{}`, which has {} contact(s): a real sync would stop without writing",
                self.audience, self.live_before
            ));
        }
        if self.live_before > 0 {
            let pct = self.guarded_archives() as f64 * 100.0 / self.live_before as f64;
            if pct > self.max_archive_percent {
                return Some(format!(
                    "{} of {} contacts ({pct:.1}%) would be archived, more than the {}% allowed for audience `{}`: a real sync would stop without writing unless --allow-mass-archive is given",
                    self.guarded_archives(),
                    self.live_before,
                    self.max_archive_percent,
                    self.audience
                ));
            }
        }
        None
    }

    /// A readable table.
    pub fn to_table(&self, limit: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Audience `{}` ({} list {}): dry run, nothing was written",
            self.audience, self.provider, self.list_id
        );
        let rows = [
            ("members read", self.members_read),
            ("create", self.create),
            ("update", self.update),
            ("archive", self.archive()),
            ("unchanged", self.unchanged),
            ("skipped (invalid)", self.skipped_invalid),
            ("skipped (opted out)", self.skipped_opted_out),
        ];
        for (label, n) in rows {
            let _ = writeln!(out, "  {label:<22}{n:>10}");
        }
        if let Some(c) = self.calls {
            let _ = writeln!(
                out,
                "  {:<22}{:>10}  (about; {} writes, {} reads)",
                "API calls",
                c.read + c.write,
                c.write,
                c.read
            );
        }
        if let Some(b) = &self.budget {
            let planned = self.calls.map_or(0, |c| c.read + c.write);
            let _ = writeln!(
                out,
                "  {:<22}{:>10}  of {} today ({} used so far; resets {})",
                "daily budget used",
                b.used_today + planned,
                b.daily_budget,
                b.used_today,
                b.resets_at
            );
            if b.used_today + planned > b.daily_budget {
                let _ = writeln!(
                    out,
                    "  WARNING: the run would spend more than today's budget: it stops when the budget runs out, and the next run after {} resumes",
                    b.resets_at
                );
            }
        }
        if let Some(g) = self.guardrail() {
            let _ = writeln!(out, "  WARNING: {g}");
        }
        let mut section = |title: &str, notes: &[MemberNote], total: u64| {
            if notes.is_empty() {
                return;
            }
            let _ = writeln!(out, "\n  {title}:");
            for n in notes.iter().take(limit) {
                let _ = writeln!(
                    out,
                    "    member {:<10} {:<36} {:<22} {}",
                    n.member_key.as_deref().unwrap_or("?"),
                    display_email(n.email.as_deref()),
                    n.code,
                    n.message
                );
            }
            if total as usize > limit.min(notes.len()) {
                let _ = writeln!(
                    out,
                    "    … {} more (use --json for the full list)",
                    total as usize - limit.min(notes.len())
                );
            }
        };
        section("Would archive", &self.archives, self.archive());
        section("Skipped", &self.skipped, self.skipped.len() as u64);
        section(
            "Would create (first ones)",
            &self.samples.create,
            self.create,
        );
        section(
            "Would update (first ones)",
            &self.samples.update,
            self.update,
        );
        out
    }
}

fn display_email(e: Option<&str>) -> String {
    match e {
        None => "<NULL>".into(),
        Some(e) if e.trim().is_empty() => "<blank>".into(),
        Some(e) => {
            let mut s: String = e.chars().take(36).collect();
            if e.chars().count() > 36 {
                s.pop();
                s.push('…');
            }
            s
        }
    }
}

/// Plans one audience a member row at a time: the diff, then the consent rule
/// ([`ConsentFacts::judge`]), then the plan. The dry run and the real run both plan with it, from
/// the same state and facts, so they decide the same.
pub struct Planner<'a> {
    source: &'a CompiledSource,
    differ: Differ<'a>,
    facts: ConsentFacts,
    plan: Plan,
    /// Keep the changes (a real run applies them).
    keep_changes: bool,
    /// When the rows are read, if the run records what it sees in the consent column.
    observed_at: Option<DateTime<Utc>>,
    seen: Vec<(MemberKey, SeenConsent)>,
}

impl<'a> Planner<'a> {
    /// `state` is what the state DB has for the audience, `facts` the consent rule's inputs;
    /// `full` (`--full`) plans an update for every synced contact still wanted.
    pub fn new(
        audience: &AudienceConfig,
        source: &'a CompiledSource,
        compiled: &'a CompiledAudience,
        state: impl Into<ContactFeed>,
        facts: ConsentFacts,
        full: bool,
    ) -> Planner<'a> {
        let differ = Differ::new(source, compiled, state, full);
        let plan = Plan::new(audience);
        Planner {
            source,
            differ,
            facts,
            plan,
            keep_changes: false,
            observed_at: None,
            seen: Vec::new(),
        }
    }

    /// For a real run: keeps the changes to apply, and what the consent column says at `now`
    /// (no later than the first row is read, so an observation never claims to be later than it
    /// is).
    pub fn for_run(mut self, now: DateTime<Utc>) -> Planner<'a> {
        self.keep_changes = true;
        self.observed_at = Some(now);
        self
    }

    /// How many contacts the state DB gave for the audience (none before its first sync).
    pub fn contacts_known(&self) -> u64 {
        self.differ.contacts_known()
    }

    /// Tells the planner how many member rows are coming (its duplicate table forecasts from it).
    pub fn expect_members(&mut self, members: u64) {
        self.differ.expect_members(members);
    }

    /// Plans one member row. Rows must come ordered by member key.
    pub fn row(&mut self, row: &[Value]) {
        let key = self.source.member_key(row);
        // The contact as the state DB has it, for the consent rule, before the diff takes it;
        // and as the provider has it now, if live (only when the rule reads it).
        let contact = key
            .as_ref()
            .and_then(|k| Some((k, self.differ.contact(k)?)));
        self.facts.hold_row(contact);
        let live = key.as_ref().and_then(|k| {
            let email = self.differ.live_email(k)?;
            self.facts
                .reads_live(email)
                .then(|| (k.clone(), email.to_owned()))
        });
        let action = self.differ.observe_keyed(row, key.as_ref());
        if let Some(now) = self.observed_at
            && let Some(key) = key
            && !matches!(
                action,
                Action::Skip {
                    reason: SkipReason::DuplicateKey,
                    ..
                }
            )
        {
            let source = self.source;
            let email = || source.email(row).ok().map(|e| e.as_str().to_owned());
            if let Some(s) = self.facts.observe(&key, source.consent(row), email, now) {
                self.seen.push((key, s));
            }
        }
        let judged = self
            .facts
            .judge(action, live, row, self.source, self.differ.audience());
        self.plan.note(judged, self.keep_changes);
    }

    /// The plan, after the archives of members the member DB no longer returned, and what the
    /// run saw in the consent column (empty for a dry run). Fails if the state DB's contacts
    /// could not be read to the end.
    pub fn finish(
        self,
        members_read: u64,
    ) -> Result<(Plan, Vec<(MemberKey, SeenConsent)>), StoreError> {
        let Planner {
            differ,
            mut plan,
            keep_changes,
            seen,
            ..
        } = self;
        let finished = differ.finish()?;
        for action in finished.archives {
            plan.note(Judged::Other(action), keep_changes);
        }
        plan.live_before = finished.live_before;
        plan.members_read = members_read;
        Ok((plan, seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SubscriptionStatus::{Subscribed, Unsubscribed};
    use crate::sync::diff::tests::{fixture, row, synced};

    fn audience() -> AudienceConfig {
        AudienceConfig {
            name: "newsletter".into(),
            provider: crate::config::ProviderKind::Mailchimp,
            list_id: "abc".into(),
            max_archive_percent: 5.0,
            webhook_signing_secret: None,
            from_name: None,
            reply_to: None,
        }
    }

    /// What a dry run counts is what a run keeps to apply: the same members, the same order.
    #[test]
    fn the_changes_kept_are_the_ones_counted() {
        let f = fixture();
        let a = audience();
        let kept = row(1, Some("a@x.org"), "full", true);
        let changed = row(2, Some("b@x.org"), "full", true);
        let left = row(3, Some("c@x.org"), "full", true);
        let held = row(4, Some("d@x.org"), "full", true);
        let state = || {
            crate::store::contacts::ContactMap::from_iter([
                synced(&f, &kept, Subscribed),
                synced(&f, &changed, Subscribed),
                synced(&f, &left, Subscribed),
                synced(&f, &held, Unsubscribed),
                synced(&f, &row(9, Some("gone@x.org"), "full", true), Subscribed),
            ])
        };
        let rows = [
            kept.clone(),
            row(2, Some("b@x.org"), "family", true),
            row(3, Some("c@x.org"), "lapsed", true),
            row(4, Some("d@x.org"), "family", true),
            row(5, Some("new@x.org"), "junior", true),
        ];
        let plan_with = |p: Planner<'_>| {
            let mut p = p;
            for r in &rows {
                p.row(r);
            }
            p.finish(rows.len() as u64).unwrap()
        };
        let planner = || {
            Planner::new(
                &a,
                &f.source,
                &f.audience,
                state(),
                ConsentFacts::default(),
                false,
            )
        };
        let (dry, dry_seen) = plan_with(planner());
        let (mut run, _) = plan_with(planner().for_run(Utc::now()));
        assert!(dry.changes.is_empty() && dry_seen.is_empty());
        assert_eq!(
            (
                dry.create,
                dry.update,
                dry.archive(),
                dry.unchanged,
                dry.skipped_opted_out
            ),
            (1, 1, 2, 1, 1)
        );
        let changes: Vec<Change> = std::mem::take(&mut run.changes)
            .read()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let written: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| match c {
                Change::Push(p) if p.create => (p.contact.member_key.as_str(), "create"),
                Change::Push(p) => (p.contact.member_key.as_str(), "update"),
                Change::Archive { member_key, .. } => (member_key.as_str(), "archive"),
            })
            .collect();
        assert_eq!(
            written,
            [
                ("2", "update"),
                ("3", "archive"),
                ("5", "create"),
                ("9", "archive")
            ]
        );
        // Every other field the same (a plan is not comparable: its changes may be in a file).
        assert_eq!(format!("{run:#?}"), format!("{dry:#?}"));
    }
}
