//! Request and response bodies as the Mailchimp Marketing API spells them (spec 3.0.85,
//! `specs/mailchimp-marketing.json`), named after the operation that uses them. Private
//! to the client: nothing outside `providers::mailchimp` sees this format. Responses read only the
//! fields the bridge uses and ignore the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /ping` (getPing).
#[derive(Deserialize)]
pub(super) struct PingResponse {
    pub health_status: String,
}

/// `GET /lists/{list_id}/merge-fields` (getListsIdMergeFields): CollectionOfMergeFields.
#[derive(Deserialize)]
pub(super) struct GetMergeFieldsResponse {
    #[serde(default)]
    pub merge_fields: Vec<MergeField>,
    pub total_items: u64,
}

/// One merge field in a response (MergeField1 / MergeField3).
#[derive(Deserialize)]
pub(super) struct MergeField {
    pub merge_id: u64,
    pub tag: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `POST /lists/{list_id}/merge-fields` (postListsIdMergeFields): MergeField.
#[derive(Serialize)]
pub(super) struct PostMergeFieldRequest<'a> {
    pub tag: &'a str,
    pub name: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
}

/// `POST /lists/{list_id}` (postListsId): MembersToSubscribeUnsubscribeTofromAListInBatch.
#[derive(Serialize)]
pub(super) struct BatchSubscribeRequest<'a> {
    pub members: Vec<BatchSubscribeMember<'a>>,
    pub update_existing: bool,
    pub sync_tags: bool,
}

/// One `members[]` item (AddListMembers). `tags` is not in spec 3.0.85 but is applied since the
/// 2022-01-24 changelog; `merge_fields` and `tags` are left out when empty, so an empty mapping
/// does not blank fields set by hand (with `sync_tags` the tag list is always sent: it replaces).
#[derive(Serialize)]
pub(super) struct BatchSubscribeMember<'a> {
    pub email_address: &'a str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_fields: Option<BTreeMap<&'a str, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<&'a str>>,
}

/// Response of `POST /lists/{list_id}` (BatchUpdateListMembers).
#[derive(Deserialize)]
pub(super) struct BatchSubscribeResponse {
    #[serde(default)]
    pub new_members: Vec<Member>,
    #[serde(default)]
    pub updated_members: Vec<Member>,
    #[serde(default)]
    pub errors: Vec<BatchSubscribeError>,
    #[serde(default)]
    pub total_created: u64,
    #[serde(default)]
    pub total_updated: u64,
    #[serde(default)]
    pub error_count: u64,
}

/// BatchUpdateListMembersErrors.
#[derive(Deserialize)]
pub(super) struct BatchSubscribeError {
    pub email_address: String,
    #[serde(default)]
    pub error: String,
    pub error_code: Option<String>,
    pub field: Option<String>,
    pub field_message: Option<String>,
}

/// A list member as read back (ListMembers2 and friends), only the fields the sync uses.
#[derive(Deserialize)]
pub(super) struct Member {
    pub id: String,
    pub email_address: String,
    pub status: String,
    pub last_changed: Option<String>,
    pub unsubscribe_reason: Option<String>,
    #[serde(default)]
    pub merge_fields: BTreeMap<String, Value>,
}

/// `PUT /lists/{list_id}/members/{subscriber_hash}` (putListsIdMembersId). The spec requires
/// `status_if_new`; `status` is sent only for a real preference change.
#[derive(Serialize)]
pub(super) struct PutMemberRequest<'a> {
    pub email_address: &'a str,
    pub status_if_new: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub merge_fields: BTreeMap<&'a str, Value>,
}

/// `POST /lists/{list_id}/members/{subscriber_hash}/tags` (postListMemberTags).
#[derive(Serialize)]
pub(super) struct PostMemberTagsRequest<'a> {
    pub tags: Vec<MemberTag<'a>>,
    pub is_syncing: bool,
}

#[derive(Serialize)]
pub(super) struct MemberTag<'a> {
    pub name: &'a str,
    /// `active` or `inactive`.
    pub status: &'static str,
}

/// `GET /lists/{list_id}/members` (getListsIdMembers), trimmed by the `fields` parameter.
#[derive(Deserialize)]
pub(super) struct GetMembersResponse {
    #[serde(default)]
    pub members: Vec<Member>,
    pub total_items: u64,
}

/// The problem document of a failed call (ProblemDetailDocument, RFC 7807). Every field may be
/// missing: 429/403 can come without a body and a 502 from the CDN is HTML.
#[derive(Deserialize, Default)]
pub(super) struct ProblemDetail {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub errors: Vec<ProblemFieldError>,
}

