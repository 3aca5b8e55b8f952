//! What the engine and a provider exchange, in the engine's terms: no provider's wire shapes or
//! member ids.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{Email, EmailError, SubscriptionStatus};

/// What a provider did with one member of an upsert batch (one per member sent, in order).
#[derive(Clone, Debug, PartialEq)]
pub enum UpsertOutcome {
    /// Created or updated; the member's status as the provider reports it, when it says.
    Accepted(Option<SubscriptionStatus>),
    /// Refused; the rest of the batch applied.
    Refused(MemberRefusal),
}

/// Why a provider refused one member of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRefusal {
    /// A short code for the report: the provider's own, or `provider_invalid_email`.
    pub code: String,
    /// The provider's words.
    pub message: String,
    /// The provider refuses the address itself: later runs skip the member until its row
    /// changes, instead of sending it again.
    pub invalid_address: bool,
}

/// What archiving a member found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    Archived,
    /// Not on the list (already archived and purged, or never there).
    AlreadyGone,
}

/// API calls that reached the wire, for the run report's `api_calls`. GETs are reads; every other
/// method is a write. Each attempt counts, retries included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCalls {
    pub read: u64,
    pub write: u64,
}

/// A list member as read back from the provider.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteMember {
    /// The provider's id of the member (Mailchimp: the subscriber hash).
    pub id: String,
    /// As the provider spelled it; see [`RemoteMember::email`].
    pub email_address: String,
    pub status: SubscriptionStatus,
    pub last_changed: Option<DateTime<Utc>>,
    pub unsubscribe_reason: Option<String>,
    /// Keyed by field tag, values as the provider sent them (Mailchimp's ADDRESS is an object).
    pub merge_fields: BTreeMap<String, serde_json::Value>,
}

impl RemoteMember {
    /// The address under the bridge's rules (a contact added by hand may not pass them).
    pub fn email(&self) -> Result<Email, EmailError> {
        Email::parse(&self.email_address)
    }
}

/// One page of changed members.
#[derive(Clone, Debug, PartialEq)]
pub struct MembersPage {
    pub members: Vec<RemoteMember>,
    /// Members matching the filter, over all pages.
    pub total_items: u64,
}
