//! `mailbridge demo`: a self-contained tour on embedded defaults, no credentials needed.

pub mod campaign_steps;
pub mod cc_steps;
pub mod relay_steps;
pub mod sample;
pub mod smtp_sink;
pub mod sync_steps;
pub mod webhook_steps;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::app::App;
use crate::config::DbUrl;
use crate::domain::new_run_id;
use crate::progress::Progress;
use crate::simulator::{Simulator, SimulatorHandle};
use crate::sync::{self, PlanOptions};

/// The shipped mapping, written into the demo folder.
pub const MEMBERS_MAPPING: &str = include_str!("../../mappings/members.toml");

/// Options of `mailbridge demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub members: u64,
    /// Where the demo writes its files; a fresh temporary folder when `None`.
    pub dir: Option<PathBuf>,
    /// After the steps, keep `serve` (with the admin pages) and the simulator running until
    /// interrupted.
    pub serve: bool,
}

/// At the simulator, `reader` unsubscribes and `bounced` hard-bounces (is cleaned).
async fn unsubscribe_and_bounce(
    simulator_url: &str,
    list_id: &str,
    reader: &str,
    bounced: &str,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = simulator_url.trim_end_matches('/');
    for (email, action) in [(reader, "unsubscribe"), (bounced, "clean")] {
        http.post(format!(
            "{base}/_sim/lists/{list_id}/members/{email}/{action}"
        ))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("the simulator refused to {action} {email}"))?;
    }
    Ok(())
}

