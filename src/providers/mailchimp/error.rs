//! What can go wrong talking to Mailchimp, decided from the status code first (a body may be
//! missing or HTML) and refined by the problem document's `title`. Messages name the operation and
//! the list, never the API key.

use std::fmt;
use std::time::Duration;

use crate::providers::retry::{Classify, Disposition, Failure, Stop, classify};

/// A failed Mailchimp call, with where it happened and how many attempts were made.
#[derive(Debug)]
pub struct MailchimpError {
    pub(super) operation: &'static str,
    pub(super) list_id: Option<String>,
    pub(super) attempts: u32,
    pub(super) stop: Option<Stop>,
    pub(super) kind: ErrorKind,
}

/// A field-level validation message from a problem document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The kinds of failure, one per way a caller reacts.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error(
        "the API key was refused by {base_url} (401); check providers.mailchimp.api_key and that its data center matches the base URL"
    )]
    Unauthorized { base_url: String },
    #[error("forbidden (403){}", suffix(detail))]
    Forbidden { detail: String },
    #[error("not found (404){}", suffix(detail))]
    NotFound { detail: String },
    /// 400 "Member In Compliance State": unsubscribed or cleaned at Mailchimp; Mailchimp wins.
    #[error("member is in a compliance state (400){}", suffix(detail))]
    Compliance { detail: String },
    /// 400 "Forgotten Email Not Subscribed": permanently deleted; only the person can come back.
    #[error(
        "address was permanently deleted and cannot be re-imported (400){}",
        suffix(detail)
    )]
    Forgotten { detail: String },
    /// 400 "Member Exists" (a create for an address already on the list).
    #[error("member already exists (400){}", suffix(detail))]
    MemberExists { detail: String },
    /// 400 "Invalid Resource": the body failed validation; `errors` names the fields.
    #[error("invalid resource (400){}{}", suffix(detail), field_list(errors))]
    InvalidResource {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 405 on archive: "cannot archive a contact that is bounced, pending or archived".
    #[error("member cannot be archived (405){}", suffix(detail))]
    CannotArchive { detail: String },
    /// Any other refusal (4xx other than 429).
    #[error("refused with {status} {title}{}", suffix(detail))]
    Rejected {
        status: u16,
        title: String,
        detail: String,
    },
    #[error("rate limited (429){}", wait(retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("server error ({status}){}", suffix(detail))]
    Server {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot connect: {detail}")]
    Connect { detail: String },
    /// No complete answer in time. A write may still have run on Mailchimp's side.
    #[error("no answer within the timeout (the request may still have run at Mailchimp)")]
    Timeout,
    #[error("connection closed before a complete answer: {detail}")]
    ConnectionClosed { detail: String },
    /// A 2xx whose body does not parse: a bug or an API change, not retried.
    #[error("unexpected response body: {detail}")]
    MalformedResponse { detail: String },
    /// More than 500 members for one batch-subscribe call; nothing was sent.
    #[error("{count} members in one batch; Mailchimp takes at most 500 per call (nothing sent)")]
    TooManyMembers { count: usize },
    /// An argument the API would refuse; nothing was sent.
    #[error("invalid argument: {detail} (nothing sent)")]
    InvalidArgument { detail: String },
    /// The client could not be built or the request could not be formed.
    #[error("client setup failed: {detail}")]
    Setup { detail: String },
    /// A `/batches` batch was not `finished` within the wait allowed; its operations may still
    /// run at Mailchimp (a later run writes the same members again).
    #[error(
        "batch {batch_id} was not finished after {waited_secs} s (status `{status}`); its operations may still run at Mailchimp"
    )]
    BatchUnfinished {
        batch_id: String,
        status: String,
        waited_secs: u64,
    },
    /// A finished batch's results could not be read (archive too big, not a gzipped tar, no
    /// result for an operation): the operations ran, what they did is unknown.
    #[error("the results of batch {batch_id} cannot be read: {detail}")]
    BatchResults { batch_id: String, detail: String },
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn field_list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("; {}: {}", e.field, e.message))
        .collect()
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
            ErrorKind::Compliance { .. }
            | ErrorKind::Forgotten { .. }
            | ErrorKind::MemberExists { .. }
            | ErrorKind::InvalidResource { .. } => status(400),
            ErrorKind::CannotArchive { .. } => status(405),
            ErrorKind::Rejected { status: s, .. } => status(*s),
            ErrorKind::RateLimited { retry_after } => Failure::Status {
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
            ErrorKind::MalformedResponse { .. } | ErrorKind::BatchResults { .. } => {
                Failure::MalformedBody
            }
            ErrorKind::BatchUnfinished { .. } => Failure::Timeout,
            ErrorKind::TooManyMembers { .. }
            | ErrorKind::InvalidArgument { .. }
            | ErrorKind::Setup { .. } => Failure::NotSent,
        }
    }
}

