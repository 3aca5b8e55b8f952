//! What can go wrong talking to Constant Contact, decided from the status code first and refined
//! by the body, which comes in three shapes (all decoded by [`ApiProblem::decode`]): an array of
//! `{error_key, error_message}`, one such object (401s and 429s), or the token endpoint's
//! `{error, error_description}`. Messages name the operation (the spec's `operationId`), the list
//! and, for a call about one member, the member's address; never a token or the client secret.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::providers::retry::{Classify, Disposition, Failure, Stop, classify};

/// The command that connects mailbridge to Constant Contact, named by every error that only it
/// can fix.
pub const AUTH_COMMAND: &str = "mailbridge auth constant-contact";

/// A failed Constant Contact call, with where it happened and how many attempts were made.
#[derive(Debug)]
pub struct ConstantContactError {
    pub(super) operation: &'static str,
    pub(super) list_id: Option<String>,
    pub(super) member: Option<String>,
    pub(super) attempts: u32,
    pub(super) stop: Option<Stop>,
    /// Boxed: the kinds with several texts would make every `Result` large.
    pub(super) kind: Box<ErrorKind>,
}

/// The kinds of failure, one per way a caller reacts.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// No token pair in the state DB for this app.
    #[error("not connected: run `{AUTH_COMMAND}`")]
    NotConnected,
    /// The stored refresh token was refused and no other process stored a newer one.
    #[error("the connection is broken ({detail}): run `{AUTH_COMMAND}` again")]
    ConnectionBroken { detail: String },
    /// The token endpoint refused the app itself or the request (not the refresh token).
    #[error(
        "the token endpoint refused the request ({detail}); check providers.constant_contact.client_id and client_secret"
    )]
    TokenRefused { detail: String },
    /// 401 again after a refresh.
    #[error(
        "the access token was refused (401) even after a refresh{}; run `{AUTH_COMMAND}`",
        suffix(detail)
    )]
    Unauthorized { detail: String },
    #[error(
        "forbidden (403): a scope or user privilege is missing, or the app is deactivated{}",
        suffix(detail)
    )]
    Forbidden { detail: String },
    #[error("not found (404){}", suffix(detail))]
    NotFound { detail: String },
    #[error("conflict (409){}", suffix(detail))]
    Conflict { detail: String },
    /// Any other refusal (4xx other than 429).
    #[error("refused with {status}{}", suffix(detail))]
    Rejected { status: u16, detail: String },
    /// 429 `throttled` (over the per-second rate), or too many activities queued: waiting helps.
    #[error("rate limited (429){}{}", suffix(detail), wait(retry_after))]
    Throttled {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// The day's requests are spent: Constant Contact's quota (429 `quota_exceeded`), or this
    /// process's `daily_budget` (`local`: then nothing was sent).
    #[error("{} until {}", if *local { "the daily_budget of requests is spent (nothing sent)" } else { "Constant Contact's daily request quota is spent (429 quota_exceeded)" }, resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    QuotaExceeded {
        resets_at: DateTime<Utc>,
        local: bool,
    },
    #[error("server error ({status}){}", suffix(detail))]
    Server {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot connect: {detail}")]
    Connect { detail: String },
    /// No complete answer in time. A write may still have run at Constant Contact.
    #[error("no answer within the timeout (the request may still have run at Constant Contact)")]
    Timeout,
    #[error("connection closed before a complete answer: {detail}")]
    ConnectionClosed { detail: String },
    /// A 2xx whose body does not parse: a bug or an API change, not retried.
    #[error("unexpected response body: {detail}")]
    MalformedResponse { detail: String },
    /// A bulk activity ended `failed`, `cancelled` or `timed_out`, or never ended in time.
    #[error("activity {activity_id} ended {state}{}", suffix(detail))]
    ActivityFailed {
        activity_id: String,
        state: String,
        detail: String,
    },
    /// A custom field cannot be created as asked: its label exists with another type, or the
    /// account has its 100 fields.
    #[error("custom field `{label}`: {detail}")]
    CustomField { label: String, detail: String },
    /// A campaign's from or reply-to address is not a confirmed email of the account, which
    /// Constant Contact requires of both; refused before anything is created.
    #[error(
        "{address} (the campaign's {role}) is not a confirmed email address of the Constant Contact account: add it under My Settings in Constant Contact (or with `POST /account/emails`); Constant Contact emails it a confirmation link, and it can be used once that link is clicked (nothing created)"
    )]
    UnconfirmedSender { address: String, role: &'static str },
    /// More test emails than Constant Contact takes (5 a call, 50 a UTC day, each recipient
    /// counted); nothing was sent.
    #[error("test emails refused: {detail} (nothing sent)")]
    TestSendLimit { detail: String },
    /// An argument the API would refuse; nothing was sent.
    #[error("invalid argument: {detail} (nothing sent)")]
    InvalidArgument { detail: String },
    /// The client could not be built or the request could not be formed.
    #[error("client setup failed: {detail}")]
    Setup { detail: String },
    /// The state DB (tokens, budget) failed.
    #[error("the state database failed: {detail}")]
    Store { detail: String },
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn wait(after: &Option<Duration>) -> String {
    after
        .map(|d| format!(", retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

impl Classify for ErrorKind {
    fn failure(&self) -> Failure {
        let status = |status| Failure::Status {
            status,
            retry_after: None,
        };
        match self {
            ErrorKind::Unauthorized { .. } => status(401),
            ErrorKind::Forbidden { .. } => status(403),
            ErrorKind::NotFound { .. } => status(404),
            ErrorKind::Conflict { .. } => status(409),
            ErrorKind::Rejected { status: s, .. } => status(*s),
            ErrorKind::Throttled { retry_after, .. } => Failure::Status {
                status: 429,
                retry_after: *retry_after,
            },
            ErrorKind::Server {
                status,
                retry_after,
                ..
            } => Failure::Status {
                status: *status,
                retry_after: *retry_after,
            },
            ErrorKind::Connect { .. } => Failure::Connect,
            ErrorKind::Timeout => Failure::Timeout,
            ErrorKind::ConnectionClosed { .. } => Failure::ConnectionClosed,
            ErrorKind::MalformedResponse { .. } => Failure::MalformedBody,
            // A spent quota does not come back before midnight UTC, and the rest cannot be fixed
            // by sending again: none is retried.
            ErrorKind::QuotaExceeded { .. }
            | ErrorKind::NotConnected
            | ErrorKind::ConnectionBroken { .. }
            | ErrorKind::TokenRefused { .. }
            | ErrorKind::ActivityFailed { .. }
            | ErrorKind::CustomField { .. }
            | ErrorKind::UnconfirmedSender { .. }
            | ErrorKind::TestSendLimit { .. }
            | ErrorKind::InvalidArgument { .. }
            | ErrorKind::Setup { .. }
            | ErrorKind::Store { .. } => Failure::NotSent,
        }
    }
}

impl ErrorKind {
    /// A short, stable code for reports and the `sync_errors` table.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::NotConnected => "not_connected",
            ErrorKind::ConnectionBroken { .. } => "connection_broken",
            ErrorKind::TokenRefused { .. } => "token_refused",
            ErrorKind::Unauthorized { .. } => "unauthorized",
            ErrorKind::Forbidden { .. } => "forbidden",
            ErrorKind::NotFound { .. } => "not_found",
            ErrorKind::Conflict { .. } => "conflict",
            ErrorKind::Rejected { .. } => "rejected",
            ErrorKind::Throttled { .. } => "rate_limited",
            ErrorKind::QuotaExceeded { .. } => "quota_exceeded",
            ErrorKind::Server { .. } => "server_error",
            ErrorKind::Connect { .. } => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionClosed { .. } => "connection_closed",
            ErrorKind::MalformedResponse { .. } => "malformed_response",
            ErrorKind::ActivityFailed { .. } => "activity_failed",
            ErrorKind::CustomField { .. } => "custom_field",
            ErrorKind::UnconfirmedSender { .. } => "unconfirmed_sender",
            ErrorKind::TestSendLimit { .. } => "test_send_limit",
            ErrorKind::InvalidArgument { .. } => "invalid_argument",
            ErrorKind::Setup { .. } => "setup",
            ErrorKind::Store { .. } => "state_db",
        }
    }
}

impl ConstantContactError {
    pub(super) fn new(operation: &'static str, kind: ErrorKind) -> ConstantContactError {
        ConstantContactError {
            operation,
            list_id: None,
            member: None,
            attempts: 0,
            stop: None,
            kind: Box::new(kind),
        }
    }

    pub(super) fn on_list(mut self, list_id: &str) -> ConstantContactError {
        self.list_id = Some(list_id.to_owned());
        self
    }

    pub(super) fn for_member(mut self, address: &str) -> ConstantContactError {
        self.member = Some(address.to_owned());
        self
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn into_kind(self) -> ErrorKind {
        *self.kind
    }

    /// The operation, as the API reference names it (`createImportJSONActivity`).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    pub fn list_id(&self) -> Option<&str> {
        self.list_id.as_deref()
    }

    /// The member's address, for a call about one member.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// Attempts that were made (0 when the call was refused before sending).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped when the failure itself was transient.
    pub fn gave_up(&self) -> Option<Stop> {
        self.stop
    }

    /// True for transient failures: what an idempotent request would retry.
    pub fn is_retryable(&self) -> bool {
        matches!(
            classify(&self.kind.failure(), true),
            Disposition::Retry { .. }
        )
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

impl fmt::Display for ConstantContactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Constant Contact {}", self.operation)?;
        if let Some(member) = &self.member {
            write!(f, " for {member}")?;
        }
        if let Some(list) = &self.list_id {
            write!(f, " on list {list}")?;
        }
        write!(f, " failed: {}", self.kind)?;
        if self.attempts > 1 || self.stop.is_some() {
            write!(f, " (after {} attempts", self.attempts)?;
            if self.stop == Some(Stop::BudgetExhausted) {
                f.write_str("; the run's retry budget is spent")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The kind is part of the message, so it is not repeated as a source.
impl std::error::Error for ConstantContactError {}

impl From<ConstantContactError> for crate::providers::ProviderError {
    fn from(e: ConstantContactError) -> Self {
        use crate::providers::Reaction;
        let reaction = match e.kind() {
            ErrorKind::NotConnected
            | ErrorKind::ConnectionBroken { .. }
            | ErrorKind::TokenRefused { .. }
            | ErrorKind::Unauthorized { .. }
            | ErrorKind::Forbidden { .. }
            | ErrorKind::Setup { .. }
            | ErrorKind::Store { .. } => Reaction::Stop,
            ErrorKind::NotFound { .. } => Reaction::NotFound,
            ErrorKind::QuotaExceeded { resets_at, .. } => Reaction::OutOfBudget {
                resets_at: *resets_at,
            },
            _ => Reaction::Failed,
        };
        let may_have_run = matches!(
            e.kind(),
            ErrorKind::Timeout | ErrorKind::ConnectionClosed { .. } | ErrorKind::Server { .. }
        );
        crate::providers::ProviderError::new(
            crate::config::ProviderKind::ConstantContact,
            e.operation(),
            e.code(),
            e.to_string(),
        )
        .reacting(reaction)
        .retryable(e.is_retryable())
        .may_have_run(may_have_run)
    }
}

/// The most of a provider's error text kept in a message.
pub const MAX_DETAIL: usize = 500;

/// An error body in any of its three shapes, reduced to the first key and every message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiProblem {
    /// `error_key` (API) or `error` (token endpoint).
    pub key: Option<String>,
    /// `key: message` of each error, in order.
    pub detail: String,
}

impl ApiProblem {
    /// Reads an error body; anything else (HTML, empty) gives no key and no detail.
    pub fn decode(body: &[u8]) -> ApiProblem {
        // Read as a JSON value, not into a struct: a body that repeats a field (which a derived
        // struct refuses whole) still gives what it says; a field of another type is left out.
        let items = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(one @ serde_json::Value::Object(_)) => vec![one],
            _ => Vec::new(),
        };
        let text = |item: &serde_json::Value, field: &str| {
            item.get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let mut key = None;
        let mut parts = Vec::new();
        for item in &items {
            let k = text(item, "error_key")
                .or_else(|| text(item, "error"))
                .filter(|k| !k.is_empty());
            let m = text(item, "error_message")
                .or_else(|| text(item, "error_description"))
                .filter(|m| !m.is_empty());
            if key.is_none() {
                key.clone_from(&k);
            }
            match (k, m) {
                (Some(k), Some(m)) => parts.push(format!("{k}: {m}")),
                (Some(one), None) | (None, Some(one)) => parts.push(one),
                (None, None) => {}
            }
        }
        ApiProblem {
            key,
            detail: bounded(&parts.join("; ")),
        }
    }
}

/// `text` cut to [`MAX_DETAIL`] characters (a provider's text goes into our messages).
pub(super) fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
