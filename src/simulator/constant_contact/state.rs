//! Constant Contact's half of the simulator's world, as plain data: OAuth apps, grants and tokens,
//! contact lists, custom fields, contacts, bulk activities, email campaigns, account senders, and
//! the per-app request budget. It lives inside [`super::super::state::World`] so it shares the
//! world's lock and clock, and `POST /_sim/reset` clears it with everything else.
//!
//! Secrets (client secrets, access, refresh and device tokens) are stored only as SHA-256 digests
//! ([`TokenHash`]): the state can be printed with `{:?}` without leaking one, and a token is found
//! by hashing what the client sent.

use std::collections::{BTreeMap, HashMap};

use chrono::SecondsFormat;
use sha2::{Digest, Sha256};

use super::limits::Budget;
use crate::simulator::state::to_datetime;

/// SHA-256 of a secret; the only form in which the simulator keeps one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&Sha256::digest(secret.as_bytes()));
        Self(bytes)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A fresh random secret (tokens, client secrets, device codes): 32 bytes, URL-safe base64.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random (version 4) UUID in its lowercase hyphenated form, as Constant Contact's ids are.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Constant Contact's timestamp form: `2024-05-13T19:15:12Z` (UTC, whole seconds).
pub fn cc_time(micros: i64) -> String {
    to_datetime(micros).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An OAuth application (`POST /_sim/constant-contact/connect` creates one per call).
#[derive(Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub secret: TokenHash,
}

/// One authorization of an app by the account: the chain its refresh tokens rotate along.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_id: String,
    pub scope: String,
    /// Issued to a public client (device flow): refreshing needs only `client_id`, no secret.
    pub public: bool,
}

#[derive(Debug, Clone)]
pub struct AccessToken {
    pub client_id: String,
    /// Simulated µs after which the token is refused.
    pub expires_at: i64,
}

/// A pending device authorization (`POST /device/authorize`).
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub client_id: String,
    pub user_code: String,
    pub scope: String,
    pub expires_at: i64,
    /// Simulated µs of the previous token poll, for `slow_down`.
    pub last_poll: Option<i64>,
    pub approved: bool,
}

/// `permission_to_send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Explicit,
    Implicit,
    NotSet,
    PendingConfirmation,
    TempHold,
    Unsubscribed,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Explicit => "explicit",
            Permission::Implicit => "implicit",
            Permission::NotSet => "not_set",
            Permission::PendingConfirmation => "pending_confirmation",
            Permission::TempHold => "temp_hold",
            Permission::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "explicit" => Permission::Explicit,
            "implicit" => Permission::Implicit,
            "not_set" => Permission::NotSet,
            "pending_confirmation" => Permission::PendingConfirmation,
            "temp_hold" => Permission::TempHold,
            "unsubscribed" => Permission::Unsubscribed,
            _ => return None,
        })
    }

    /// May receive campaigns (the `active` status filter and campaign sends).
    pub fn is_active(self) -> bool {
        matches!(self, Permission::Explicit | Permission::Implicit)
    }
}

/// Who made a change (`create_source`, `update_source`, `opt_in_source`, `opt_out_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Contact,
    Account,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Contact => "Contact",
            Actor::Account => "Account",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Contact" => Some(Actor::Contact),
            "Account" => Some(Actor::Account),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Contact {
    pub seq: u64,
    pub id: String,
    pub email: String,
    pub permission: Permission,
    pub opt_in_source: Option<Actor>,
    pub opt_in_date: Option<i64>,
    pub opt_out_source: Option<Actor>,
    pub opt_out_date: Option<i64>,
    pub opt_out_reason: Option<String>,
    pub email_created_at: i64,
    pub email_updated_at: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub job_title: Option<String>,
    pub company_name: Option<String>,
    pub create_source: Actor,
    pub update_source: Actor,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    /// `(custom_field_id, value)`, at most one per field.
    pub custom_fields: Vec<(String, String)>,
    pub list_memberships: Vec<String>,
}

