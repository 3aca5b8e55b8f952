//! Campaign push (DESIGN.md invariant 5: at most once per idempotency key): an admin's newsletter
//! goes to an audience through Mailchimp after a fresh sync, and is sent at most once across
//! repeated presses, timeouts, crashes and concurrent callers.
//!
//! - this file: the pure parts: validating a [`PushRequest`] into a [`CampaignSpec`], the content
//!   hash and the derived key, the quarter-hour rule for schedules, HTML → text;
//! - `store`: the `campaigns` rows (the intent record) and their states;
//! - `push`: the effectful push, a state machine over one row under a lease;
//! - `jobs`: pushes asked for over HTTP, queued per audience and run in the background.
//!
//! The commands (`mailbridge campaign push|status`) are in `cli::campaigns`.

pub mod jobs;
pub mod push;
pub mod store;

use std::fmt;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::AudienceConfig;
use crate::domain::Email;
use crate::providers::ChecklistItem;
use crate::providers::ProviderError;
use crate::store::StoreError;
use crate::sync::SyncError;

pub use push::{PushContext, PushOutcome, push};
pub use store::CampaignRecord;

/// Subjects longer than this are refused (Mailchimp's limit is 150 characters).
pub const MAX_SUBJECT_CHARS: usize = 150;
/// At most this many `--test-to` addresses.
pub const MAX_TEST_ADDRESSES: usize = 5;
/// Idempotency keys: 1 to this many characters of `A-Z a-z 0-9 . _ : -`.
pub const MAX_KEY_CHARS: usize = 128;

/// Where a campaign is. Stored as text in `campaigns.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// The intent is recorded; the campaign may or may not exist at the provider yet
    /// (`provider_campaign_id` says).
    Draft,
    /// Test emails went out; the real send has not.
    Tested,
    /// Scheduled at the provider; it sends by itself.
    Scheduled,
    /// The provider reported it sending.
    Sending,
    /// Sent (the provider accepted the send, or reported it sent).
    Sent,
    /// A step failed; `last_error` says which. Pushing again with the same key resumes.
    Failed,
}

impl CampaignState {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Tested => "tested",
            CampaignState::Scheduled => "scheduled",
            CampaignState::Sending => "sending",
            CampaignState::Sent => "sent",
            CampaignState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CampaignState> {
        Some(match s {
            "draft" => CampaignState::Draft,
            "tested" => CampaignState::Tested,
            "scheduled" => CampaignState::Scheduled,
            "sending" => CampaignState::Sending,
            "sent" => CampaignState::Sent,
            "failed" => CampaignState::Failed,
            _ => return None,
        })
    }

    /// The send is out of mailbridge's hands: nothing more to do for this key.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignState::Scheduled | CampaignState::Sending | CampaignState::Sent
        )
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A push as the admin asked for it (CLI flags or the HTTP body), before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub audience: String,
    pub subject: String,
    pub html: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Only members with this tag.
    #[serde(default)]
    pub segment: Option<String>,
    /// RFC 3339; must be a future quarter hour UTC.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub test_to: Vec<String>,
    /// Skip the preflight sync (refused when the last successful sync is too old).
    #[serde(default)]
    pub no_sync: bool,
}

/// A validated push: everything the provider calls need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSpec {
    pub audience: String,
    pub subject: String,
    pub html: String,
    /// Given, or derived from the HTML.
    pub text: String,
    pub from_name: String,
    pub reply_to: Email,
    pub segment: Option<String>,
    pub schedule: Option<DateTime<Utc>>,
    pub test_to: Vec<Email>,
    pub no_sync: bool,
}

