//! The Mailchimp side of the engine's requests that are not one call each, answered in the
//! engine's terms: a batch upsert of rendered contacts (an outcome per member), archives of many
//! members, pages of members and of changes since a watermark (offsets as page tokens).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::{
    BatchMember, BatchOperation, BatchResult, ErrorKind, MAX_PAGE_SIZE, MailchimpClient,
    MailchimpError, SubscriberHash, wire,
};
use crate::domain::{SubscriptionStatus, WriteStatus};
use crate::mapping::Contact;
use crate::providers::{
    Archive, ChangesPage, MemberRefusal, MemberWrite, MembersPage, RemoteChange, RemoteMember,
    UpsertOutcome,
};

/// Archives sent at once (each is one DELETE).
const ARCHIVES_IN_FLIGHT: usize = 8;

/// The statuses a pull reads changes of, in this order (a page token names one and an offset).
const CHANGED_STATUSES: [SubscriptionStatus; 3] = [
    SubscriptionStatus::Unsubscribed,
    SubscriptionStatus::Cleaned,
    SubscriptionStatus::Pending,
];

impl MailchimpClient {
    /// Batch-subscribes `members` (at most [`super::MAX_BATCH_MEMBERS`]) with
    /// `update_existing`, and says what became of each, in order.
    pub async fn upsert_contacts(
        &self,
        list_id: &str,
        members: &[(&Contact, WriteStatus)],
    ) -> Result<Vec<UpsertOutcome>, MailchimpError> {
        let batch: Vec<BatchMember> = members
            .iter()
            .map(|(contact, status)| BatchMember::from_contact(contact, *status))
            .collect();
        let result = self.batch_subscribe(list_id, &batch, true, false).await?;
        Ok(outcomes(&batch, &result))
    }
}

impl MailchimpClient {
    /// Archives each address (one DELETE each, a few at once); one result per address, in order.
    pub async fn archive_many(
        &self,
        list_id: &str,
        emails: &[&str],
    ) -> Vec<Result<Archive, MailchimpError>> {
        // Owned inputs: a stream of futures borrowing from the caller would not be `Send` for
        // every lifetime, which the spawned tasks that sync in need.
        let hashes: Vec<SubscriberHash> = emails
            .iter()
            .map(|e| SubscriberHash::of_address(e))
            .collect();
        let list_id = list_id.to_owned();
        futures::stream::iter(hashes)
            .map(|hash| {
                let client = self.clone();
                let list_id = list_id.clone();
                async move { client.archive_member(&list_id, &hash).await }
            })
            .buffered(ARCHIVES_IN_FLIGHT)
            .collect()
            .await
    }

