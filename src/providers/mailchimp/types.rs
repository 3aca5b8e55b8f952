//! What callers give the client and get back: provider-level values in the bridge's own types.
//! The JSON format lives in `wire.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use md5::{Digest, Md5};

use crate::domain::{Email, SubscriptionStatus};
use crate::mapping::{Contact, FieldValue};

/// Mailchimp's id of a list member: the lowercase hex MD5 of the lower-cased address. A provider
/// id, not a [`crate::domain::MemberKey`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberHash(String);

impl SubscriberHash {
    /// The hash Mailchimp uses for `email` (its identity is already trimmed and lower-cased).
    pub fn of(email: &Email) -> SubscriberHash {
        SubscriberHash::of_address(email.as_str())
    }

    /// The hash of an address as the provider spelled it (lower-cased here, as Mailchimp does).
    pub fn of_address(address: &str) -> SubscriberHash {
        let digest = Md5::digest(address.trim().to_lowercase().as_bytes());
        SubscriberHash(hex::encode(digest))
    }

    /// A stored or provider-given id: 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<SubscriberHash> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| SubscriberHash(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriberHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `subscriber_hash(email)`: lowercase hex MD5 of the lower-cased address.
pub fn subscriber_hash(email: &Email) -> SubscriberHash {
    SubscriberHash::of(email)
}

pub use crate::domain::WriteStatus;

/// One member of a batch-subscribe call.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMember {
    pub email: Email,
    pub status: WriteStatus,
    /// Keyed by merge tag.
    pub merge_fields: BTreeMap<String, FieldValue>,
    pub tags: BTreeSet<String>,
}

impl BatchMember {
    pub fn from_contact(contact: &Contact, status: WriteStatus) -> BatchMember {
        BatchMember {
            email: contact.email.clone(),
            status,
            merge_fields: contact.merge_fields.clone(),
            tags: contact.tags.clone(),
        }
    }
}

/// What a batch-subscribe call did. Per-member errors are data: the rest of the batch applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchResult {
    pub created: Vec<BatchMemberOutcome>,
    pub updated: Vec<BatchMemberOutcome>,
    pub errors: Vec<BatchMemberError>,
    pub total_created: u64,
    pub total_updated: u64,
    pub error_count: u64,
}

/// A member the batch created or updated.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMemberOutcome {
    /// As Mailchimp spelled it.
    pub email_address: String,
    pub id: SubscriberHash,
    pub status: SubscriptionStatus,
}

/// A member the batch refused.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMemberError {
    /// As Mailchimp spelled it; [`BatchMemberError::subscriber_hash`] matches it to what was sent.
    pub email_address: String,
    pub error: String,
    /// `ERROR_CONTACT_EXISTS`, `ERROR_GENERIC`, … (open set).
    pub error_code: Option<String>,
    /// The merge field at fault, when the error is about one.
    pub field: Option<String>,
    pub field_message: Option<String>,
}

impl BatchMemberError {
    pub fn subscriber_hash(&self) -> SubscriberHash {
        SubscriberHash::of_address(&self.email_address)
    }
}

pub use crate::providers::RemoteMember;

/// One page of `GET /lists/{list_id}/members`.
#[derive(Clone, Debug, PartialEq)]
pub struct MembersPage {
    pub members: Vec<RemoteMember>,
    /// Members matching the filter, over all pages.
    pub total_items: u64,
}

/// A merge field of an audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMergeField {
    pub merge_id: u64,
    pub tag: String,
    pub name: String,
    /// Mailchimp's type name (`text`, `number`, `address`, `date`, …; compare with
    /// [`crate::mapping::FieldType::as_str`]).
    pub kind: String,
}

pub use crate::providers::{ApiCalls, Archive};

pub use crate::providers::{
    CampaignStatus, ChecklistItem, NewCampaign, RemoteCampaign, SendChecklist,
};
