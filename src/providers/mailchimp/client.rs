//! [`MailchimpClient`]: one shared HTTP/1.1 keep-alive connection pool per run, Basic auth, at most
//! `max_in_flight` requests on the wire, every call through [`RetryPolicy::run`], and counters of
//! the calls that reached the wire.

mod batches;
mod webhooks;
#[cfg(test)]
pub(super) use batches::unpack_results;
pub use batches::{
    BatchOperation, BatchPolling, MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES, MAX_BATCH_BODY_BYTES,
    MAX_BATCH_OPERATIONS, MAX_UNPACKED_BYTES, OperationResult,
};
pub use webhooks::{RemoteWebhook, WebhookEvents, WebhookSources};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::error::{ErrorKind, FieldError, MailchimpError};
use super::types::{
    ApiCalls, Archive, BatchMember, BatchMemberError, BatchMemberOutcome, BatchResult,
    CampaignStatus, ChecklistItem, MembersPage, NewCampaign, RemoteCampaign, RemoteMember,
    RemoteMergeField, SendChecklist, SubscriberHash, WriteStatus,
};
use super::wire;
use crate::config::MailchimpConfig;
use crate::domain::{Email, SubscriptionStatus};
use crate::mapping::{FieldType, FieldValue};
use crate::providers::retry::{RetryPolicy, Stop, parse_retry_after};

/// Members per batch-subscribe call (Mailchimp's limit).
pub const MAX_BATCH_MEMBERS: usize = 500;
/// Largest `count` a collection GET accepts.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Mailchimp allows 10 simultaneous connections per user.
pub const MAX_IN_FLIGHT: u32 = 10;

/// The fields `get_member` asks for.
const MEMBER_FIELDS: &str = "email_address,id,status,last_changed,unsubscribe_reason,merge_fields";

/// The fields `list_members_changed` asks for: what the pull needs, to keep pages small.
const CHANGED_MEMBER_FIELDS: &str = "members.email_address,members.id,members.status,\
members.last_changed,members.unsubscribe_reason,members.merge_fields,total_items";

/// A Mailchimp Marketing API client. Cheap to clone; clones share the connection pool, the
/// in-flight limit, the call counters and the retry budget.
#[derive(Clone)]
pub struct MailchimpClient {
    http: reqwest::Client,
    base: Url,
    /// The base URL as errors show it (no user info).
    shown_base: String,
    api_key: SecretString,
    limiter: Arc<Semaphore>,
    max_in_flight: u32,
    calls: Arc<Counters>,
    retry: RetryPolicy,
    batch_polling: BatchPolling,
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    write: AtomicU64,
}

impl fmt::Debug for MailchimpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailchimpClient")
            .field("base_url", &self.shown_base)
            .field("api_key", &"[redacted]")
            .field("max_in_flight", &self.max_in_flight)
            .field("calls", &self.calls())
            .field("retry", &self.retry)
            .finish()
    }
}

/// One request, ready to be sent as many times as the policy allows.
struct Call<'a> {
    operation: &'static str,
    list_id: Option<&'a str>,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    /// Whether sending it twice is harmless (see [`crate::providers::retry::classify`]).
    idempotent: bool,
}

impl MailchimpClient {
    /// Builds the client from config: base URL, API key, timeout and in-flight limit (clamped to
    /// 1..=10). Uses [`RetryPolicy::default`]; see [`MailchimpClient::with_retry_policy`].
    pub fn new(config: &MailchimpConfig) -> Result<MailchimpClient, MailchimpError> {
        let setup =
            |detail: String| MailchimpError::new("setup", None, ErrorKind::Setup { detail });
        let base = Url::parse(&config.base_url)
            .map_err(|e| setup(format!("base URL `{}` is not a URL: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(setup(format!(
                "base URL `{}` must be an http(s) URL",
                config.base_url
            )));
        }
        let mut shown = base.clone();
        // Cannot fail for http(s) URLs; a failure would only leave user info in messages.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let shown_base = shown.as_str().trim_end_matches('/').to_owned();

