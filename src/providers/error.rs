//! The one error the engine gets from a provider call, whichever provider answered: the
//! provider's own message (naming the call and the list, never a credential) and how the engine
//! reacts to it. Each provider folder turns its own error into this one; the engine never looks
//! at a provider's error type.

use std::fmt;

use crate::config::ProviderKind;

/// How the engine reacts to a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Credentials, permissions or the client's set-up: no other call of the run can succeed, so
    /// the run stops.
    Stop,
    /// The contact cannot be archived (already archived, pending or cleaned at the provider):
    /// none of those is mailed as a subscriber, so it counts as archived.
    CannotArchive,
    /// The provider has no such thing (member, campaign, list).
    NotFound,
    /// The provider's request budget is spent until `resets_at` (Constant Contact's daily quota,
    /// or this process's own `daily_budget`): the run stops cleanly, and the next one after that
    /// time resumes where it stopped.
    OutOfBudget {
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    /// Anything else: a refusal of this call or member, or a transient failure the client has
    /// already retried as far as its policy allows.
    Failed,
}

/// A failed provider call.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderError {
    provider: ProviderKind,
    operation: &'static str,
    code: &'static str,
    reaction: Reaction,
    retryable: bool,
    may_have_run: bool,
    message: String,
}

impl ProviderError {
    /// Built by a provider folder from its own error.
    pub(crate) fn new(
        provider: ProviderKind,
        operation: &'static str,
        code: &'static str,
        message: String,
    ) -> ProviderError {
        ProviderError {
            provider,
            operation,
            code,
            reaction: Reaction::Failed,
            retryable: false,
            may_have_run: false,
            message,
        }
    }

    pub(crate) fn reacting(mut self, reaction: Reaction) -> ProviderError {
        self.reaction = reaction;
        self
    }

    pub(crate) fn retryable(mut self, retryable: bool) -> ProviderError {
        self.retryable = retryable;
        self
    }

    pub(crate) fn may_have_run(mut self, may_have_run: bool) -> ProviderError {
        self.may_have_run = may_have_run;
        self
    }

    /// Which provider answered.
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }

    /// The provider's name as users know it (`Mailchimp`), for messages.
    pub fn provider_name(&self) -> &'static str {
        self.provider.display_name()
    }

    /// The client operation, e.g. `batch_subscribe`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// A short, stable code for reports and the `sync_errors` table.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn reaction(&self) -> Reaction {
        self.reaction
    }

    /// True for transient failures: what an idempotent request would retry (rate limits, server
    /// errors, connection errors, timeouts).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether a non-idempotent call (sending a campaign) may still have run at the provider
    /// though no clear answer came back: a timeout, a dropped connection, a server error.
    pub fn may_have_run_there(&self) -> bool {
        self.may_have_run
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProviderError {}
