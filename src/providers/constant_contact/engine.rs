//! The Constant Contact side of the engine's requests that take several calls: a batch upsert is
//! a JSON import (split by count and by the exact bytes sent), polled until it ends, answered
//! member by member from the activity's counts or, when they do not add up, from reading the list
//! back; an unsubscribe is a removal from the list (contact ids looked up by address, removed 500
//! at a time).

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;

use super::client::{Call, api_time, decode_json, field_text, member_status};
use super::error::{ConstantContactError, ErrorKind, bounded};
use super::{ConstantContactClient, wire};
use crate::domain::{SubscriptionStatus, WriteStatus};
use crate::mapping::Contact;
use crate::providers::{Archive, MemberRefusal, UpsertOutcome};

/// Contacts one `contacts_json_import` takes at most.
pub const MAX_IMPORT_CONTACTS: usize = 40_000;
/// A `contacts_json_import` body must stay under this many bytes (4 MB; Constant Contact drops
/// whatever follows silently, so it is never reached).
pub const MAX_IMPORT_BYTES: usize = 4_000_000;
/// What the contacts of one import may take, comma-separated, leaving room under
/// [`MAX_IMPORT_BYTES`] for the request's envelope (`{"import_data":[` … `],"list_ids":[…]}`
/// with a list id of any plausible length).
pub const IMPORT_ITEMS_BYTES: usize = MAX_IMPORT_BYTES - 1024;

/// The bytes `contact` takes in an import request, its separating comma included.
pub fn import_item_len(contact: &Contact) -> usize {
    import_item(contact).map_or(0, |item| item.len() + 1)
}

/// Contact ids one `remove_list_memberships` takes at most.
pub const MAX_REMOVE_CONTACTS: usize = 500;
/// How long before an import the read-back starts looking for updated contacts: room for the
/// difference between this machine's clock and Constant Contact's.
const READ_BACK_MARGIN: Duration = Duration::from_secs(60);

/// One import request: its body, exactly as sent, and the members (indexes of the batch) in it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ImportRequest {
    pub body: Vec<u8>,
    pub members: Vec<usize>,
}

/// One contact of an import as JSON: its address as written and each merge field as
/// `"cf:<TAG>"` text (tags are not sent: tags are refused for Constant Contact audiences).
pub(super) fn import_item(contact: &Contact) -> Result<Vec<u8>, String> {
    let mut item = serde_json::Map::new();
    item.insert(
        "email".to_owned(),
        serde_json::Value::String(contact.email.original().to_owned()),
    );
    for (tag, value) in &contact.merge_fields {
        item.insert(
            format!("cf:{tag}"),
            serde_json::Value::String(field_text(value)),
        );
    }
    serde_json::to_vec(&item).map_err(|e| e.to_string())
}

/// Packs `items` (member index, JSON) into request bodies of at most `max_count` contacts and
/// under `max_bytes` bytes each, in order. A body is counted as the bytes it is built from, so
/// what is measured is what is sent. An item too large for a request of its own is returned
/// apart (it is refused, not sent).
pub(super) fn split_import(
    list_id: &str,
    items: &[(usize, Vec<u8>)],
    max_bytes: usize,
    max_count: usize,
) -> (Vec<ImportRequest>, Vec<usize>) {
    const PREFIX: &[u8] = b"{\"import_data\":[";
    let lists = serde_json::Value::from(vec![list_id]).to_string();
    let suffix = format!("],\"list_ids\":{lists}}}").into_bytes();
    let mut requests = Vec::new();
    let mut too_large = Vec::new();
    let mut body = PREFIX.to_vec();
    let mut members = Vec::new();
    let finish = |body: &mut Vec<u8>, members: &mut Vec<usize>, requests: &mut Vec<_>| {
        if members.is_empty() {
            return;
        }
        let mut done = std::mem::replace(body, PREFIX.to_vec());
        done.extend_from_slice(&suffix);
        requests.push(ImportRequest {
            body: done,
            members: std::mem::take(members),
        });
    };
    for (index, item) in items {
        if PREFIX.len() + item.len() + suffix.len() >= max_bytes {
            too_large.push(*index);
            continue;
        }
        let comma = usize::from(!members.is_empty());
        if members.len() >= max_count.max(1)
            || body.len() + comma + item.len() + suffix.len() >= max_bytes
        {
            finish(&mut body, &mut members, &mut requests);
        }
        if !members.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(item);
        members.push(*index);
    }
    finish(&mut body, &mut members, &mut requests);
    (requests, too_large)
}

/// Whether an activity's counts account for every one of `sent` members: completed, all items
/// counted, no error, none refused by a list.
pub(super) fn accounts_for(activity: &wire::Activity, sent: usize) -> bool {
    let status = activity.status.unwrap_or_default();
    activity.state == "completed"
        && status.items_total_count == Some(sent as u64)
        && status.error_count.unwrap_or(0) == 0
        && status.cannot_add_to_list_count.unwrap_or(0) == 0
}

