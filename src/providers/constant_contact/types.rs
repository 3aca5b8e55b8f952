//! What callers give the client and get back, in the bridge's own types. The JSON format lives
//! in `wire.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::mapping::FieldType;
use crate::providers::RemoteMember;

/// What `mailbridge auth constant-contact` shows the person who connects the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCode {
    /// The code to type at [`DeviceCode::verification_uri`].
    pub user_code: String,
    pub verification_uri: String,
    /// The same page with the code filled in, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// A custom field of the account (Constant Contact's merge fields are per account, not per
/// list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCustomField {
    pub id: String,
    pub label: String,
    /// The label with spaces as underscores: what an import addresses as `cf:<name>`.
    pub name: String,
    /// Constant Contact's type: `string`, `number`, `date`, …
    pub kind: String,
}

/// The Constant Contact type a field of the mapping is created with: everything that is text at
/// heart (phone numbers, URLs, postal codes) is a `string`.
pub fn field_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Text | FieldType::Phone | FieldType::Url | FieldType::Zip => "string",
        FieldType::Number => "number",
        FieldType::Date | FieldType::Birthday => "date",
    }
}

/// Who unsubscribed a contact: the person (the account cannot add them back until they opt in
/// again) or the account (it may add them back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptOutSource {
    Contact,
    Account,
}

/// One unsubscribed member of a list, as the opt-out poll reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct OptOut {
    /// `last_changed` is the opt-out date, `unsubscribe_reason` the reason given.
    pub member: RemoteMember,
    /// `None` when Constant Contact did not say.
    pub source: Option<OptOutSource>,
}

/// One bounce of a sent campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounce {
    pub email: String,
    /// Constant Contact's bounce code: `B` (no such address) and `S` (suspended) are hard; `D`,
    /// `F`, `V`, `X`, `Z` are soft or other.
    pub code: String,
    pub at: DateTime<Utc>,
    /// The campaign activity that bounced.
    pub activity_id: String,
}

impl Bounce {
    /// Whether the address itself is bad (codes `B` and `S`).
    pub fn is_hard(&self) -> bool {
        matches!(self.code.as_str(), "B" | "S")
    }
}
