//! A real sync of one audience (issue 4): under a lock in the state DB, pull provider changes
//! first, make sure the merge fields exist, make the plan (the [`Planner`] the dry run uses, so
//! `--dry-run` shows what this applies) and stop at the guardrails, then apply exactly the plan's
//! changes: batch-subscribe calls of at most 500 members (a few in flight); address changes (at
//! the old hash), members pending at the provider and tag removals (owned tags only) as member
//! writes the provider sends together (Mailchimp: `/batches`, thousands per batch); archives. Contacts are committed per
//! applied batch, so a run killed at any instant converges when run again: the next plan starts
//! from what was committed. The changes are read one at a time from the plan's [`Changes`] (past
//! a few thousand, a temporary file), so a first sync's memory does not grow with its creates.
//!
//! The plan also says what the run saw in the consent column (`consent_seen`, the evidence a
//! later re-consent needs); it is recorded after the guardrails let the run go on.
//!
//! [`Planner`]: super::plan::Planner
//! [`Changes`]: super::changes::Changes

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::task::JoinSet;

use super::SyncError;
use super::changes::ChangeReader;
use super::plan::{Change, Plan, Push};
use super::report::{ApiCalls, ReportError, RunReport, new_run_id};
use super::runs::{NOTE_COMMITTED_SQL, Step, note_committed};
use crate::config::AudienceConfig;
use crate::domain::WriteStatus;
use crate::domain::{MemberKey, SubscriptionStatus};
use crate::events;
use crate::mapping::{CompiledAudience, CompiledSource, Contact, Mapping};
use crate::progress::Progress;
use crate::providers::{
    Archive, MemberWrite, Provider, ProviderError, ProviderSet, Reaction, UpsertOutcome,
};
use crate::source::MemberSource;
use crate::store::consent_seen::SeenConsent;
use crate::store::contacts::SyncedContact;
use crate::store::locks::{LeaseWatch, LockHolder};
use crate::store::retry::retry_transient;
use crate::store::writer::bind_numbered;
use crate::store::{Store, StoreError, now_text};

/// Options of a real run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncOptions {
    /// `--full`: ignore stored hashes, re-read the audience from the provider.
    pub full: bool,
    /// `--allow-mass-archive`: proceed past the guardrails.
    pub allow_mass_archive: bool,
    /// `pull`: provider → member DB only.
    pub pull_only: bool,
}

/// What a sync needs, shared by every audience of a run.
pub struct SyncContext<'a> {
    pub mapping: &'a Mapping,
    pub store: &'a Store,
    pub source: &'a MemberSource,
    /// The connected providers; each audience's `provider` picks its client.
    pub providers: &'a ProviderSet,
}

/// Syncs one audience under its lock; returns its run report (also stored in `sync_runs`).
#[tracing::instrument(skip_all, fields(audience = %audience.name))]
pub async fn sync_audience(
    ctx: &SyncContext<'_>,
    audience: &AudienceConfig,
    options: SyncOptions,
    progress: &Progress,
) -> Result<RunReport, SyncError> {
    sync_audience_with_id(ctx, audience, options, progress, new_run_id()).await
}

/// [`sync_audience`] under a run id chosen by the caller (`POST /v1/sync` answers with it before
/// the run starts).
pub async fn sync_audience_with_id(
    ctx: &SyncContext<'_>,
    audience: &AudienceConfig,
    options: SyncOptions,
    progress: &Progress,
    run_id: String,
) -> Result<RunReport, SyncError> {
    let Some(client) = ctx.providers.get(audience.provider) else {
        return Err(SyncError::UnsupportedProvider(
            audience.name.clone(),
            audience.provider.as_str().to_owned(),
        ));
    };
    ctx.store.ensure_migrated().await?;
    let holder = LockHolder::this_process(&run_id);
    let lock = format!("sync:{}", audience.name);
    // The lease's heartbeat keeps it while the run lives; each provider write checks it first.
    let lease = match ctx.store.lease(&lock, holder.clone()).await? {
        Ok(lease) => lease,
        Err(current) => {
            return Err(SyncError::Locked {
                audience: audience.name.clone(),
                holder: current,
            });
        }
    };
    // Holding the audience's lease, any run of it still `running` is dead: this run resumes it.
    let resumed_from =
        match super::runs::take_over_interrupted(ctx.store, &audience.name, &run_id).await {
            Ok(r) => r,
            Err(e) => {
                lease.release().await;
                return Err(e.into());
            }
        };
    if let Some(previous) = &resumed_from {
        tracing::info!(
            "Run {previous} of this audience was interrupted; this run resumes from what it committed"
        );
    }
    let calls = client.calls();
    let run = Run {
        ctx,
        client,
        audience,
        options,
        run_id,
        lease: lease.watch(),
        lock,
        holder,
        resumed_from,
        started_at: ctx.store.now_text(),
        calls_before: ApiCalls {
            read: calls.read,
            write: calls.write,
        },
    };
    let result = run.run(progress).await;
    lease.release().await;
    result
}

