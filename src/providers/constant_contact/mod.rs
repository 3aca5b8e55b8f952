//! Constant Contact V3 API client: <https://developer.constantcontact.com/api_guide/>.
//! Facts and limits it relies on: `../shared/research/constant-contact.md`; wire shapes follow
//! the vendor's OpenAPI spec (operation names in errors are its `operationId`s).
//!
//! - `auth`: OAuth tokens in the state DB (`oauth_tokens`), refreshed when about to expire or
//!   after a 401, the rotated refresh token committed before use, races between processes
//!   settled by adopting the winner's pair; [`store_refresh_token`] and [`device_flow`] for
//!   `mailbridge auth constant-contact`.
//! - `limits`: the process-wide pace per app, one token call a second, and the daily budget in
//!   the state DB (`api_budget`).
//! - `client`: [`ConstantContactClient`], the single calls (custom fields, contacts, address
//!   change, opt-out and bounce polling), each through [`crate::providers::retry`].
//! - `campaigns`: email campaigns for the campaign push (confirmed senders checked before a
//!   create, the activity written whole, test emails counted per UTC day, a send never retried).
//! - `engine`: the engine's multi-call operations: imports answered member by member, removal
//!   from a list.
//! - `seam`: the engine's requests in Constant Contact's terms (what
//!   [`crate::providers::Provider`] calls), and what a recorded Constant Contact event means.
//! - `types`: what callers pass and get back ([`DeviceCode`], [`RemoteCustomField`],
//!   [`OptOut`], [`Bounce`], …).
//! - `error`: [`ConstantContactError`] and its [`ErrorKind`], decided from the status code and
//!   the error body (array, object or OAuth shape).
//! - `wire`: the JSON bodies as Constant Contact spells them; private.
//! - `tests`: wiremock tests of the requests, the token rules, the budget and the import.
//!
//! Configuration is [`crate::config::ConstantContactConfig`], so there is no `config.rs` here.

mod auth;
mod campaigns;
mod client;
mod engine;
mod error;
mod limits;
pub mod seam;
mod types;
mod wire;

#[cfg(test)]
mod tests;

use client::transport_error;

pub use auth::{REFRESH_MARGIN, SCOPES, device_flow, store_refresh_token};
pub use campaigns::{
    MAX_CAMPAIGN_NAME, MAX_TEST_ADDRESSES, TEST_BUDGET, TEST_EMAILS_PER_DAY, TRACKING_IMAGE,
    campaign_name, campaign_status, with_tracking_image,
};
pub use client::{
    ActivityPolling, ConstantContactClient, MAX_CUSTOM_FIELDS, MAX_FIELD_VALUE, MAX_PAGE_SIZE,
};
pub use engine::{
    IMPORT_ITEMS_BYTES, MAX_IMPORT_BYTES, MAX_IMPORT_CONTACTS, MAX_REMOVE_CONTACTS, import_item_len,
};
pub use error::{AUTH_COMMAND, ApiProblem, ConstantContactError, ErrorKind, MAX_DETAIL};
pub use limits::next_midnight;
pub use types::{Bounce, DeviceCode, OptOut, OptOutSource, RemoteCustomField, field_type};
