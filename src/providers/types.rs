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
    /// Not sent: the provider stopped taking requests part way through the batch (its budget
    /// ran out, say) after earlier members were written. The engine records those, and treats
    /// this member as it treats a batch that failed whole with this error.
    NotSent(super::ProviderError),
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

/// One member written on its own terms, where a batch upsert does not fit: an address change
/// (found at its old address), a member whose status the provider keeps (pending), a member
/// whose tags are removed. Providers that can send many of these at once do.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberWrite {
    /// The address the provider has the member at now (the old one on an address change).
    pub at: String,
    pub email: Email,
    /// Applies only when the member is created.
    pub status_if_new: crate::domain::WriteStatus,
    /// Forced on an existing member when given.
    pub status: Option<crate::domain::WriteStatus>,
    pub merge_fields: BTreeMap<String, crate::mapping::FieldValue>,
    /// Tags to set active (`true`) or inactive (`false`) once the member is written.
    pub tags: Vec<(String, bool)>,
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

/// An event dated more than this far in the future is taken as happening when it was received:
/// a date in 9999 must not outrank every later real event. Whichever provider reports it.
pub const MAX_FUTURE_SECS: i64 = 300;

/// An event's time: as given, unless it lies more than [`MAX_FUTURE_SECS`] after `now` (the
/// time of receipt), which it then becomes.
pub fn not_after_now(at: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    if (at - now).num_seconds() > MAX_FUTURE_SECS {
        now
    } else {
        at
    }
}

/// One page of a provider's members, and where the next one starts (an opaque token from the
/// provider: an offset, a cursor link), `None` on the last page.
#[derive(Clone, Debug, PartialEq)]
pub struct MembersPage {
    pub members: Vec<RemoteMember>,
    pub next: Option<String>,
}

/// A member field the provider holds (Mailchimp: a list's merge field; Constant Contact: an
/// account's custom field), named by the mapping's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteField {
    pub tag: String,
    pub name: String,
    /// The provider's own type name; compare with [`crate::providers::Provider::field_type`].
    pub kind: String,
}

/// A change to a list member the provider reports since a watermark (an opt-out, a bounce, an
/// address awaiting confirmation), to be recorded as an event of the audience.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteChange {
    /// As the provider spells it.
    pub email: String,
    /// The event type it is recorded as: `unsubscribed`, `complained`, `cleaned`, `pending`,
    /// `soft_bounce` (the provider's [`event_meaning`] says what each means).
    pub event_type: &'static str,
    /// When it happened at the provider, if it says.
    pub at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// What the provider said, kept with the event.
    pub payload: serde_json::Value,
}

/// One page of changes, and where the next one starts (`None` on the last page).
#[derive(Clone, Debug, PartialEq)]
pub struct ChangesPage {
    pub changes: Vec<RemoteChange>,
    pub next: Option<String>,
}

/// One provider event as received, before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// `mailchimp` or `mailchimp_transactional`.
    pub provider: &'static str,
    /// The configured audience of the list, when the list is one we sync.
    pub audience: Option<String>,
    pub list_id: Option<String>,
    /// subscribed, unsubscribed, complained, cleaned, pending, profile, upemail, campaign;
    /// transactional: hard_bounce, soft_bounce, reject, spam, unsub, and others kept as sent.
    pub event_type: String,
    /// Identity form (trimmed, lower-cased); for `upemail` the old address.
    pub email: Option<String>,
    pub member_key: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339 UTC with milliseconds.
    pub fired_at: String,
    /// The provider's id of what the event is about (transactional: the message id).
    pub source_id: Option<String>,
    /// The event as received, as JSON.
    pub payload: String,
    /// Known to come from the provider: a signed delivery or a read through its API. An
    /// unverified event is a hint, confirmed with the provider before it is applied.
    pub verified: bool,
    /// Why the event is recorded but will never be applied (`unknown_list`: no audience has its
    /// list). Such an event is stored as applied with this outcome, and changes nothing.
    pub ignored: Option<&'static str>,
}

/// Ends the address at the start of a dedupe key ([`NewEvent::dedupe_key`]): U+001F (the unit
/// separator), which sorts below every printable character.
const KEY_SEPARATOR: char = '\u{1f}';

