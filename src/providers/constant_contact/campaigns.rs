//! Email campaigns at Constant Contact in the engine's terms (research §6), so the campaign push
//! (`crate::campaigns::push`) runs the same at-most-once flow as on Mailchimp.
//!
//! - The engine's campaign id is Constant Contact's `campaign_id`; the calls that act on the email
//!   itself (content, test, send) go to its `primary_email` activity, looked up each time with
//!   `GET /emails/{id}` (one read; the id never changes, but nothing is cached between calls).
//! - Creating is three calls: the account's confirmed emails (the from and reply-to addresses
//!   must be among them, or nothing is created), `POST /emails` (the name is the engine's title,
//!   at most 80 characters), and `PUT /emails/activities/{id}` with the complete activity and the
//!   audience's list (recipients cannot be set at create time).
//! - A PUT overwrites every property it leaves out, so an activity is always read and written
//!   back whole (`wire::EmailActivity`).
//! - Sending is `POST …/schedules` with `"0"` (or a time): not idempotent, never retried once it
//!   may have reached Constant Contact; its error then says so
//!   ([`crate::providers::ProviderError::may_have_run_there`]) and the engine reads the status.
//! - Test emails: at most 5 a call and 50 a UTC day per account, counted in the state DB
//!   (`api_budget`, under [`TEST_BUDGET`]) and refused up front beyond that.

use chrono::{DateTime, Utc};
use reqwest::Method;
use sha2::{Digest, Sha256};

use super::client::{api_time, decode_json, next_href};
use super::error::{ConstantContactError, ErrorKind};
use super::limits::next_midnight;
use super::{ConstantContactClient, wire};
use crate::domain::Email;
use crate::providers::{CampaignStatus, ChecklistItem, NewCampaign, RemoteCampaign, SendChecklist};

/// A campaign name's longest length (and it must be unique in the account).
pub const MAX_CAMPAIGN_NAME: usize = 80;
/// The longest `from_name`.
pub const MAX_FROM_NAME: usize = 100;
/// The longest `from_email` and `reply_to_email`.
pub const MAX_SENDER_EMAIL: usize = 80;
/// The longest `html_content`.
pub const MAX_HTML: usize = 150_000;
/// Addresses one test send takes.
pub const MAX_TEST_ADDRESSES: usize = 5;
/// Test emails an account may send per UTC day, each recipient counted.
pub const TEST_EMAILS_PER_DAY: u32 = 50;
/// The name test emails are counted under in `api_budget` (beside the request budget).
pub const TEST_BUDGET: &str = "constant_contact.test_emails";
/// What a custom code email must hold in its `<body>` for Constant Contact to report on it.
pub const TRACKING_IMAGE: &str = "[[trackingImage]]";

/// The content a campaign is created with; the push replaces it right after.
const PLACEHOLDER_HTML: &str = "<html><body>[[trackingImage]]</body></html>";

/// The campaign name Constant Contact keeps for the engine's `title`: the title itself when it
/// fits in [`MAX_CAMPAIGN_NAME`] characters, else its first 63 characters, `~` and 16 hex digits
/// of its SHA-256 (the same title always gives the same name, so a push finds its campaign).
pub fn campaign_name(title: &str) -> String {
    if title.chars().count() <= MAX_CAMPAIGN_NAME {
        return title.to_owned();
    }
    let digest = hex::encode(Sha256::digest(title.as_bytes()));
    let keep = MAX_CAMPAIGN_NAME - 1 - 16;
    let prefix: String = title.chars().take(keep).collect();
    format!("{prefix}~{}", &digest[..16])
}

/// `html` with [`TRACKING_IMAGE`] in its body: as given when it has one; else placed right after
/// the `<body …>` tag, or after `<html …>` when there is no body tag, or the fragment wrapped in
/// `<html><body>` when there is neither.
pub fn with_tracking_image(html: &str) -> String {
    if html.contains(TRACKING_IMAGE) {
        return html.to_owned();
    }
    // ASCII lower-casing keeps every byte where it was, so positions found in `lower` are char
    // boundaries of `html` (they are at ASCII bytes).
    let lower = html.to_ascii_lowercase();
    for tag in ["<body", "<html"] {
        if let Some(at) = after_open_tag(&lower, tag) {
            return format!("{}{TRACKING_IMAGE}{}", &html[..at], &html[at..]);
        }
    }
    format!("<html><body>{TRACKING_IMAGE}{html}</body></html>")
}

