//! The sync: `diff` (pure), `consent` (the consent rule, pure) and `plan` (pure: the diff and the
//! rule, a member row at a time) over members streamed from the member DB and contacts read from
//! the state DB. `--dry-run` prints the plan; `apply` runs a real sync (pull, merge fields,
//! guardrails, then the plan's changes, batched) under a per-audience lock.

pub mod apply;
pub mod attention;
pub mod changes;
pub mod consent;
pub mod diff;
pub mod plan;
pub mod report;
pub mod runs;
pub mod schedule;
mod taken;

use futures::TryStreamExt;

use crate::config::AudienceConfig;
use crate::mapping::{CompiledAudience, CompiledSource, Mapping, MappingError};
use crate::progress::Progress;
use crate::source::{MemberSource, SourceError};
use crate::store::{Store, StoreError};
use consent::ConsentFacts;
use plan::{Plan, Planner};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{provider}: {0}", provider = .0.provider_name())]
    Provider(crate::providers::ProviderError),
    /// The provider's request budget ran out: the run stopped between batches (each batch the
    /// provider accepted is recorded), and a run after `resets_at` resumes with what is left.
    #[error(
        "{provider}: the request budget is spent ({source}); it resets at {resets_at} (00:00 UTC), and a sync after that resumes where this one stopped",
        provider = .source.provider_name(),
        resets_at = .resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )]
    OutOfBudget {
        resets_at: chrono::DateTime<chrono::Utc>,
        source: crate::providers::ProviderError,
    },
    #[error(
        "another sync of audience `{audience}` is running (lock held by {holder}); it refuses to start twice. If that run crashed, its lock expires by itself"
    )]
    Locked { audience: String, holder: String },
    #[error("{provider} refused the run: {0}", provider = .0.provider_name())]
    ProviderStopped(crate::providers::ProviderError),
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
    /// The mapping asks of the audience what its provider cannot hold (bad input: nothing ran).
    #[error(
        "audience `{audience}`: the mapping gives it tags (`audiences.{audience}.tags`), and this version syncs no tags to {provider}; remove them from the mapping, or use a Mailchimp audience"
    )]
    TagsNotTaken {
        audience: String,
        provider: &'static str,
    },
    #[error(transparent)]
    Changes(#[from] changes::ChangesError),
}

impl From<crate::providers::ProviderError> for SyncError {
    fn from(e: crate::providers::ProviderError) -> SyncError {
        match e.reaction() {
            crate::providers::Reaction::OutOfBudget { resets_at } => SyncError::OutOfBudget {
                resets_at,
                source: e,
            },
            _ => SyncError::Provider(e),
        }
    }
}

impl From<crate::events::PullError> for SyncError {
    fn from(e: crate::events::PullError) -> SyncError {
        match e {
            crate::events::PullError::Mapping(e) => SyncError::Mapping(e),
            crate::events::PullError::Store(e) => SyncError::Store(e),
            crate::events::PullError::Provider(e) => SyncError::from(e),
        }
    }
}

impl From<crate::providers::EnsureError> for SyncError {
    fn from(e: crate::providers::EnsureError) -> SyncError {
        match e {
            crate::providers::EnsureError::Provider(e) => SyncError::from(e),
            crate::providers::EnsureError::Store(e) => SyncError::Store(e),
        }
    }
}

/// Options of a planning pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOptions {
    /// `--full`: ignore stored content hashes.
    pub full: bool,
}

