//! The plan: what a sync would do to one audience, counted and listed, and printed by
//! `sync --dry-run` as a table or as the run report. Pure bookkeeping over [`Action`]s.

use std::fmt::Write as _;

use serde::Serialize;

use super::diff::Action;
use crate::config::AudienceConfig;

/// How many creates/updates are listed by name (the counts are always complete).
const SAMPLES: usize = 10;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemberNote {
    pub member_key: Option<String>,
    pub email: Option<String>,
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Samples {
    pub create: Vec<MemberNote>,
    pub update: Vec<MemberNote>,
}

/// The plan for one audience.
#[derive(Clone, Debug, PartialEq)]
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
        }
    }

    pub fn archive(&self) -> u64 {
        self.archives.len() as u64
    }

    /// Records one action.
    pub fn record(&mut self, action: &Action) {
        match action {
            Action::Create(c) => {
                self.create += 1;
                if self.samples.create.len() < SAMPLES {
                    self.samples.create.push(MemberNote {
                        member_key: Some(c.member_key.to_string()),
                        email: Some(c.email.original().to_owned()),
                        code: "create".into(),
                        message: String::new(),
                    });
                }
            }
            Action::Update {
                contact,
                previous_email,
            } => {
                self.update += 1;
                if self.samples.update.len() < SAMPLES {
                    self.samples.update.push(MemberNote {
                        member_key: Some(contact.member_key.to_string()),
                        email: Some(contact.email.original().to_owned()),
                        code: if previous_email.is_some() {
                            "email_changed".into()
                        } else {
                            "update".into()
                        },
                        message: previous_email
                            .as_ref()
                            .map(|p| format!("address was {p}"))
                            .unwrap_or_default(),
                    });
                }
            }
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
            let pct = self.archive() as f64 * 100.0 / self.live_before as f64;
            if pct > self.max_archive_percent {
                return Some(format!(
                    "{} of {} contacts ({pct:.1}%) would be archived, more than the {}% allowed for audience `{}`: a real sync would stop without writing unless --allow-mass-archive is given",
                    self.archive(),
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