/// The position right after the first `<tag …>` start tag in `lower`.
fn after_open_tag(lower: &str, tag: &str) -> Option<usize> {
    let start = lower.match_indices(tag).map(|(i, _)| i).find(|&i| {
        matches!(
            lower.as_bytes().get(i + tag.len()),
            Some(b'>' | b' ' | b'\t' | b'\n' | b'\r' | b'/')
        )
    })?;
    let close = lower[start..].find('>')?;
    Some(start + close + 1)
}

/// A campaign's `current_status` in the engine's terms (Constant Contact capitalises it; the
/// comparison ignores case). `Error` and `Removed` are neither a draft nor on their way.
pub fn campaign_status(status: &str) -> CampaignStatus {
    match status.to_ascii_lowercase().as_str() {
        "draft" => CampaignStatus::Draft,
        "scheduled" => CampaignStatus::Scheduled,
        "executing" => CampaignStatus::Sending,
        "done" => CampaignStatus::Sent,
        _ => CampaignStatus::Other(status.to_owned()),
    }
}

fn remote(id: String, name: String, status: &str) -> RemoteCampaign {
    RemoteCampaign {
        id,
        status: campaign_status(status),
        title: name,
        // `GET /emails/{id}` counts nobody; the reports would, at a call each.
        recipient_count: None,
        emails_sent: 0,
    }
}

fn primary_activity(campaign: &wire::Campaign) -> Option<String> {
    campaign
        .campaign_activities
        .iter()
        .find(|a| a.role == "primary_email")
        .map(|a| a.campaign_activity_id.clone())
}

/// Whether `address` is among `confirmed` (lower-cased).
fn is_confirmed(confirmed: &[String], address: &str) -> bool {
    let wanted = address.trim().to_lowercase();
    confirmed.contains(&wanted)
}

/// The first of the from and reply-to addresses that is not confirmed, with its role.
fn unconfirmed_sender<'a>(
    confirmed: &[String],
    from: &'a str,
    reply_to: &'a str,
) -> Option<(&'a str, &'static str)> {
    if from.trim().eq_ignore_ascii_case(reply_to.trim()) {
        return (!is_confirmed(confirmed, from)).then_some((from, "from and reply-to address"));
    }
    [(from, "from address"), (reply_to, "reply-to address")]
        .into_iter()
        .find(|(address, _)| !is_confirmed(confirmed, address))
}

fn store_error(e: &crate::store::StoreError) -> ErrorKind {
    ErrorKind::Store {
        detail: crate::error_chain(e),
    }
}