/// Why `address` did not land: the activity's error that names it, else what the counts say.
pub(super) fn refusal(address: &str, activity: &wire::Activity) -> MemberRefusal {
    let wanted = address.to_lowercase();
    let named = activity
        .activity_errors
        .iter()
        .find(|e| e.to_lowercase().contains(&wanted));
    match named {
        Some(text) => {
            let lower = text.to_lowercase();
            let invalid_address = lower.contains("email") && lower.contains("invalid");
            MemberRefusal {
                code: if invalid_address {
                    "provider_invalid_email".to_owned()
                } else {
                    "import_error".to_owned()
                },
                message: bounded(text),
                invalid_address,
            }
        }
        None => {
            let status = activity.status.unwrap_or_default();
            MemberRefusal {
                code: "not_imported".to_owned(),
                message: format!(
                    "not on the list after import activity {} ({}; {} error(s), {} previously unsubscribed contact(s) not added)",
                    activity.activity_id,
                    activity.state,
                    status.error_count.unwrap_or(0),
                    status.cannot_add_to_list_count.unwrap_or(0)
                ),
                invalid_address: false,
            }
        }
    }
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled" | "timed_out")
}

impl ConstantContactClient {
    /// Writes `members` to `list_id` and says what became of each, in order. Subscribed and
    /// pending members go out through `contacts_json_import` (as many requests as the limits
    /// need); each import is polled until it ends, and when its counts do not account for every
    /// member sent the list is read back, and each member not on it is refused with the
    /// activity's words. Unsubscribed members are removed from the list instead. A call that
    /// fails after some members were written leaves the rest [`UpsertOutcome::NotSent`].
    #[tracing::instrument(skip_all, fields(list_id = %list_id, members = members.len()))]
    pub async fn import_contacts(
        &self,
        list_id: &str,
        members: &[(&Contact, WriteStatus)],
    ) -> Result<Vec<UpsertOutcome>, ConstantContactError> {
        const OP: &str = "createImportJSONActivity";
        let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; members.len()];
        let mut items = Vec::new();
        let mut removals = Vec::new();
        for (i, (contact, status)) in members.iter().enumerate() {
            match status {
                WriteStatus::Unsubscribed => removals.push(i),
                WriteStatus::Subscribed | WriteStatus::Pending => {
                    let item = import_item(contact).map_err(|detail| {
                        ConstantContactError::new(OP, ErrorKind::Setup { detail })
                            .on_list(list_id)
                            .for_member(contact.email.original())
                    })?;
                    items.push((i, item));
                }
            }
        }
        let (requests, too_large) =
            split_import(list_id, &items, MAX_IMPORT_BYTES, MAX_IMPORT_CONTACTS);
        for i in too_large {
            outcomes[i] = Some(UpsertOutcome::Refused(MemberRefusal {
                code: "too_large".to_owned(),
                message: format!(
                    "the contact's fields take more than an import request may hold ({MAX_IMPORT_BYTES} bytes)"
                ),
                invalid_address: false,
            }));
        }
        // An error once some members were written stops the batch there: those are answered,
        // the rest are `NotSent` (a run stopped by the budget keeps what landed, and the next
        // run does not import it again). An error before anything was written fails the batch.
        let mut written = false;
        let mut stopped = None;
        for request in requests {
            let since =
                self.store.now() - chrono::Duration::from_std(READ_BACK_MARGIN).unwrap_or_default();
            let call = self
                .raw(
                    OP,
                    Method::POST,
                    &["activities", "contacts_json_import"],
                    request.body,
                    true,
                )
                .on_list(list_id);
            let activity = match self.run_activity(&call).await {
                Ok(activity) => activity,
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            };
            if accounts_for(&activity, request.members.len()) {
                for i in request.members {
                    outcomes[i] = Some(UpsertOutcome::Accepted(None));
                }
                written = true;
                continue;
            }
            tracing::warn!(
                activity_id = %activity.activity_id,
                state = %activity.state,
                "The import's counts do not account for every member sent; reading the list back"
            );
            let landed = match self.landed(list_id, since).await {
                Ok(landed) => landed,
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            };
            for i in request.members {
                let email = &members[i].0.email;
                outcomes[i] = Some(match landed.get(email.as_str()) {
                    Some(status) => UpsertOutcome::Accepted(Some(*status)),
                    None => UpsertOutcome::Refused(refusal(email.as_str(), &activity)),
                });
            }
            written = true;
        }
        if stopped.is_none() && !removals.is_empty() {
            let emails: Vec<&str> = removals
                .iter()
                .map(|i| members[*i].0.email.original())
                .collect();
            match self.remove_from_list(list_id, &emails).await {
                Ok(_) => {
                    for i in removals {
                        outcomes[i] = Some(UpsertOutcome::Accepted(Some(
                            SubscriptionStatus::Unsubscribed,
                        )));
                    }
                }
                Err(e) => stopped = Some(e),
            }
        }
        if let Some(e) = stopped {
            if !written {
                return Err(e);
            }
            let e = crate::providers::ProviderError::from(e);
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(UpsertOutcome::NotSent(e.clone()));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(UpsertOutcome::Accepted(None)))
            .collect())
    }

    /// Removes the members at `emails` from `list_id`: each address's contact is looked up
    /// (`GET /contacts?email=`; an address with no contact, or whose contact is not on the list,
    /// is already gone), then removed 500 at a time (`POST /activities/remove_list_memberships`),
    /// each activity polled until it completes.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, members = emails.len()))]
    pub async fn remove_from_list(
        &self,
        list_id: &str,
        emails: &[&str],
    ) -> Result<Vec<(String, Archive)>, ConstantContactError> {
        let mut out = Vec::with_capacity(emails.len());
        let mut ids = Vec::new();
        for email in emails {
            let found = self
                .find_contact(email, "list_memberships")
                .await
                .map_err(|e| e.on_list(list_id))?;
            match found {
                Some(c) if c.list_memberships.iter().any(|l| l == list_id) => {
                    ids.push(c.contact_id);
                    out.push(((*email).to_owned(), Archive::Archived));
                }
                _ => out.push(((*email).to_owned(), Archive::AlreadyGone)),
            }
        }
        for chunk in ids.chunks(MAX_REMOVE_CONTACTS) {
            let call = self
                .json(
                    "createListRemoveActivity",
                    Method::POST,
                    &["activities", "remove_list_memberships"],
                    &wire::RemoveListMemberships {
                        source: wire::ContactIds { contact_ids: chunk },
                        list_ids: [list_id],
                    },
                    true,
                )
                .map_err(|e| e.on_list(list_id))?
                .on_list(list_id);
            let activity = self.run_activity(&call).await?;
            if activity.state != "completed" {
                return Err(ConstantContactError::new(
                    "getActivityById",
                    ErrorKind::ActivityFailed {
                        activity_id: activity.activity_id,
                        state: activity.state,
                        detail: bounded(&activity.activity_errors.join("; ")),
                    },
                )
                .on_list(list_id));
            }
        }
        Ok(out)
    }

    /// Sends `call` (which creates a bulk activity) and polls the activity
    /// (`GET /activities/{id}`) with a doubling wait until it ends.
    async fn run_activity(&self, call: &Call<'_>) -> Result<wire::Activity, ConstantContactError> {
        let mut activity: wire::Activity = self.execute(call, decode_json).await?;
        let mut wait = self.polling.first;
        let mut waited = Duration::ZERO;
        while !is_terminal(&activity.state) {
            if waited >= self.polling.give_up_after {
                return Err(ConstantContactError::new(
                    "getActivityById",
                    ErrorKind::ActivityFailed {
                        activity_id: activity.activity_id,
                        state: format!(
                            "still {} after {} s of polling",
                            activity.state,
                            waited.as_secs()
                        ),
                        detail: String::new(),
                    },
                ));
            }
            tokio::time::sleep(wait).await;
            waited += wait;
            wait = (wait * 2).min(self.polling.cap);
            let poll = self.get(
                "getActivityById",
                &["activities", &activity.activity_id],
                &[],
            );
            let poll = match call.list_id {
                Some(list) => poll.on_list(list),
                None => poll,
            };
            activity = self.execute(&poll, decode_json).await?;
        }
        Ok(activity)
    }

    /// The list's members updated since `since`, by lower-cased address, with their status
    /// (`GET /contacts?lists=…&updated_after=…`, every page).
    async fn landed(
        &self,
        list_id: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<String, SubscriptionStatus>, ConstantContactError> {
        let since = api_time(since);
        let limit = super::client::MAX_PAGE_SIZE.to_string();
        let mut call = self
            .get(
                "getAllContacts",
                &["contacts"],
                &[
                    ("lists", list_id),
                    ("updated_after", &since),
                    ("include", "custom_fields,list_memberships"),
                    ("limit", &limit),
                ],
            )
            .on_list(list_id);
        let mut landed = HashMap::new();
        loop {
            let page: wire::ContactsPage = self.execute(&call, decode_json).await?;
            for c in page.contacts {
                let deleted = c.deleted_at.as_deref().is_some_and(|d| !d.is_empty());
                if let Some(e) = c.email_address {
                    landed.insert(
                        e.address.trim().to_lowercase(),
                        member_status(e.permission_to_send.as_deref(), deleted),
                    );
                }
            }
            match page.links.and_then(|l| l.next).map(|n| n.href) {
                Some(href) if !href.is_empty() => {
                    call.url = self.next_url(&href).map_err(|k| {
                        ConstantContactError::new(call.operation, k).on_list(list_id)
                    })?;
                }
                _ => return Ok(landed),
            }
        }
    }
}
