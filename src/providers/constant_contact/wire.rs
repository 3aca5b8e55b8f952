//! The JSON and form bodies as Constant Contact spells them (`constant-contact-v3.yaml`, schema
//! names in the comments). Private to the client: callers see `types.rs`.

use serde::{Deserialize, Serialize};

/// `AccessTokenResponse`. `refresh_token` is absent when the app's refresh tokens do not rotate
/// and the server chose not to repeat it; `expires_in` is relative seconds, or (as the spec words
/// it) an epoch time.
#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// `DeviceFlowResponse`.
#[derive(Deserialize)]
pub(super) struct DeviceAuthorizeResponse {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// `_links` of a paged collection.
#[derive(Deserialize, Default)]
pub(super) struct Links {
    #[serde(default)]
    pub next: Option<Href>,
}

#[derive(Deserialize)]
pub(super) struct Href {
    pub href: String,
}

/// `getAllCustomFields_200_response`.
#[derive(Deserialize)]
pub(super) struct CustomFieldsPage {
    #[serde(default)]
    pub custom_fields: Vec<CustomField>,
    #[serde(default, rename = "_links")]
    pub links: Option<Links>,
}

/// `getCustomField_200_response`.
#[derive(Deserialize)]
pub(super) struct CustomField {
    pub custom_field_id: String,
    pub label: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `createCustomFields_request`.
#[derive(Serialize)]
pub(super) struct CreateCustomField<'a> {
    pub label: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
}

/// `getActivityById_200_response` / `createCSVImportActivity_201_response` /
/// `createListRemoveActivity_201_response`: the parts read.
#[derive(Deserialize)]
pub(super) struct Activity {
    pub activity_id: String,
    pub state: String,
    #[serde(default)]
    pub activity_errors: Vec<String>,
    #[serde(default)]
    pub status: Option<ActivityStatus>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub(super) struct ActivityStatus {
    #[serde(default)]
    pub items_total_count: Option<u64>,
    #[serde(default)]
    pub error_count: Option<u64>,
    #[serde(default)]
    pub cannot_add_to_list_count: Option<u64>,
}

/// `createListRemoveActivity_request` with a `contact_ids` source.
#[derive(Serialize)]
pub(super) struct RemoveListMemberships<'a> {
    pub source: ContactIds<'a>,
    pub list_ids: [&'a str; 1],
}

#[derive(Serialize)]
pub(super) struct ContactIds<'a> {
    pub contact_ids: &'a [String],
}

/// `getAllContacts_200_response`.
#[derive(Deserialize)]
pub(super) struct ContactsPage {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default, rename = "_links")]
    pub links: Option<Links>,
}