#[derive(Deserialize)]
pub(super) struct ProblemFieldError {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// `POST /campaigns` (postCampaigns): Campaign. Only `regular` campaigns are created.
#[derive(Serialize)]
pub(super) struct PostCampaignRequest<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub recipients: CampaignRecipients<'a>,
    pub settings: CampaignSettings<'a>,
}

/// List1: the audience and an optional segment.
#[derive(Serialize)]
pub(super) struct CampaignRecipients<'a> {
    pub list_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_opts: Option<SegmentOptions>,
}

/// SegmentOptions with StaticSegment (tag) conditions.
#[derive(Serialize)]
pub(super) struct SegmentOptions {
    #[serde(rename = "match")]
    pub match_: &'static str,
    pub conditions: Vec<StaticSegmentCondition>,
}

/// The "Static Segment" condition schema: members with (or without) a tag, by tag id.
#[derive(Serialize)]
pub(super) struct StaticSegmentCondition {
    pub condition_type: &'static str,
    pub field: &'static str,
    pub op: &'static str,
    pub value: u64,
}

/// CampaignSettings1, the fields mailbridge sets.
#[derive(Serialize)]
pub(super) struct CampaignSettings<'a> {
    pub subject_line: &'a str,
    pub title: &'a str,
    pub from_name: &'a str,
    pub reply_to: &'a str,
}

/// A campaign as read back (Campaign1), only the fields mailbridge uses.
#[derive(Deserialize)]
pub(super) struct Campaign {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub emails_sent: u64,
    #[serde(default)]
    pub recipients: Option<CampaignRecipientsRead>,
    #[serde(default)]
    pub settings: Option<CampaignSettingsRead>,
}

#[derive(Deserialize)]
pub(super) struct CampaignRecipientsRead {
    #[serde(default)]
    pub recipient_count: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct CampaignSettingsRead {
    #[serde(default)]
    pub title: String,
}

/// `GET /campaigns` (getCampaigns), trimmed by `fields`.
#[derive(Deserialize)]
pub(super) struct GetCampaignsResponse {
    #[serde(default)]
    pub campaigns: Vec<Campaign>,
    #[serde(default)]
    pub total_items: u64,
}

/// `PUT /campaigns/{campaign_id}/content` (putCampaignsIdContent): CampaignContent1.
#[derive(Serialize)]
pub(super) struct PutCampaignContentRequest<'a> {
    pub html: &'a str,
    pub plain_text: &'a str,
}

/// `GET /campaigns/{campaign_id}/send-checklist` (getCampaignsIdSendChecklist): SendChecklist.
#[derive(Deserialize)]
pub(super) struct SendChecklist {
    pub is_ready: bool,
    #[serde(default)]
    pub items: Vec<SendChecklistItem>,
}

/// SendChecklistItems.
#[derive(Deserialize)]
pub(super) struct SendChecklistItem {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub heading: String,
    #[serde(default)]
    pub details: String,
}

/// `POST /campaigns/{campaign_id}/actions/test` (postCampaignsIdActionsTest): ActionsTestBody.
#[derive(Serialize)]
pub(super) struct ActionsTestBody<'a> {
    pub test_emails: Vec<&'a str>,
    pub send_type: &'static str,
}

/// `POST /campaigns/{campaign_id}/actions/schedule` (postCampaignsIdActionsSchedule).
#[derive(Serialize)]
pub(super) struct ActionsScheduleBody {
    pub schedule_time: String,
}

/// `GET /lists/{list_id}/tag-search` (searchTags).
#[derive(Deserialize)]
pub(super) struct TagSearchResponse {
    #[serde(default)]
    pub tags: Vec<TagSearchItem>,
}

#[derive(Deserialize)]
pub(super) struct TagSearchItem {
    pub id: u64,
    pub name: String,
}

/// `POST /batches` (postBatches): operations whose `body` is a JSON string, not an object.
#[derive(Serialize)]
pub(super) struct PostBatchesRequest<'a> {
    pub operations: Vec<BatchOperation<'a>>,
}

#[derive(Serialize)]
pub(super) struct BatchOperation<'a> {
    pub method: &'static str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
    pub operation_id: &'a str,
}

/// A batch's status (postBatches and getBatchesId answer it).
#[derive(Deserialize)]
pub(super) struct Batch {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub response_body_url: String,
}