impl Contact {
    pub fn new(seq: u64, email: &str, source: Actor, now: i64) -> Self {
        Self {
            seq,
            id: uuid_v4(),
            email: email.trim().to_owned(),
            permission: Permission::NotSet,
            opt_in_source: None,
            opt_in_date: None,
            opt_out_source: None,
            opt_out_date: None,
            opt_out_reason: None,
            email_created_at: now,
            email_updated_at: now,
            first_name: None,
            last_name: None,
            job_title: None,
            company_name: None,
            create_source: source,
            update_source: source,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            custom_fields: Vec::new(),
            list_memberships: Vec::new(),
        }
    }

    /// Gives the contact permission (an opt-in by `source`), clearing any opt-out.
    pub fn opt_in(&mut self, permission: Permission, source: Actor, now: i64) {
        self.permission = permission;
        self.opt_in_source = Some(source);
        self.opt_in_date = Some(now);
        self.opt_out_source = None;
        self.opt_out_date = None;
        self.opt_out_reason = None;
        self.email_updated_at = now;
    }

    /// Unsubscribes the contact, by `source`.
    pub fn opt_out(&mut self, source: Actor, reason: Option<String>, now: i64) {
        self.permission = Permission::Unsubscribed;
        self.opt_out_source = Some(source);
        self.opt_out_date = Some(now);
        self.opt_out_reason = reason;
        self.email_updated_at = now;
        self.updated_at = now;
    }

    pub fn set_custom_field(&mut self, field_id: &str, value: String) {
        match self.custom_fields.iter_mut().find(|(id, _)| id == field_id) {
            Some(slot) => slot.1 = value,
            None => self.custom_fields.push((field_id.to_owned(), value)),
        }
    }

    pub fn add_list(&mut self, list_id: &str) {
        if !self.list_memberships.iter().any(|l| l == list_id) {
            self.list_memberships.push(list_id.to_owned());
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContactList {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct CustomField {
    pub id: String,
    pub label: String,
    /// The label with spaces replaced by underscores; imports address the field as `cf:<name>`.
    pub name: String,
    pub kind: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Custom field types the account accepts (create_custom_fields.html).
pub const CUSTOM_FIELD_TYPES: [&str; 9] = [
    "string",
    "date",
    "datetime",
    "single_select",
    "currency",
    "text_area",
    "multi_select",
    "number",
    "boolean",
];

/// An activity's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityState {
    Initialized,
    Processing,
    Completed,
}

impl ActivityState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityState::Initialized => "initialized",
            ActivityState::Processing => "processing",
            ActivityState::Completed => "completed",
        }
    }
}

/// One row of a JSON import, after parsing.
#[derive(Debug, Clone, Default)]
pub struct ImportRow {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub job_title: Option<String>,
    pub company_name: Option<String>,
    /// `("cf:<name>" without the prefix, value)`.
    pub custom_fields: Vec<(String, String)>,
}

/// What an activity will do when the background worker reaches it (emptied once done).
#[derive(Debug, Clone)]
pub enum ActivityWork {
    Import {
        rows: Vec<ImportRow>,
        list_ids: Vec<String>,
    },
    RemoveListMemberships {
        from: RemoveFrom,
        list_ids: Vec<String>,
    },
    Done,
}

/// Whose memberships a `remove_list_memberships` activity removes (resolved when it runs, so an
/// import queued before it is seen).
#[derive(Debug, Clone)]
pub enum RemoveFrom {
    Contacts(Vec<String>),
    MembersOf(Vec<String>),
    AllActive,
}

/// `status{…}` of an activity.
#[derive(Debug, Clone, Default)]
pub struct ActivityStatus {
    pub items_total_count: u64,
    pub items_completed_count: u64,
    pub person_count: u64,
    pub error_count: u64,
    pub correctable_count: u64,
    pub cannot_add_to_list_count: u64,
    pub list_count: u64,
}

#[derive(Debug, Clone)]
pub struct Activity {
    pub id: String,
    pub state: ActivityState,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// When a `GET /activities/{id}` first answered it completed: the end of the client's wait.
    pub seen_completed_at: Option<i64>,
    /// `contacts_json_import` or `remove_list_memberships`.
    pub kind: &'static str,
    pub status: ActivityStatus,
    pub errors: Vec<String>,
    pub work: ActivityWork,
}

/// An email campaign activity's `current_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityStatusCode {
    Draft,
    Done,
}