/// `getContactById_200_response`: the parts read, and the core properties a PUT must repeat.
#[derive(Deserialize, Clone)]
pub(super) struct Contact {
    pub contact_id: String,
    #[serde(default)]
    pub email_address: Option<EmailAddress>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub birthday_month: Option<u32>,
    #[serde(default)]
    pub birthday_day: Option<u32>,
    #[serde(default)]
    pub anniversary: Option<String>,
    #[serde(default)]
    pub custom_fields: Vec<ContactCustomField>,
    #[serde(default)]
    pub list_memberships: Vec<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

/// `getContactById_200_response_email_address`.
#[derive(Deserialize, Clone)]
pub(super) struct EmailAddress {
    pub address: String,
    #[serde(default)]
    pub permission_to_send: Option<String>,
    #[serde(default)]
    pub opt_out_source: Option<String>,
    #[serde(default)]
    pub opt_out_date: Option<String>,
    #[serde(default)]
    pub opt_out_reason: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub(super) struct ContactCustomField {
    pub custom_field_id: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// `updateContact_request`: a full replacement of the core properties, so every one read is
/// sent back; subresources left out (phones, addresses) are kept by the server.
#[derive(Serialize)]
pub(super) struct UpdateContact<'a> {
    pub email_address: UpdateEmailAddress<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthday_month: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthday_day: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anniversary: Option<&'a str>,
    pub update_source: &'static str,
    pub custom_fields: Vec<ContactCustomField>,
    pub list_memberships: Vec<&'a str>,
}

#[derive(Serialize)]
pub(super) struct UpdateEmailAddress<'a> {
    pub address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission_to_send: Option<&'a str>,
}

/// `getAllEmailCampaigns_200_response`.
#[derive(Deserialize)]
pub(super) struct CampaignsPage {
    #[serde(default)]
    pub campaigns: Vec<CampaignSummary>,
    #[serde(default, rename = "_links")]
    pub links: Option<Links>,
}

/// `getAllEmailCampaigns_200_response_campaigns_inner`: the parts read.
#[derive(Deserialize)]
pub(super) struct CampaignSummary {
    pub campaign_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub current_status: String,
}

/// `createEmailCampaign_200_response` (also `GET /emails/{id}`).
#[derive(Deserialize)]
pub(super) struct Campaign {
    #[serde(default)]
    pub campaign_id: String,
    #[serde(default)]
    pub name: String,
    /// `Draft`, `Scheduled`, `Executing`, `Done`, `Error`, `Removed`.
    #[serde(default)]
    pub current_status: String,
    #[serde(default)]
    pub campaign_activities: Vec<CampaignActivity>,
}

#[derive(Deserialize)]
pub(super) struct CampaignActivity {
    pub campaign_activity_id: String,
    #[serde(default)]
    pub role: String,
}

/// `getBouncesReport_200_response`.
#[derive(Deserialize)]
pub(super) struct BouncesPage {
    #[serde(default)]
    pub tracking_activities: Vec<BounceActivity>,
    #[serde(default, rename = "_links")]
    pub links: Option<Links>,
}

#[derive(Deserialize)]
pub(super) struct BounceActivity {
    pub email_address: String,
    pub bounce_code: String,
    pub created_time: String,
    pub campaign_activity_id: String,
}

/// `createEmailCampaign_request`: the name and exactly one activity.
#[derive(Serialize)]
pub(super) struct CreateEmailCampaign<'a> {
    pub name: &'a str,
    pub email_campaign_activities: [NewEmailActivity<'a>; 1],
}

/// `createEmailCampaign_request_email_campaign_activities_inner`.
#[derive(Serialize)]
pub(super) struct NewEmailActivity<'a> {
    /// 5: a custom code email, the only format the API creates.
    pub format_type: u8,
    pub from_name: &'a str,
    pub from_email: &'a str,
    pub reply_to_email: &'a str,
    pub subject: &'a str,
    pub html_content: &'a str,
}

/// `getEmailCampaignActivity_200_response`, also the body of `updateEmailCampaignActivity`: a
/// PUT overwrites every property it leaves out, so an activity is read and written back whole.
/// The read-only properties are read but not sent; the subresources (footer address, document
/// properties) are sent back as read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub(super) struct EmailActivity {
    #[serde(default, skip_serializing)]
    pub campaign_activity_id: String,
    /// `DRAFT`, `SCHEDULED`, `EXECUTING`, `DONE`, `ERROR`, `REMOVED`.
    #[serde(default, skip_serializing)]
    pub current_status: String,
    #[serde(default)]
    pub from_name: String,
    #[serde(default)]
    pub from_email: String,
    #[serde(default)]
    pub reply_to_email: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preheader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_list_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_ids: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_address_in_footer: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_properties: Option<serde_json::Value>,
}

/// `getAllAccountEmailAddresses_200_response_inner`: the parts read.
#[derive(Deserialize)]
pub(super) struct AccountEmail {
    pub email_address: String,
    #[serde(default)]
    pub confirm_status: Option<String>,
}

/// `scheduleEmailCampaignActivity_request`: `"0"` sends now, else an ISO-8601 time.
#[derive(Serialize)]
pub(super) struct ScheduleActivity<'a> {
    pub scheduled_date: &'a str,
}

/// `testSendEmailCampaignActivity_request`.
#[derive(Serialize)]
pub(super) struct TestSend<'a> {
    pub email_addresses: Vec<&'a str>,
}