struct Run<'c, 'a> {
    ctx: &'c SyncContext<'a>,
    /// The audience's provider.
    client: &'c Provider,
    audience: &'c AudienceConfig,
    options: SyncOptions,
    run_id: String,
    /// The audience's lease: checked before each write to the provider.
    lease: LeaseWatch,
    /// The lease's name and holder, recorded with the run: it is alive while they hold.
    lock: String,
    holder: LockHolder,
    /// The interrupted run this one takes over.
    resumed_from: Option<String>,
    started_at: String,
    calls_before: ApiCalls,
}

/// Counters and notes of the push.
#[derive(Default)]
struct Tally {
    created: u64,
    updated: u64,
    archived: u64,
    failed: u64,
    errors: Vec<ReportError>,
}

impl<'c, 'a> Run<'c, 'a> {
    async fn run(self, progress: &Progress) -> Result<RunReport, SyncError> {
        let store = self.ctx.store;
        sqlx::query(
            "INSERT INTO sync_runs (run_id, audience, provider, dry_run, status, started_at, lock_name, holder, step, progress_at)
             VALUES ($1, $2, $3, 0, 'running', $4, $5, $6, $7, $4)",
        )
        .bind(&self.run_id)
        .bind(&self.audience.name)
        .bind(self.audience.provider.as_str())
        .bind(&self.started_at)
        .bind(&self.lock)
        .bind(self.holder.as_str())
        .bind(Step::Pulling.as_str())
        .execute(store.pool())
        .await
        .map_err(StoreError::query("record the run start"))?;
        sqlx::query(
            "INSERT INTO audiences (name, provider, list_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&self.audience.name)
        .bind(self.audience.provider.as_str())
        .bind(&self.audience.list_id)
        .bind(&self.started_at)
        .execute(store.pool())
        .await
        .map_err(StoreError::query("record the audience"))?;

        match self.steps(progress).await {
            Ok(report) => {
                self.finish(
                    if report.failed > 0 {
                        "partial"
                    } else {
                        "succeeded"
                    },
                    Some(&report),
                )
                .await?;
                if report.failed == 0 {
                    sqlx::query("UPDATE audiences SET last_success_at = $1 WHERE name = $2")
                        .bind(&report.finished_at)
                        .bind(&self.audience.name)
                        .execute(store.pool())
                        .await
                        .map_err(StoreError::query("record the audience's success"))?;
                }
                Ok(report)
            }
            Err(e) => {
                let status = match &e {
                    SyncError::Guardrail(_) => "refused",
                    // Handed back for a shutdown: what it committed stays; the next run resumes.
                    SyncError::Store(StoreError::Stopped { .. }) => super::runs::INTERRUPTED,
                    _ => "failed",
                };
                if let Err(store_err) = self.finish(status, None).await {
                    tracing::warn!("Recording the failed run failed: {store_err}");
                }
                Err(e)
            }
        }
    }

    async fn finish(&self, status: &str, report: Option<&RunReport>) -> Result<(), SyncError> {
        let json = report.map(serde_json::to_string).transpose().ok().flatten();
        sqlx::query(
            "UPDATE sync_runs SET status = $1, finished_at = $2, report = $3 WHERE run_id = $4",
        )
        .bind(status)
        .bind(self.ctx.store.now_text())
        .bind(json)
        .bind(&self.run_id)
        .execute(self.ctx.store.pool())
        .await
        .map_err(StoreError::query("record the run end"))?;
        Ok(())
    }

    async fn steps(&self, progress: &Progress) -> Result<RunReport, SyncError> {
        let ctx = self.ctx;
        let a = self.audience;
        let mapping = ctx.mapping;
        super::fits(a, mapping.audience(&a.name)?)?;
        let from_scratch = self.options.full
            || events::cursor(ctx.store, &a.name, &events::members_cursor(a.provider))
                .await?
                .is_none();
        progress.start("Pulling changes", None);
        let pulled =
            events::pull(a, mapping, ctx.store, ctx.source, self.client, from_scratch).await?;
        progress.finish(pulled.unsubscribes + pulled.bounces);

        let mut plan = Plan::new(a);
        let mut tally = Tally::default();
        tally.errors.extend(pulled.errors.iter().cloned());
        if !self.options.pull_only {
            let columns = ctx.source.columns(&super::members_query(mapping)).await?;
            let source = mapping.compile_source(&columns)?;
            let compiled = mapping.compile_audience(mapping.audience(&a.name)?, &columns)?;
            if self.options.full {
                self.reconcile_from_provider(&compiled).await?;
            }

            // The plan, for the guardrails, before any member write; then exactly its changes.
            self.step(Step::Planning).await?;
            let (planned, seen) = self.plan(&source, &compiled, progress).await?;
            if let Some(why) = planned.guardrail()
                && !self.options.allow_mass_archive
            {
                return Err(SyncError::Guardrail(format!(
                    "{why}. It would have created {}, updated {} and archived {}; check `mailbridge sync --dry-run`, then rerun with --allow-mass-archive if this is intended",
                    planned.create,
                    planned.update,
                    planned.archive()
                )));
            }
            plan = planned;
            // The changes, read back from the start (one that could not be kept stops the run
            // here, before anything is written).
            let changes = std::mem::take(&mut plan.changes).read()?;
            // What this run saw in the consent column, for later runs' consent decisions (after
            // the guardrails: a refused run writes nothing at all).
            ctx.store.record_consent_seen(&a.name, &seen).await?;
            // Behaviour 2, before the first member write.
            self.step(Step::MergeFields).await?;
            self.ensure_merge_fields(&compiled).await?;
            self.step(Step::Applying).await?;
            self.apply(changes, &compiled, progress, &mut tally).await?;
        }

        let calls = self.client.calls();
        Ok(RunReport {
            run_id: self.run_id.clone(),
            audience: a.name.clone(),
            provider: a.provider.as_str().to_owned(),
            dry_run: false,
            started_at: self.started_at.clone(),
            finished_at: ctx.store.now_text(),
            members_read: plan.members_read,
            created: tally.created,
            updated: tally.updated,
            archived: tally.archived,
            unchanged: plan.unchanged,
            skipped_invalid: plan.skipped_invalid,
            failed: tally.failed,
            unsubscribes_pulled: pulled.unsubscribes,
            bounces_pulled: pulled.bounces,
            api_calls: ApiCalls {
                read: calls.read - self.calls_before.read,
                write: calls.write - self.calls_before.write,
            },
            errors: tally.errors,
            skipped_opted_out: plan.skipped_opted_out,
            skipped: plan.skipped,
            archives: plan.archives,
            samples: plan.samples,
            warning: pulled.left_to.map(|holder| {
                format!(
                    "pulled unsubscribes and bounces were left to the process that holds the writeback lease ({holder}, a running `serve`), which writes them back to the member database; those are not counted here"
                )
            }),
            calls_estimate: None,
            budget: None,
            resumed_from: self.resumed_from.clone(),
        })
    }

    async fn step(&self, step: Step) -> Result<(), SyncError> {
        Ok(super::runs::note_step(self.ctx.store, &self.run_id, step).await?)
    }

    /// Behaviour 2: creates missing merge fields (the key field as text); a type conflict is an
    /// error naming both, before any member write.
    async fn ensure_merge_fields(&self, compiled: &CompiledAudience) -> Result<(), SyncError> {
        let client = self.client;
        let list = &self.audience.list_id;
        let existing = client.fields(list).await?;
        let mut wanted: Vec<(String, String, crate::mapping::FieldType)> = compiled
            .merge_fields
            .iter()
            .map(|f| (f.tag.clone(), f.name.clone(), f.kind))
            .collect();
        wanted.push((
            compiled.key_field.clone(),
            "Member key".to_owned(),
            crate::mapping::FieldType::Text,
        ));
        let mut missing = Vec::new();
        for (tag, name, kind) in wanted {
            match existing.iter().find(|f| f.tag.eq_ignore_ascii_case(&tag)) {
                Some(f) if f.kind != client.field_type(kind) => {
                    return Err(SyncError::MergeFieldConflict {
                        audience: self.audience.name.clone(),
                        tag,
                        mapping_type: kind.as_str().to_owned(),
                        remote_name: f.name.clone(),
                        remote_type: f.kind.clone(),
                    });
                }
                Some(_) => {}
                None => missing.push((tag, name, kind)),
            }
        }
        for (tag, name, kind) in missing {
            self.lease.check()?;
            tracing::info!(%tag, "Creating merge field.");
            client.create_field(list, &tag, &name, kind).await?;
        }
        Ok(())
    }

    /// `--full`: reads the whole audience and rebuilds the contacts' addresses and statuses, so
    /// the diff repairs whatever was changed at the provider by hand.
    async fn reconcile_from_provider(&self, compiled: &CompiledAudience) -> Result<(), SyncError> {
        let store = self.ctx.store;
        let a = self.audience;
        let mut seen: HashMap<MemberKey, (String, SubscriptionStatus)> = HashMap::new();
        for status in [
            SubscriptionStatus::Subscribed,
            SubscriptionStatus::Pending,
            SubscriptionStatus::Unsubscribed,
            SubscriptionStatus::Cleaned,
        ] {
            let mut next: Option<String> = None;
            loop {
                let page = self
                    .client
                    .members(&a.list_id, status, None, next.as_deref())
                    .await?;
                for m in page.members {
                    let email = m.email_address.trim().to_lowercase();
                    let key = match m.merge_fields.get(&compiled.key_field) {
                        Some(serde_json::Value::String(s)) => MemberKey::parse(s),
                        Some(serde_json::Value::Number(n)) => MemberKey::parse(&n.to_string()),
                        _ => None,
                    };
                    let key = match key {
                        Some(k) => Some(k),
                        None => store.member_by_email(&a.name, &email).await?,
                    };
                    if let Some(k) = key {
                        seen.insert(k, (email, m.status));
                    }
                }
                match page.next {
                    Some(n) => next = Some(n),
                    None => break,
                }
            }
        }
        let local = store.contacts(&a.name).await?;
        let mut tx = store.begin().await?;
        for (key, state) in &local {
            match seen.remove(key) {
                Some((email, status)) => {
                    sqlx::query("UPDATE contacts SET email = $1, remote_status = $2 WHERE audience = $3 AND member_key = $4")
                        .bind(&email)
                        .bind(status.as_str())
                        .bind(&a.name)
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query("repair a contact"))?;
                }
                None if state.remote_status != SubscriptionStatus::Archived => {
                    Store::set_remote_status(&mut tx, &a.name, key, SubscriptionStatus::Archived)
                        .await?;
                }
                None => {}
            }
        }
        let rows: Vec<SyncedContact> = seen
            .into_iter()
            .map(|(member_key, (email, status))| SyncedContact {
                member_key,
                email,
                remote_id: None,
                content_hash: String::new(),
                remote_status: status,
                tags: String::new(),
            })
            .collect();
        Store::write_contacts(&mut tx, &a.name, &rows).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit the repaired contacts"))?;
        Ok(())
    }

