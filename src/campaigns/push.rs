//! The push: a state machine over one `campaigns` row, run only by the holder of the lease
//! `campaign:<key>` (`store/locks.rs`).
//!
//! At most once (invariant 5), step by step:
//! - The lease is taken before the row is read or written. Of two pushes with the same key one
//!   gets it and acts; the other returns the record as it is, and never calls the provider. The
//!   holder's heartbeat renews the lease; a crashed holder's lease is taken over once it expired
//!   (a minute, [`crate::store::locks::LEASE_TTL`]), never earlier. The lease is renewed and
//!   confirmed before each provider call: a push that lost it stops before its next call.
//! - The intent row (key, audience, content hash, `draft`) is inserted before anything is created
//!   at the provider; the provider's campaign id is recorded the moment the create call answers.
//! - The create call carries `settings.title = "mailbridge:<key>"`. A row that has no id but was
//!   not inserted by this push may belong to a push that crashed after Mailchimp created the
//!   campaign and before the id was recorded (or whose create timed out): such a row is matched
//!   by searching the list's campaigns for that title before anything is created again.
//! - Right before the send, the campaign's status is read; the send goes out only while it is
//!   `save`. Send and create are never retried by the retry layer (`idempotent: false`); a send
//!   that times out is followed by a status read, never by a second send.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::store::{self as rows, CampaignRecord};
use super::{
    CampaignError, CampaignSpec, CampaignState, PushRequest, check_future, content_hash,
    derived_key, validate, validate_key,
};
use crate::config::{AudienceConfig, Config};
use crate::mapping::Mapping;
use crate::progress::Progress;
use crate::providers::{CampaignStatus, NewCampaign};
use crate::providers::{Provider, ProviderSet};
use crate::source::MemberSource;
use crate::store::locks::{Lease, LockHolder};
use crate::store::{Store, StoreError};
use crate::sync::apply::{SyncContext, SyncOptions, sync_audience};
use crate::sync::report::{RunReport, new_run_id};

/// How long a push that lost the lease waits for the winner's row to appear (the winner inserts
/// it right after taking the lease).
const WAIT_FOR_ROW: Duration = Duration::from_secs(10);

/// What a push needs.
pub struct PushContext<'a> {
    pub config: &'a Config,
    pub mapping: &'a Mapping,
    pub store: &'a Store,
    pub source: &'a MemberSource,
    /// The connected providers; the audience's `provider` picks the one pushed to.
    pub providers: &'a ProviderSet,
    pub progress: &'a Progress,
    /// Called with the campaign id right after it is recorded (the crash test of the binary
    /// stops the process here; `None` otherwise).
    pub after_create: Option<fn(&str)>,
    /// Told each stage as the push reaches it (a campaign job shows it; `None` otherwise).
    pub stage: Option<&'a tokio::sync::watch::Sender<Option<PushStage>>>,
}

/// The stages of a push, as a campaign job shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushStage {
    /// The preflight sync (or, with `no_sync`, the check of the last one).
    Syncing,
    /// Creating the campaign, setting its content, the checklist and test sends.
    Creating,
    /// The send (or schedule) call and its confirmation.
    Sending,
}

impl PushStage {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStage::Syncing => "syncing",
            PushStage::Creating => "creating",
            PushStage::Sending => "sending",
        }
    }
}

/// What a push did.
#[derive(Debug)]
pub struct PushOutcome {
    /// The record after the push.
    pub record: CampaignRecord,
    /// This push recorded the intent (HTTP 201); otherwise the key existed (HTTP 200).
    pub inserted: bool,
    /// This push worked on the campaign; `false` when it only returned the record (already
    /// finished, or another push holds the key).
    pub acted: bool,
    /// The preflight sync's report, when one ran.
    pub preflight: Option<RunReport>,
}