impl ErrorKind {
    /// A short, stable code for reports and the `sync_errors` table.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::Unauthorized { .. } => "unauthorized",
            ErrorKind::Forbidden { .. } => "forbidden",
            ErrorKind::NotFound { .. } => "not_found",
            ErrorKind::Compliance { .. } => "compliance_state",
            ErrorKind::Forgotten { .. } => "forgotten_email",
            ErrorKind::MemberExists { .. } => "member_exists",
            ErrorKind::InvalidResource { .. } => "invalid_resource",
            ErrorKind::CannotArchive { .. } => "cannot_archive",
            ErrorKind::Rejected { .. } => "rejected",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::Server { .. } => "server_error",
            ErrorKind::Connect { .. } => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionClosed { .. } => "connection_closed",
            ErrorKind::MalformedResponse { .. } => "malformed_response",
            ErrorKind::TooManyMembers { .. } => "too_many_members",
            ErrorKind::InvalidArgument { .. } => "invalid_argument",
            ErrorKind::Setup { .. } => "setup",
            ErrorKind::BatchUnfinished { .. } => "batch_unfinished",
            ErrorKind::BatchResults { .. } => "batch_results",
        }
    }
}

impl MailchimpError {
    pub(super) fn new(
        operation: &'static str,
        list_id: Option<&str>,
        kind: ErrorKind,
    ) -> MailchimpError {
        MailchimpError {
            operation,
            list_id: list_id.map(str::to_owned),
            attempts: 0,
            stop: None,
            kind,
        }
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }

    /// The client operation, e.g. `batch_subscribe`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    pub fn list_id(&self) -> Option<&str> {
        self.list_id.as_deref()
    }

    /// Attempts that were made (0 when the call was refused before sending).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped, when the failure itself was transient: the per-request attempt limit
    /// or the run's retry budget. `None` for permanent failures.
    pub fn gave_up(&self) -> Option<Stop> {
        self.stop
    }

    /// True for transient failures: what an idempotent request would retry (429, 5xx, connection
    /// errors, timeouts).
    pub fn is_retryable(&self) -> bool {
        matches!(
            classify(&self.kind.failure(), true),
            Disposition::Retry { .. }
        )
    }

    /// See [`ErrorKind::code`].
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

impl fmt::Display for MailchimpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailchimp {}", self.operation)?;
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
impl std::error::Error for MailchimpError {}

impl From<MailchimpError> for crate::providers::ProviderError {
    fn from(e: MailchimpError) -> Self {
        use crate::providers::Reaction;
        let reaction = match e.kind() {
            ErrorKind::Unauthorized { .. }
            | ErrorKind::Forbidden { .. }
            | ErrorKind::Setup { .. } => Reaction::Stop,
            ErrorKind::CannotArchive { .. } => Reaction::CannotArchive,
            ErrorKind::NotFound { .. } => Reaction::NotFound,
            _ => Reaction::Failed,
        };
        let may_have_run = matches!(
            e.kind(),
            ErrorKind::Timeout
                | ErrorKind::ConnectionClosed { .. }
                | ErrorKind::Server { .. }
                | ErrorKind::BatchUnfinished { .. }
                | ErrorKind::BatchResults { .. }
        );
        crate::providers::ProviderError::new(
            crate::config::ProviderKind::Mailchimp,
            e.operation(),
            e.code(),
            e.to_string(),
        )
        .reacting(reaction)
        .retryable(e.is_retryable())
        .may_have_run(may_have_run)
    }
}
