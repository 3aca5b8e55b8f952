//! What a bounce message says, in the shape `mailbridge bounce parse --json` prints (a contract:
//! `{"file", "kind", "recipients": [{"email", "action", "status", "reply_code", "reason", "hard",
//! "diagnostic"}], "feedback_type"?, "original_message_id"?, "verp"?}`; `file` is added by the
//! command).

use serde::Serialize;

/// What kind of message it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceKind {
    /// A delivery status notification: RFC 3464, or an MTA's own bounce text.
    Dsn,
    /// An ARF feedback report (RFC 5965): a complaint, an opt-out…
    Arf,
    /// An auto-reply (RFC 3834, vacation messages).
    Autoreply,
    /// Not a bounce, or a message that could not be read ([`BounceReport::not_bounce_reason`]).
    NotBounce,
}

/// Why delivery failed, in Sisimai's vocabulary (so results compare with the most used
/// classifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    UserUnknown,
    HostUnknown,
    HasMoved,
    MailboxFull,
    ExceedLimit,
    MesgTooBig,
    Filtered,
    Rejected,
    Blocked,
    SpamDetected,
    VirusDetected,
    ContentError,
    PolicyViolation,
    SecurityError,
    AuthFailure,
    RequirePtr,
    BadReputation,
    NotCompliantRfc,
    NoRelaying,
    NotAccept,
    TooManyConn,
    Speeding,
    Suspend,
    Expired,
    NetworkError,
    SystemError,
    SystemFull,
    MailerError,
    SyntaxError,
    OnHold,
    Undefined,
    Feedback,
    Vacation,
    Delivered,
}

impl Reason {
    /// Every reason, in the order above.
    pub const ALL: [Reason; 34] = [
        Reason::UserUnknown,
        Reason::HostUnknown,
        Reason::HasMoved,
        Reason::MailboxFull,
        Reason::ExceedLimit,
        Reason::MesgTooBig,
        Reason::Filtered,
        Reason::Rejected,
        Reason::Blocked,
        Reason::SpamDetected,
        Reason::VirusDetected,
        Reason::ContentError,
        Reason::PolicyViolation,
        Reason::SecurityError,
        Reason::AuthFailure,
        Reason::RequirePtr,
        Reason::BadReputation,
        Reason::NotCompliantRfc,
        Reason::NoRelaying,
        Reason::NotAccept,
        Reason::TooManyConn,
        Reason::Speeding,
        Reason::Suspend,
        Reason::Expired,
        Reason::NetworkError,
        Reason::SystemError,
        Reason::SystemFull,
        Reason::MailerError,
        Reason::SyntaxError,
        Reason::OnHold,
        Reason::Undefined,
        Reason::Feedback,
        Reason::Vacation,
        Reason::Delivered,
    ];

    /// The word (`userunknown`, `mailboxfull`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnknown => "userunknown",
            Reason::HostUnknown => "hostunknown",
            Reason::HasMoved => "hasmoved",
            Reason::MailboxFull => "mailboxfull",
            Reason::ExceedLimit => "exceedlimit",
            Reason::MesgTooBig => "mesgtoobig",
            Reason::Filtered => "filtered",
            Reason::Rejected => "rejected",
            Reason::Blocked => "blocked",
            Reason::SpamDetected => "spamdetected",
            Reason::VirusDetected => "virusdetected",
            Reason::ContentError => "contenterror",
            Reason::PolicyViolation => "policyviolation",
            Reason::SecurityError => "securityerror",
            Reason::AuthFailure => "authfailure",
            Reason::RequirePtr => "requireptr",
            Reason::BadReputation => "badreputation",
            Reason::NotCompliantRfc => "notcompliantrfc",
            Reason::NoRelaying => "norelaying",
            Reason::NotAccept => "notaccept",
            Reason::TooManyConn => "toomanyconn",
            Reason::Speeding => "speeding",
            Reason::Suspend => "suspend",
            Reason::Expired => "expired",
            Reason::NetworkError => "networkerror",
            Reason::SystemError => "systemerror",
            Reason::SystemFull => "systemfull",
            Reason::MailerError => "mailererror",
            Reason::SyntaxError => "syntaxerror",
            Reason::OnHold => "onhold",
            Reason::Undefined => "undefined",
            Reason::Feedback => "feedback",
            Reason::Vacation => "vacation",
            Reason::Delivered => "delivered",
        }
    }

    /// The reason named `word`, if it is one.
    pub fn from_word(word: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// Sisimai's hard-bounce rule: userunknown, hostunknown, hasmoved, and notaccept with a 5xx
    /// reply or status; `None` where it is no failure (delivered, feedback, vacation).
    pub fn hard(self, permanent_code: bool) -> Option<bool> {
        match self {
            Reason::Delivered | Reason::Feedback | Reason::Vacation => None,
            Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved => Some(true),
            Reason::NotAccept => Some(permanent_code),
            _ => Some(false),
        }
    }
}

/// One recipient the message reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// The address as reported (trimmed, without angle brackets).
    pub email: String,
    /// The DSN `Action` (`failed`, `delayed`, `delivered`, …), if any.
    pub action: Option<String>,
    /// The RFC 3463 status (`5.1.1`), if any.
    pub status: Option<String>,
    /// The SMTP reply code (`550`), if any.
    pub reply_code: Option<u16>,
    pub reason: Reason,
    /// True for a hard bounce, false for a soft one, null where it is no failure.
    pub hard: Option<bool>,
    /// The remote server's words (bounded), if any.
    pub diagnostic: Option<String>,
}

/// What one message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BounceReport {
    pub kind: BounceKind,
    pub recipients: Vec<Recipient>,
    /// ARF `Feedback-Type` (`abuse`, `opt-out`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
    /// The Message-ID of the message that bounced (from the returned headers), without `<>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// A VERP bounce address (`bounces+…@…`) the message was sent to or returned, undecoded:
    /// whether it is genuine is for the ingest step to check with the relay's secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verp: Option<String>,
    /// A one-click unsubscribe request address (`unsubscribe+TOKEN@…`) the message was delivered
    /// to, undecoded: the ingest step checks its token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
    /// Why it is [`BounceKind::NotBounce`] (not a bounce, or unreadable), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_bounce_reason: Option<String>,
}

impl BounceReport {
    /// A message that is no bounce (or could not be read), and why.
    pub fn not_bounce(why: impl Into<String>) -> BounceReport {
        BounceReport {
            kind: BounceKind::NotBounce,
            recipients: Vec::new(),
            feedback_type: None,
            original_message_id: None,
            verp: None,
            unsubscribe: None,
            not_bounce_reason: Some(why.into()),
        }
    }
}