    /// The plan (the one the dry run makes, from the state after the pull), with the changes to
    /// apply and what the run saw in the consent column (written once the guardrails pass).
    async fn plan(
        &self,
        source: &CompiledSource,
        compiled: &CompiledAudience,
        progress: &Progress,
    ) -> Result<(Plan, Vec<(MemberKey, SeenConsent)>), SyncError> {
        let mapping = self.ctx.mapping;
        let planner = super::planner(
            self.ctx.store,
            self.audience,
            source,
            compiled,
            self.options.full,
        )
        .await?
        .for_run(seen_now());
        let mut planners = [planner];
        let read = super::read_members(
            mapping,
            self.ctx.source,
            &mut planners,
            "Planning",
            progress,
        )
        .await?;
        let [planner] = planners;
        Ok(planner.finish(read)?)
    }

    /// Applies the plan's changes, as they are read: pushes in batches (address changes, pending
    /// contacts and tag removals as member writes, batched too), then the archives.
    async fn apply(
        &self,
        changes: ChangeReader,
        compiled: &CompiledAudience,
        progress: &Progress,
        tally: &mut Tally,
    ) -> Result<(), SyncError> {
        if changes.total() == 0 {
            return Ok(());
        }
        let mut pusher = Pusher::new(self, compiled);
        progress.start("Syncing", Some(changes.total()));
        let mut done = 0u64;
        for change in changes {
            let change = match change {
                Ok(change) => change,
                Err(e) => {
                    // The batches in flight are committed before the run stops.
                    pusher.drain(tally).await?;
                    return Err(e.into());
                }
            };
            done += 1;
            if done.is_multiple_of(4096) {
                progress.set(done);
            }
            match change {
                Change::Push(Push {
                    contact,
                    create,
                    previous_email,
                    status: Some(status),
                }) => {
                    pusher
                        .push(contact, status, create, previous_email, tally)
                        .await?
                }
                Change::Push(Push {
                    contact,
                    previous_email,
                    status: None,
                    ..
                }) => pusher.keep_status(contact, previous_email, tally).await?,
                Change::Archive { member_key, email } => pusher.archives.push((member_key, email)),
            }
        }
        progress.finish(done);
        pusher.flush(tally).await?;
        pusher.flush_writes(tally).await?;
        pusher.drain(tally).await?;
        if !pusher.archives.is_empty() {
            self.step(Step::Archiving).await?;
        }
        pusher.archive_all(tally).await
    }
}