impl NewEvent {
    /// The dedupe key: provider, type, list (or message), address, time and reason. A retried
    /// delivery of the same event has the same key.
    ///
    /// The key starts with the address (any U+001F in it left out) and U+001F, so that the keys
    /// of one address are one range (`events::same_email_sql`): on a SQLite state DB the key's unique
    /// index is also how an address's events are found, and a stored event adds one randomly
    /// placed index entry instead of two (half of the pages a webhook's commit wrote). The rest
    /// of the key has the whole address, so the prefix decides nothing about what is a duplicate.
    pub fn dedupe_key(&self) -> String {
        let email = self.email.as_deref().unwrap_or("");
        let mut key = String::with_capacity(2 * email.len() + 64);
        key.extend(email.chars().filter(|c| *c != KEY_SEPARATOR));
        key.push(KEY_SEPARATOR);
        key.push_str(&format!(
            "{}:{}:{}:{}:{}:{}",
            self.provider,
            self.event_type,
            self.list_id
                .as_deref()
                .or(self.source_id.as_deref())
                .unwrap_or(""),
            email,
            self.fired_at,
            self.reason.as_deref().unwrap_or("")
        ));
        key
    }
}

/// What a stored provider event means for a member, whichever provider sent it: each provider
/// says which of its event types (and reasons) is which, and the engine decides once what each
/// meaning does (write-back, suppression, the contact's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventMeaning {
    /// The member is subscribed to the list (again).
    Subscribed,
    /// The member awaits a double opt-in confirmation.
    Pending,
    /// The member unsubscribed; `from_list` when the event is about a list membership (the
    /// contact's status there changes), not a transactional message.
    Unsubscribed { from_list: bool },
    /// The member marked mail as spam.
    Complained { from_list: bool },
    /// The provider cleaned the address from the list: it bounced hard, or (`abuse`) its owner
    /// complained.
    Cleaned { abuse: bool },
    /// The member changed the address.
    EmailChanged,
    /// A transactional message bounced hard.
    HardBounce,
    /// The provider refused to send a transactional message to the address.
    Rejected,
    /// A transactional message bounced soft.
    SoftBounce,
    /// Nothing the bridge acts on (opens, clicks, profile updates, unknown types).
    Nothing,
}

/// The meaning of a stored event of `provider` (the name it was stored under), `kind` and
/// `reason`.
pub fn event_meaning(provider: &str, kind: &str, reason: Option<&str>) -> EventMeaning {
    match provider {
        super::mailchimp::webhook::PROVIDER => super::mailchimp::webhook::list_event(kind, reason),
        super::mailchimp::webhook::TRANSACTIONAL => {
            super::mailchimp::webhook::transactional_event(kind)
        }
        super::constant_contact::seam::PROVIDER => {
            super::constant_contact::seam::event_meaning(kind)
        }
        BOUNCE_MAIL => bounce_mail_meaning(kind),
        ONE_CLICK => match kind {
            "unsubscribed" => EventMeaning::Unsubscribed { from_list: false },
            _ => EventMeaning::Nothing,
        },
        _ => EventMeaning::Nothing,
    }
}

/// The name one-click unsubscribes (RFC 8058: `POST /u/{token}`, a mailed
/// `unsubscribe+TOKEN@`) are stored under: the member opted out of a category of relay mail (the
/// event's `reason`), written back like a provider's unsubscribe.
pub const ONE_CLICK: &str = "one_click";

/// The name events from bounce mail (`bounce ingest`, `POST /v1/bounces`) are stored under: a
/// bounce of a message the relay sent, tied to it by its VERP address or Message-ID.
pub const BOUNCE_MAIL: &str = "relay";

/// What a stored bounce-mail event means: a hard bounce or a complaint (an ARF report) about a
/// transactional message, or a soft bounce, which counts towards `[server] soft_bounce_threshold`
/// like a provider's.
fn bounce_mail_meaning(kind: &str) -> EventMeaning {
    match kind {
        "hard_bounce" => EventMeaning::HardBounce,
        "soft_bounce" => EventMeaning::SoftBounce,
        "complained" => EventMeaning::Complained { from_list: false },
        _ => EventMeaning::Nothing,
    }
}

/// Where `serve` receives provider events from outside: its public base URL, and the secret the
/// webhook paths carry (hidden from `Debug`).
#[derive(Clone)]
pub struct WebhookEndpoint {
    public_url: String,
    secret: secrecy::SecretString,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookEndpoint({} [secret])", self.public_url)
    }
}

impl WebhookEndpoint {
    pub fn new(public_url: &str, secret: secrecy::SecretString) -> WebhookEndpoint {
        WebhookEndpoint {
            public_url: public_url.trim_end_matches('/').to_owned(),
            secret,
        }
    }

    /// `[server] public_url` and `webhook_secret`, when both are set.
    pub fn of_config(config: &crate::config::Config) -> Option<WebhookEndpoint> {
        let server = config.server.as_ref()?;
        Some(WebhookEndpoint::new(
            server.public_url.as_deref()?,
            server.webhook_secret.clone()?,
        ))
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn secret(&self) -> &secrecy::SecretString {
        &self.secret
    }
}

/// What making a list's webhook point at `serve` changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ensured {
    pub created: u32,
    pub deleted: u32,
}