impl ConstantContactClient {
    /// Creates the campaign: the from and reply-to addresses are checked against the account's
    /// confirmed emails first (`GET /account/emails?confirm_status=CONFIRMED`; either one not
    /// confirmed → [`ErrorKind::UnconfirmedSender`], nothing created), then `POST /emails` (name
    /// [`campaign_name`] of the title, one custom code activity with a placeholder body), then the
    /// primary activity is written whole with the audience's list (`PUT
    /// /emails/activities/{id}`). The engine has no from address of its own: the campaign's
    /// reply-to address is its from address too. A segment is refused (Constant Contact audiences
    /// have no tags in this version). Not idempotent: a timeout or 5xx of the POST is reported,
    /// not retried (find the campaign by its title with
    /// [`ConstantContactClient::campaigns_titled`]).
    #[tracing::instrument(skip_all, fields(list_id = %campaign.list_id))]
    pub async fn create_campaign(
        &self,
        campaign: &NewCampaign<'_>,
    ) -> Result<RemoteCampaign, ConstantContactError> {
        const OP: &str = "createEmailCampaign";
        let list_id = campaign.list_id;
        let refuse = |kind| ConstantContactError::new(OP, kind).on_list(list_id);
        if let Some(segment) = campaign.segment_id {
            return Err(refuse(segment_refusal(segment)));
        }
        let from_email = campaign.reply_to;
        check_sender_fields(campaign.from_name, from_email).map_err(&refuse)?;
        let confirmed = self.confirmed_senders().await?;
        if let Some((address, role)) = unconfirmed_sender(&confirmed, from_email, campaign.reply_to)
        {
            return Err(refuse(ErrorKind::UnconfirmedSender {
                address: address.to_owned(),
                role,
            }));
        }
        let name = campaign_name(campaign.title);
        let call = self
            .json(
                OP,
                Method::POST,
                &["emails"],
                &wire::CreateEmailCampaign {
                    name: &name,
                    email_campaign_activities: [wire::NewEmailActivity {
                        format_type: 5,
                        from_name: campaign.from_name,
                        from_email,
                        reply_to_email: campaign.reply_to,
                        subject: campaign.subject,
                        html_content: PLACEHOLDER_HTML,
                    }],
                },
                false,
            )?
            .on_list(list_id);
        let created: wire::Campaign =
            self.execute(&call, decode_json)
                .await
                .map_err(|e| match e.kind() {
                    ErrorKind::Conflict { detail } => refuse(ErrorKind::Conflict {
                        detail: format!(
                            "{detail}; a campaign named `{name}` exists already: push again with the same key to carry on with it, or use another key"
                        ),
                    }),
                    _ => e,
                })?;
        let malformed = |detail: String| refuse(ErrorKind::MalformedResponse { detail });
        if created.campaign_id.is_empty() {
            return Err(malformed("the created campaign has no campaign_id".into()));
        }
        let activity_id = primary_activity(&created).ok_or_else(|| {
            malformed(format!(
                "campaign {} has no primary_email activity",
                created.campaign_id
            ))
        })?;
        let activity = wire::EmailActivity {
            from_name: campaign.from_name.to_owned(),
            from_email: from_email.to_owned(),
            reply_to_email: campaign.reply_to.to_owned(),
            subject: campaign.subject.to_owned(),
            html_content: Some(PLACEHOLDER_HTML.to_owned()),
            contact_list_ids: vec![list_id.to_owned()],
            ..wire::EmailActivity::default()
        };
        self.put_activity(&activity_id, &activity)
            .await
            .map_err(|e| e.on_list(list_id))?;
        Ok(remote(
            created.campaign_id,
            created.name,
            &created.current_status,
        ))
    }

