//! The Constant Contact part of `mailbridge demo`: the account connected with a refresh token
//! (`mailbridge auth constant-contact --refresh-token -`), the members synced to a Constant
//! Contact list through JSON imports at the vendor's 4 requests a second, a campaign sent from
//! Constant Contact's side, then a reader opting out and an address bouncing there, and a
//! `mailbridge pull` bringing both back by polling (Constant Contact has no contact webhooks).

use std::path::Path;

use anyhow::Context;
use secrecy::SecretString;

use crate::app::App;
use crate::progress::Progress;
use crate::sync::apply::{SyncContext, SyncOptions, sync_audience};

/// The demo's Constant Contact audience in the mapping: the newsletter's members and fields,
/// without its tags (this version syncs no tags to Constant Contact).
pub const CC_MAPPING: &str = r#"
# The demo's Constant Contact audience: the same members and fields, no tags.
[audiences.cc-newsletter]
where = [
  { column = "membership", not_in = ["lapsed"] },
  { column = "email_status", equals = "ok" },
]

[[audiences.cc-newsletter.merge_fields]]
tag = "FNAME"
name = "First name"
column = "first_name"
type = "text"

[[audiences.cc-newsletter.merge_fields]]
tag = "LNAME"
name = "Last name"
column = "last_name"
type = "text"
"#;

/// The account the simulator connects, and the list it created.
pub struct CcAccount {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub list_id: String,
}

/// Connects an app at the simulator and creates the demo's Constant Contact list.
pub async fn create_account(simulator_url: &str) -> anyhow::Result<CcAccount> {
    let http = reqwest::Client::new();
    let base = simulator_url.trim_end_matches('/');
    let grant: serde_json::Value = post_json(
        &http,
        &format!("{base}/_sim/constant-contact/connect"),
        &serde_json::json!({}),
    )
    .await?;
    let list: serde_json::Value = post_json(
        &http,
        &format!("{base}/_sim/constant-contact/lists"),
        &serde_json::json!({"name": "Riverside Rowing Club newsletter"}),
    )
    .await?;
    let text = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the simulator's answer has no `{key}`: {v}"))
    };
    Ok(CcAccount {
        client_id: text(&grant, "client_id")?,
        client_secret: text(&grant, "client_secret")?,
        refresh_token: text(&grant, "refresh_token")?,
        list_id: text(&list, "list_id")?,
    })
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    http.post(url)
        .json(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("the simulator refused POST {url}"))?
        .json()
        .await
        .with_context(|| format!("the simulator's answer to POST {url} is not JSON"))
}

