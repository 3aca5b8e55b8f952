//! [`ConstantContactClient`]: Bearer tokens from [`super::auth`], every request paced and counted
//! by [`super::limits`] and sent through [`RetryPolicy::run`], a 401 answered by one refresh and
//! one more try, and counters of the calls that reached the wire. The single calls live here;
//! the engine's multi-call operations (import, list removal) are in `engine.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::{AuthConfig, Tokens};
use super::error::{ApiProblem, ConstantContactError, ErrorKind};
use super::limits::{DailyBudget, Pacer, api_pacer, next_midnight};
use super::types::{Bounce, OptOut, OptOutSource, RemoteCustomField, field_type};
use super::wire;
use crate::config::ConstantContactConfig;
use crate::domain::{Email, SubscriptionStatus};
use crate::mapping::{FieldType, FieldValue};
use crate::providers::ApiCalls;
use crate::providers::RemoteMember;
use crate::providers::retry::{RetryPolicy, Stop, parse_retry_after};
use crate::store::Store;

/// Largest `limit` of `GET /contacts` and the tracking reports.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Largest `limit` of `GET /contact_custom_fields`.
const MAX_FIELDS_PAGE: u32 = 100;
/// Custom fields an account may have.
pub const MAX_CUSTOM_FIELDS: usize = 100;
/// A custom field value's longest text.
pub const MAX_FIELD_VALUE: usize = 255;

/// How a bulk activity is polled until it ends.
#[derive(Clone, Copy, Debug)]
pub struct ActivityPolling {
    /// The first wait; each next one doubles, up to `cap`.
    pub first: Duration,
    pub cap: Duration,
    /// An activity still running after this much waiting is reported as failed.
    pub give_up_after: Duration,
}

impl Default for ActivityPolling {
    fn default() -> Self {
        ActivityPolling {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60 * 60),
        }
    }
}

/// A Constant Contact V3 API client. Cheap to clone; clones share the connection pool, the
/// token, the call counters, the retry budget and the custom-field names.
#[derive(Clone)]
pub struct ConstantContactClient {
    http: reqwest::Client,
    base: Url,
    shown_base: String,
    pub(super) store: Store,
    tokens: Arc<Tokens>,
    pacer: Arc<Pacer>,
    budget: DailyBudget,
    calls: Arc<Counters>,
    retry: RetryPolicy,
    pub(super) polling: ActivityPolling,
    /// The account's custom fields, read once and again when a contact names one not in it.
    fields: Arc<tokio::sync::Mutex<Option<Vec<RemoteCustomField>>>>,
    /// `[providers.constant_contact] poll_every`.
    poll_every: Duration,
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    write: AtomicU64,
}

impl fmt::Debug for ConstantContactClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConstantContactClient")
            .field("base_url", &self.shown_base)
            .field("tokens", &self.tokens)
            .field("calls", &self.calls())
            .field("retry", &self.retry)
            .finish()
    }
}

/// One request, ready to be sent as many times as the policy allows.
pub(super) struct Call<'a> {
    pub operation: &'static str,
    pub list_id: Option<&'a str>,
    pub member: Option<&'a str>,
    pub method: Method,
    pub url: Url,
    pub body: Option<Vec<u8>>,
    /// Whether sending it twice is harmless (see [`crate::providers::retry::classify`]).
    pub idempotent: bool,
}