    /// One page of the members with `status` changed since `since` (all of them without it);
    /// the page token is the offset of the next page.
    pub async fn members_page(
        &self,
        list_id: &str,
        status: SubscriptionStatus,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<MembersPage, MailchimpError> {
        let offset = offset_of(page)?;
        let got = self
            .list_members_changed(list_id, status, since, offset, MAX_PAGE_SIZE)
            .await?;
        let read = got.members.len() as u64;
        let next =
            (read > 0 && offset + read < got.total_items).then(|| (offset + read).to_string());
        Ok(MembersPage {
            members: got.members,
            next,
        })
    }

    /// One page of the members who unsubscribed, were cleaned or became pending since `since`
    /// (ever, without it), as changes to record; the page token is `<status>:<offset>`.
    pub async fn changes_page(
        &self,
        list_id: &str,
        since: Option<DateTime<Utc>>,
        page: Option<&str>,
    ) -> Result<ChangesPage, MailchimpError> {
        let (mut at, mut offset) = match page {
            None => (0, None),
            Some(token) => {
                let (status, offset) = token.split_once(':').unwrap_or((token, ""));
                let at = CHANGED_STATUSES
                    .iter()
                    .position(|s| s.as_str() == status)
                    .ok_or_else(|| bad_page(token))?;
                (at, Some(offset))
            }
        };
        loop {
            let status = CHANGED_STATUSES[at];
            let page = self.members_page(list_id, status, since, offset).await?;
            let changes: Vec<RemoteChange> = page.members.iter().map(change_of).collect();
            let next = match page.next {
                Some(offset) => Some(format!("{}:{offset}", status.as_str())),
                None => CHANGED_STATUSES
                    .get(at + 1)
                    .map(|s| format!("{}:0", s.as_str())),
            };
            // An empty status goes straight on to the next one.
            if !changes.is_empty() || next.is_none() {
                return Ok(ChangesPage { changes, next });
            }
            at += 1;
            offset = None;
        }
    }
}

/// A run's calls at Mailchimp: the pull's three status reads and the merge fields, a batch
/// call per 500 members, a DELETE per archive; address changes go through `/batches` (per 2,500:
/// a batch of PUTs and one of tag updates, each a POST and at least one status read).
pub fn estimate_calls(
    pushes: u64,
    address_changes: u64,
    archives: u64,
) -> crate::providers::CallEstimate {
    let batched = pushes.saturating_sub(address_changes);
    let member_batches = 2 * address_changes.div_ceil(MAX_MEMBER_WRITES as u64);
    crate::providers::CallEstimate {
        read: CHANGED_STATUSES.len() as u64 + 1 + member_batches,
        write: batched.div_ceil(super::MAX_BATCH_MEMBERS as u64) + member_batches + archives,
    }
}

fn offset_of(page: Option<&str>) -> Result<u64, MailchimpError> {
    match page {
        None | Some("") => Ok(0),
        Some(token) => token.parse().map_err(|_| bad_page(token)),
    }
}

fn bad_page(token: &str) -> MailchimpError {
    MailchimpError::new(
        "list_members_changed",
        None,
        ErrorKind::InvalidArgument {
            detail: format!("`{token}` is not a page of this list"),
        },
    )
}

/// The event a member's record stands for: `subscribed`, `unsubscribed` (`complained` when the
/// reason says abuse), `cleaned`, `pending`; none for an archived or unknown status.
pub fn status_event(m: &RemoteMember) -> Option<&'static str> {
    Some(match m.status {
        SubscriptionStatus::Subscribed => "subscribed",
        SubscriptionStatus::Cleaned => "cleaned",
        SubscriptionStatus::Pending => "pending",
        SubscriptionStatus::Unsubscribed
            if m.unsubscribe_reason
                .as_deref()
                .is_some_and(|r| r.to_ascii_lowercase().contains("abuse")) =>
        {
            "complained"
        }
        SubscriptionStatus::Unsubscribed => "unsubscribed",
        _ => return None,
    })
}

/// A member whose status changed, as the event it is recorded as.
fn change_of(m: &RemoteMember) -> RemoteChange {
    let event_type = status_event(m).unwrap_or("unsubscribed");
    RemoteChange {
        email: m.email_address.clone(),
        event_type,
        at: m.last_changed,
        reason: m.unsubscribe_reason.clone().filter(|r| !r.is_empty()),
        payload: serde_json::json!({
            "id": m.id.as_str(),
            "status": m.status.as_str(),
            "last_changed": m.last_changed.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "unsubscribe_reason": m.unsubscribe_reason,
        }),
    }
}

