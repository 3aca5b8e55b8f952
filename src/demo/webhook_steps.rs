//! The webhook part of `mailbridge demo`: the HTTP server of `mailbridge serve` runs in-process,
//! its webhook is registered with the simulator the way `sync` does it, then a reader unsubscribes
//! and an address is cleaned at the provider; both arrive as webhooks and land in the member DB
//! within a second, without waiting for a sync.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::app::App;
use crate::http::{self, AppState};

/// Runs the webhook steps. `config_path` is the demo config (without `[server]`; this adds it).
pub async fn demo_webhook_steps(
    config_path: &Path,
    simulator_url: &str,
    list_id: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let mut text = std::fs::read_to_string(config_path)?;
    text.push_str(&format!(
        "\n[server]\nbind = \"{addr}\"\nwebhook_secret = \"{secret}\"\npublic_url = \"http://{addr}\"\n"
    ));
    std::fs::write(config_path, text)?;
    let app = App::load(config_path)?;
    let audience = app
        .config
        .audiences
        .iter()
        .find(|a| a.list_id == list_id)
        .context("no configured audience uses the demo list")?
        .clone();
    let state = Arc::new(AppState::from_app(&app).await?);
    let server = http::start(listener, state.clone())?;
    http::serve::spawn_background(&state);
    println!("9. `mailbridge serve`, in-process on http://{addr}");
    let client = state
        .providers
        .require(audience.provider)
        .context("the demo config has no provider for its audience")?
        .clone();
    let endpoint = crate::providers::WebhookEndpoint::new(
        &format!("http://{addr}"),
        secrecy::SecretString::from(secret.clone()),
    );
    let done = client
        .ensure_webhook(&state.store, &audience, &endpoint)
        .await?;
    let signed = !state
        .store
        .signing_secrets(crate::providers::mailchimp::webhook::PROVIDER)
        .await
        .context("cannot read the stored signing secrets")?
        .is_empty();
    println!(
        "   the list webhook /webhooks/mailchimp/<secret> registered at the provider ({} created; sources.api = false)",
        done.created
    );
    println!(
        "   {}\n",
        if signed {
            "its signing secret is stored in the state DB: every delivery must carry a valid X-Mailchimp-Signature"
        } else {
            "no signing secret: each delivery is confirmed with the provider's API before it is applied"
        }
    );

    let picked: Vec<(String, String)> = sqlx::query_as(
        "SELECT member_key, email FROM contacts WHERE audience = $1 AND remote_status = 'subscribed' ORDER BY member_key LIMIT 2",
    )
    .bind(&audience.name)
    .fetch_all(state.store.pool())
    .await
    .context("cannot read the synced contacts")?;
    let [(reader_key, reader), (bounce_key, bounced)] = picked.as_slice() else {
        println!("   (fewer than two subscribed contacts; skipping the webhook steps)\n");
        server.shutdown().await?;
        return Ok(());
    };
    println!("10. At the provider, {reader} unsubscribes and {bounced} is cleaned (hard bounce);");
    println!("    the provider calls the webhook at once\n");
    let source = state.member_source().await?;
    let started = Instant::now();
    let since = crate::store::now_text();
    super::unsubscribe_and_bounce(simulator_url, list_id, reader, bounced).await?;
    let status_of = |key: &str| {
        let key = key.to_owned();
        let source = source.clone();
        async move {
            let sql = format!(
                "SELECT email_status FROM members WHERE id = {}",
                key.parse::<i64>().unwrap_or(-1)
            );
            let mut rows = source.stream(&sql);
            futures::TryStreamExt::try_next(&mut rows)
                .await
                .ok()
                .flatten()
                .and_then(|row| {
                    row.first()
                        .and_then(|v| v.as_text())
                        .map(|t| t.into_owned())
                })
        }
    };
    let deadline = started + Duration::from_secs(5);
    let mut landed = [None, None];
    while landed.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, (key, want)) in [(reader_key, "unsubscribed"), (bounce_key, "cleaned")]
            .into_iter()
            .enumerate()
        {
            if landed[i].is_none() && status_of(key).await.as_deref() == Some(want) {
                landed[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("11. In the member DB (written back by the server's worker, no sync involved):");
    for (i, (key, email, want)) in [
        (reader_key, reader, "unsubscribed"),
        (bounce_key, bounced, "cleaned"),
    ]
    .into_iter()
    .enumerate()
    {
        match landed[i] {
            Some(t) => println!(
                "    member {key:<6} {email:<36} email_status = {want:<12} after {:>4} ms",
                t.as_millis()
            ),
            None => println!("    member {key:<6} {email:<36} did not change within 5 s"),
        }
    }
    let events: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT event_type, email, outcome FROM provider_events WHERE received_at >= $1 ORDER BY id",
    )
    .bind(&since)
    .fetch_all(state.store.pool())
    .await
    .context("cannot read provider events")?;
    println!("    provider_events: {events:?}\n");
    server.shutdown().await?;
    Ok(())
}