        let max_in_flight = config.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        let http = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(max_in_flight as usize)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .user_agent(concat!("mailbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(MailchimpClient {
            http,
            base,
            shown_base,
            api_key: config.api_key.clone(),
            limiter: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            calls: Arc::new(Counters::default()),
            retry: RetryPolicy::default(),
            batch_polling: BatchPolling::default(),
        })
    }

    /// Replaces the retry policy (its budget is then shared with whoever else holds it).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> MailchimpClient {
        self.retry = policy;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Calls that reached the wire so far (every attempt counts).
    pub fn calls(&self) -> ApiCalls {
        ApiCalls {
            read: self.calls.read.load(Ordering::Relaxed),
            write: self.calls.write.load(Ordering::Relaxed),
        }
    }

    /// `GET /ping`: a cheap authenticated health check. Returns Mailchimp's `health_status`.
    #[tracing::instrument(skip_all)]
    pub async fn ping(&self) -> Result<String, MailchimpError> {
        let call = self.call("ping", None, Method::GET, &["ping"], None, true);
        let out: wire::PingResponse = self.execute(&call, decode_json).await?;
        Ok(out.health_status)
    }

    /// Every merge field of the audience (`GET /lists/{list_id}/merge-fields`, pages of 1000).
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn list_merge_fields(
        &self,
        list_id: &str,
    ) -> Result<Vec<RemoteMergeField>, MailchimpError> {
        let mut out = Vec::new();
        loop {
            let mut call = self.call(
                "list_merge_fields",
                Some(list_id),
                Method::GET,
                &["lists", list_id, "merge-fields"],
                None,
                true,
            );
            call.url
                .query_pairs_mut()
                .append_pair("count", &MAX_PAGE_SIZE.to_string())
                .append_pair("offset", &out.len().to_string());
            let page: wire::GetMergeFieldsResponse = self.execute(&call, decode_json).await?;
            let got = page.merge_fields.len();
            out.extend(page.merge_fields.into_iter().map(|f| RemoteMergeField {
                merge_id: f.merge_id,
                tag: f.tag,
                name: f.name,
                kind: f.kind,
            }));
            if got == 0 || out.len() as u64 >= page.total_items {
                return Ok(out);
            }
        }
    }

    /// Creates a merge field (`POST /lists/{list_id}/merge-fields`). Not idempotent (a second
    /// create of the same tag is refused), so a timeout is reported, not retried: list the fields
    /// again to see whether it landed.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, tag = %tag))]
    pub async fn create_merge_field(
        &self,
        list_id: &str,
        tag: &str,
        name: &str,
        kind: FieldType,
    ) -> Result<RemoteMergeField, MailchimpError> {
        let call = self.call_json(
            "create_merge_field",
            Some(list_id),
            Method::POST,
            &["lists", list_id, "merge-fields"],
            &wire::PostMergeFieldRequest {
                tag,
                name,
                kind: kind.as_str(),
            },
            false,
        )?;
        let f: wire::MergeField = self.execute(&call, decode_json).await?;
        Ok(RemoteMergeField {
            merge_id: f.merge_id,
            tag: f.tag,
            name: f.name,
            kind: f.kind,
        })
    }

    /// Batch subscribe (`POST /lists/{list_id}`): up to 500 members created or updated in one call.
    /// More than 500 is refused before sending; an empty slice sends nothing. Per-member errors are
    /// in the result, not an `Err`. Retried like any idempotent write: a repeat upserts the same
    /// members (without `update_existing`, members created by a lost attempt then come back as
    /// `ERROR_CONTACT_EXISTS`).
    #[tracing::instrument(skip_all, fields(list_id = %list_id, members = members.len()))]
    pub async fn batch_subscribe(
        &self,
        list_id: &str,
        members: &[BatchMember],
        update_existing: bool,
        sync_tags: bool,
    ) -> Result<BatchResult, MailchimpError> {
        const OP: &str = "batch_subscribe";
        if members.len() > MAX_BATCH_MEMBERS {
            return Err(MailchimpError::new(
                OP,
                Some(list_id),
                ErrorKind::TooManyMembers {
                    count: members.len(),
                },
            ));
        }
        if members.is_empty() {
            return Ok(BatchResult::default());
        }
        let request = wire::BatchSubscribeRequest {
            members: members
                .iter()
                .map(|m| wire::BatchSubscribeMember {
                    email_address: m.email.original(),
                    status: m.status.as_str(),
                    merge_fields: (!m.merge_fields.is_empty())
                        .then(|| merge_fields_json(&m.merge_fields)),
                    tags: (sync_tags || !m.tags.is_empty())
                        .then(|| m.tags.iter().map(String::as_str).collect()),
                })
                .collect(),
            update_existing,
            sync_tags,
        };
        let call = self.call_json(
            OP,
            Some(list_id),
            Method::POST,
            &["lists", list_id],
            &request,
            true,
        )?;
        self.execute(&call, |bytes| {
            let r: wire::BatchSubscribeResponse = decode_json(bytes)?;
            let outcome = |m: wire::Member| -> Result<BatchMemberOutcome, String> {
                Ok(BatchMemberOutcome {
                    id: parse_hash(&m.id)?,
                    status: parse_status(&m.status)?,
                    email_address: m.email_address,
                })
            };
            Ok(BatchResult {
                created: r
                    .new_members
                    .into_iter()
                    .map(outcome)
                    .collect::<Result<_, _>>()?,
                updated: r
                    .updated_members
                    .into_iter()
                    .map(outcome)
                    .collect::<Result<_, _>>()?,
                errors: r
                    .errors
                    .into_iter()
                    .map(|e| BatchMemberError {
                        email_address: e.email_address,
                        error: e.error,
                        error_code: e.error_code,
                        field: e.field,
                        field_message: e.field_message,
                    })
                    .collect(),
                total_created: r.total_created,
                total_updated: r.total_updated,
                error_count: r.error_count,
            })
        })
        .await
    }

    /// Add or update one member (`PUT /lists/{list_id}/members/{hash}`). `status_if_new` applies
    /// only when the member is created; `status` overwrites and is for real preference changes.
    /// To change an address, pass the OLD address's hash and the new `email`.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, hash = %hash))]
    pub async fn upsert_member(
        &self,
        list_id: &str,
        hash: &SubscriberHash,
        email: &Email,
        status_if_new: WriteStatus,
        status: Option<WriteStatus>,
        merge_fields: &BTreeMap<String, FieldValue>,
    ) -> Result<RemoteMember, MailchimpError> {
        const OP: &str = "upsert_member";
        let call = self.call_json(
            OP,
            Some(list_id),
            Method::PUT,
            &["lists", list_id, "members", hash.as_str()],
            &wire::PutMemberRequest {
                email_address: email.original(),
                status_if_new: status_if_new.as_str(),
                status: status.map(WriteStatus::as_str),
                merge_fields: merge_fields_json(merge_fields),
            },
            true,
        )?;
        self.execute(&call, |bytes| remote_member(decode_json(bytes)?))
            .await
    }

    /// Archive a member (`DELETE /lists/{list_id}/members/{hash}`, 204). 404 means already gone;
    /// 405 (bounced, pending or already archived) is [`ErrorKind::CannotArchive`].
    #[tracing::instrument(skip_all, fields(list_id = %list_id, hash = %hash))]
    pub async fn archive_member(
        &self,
        list_id: &str,
        hash: &SubscriberHash,
    ) -> Result<Archive, MailchimpError> {
        let call = self.call(
            "archive_member",
            Some(list_id),
            Method::DELETE,
            &["lists", list_id, "members", hash.as_str()],
            None,
            true,
        );
        match self.execute(&call, |_| Ok(())).await {
            Ok(()) => Ok(Archive::Archived),
            Err(e) => match e.kind {
                ErrorKind::NotFound { .. } => Ok(Archive::AlreadyGone),
                ErrorKind::Rejected {
                    status: 405,
                    detail,
                    ..
                } => Err(MailchimpError {
                    kind: ErrorKind::CannotArchive { detail },
                    ..e
                }),
                _ => Err(e),
            },
        }
    }

    /// Set tags active or inactive on one member (`POST …/members/{hash}/tags`, 204), with
    /// `is_syncing: true` so tag-triggered automations do not fire. Tags not named are untouched.
    /// An empty list sends nothing.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, hash = %hash))]
    pub async fn update_member_tags<S: AsRef<str>>(
        &self,
        list_id: &str,
        hash: &SubscriberHash,
        tags: &[(S, bool)],
    ) -> Result<(), MailchimpError> {
        const OP: &str = "update_member_tags";
        if tags.is_empty() {
            return Ok(());
        }
        let call = self.call_json(
            OP,
            Some(list_id),
            Method::POST,
            &["lists", list_id, "members", hash.as_str(), "tags"],
            &wire::PostMemberTagsRequest {
                tags: tags
                    .iter()
                    .map(|(name, active)| wire::MemberTag {
                        name: name.as_ref(),
                        status: if *active { "active" } else { "inactive" },
                    })
                    .collect(),
                is_syncing: true,
            },
            true,
        )?;
        self.execute(&call, |_| Ok(())).await
    }

    /// One member as Mailchimp has it now (`GET /lists/{list_id}/members/{hash}`); `None` when
    /// the list has no such member (404). How an unsigned webhook is confirmed.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, hash = %hash))]
    pub async fn get_member(
        &self,
        list_id: &str,
        hash: &SubscriberHash,
    ) -> Result<Option<RemoteMember>, MailchimpError> {
        let mut call = self.call(
            "get_member",
            Some(list_id),
            Method::GET,
            &["lists", list_id, "members", hash.as_str()],
            None,
            true,
        );
        call.url
            .query_pairs_mut()
            .append_pair("fields", MEMBER_FIELDS);
        match self
            .execute(&call, |bytes| remote_member(decode_json(bytes)?))
            .await
        {
            Ok(member) => Ok(Some(member)),
            Err(e) if matches!(e.kind, ErrorKind::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of members with `status` whose status or data changed since `since` (all of them
    /// when `None`), oldest change first: `GET /lists/{list_id}/members` with `count` ≤ 1000.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, status = %status, offset))]
    pub async fn list_members_changed(
        &self,
        list_id: &str,
        status: SubscriptionStatus,
        since: Option<DateTime<Utc>>,
        offset: u64,
        count: u32,
    ) -> Result<MembersPage, MailchimpError> {
        const OP: &str = "list_members_changed";
        if count == 0 || count > MAX_PAGE_SIZE {
            return Err(MailchimpError::new(
                OP,
                Some(list_id),
                ErrorKind::InvalidArgument {
                    detail: format!("count must be 1 to {MAX_PAGE_SIZE}, not {count}"),
                },
            ));
        }
        let mut call = self.call(
            OP,
            Some(list_id),
            Method::GET,
            &["lists", list_id, "members"],
            None,
            true,
        );
        {
            let mut q = call.url.query_pairs_mut();
            q.append_pair("status", status.as_str());
            if let Some(since) = since {
                q.append_pair("since_last_changed", &format_since(since));
            }
            q.append_pair("sort_field", "last_changed")
                .append_pair("sort_dir", "ASC")
                .append_pair("fields", CHANGED_MEMBER_FIELDS)
                .append_pair("offset", &offset.to_string())
                .append_pair("count", &count.to_string());
        }
        self.execute(&call, |bytes| {
            let page: wire::GetMembersResponse = decode_json(bytes)?;
            Ok(MembersPage {
                members: page
                    .members
                    .into_iter()
                    .map(remote_member)
                    .collect::<Result<_, _>>()?,
                total_items: page.total_items,
            })
        })
        .await
    }

    /// Creates a `regular` campaign (`POST /campaigns`). Not idempotent: a timeout or 5xx is
    /// reported, not retried (the campaign may exist; find it by its title with
    /// [`MailchimpClient::find_campaigns_by_title`]).
    #[tracing::instrument(skip_all, fields(list_id = %campaign.list_id))]
    pub async fn create_campaign(
        &self,
        campaign: &NewCampaign<'_>,
    ) -> Result<RemoteCampaign, MailchimpError> {
        const OP: &str = "create_campaign";
        let list_id = campaign.list_id;
        // A segment is a tag, by its numeric id.
        let tag_id = campaign
            .segment_id
            .map(|id| {
                id.parse::<u64>().map_err(|_| {
                    MailchimpError::new(
                        OP,
                        Some(list_id),
                        ErrorKind::InvalidArgument {
                            detail: format!("segment `{id}` is not a tag id"),
                        },
                    )
                })
            })
            .transpose()?;
        let call = self.call_json(
            OP,
            Some(list_id),
            Method::POST,
            &["campaigns"],
            &wire::PostCampaignRequest {
                kind: "regular",
                recipients: wire::CampaignRecipients {
                    list_id,
                    segment_opts: tag_id.map(|id| wire::SegmentOptions {
                        match_: "all",
                        conditions: vec![wire::StaticSegmentCondition {
                            condition_type: "StaticSegment",
                            field: "static_segment",
                            op: "static_is",
                            value: id,
                        }],
                    }),
                },
                settings: wire::CampaignSettings {
                    subject_line: campaign.subject,
                    title: campaign.title,
                    from_name: campaign.from_name,
                    reply_to: campaign.reply_to,
                },
            },
            false,
        )?;
        self.execute(&call, |bytes| Ok(remote_campaign(decode_json(bytes)?)))
            .await
    }

    /// Reads a campaign (`GET /campaigns/{id}`): its status decides whether a send may go out.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn get_campaign(&self, campaign_id: &str) -> Result<RemoteCampaign, MailchimpError> {
        let mut call = self.call(
            "get_campaign",
            None,
            Method::GET,
            &["campaigns", campaign_id],
            None,
            true,
        );
        call.url.query_pairs_mut().append_pair(
            "fields",
            "id,status,emails_sent,recipients.recipient_count,settings.title",
        );
        self.execute(&call, |bytes| Ok(remote_campaign(decode_json(bytes)?)))
            .await
    }

    /// The campaigns of a list whose `settings.title` is exactly `title` (`GET /campaigns`,
    /// newest first, pages of 1000). How a push that crashed between create and recording the id
    /// finds the campaign it made.
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn find_campaigns_by_title(
        &self,
        list_id: &str,
        title: &str,
    ) -> Result<Vec<RemoteCampaign>, MailchimpError> {
        let mut found = Vec::new();
        let mut offset = 0u64;
        loop {
            let mut call = self.call(
                "find_campaigns",
                Some(list_id),
                Method::GET,
                &["campaigns"],
                None,
                true,
            );
            call.url
                .query_pairs_mut()
                .append_pair("list_id", list_id)
                .append_pair(
                    "fields",
                    "campaigns.id,campaigns.status,campaigns.emails_sent,campaigns.recipients.recipient_count,campaigns.settings.title,total_items",
                )
                .append_pair("sort_field", "create_time")
                .append_pair("sort_dir", "DESC")
                .append_pair("offset", &offset.to_string())
                .append_pair("count", &MAX_PAGE_SIZE.to_string());
            let page: wire::GetCampaignsResponse = self.execute(&call, decode_json).await?;
            let got = page.campaigns.len() as u64;
            found.extend(
                page.campaigns
                    .into_iter()
                    .map(remote_campaign)
                    .filter(|c| c.title == title),
            );
            offset += got;
            if got == 0 || offset >= page.total_items {
                return Ok(found);
            }
        }
    }

    /// Sets the HTML and plain-text content (`PUT /campaigns/{id}/content`; idempotent).
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn set_campaign_content(
        &self,
        campaign_id: &str,
        html: &str,
        plain_text: &str,
    ) -> Result<(), MailchimpError> {
        const OP: &str = "set_campaign_content";
        let call = self.call_json(
            OP,
            None,
            Method::PUT,
            &["campaigns", campaign_id, "content"],
            &wire::PutCampaignContentRequest { html, plain_text },
            true,
        )?;
        self.execute(&call, |_| Ok(())).await
    }

    /// The send checklist (`GET /campaigns/{id}/send-checklist`).
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn send_checklist(&self, campaign_id: &str) -> Result<SendChecklist, MailchimpError> {
        let call = self.call(
            "send_checklist",
            None,
            Method::GET,
            &["campaigns", campaign_id, "send-checklist"],
            None,
            true,
        );
        self.execute(&call, |bytes| {
            let c: wire::SendChecklist = decode_json(bytes)?;
            Ok(SendChecklist {
                is_ready: c.is_ready,
                items: c
                    .items
                    .into_iter()
                    .map(|i| ChecklistItem {
                        kind: i.kind,
                        heading: i.heading,
                        details: i.details,
                    })
                    .collect(),
            })
        })
        .await
    }

    /// Sends the HTML test email to up to a few addresses (`POST /campaigns/{id}/actions/test`).
    /// Not retried after a timeout: a repeated test mail is harmless but noisy.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn test_campaign(
        &self,
        campaign_id: &str,
        emails: &[Email],
    ) -> Result<(), MailchimpError> {
        let body = wire::ActionsTestBody {
            test_emails: emails.iter().map(Email::original).collect(),
            send_type: "html",
        };
        self.campaign_action("test_campaign", campaign_id, "test", Some(&body))
            .await
    }

    /// Sends the campaign now (`POST /campaigns/{id}/actions/send`, 204). Irreversible and not
    /// idempotent: never retried once it may have reached Mailchimp; after a timeout, read the
    /// status with [`MailchimpClient::get_campaign`] instead.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn send_campaign(&self, campaign_id: &str) -> Result<(), MailchimpError> {
        self.campaign_action::<()>("send_campaign", campaign_id, "send", None)
            .await
    }

    /// Schedules the campaign (`POST /campaigns/{id}/actions/schedule`, 204). `at` must be a
    /// quarter hour; not retried after a timeout (read the status instead).
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn schedule_campaign(
        &self,
        campaign_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), MailchimpError> {
        let body = wire::ActionsScheduleBody {
            schedule_time: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        self.campaign_action("schedule_campaign", campaign_id, "schedule", Some(&body))
            .await
    }

    /// `POST /campaigns/{id}/actions/{action}` with an optional JSON body, answered 204. Not
    /// idempotent: never retried once it may have reached Mailchimp.
    async fn campaign_action<T: Serialize>(
        &self,
        operation: &'static str,
        campaign_id: &str,
        action: &str,
        body: Option<&T>,
    ) -> Result<(), MailchimpError> {
        let body = body.map(|b| self.encode(operation, None, b)).transpose()?;
        let call = self.call(
            operation,
            None,
            Method::POST,
            &["campaigns", campaign_id, "actions", action],
            body,
            false,
        );
        self.execute(&call, |_| Ok(())).await
    }

    /// The id of the tag named `name` (case-insensitive exact match) on the list
    /// (`GET /lists/{list_id}/tag-search`), for a tag segment.
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn find_tag_id(
        &self,
        list_id: &str,
        name: &str,
    ) -> Result<Option<u64>, MailchimpError> {
        let mut call = self.call(
            "find_tag",
            Some(list_id),
            Method::GET,
            &["lists", list_id, "tag-search"],
            None,
            true,
        );
        call.url.query_pairs_mut().append_pair("name", name);
        let found: wire::TagSearchResponse = self.execute(&call, decode_json).await?;
        Ok(found
            .tags
            .into_iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .map(|t| t.id))
    }

    fn call<'a>(
        &self,
        operation: &'static str,
        list_id: Option<&'a str>,
        method: Method,
        segments: &[&str],
        body: Option<Vec<u8>>,
        idempotent: bool,
    ) -> Call<'a> {
        let mut url = self.base.clone();
        // `new` checked the base URL can have path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Call {
            operation,
            list_id,
            method,
            url,
            body,
            idempotent,
        }
    }

    /// A call that sends `body` as JSON; a body that cannot be encoded is a setup error.
    fn call_json<'a, T: Serialize>(
        &self,
        operation: &'static str,
        list_id: Option<&'a str>,
        method: Method,
        segments: &[&str],
        body: &T,
        idempotent: bool,
    ) -> Result<Call<'a>, MailchimpError> {
        let body = self.encode(operation, list_id, body)?;
        Ok(self.call(operation, list_id, method, segments, Some(body), idempotent))
    }

    fn encode<T: Serialize>(
        &self,
        operation: &'static str,
        list_id: Option<&str>,
        body: &T,
    ) -> Result<Vec<u8>, MailchimpError> {
        serde_json::to_vec(body).map_err(|e| {
            MailchimpError::new(
                operation,
                list_id,
                ErrorKind::Setup {
                    detail: format!("cannot encode the request body: {e}"),
                },
            )
        })
    }

    /// Sends `call` under the retry policy; `decode` reads a 2xx body (an `Err` from it is a
    /// malformed response).
    async fn execute<T>(
        &self,
        call: &Call<'_>,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, MailchimpError> {
        let decode = &decode;
        self.retry
            .run(call.operation, call.idempotent, |_| {
                self.attempt(call, decode)
            })
            .await
            .map(|done| done.value)
            .map_err(|gave_up| MailchimpError {
                operation: call.operation,
                list_id: call.list_id.map(str::to_owned),
                attempts: gave_up.attempts,
                stop: (gave_up.stop != Stop::Permanent).then_some(gave_up.stop),
                kind: gave_up.error,
            })
    }

    async fn attempt<T>(
        &self,
        call: &Call<'_>,
        decode: &impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, ErrorKind> {
        let permit = self.limiter.acquire().await.map_err(|_| ErrorKind::Setup {
            detail: "the in-flight limiter was closed".to_owned(),
        })?;
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .basic_auth("anystring", Some(self.api_key.expose_secret()));
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = match request.send().await {
            Ok(response) => {
                self.count(&call.method);
                response
            }
            Err(e) => {
                if !e.is_connect() {
                    self.count(&call.method);
                }
                return Err(transport_error(&e));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        drop(permit);
        if status.is_success() {
            decode(&body).map_err(|detail| ErrorKind::MalformedResponse { detail })
        } else {
            Err(error_from_response(
                status,
                &headers,
                &body,
                &self.shown_base,
                Utc::now(),
            ))
        }
    }

    fn count(&self, method: &Method) {
        let counter = if *method == Method::GET {
            &self.calls.read
        } else {
            &self.calls.write
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn parse_hash(id: &str) -> Result<SubscriberHash, String> {
    SubscriberHash::parse(id).ok_or_else(|| format!("member id `{id}` is not a subscriber hash"))
}

pub(super) fn parse_status(s: &str) -> Result<SubscriptionStatus, String> {
    s.parse::<SubscriptionStatus>()
}

fn remote_member(m: wire::Member) -> Result<RemoteMember, String> {
    let last_changed = match m.last_changed.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("last_changed `{s}`: {e}"))?
                .with_timezone(&Utc),
        ),
    };
    Ok(RemoteMember {
        id: parse_hash(&m.id)?.to_string(),
        status: parse_status(&m.status)?,
        email_address: m.email_address,
        last_changed,
        unsubscribe_reason: m.unsubscribe_reason.filter(|r| !r.is_empty()),
        merge_fields: m.merge_fields,
    })
}

/// Mailchimp's campaign status (`save` is a draft, `schedule` scheduled) in the engine's terms.
fn campaign_status(status: &str) -> CampaignStatus {
    match status {
        "save" => CampaignStatus::Draft,
        "schedule" => CampaignStatus::Scheduled,
        "sending" => CampaignStatus::Sending,
        "sent" => CampaignStatus::Sent,
        other => CampaignStatus::Other(other.to_owned()),
    }
}

fn remote_campaign(c: wire::Campaign) -> RemoteCampaign {
    RemoteCampaign {
        id: c.id,
        status: campaign_status(&c.status),
        title: c.settings.map(|s| s.title).unwrap_or_default(),
        recipient_count: c.recipients.and_then(|r| r.recipient_count),
        emails_sent: c.emails_sent,
    }
}

pub(super) fn merge_fields_json(
    fields: &BTreeMap<String, FieldValue>,
) -> BTreeMap<&str, serde_json::Value> {
    fields
        .iter()
        .map(|(tag, value)| (tag.as_str(), value.to_json()))
        .collect()
}

/// `since_last_changed` as the API documents it: `2015-10-21T15:41:36+00:00`.
pub(super) fn format_since(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// Classifies a transport failure. The message is built from the cause chain, which names the
/// URL (never the key: it travels in a header).
pub(super) fn transport_error(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Timeout;
    }
    let detail = crate::error_chain(e);
    if e.is_connect() {
        ErrorKind::Connect { detail }
    } else if e.is_builder() {
        ErrorKind::Setup { detail }
    } else {
        ErrorKind::ConnectionClosed { detail }
    }
}

/// Decides the error kind from the status code first; the problem document (when the body is
/// one) refines 400s and supplies the detail.
pub(super) fn error_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    shown_base: &str,
    now: DateTime<Utc>,
) -> ErrorKind {
    let problem: wire::ProblemDetail = serde_json::from_slice(body).unwrap_or_default();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let detail = match (problem.detail.is_empty(), problem.instance.is_empty()) {
        (false, false) => format!("{} [request {}]", problem.detail, problem.instance),
        (false, true) => problem.detail.clone(),
        (true, _) => String::new(),
    };
    let code = status.as_u16();
    let title = if problem.title.trim().is_empty() {
        status.canonical_reason().unwrap_or("").to_owned()
    } else {
        problem.title.trim().to_owned()
    };
    match code {
        401 => ErrorKind::Unauthorized {
            base_url: shown_base.to_owned(),
        },
        403 => ErrorKind::Forbidden { detail },
        404 => ErrorKind::NotFound { detail },
        429 => ErrorKind::RateLimited { retry_after },
        500..=599 => ErrorKind::Server {
            status: code,
            detail,
            retry_after,
        },
        400 => match title.to_ascii_lowercase().as_str() {
            "member in compliance state" => ErrorKind::Compliance { detail },
            "forgotten email not subscribed" => ErrorKind::Forgotten { detail },
            "member exists" => ErrorKind::MemberExists { detail },
            "invalid resource" => ErrorKind::InvalidResource {
                detail,
                errors: problem
                    .errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field,
                        message: e.message,
                    })
                    .collect(),
            },
            _ => ErrorKind::Rejected {
                status: code,
                title,
                detail,
            },
        },
        _ => ErrorKind::Rejected {
            status: code,
            title,
            detail,
        },
    }
}