/// Pushes a campaign under `key` (derived from the content when `None`). See the module docs.
#[tracing::instrument(skip_all, fields(audience = %request.audience))]
pub async fn push(
    ctx: &PushContext<'_>,
    request: &PushRequest,
    key: Option<&str>,
) -> Result<PushOutcome, CampaignError> {
    let audience = find_audience(ctx.config, &request.audience)?;
    let client = ctx
        .providers
        .get(audience.provider)
        .ok_or_else(|| CampaignError::Invalid {
            field: "audience".into(),
            message: format!(
                "audience `{}` uses {}, which this version cannot push campaigns to",
                audience.name,
                audience.provider.as_str()
            ),
        })?;
    let spec = validate(request, audience)?;
    let hash = content_hash(&spec);
    let key = match key {
        Some(k) => {
            validate_key(k)?;
            k.to_owned()
        }
        None => derived_key(&hash),
    };
    ctx.store.ensure_migrated().await?;
    if let Some(at) = spec.schedule
        && let Err(e) = check_future(at, Utc::now())
    {
        // A repeat of a push that scheduled this campaign gets its record, even after the time.
        return match rows::get(ctx.store, &key).await? {
            Some(record) if record.state.is_final() && record.content_hash == hash => {
                Ok(PushOutcome {
                    record,
                    inserted: false,
                    acted: false,
                    preflight: None,
                })
            }
            _ => Err(e),
        };
    }

    let lease = match lease_or_record(ctx.store, &key).await? {
        Ok(lease) => lease,
        Err(record) => {
            check_hash(&record, &hash)?;
            return Ok(PushOutcome {
                record,
                inserted: false,
                acted: false,
                preflight: None,
            });
        }
    };
    let result = Pusher {
        ctx,
        client,
        audience,
        spec: &spec,
        key: &key,
        lease: &lease,
    }
    .run(&hash)
    .await;
    lease.release().await;
    result
}

/// The record of `key` (for `campaign status` and `GET /v1/campaigns/{key}`).
pub async fn status(store: &Store, key: &str) -> Result<CampaignRecord, CampaignError> {
    store.ensure_migrated().await?;
    rows::get(store, key)
        .await?
        .ok_or_else(|| CampaignError::UnknownKey(key.to_owned()))
}

pub(crate) fn find_audience<'c>(
    config: &'c Config,
    name: &str,
) -> Result<&'c AudienceConfig, CampaignError> {
    let audience = config
        .audiences
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.audiences.iter().map(|a| a.name.as_str()).collect();
            CampaignError::Invalid {
                field: "audience".into(),
                message: format!(
                    "no audience named `{name}` in {} (configured: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            }
        })?;
    Ok(audience)
}

pub(crate) fn check_hash(record: &CampaignRecord, hash: &str) -> Result<(), CampaignError> {
    if record.content_hash == hash {
        Ok(())
    } else {
        Err(CampaignError::KeyConflict {
            key: record.key.clone(),
            existing: record.content_hash.clone(),
            given: hash.to_owned(),
        })
    }
}