/// Each sent member's outcome: refused when the answer lists it among the errors (matched by
/// subscriber hash, as Mailchimp may respell the address), else accepted with the status the
/// answer gives it, if any.
pub(super) fn outcomes(batch: &[BatchMember], result: &BatchResult) -> Vec<UpsertOutcome> {
    let refused: HashMap<SubscriberHash, MemberRefusal> = result
        .errors
        .iter()
        .map(|e| {
            let invalid_address = is_invalid_address(&e.error, e.field.as_deref());
            let refusal = MemberRefusal {
                code: if invalid_address {
                    "provider_invalid_email".to_owned()
                } else {
                    e.error_code
                        .clone()
                        .unwrap_or_else(|| "ERROR_GENERIC".to_owned())
                },
                message: e.error.clone(),
                invalid_address,
            };
            (e.subscriber_hash(), refusal)
        })
        .collect();
    let status_of: HashMap<&SubscriberHash, _> = result
        .created
        .iter()
        .chain(result.updated.iter())
        .map(|o| (&o.id, o.status))
        .collect();
    batch
        .iter()
        .map(|m| {
            let hash = SubscriberHash::of(&m.email);
            match refused.get(&hash) {
                Some(r) => UpsertOutcome::Refused(r.clone()),
                None => UpsertOutcome::Accepted(status_of.get(&hash).copied()),
            }
        })
        .collect()
}

/// Whether a per-member batch error says the address itself is refused.
fn is_invalid_address(error: &str, field: Option<&str>) -> bool {
    let e = error.to_ascii_lowercase();
    field == Some("email_address") || e.contains("fake or invalid") || e.contains("invalid email")
}

/// Member writes per [`MailchimpClient::write_members`] call the engine makes (each is a PUT and
/// maybe a tags update: a batch or two of operations per phase).
pub const MAX_MEMBER_WRITES: usize = super::MAX_BATCH_OPERATIONS;

