//! [`Provider`]: what the engine (sync, pull, event write-back, campaign push) asks of a newsletter
//! provider, whichever it is. Every operation answers with a [`ProviderError`]; members are named
//! by their address (a provider keys them its own way: Mailchimp by the MD5 of the lowercase
//! address). Building a provider, and the match arm per provider below, are the only places a
//! provider is chosen.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::constant_contact::{
    ConstantContactClient, IMPORT_ITEMS_BYTES, MAX_IMPORT_CONTACTS, MAX_REMOVE_CONTACTS,
    import_item_len,
};
use super::mailchimp::{MAX_BATCH_MEMBERS, MailchimpClient, SubscriberHash};
use super::{
    ApiCalls, Archive, ChangesPage, MemberWrite, MembersPage, NewCampaign, ProviderError,
    RemoteCampaign, RemoteField, RemoteMember, SendChecklist, UpsertOutcome,
};
use crate::config::ProviderKind;
use crate::domain::{Email, SubscriptionStatus, WriteStatus};
use crate::mapping::{Contact, FieldType, FieldValue};

/// A connected provider account: a cheap handle (clone it into tasks).
// A few of these live per process, cloned into a task or two: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Provider {
    Mailchimp(MailchimpClient),
    ConstantContact(ConstantContactClient),
}

/// Runs `$call` on the provider's client (both have it, with the same signature), turning its
/// error into a [`ProviderError`].
macro_rules! on_client {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            Provider::Mailchimp($c) => $call.await.map_err(ProviderError::from),
            Provider::ConstantContact($c) => $call.await.map_err(ProviderError::from),
        }
    };
}

