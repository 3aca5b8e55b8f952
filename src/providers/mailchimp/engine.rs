//! The Mailchimp side of the engine's requests that are not one call each: a batch upsert of
//! rendered contacts, answered member by member in the engine's terms.

use std::collections::HashMap;

use super::{BatchMember, BatchResult, MailchimpClient, MailchimpError, SubscriberHash};
use crate::domain::WriteStatus;
use crate::mapping::Contact;
use crate::providers::{MemberRefusal, UpsertOutcome};

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
