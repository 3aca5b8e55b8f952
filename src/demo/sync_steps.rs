//! The sync part of `mailbridge demo`: a real sync against the simulator with its progress bar,
//! then a reader unsubscribing and an address bouncing at the provider, then the next nightly sync
//! pulling both back into the member DB, with the member rows before and after.

use std::path::Path;

use anyhow::Context;
use futures::TryStreamExt;

use crate::app::App;
use crate::progress::Progress;
use crate::source::MemberSource;
use crate::sync::apply::{SyncContext, SyncOptions, sync_audience};

/// Runs the sync steps of the demo. `config_path` must point the Mailchimp provider at the
/// simulator whose root URL (where `/_sim` lives) is `simulator_url`; `list_id` is the list the
/// demo created there (the config's first audience).
pub async fn demo_sync_steps(
    config_path: &Path,
    simulator_url: &str,
    list_id: &str,
) -> anyhow::Result<()> {
    let app = App::load(config_path)?;
    let mapping = app.mapping()?;
    let audience = app
        .config
        .audiences
        .iter()
        .find(|a| a.list_id == list_id)
        .context("no configured audience uses the demo list")?;
    let providers = app.providers().await?;
    let store = app.migrated_store().await?;
    let source = app.member_source().await?;
    let ctx = SyncContext {
        mapping,
        store,
        source: &source,
        providers,
    };

    println!("4. The first real sync (`mailbridge sync`): pull, merge fields, batched push\n");
    let report = sync_audience(&ctx, audience, SyncOptions::default(), &Progress::auto()).await?;
    println!(
        "   created {}, updated {}, archived {}, skipped {} invalid, {} failed; {} write call(s), {} read(s)\n",
        report.created,
        report.updated,
        report.archived,
        report.skipped_invalid,
        report.failed,
        report.api_calls.write,
        report.api_calls.read
    );

    let picked: Vec<(String, String)> = sqlx::query_as(
        "SELECT member_key, email FROM contacts WHERE audience = $1 AND remote_status = 'subscribed' ORDER BY synced_at, member_key LIMIT 2",
    )
    .bind(&audience.name)
    .fetch_all(store.pool())
    .await
    .context("cannot read the synced contacts")?;
    let [(reader_key, reader), (bounce_key, bounced)] = picked.as_slice() else {
        println!(
            "   (fewer than two contacts were synced; skipping the unsubscribe and bounce steps)"
        );
        return Ok(());
    };
    let keys = [reader_key.as_str(), bounce_key.as_str()];
    println!("5. Member rows before:");
    print_rows(&source, &keys).await?;

    println!("\n6. At the provider, {reader} unsubscribes and {bounced} hard-bounces (cleaned)");
    super::unsubscribe_and_bounce(simulator_url, list_id, reader, bounced).await?;

    println!("\n7. The next nightly sync pulls both back before it pushes anything\n");
    let report = sync_audience(&ctx, audience, SyncOptions::default(), &Progress::auto()).await?;
    println!(
        "   {} unsubscribe(s) and {} bounce(s) pulled; {} write call(s)\n",
        report.unsubscribes_pulled, report.bounces_pulled, report.api_calls.write
    );
    println!("8. Member rows after (written back by the mapping's writeback statements):");
    print_rows(&source, &keys).await?;
    let suppressed: Vec<(String, String)> =
        sqlx::query_as("SELECT email, reason FROM suppressions ORDER BY email")
            .fetch_all(store.pool())
            .await
            .context("cannot read suppressions")?;
    println!("\n   Suppression list: {suppressed:?}\n");
    app.close().await;
    Ok(())
}

/// Prints the reference-schema columns of some members.
pub(super) async fn print_rows(source: &MemberSource, keys: &[&str]) -> anyhow::Result<()> {
    let ids: Vec<String> = keys
        .iter()
        .filter(|k| k.bytes().all(|b| b.is_ascii_digit()))
        .map(|k| k.to_string())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id, email, newsletter, email_status FROM members WHERE id IN ({}) ORDER BY id",
        ids.join(", ")
    );
    println!(
        "   {:<6} {:<36} {:<11} email_status",
        "id", "email", "newsletter"
    );
    let mut rows = source.stream(&sql);
    while let Some(row) = rows.try_next().await? {
        let cell = |i: usize| {
            row.get(i)
                .and_then(|v| v.as_text())
                .map(|t| t.into_owned())
                .unwrap_or_else(|| "NULL".into())
        };
        println!(
            "   {:<6} {:<36} {:<11} {}",
            cell(0),
            cell(1),
            cell(2),
            cell(3)
        );
    }
    Ok(())
}