/// An operation this version does not do at a provider (a refusal that stops the run).
fn not_yet(kind: ProviderKind, op: &'static str) -> ProviderError {
    ProviderError::new(
        kind,
        op,
        "not_supported",
        format!(
            "{op}: this version does not do that at {} yet",
            kind.display_name()
        ),
    )
    .reacting(super::Reaction::Stop)
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Mailchimp(_) => ProviderKind::Mailchimp,
            Provider::ConstantContact(_) => ProviderKind::ConstantContact,
        }
    }

    /// The calls made so far through this handle and its clones.
    pub fn calls(&self) -> ApiCalls {
        match self {
            Provider::Mailchimp(c) => c.calls(),
            Provider::ConstantContact(c) => c.calls(),
        }
    }

    /// The provider's own id for the member at `email`, as the state DB records it, when the
    /// address alone gives it (Constant Contact's contact ids are its own: none).
    pub fn remote_id(&self, email: &Email) -> Option<String> {
        match self {
            Provider::Mailchimp(_) => Some(SubscriberHash::of(email).to_string()),
            Provider::ConstantContact(_) => None,
        }
    }

    /// How often `serve` asks the provider what changed, for a provider that has no member
    /// webhooks; `None` when its events are pushed.
    pub fn poll_every(&self) -> Option<std::time::Duration> {
        match self {
            Provider::Mailchimp(_) => None,
            Provider::ConstantContact(c) => Some(c.poll_every()),
        }
    }

    /// The event a member's record at the provider stands for (`subscribed`, `unsubscribed`,
    /// `complained`, `cleaned`, `pending`), to confirm an event that arrived unsigned.
    pub fn status_event(&self, member: &RemoteMember) -> Option<&'static str> {
        match self {
            Provider::Mailchimp(_) => super::mailchimp::engine::status_event(member),
            // No member webhooks, so no unsigned events to confirm.
            Provider::ConstantContact(_) => None,
        }
    }

    /// Whether the provider pushes member events to a webhook (else they are polled).
    pub fn has_webhooks(&self) -> bool {
        match self {
            Provider::Mailchimp(_) => true,
            Provider::ConstantContact(_) => false,
        }
    }

    // ---- fields ----

    /// The member fields the list has (Mailchimp: its merge fields).
    pub async fn fields(&self, list: &str) -> Result<Vec<RemoteField>, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .list_merge_fields(list)
                .await
                .map(|fields| {
                    fields
                        .into_iter()
                        .map(|f| RemoteField {
                            tag: f.tag,
                            name: f.name,
                            kind: f.kind,
                        })
                        .collect()
                })
                .map_err(ProviderError::from),
            // Custom fields belong to the account, not to a list.
            Provider::ConstantContact(c) => c.fields_by_tag().await.map_err(ProviderError::from),
        }
    }

    /// The provider's type name for a field of the mapping's type `kind` (what
    /// [`RemoteField::kind`] must be for the field to take the mapping's values).
    pub fn field_type(&self, kind: FieldType) -> &'static str {
        match self {
            // Mailchimp's merge field types are the mapping's own names.
            Provider::Mailchimp(_) => kind.as_str(),
            Provider::ConstantContact(_) => super::constant_contact::field_type(kind),
        }
    }

    pub async fn create_field(
        &self,
        list: &str,
        tag: &str,
        name: &str,
        kind: FieldType,
    ) -> Result<RemoteField, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .create_merge_field(list, tag, name, kind)
                .await
                .map(|f| RemoteField {
                    tag: f.tag,
                    name: f.name,
                    kind: f.kind,
                })
                .map_err(ProviderError::from),
            // The field is labelled with the mapping's tag (an import addresses it as `cf:TAG`).
            Provider::ConstantContact(c) => c
                .create_custom_field(tag, kind)
                .await
                .map(|f| RemoteField {
                    tag: f.label,
                    name: f.name,
                    kind: f.kind,
                })
                .map_err(ProviderError::from),
        }
    }

    // ---- members ----

    /// How many members one [`Provider::upsert_batch`] takes at most.
    pub fn batch_size(&self) -> usize {
        match self {
            Provider::Mailchimp(_) => MAX_BATCH_MEMBERS,
            Provider::ConstantContact(_) => MAX_IMPORT_CONTACTS,
        }
    }

    /// How many bytes the members of one [`Provider::upsert_batch`] may take, measured by
    /// [`Provider::item_bytes`], when the provider limits a batch by size too (Constant Contact:
    /// an import is under 4 MB; packing batches by it makes each batch one import).
    pub fn batch_bytes(&self) -> Option<usize> {
        match self {
            Provider::Mailchimp(_) => None,
            Provider::ConstantContact(_) => Some(IMPORT_ITEMS_BYTES),
        }
    }

    /// What `contact`, written with `status`, adds to a batch's [`Provider::batch_bytes`].
    pub fn item_bytes(&self, contact: &Contact, status: WriteStatus) -> usize {
        match self {
            Provider::Mailchimp(_) => 0,
            Provider::ConstantContact(_) => match status {
                // A removal is a contact id in another request, not part of the import.
                WriteStatus::Unsubscribed => 0,
                WriteStatus::Subscribed | WriteStatus::Pending => import_item_len(contact),
            },
        }
    }

    /// Batches sent at once. Mailchimp answers each batch call on its own; Constant Contact
    /// works through an account's activities one at a time, in order, so a second import in
    /// flight would only hold its members in memory while it waits.
    pub fn batches_in_flight(&self) -> usize {
        match self {
            Provider::Mailchimp(_) => 4,
            Provider::ConstantContact(_) => 1,
        }
    }

    /// Creates or updates up to [`Provider::batch_size`] rendered contacts with the status asked
    /// for each; says what became of each, in order (a refused member is data, not an error).
    pub async fn upsert_batch(
        &self,
        list: &str,
        members: &[(&Contact, WriteStatus)],
    ) -> Result<Vec<UpsertOutcome>, ProviderError> {
        on_client!(self, c => c.upsert_contacts(list, members))
    }

    /// Writes one member found at `at` (its old address on an address change) with the address
    /// `email`; `status` is forced only when given, `status_if_new` applies to a new member.
    pub async fn upsert_member(
        &self,
        list: &str,
        at: &str,
        email: &Email,
        status_if_new: WriteStatus,
        status: Option<WriteStatus>,
        merge_fields: &BTreeMap<String, FieldValue>,
    ) -> Result<RemoteMember, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .upsert_member(
                    list,
                    &SubscriberHash::of_address(at),
                    email,
                    status_if_new,
                    status,
                    merge_fields,
                )
                .await
                .map_err(ProviderError::from),
            // The contact keeps its permission to send: Constant Contact's consent is its own.
            Provider::ConstantContact(c) => c
                .change_address(list, at, email, merge_fields)
                .await
                .map_err(ProviderError::from),
        }
    }

    /// How many [`MemberWrite`]s one [`Provider::write_members`] takes at most.
    pub fn write_batch_size(&self) -> usize {
        match self {
            Provider::Mailchimp(_) => super::mailchimp::engine::MAX_MEMBER_WRITES,
            // One call or two per member: a small group keeps the lease checks close together.
            Provider::ConstantContact(_) => 64,
        }
    }

    /// Writes each member (at its `at` address, then its tags); one result per write, in order,
    /// with the member's status when the provider says. Mailchimp sends them as `/batches`
    /// batches (a few calls for thousands of members); `Err` when a batch failed whole.
    pub async fn write_members(
        &self,
        list: &str,
        writes: &[MemberWrite],
    ) -> Result<Vec<Result<Option<SubscriptionStatus>, ProviderError>>, ProviderError> {
        match self {
            Provider::Mailchimp(c) => Ok(c
                .write_members(list, writes)
                .await
                .map_err(ProviderError::from)?
                .into_iter()
                .map(|r| r.map(Some).map_err(ProviderError::from))
                .collect()),
            Provider::ConstantContact(_) => {
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.push(self.write_member_alone(list, w).await);
                }
                Ok(out)
            }
        }
    }

    /// One [`MemberWrite`] in single calls; an address change whose old address is gone is
    /// written at its new address.
    async fn write_member_alone(
        &self,
        list: &str,
        w: &MemberWrite,
    ) -> Result<Option<SubscriptionStatus>, ProviderError> {
        let moved = w.at.trim().to_lowercase() != w.email.as_str().trim().to_lowercase();
        let mut result = self
            .upsert_member(
                list,
                &w.at,
                &w.email,
                w.status_if_new,
                w.status,
                &w.merge_fields,
            )
            .await;
        if let Err(e) = &result
            && moved
            && !e.is_retryable()
        {
            tracing::info!(
                "The old address is no longer on the list ({e}); updating the member at its new address."
            );
            result = self
                .upsert_member(
                    list,
                    w.email.as_str(),
                    &w.email,
                    w.status_if_new,
                    w.status,
                    &w.merge_fields,
                )
                .await;
        }
        let member = result?;
        self.update_tags(list, w.email.as_str(), &w.tags).await?;
        Ok(Some(member.status))
    }

    /// Adds (`true`) or removes (`false`) tags on the member at `email`.
    pub async fn update_tags<S: AsRef<str>>(
        &self,
        list: &str,
        email: &str,
        tags: &[(S, bool)],
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .update_member_tags(list, &SubscriberHash::of_address(email), tags)
                .await
                .map_err(ProviderError::from),
            // Tags are refused for a Constant Contact audience before a sync starts.
            Provider::ConstantContact(_) if tags.is_empty() => Ok(()),
            Provider::ConstantContact(_) => {
                Err(not_yet(ProviderKind::ConstantContact, "update_tags"))
            }
        }
    }

    /// How many archives one [`Provider::archive_many`] takes at most (the engine checks its
    /// lease between them).
    pub fn archive_batch_size(&self) -> usize {
        match self {
            Provider::Mailchimp(_) => 64,
            Provider::ConstantContact(_) => MAX_REMOVE_CONTACTS,
        }
    }

    /// Takes each address off the list (archived, or removed from it); one result per address,
    /// in order.
    pub async fn archive_many(
        &self,
        list: &str,
        emails: &[&str],
    ) -> Vec<Result<Archive, ProviderError>> {
        match self {
            Provider::Mailchimp(c) => c
                .archive_many(list, emails)
                .await
                .into_iter()
                .map(|r| r.map_err(ProviderError::from))
                .collect(),
            // One removal activity for the lot: it succeeds or fails whole.
            Provider::ConstantContact(c) => match c.archive_many(list, emails).await {
                Ok(done) => done.into_iter().map(Ok).collect(),
                Err(e) => {
                    let e = ProviderError::from(e);
                    emails.iter().map(|_| Err(e.clone())).collect()
                }
            },
        }
    }

    /// The member at `email`, if the list has one.
    pub async fn member(
        &self,
        list: &str,
        email: &str,
    ) -> Result<Option<RemoteMember>, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .get_member(list, &SubscriberHash::of_address(email))
                .await
                .map_err(ProviderError::from),
            Provider::ConstantContact(c) => c.contact(email).await.map_err(ProviderError::from),
        }
    }

    /// One page of the members with `status` (changed since `since`, when given); `page` is the
    /// previous page's `next`.
    pub async fn members(
        &self,
        list: &str,
        status: SubscriptionStatus,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<MembersPage, ProviderError> {
        on_client!(self, c => c.members_page(list, status, since, page))
    }

    /// One page of what changed for the list's members since `since` (ever, without it):
    /// unsubscribes, bounces, addresses awaiting confirmation; `page` is the previous page's
    /// `next`.
    pub async fn changes(
        &self,
        list: &str,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<ChangesPage, ProviderError> {
        on_client!(self, c => c.changes_page(list, since, page))
    }

    // ---- webhooks ----

    /// Makes the audience's list deliver its member events to `serve` at `endpoint` (exactly one
    /// webhook of ours, with the events handled); nothing for a provider without member webhooks.
    pub async fn ensure_webhook(
        &self,
        store: &crate::store::Store,
        audience: &crate::config::AudienceConfig,
        endpoint: &super::WebhookEndpoint,
    ) -> Result<super::Ensured, super::EnsureError> {
        match self {
            Provider::Mailchimp(c) => {
                let target = super::mailchimp::registration::WebhookTarget::of(endpoint);
                super::mailchimp::registration::ensure(c, store, audience, &target).await
            }
            Provider::ConstantContact(_) => Ok(super::Ensured::default()),
        }
    }

    // ---- campaigns ----

    pub async fn create_campaign(
        &self,
        campaign: &NewCampaign<'_>,
    ) -> Result<RemoteCampaign, ProviderError> {
        on_client!(self, c => c.create_campaign(campaign))
    }

    pub async fn campaign(&self, campaign_id: &str) -> Result<RemoteCampaign, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .get_campaign(campaign_id)
                .await
                .map_err(ProviderError::from),
            Provider::ConstantContact(c) => {
                c.campaign(campaign_id).await.map_err(ProviderError::from)
            }
        }
    }

    pub async fn campaigns_titled(
        &self,
        list: &str,
        title: &str,
    ) -> Result<Vec<RemoteCampaign>, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .find_campaigns_by_title(list, title)
                .await
                .map_err(ProviderError::from),
            Provider::ConstantContact(c) => c
                .campaigns_titled(list, title)
                .await
                .map_err(ProviderError::from),
        }
    }

    pub async fn set_campaign_content(
        &self,
        campaign_id: &str,
        html: &str,
        plain_text: &str,
    ) -> Result<(), ProviderError> {
        on_client!(self, c => c.set_campaign_content(campaign_id, html, plain_text))
    }

    pub async fn send_checklist(&self, campaign_id: &str) -> Result<SendChecklist, ProviderError> {
        on_client!(self, c => c.send_checklist(campaign_id))
    }

    pub async fn test_campaign(
        &self,
        campaign_id: &str,
        emails: &[Email],
    ) -> Result<(), ProviderError> {
        on_client!(self, c => c.test_campaign(campaign_id, emails))
    }

    /// The id of the list's segment `name` (Mailchimp: a tag), if the list has one. Constant
    /// Contact audiences have no segments in this version: refused, naming it.
    pub async fn segment_id(
        &self,
        list: &str,
        name: &str,
    ) -> Result<Option<String>, ProviderError> {
        match self {
            Provider::Mailchimp(c) => c
                .find_tag_id(list, name)
                .await
                .map(|id| id.map(|id| id.to_string()))
                .map_err(ProviderError::from),
            Provider::ConstantContact(c) => {
                c.segment_id(list, name).await.map_err(ProviderError::from)
            }
        }
    }

    pub async fn send_campaign(&self, campaign_id: &str) -> Result<(), ProviderError> {
        on_client!(self, c => c.send_campaign(campaign_id))
    }

    pub async fn schedule_campaign(
        &self,
        campaign_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), ProviderError> {
        on_client!(self, c => c.schedule_campaign(campaign_id, at))
    }
}