/// The time a run records its consent observations with, at the state DB's precision.
fn seen_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// One member of a batch, with what to store once the provider accepted it.
struct Pending {
    /// The rendered contact and the status asked for.
    member: Contact,
    status: WriteStatus,
    contact: SyncedContact,
    create: bool,
}

/// One member written on its own terms, with what to store once the provider accepted it.
struct PendingWrite {
    write: MemberWrite,
    contact: SyncedContact,
    create: bool,
}

struct BatchDone {
    created: u64,
    updated: u64,
    failed: u64,
    errors: Vec<ReportError>,
}

/// Sends the plan's writes: batches of ≤ 500 (a few in flight), address changes, archives.
struct Pusher<'r, 'c, 'a> {
    run: &'r Run<'c, 'a>,
    owned: Arc<BTreeSet<String>>,
    batch: Vec<Pending>,
    /// Members written on their own terms, sent together.
    writes: Vec<PendingWrite>,
    /// What the batch's members take by [`Provider::item_bytes`].
    batch_bytes: usize,
    in_flight: JoinSet<Result<BatchDone, SyncError>>,
    archives: Vec<(MemberKey, String)>,
    target: Arc<BatchTarget>,
}

/// Where a batch task sends and commits.
struct BatchTarget {
    store: Store,
    client: Provider,
    list: String,
    audience: String,
    run_id: String,
    lease: LeaseWatch,
    /// One batch commits at a time: SQLite has one writer, and queued writers would only spin.
    commits: tokio::sync::Mutex<()>,
}