    /// Reads a campaign (`GET /emails/{id}`): its status decides whether a send may go out.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn campaign(
        &self,
        campaign_id: &str,
    ) -> Result<RemoteCampaign, ConstantContactError> {
        let found = self.email_campaign(campaign_id).await?;
        let id = if found.campaign_id.is_empty() {
            campaign_id.to_owned()
        } else {
            found.campaign_id
        };
        Ok(remote(id, found.name, &found.current_status))
    }

    /// The account's campaigns named [`campaign_name`]`(title)` (`GET /emails`, pages of 500;
    /// names are unique per account, so `list_id` filters nothing there), a removed one last. How
    /// a push that crashed between create and recording the id finds the campaign it made. A
    /// found draft whose activity has no list yet (the create stopped between its POST and its
    /// PUT) gets `list_id` now, so the push can carry on with it.
    #[tracing::instrument(skip_all, fields(list_id = %list_id))]
    pub async fn campaigns_titled(
        &self,
        list_id: &str,
        title: &str,
    ) -> Result<Vec<RemoteCampaign>, ConstantContactError> {
        const OP: &str = "getAllEmailCampaigns";
        let name = campaign_name(title);
        let limit = super::MAX_PAGE_SIZE.to_string();
        let mut call = self
            .get(OP, &["emails"], &[("limit", &limit)])
            .on_list(list_id);
        let mut found = Vec::new();
        loop {
            let page: wire::CampaignsPage = self.execute(&call, decode_json).await?;
            found.extend(page.campaigns.into_iter().filter(|c| c.name == name));
            match next_href(page.links) {
                Some(href) => {
                    call.url = self
                        .next_url(&href)
                        .map_err(|k| ConstantContactError::new(OP, k).on_list(list_id))?;
                }
                None => break,
            }
        }
        found.sort_by_key(|c| c.current_status.eq_ignore_ascii_case("removed"));
        let mut out = Vec::with_capacity(found.len());
        for c in found {
            if campaign_status(&c.current_status) == CampaignStatus::Draft {
                self.finish_create(&c.campaign_id, list_id).await?;
            }
            out.push(remote(c.campaign_id, c.name, &c.current_status));
        }
        Ok(out)
    }

    /// Gives a draft's primary activity the list `list_id` when it has no recipients yet.
    async fn finish_create(
        &self,
        campaign_id: &str,
        list_id: &str,
    ) -> Result<(), ConstantContactError> {
        let activity_id = self.primary_activity_id(campaign_id).await?;
        let mut activity = self.activity(&activity_id).await?;
        if !activity.contact_list_ids.is_empty() || !activity.segment_ids.is_empty() {
            return Ok(());
        }
        tracing::info!(campaign_id = %campaign_id, "The campaign found has no list yet (its creation stopped half-way); adding the audience's list.");
        activity.contact_list_ids = vec![list_id.to_owned()];
        self.put_activity(&activity_id, &activity)
            .await
            .map_err(|e| e.on_list(list_id))
    }

    /// Sets the email's HTML: the primary activity is read and written back whole with `html`
    /// ([`TRACKING_IMAGE`] added inside `<body>` when missing). Idempotent. A custom code email
    /// has no plain-text part to set, so `plain_text` is not sent (Constant Contact makes the
    /// text version itself).
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn set_campaign_content(
        &self,
        campaign_id: &str,
        html: &str,
        plain_text: &str,
    ) -> Result<(), ConstantContactError> {
        let _ = plain_text;
        let html = with_tracking_image(html);
        let chars = html.chars().count();
        if chars > MAX_HTML {
            return Err(ConstantContactError::new(
                "updateEmailCampaignActivity",
                ErrorKind::InvalidArgument {
                    detail: format!(
                        "the HTML is {chars} characters long; Constant Contact takes at most {MAX_HTML}"
                    ),
                },
            ));
        }
        let activity_id = self.primary_activity_id(campaign_id).await?;
        let mut activity = self.activity(&activity_id).await?;
        activity.html_content = Some(html);
        self.put_activity(&activity_id, &activity).await
    }

    /// Whether the campaign can go out as it is: its from and reply-to addresses are confirmed
    /// emails of the account, and its activity has a contact list. One item per check, naming
    /// what is wrong.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn send_checklist(
        &self,
        campaign_id: &str,
    ) -> Result<SendChecklist, ConstantContactError> {
        let confirmed = self.confirmed_senders().await?;
        let activity_id = self.primary_activity_id(campaign_id).await?;
        let activity = self.activity(&activity_id).await?;
        let item = |ok: bool, heading: &str, details: String| ChecklistItem {
            kind: if ok { "success" } else { "error" }.to_owned(),
            heading: heading.to_owned(),
            details,
        };
        let mut items = Vec::new();
        for (heading, address) in [
            ("From address", &activity.from_email),
            ("Reply-to address", &activity.reply_to_email),
        ] {
            items.push(if address.trim().is_empty() {
                item(false, heading, "the email has none".to_owned())
            } else if is_confirmed(&confirmed, address) {
                item(
                    true,
                    heading,
                    format!("{address} is a confirmed email address of the account"),
                )
            } else {
                item(
                    false,
                    heading,
                    format!(
                        "{address} is not a confirmed email address of the account: add it under My Settings in Constant Contact, which emails it a confirmation link, and click the link"
                    ),
                )
            });
        }
        items.push(if activity.contact_list_ids.is_empty() {
            item(
                false,
                "Recipients",
                "the email has no contact list to go to".to_owned(),
            )
        } else {
            item(
                true,
                "Recipients",
                format!("contact list {}", activity.contact_list_ids.join(", ")),
            )
        });
        Ok(SendChecklist {
            is_ready: items.iter().all(|i| i.kind == "success"),
            items,
        })
    }

    /// Sends the email to `emails` as a test (`POST /emails/activities/{id}/tests`, 204). At most
    /// [`MAX_TEST_ADDRESSES`] a call and [`TEST_EMAILS_PER_DAY`] a UTC day (counted in the state
    /// DB before sending; refused up front beyond that with [`ErrorKind::TestSendLimit`]). Not
    /// retried after a timeout: a repeated test mail is harmless but counts against the day.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn test_campaign(
        &self,
        campaign_id: &str,
        emails: &[Email],
    ) -> Result<(), ConstantContactError> {
        const OP: &str = "testSendEmailCampaignActivity";
        if emails.is_empty() {
            return Ok(());
        }
        let refuse =
            |detail: String| ConstantContactError::new(OP, ErrorKind::TestSendLimit { detail });
        if emails.len() > MAX_TEST_ADDRESSES {
            return Err(refuse(format!(
                "{} addresses given; Constant Contact takes at most {MAX_TEST_ADDRESSES} a call",
                emails.len()
            )));
        }
        let now = self.store.now();
        let day = now.date_naive();
        let asked = emails.len() as u64;
        let used = self
            .store
            .api_budget_used(TEST_BUDGET, day)
            .await
            .map_err(|e| ConstantContactError::new(OP, store_error(&e)))?;
        let spent = || {
            refuse(format!(
                "{used} of the account's {TEST_EMAILS_PER_DAY} test emails of the UTC day are used and {asked} more were asked for; more can go out from {}",
                api_time(next_midnight(now))
            ))
        };
        if used + asked > u64::from(TEST_EMAILS_PER_DAY) {
            return Err(spent());
        }
        let activity_id = self.primary_activity_id(campaign_id).await?;
        for _ in 0..asked {
            let taken = self
                .store
                .take_api_budget(TEST_BUDGET, day, TEST_EMAILS_PER_DAY)
                .await
                .map_err(|e| ConstantContactError::new(OP, store_error(&e)))?;
            if !taken {
                // Another process took the rest since the count above.
                return Err(spent());
            }
        }
        let call = self.json(
            OP,
            Method::POST,
            &["emails", "activities", &activity_id, "tests"],
            &wire::TestSend {
                email_addresses: emails.iter().map(Email::original).collect(),
            },
            false,
        )?;
        self.execute(&call, |_| Ok(())).await
    }

    /// Sends the campaign now (`POST /emails/activities/{id}/schedules` with `"0"`, 201).
    /// Irreversible and not idempotent: never retried once it may have reached Constant Contact;
    /// after a timeout or 5xx, read the status with [`ConstantContactClient::campaign`] instead.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn send_campaign(&self, campaign_id: &str) -> Result<(), ConstantContactError> {
        self.schedule(campaign_id, "0").await
    }

    /// Schedules the campaign for `at` (ISO-8601 UTC); like [`ConstantContactClient::send_campaign`]
    /// it is not retried once it may have reached Constant Contact.
    #[tracing::instrument(skip_all, fields(campaign_id = %campaign_id))]
    pub async fn schedule_campaign(
        &self,
        campaign_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), ConstantContactError> {
        self.schedule(campaign_id, &api_time(at)).await
    }

    /// Always refused: Constant Contact audiences have no segments in this version.
    pub async fn segment_id(
        &self,
        list_id: &str,
        name: &str,
    ) -> Result<Option<String>, ConstantContactError> {
        Err(ConstantContactError::new("segment", segment_refusal(name)).on_list(list_id))
    }

    async fn schedule(&self, campaign_id: &str, date: &str) -> Result<(), ConstantContactError> {
        let activity_id = self.primary_activity_id(campaign_id).await?;
        let call = self.json(
            "scheduleEmailCampaignActivity",
            Method::POST,
            &["emails", "activities", &activity_id, "schedules"],
            &wire::ScheduleActivity {
                scheduled_date: date,
            },
            false,
        )?;
        self.execute(&call, |_| Ok(())).await
    }

    /// The account's confirmed emails, lower-cased.
    async fn confirmed_senders(&self) -> Result<Vec<String>, ConstantContactError> {
        let call = self.get(
            "getAllAccountEmailAddresses",
            &["account", "emails"],
            &[("confirm_status", "CONFIRMED")],
        );
        let emails: Vec<wire::AccountEmail> = self.execute(&call, decode_json).await?;
        Ok(emails
            .into_iter()
            .filter(|e| {
                e.confirm_status
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case("CONFIRMED"))
            })
            .map(|e| e.email_address.trim().to_lowercase())
            .collect())
    }

    async fn email_campaign(
        &self,
        campaign_id: &str,
    ) -> Result<wire::Campaign, ConstantContactError> {
        let call = self.get("getEmailCampaignById", &["emails", campaign_id], &[]);
        self.execute(&call, decode_json).await
    }

    /// The id of the campaign's `primary_email` activity (`GET /emails/{id}`).
    async fn primary_activity_id(&self, campaign_id: &str) -> Result<String, ConstantContactError> {
        let campaign = self.email_campaign(campaign_id).await?;
        primary_activity(&campaign).ok_or_else(|| {
            ConstantContactError::new(
                "getEmailCampaignById",
                ErrorKind::MalformedResponse {
                    detail: format!("campaign {campaign_id} has no primary_email activity"),
                },
            )
        })
    }

    async fn activity(
        &self,
        activity_id: &str,
    ) -> Result<wire::EmailActivity, ConstantContactError> {
        let call = self.get(
            "getEmailCampaignActivity",
            &["emails", "activities", activity_id],
            &[],
        );
        self.execute(&call, decode_json).await
    }

    /// Writes the activity whole (`PUT /emails/activities/{id}`; idempotent).
    async fn put_activity(
        &self,
        activity_id: &str,
        activity: &wire::EmailActivity,
    ) -> Result<(), ConstantContactError> {
        let call = self.json(
            "updateEmailCampaignActivity",
            Method::PUT,
            &["emails", "activities", activity_id],
            activity,
            true,
        )?;
        self.execute(&call, |_| Ok(())).await
    }
}