impl From<ConstantContactClient> for Provider {
    fn from(client: ConstantContactClient) -> Provider {
        Provider::ConstantContact(client)
    }
}

impl From<MailchimpClient> for Provider {
    fn from(client: MailchimpClient) -> Provider {
        Provider::Mailchimp(client)
    }
}

/// The providers one configuration connects to (those with a `[providers.*]` section), each
/// found by its kind: an audience's `provider` picks its client here.
#[derive(Clone, Debug, Default)]
pub struct ProviderSet {
    providers: Vec<Provider>,
}

impl ProviderSet {
    pub fn new(providers: impl IntoIterator<Item = Provider>) -> ProviderSet {
        ProviderSet {
            providers: providers.into_iter().collect(),
        }
    }

    /// The connected provider of `kind`, if it is configured.
    pub fn get(&self, kind: ProviderKind) -> Option<&Provider> {
        self.providers.iter().find(|p| p.kind() == kind)
    }

    /// The connected provider of `kind`, or an error naming the section to add.
    pub fn require(&self, kind: ProviderKind) -> Result<&Provider, NotConfigured> {
        self.get(kind).ok_or(NotConfigured(kind))
    }

    /// The provider whose name a stored event carries (`mailchimp`), if connected.
    pub fn by_name(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.kind().as_str() == name)
    }
}