impl<'r, 'c, 'a> Pusher<'r, 'c, 'a> {
    fn new(run: &'r Run<'c, 'a>, compiled: &CompiledAudience) -> Self {
        Pusher {
            run,
            owned: Arc::new(compiled.owned_tags.clone()),
            batch: Vec::new(),
            writes: Vec::new(),
            batch_bytes: 0,
            in_flight: JoinSet::new(),
            archives: Vec::new(),
            target: Arc::new(BatchTarget {
                store: run.ctx.store.clone(),
                client: run.client.clone(),
                list: run.audience.list_id.clone(),
                audience: run.audience.name.clone(),
                run_id: run.run_id.clone(),
                lease: run.lease.clone(),
                commits: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn synced(&self, contact: &Contact, status: WriteStatus) -> SyncedContact {
        SyncedContact {
            member_key: contact.member_key.clone(),
            email: contact.email.as_str().to_owned(),
            remote_id: self.run.client.remote_id(&contact.email),
            content_hash: contact.content_hash(),
            remote_status: match status {
                WriteStatus::Pending => SubscriptionStatus::Pending,
                WriteStatus::Unsubscribed => SubscriptionStatus::Unsubscribed,
                WriteStatus::Subscribed => SubscriptionStatus::Subscribed,
            },
            tags: contact.tags.iter().cloned().collect::<Vec<_>>().join("\n"),
        }
    }

    async fn push(
        &mut self,
        contact: Contact,
        status: WriteStatus,
        create: bool,
        previous_email: Option<String>,
        tally: &mut Tally,
    ) -> Result<(), SyncError> {
        let remove_tags = self.stale_tags(&contact, create).await?;
        if let Some(old) = previous_email {
            // An address change: found at its old address; the status only for a new member.
            return self
                .write(contact, status, None, old, remove_tags, create, tally)
                .await;
        }
        if !remove_tags.is_empty() {
            // A batch upsert cannot remove tags: the member is written with its tags instead,
            // its status asserted as the batch upsert would.
            let at = contact.email.as_str().to_owned();
            return self
                .write(
                    contact,
                    status,
                    Some(status),
                    at,
                    remove_tags,
                    create,
                    tally,
                )
                .await;
        }
        // A provider that limits a batch by size too gets batches packed to that size: each is
        // then one request (Constant Contact: one import under 4 MB).
        let bytes = self.run.client.item_bytes(&contact, status);
        if let Some(limit) = self.run.client.batch_bytes()
            && !self.batch.is_empty()
            && self.batch_bytes + bytes > limit
        {
            self.flush(tally).await?;
        }
        self.batch_bytes += bytes;
        self.batch.push(Pending {
            contact: self.synced(&contact, status),
            member: contact,
            status,
            create,
        });
        if self.batch.len() >= self.run.client.batch_size() {
            self.flush(tally).await?;
        }
        Ok(())
    }

    /// Owned tags the contact had and no longer gets.
    async fn stale_tags(&self, contact: &Contact, create: bool) -> Result<Vec<String>, SyncError> {
        if create {
            return Ok(Vec::new());
        }
        let before = self
            .run
            .ctx
            .store
            .contact_tags(&self.run.audience.name, &[&contact.member_key])
            .await?
            .remove(&contact.member_key)
            .unwrap_or_default();
        Ok(before
            .into_iter()
            .filter(|t| self.owned.contains(t) && !contact.tags.contains(t))
            .collect())
    }

    /// A contact pending at the provider: written without `status` (at the old address on an
    /// address change), so its status is left as the provider has it.
    async fn keep_status(
        &mut self,
        contact: Contact,
        previous_email: Option<String>,
        tally: &mut Tally,
    ) -> Result<(), SyncError> {
        let remove_tags = self.stale_tags(&contact, false).await?;
        let at = previous_email.unwrap_or_else(|| contact.email.as_str().to_owned());
        self.write(
            contact,
            WriteStatus::Pending,
            None,
            at,
            remove_tags,
            false,
            tally,
        )
        .await
    }

    /// Queues a member written on its own terms (an address change at its old address, a
    /// pending member, a member losing owned tags); sent with others like it through
    /// [`Provider::write_members`] (Mailchimp: `/batches`).
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &mut self,
        contact: Contact,
        status_if_new: WriteStatus,
        status: Option<WriteStatus>,
        at: String,
        remove_tags: Vec<String>,
        create: bool,
        tally: &mut Tally,
    ) -> Result<(), SyncError> {
        let mut tags: Vec<(String, bool)> =
            contact.tags.iter().map(|t| (t.clone(), true)).collect();
        tags.extend(remove_tags.into_iter().map(|t| (t, false)));
        self.writes.push(PendingWrite {
            contact: self.synced(&contact, status.unwrap_or(status_if_new)),
            write: MemberWrite {
                at,
                email: contact.email.clone(),
                status_if_new,
                status,
                merge_fields: contact.merge_fields,
                tags,
            },
            create,
        });
        if self.writes.len() >= self.run.client.write_batch_size() {
            self.flush_writes(tally).await?;
        }
        Ok(())
    }

    /// Sends the queued member writes (waiting for a slot when enough are in flight).
    async fn flush_writes(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        self.wait_for_slot(tally).await?;
        let writes = std::mem::take(&mut self.writes);
        let target = self.target.clone();
        self.in_flight
            .spawn(async move { apply_writes(&target, writes).await });
        Ok(())
    }

    /// Sends the current batch (waiting for a slot when enough are in flight).
    async fn flush(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.wait_for_slot(tally).await?;
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let target = self.target.clone();
        self.in_flight
            .spawn(async move { apply_batch(&target, batch).await });
        Ok(())
    }

    /// Waits until fewer batches than the provider allows are in flight.
    async fn wait_for_slot(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        while self.in_flight.len() >= self.run.client.batches_in_flight() {
            self.join_one(tally).await?;
        }
        Ok(())
    }

    async fn join_one(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        if let Some(done) = self.in_flight.join_next().await {
            let done = done.map_err(|e| {
                SyncError::Guardrail(format!("a batch task stopped unexpectedly: {e}"))
            })??;
            tally.created += done.created;
            tally.updated += done.updated;
            tally.failed += done.failed;
            tally.errors.extend(done.errors);
        }
        Ok(())
    }

    async fn drain(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        while !self.in_flight.is_empty() {
            self.join_one(tally).await?;
        }
        Ok(())
    }

    async fn archive_all(&mut self, tally: &mut Tally) -> Result<(), SyncError> {
        let run = self.run;
        let archives = std::mem::take(&mut self.archives);
        let mut results: Vec<(MemberKey, String, Result<Archive, ProviderError>)> =
            Vec::with_capacity(archives.len());
        for chunk in archives.chunks(run.client.archive_batch_size().max(1)) {
            if run.lease.check().is_err() {
                break;
            }
            let emails: Vec<&str> = chunk.iter().map(|(_, email)| email.as_str()).collect();
            let done = run
                .client
                .archive_many(&run.audience.list_id, &emails)
                .await;
            results.extend(
                chunk
                    .iter()
                    .cloned()
                    .zip(done)
                    .map(|((key, email), r)| (key, email, r)),
            );
        }
        let archived_before = tally.archived;
        let mut tx = run.ctx.store.begin().await?;
        let mut errors = Vec::new();
        for (key, email, r) in results {
            // 405: Mailchimp does not archive a contact that is already archived (a run killed
            // after the DELETE), pending or cleaned; none of those is mailed as a subscriber,
            // so the contact counts as archived rather than failing on every later run.
            let r = match r {
                Err(e) if e.reaction() == Reaction::CannotArchive => {
                    tracing::warn!(member_key = %key, provider = e.provider_name(), "The provider cannot archive this contact ({e}); recording it as archived.");
                    Ok(Archive::AlreadyGone)
                }
                other => other,
            };
            match r {
                Ok(_) => {
                    Store::set_remote_status(
                        &mut tx,
                        &run.audience.name,
                        &key,
                        SubscriptionStatus::Archived,
                    )
                    .await?;
                    tally.archived += 1;
                }
                Err(e) => {
                    let e = fatal(e)?;
                    tally.failed += 1;
                    let err = member_error(key.as_str(), &email, &e);
                    tally.errors.push(err.clone());
                    errors.push((err, None));
                }
            }
        }
        note_committed(
            &mut tx,
            &run.run_id,
            tally.archived - archived_before,
            &run.ctx.store.now_text(),
        )
        .await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit archives"))?;
        record_errors(run.ctx.store, &run.run_id, &run.audience.name, &errors).await?;
        // Archives skipped because the lease was lost (those made are recorded above).
        run.lease.check()?;
        Ok(())
    }
}

/// Errors that stop the run instead of failing one member (bad credentials, setup).
fn fatal(e: ProviderError) -> Result<ProviderError, SyncError> {
    match e.reaction() {
        Reaction::Stop => Err(SyncError::ProviderStopped(e)),
        Reaction::OutOfBudget { .. } => Err(SyncError::from(e)),
        _ => Ok(e),
    }
}

/// A member's failed write, as the report names it.
fn member_error(member_key: &str, email: &str, e: &ProviderError) -> ReportError {
    ReportError {
        member_key: Some(member_key.to_owned()),
        email: Some(email.to_owned()),
        code: e.code().into(),
        message: e.to_string().into(),
    }
}

/// One batch: send, remove stale owned tags of the accepted members, then commit their contacts
/// and the refused members' errors in one transaction.
async fn apply_batch(target: &BatchTarget, batch: Vec<Pending>) -> Result<BatchDone, SyncError> {
    let BatchTarget {
        store,
        client,
        list,
        audience,
        run_id,
        lease,
        ..
    } = target;
    lease.check()?;
    let members: Vec<(&Contact, WriteStatus)> =
        batch.iter().map(|p| (&p.member, p.status)).collect();
    let mut done = BatchDone {
        created: 0,
        updated: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let outcomes = match client.upsert_batch(list, &members).await {
        Ok(r) => r,
        Err(e) => {
            let e = fatal(e)?;
            tracing::warn!("A batch of {} members failed: {e}", batch.len());
            let errors: Vec<(ReportError, Option<String>)> = batch
                .iter()
                .map(|p| {
                    (
                        member_error(p.contact.member_key.as_str(), p.member.email.original(), &e),
                        None,
                    )
                })
                .collect();
            record_errors(store, run_id, audience, &errors).await?;
            done.failed = errors.len() as u64;
            done.errors = errors.into_iter().map(|(e, _)| e).collect();
            return Ok(done);
        }
    };
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    // The error that stops the run once what the provider did write is recorded.
    let mut stop = None;
    for (p, outcome) in batch.into_iter().zip(outcomes) {
        let remote_status = match outcome {
            UpsertOutcome::Accepted(status) => status,
            UpsertOutcome::NotSent(e) => {
                match fatal(e) {
                    Err(e) => {
                        stop.get_or_insert(e);
                    }
                    Ok(e) => {
                        done.failed += 1;
                        errors.push((
                            member_error(
                                p.contact.member_key.as_str(),
                                p.member.email.original(),
                                &e,
                            ),
                            None,
                        ));
                    }
                }
                continue;
            }
            UpsertOutcome::Refused(refusal) => {
                // Failed this run (exit 3); an invalid address is then skipped (skipped_invalid)
                // on later runs until the member row changes.
                done.failed += 1;
                let err = ReportError {
                    member_key: Some(p.contact.member_key.to_string()),
                    email: Some(p.member.email.original().to_owned()),
                    code: refusal.code.into(),
                    message: refusal.message.into(),
                };
                // Invalid addresses keep the content hash, so later runs skip them until the
                // row changes; other refusals are tried again.
                errors.push((
                    err,
                    refusal
                        .invalid_address
                        .then(|| p.contact.content_hash.clone()),
                ));
                continue;
            }
        };
        let mut contact = p.contact;
        if let Some(s) = remote_status {
            contact.remote_status = s;
        }
        if p.create {
            done.created += 1;
        } else {
            done.updated += 1;
        }
        accepted.push(contact);
    }
    commit_done(target, accepted, errors, stop, done, "commit a batch").await
}

/// Member writes: send them ([`Provider::write_members`]), then commit the written members'
/// contacts and the others' errors in one transaction.
async fn apply_writes(
    target: &BatchTarget,
    writes: Vec<PendingWrite>,
) -> Result<BatchDone, SyncError> {
    let BatchTarget {
        store,
        client,
        list,
        audience,
        run_id,
        lease,
        ..
    } = target;
    lease.check()?;
    let sent: Vec<MemberWrite> = writes.iter().map(|w| w.write.clone()).collect();
    let mut done = BatchDone {
        created: 0,
        updated: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let error_of = |w: &PendingWrite, e: &ProviderError| {
        member_error(w.contact.member_key.as_str(), w.write.email.original(), e)
    };
    let results = match client.write_members(list, &sent).await {
        Ok(results) => results,
        Err(e) => {
            let e = fatal(e)?;
            tracing::warn!("A batch of {} member writes failed: {e}", writes.len());
            let errors: Vec<(ReportError, Option<String>)> =
                writes.iter().map(|w| (error_of(w, &e), None)).collect();
            record_errors(store, run_id, audience, &errors).await?;
            done.failed = errors.len() as u64;
            done.errors = errors.into_iter().map(|(e, _)| e).collect();
            return Ok(done);
        }
    };
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    let mut stop = None;
    for (w, result) in writes.into_iter().zip(results) {
        match result {
            Ok(status) => {
                let mut contact = w.contact;
                if let Some(s) = status {
                    contact.remote_status = s;
                }
                if w.create {
                    done.created += 1;
                } else {
                    done.updated += 1;
                }
                accepted.push(contact);
            }
            Err(e) => match fatal(e) {
                Err(e) => {
                    stop.get_or_insert(e);
                }
                Ok(e) => {
                    done.failed += 1;
                    errors.push((error_of(&w, &e), None));
                }
            },
        }
    }
    commit_done(target, accepted, errors, stop, done, "commit member writes").await
}

/// The end of a batch's turn, whichever way it was sent: the accepted members' contacts and the
/// run's committed count in one transaction (one writer at a time), then the members' errors;
/// then a fatal error met on the way, if any, and the lease checked.
async fn commit_done(
    target: &BatchTarget,
    accepted: Vec<SyncedContact>,
    errors: Vec<(ReportError, Option<String>)>,
    stop: Option<SyncError>,
    mut done: BatchDone,
    what: &'static str,
) -> Result<BatchDone, SyncError> {
    let BatchTarget {
        store,
        audience,
        run_id,
        lease,
        commits,
        ..
    } = target;
    let _one_writer = commits.lock().await;
    // The provider has these writes: a state DB that went away (a restart) is given until the
    // lease runs out to come back, else the next run would send them all again.
    let on_retry = |failures: u32, e: &StoreError| {
        if failures == 1 {
            tracing::warn!(
                audience = %audience,
                "The state database's connection failed while recording a batch the provider took; retrying on a new connection while the lease lasts: {}",
                crate::error_chain(e)
            );
        }
    };
    let accepted = Arc::new(accepted);
    let ((), failures) = retry_transient(lease.remaining(), on_retry, || async {
        let now = store.now_text();
        if let Some(writer) = store.writer() {
            let (audience, run_id, accepted) = (audience.clone(), run_id.clone(), accepted.clone());
            return writer
                .transaction(what, move |tx, err| {
                    Store::write_contacts_native(tx, err, &audience, &accepted)?;
                    let n = i64::try_from(accepted.len()).unwrap_or(i64::MAX);
                    if n > 0 {
                        let mut note = tx.prepare_cached(NOTE_COMMITTED_SQL).map_err(err)?;
                        bind_numbered(&mut note, &[&n, &now, &run_id]).map_err(err)?;
                        note.raw_execute().map_err(err)?;
                    }
                    Ok(())
                })
                .await;
        }
        let mut tx = store.begin().await?;
        Store::write_contacts(&mut tx, audience, &accepted).await?;
        note_committed(&mut tx, run_id, accepted.len() as u64, &now).await?;
        tx.commit().await.map_err(StoreError::query(what))
    })
    .await?;
    retry_transient(lease.remaining(), on_retry, || {
        record_errors(store, run_id, audience, &errors)
    })
    .await?;
    if failures > 0 {
        tracing::info!(audience = %audience, failures, "The sync reached the state database again");
    }
    if let Some(e) = stop {
        return Err(e);
    }
    lease.check()?;
    done.errors = errors.into_iter().map(|(e, _)| e).collect();
    Ok(done)
}

async fn record_errors(
    store: &Store,
    run_id: &str,
    audience: &str,
    errors: &[(ReportError, Option<String>)],
) -> Result<(), StoreError> {
    if errors.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut tx = store.begin().await?;
    for (e, hash) in errors {
        sqlx::query(
            "INSERT INTO sync_errors (run_id, audience, member_key, email, code, message, created_at, content_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(run_id)
        .bind(audience)
        .bind(e.member_key.as_deref())
        .bind(e.email.as_deref())
        .bind(e.code.as_ref())
        .bind(e.message.as_ref())
        .bind(&now)
        .bind(hash.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("record member errors"))?;
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit member errors"))?;
    Ok(())
}