impl ActivityStatusCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityStatusCode::Draft => "DRAFT",
            ActivityStatusCode::Done => "DONE",
        }
    }

    /// The campaign's `current_status` for this activity status.
    pub fn campaign_status(self) -> &'static str {
        match self {
            ActivityStatusCode::Draft => "Draft",
            ActivityStatusCode::Done => "Done",
        }
    }
}

/// The `primary_email` activity of a campaign (the one that is edited, tested and sent).
#[derive(Debug, Clone)]
pub struct EmailActivity {
    pub id: String,
    pub permalink_id: String,
    pub campaign_id: String,
    pub status: ActivityStatusCode,
    pub from_name: String,
    pub from_email: String,
    pub reply_to_email: String,
    pub subject: String,
    pub preheader: Option<String>,
    pub html_content: String,
    pub contact_list_ids: Vec<String>,
    /// Contacts this activity was sent to (a re-send goes only to the others).
    pub sent_to: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct EmailCampaign {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub activity_id: String,
}

/// A recorded campaign send (`GET /_sim/constant-contact/sends`).
#[derive(Debug, Clone)]
pub struct Send {
    pub campaign_activity_id: String,
    pub contact_id: String,
    pub email: String,
    pub at: i64,
}

/// A recorded test send.
#[derive(Debug, Clone)]
pub struct TestSend {
    pub campaign_activity_id: String,
    pub email: String,
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct Bounce {
    /// Increasing; the report lists bounces newest (highest) first.
    pub seq: u64,
    pub campaign_activity_id: String,
    pub contact_id: String,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub code: String,
    pub at: i64,
}

/// An account email address (a possible sender).
#[derive(Debug, Clone)]
pub struct AccountEmail {
    pub email: String,
    pub confirmed: bool,
    pub id: u64,
}

/// Constant Contact's counters for `GET /_sim/stats` (`constant_contact`).
#[derive(Debug, Clone, Default)]
pub struct CcStats {
    /// Requests per spec `operationId` (every request that reached a route, refused or not).
    pub operations: BTreeMap<&'static str, u64>,
    pub throttled: u64,
    pub quota_exceeded: u64,
    /// Calls to `POST /oauth2/default/v1/token`.
    pub token_calls: u64,
}

impl CcStats {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "operations": self.operations,
            "rate_limited": {"throttled": self.throttled, "quota_exceeded": self.quota_exceeded},
            "token_calls": self.token_calls,
        })
    }
}

/// The whole Constant Contact state (one account).
#[derive(Debug, Default)]
pub struct CcWorld {
    pub apps: HashMap<String, App>,
    pub grants: Vec<Grant>,
    /// The one live refresh token of each grant → its index in `grants`.
    pub refresh_tokens: HashMap<TokenHash, usize>,
    pub access_tokens: HashMap<TokenHash, AccessToken>,
    pub device_codes: HashMap<TokenHash, DeviceCode>,
    pub lists: Vec<ContactList>,
    pub custom_fields: Vec<CustomField>,
    /// Contacts in creation order (`seq`), which is also the cursor order.
    pub contacts: BTreeMap<u64, Contact>,
    pub contact_by_id: HashMap<String, u64>,
    pub contact_by_email: HashMap<String, u64>,
    pub activities: HashMap<String, Activity>,
    pub campaigns: Vec<EmailCampaign>,
    pub email_activities: HashMap<String, EmailActivity>,
    pub sends: Vec<Send>,
    pub test_sends: Vec<TestSend>,
    pub bounces: Vec<Bounce>,
    /// The campaign activity sent most recently (bounces land on it).
    pub last_sent_activity: Option<String>,
    pub account_emails: Vec<AccountEmail>,
    pub budgets: HashMap<String, Budget>,
    pub next_seq: u64,
}

/// The sender every simulated account starts with.
pub const SEED_SENDER: &str = "club@example.org";

impl CcWorld {
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn list(&self, list_id: &str) -> Option<&ContactList> {
        self.lists.iter().find(|l| l.id == list_id)
    }

    pub fn contact(&self, contact_id: &str) -> Option<&Contact> {
        self.contact_by_id
            .get(contact_id)
            .and_then(|seq| self.contacts.get(seq))
    }

