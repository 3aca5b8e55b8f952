//! Provider clients and what they share. [`Provider`] is what the engine speaks to, whichever
//! provider it is, and [`ProviderError`] the one error it gets back; [`retry`] is the one place
//! that classifies failed calls and backs off; [`mailchimp`] is the Mailchimp Marketing API
//! client, [`constant_contact`] the Constant Contact V3 API client. Each provider is a folder: client, private wire types, tests.

pub mod constant_contact;
mod error;
pub mod mailchimp;
mod provider;
pub mod retry;
mod types;

pub use error::{ProviderError, Reaction};
pub use provider::{NotConfigured, Provider, ProviderSet};
pub use types::{
    ApiCalls, Archive, BOUNCE_MAIL, BudgetUse, CallEstimate, CampaignStatus, ChangesPage,
    ChecklistItem, EnsureError, Ensured, EventMeaning, MAX_FUTURE_SECS, MemberRefusal, MemberWrite,
    MembersPage, NewCampaign, NewEvent, ONE_CLICK, RemoteCampaign, RemoteChange, RemoteField,
    RemoteMember, SendChecklist, UpsertOutcome, WebhookEndpoint, budget_use, estimate_calls,
    event_meaning, not_after_now,
};