/// Why a list's webhook could not be made to point at `serve`.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(transparent)]
    Provider(#[from] super::ProviderError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A campaign's status at the provider, in the engine's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CampaignStatus {
    /// A draft: the only status in which mailbridge sends or schedules.
    Draft,
    Scheduled,
    Sending,
    Sent,
    /// Anything else (paused, canceled, removed, failed…), as the provider names it; treated as
    /// "not a draft, and not on its way".
    Other(String),
}

impl CampaignStatus {
    pub fn as_str(&self) -> &str {
        match self {
            CampaignStatus::Draft => "draft",
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Sending => "sending",
            CampaignStatus::Sent => "sent",
            CampaignStatus::Other(s) => s,
        }
    }
}

/// A campaign as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCampaign {
    pub id: String,
    pub status: CampaignStatus,
    /// The campaign's internal name (mailbridge puts its idempotency marker there).
    pub title: String,
    /// How many it goes to, when the provider says.
    pub recipient_count: Option<u64>,
    pub emails_sent: u64,
}

/// What creating a campaign sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCampaign<'a> {
    pub list_id: &'a str,
    /// Only the members of this segment (Mailchimp: a tag's id), as
    /// [`crate::providers::Provider::segment_id`] found it.
    pub segment_id: Option<&'a str>,
    pub subject: &'a str,
    /// The campaign's internal name: how a crashed push finds the campaign it created.
    pub title: &'a str,
    pub from_name: &'a str,
    pub reply_to: &'a str,
}

/// Whether the provider would send the campaign as it is, and what it says is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendChecklist {
    pub is_ready: bool,
    pub items: Vec<ChecklistItem>,
}

/// One checklist item: `kind` is `success`, `warning` or `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecklistItem {
    pub kind: String,
    pub heading: String,
    pub details: String,
}

/// The API calls a planned run is expected to make (a dry run's estimate: the exact number
/// depends on how the provider answers, e.g. how often an import is polled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallEstimate {
    pub read: u64,
    pub write: u64,
}

/// Where a provider's daily request budget stands (Constant Contact).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BudgetUse {
    /// Requests spent today (UTC) by this deployment.
    pub used_today: u64,
    pub daily_budget: u64,
    /// When the budget resets (the next 00:00 UTC), RFC 3339.
    pub resets_at: String,
}

/// What a run that writes `pushes` members (`address_changes` of them one by one) and archives
/// `archives` will call, at `provider`: each provider's own arithmetic.
pub fn estimate_calls(
    provider: crate::config::ProviderKind,
    pushes: u64,
    address_changes: u64,
    archives: u64,
) -> CallEstimate {
    match provider {
        crate::config::ProviderKind::Mailchimp => {
            super::mailchimp::engine::estimate_calls(pushes, address_changes, archives)
        }
        crate::config::ProviderKind::ConstantContact => {
            super::constant_contact::seam::estimate_calls(pushes, address_changes, archives)
        }
    }
}

/// Where the daily request budget of the provider `kind` stands, for a provider that has one.
pub async fn budget_use(
    config: &crate::config::Config,
    kind: crate::config::ProviderKind,
    store: &crate::store::Store,
) -> Result<Option<BudgetUse>, crate::store::StoreError> {
    match (kind, &config.constant_contact) {
        (crate::config::ProviderKind::ConstantContact, Some(cc)) => Ok(Some(
            super::constant_contact::seam::budget_use(cc, store).await?,
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(email: Option<&str>) -> NewEvent {
        NewEvent {
            provider: "mailchimp",
            audience: None,
            list_id: Some("l1".into()),
            event_type: "unsubscribed".into(),
            email: email.map(str::to_owned),
            member_key: None,
            reason: Some("manual".into()),
            fired_at: "2026-11-28T10:00:00.000Z".into(),
            source_id: None,
            payload: "{}".into(),
            verified: true,
            ignored: None,
        }
    }

    /// The key starts with the address without U+001F, then U+001F; the rest is as before, the
    /// whole address included (two addresses that differ only by U+001F still differ there).
    #[test]
    fn the_key_starts_with_the_address() {
        assert_eq!(
            event(Some("a@example.org")).dedupe_key(),
            "a@example.org\u{1f}mailchimp:unsubscribed:l1:a@example.org:2026-11-28T10:00:00.000Z:manual"
        );
        assert_eq!(
            event(None).dedupe_key(),
            "\u{1f}mailchimp:unsubscribed:l1::2026-11-28T10:00:00.000Z:manual"
        );
        let odd = event(Some("a\u{1f}b@example.org")).dedupe_key();
        assert!(odd.starts_with("ab@example.org\u{1f}mailchimp:"), "{odd:?}");
        assert_ne!(odd, event(Some("ab@example.org")).dedupe_key());
    }
}