impl MailchimpClient {
    /// Writes each member as its single calls would (`PUT …/members/{hash of at}` with
    /// `status_if_new` and maybe `status`, then `POST …/members/{hash}/tags` when it has tags),
    /// sent as `/batches` batches: the PUTs first, then the tags of the members written (a
    /// batch's operations run in no set order, and a tag update needs its member). An address
    /// change whose old address is gone is written at its new address in a second batch (a run
    /// killed after Mailchimp renamed the member). One result per write, in order, with the
    /// errors the single calls give; `Err` when a batch as a whole failed.
    #[tracing::instrument(skip_all, fields(list_id = %list_id, members = writes.len()))]
    pub async fn write_members(
        &self,
        list_id: &str,
        writes: &[MemberWrite],
    ) -> Result<Vec<Result<SubscriptionStatus, MailchimpError>>, MailchimpError> {
        let mut done: Vec<Option<Result<SubscriptionStatus, MailchimpError>>> =
            (0..writes.len()).map(|_| None).collect();
        let put_id = |i: usize| format!("member-{i}");
        let put = |i: usize, at: &str| -> Result<BatchOperation, MailchimpError> {
            let w = &writes[i];
            let body = wire::PutMemberRequest {
                email_address: w.email.original(),
                status_if_new: w.status_if_new.as_str(),
                status: w.status.map(WriteStatus::as_str),
                merge_fields: super::client::merge_fields_json(&w.merge_fields),
            };
            Ok(BatchOperation {
                method: "PUT",
                path: format!(
                    "/lists/{list_id}/members/{}",
                    SubscriberHash::of_address(at)
                ),
                body: Some(encode("upsert_member", list_id, &body)?),
                operation_id: put_id(i),
            })
        };

        // The PUTs, and again at the new address those whose old address is gone.
        let ops = (0..writes.len())
            .map(|i| put(i, &writes[i].at))
            .collect::<Result<Vec<_>, _>>()?;
        let results = self.run_batch(Some(list_id), &ops).await?;
        let mut again = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let r = self.put_result(list_id, results.get(&put_id(i)));
            let moved = w.at.trim().to_lowercase() != w.email.as_str().trim().to_lowercase();
            match r {
                Err(e) if moved && !e.is_retryable() => {
                    tracing::info!(
                        "The old address is no longer on the list ({e}); updating the member at its new address."
                    );
                    again.push(put(i, w.email.as_str())?);
                }
                r => done[i] = Some(r),
            }
        }
        // The tags of the members written, with the second tries of the moved ones; then the
        // tags of those the second try wrote.
        let tag_id = |i: usize| format!("tags-{i}");
        let tag_op = |i: usize| -> Result<BatchOperation, MailchimpError> {
            let w = &writes[i];
            let body = wire::PostMemberTagsRequest {
                tags: w
                    .tags
                    .iter()
                    .map(|(name, active)| wire::MemberTag {
                        name,
                        status: if *active { "active" } else { "inactive" },
                    })
                    .collect(),
                is_syncing: true,
            };
            Ok(BatchOperation {
                method: "POST",
                path: format!(
                    "/lists/{list_id}/members/{}/tags",
                    SubscriberHash::of(&w.email)
                ),
                body: Some(encode("update_member_tags", list_id, &body)?),
                operation_id: tag_id(i),
            })
        };
        let wants_tags = |i: usize, done: &[Option<Result<SubscriptionStatus, MailchimpError>>]| {
            !writes[i].tags.is_empty() && matches!(done[i], Some(Ok(_)))
        };
        let mut tagged: Vec<usize> = (0..writes.len())
            .filter(|&i| wants_tags(i, &done))
            .collect();
        let mut ops = again;
        for &i in &tagged {
            ops.push(tag_op(i)?);
        }
        let retried: Vec<usize> = ops
            .iter()
            .filter_map(|op| op.operation_id.strip_prefix("member-"))
            .filter_map(|n| n.parse().ok())
            .collect();
        loop {
            if ops.is_empty() {
                break;
            }
            let results = self.run_batch(Some(list_id), &ops).await?;
            for &i in &retried {
                if done[i].is_none() {
                    done[i] = Some(self.put_result(list_id, results.get(&put_id(i))));
                }
            }
            for &i in &tagged {
                match results.get(&tag_id(i)) {
                    Some(r) if (200..300).contains(&r.status_code) => {}
                    Some(r) => {
                        done[i] = Some(Err(self.operation_error("update_member_tags", list_id, r)))
                    }
                    None => done[i] = Some(Err(no_result("update_member_tags", list_id))),
                }
            }
            // The moved members written by their second try, if they have tags.
            let next: Vec<usize> = retried
                .iter()
                .copied()
                .filter(|&i| !tagged.contains(&i) && wants_tags(i, &done))
                .collect();
            ops = next.iter().map(|&i| tag_op(i)).collect::<Result<_, _>>()?;
            tagged = next;
            if tagged.is_empty() {
                break;
            }
        }
        Ok(done
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(no_result("upsert_member", list_id))))
            .collect())
    }

    /// A PUT's result: the member's status, or the error the single call gives.
    fn put_result(
        &self,
        list_id: &str,
        result: Option<&super::OperationResult>,
    ) -> Result<SubscriptionStatus, MailchimpError> {
        let Some(r) = result else {
            return Err(no_result("upsert_member", list_id));
        };
        if !(200..300).contains(&r.status_code) {
            return Err(self.operation_error("upsert_member", list_id, r));
        }
        serde_json::from_str::<wire::Member>(&r.response)
            .map_err(|e| e.to_string())
            .and_then(|m| super::client::parse_status(&m.status))
            .map_err(|detail| {
                MailchimpError::new(
                    "upsert_member",
                    Some(list_id),
                    ErrorKind::MalformedResponse { detail },
                )
            })
    }
}

fn encode<T: serde::Serialize>(
    operation: &'static str,
    list_id: &str,
    body: &T,
) -> Result<String, MailchimpError> {
    serde_json::to_string(body).map_err(|e| {
        MailchimpError::new(
            operation,
            Some(list_id),
            ErrorKind::Setup {
                detail: format!("cannot encode the request body: {e}"),
            },
        )
    })
}

/// An operation the results archive says nothing of: it may or may not have run.
fn no_result(operation: &'static str, list_id: &str) -> MailchimpError {
    MailchimpError::new(
        operation,
        Some(list_id),
        ErrorKind::MalformedResponse {
            detail: "the batch's results archive has no result for this member's operation"
                .to_owned(),
        },
    )
}