/// An audience names a provider the configuration has no section for.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("[providers.{}] is not configured", .0.as_str())]
pub struct NotConfigured(pub ProviderKind);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MailchimpConfig;

    fn mailchimp() -> Provider {
        let config = MailchimpConfig {
            api_key: secrecy::SecretString::from("0123456789abcdef0123456789abcdef-us6"),
            base_url: "https://us6.api.mailchimp.com/3.0".into(),
            max_in_flight: 2,
            timeout_secs: 5,
        };
        Provider::Mailchimp(MailchimpClient::new(&config).expect("client"))
    }

    #[test]
    fn an_audience_finds_its_provider_by_kind_or_is_told_which_section_is_missing() {
        let set = ProviderSet::new([mailchimp()]);
        assert_eq!(
            set.get(ProviderKind::Mailchimp).map(Provider::kind),
            Some(ProviderKind::Mailchimp)
        );
        assert!(set.by_name("mailchimp").is_some());
        assert!(set.by_name("mailchimp_transactional").is_none());
        assert!(set.get(ProviderKind::ConstantContact).is_none());
        let missing = set.require(ProviderKind::ConstantContact).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "[providers.constant_contact] is not configured"
        );
        assert!(
            ProviderSet::default()
                .require(ProviderKind::Mailchimp)
                .is_err()
        );
    }

    #[test]
    fn mailchimp_keys_a_member_by_the_md5_of_its_lowercase_address() {
        let email = Email::parse("Urist.McVankab@FreddiesJokes.com").unwrap();
        assert_eq!(
            mailchimp().remote_id(&email).as_deref(),
            Some("62eeb292278cc15f5817cb78f7790b08")
        );
        assert!(mailchimp().has_webhooks());
    }
}