    pub fn contact_mut(&mut self, contact_id: &str) -> Option<&mut Contact> {
        let seq = *self.contact_by_id.get(contact_id)?;
        self.contacts.get_mut(&seq)
    }

    pub fn contact_by_email_mut(&mut self, email: &str) -> Option<&mut Contact> {
        let seq = *self.contact_by_email.get(&email_key(email))?;
        self.contacts.get_mut(&seq)
    }

    pub fn contact_by_email(&self, email: &str) -> Option<&Contact> {
        let seq = self.contact_by_email.get(&email_key(email))?;
        self.contacts.get(seq)
    }

    /// Stores a new contact and indexes it; returns its id.
    pub fn insert_contact(&mut self, contact: Contact) -> String {
        let id = contact.id.clone();
        self.contact_by_id.insert(id.clone(), contact.seq);
        self.contact_by_email
            .insert(email_key(&contact.email), contact.seq);
        self.contacts.insert(contact.seq, contact);
        id
    }

    /// Changes a contact's address, keeping the email index right. `false` if the new address
    /// belongs to another contact.
    pub fn change_email(&mut self, contact_id: &str, email: &str, now: i64) -> bool {
        let Some(seq) = self.contact_by_id.get(contact_id).copied() else {
            return false;
        };
        let key = email_key(email);
        match self.contact_by_email.get(&key) {
            Some(other) if *other != seq => return false,
            Some(_) => return true,
            None => {}
        }
        let Some(contact) = self.contacts.get_mut(&seq) else {
            return false;
        };
        self.contact_by_email.remove(&email_key(&contact.email));
        contact.email = email.trim().to_owned();
        contact.email_updated_at = now;
        self.contact_by_email.insert(key, seq);
        true
    }

    pub fn custom_field_by_name(&self, name: &str) -> Option<&CustomField> {
        self.custom_fields.iter().find(|f| f.name == name)
    }

    /// Activities not yet completed (the queue the 1,000 limit applies to).
    pub fn unfinished_activities(&self) -> usize {
        self.activities
            .values()
            .filter(|a| a.state != ActivityState::Completed)
            .count()
    }

    /// Seeds a new account: one confirmed sender.
    pub fn seed_if_empty(&mut self) {
        if self.account_emails.is_empty() {
            self.account_emails.push(AccountEmail {
                email: SEED_SENDER.to_owned(),
                confirmed: true,
                id: 1,
            });
        }
    }
}

/// The index key of an address: trimmed and lower-cased.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A loose shape check of an address (one `@`, a dotted domain, no spaces, ≤ 80 characters).
pub fn is_plausible_email(email: &str) -> bool {
    let email = email.trim();
    if email.is_empty() || email.len() > 80 || email.chars().any(char::is_whitespace) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_4_shape() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(id, uuid_v4());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let hash = TokenHash::of("s3cret-token");
        assert!(!format!("{hash:?}").contains("s3cret"));
        assert_eq!(hash, TokenHash::of("s3cret-token"));
    }

    #[test]
    fn email_shapes() {
        for (email, ok) in [
            ("ann@example.org", true),
            (" Ann@Example.org ", true),
            ("ann@example", false),
            ("ann example@x.org", false),
            ("@x.org", false),
            ("a@b@c.org", false),
            ("", false),
        ] {
            assert_eq!(is_plausible_email(email), ok, "{email}");
        }
    }

    #[test]
    fn email_change_keeps_the_index_and_refuses_a_taken_address() {
        let mut world = CcWorld::default();
        let a = Contact::new(world.next_seq(), "a@x.org", Actor::Account, 1);
        let b = Contact::new(world.next_seq(), "b@x.org", Actor::Account, 1);
        let a_id = world.insert_contact(a);
        world.insert_contact(b);
        assert!(!world.change_email(&a_id, "B@x.org", 2));
        assert!(world.change_email(&a_id, "c@x.org", 2));
        assert_eq!(world.contact_by_email("C@X.org").unwrap().id, a_id);
        assert!(world.contact_by_email("a@x.org").is_none());
    }

    #[test]
    fn times_are_utc_with_a_z() {
        assert_eq!(cc_time(1_445_442_096_000_000), "2015-10-21T15:41:36Z");
    }
}