fn demo_config(
    dir: &Path,
    mailchimp_url: &str,
    list_id: &str,
    sim_url: &str,
    cc: &cc_steps::CcAccount,
) -> String {
    format!(
        r#"# Written by `mailbridge demo` in {dir}.
# The provider is mailbridge's own simulator on loopback; it stops when the demo ends.
[state]
url = "sqlite://mailbridge.db"

[members]
url = "sqlite://members.db"
mapping = "mappings/members.toml"

[providers.mailchimp]
api_key = "demo-key-us1"
base_url = "{mailchimp_url}"

[providers.constant_contact]
client_id = "{cc_client}"
client_secret = "{cc_secret}"
base_url = "{sim_url}/v3"
auth_url = "{sim_url}/oauth2/default/v1"

[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "{list_id}"

[[audiences]]
name = "cc-newsletter"
provider = "constant_contact"
list_id = "{cc_list}"
"#,
        dir = dir.display(),
        cc_client = cc.client_id,
        cc_secret = cc.client_secret,
        cc_list = cc.list_id,
    )
}

/// Creates the demo audience at the simulator through the Mailchimp API; returns its list id.
async fn create_demo_list(sim: &SimulatorHandle) -> anyhow::Result<String> {
    let body = serde_json::json!({
        "name": "Riverside Rowing Club newsletter",
        "permission_reminder": "You are a member of Riverside Rowing Club.",
        "email_type_option": false,
        "contact": {
            "company": "Riverside Rowing Club",
            "address1": "1 Boathouse Lane",
            "city": "Riverside",
            "country": "GB"
        },
        "campaign_defaults": {
            "from_name": "Riverside Rowing Club",
            "from_email": "news@club.example",
            "subject": "",
            "language": "en"
        }
    });
    let response = reqwest::Client::new()
        .post(format!("{}/lists", sim.mailchimp_url()))
        .basic_auth("demo", Some("demo-key-us1"))
        .json(&body)
        .send()
        .await
        .context("cannot reach the simulator")?;
    let status = response.status();
    let list: serde_json::Value = response
        .json()
        .await
        .context("the simulator's answer is not JSON")?;
    match list["id"].as_str() {
        Some(id) if status.is_success() => Ok(id.to_owned()),
        _ => anyhow::bail!("the simulator refused to create the demo list ({status}): {list}"),
    }
}

/// The admin pages: a password for them in the demo config, their address, and with `serve`
/// the server itself (with the simulator still up) until Ctrl-C.
async fn admin_step(config_path: &Path, serve: bool) -> anyhow::Result<()> {
    let password = hex::encode(rand::random::<[u8; 9]>());
    let hash = crate::config::hash_admin_password(&password).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(config_path)?;
    let text = crate::config::with_admin_password_hash(&text, &hash)
        .map_err(|e| anyhow::anyhow!("cannot set the demo's admin password: {e}"))?;
    std::fs::write(config_path, text)?;
    let app = App::load(config_path)?;
    let bind = app
        .config
        .server
        .as_ref()
        .map(|s| s.bind.clone())
        .context("the demo config has no [server] section")?;
    if !serve {
        println!(
            "The admin pages (sync runs, members needing attention, suppressions, outbox, campaigns):"
        );
        println!("  cargo run --release -- demo --serve     then open the address it prints, or");
        println!(
            "  cargo run --release -- --config {} serve     then open http://{bind}/admin",
            config_path.display()
        );
        println!("  and log in with the password {password}\n");
        return Ok(());
    }
    let handle = crate::http::serve::start(app, Some("127.0.0.1:0")).await?;
    println!("The admin pages are served at http://{}/admin", handle.addr);
    println!("  log in with the password {password}");
    println!("  (Ctrl-C stops the server and the simulator)\n");
    crate::process::termination_signal().await;
    handle.shutdown().await?;
    Ok(())
}

/// Runs the demo and prints what happens at each step.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let dir = match &options.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mailbridge-demo-{}", new_run_id())),
    };
    std::fs::create_dir_all(dir.join("mappings"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("mappings/members.toml"),
        format!("{MEMBERS_MAPPING}{}", cc_steps::CC_MAPPING),
    )
    .context("cannot write the demo mapping")?;

    println!("mailbridge demo — everything lives in {}\n", dir.display());

    let sim = Simulator::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the provider simulator")?;
    let list_id = create_demo_list(&sim).await?;
    let cc = cc_steps::create_account(&sim.base_url()).await?;
    println!(
        "0. The provider simulator (Mailchimp and Constant Contact), in-process on {}",
        sim.base_url()
    );
    println!(
        "   audience \"Riverside Rowing Club newsletter\" created there as Mailchimp list {list_id}"
    );
    println!("   and as Constant Contact list {}\n", cc.list_id);
    let config_path = dir.join("mailbridge.toml");
    std::fs::write(
        &config_path,
        demo_config(&dir, &sim.mailchimp_url(), &list_id, &sim.base_url(), &cc),
    )
    .context("cannot write the demo config")?;

    println!(
        "1. A member database with {} members (reference schema, with realistic mess)",
        options.members
    );
    let members_url = DbUrl::parse("sqlite://members.db", &dir).map_err(anyhow::Error::msg)?;
    if let Some(p) = members_url.sqlite_path() {
        let _ = std::fs::remove_file(&p);
    }
    sample::create_member_db(&members_url, options.members, 2026)
        .await
        .context("cannot create the sample member database")?;
    println!("   {}\n", members_url.location());

    let app = App::load(&config_path)?;
    app.mapping()?;

    println!("2. The state database, migrated");
    let store = app.store().await?;
    let applied = store.migrate().await?;
    println!("   {} ({applied} migrations applied)\n", store.location());

    println!(
        "3. The plan a first sync would carry out (`mailbridge sync --dry-run`; nothing is written)\n"
    );
    // What `sync --dry-run` runs on: the same configuration, read-only.
    let dry = App::load(&config_path)?.read_only();
    let source = dry.member_source().await?;
    // The Constant Contact audience's plan comes with its own steps, after it is connected.
    let audiences: Vec<_> = dry
        .config
        .audiences
        .iter()
        .filter(|a| a.name == "newsletter")
        .collect();
    let plans = sync::plan(
        dry.mapping()?,
        &audiences,
        store,
        &source,
        PlanOptions::default(),
        &Progress::auto(),
    )
    .await?;
    for p in &plans {
        println!("{}", p.to_table(12));
    }
    dry.close().await;
    app.close().await;

    sync_steps::demo_sync_steps(&config_path, &sim.base_url(), &list_id).await?;
    webhook_steps::demo_webhook_steps(&config_path, &sim.base_url(), &list_id).await?;
    campaign_steps::demo_campaign_steps(&config_path, &sim.base_url()).await?;
    relay_steps::demo_relay_steps(&dir).await?;
    cc_steps::demo_cc_steps(&config_path, &sim.base_url(), &cc, 17).await?;
    admin_step(&config_path, options.serve).await?;

    sim.shutdown().await;

    println!(
        "Try it yourself (a dry run reads the databases only; it does not contact the provider):"
    );
    println!(
        "  cargo run --release -- --config {} sync --dry-run",
        config_path.display()
    );
    println!(
        "  cargo run --release -- --config {} sync --dry-run --json",
        config_path.display()
    );
    Ok(())
}