/// Why a segment is refused for a Constant Contact audience.
fn segment_refusal(segment: &str) -> ErrorKind {
    ErrorKind::InvalidArgument {
        detail: format!(
            "segment `{segment}`: Constant Contact audiences cannot be narrowed to a segment in this version (tags are not synced there yet); push to the whole list, without a segment"
        ),
    }
}

/// The from name and sender address within Constant Contact's limits.
fn check_sender_fields(from_name: &str, from_email: &str) -> Result<(), ErrorKind> {
    let invalid = |detail: String| Err(ErrorKind::InvalidArgument { detail });
    let name_chars = from_name.trim().chars().count();
    if name_chars == 0 || name_chars > MAX_FROM_NAME {
        return invalid(format!(
            "the from name must be 1 to {MAX_FROM_NAME} characters (it is {name_chars})"
        ));
    }
    let email_chars = from_email.chars().count();
    if email_chars > MAX_SENDER_EMAIL {
        return invalid(format!(
            "the sender address {from_email} is {email_chars} characters long; Constant Contact takes at most {MAX_SENDER_EMAIL}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_title_becomes_a_stable_name_of_80_characters() {
        let short = "mailbridge:spring-2026";
        assert_eq!(campaign_name(short), short);
        let long = format!("mailbridge:{}", "k".repeat(128));
        let name = campaign_name(&long);
        assert_eq!(name.chars().count(), MAX_CAMPAIGN_NAME);
        assert_eq!(name, campaign_name(&long));
        assert!(name.starts_with("mailbridge:kkk"));
        let other = campaign_name(&format!("mailbridge:{}j", "k".repeat(127)));
        assert_ne!(name, other, "titles differing only at the end keep apart");
        let exactly = format!("mailbridge:{}", "k".repeat(69));
        assert_eq!(campaign_name(&exactly), exactly);
    }

    #[test]
    fn the_tracking_image_goes_inside_the_body_once() {
        assert_eq!(
            with_tracking_image("<p>Hi</p>"),
            "<html><body>[[trackingImage]]<p>Hi</p></body></html>"
        );
        assert_eq!(
            with_tracking_image("<HTML><Body class=\"x\"><p>é</p></BODY></HTML>"),
            "<HTML><Body class=\"x\">[[trackingImage]]<p>é</p></BODY></HTML>"
        );
        assert_eq!(
            with_tracking_image("<html><bodyguard/><p>x</p></html>"),
            "<html>[[trackingImage]]<bodyguard/><p>x</p></html>"
        );
        let has = "<html><body><p>x</p>[[trackingImage]]</body></html>";
        assert_eq!(with_tracking_image(has), has);
    }

    #[test]
    fn statuses_map_to_the_engines() {
        assert_eq!(campaign_status("Draft"), CampaignStatus::Draft);
        assert_eq!(campaign_status("Scheduled"), CampaignStatus::Scheduled);
        assert_eq!(campaign_status("Executing"), CampaignStatus::Sending);
        assert_eq!(campaign_status("DONE"), CampaignStatus::Sent);
        assert_eq!(
            campaign_status("Removed"),
            CampaignStatus::Other("Removed".into())
        );
        assert_eq!(
            campaign_status("Error"),
            CampaignStatus::Other("Error".into())
        );
    }

    #[test]
    fn a_sender_must_be_confirmed_in_each_role() {
        let confirmed = vec!["club@example.org".to_owned()];
        assert_eq!(
            unconfirmed_sender(&confirmed, "Club@Example.org", "club@example.org"),
            None
        );
        assert_eq!(
            unconfirmed_sender(&confirmed, "sec@example.org", "sec@example.org"),
            Some(("sec@example.org", "from and reply-to address"))
        );
        assert_eq!(
            unconfirmed_sender(&confirmed, "club@example.org", "sec@example.org"),
            Some(("sec@example.org", "reply-to address"))
        );
    }
}