/// Why a push or a status read failed.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// Bad input, refused before anything was recorded or sent.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The audience is not fit to receive the campaign (stale, empty); nothing was sent.
    #[error("refused: {0}")]
    Refused(String),
    /// Another push holds the key and has recorded nothing yet (it is starting, or its worker
    /// died and its lease has not run out): nothing was done; asking again later goes on.
    #[error("refused: another push with key `{0}` is starting; ask for its status in a moment")]
    KeyBusy(String),
    /// The key was used before for a different campaign.
    #[error(
        "idempotency key `{key}` was already used for a different campaign (content hash {existing}, this one {given}); use a new key"
    )]
    KeyConflict {
        key: String,
        existing: String,
        given: String,
    },
    #[error("no campaign with key `{0}`")]
    UnknownKey(String),
    /// The provider's send checklist is not ready; nothing was sent.
    #[error("{provider}'s send checklist is not ready: {}", checklist_text(items))]
    NotReady {
        provider: &'static str,
        items: Vec<ChecklistItem>,
    },
    /// The send (or schedule) call got no clear answer and the campaign still reads as a draft.
    #[error(
        "the {what} call got no clear answer ({cause}) and {provider} still shows campaign {campaign_id} as a draft: nothing was sent; push again with the same key to retry"
    )]
    Unconfirmed {
        provider: &'static str,
        what: &'static str,
        campaign_id: String,
        cause: String,
    },
    /// The campaign was changed at the provider in a way mailbridge does not continue from.
    #[error("campaign {campaign_id} is `{status}` at {provider}; mailbridge does not send it")]
    ProviderState {
        provider: &'static str,
        campaign_id: String,
        status: String,
    },
    #[error("the preflight sync of audience `{audience}` failed: {source}")]
    Sync {
        audience: String,
        #[source]
        source: Box<SyncError>,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the member database: {0}")]
    Source(#[from] crate::source::SourceError),
}

fn checklist_text(items: &[ChecklistItem]) -> String {
    let bad: Vec<String> = items
        .iter()
        .filter(|i| i.kind != "success")
        .map(|i| format!("[{}] {}: {}", i.kind, i.heading, i.details))
        .collect();
    if bad.is_empty() {
        "no items given".to_owned()
    } else {
        bad.join("; ")
    }
}

impl CampaignError {
    fn invalid(field: &str, message: impl Into<String>) -> CampaignError {
        CampaignError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Bad input or a refusal of the input (exit 2 at the CLI, 4xx over HTTP); everything else
    /// is a failure (exit 1, 5xx).
    pub fn is_bad_input(&self) -> bool {
        match self {
            CampaignError::Invalid { .. }
            | CampaignError::Refused(_)
            | CampaignError::KeyBusy(_)
            | CampaignError::KeyConflict { .. }
            | CampaignError::UnknownKey(_) => true,
            CampaignError::Sync { source, .. } => matches!(
                source.as_ref(),
                SyncError::Mapping(_) | SyncError::MergeFieldConflict { .. }
            ),
            _ => false,
        }
    }
}

/// Checks a request against the audience's defaults and the rules of behaviour 1 and 4.
/// Whether a schedule time is still in the future is checked by [`check_future`] (the push
/// answers a repeat of an already scheduled campaign with its record first).
pub fn validate(
    request: &PushRequest,
    audience: &AudienceConfig,
) -> Result<CampaignSpec, CampaignError> {
    let subject = request.subject.trim();
    if subject.is_empty() {
        return Err(CampaignError::invalid("subject", "must not be empty"));
    }
    let chars = subject.chars().count();
    if chars > MAX_SUBJECT_CHARS {
        return Err(CampaignError::invalid(
            "subject",
            format!("is {chars} characters long; at most {MAX_SUBJECT_CHARS} are allowed"),
        ));
    }
    if request.html.trim().is_empty() {
        return Err(CampaignError::invalid("html", "is empty"));
    }
    let text = match request.text.as_deref().map(str::trim) {
        Some("") => return Err(CampaignError::invalid("text", "is empty")),
        Some(t) => t.to_owned(),
        None => html_to_text(&request.html),
    };
    let from_name = request
        .from_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| audience.from_name.clone())
        .ok_or_else(|| {
            CampaignError::invalid(
                "from_name",
                format!(
                    "missing: give --from-name or set from_name on audience `{}` in the config",
                    audience.name
                ),
            )
        })?;
    let reply_to = match request.reply_to.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Email::parse(r).map_err(|e| {
            CampaignError::invalid("reply_to", format!("`{r}` is not an email address: {e}"))
        })?,
        _ => audience.reply_to.clone().ok_or_else(|| {
            CampaignError::invalid(
                "reply_to",
                format!(
                    "missing: give --reply-to or set reply_to on audience `{}` in the config",
                    audience.name
                ),
            )
        })?,
    };
    let segment = match request.segment.as_deref().map(str::trim) {
        Some("") => return Err(CampaignError::invalid("segment", "is empty")),
        s => s.map(str::to_owned),
    };
    let schedule = request
        .schedule
        .as_deref()
        .map(parse_schedule)
        .transpose()?;
    if request.test_to.len() > MAX_TEST_ADDRESSES {
        return Err(CampaignError::invalid(
            "test_to",
            format!(
                "{} addresses given; at most {MAX_TEST_ADDRESSES} are allowed",
                request.test_to.len()
            ),
        ));
    }
    let test_to = request
        .test_to
        .iter()
        .map(|t| {
            Email::parse(t).map_err(|e| {
                CampaignError::invalid("test_to", format!("`{t}` is not an email address: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CampaignSpec {
        audience: audience.name.clone(),
        subject: subject.to_owned(),
        html: request.html.clone(),
        text,
        from_name,
        reply_to,
        segment,
        schedule,
        test_to,
        no_sync: request.no_sync,
    })
}

/// Parses `--schedule` and checks the quarter-hour rule; the error names the nearest valid
/// times.
pub fn parse_schedule(text: &str) -> Result<DateTime<Utc>, CampaignError> {
    let at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| {
            CampaignError::invalid(
                "schedule",
                format!("`{text}` is not an RFC 3339 time (e.g. 2026-12-01T09:00:00Z): {e}"),
            )
        })?
        .with_timezone(&Utc);
    if let Some((before, after)) = nearest_quarter_hours(at) {
        return Err(CampaignError::invalid(
            "schedule",
            format!(
                "{} is not on a quarter hour UTC (:00, :15, :30, :45); the nearest valid times are {} and {}",
                show(at),
                show(before),
                show(after)
            ),
        ));
    }
    Ok(at)
}

/// Refuses a schedule time that is not in the future.
pub fn check_future(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), CampaignError> {
    if at <= now {
        return Err(CampaignError::invalid(
            "schedule",
            format!("{} is not in the future", show(at)),
        ));
    }
    Ok(())
}

fn show(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `None` when `at` is exactly on a quarter hour; otherwise the quarter hours just before and
/// just after it.
pub fn nearest_quarter_hours(at: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let quarter = Duration::minutes(15);
    // Cannot fail for a 15-minute step on any representable time but the extremes; then the
    // time is refused as not on a quarter hour with itself as the bound.
    let before = at.duration_trunc(quarter).unwrap_or(at);
    (before != at).then(|| (before, before + quarter))
}

/// A readable plain-text part from the HTML (links become numbered footnotes).
pub fn html_to_text(html: &str) -> String {
    match html2text::from_read(html.as_bytes(), 78) {
        Ok(text) => text.trim_end().to_owned(),
        // Only on a reader error, which a byte slice does not produce; fall back to no markup.
        Err(_) => html.to_owned(),
    }
}

/// The content hash: SHA-256 over what decides what the audience receives (audience, subject,
/// content, sender, segment, schedule). Test addresses and `no_sync` are not part of it, so a
/// push with tests and a push without are the same campaign.
pub fn content_hash(spec: &CampaignSpec) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        audience: &'a str,
        subject: &'a str,
        html: &'a str,
        text: &'a str,
        from_name: &'a str,
        reply_to: &'a str,
        segment: Option<&'a str>,
        schedule: Option<String>,
    }
    let hashed = Hashed {
        audience: &spec.audience,
        subject: &spec.subject,
        html: &spec.html,
        text: &spec.text,
        from_name: &spec.from_name,
        reply_to: spec.reply_to.as_str(),
        segment: spec.segment.as_deref(),
        schedule: spec.schedule.map(show),
    };
    // Serialising plain strings cannot fail.
    let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The key used when the admin gives none: pressing "send" twice with the same campaign gives
/// the same key.
pub fn derived_key(content_hash: &str) -> String {
    format!("auto-{}", &content_hash[..content_hash.len().min(32)])
}

/// Checks a given idempotency key.
pub fn validate_key(key: &str) -> Result<(), CampaignError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CampaignError::invalid(
            "key",
            format!(
                "must be 1 to {MAX_KEY_CHARS} characters of letters, digits, `.`, `_`, `:` and `-`"
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