impl<'a> Call<'a> {
    pub(super) fn on_list(mut self, list_id: &'a str) -> Call<'a> {
        self.list_id = Some(list_id);
        self
    }

    pub(super) fn for_member(mut self, address: &'a str) -> Call<'a> {
        self.member = Some(address);
        self
    }

    fn error(&self, kind: ErrorKind) -> ConstantContactError {
        let mut e = ConstantContactError::new(self.operation, kind);
        e.list_id = self.list_id.map(str::to_owned);
        e.member = self.member.map(str::to_owned);
        e
    }
}

impl ConstantContactClient {
    /// Builds the client from config (base URL, app, budget, timeout); tokens come from `store`
    /// on first use. Uses [`RetryPolicy::default`].
    pub fn new(
        config: &ConstantContactConfig,
        store: Store,
    ) -> Result<ConstantContactClient, ConstantContactError> {
        let setup =
            |detail: String| ConstantContactError::new("setup", ErrorKind::Setup { detail });
        let base = Url::parse(&config.base_url)
            .map_err(|e| setup(format!("base URL `{}` is not a URL: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(setup(format!(
                "base URL `{}` must be an http(s) URL",
                config.base_url
            )));
        }
        let mut shown = base.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let shown_base = shown.as_str().trim_end_matches('/').to_owned();
        let auth = AuthConfig::new(config).map_err(|k| ConstantContactError::new("setup", k))?;
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .user_agent(concat!("mailbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(ConstantContactClient {
            tokens: Arc::new(Tokens::new(http.clone(), auth, store.clone())),
            pacer: api_pacer(&config.client_id, config.requests_per_second),
            budget: DailyBudget::new(store.clone(), config.daily_budget),
            http,
            base,
            shown_base,
            store,
            calls: Arc::new(Counters::default()),
            retry: RetryPolicy::default(),
            polling: ActivityPolling::default(),
            fields: Arc::new(tokio::sync::Mutex::new(None)),
            poll_every: config.poll_every,
        })
    }

    /// How often `serve` polls this account for opt-outs and bounces.
    pub fn poll_every(&self) -> Duration {
        self.poll_every
    }

    /// Replaces the retry policy (its budget is then shared with whoever else holds it).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> ConstantContactClient {
        self.retry = policy;
        self
    }

    /// Raises the daily budget's quota alerts with `alerts` (mailed as its `[alerts]` says);
    /// without it they are logged and counted only.
    pub fn with_alerts(mut self, alerts: crate::relay::alerts::Alerter) -> ConstantContactClient {
        self.budget.set_alerts(alerts);
        self
    }

    /// Replaces how bulk activities are polled.
    pub fn with_activity_polling(mut self, polling: ActivityPolling) -> ConstantContactClient {
        self.polling = polling;
        self
    }

    /// API calls that reached the wire so far (every attempt counts; token calls do not).
    pub fn calls(&self) -> ApiCalls {
        ApiCalls {
            read: self.calls.read.load(Ordering::Relaxed),
            write: self.calls.write.load(Ordering::Relaxed),
        }
    }

    /// `GET /account/summary`: a cheap authenticated check that the stored tokens work.
    #[tracing::instrument(skip_all)]
    pub async fn account_summary(&self) -> Result<(), ConstantContactError> {
        let call = self.get("getAccountDetails", &["account", "summary"], &[]);
        self.execute(&call, |b| {
            decode_json::<serde::de::IgnoredAny>(b).map(|_| ())
        })
        .await
    }

    /// Every custom field of the account (`GET /contact_custom_fields`, pages of 100).
    #[tracing::instrument(skip_all)]
    pub async fn custom_fields(&self) -> Result<Vec<RemoteCustomField>, ConstantContactError> {
        const OP: &str = "getAllCustomFields";
        let mut out = Vec::new();
        let mut call = self.get(
            OP,
            &["contact_custom_fields"],
            &[("limit", &MAX_FIELDS_PAGE.to_string())],
        );
        loop {
            let page: wire::CustomFieldsPage = self.execute(&call, decode_json).await?;
            out.extend(page.custom_fields.into_iter().map(|f| RemoteCustomField {
                name: f.name.unwrap_or_else(|| f.label.replace(' ', "_")),
                id: f.custom_field_id,
                label: f.label,
                kind: f.kind,
            }));
            match next_href(page.links) {
                Some(href) => call.url = self.next_url(&href).map_err(|k| call.error(k))?,
                None => break,
            }
        }
        *self.fields.lock().await = Some(out.clone());
        Ok(out)
    }

