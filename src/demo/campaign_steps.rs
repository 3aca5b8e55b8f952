//! The campaign part of `mailbridge demo`: the admin pushes a newsletter (preflight sync, create,
//! content, checklist, send), presses "send" again (nothing goes out twice), and the simulator's
//! delivery log shows one campaign and who received it, with no opted-out address among them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use crate::app::App;
use crate::campaigns::{PushContext, PushRequest, push};
use crate::progress::Progress;

const NEWSLETTER: &str = "<h1>Spring news</h1>\
<p>The boats are back on the water: Saturday outings start at 9:00.</p>\
<p>Read more on <a href=\"https://club.example/news\">the club site</a>.</p>";

/// Runs the campaign steps against the simulator whose root URL is `simulator_url`.
pub async fn demo_campaign_steps(config_path: &Path, simulator_url: &str) -> anyhow::Result<()> {
    let app = App::load(config_path)?;
    let audience = app
        .config
        .audiences
        .first()
        .context("the demo config has no audience")?;
    let providers = app.providers().await?;
    let store = app.store().await?;
    let source = app.member_source().await?;
    let progress = Progress::hidden();
    let ctx = PushContext {
        config: &app.config,
        mapping: app.mapping()?,
        store,
        source: &source,
        providers,
        progress: &progress,
        after_create: None,
        stage: None,
    };
    let request = PushRequest {
        audience: audience.name.clone(),
        subject: "Spring news".into(),
        html: NEWSLETTER.into(),
        from_name: Some("Riverside Rowing Club".into()),
        reply_to: Some("secretary@club.example".into()),
        ..PushRequest::default()
    };
    let http = reqwest::Client::new();
    let sim = simulator_url.trim_end_matches('/');

    println!(
        "12. The admin sends the spring newsletter (`mailbridge campaign push --audience {} --subject \"Spring news\" --html spring.html`)",
        audience.name
    );
    sim_post(&http, &format!("{sim}/_sim/stats/reset")).await?;
    let started = Instant::now();
    let first = push(&ctx, &request, None).await?;
    let elapsed = started.elapsed();
    let calls = campaign_calls(&http, sim).await?;
    println!(
        "   preflight sync first, then create → content → checklist → status → send: {} Mailchimp campaign call(s), {} ms in all",
        calls,
        elapsed.as_millis()
    );
    println!(
        "   campaign `{}`: {} to {} member(s) (Mailchimp id {})\n",
        first.record.key,
        first.record.state,
        first.record.recipients.unwrap_or(0),
        first.record.provider_campaign_id.as_deref().unwrap_or("-")
    );

    println!("13. The admin presses \"send\" again (same content, so the same key)");
    sim_post(&http, &format!("{sim}/_sim/stats/reset")).await?;
    let again = push(&ctx, &request, None).await?;
    println!(
        "   campaign `{}` is already {}: nothing sent again, {} Mailchimp campaign call(s)\n",
        again.record.key,
        again.record.state,
        campaign_calls(&http, sim).await?
    );

    let deliveries: Vec<Value> = sim_get(&http, sim, "deliveries").await?;
    let campaigns: BTreeSet<&str> = deliveries
        .iter()
        .filter_map(|d| d["campaign_id"].as_str())
        .collect();
    let recipients: Vec<String> = deliveries
        .iter()
        .filter_map(|d| d["email"].as_str())
        .map(str::to_lowercase)
        .collect();
    let unique: BTreeSet<&str> = recipients.iter().map(String::as_str).collect();
    let opted_out: Vec<(String, String)> = sqlx::query_as(
        "SELECT email, remote_status FROM contacts WHERE audience = $1 AND remote_status <> 'subscribed' ORDER BY email",
    )
    .bind(&audience.name)
    .fetch_all(store.pool())
    .await
    .context("cannot read the contacts")?;
    let leaked: Vec<&(String, String)> = opted_out
        .iter()
        .filter(|(email, _)| unique.contains(email.to_lowercase().as_str()))
        .collect();
    println!(
        "14. At the provider: {} campaign(s), {} deliveries to {} different member(s)",
        campaigns.len(),
        recipients.len(),
        unique.len()
    );
    for email in unique.iter().take(5) {
        println!("   {email}");
    }
    if unique.len() > 5 {
        println!("   … and {} more", unique.len() - 5);
    }
    println!(
        "   opted out or cleaned in the audience: {} address(es); among the recipients: {}\n",
        opted_out.len(),
        if leaked.is_empty() {
            "none".to_owned()
        } else {
            format!("{leaked:?}")
        }
    );
    app.close().await;
    if !leaked.is_empty() || campaigns.len() != 1 || recipients.len() != unique.len() {
        anyhow::bail!("the campaign demo broke a promise: see step 11");
    }
    Ok(())
}

async fn sim_post(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    http.post(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("the simulator refused POST {url}"))?;
    Ok(())
}

/// The JSON of the simulator's `GET /_sim/{what}`.
async fn sim_get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    sim: &str,
    what: &str,
) -> anyhow::Result<T> {
    http.get(format!("{sim}/_sim/{what}"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot read the simulator's {what}"))?
        .json()
        .await
        .with_context(|| format!("the simulator's {what} are not JSON"))
}

/// Campaign calls the simulator counted since the last stats reset.
async fn campaign_calls(http: &reqwest::Client, sim: &str) -> anyhow::Result<u64> {
    let stats: Value = sim_get(http, sim, "stats").await?;
    Ok(stats["by_route"]
        .as_object()
        .map(|routes| {
            routes
                .iter()
                .filter(|(route, _)| route.contains("/campaigns"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0))
}