/// Takes the lease of `key`; while another push holds it, polls for the row that push is about
/// to insert (an observable state, with a deadline) and tries the lease again meanwhile: a
/// holder that died before inserting the row (a worker killed mid-push) holds the key only until
/// its lease runs out, and the push then goes on here instead of being refused. The lease, or
/// the other push's record; [`CampaignError::KeyBusy`] when neither came in time.
async fn lease_or_record(
    store: &Store,
    key: &str,
) -> Result<Result<Lease, CampaignRecord>, CampaignError> {
    let lock = format!("campaign:{key}");
    let holder = LockHolder::this_process(&new_run_id());
    let deadline = tokio::time::Instant::now() + WAIT_FOR_ROW;
    let mut told = false;
    loop {
        match store.lease(&lock, holder.clone()).await? {
            Ok(lease) => return Ok(Ok(lease)),
            Err(current) => {
                if !told {
                    tracing::info!(key = %key, holder = %current, "Another push holds this campaign key; waiting for its record.");
                    told = true;
                }
                if let Some(record) = rows::get(store, key).await? {
                    return Ok(Err(record));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CampaignError::KeyBusy(key.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Pusher<'p, 'a> {
    ctx: &'p PushContext<'a>,
    /// The audience's provider.
    client: &'p Provider,
    audience: &'p AudienceConfig,
    spec: &'p CampaignSpec,
    key: &'p str,
    lease: &'p Lease,
}

impl Pusher<'_, '_> {
    async fn run(&self, hash: &str) -> Result<PushOutcome, CampaignError> {
        let store = self.ctx.store;
        let inserted = rows::insert_intent(store, self.key, &self.spec.audience, hash).await?;
        let record = self.record().await?;
        check_hash(&record, hash)?;
        if record.state.is_final() {
            return Ok(PushOutcome {
                record,
                inserted,
                acted: false,
                preflight: None,
            });
        }
        let mut preflight = None;
        match self.steps(&record, inserted, &mut preflight).await {
            Ok(()) => Ok(PushOutcome {
                record: self.record().await?,
                inserted,
                acted: true,
                preflight,
            }),
            // Another push holds the key now: the row is its to write.
            Err(e @ CampaignError::Store(StoreError::LockLost { .. })) => {
                tracing::warn!(key = %self.key, "The campaign's lease was taken over; this push stops here.");
                Err(e)
            }
            // Shutting down: the push stops before its next side effect; the next resumes it.
            Err(e @ CampaignError::Store(StoreError::Stopped { .. })) => {
                tracing::info!(key = %self.key, "The push stops here for the shutdown; it runs again from where it is.");
                Err(e)
            }
            Err(e) => {
                let unchanged = inserted
                    && e.is_bad_input()
                    && self.record().await?.provider_campaign_id.is_none();
                if unchanged {
                    // Refused before anything was created: leave no trace (invariant 6).
                    rows::delete_unstarted(store, self.key).await?;
                } else {
                    rows::set_state(
                        store,
                        self.key,
                        CampaignState::Failed,
                        None,
                        Some(&crate::error_chain(&e)),
                    )
                    .await?;
                }
                Err(e)
            }
        }
    }

    fn stage(&self, stage: PushStage) {
        if let Some(tx) = self.ctx.stage {
            tx.send_replace(Some(stage));
        }
    }

    /// Renews the lease and confirms it is still this push's: before each provider call, so a
    /// push whose lease was taken over stops before its next call.
    async fn step(&self) -> Result<(), CampaignError> {
        self.lease.renew_now().await.map_err(CampaignError::from)
    }

    async fn record(&self) -> Result<CampaignRecord, CampaignError> {
        rows::get(self.ctx.store, self.key).await?.ok_or_else(|| {
            CampaignError::Store(StoreError::Read {
                what: "campaign intent",
                message: format!("the row of key `{}` vanished", self.key),
            })
        })
    }

    async fn steps(
        &self,
        record: &CampaignRecord,
        inserted: bool,
        preflight: &mut Option<RunReport>,
    ) -> Result<(), CampaignError> {
        let client = self.client;
        // Before anything else: a campaign an earlier push created may have gone out already
        // (its outcome lost to a crash); then there is nothing to do, whatever a sync would say.
        if let Some(id) = &record.provider_campaign_id {
            self.step().await?;
            if self.finished_at_provider(id).await? {
                return Ok(());
            }
        }
        // The heartbeat keeps the lease through a long preflight sync; should it be lost
        // anyway (this process stalled past it and another push took the key over), stop
        // before anything is created.
        self.stage(PushStage::Syncing);
        *preflight = tokio::select! {
            report = self.preflight() => report?,
            lost = self.lease.lost() => return Err(lost.into()),
        };

        self.stage(PushStage::Creating);
        self.step().await?;
        let campaign_id = match &record.provider_campaign_id {
            Some(id) => id.clone(),
            None => {
                let id = self.find_or_create(inserted).await?;
                if let Some(hook) = self.ctx.after_create {
                    hook(&id);
                }
                id
            }
        };

        self.step().await?;
        client
            .set_campaign_content(&campaign_id, &self.spec.html, &self.spec.text)
            .await?;
        self.step().await?;
        let checklist = client.send_checklist(&campaign_id).await?;
        if !checklist.is_ready {
            return Err(CampaignError::NotReady {
                provider: self.audience.provider.display_name(),
                items: checklist.items,
            });
        }
        if !self.spec.test_to.is_empty() && record.state != CampaignState::Tested {
            self.step().await?;
            client
                .test_campaign(&campaign_id, &self.spec.test_to)
                .await?;
            rows::set_state(self.ctx.store, self.key, CampaignState::Tested, None, None).await?;
        }

        // The guard of invariant 5: send only a campaign that is still a draft, and only while
        // this push still holds the key's lease.
        self.step().await?;
        let remote = client.campaign(&campaign_id).await?;
        if remote.status != CampaignStatus::Draft {
            self.record_provider_status(&campaign_id, &remote.status, remote.recipient_count)
                .await?;
            return Ok(());
        }
        let recipients = remote.recipient_count;
        self.stage(PushStage::Sending);
        self.step().await?;
        let (what, result, expected) = match self.spec.schedule {
            None => (
                "send",
                client.send_campaign(&campaign_id).await,
                CampaignState::Sent,
            ),
            Some(at) => (
                "schedule",
                client.schedule_campaign(&campaign_id, at).await,
                CampaignState::Scheduled,
            ),
        };
        match result {
            Ok(()) => {
                rows::set_state(self.ctx.store, self.key, expected, recipients, None).await?;
                tracing::info!(key = %self.key, campaign_id = %campaign_id, state = %expected, "Campaign pushed.");
                Ok(())
            }
            Err(e) if e.may_have_run_there() => {
                tracing::warn!(key = %self.key, "The {what} call got no clear answer ({e}); reading the campaign's status instead of trying again.");
                let remote = client.campaign(&campaign_id).await?;
                if remote.status == CampaignStatus::Draft {
                    return Err(CampaignError::Unconfirmed {
                        provider: self.audience.provider.display_name(),
                        what,
                        campaign_id,
                        cause: crate::error_chain(&e),
                    });
                }
                self.record_provider_status(
                    &campaign_id,
                    &remote.status,
                    remote.recipient_count.or(recipients),
                )
                .await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Behaviour 1: the audience is current (synced now, or recently enough with `--no-sync`)
    /// and has subscribed members.
    async fn preflight(&self) -> Result<Option<RunReport>, CampaignError> {
        let store = self.ctx.store;
        let name = &self.audience.name;
        let report = if self.spec.no_sync {
            let max = self.ctx.config.campaigns.max_sync_age_minutes;
            let last: Option<(Option<String>,)> =
                sqlx::query_as("SELECT last_success_at FROM audiences WHERE name = $1")
                    .bind(name)
                    .fetch_optional(store.pool())
                    .await
                    .map_err(StoreError::query("read the audience's last sync"))?;
            let last = last
                .and_then(|(t,)| t)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc));
            let Some(last) = last else {
                return Err(CampaignError::Refused(format!(
                    "audience `{name}` has never been synced successfully; push without --no-sync (or run `mailbridge sync`) first"
                )));
            };
            let age = (Utc::now() - last).num_minutes();
            if age > i64::try_from(max).unwrap_or(i64::MAX) {
                return Err(CampaignError::Refused(format!(
                    "the last successful sync of audience `{name}` was {age} minutes ago ({}), older than campaigns.max_sync_age_minutes = {max}; push without --no-sync or run `mailbridge sync` first",
                    last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            None
        } else {
            let sync = SyncContext {
                mapping: self.ctx.mapping,
                store,
                source: self.ctx.source,
                providers: self.ctx.providers,
            };
            let report = sync_audience(
                &sync,
                self.audience,
                SyncOptions::default(),
                self.ctx.progress,
            )
            .await
            .map_err(|source| CampaignError::Sync {
                audience: name.clone(),
                source: Box::new(source),
            })?;
            if report.failed > 0 {
                // A failed member may be an opt-out that did not reach the provider.
                return Err(CampaignError::Refused(format!(
                    "the preflight sync of audience `{name}` left {} member(s) failed (run {}); fix them (`mailbridge sync` lists them) before pushing a campaign",
                    report.failed, report.run_id
                )));
            }
            Some(report)
        };
        let (subscribed,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM contacts WHERE audience = $1 AND remote_status = 'subscribed'",
        )
        .bind(name)
        .fetch_one(store.pool())
        .await
        .map_err(StoreError::query("count subscribed contacts"))?;
        if subscribed == 0 {
            return Err(CampaignError::Refused(format!(
                "audience `{name}` has no subscribed members; nothing would be sent"
            )));
        }
        Ok(report)
    }

    /// The id of this key's campaign: found by its title when an earlier push may have created
    /// it, else created now. Recorded before returning.
    /// The provider's id of `--segment` (Mailchimp: a tag's), or a refusal naming the field.
    async fn segment_id(&self) -> Result<Option<String>, CampaignError> {
        let Some(tag) = &self.spec.segment else {
            return Ok(None);
        };
        let found = self.client.segment_id(&self.audience.list_id, tag).await?;
        found.map(Some).ok_or_else(|| CampaignError::Invalid {
            field: "segment".into(),
            message: format!("audience `{}` has no tag `{tag}`", self.audience.name),
        })
    }

    async fn find_or_create(&self, inserted: bool) -> Result<String, CampaignError> {
        let client = self.client;
        let list_id = &self.audience.list_id;
        let title = format!("mailbridge:{}", self.key);
        if !inserted {
            self.step().await?;
            let found = client.campaigns_titled(list_id, &title).await?;
            if let Some(c) = found.first() {
                tracing::info!(key = %self.key, campaign_id = %c.id, "Found the campaign an earlier push created.");
                rows::set_provider_id(self.ctx.store, self.key, &c.id).await?;
                return Ok(c.id.clone());
            }
        }
        // After the preflight: the sync creates the tags the mapping defines, so the segment's
        // tag may exist only from then on.
        let segment_id = self.segment_id().await?;
        self.step().await?;
        let created = client
            .create_campaign(&NewCampaign {
                list_id,
                segment_id: segment_id.as_deref(),
                subject: &self.spec.subject,
                title: &title,
                from_name: &self.spec.from_name,
                reply_to: self.spec.reply_to.original(),
            })
            .await?;
        rows::set_provider_id(self.ctx.store, self.key, &created.id).await?;
        Ok(created.id)
    }

    /// For a campaign created earlier: `true` (and the row updated) when it is no longer a draft.
    async fn finished_at_provider(&self, campaign_id: &str) -> Result<bool, CampaignError> {
        let remote = self.client.campaign(campaign_id).await?;
        if remote.status == CampaignStatus::Draft {
            return Ok(false);
        }
        self.record_provider_status(campaign_id, &remote.status, remote.recipient_count)
            .await?;
        Ok(true)
    }

    async fn record_provider_status(
        &self,
        campaign_id: &str,
        status: &CampaignStatus,
        recipients: Option<u64>,
    ) -> Result<(), CampaignError> {
        let state = match status {
            CampaignStatus::Sent => CampaignState::Sent,
            CampaignStatus::Sending => CampaignState::Sending,
            CampaignStatus::Scheduled => CampaignState::Scheduled,
            other => {
                return Err(CampaignError::ProviderState {
                    provider: self.audience.provider.display_name(),
                    campaign_id: campaign_id.to_owned(),
                    status: other.as_str().to_owned(),
                });
            }
        };
        rows::set_state(self.ctx.store, self.key, state, recipients, None).await?;
        Ok(())
    }
}