/// Runs the Constant Contact steps (numbered from `first`); `account` is what
/// [`create_account`] made, and the config's audience `cc-newsletter` uses its list.
pub async fn demo_cc_steps(
    config_path: &Path,
    simulator_url: &str,
    account: &CcAccount,
    first: u32,
) -> anyhow::Result<()> {
    let app = App::load(config_path)?;
    let cc = app
        .config
        .constant_contact
        .clone()
        .context("the demo config has no [providers.constant_contact]")?;
    let audience = app
        .config
        .audiences
        .iter()
        .find(|a| a.name == "cc-newsletter")
        .context("the demo config has no audience cc-newsletter")?;
    let store = app.migrated_store().await?;
    let step = |n: u32| first + n;

    println!(
        "{}. Constant Contact: `mailbridge auth constant-contact --refresh-token -` stores the account's tokens",
        step(0)
    );
    crate::providers::constant_contact::store_refresh_token(
        &cc,
        store,
        SecretString::from(account.refresh_token.clone()),
    )
    .await
    .context("cannot connect the demo's Constant Contact account")?;
    println!(
        "   the refresh token given was spent once; the rotated pair is in the state DB (it rotates again on every refresh)\n"
    );

    println!(
        "{}. `mailbridge sync --audience cc-newsletter`: opt-outs pulled first, then JSON imports (40,000 contacts or 4 MB each) at 4 requests/s\n",
        step(1)
    );
    let mapping = app.mapping()?;
    let providers = app.providers().await?;
    let source = app.member_source().await?;
    let ctx = SyncContext {
        mapping,
        store,
        source: &source,
        providers,
    };
    let report = sync_audience(&ctx, audience, SyncOptions::default(), &Progress::auto()).await?;
    println!(
        "   created {}, updated {}, skipped {} invalid, {} failed; {} write call(s) (imports), {} read(s) (polls, fields, pull)\n",
        report.created,
        report.updated,
        report.skipped_invalid,
        report.failed,
        report.api_calls.write,
        report.api_calls.read
    );

    let picked: Vec<(String, String)> = sqlx::query_as(
        "SELECT member_key, email FROM contacts WHERE audience = $1 AND remote_status <> 'archived' ORDER BY member_key LIMIT 2",
    )
    .bind(&audience.name)
    .fetch_all(store.pool())
    .await
    .context("cannot read the synced contacts")?;
    let [(reader_key, reader), (bounce_key, bounced)] = picked.as_slice() else {
        println!("   (fewer than two contacts were synced; skipping the opt-out and bounce steps)");
        app.close().await;
        return Ok(());
    };
    println!(
        "{}. In Constant Contact, a campaign goes out; {reader} opts out and {bounced} bounces (code B: no such address)",
        step(2)
    );
    send_campaign_at_simulator(simulator_url, &account.list_id).await?;
    let http = reqwest::Client::new();
    let base = simulator_url.trim_end_matches('/');
    for (url, body) in [
        (
            format!("{base}/_sim/constant-contact/contacts/{reader}/unsubscribe"),
            serde_json::json!({}),
        ),
        (
            format!("{base}/_sim/constant-contact/contacts/{bounced}/bounce"),
            serde_json::json!({"code": "B"}),
        ),
    ] {
        post_json(&http, &url, &body).await?;
    }

    println!(
        "\n{}. `mailbridge pull --audience cc-newsletter` polls them back (`serve` does it every `poll_every`)\n",
        step(3)
    );
    let options = SyncOptions {
        pull_only: true,
        ..SyncOptions::default()
    };
    let report = sync_audience(&ctx, audience, options, &Progress::hidden()).await?;
    println!(
        "   {} opt-out(s) and {} bounce(s) pulled; {} write call(s) to Constant Contact\n",
        report.unsubscribes_pulled, report.bounces_pulled, report.api_calls.write
    );
    println!("   Member rows after:");
    super::sync_steps::print_rows(&source, &[reader_key.as_str(), bounce_key.as_str()]).await?;
    let suppressed: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT email, reason, source FROM suppressions WHERE source LIKE 'constant_contact%' ORDER BY email",
    )
    .fetch_all(store.pool())
    .await
    .context("cannot read suppressions")?;
    println!("\n   Suppressed from Constant Contact: {suppressed:?}\n");
    app.close().await;
    Ok(())
}

/// Sends a campaign to the list from Constant Contact's side (as a club officer would in its
/// web app), through the simulator's `/v3` API with a grant of its own, so that a bounce has a
/// campaign to belong to.
async fn send_campaign_at_simulator(simulator_url: &str, list_id: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = simulator_url.trim_end_matches('/');
    let grant: serde_json::Value = post_json(
        &http,
        &format!("{base}/_sim/constant-contact/connect"),
        &serde_json::json!({}),
    )
    .await?;
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let token: serde_json::Value = http
        .post(format!("{base}/oauth2/default/v1/token"))
        .basic_auth(
            field(&grant, "client_id"),
            Some(field(&grant, "client_secret")),
        )
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", field(&grant, "refresh_token").as_str()),
        ])
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("the simulator refused the campaign sender's token")?
        .json()
        .await
        .context("the simulator's token answer is not JSON")?;
    let bearer = field(&token, "access_token");
    let activity = serde_json::json!({
        "format_type": 5,
        "from_name": "Riverside Rowing Club",
        "from_email": "club@example.org",
        "reply_to_email": "club@example.org",
        "subject": "Regatta weekend",
        "html_content": "<html><body>[[trackingImage]]<p>See you at the regatta.</p></body></html>",
    });
    let created: serde_json::Value = http
        .post(format!("{base}/v3/emails"))
        .bearer_auth(&bearer)
        .json(&serde_json::json!({"name": "Regatta weekend", "email_campaign_activities": [activity]}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("the simulator refused to create the campaign")?
        .json()
        .await
        .context("the simulator's campaign answer is not JSON")?;
    let activity_id = created["campaign_activities"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["role"] == "primary_email"))
        .and_then(|x| x["campaign_activity_id"].as_str())
        .context("the created campaign has no primary email activity")?
        .to_owned();
    let mut complete = activity;
    complete["contact_list_ids"] = serde_json::json!([list_id]);
    for (method, url, body) in [
        (
            reqwest::Method::PUT,
            format!("{base}/v3/emails/activities/{activity_id}"),
            complete,
        ),
        (
            reqwest::Method::POST,
            format!("{base}/v3/emails/activities/{activity_id}/schedules"),
            serde_json::json!({"scheduled_date": "0"}),
        ),
    ] {
        http.request(method, &url)
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("the simulator refused {url}"))?;
    }
    Ok(())
}
