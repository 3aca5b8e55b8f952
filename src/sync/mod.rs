//! The sync: `diff` (pure), `consent` (the consent rule, pure) and `plan` (pure, printed by
//! `--dry-run`) over members streamed from the member DB and contacts read from the state DB;
//! `apply` runs a real sync (pull, merge fields, guardrails, batched push) under a per-audience
//! lock.

pub mod apply;
pub mod consent;
pub mod diff;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod webhooks;

use futures::TryStreamExt;

use crate::config::AudienceConfig;
use crate::mapping::{Mapping, MappingError};
use crate::progress::Progress;
use crate::source::{MemberSource, SourceError};
use crate::store::{Store, StoreError};
use consent::ConsentFacts;
use diff::Differ;
use plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Mailchimp: {0}")]
    Provider(#[from] crate::providers::mailchimp::MailchimpError),
    #[error(
        "another sync of audience `{audience}` is running (lock held by {holder}); it refuses to start twice. If that run crashed, its lock expires by itself"
    )]
    Locked { audience: String, holder: String },
    #[error("Mailchimp refused the run: {0}")]
    ProviderStopped(String),
    #[error("refused without writing anything: {0}")]
    Guardrail(String),
    #[error(
        "merge field {tag} of audience `{audience}`: the mapping says type `{mapping_type}`, but the audience already has {tag} (\"{remote_name}\") of type `{remote_type}`"
    )]
    MergeFieldConflict {
        audience: String,
        tag: String,
        mapping_type: String,
        remote_name: String,
        remote_type: String,
    },
    #[error("audience `{0}` uses provider {1}, which this version cannot sync")]
    UnsupportedProvider(String, String),
}

impl From<crate::events::PullError> for SyncError {
    fn from(e: crate::events::PullError) -> SyncError {
        match e {
            crate::events::PullError::Mapping(e) => SyncError::Mapping(e),
            crate::events::PullError::Store(e) => SyncError::Store(e),
            crate::events::PullError::Provider(e) => SyncError::Provider(e),
        }
    }
}

impl From<webhooks::EnsureError> for SyncError {
    fn from(e: webhooks::EnsureError) -> SyncError {
        match e {
            webhooks::EnsureError::Mailchimp(e) => SyncError::Provider(e),
            webhooks::EnsureError::Store(e) => SyncError::Store(e),
        }
    }
}

/// Options of a planning pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOptions {
    /// `--full`: ignore stored content hashes.
    pub full: bool,
}

/// Plans every selected audience in one pass over the member DB, with the consent rule the real
/// run applies. Reads only; writes nothing (not even the consent observations a real run records).
pub async fn plan(
    mapping: &Mapping,
    audiences: &[&AudienceConfig],
    store: &Store,
    source: &MemberSource,
    options: PlanOptions,
    progress: &Progress,
) -> Result<Vec<Plan>, SyncError> {
    store.ensure_migrated().await?;
    let sql = MemberSource::ordered_query(&mapping.source.query, &mapping.source.key);
    let columns = source.columns(&sql).await?;
    let compiled_source = mapping.compile_source(&columns)?;
    let mut compiled = Vec::new();
    for a in audiences {
        compiled.push(mapping.compile_audience(mapping.audience(&a.name)?, &columns)?);
    }
    let mut differs = Vec::new();
    let mut facts = Vec::new();
    let mut plans = Vec::new();
    for (a, c) in audiences.iter().zip(&compiled) {
        let state = store.contacts(&a.name).await?;
        facts.push(ConsentFacts::load(store, a, &state).await?);
        let d = Differ::new(&compiled_source, c, state, options.full);
        let mut p = Plan::new(a);
        p.live_before = d.live_contacts() as u64;
        differs.push(d);
        plans.push(p);
    }

    progress.start(
        "Reading members",
        source.count(&mapping.source.query).await.ok(),
    );
    let mut rows = source.stream(&sql);
    let mut read = 0u64;
    while let Some(row) = rows.try_next().await? {
        read += 1;
        for ((d, p), f) in differs.iter_mut().zip(plans.iter_mut()).zip(&facts) {
            let action = d.observe(&row);
            p.record(
                &f.judge(action, &row, &compiled_source, d.audience())
                    .into_action(),
            );
        }
        if read.is_multiple_of(4096) {
            progress.set(read);
        }
    }
    progress.finish(read);
    for (d, p) in differs.into_iter().zip(plans.iter_mut()) {
        p.members_read = read;
        for action in d.finish() {
            p.record(&action);
        }
    }
    Ok(plans)
}