    /// Creates the custom field `label` of `kind` (`POST /contact_custom_fields`), or returns
    /// the one that exists with that label and type. A label that exists with another type, or an
    /// account at its 100 fields, is an error naming the label; nothing is sent then.
    #[tracing::instrument(skip_all, fields(label = %label))]
    pub async fn create_custom_field(
        &self,
        label: &str,
        kind: FieldType,
    ) -> Result<RemoteCustomField, ConstantContactError> {
        const OP: &str = "createCustomFields";
        let cc_type = field_type(kind);
        let refuse = |detail: String| {
            ConstantContactError::new(
                OP,
                ErrorKind::CustomField {
                    label: label.to_owned(),
                    detail,
                },
            )
        };
        // The fields read at the start of the run (one read for every field provisioned); a
        // field created since by someone else answers 409, and is looked up again then.
        let existing = self.known_fields(false).await?;
        if let Some(f) = existing.iter().find(|f| f.label == label) {
            return if f.kind == cc_type {
                Ok(f.clone())
            } else {
                Err(refuse(format!(
                    "exists with type `{}`; the mapping needs `{cc_type}`",
                    f.kind
                )))
            };
        }
        if existing.len() >= MAX_CUSTOM_FIELDS {
            return Err(refuse(format!(
                "the account has {} custom fields, Constant Contact's limit (nothing sent)",
                existing.len()
            )));
        }
        let call = self.json(
            OP,
            Method::POST,
            &["contact_custom_fields"],
            &wire::CreateCustomField {
                label,
                kind: cc_type,
            },
            false,
        )?;
        let created: wire::CustomField = match self.execute(&call, decode_json).await {
            Ok(created) => created,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::Conflict { detail } => {
                        let again = self.known_fields(true).await?;
                        match again.iter().find(|f| f.label == label) {
                            Some(f) if f.kind == cc_type => return Ok(f.clone()),
                            Some(f) => refuse(format!(
                                "exists with type `{}`; the mapping needs `{cc_type}`",
                                f.kind
                            )),
                            None => refuse(detail.clone()),
                        }
                    }
                    ErrorKind::Rejected { detail, .. } => refuse(detail.clone()),
                    _ => e,
                });
            }
        };
        let field = RemoteCustomField {
            name: created
                .name
                .unwrap_or_else(|| created.label.replace(' ', "_")),
            id: created.custom_field_id,
            label: created.label,
            kind: created.kind,
        };
        if let Some(cached) = self.fields.lock().await.as_mut() {
            cached.push(field.clone());
        }
        Ok(field)
    }

    /// The member at `email` (`GET /contacts?email=`), if Constant Contact has one.
    #[tracing::instrument(skip_all)]
    pub async fn contact(&self, email: &str) -> Result<Option<RemoteMember>, ConstantContactError> {
        let Some(contact) = self
            .find_contact(email, "custom_fields,list_memberships")
            .await?
        else {
            return Ok(None);
        };
        let names = self.field_names(&[&contact]).await?;
        remote_member(contact, &names).map(Some).map_err(|detail| {
            ConstantContactError::new("getAllContacts", ErrorKind::MalformedResponse { detail })
                .for_member(email)
        })
    }

    /// The contact whose address is `email` (`GET /contacts?email=…&include=…`).
    pub(super) async fn find_contact(
        &self,
        email: &str,
        include: &str,
    ) -> Result<Option<wire::Contact>, ConstantContactError> {
        let call = self
            .get(
                "getAllContacts",
                &["contacts"],
                &[("email", email), ("include", include)],
            )
            .for_member(email);
        let page: wire::ContactsPage = self.execute(&call, decode_json).await?;
        let wanted = email.trim().to_lowercase();
        let mut contacts = page.contacts;
        let at = contacts.iter().position(|c| {
            c.email_address
                .as_ref()
                .is_some_and(|e| e.address.trim().to_lowercase() == wanted)
        });
        Ok(at.map(|i| contacts.swap_remove(i)))
    }

    /// Changes the address of the member at `old_email` to `new_email` on `list_id`: the contact
    /// is read with its lists and fields and written back whole (`PUT /contacts/{id}`, a full
    /// replacement) with the new address, `merge_fields` set, its permission, lists and names
    /// kept, and `update_source` Account. No such contact is [`ErrorKind::NotFound`].
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn change_address(
        &self,
        list_id: &str,
        old_email: &str,
        new_email: &Email,
        merge_fields: &BTreeMap<String, FieldValue>,
    ) -> Result<RemoteMember, ConstantContactError> {
        const OP: &str = "updateContact";
        let contact = self
            .find_contact(old_email, "list_memberships,custom_fields")
            .await?
            .ok_or_else(|| {
                ConstantContactError::new(
                    OP,
                    ErrorKind::NotFound {
                        detail: "no contact has this address".to_owned(),
                    },
                )
                .on_list(list_id)
                .for_member(old_email)
            })?;
        let fields = self.known_fields(false).await?;
        let mut custom_fields = contact.custom_fields.clone();
        for (tag, value) in merge_fields {
            let Some(field) = fields.iter().find(|f| f.name == *tag || f.label == *tag) else {
                return Err(ConstantContactError::new(
                    OP,
                    ErrorKind::InvalidArgument {
                        detail: format!("the account has no custom field `{tag}`"),
                    },
                )
                .on_list(list_id)
                .for_member(old_email));
            };
            let value = Some(field_text(value));
            match custom_fields
                .iter_mut()
                .find(|f| f.custom_field_id == field.id)
            {
                Some(existing) => existing.value = value,
                None => custom_fields.push(wire::ContactCustomField {
                    custom_field_id: field.id.clone(),
                    value,
                }),
            }
        }
        let mut lists: Vec<&str> = contact
            .list_memberships
            .iter()
            .map(String::as_str)
            .collect();
        if !lists.contains(&list_id) {
            lists.push(list_id);
        }
        let body = wire::UpdateContact {
            email_address: wire::UpdateEmailAddress {
                address: new_email.original(),
                permission_to_send: contact
                    .email_address
                    .as_ref()
                    .and_then(|e| e.permission_to_send.as_deref()),
            },
            first_name: contact.first_name.as_deref(),
            last_name: contact.last_name.as_deref(),
            job_title: contact.job_title.as_deref(),
            company_name: contact.company_name.as_deref(),
            birthday_month: contact.birthday_month,
            birthday_day: contact.birthday_day,
            anniversary: contact.anniversary.as_deref(),
            update_source: "Account",
            custom_fields,
            list_memberships: lists,
        };
        let call = self
            .json(
                OP,
                Method::PUT,
                &["contacts", &contact.contact_id],
                &body,
                true,
            )
            .map_err(|e| e.on_list(list_id).for_member(old_email))?
            .on_list(list_id)
            .for_member(old_email);
        let updated: wire::Contact = self.execute(&call, decode_json).await?;
        let names = self.field_names(&[&updated]).await?;
        remote_member(updated, &names)
            .map_err(|detail| call.error(ErrorKind::MalformedResponse { detail }))
    }

    /// One page of the list's unsubscribed members, opted out after `since` (all without it):
    /// `GET /contacts?status=unsubscribed&lists=…&optout_after=…` (not `updated_after`, which
    /// misses opt-outs). `next` is the link the previous page returned; the answer's second half
    /// is the next one, `None` on the last page.
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn opt_outs_page(
        &self,
        list_id: &str,
        since: Option<DateTime<Utc>>,
        next: Option<String>,
    ) -> Result<(Vec<OptOut>, Option<String>), ConstantContactError> {
        let since_text = since.map(api_time);
        let mut query = vec![
            ("status", "unsubscribed"),
            ("lists", list_id),
            ("include", "custom_fields"),
        ];
        if let Some(since) = &since_text {
            query.push(("optout_after", since));
        }
        let limit = MAX_PAGE_SIZE.to_string();
        query.push(("limit", &limit));
        let mut call = self
            .get("getAllContacts", &["contacts"], &query)
            .on_list(list_id);
        if let Some(href) = next {
            call.url = self.next_url(&href).map_err(|k| call.error(k))?;
        }
        let page: wire::ContactsPage = self.execute(&call, decode_json).await?;
        let names = self
            .field_names(&page.contacts.iter().collect::<Vec<_>>())
            .await?;
        let mut out = Vec::with_capacity(page.contacts.len());
        for contact in page.contacts {
            if contact.email_address.is_none() {
                continue;
            }
            let source = contact
                .email_address
                .as_ref()
                .and_then(|e| e.opt_out_source.as_deref())
                .and_then(|s| match s {
                    "Contact" => Some(OptOutSource::Contact),
                    "Account" => Some(OptOutSource::Account),
                    _ => None,
                });
            let opt_out_date = contact
                .email_address
                .as_ref()
                .and_then(|e| e.opt_out_date.clone());
            let mut member = remote_member(contact, &names)
                .map_err(|detail| call.error(ErrorKind::MalformedResponse { detail }))?;
            member.status = SubscriptionStatus::Unsubscribed;
            member.last_changed = parse_time_opt(opt_out_date.as_deref())
                .map_err(|detail| call.error(ErrorKind::MalformedResponse { detail }))?;
            out.push(OptOut { member, source });
        }
        Ok((out, next_href(page.links)))
    }

    /// One page of the list's contacts with `status` (Constant Contact's filter: `active`,
    /// `unsubscribed`, `pending_confirmation`, …), updated since `since` when given (`GET
    /// /contacts?lists=&status=&updated_after=&include=custom_fields`); `next` is the previous
    /// page's `_links.next.href`, and the second value the next one (`None` on the last page).
    #[tracing::instrument(skip_all, fields(list_id = %list_id, status))]
    pub async fn contacts_page(
        &self,
        list_id: &str,
        status: &str,
        since: Option<DateTime<Utc>>,
        next: Option<String>,
    ) -> Result<(Vec<RemoteMember>, Option<String>), ConstantContactError> {
        let since_text = since.map(api_time);
        let limit = MAX_PAGE_SIZE.to_string();
        let mut query = vec![
            ("status", status),
            ("lists", list_id),
            ("include", "custom_fields"),
            ("limit", limit.as_str()),
        ];
        if let Some(since) = &since_text {
            query.push(("updated_after", since));
        }
        let mut call = self
            .get("getAllContacts", &["contacts"], &query)
            .on_list(list_id);
        if let Some(href) = next {
            call.url = self.next_url(&href).map_err(|k| call.error(k))?;
        }
        let page: wire::ContactsPage = self.execute(&call, decode_json).await?;
        let names = self
            .field_names(&page.contacts.iter().collect::<Vec<_>>())
            .await?;
        let mut out = Vec::with_capacity(page.contacts.len());
        for contact in page.contacts {
            if contact.email_address.is_none() {
                continue;
            }
            out.push(
                remote_member(contact, &names)
                    .map_err(|detail| call.error(ErrorKind::MalformedResponse { detail }))?,
            );
        }
        Ok((out, next_href(page.links)))
    }

    /// Bounces since `since` of every campaign changed since then: `GET /emails?after_date=`,
    /// each campaign's primary email activity (`GET /emails/{id}`), and its bounce report
    /// (`GET /reports/email_reports/{activity}/tracking/bounces`, newest first, read until older
    /// than `since`).
    #[tracing::instrument(skip_all)]
    pub async fn bounces_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Bounce>, ConstantContactError> {
        let since_text = api_time(since);
        let limit = MAX_PAGE_SIZE.to_string();
        let mut campaigns = Vec::new();
        let mut call = self.get(
            "getAllEmailCampaigns",
            &["emails"],
            &[("after_date", &since_text), ("limit", &limit)],
        );
        loop {
            let page: wire::CampaignsPage = self.execute(&call, decode_json).await?;
            campaigns.extend(page.campaigns.into_iter().map(|c| c.campaign_id));
            match next_href(page.links) {
                Some(href) => call.url = self.next_url(&href).map_err(|k| call.error(k))?,
                None => break,
            }
        }
        let mut bounces = Vec::new();
        for campaign_id in campaigns {
            let call = self.get("getEmailCampaignById", &["emails", &campaign_id], &[]);
            let campaign: wire::Campaign = self.execute(&call, decode_json).await?;
            for activity in campaign
                .campaign_activities
                .into_iter()
                .filter(|a| a.role == "primary_email")
            {
                self.bounces_of(&activity.campaign_activity_id, since, &mut bounces)
                    .await?;
            }
        }
        Ok(bounces)
    }

    async fn bounces_of(
        &self,
        activity_id: &str,
        since: DateTime<Utc>,
        out: &mut Vec<Bounce>,
    ) -> Result<(), ConstantContactError> {
        let limit = MAX_PAGE_SIZE.to_string();
        let mut call = self.get(
            "getBouncesReport",
            &[
                "reports",
                "email_reports",
                activity_id,
                "tracking",
                "bounces",
            ],
            &[("limit", &limit)],
        );
        loop {
            let page: wire::BouncesPage = self.execute(&call, decode_json).await?;
            let mut older = false;
            for b in page.tracking_activities {
                let at = parse_time(&b.created_time)
                    .map_err(|detail| call.error(ErrorKind::MalformedResponse { detail }))?;
                if at < since {
                    older = true;
                    continue;
                }
                out.push(Bounce {
                    email: b.email_address,
                    code: b.bounce_code,
                    at,
                    activity_id: b.campaign_activity_id,
                });
            }
            match next_href(page.links) {
                Some(href) if !older => {
                    call.url = self.next_url(&href).map_err(|k| call.error(k))?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// The account's custom fields, read if not known yet (or again with `reload`).
    async fn known_fields(
        &self,
        reload: bool,
    ) -> Result<Vec<RemoteCustomField>, ConstantContactError> {
        if !reload && let Some(fields) = self.fields.lock().await.as_ref() {
            return Ok(fields.clone());
        }
        self.custom_fields().await
    }

    /// Custom field names by id for `contacts`: the known fields, read again once if one of the
    /// contacts names a field not among them.
    pub(super) async fn field_names(
        &self,
        contacts: &[&wire::Contact],
    ) -> Result<HashMap<String, String>, ConstantContactError> {
        let ids: Vec<&str> = contacts
            .iter()
            .flat_map(|c| c.custom_fields.iter().map(|f| f.custom_field_id.as_str()))
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut fields = self.known_fields(false).await?;
        if ids.iter().any(|id| !fields.iter().any(|f| f.id == *id)) {
            fields = self.known_fields(true).await?;
        }
        Ok(fields.into_iter().map(|f| (f.id, f.name)).collect())
    }

    // ---- requests ----

    /// A URL below the base URL.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` checked the base URL can have path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The URL of a `_links.next.href`: a path that already holds `/v3`, joined to the base URL's
    /// origin. Anything that would leave that origin (an absolute URL, `//host`) is refused: the
    /// request carries the access token.
    pub(super) fn next_url(&self, href: &str) -> Result<Url, ErrorKind> {
        let malformed = || ErrorKind::MalformedResponse {
            detail: format!(
                "the next-page link `{}` is not a path on {}",
                super::error::bounded(href),
                self.shown_base
            ),
        };
        if !href.starts_with('/') || href.starts_with("//") || href.contains('\\') {
            return Err(malformed());
        }
        let url = self.base.join(href).map_err(|_| malformed())?;
        if url.origin() != self.base.origin() {
            return Err(malformed());
        }
        Ok(url)
    }

    pub(super) fn get(
        &self,
        operation: &'static str,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Call<'static> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Call {
            operation,
            list_id: None,
            member: None,
            method: Method::GET,
            url,
            body: None,
            idempotent: true,
        }
    }

    /// A call that sends `body` as JSON.
    pub(super) fn json<T: Serialize>(
        &self,
        operation: &'static str,
        method: Method,
        segments: &[&str],
        body: &T,
        idempotent: bool,
    ) -> Result<Call<'static>, ConstantContactError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ConstantContactError::new(
                operation,
                ErrorKind::Setup {
                    detail: format!("cannot encode the request body: {e}"),
                },
            )
        })?;
        Ok(self.raw(operation, method, segments, body, idempotent))
    }

    /// A call that sends `body`, already JSON.
    pub(super) fn raw(
        &self,
        operation: &'static str,
        method: Method,
        segments: &[&str],
        body: Vec<u8>,
        idempotent: bool,
    ) -> Call<'static> {
        Call {
            operation,
            list_id: None,
            member: None,
            method,
            url: self.url(segments),
            body: Some(body),
            idempotent,
        }
    }

    /// Sends `call` under the retry policy; a 401 gets one refresh and one more run of it.
    /// `decode` reads a 2xx body (an `Err` from it is a malformed response).
    pub(super) async fn execute<T>(
        &self,
        call: &Call<'_>,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, ConstantContactError> {
        let decode = &decode;
        let used: Mutex<Option<SecretString>> = Mutex::new(None);
        let mut attempts = 0;
        let mut refreshed = false;
        loop {
            let run = self
                .retry
                .run(call.operation, call.idempotent, |_| {
                    self.attempt(call, decode, &used)
                })
                .await;
            let gave_up = match run {
                Ok(done) => return Ok(done.value),
                Err(gave_up) => gave_up,
            };
            attempts += gave_up.attempts;
            let token = used.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let (ErrorKind::Unauthorized { .. }, false, Some(token)) =
                (&gave_up.error, refreshed, token)
            {
                refreshed = true;
                tracing::warn!(
                    operation = call.operation,
                    "The access token was refused (401); refreshing it and trying once more"
                );
                if let Err(kind) = self.tokens.after_unauthorized(&token).await {
                    return Err(self.failed(call, kind, attempts, None));
                }
                continue;
            }
            let stop = (gave_up.stop != Stop::Permanent).then_some(gave_up.stop);
            return Err(self.failed(call, gave_up.error, attempts, stop));
        }
    }

    fn failed(
        &self,
        call: &Call<'_>,
        kind: ErrorKind,
        attempts: u32,
        stop: Option<Stop>,
    ) -> ConstantContactError {
        let mut e = call.error(kind);
        e.attempts = attempts;
        e.stop = stop;
        e
    }

    async fn attempt<T>(
        &self,
        call: &Call<'_>,
        decode: &impl Fn(&[u8]) -> Result<T, String>,
        used: &Mutex<Option<SecretString>>,
    ) -> Result<T, ErrorKind> {
        let token = self.tokens.access().await?;
        *used.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        self.budget.take().await?;
        self.pacer.wait().await;
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(token.expose_secret())
            .header(ACCEPT, "application/json");
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
        if status.is_success() {
            decode(&body).map_err(|detail| ErrorKind::MalformedResponse { detail })
        } else {
            Err(error_from_response(
                status,
                &headers,
                &body,
                self.store.now(),
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

pub(super) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

pub(super) fn next_href(links: Option<wire::Links>) -> Option<String> {
    links
        .and_then(|l| l.next)
        .map(|n| n.href)
        .filter(|h| !h.is_empty())
}

/// A time as the API's filters take it (ISO-8601, UTC).
pub(super) fn api_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("time `{}`: {e}", super::error::bounded(s)))
}

fn parse_time_opt(s: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => parse_time(s).map(Some),
    }
}

/// A member's subscription status from the contact's `permission_to_send`:
/// - `explicit`, `implicit`: subscribed (the account may mail them);
/// - `pending_confirmation`: pending;
/// - `unsubscribed`: unsubscribed;
/// - `not_set`, `temp_hold`, and any value the API adds later: pending. Neither is consent the
///   bridge may mail on, and neither is an opt-out that only the person may lift (which is what
///   unsubscribed and cleaned mean to the engine), so they are treated like a confirmation that
///   has not come yet;
/// - a deleted contact (`deleted_at` set) is archived, whatever its permission.
pub(super) fn member_status(permission: Option<&str>, deleted: bool) -> SubscriptionStatus {
    if deleted {
        return SubscriptionStatus::Archived;
    }
    match permission {
        Some("explicit" | "implicit") => SubscriptionStatus::Subscribed,
        Some("unsubscribed") => SubscriptionStatus::Unsubscribed,
        _ => SubscriptionStatus::Pending,
    }
}

/// A contact in the engine's terms; `names` maps custom field ids to names (an unknown id keys
/// its value by the id).
pub(super) fn remote_member(
    c: wire::Contact,
    names: &HashMap<String, String>,
) -> Result<RemoteMember, String> {
    let email = c
        .email_address
        .ok_or_else(|| format!("contact {} has no email address", c.contact_id))?;
    let deleted = c.deleted_at.as_deref().is_some_and(|d| !d.is_empty());
    Ok(RemoteMember {
        status: member_status(email.permission_to_send.as_deref(), deleted),
        last_changed: parse_time_opt(c.updated_at.as_deref())?,
        unsubscribe_reason: email.opt_out_reason.filter(|r| !r.is_empty()),
        email_address: email.address,
        merge_fields: c
            .custom_fields
            .into_iter()
            .map(|f| {
                let key = names
                    .get(&f.custom_field_id)
                    .cloned()
                    .unwrap_or(f.custom_field_id);
                (
                    key,
                    f.value
                        .map_or(serde_json::Value::Null, serde_json::Value::String),
                )
            })
            .collect(),
        id: c.contact_id,
    })
}

/// A merge field's value as a custom field's text: numbers in their shortest form, at most
/// [`MAX_FIELD_VALUE`] characters (Constant Contact's limit).
pub(super) fn field_text(value: &FieldValue) -> String {
    let text = match value {
        FieldValue::Text(s) => s.clone(),
        FieldValue::Number(n) => n.to_string(),
    };
    match text.char_indices().nth(MAX_FIELD_VALUE) {
        Some((at, _)) => text[..at].to_owned(),
        None => text,
    }
}

/// Classifies a transport failure. The message is built from the cause chain, which names the
/// URL (never a token: it travels in a header or a form body).
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

/// Decides the error kind from the status code first; the body (any of its three shapes)
/// supplies the detail and tells a spent daily quota from a throttle.
pub(super) fn error_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> ErrorKind {
    let problem = ApiProblem::decode(body);
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let detail = problem.detail;
    let code = status.as_u16();
    match code {
        401 => ErrorKind::Unauthorized { detail },
        403 => ErrorKind::Forbidden { detail },
        404 => ErrorKind::NotFound { detail },
        409 => ErrorKind::Conflict { detail },
        429 if problem.key.as_deref() == Some("quota_exceeded") => ErrorKind::QuotaExceeded {
            resets_at: next_midnight(now),
            local: false,
        },
        429 => ErrorKind::Throttled {
            retry_after,
            detail,
        },
        500..=599 => ErrorKind::Server {
            status: code,
            detail,
            retry_after,
        },
        _ => ErrorKind::Rejected {
            status: code,
            detail,
        },
    }
}
