//! Mailchimp Marketing API v3 client: <https://mailchimp.com/developer/marketing/api/>.
//! Facts and limits it relies on: `../shared/research/mailchimp.md`.
//!
//! - `client`: [`MailchimpClient`], the operations the sync needs (ping, merge fields, batch
//!   subscribe, member upsert/archive/tags, reading changed members; campaign create, content,
//!   checklist, test, send, schedule, read), over one keep-alive pool
//!   with at most `max_in_flight` requests on the wire and every call through
//!   [`crate::providers::retry`].
//! - `types`: what callers pass and get back ([`BatchMember`], [`BatchResult`],
//!   [`RemoteMember`], [`SubscriberHash`], [`ApiCalls`], …).
//! - `error`: [`MailchimpError`] and its [`ErrorKind`], decided from the status code and the
//!   problem document.
//! - `engine`: the engine's batch upsert in Mailchimp's terms (one outcome per member sent), and
//!   its member writes (address changes, pending members, tag removals) as `/batches` batches.
//! - `webhook`: decoding and verifying list webhooks and Mailchimp Transactional (Mandrill)
//!   webhooks into [`crate::providers::NewEvent`]s.
//! - `wire`: the JSON bodies as Mailchimp spells them; private.
//! - `tests`: unit tests of the pure parts (requests are pinned in `tests/mailchimp_client.rs`).
//!
//! Configuration is [`crate::config::MailchimpConfig`] (API key, base URL, in-flight limit,
//! timeout), so there is no `config.rs` here.

mod client;
pub mod engine;
mod error;
pub mod registration;
mod types;
pub mod webhook;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{
    BatchOperation, BatchPolling, MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES, MAX_BATCH_BODY_BYTES,
    MAX_BATCH_MEMBERS, MAX_BATCH_OPERATIONS, MAX_IN_FLIGHT, MAX_PAGE_SIZE, MAX_UNPACKED_BYTES,
    MailchimpClient, OperationResult, RemoteWebhook, WebhookEvents, WebhookSources,
};
pub use error::{ErrorKind, FieldError, MailchimpError};
pub use types::{
    ApiCalls, Archive, BatchMember, BatchMemberError, BatchMemberOutcome, BatchResult,
    CampaignStatus, ChecklistItem, MembersPage, NewCampaign, RemoteCampaign, RemoteMember,
    RemoteMergeField, SendChecklist, SubscriberHash, WriteStatus, subscriber_hash,
};