/// Plans every selected audience in one pass over the member DB, with the [`Planner`] the real
/// run applies. Reads only; writes nothing (not even the consent observations a real run
/// records). It plans from what the state DB knows: provider changes not pulled yet (the real
/// run pulls first) and `--full`'s re-read of the audience are not in it.
pub async fn plan(
    mapping: &Mapping,
    audiences: &[&AudienceConfig],
    store: &Store,
    source: &MemberSource,
    options: PlanOptions,
    progress: &Progress,
) -> Result<Vec<Plan>, SyncError> {
    store.ensure_migrated().await?;
    let columns = source.columns(&members_query(mapping)).await?;
    let compiled_source = mapping.compile_source(&columns)?;
    let mut compiled = Vec::new();
    for a in audiences {
        let m = mapping.audience(&a.name)?;
        fits(a, m)?;
        compiled.push(mapping.compile_audience(m, &columns)?);
    }
    let mut planners = Vec::new();
    for (a, c) in audiences.iter().zip(&compiled) {
        planners.push(planner(store, a, &compiled_source, c, options.full).await?);
    }
    let read = read_members(mapping, source, &mut planners, "Reading members", progress).await?;
    let mut plans = Vec::new();
    for p in planners {
        plans.push(p.finish(read)?.0);
    }
    Ok(plans)
}

/// A dry run: [`plan`], then for each plan the calls it will make and, for a provider with a
/// daily request budget, where that budget stands. What `sync --dry-run` prints and the admin
/// pages' dry run shows.
pub async fn dry_run(
    config: &crate::config::Config,
    mapping: &Mapping,
    audiences: &[&AudienceConfig],
    store: &Store,
    source: &MemberSource,
    options: PlanOptions,
    progress: &Progress,
) -> Result<Vec<Plan>, SyncError> {
    let mut plans = plan(mapping, audiences, store, source, options, progress).await?;
    for (plan, audience) in plans.iter_mut().zip(audiences) {
        plan.calls = Some(crate::providers::estimate_calls(
            audience.provider,
            plan.create + plan.update,
            plan.address_changes,
            plan.archive(),
        ));
        plan.budget = crate::providers::budget_use(config, audience.provider, store).await?;
    }
    Ok(plans)
}

/// Refuses, before anything is read or written, what the audience's provider cannot hold.
pub(crate) fn fits(
    audience: &AudienceConfig,
    mapping: &crate::mapping::AudienceMapping,
) -> Result<(), SyncError> {
    if !mapping.tags.is_empty() && !audience.provider.takes_tags() {
        return Err(SyncError::TagsNotTaken {
            audience: audience.name.clone(),
            provider: audience.provider.display_name(),
        });
    }
    Ok(())
}

/// The source query, ordered by member key (the order the diff needs).
fn members_query(mapping: &Mapping) -> String {
    MemberSource::ordered_query(&mapping.source.query, &mapping.source.key)
}

/// A planner for `audience`, from the contacts (streamed) and the consent facts the state DB
/// has now.
async fn planner<'a>(
    store: &Store,
    audience: &AudienceConfig,
    source: &'a CompiledSource,
    compiled: &'a CompiledAudience,
    full: bool,
) -> Result<Planner<'a>, SyncError> {
    let facts = ConsentFacts::load(store, audience).await?;
    let state = store.contact_feed(&audience.name).await?;
    Ok(Planner::new(audience, source, compiled, state, facts, full))
}

/// Streams the member DB once through every planner; returns how many rows it read.
async fn read_members(
    mapping: &Mapping,
    source: &MemberSource,
    planners: &mut [Planner<'_>],
    what: &str,
    progress: &Progress,
) -> Result<u64, SyncError> {
    // The member count, for the progress bar and for an audience's first sync, whose planner
    // cannot size its duplicate table from the state DB's contacts (one more scan of the member
    // DB, only then).
    let first = planners.iter().any(|p| p.contacts_known() == 0);
    let total = if progress.is_shown() || first {
        source.count(&mapping.source.query).await.ok()
    } else {
        None
    };
    if let Some(n) = total {
        for p in planners.iter_mut() {
            p.expect_members(n);
        }
    }
    progress.start(what, total);
    let sql = members_query(mapping);
    let mut chunks = source.stream_chunks(&sql);
    let mut read = 0u64;
    while let Some(chunk) = chunks.try_next().await? {
        for row in chunk.rows() {
            for p in planners.iter_mut() {
                p.row(row);
            }
        }
        let before = read;
        read += chunk.len() as u64;
        if before / 4096 != read / 4096 {
            progress.set(read);
        }
    }
    progress.finish(read);
    Ok(read)
}
