//! `mailbridge demo`: a self-contained tour on embedded defaults, no credentials needed.

pub mod sample;
pub mod sync_steps;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{Config, DbUrl};
use crate::mapping::Mapping;
use crate::progress::Progress;
use crate::source::MemberSource;
use crate::store::{OpenMode, Store};
use crate::sync::{self, PlanOptions};

/// The shipped mapping, written into the demo folder.
pub const MEMBERS_MAPPING: &str = include_str!("../../mappings/members.toml");

/// Options of `mailbridge demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub members: u64,
    /// Where the demo writes its files; a fresh temporary folder when `None`.
    pub dir: Option<PathBuf>,
}

fn demo_config(dir: &Path) -> String {
    format!(
        r#"# Written by `mailbridge demo` in {dir}.
[state]
url = "sqlite://mailbridge.db"

[members]
url = "sqlite://members.db"
mapping = "mappings/members.toml"

[providers.mailchimp]
api_key = "demo-key-us1"

[[audiences]]
name = "newsletter"
provider = "mailchimp"
list_id = "demo-list"
"#,
        dir = dir.display()
    )
}

/// Runs the demo and prints what happens at each step.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let dir = match &options.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "mailbridge-demo-{}",
            crate::sync::report::new_run_id()
        )),
    };
    std::fs::create_dir_all(dir.join("mappings"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("mailbridge.toml");
    std::fs::write(&config_path, demo_config(&dir)).context("cannot write the demo config")?;
    std::fs::write(dir.join("mappings/members.toml"), MEMBERS_MAPPING)
        .context("cannot write the demo mapping")?;

    println!("mailbridge demo — everything lives in {}\n", dir.display());

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

    let config = Config::load(&config_path)?;
    let mapping = Mapping::load(&config.members.mapping)?;

    println!("2. The state database, migrated");
    let store = Store::open(&config.state.url, OpenMode::ReadWrite).await?;
    let applied = store.migrate().await?;
    println!("   {} ({applied} migrations applied)\n", store.location());

    println!(
        "3. The plan a first sync would carry out (`mailbridge sync --dry-run`; nothing is written)\n"
    );
    let source = MemberSource::connect(&config.members.url, true).await?;
    let audiences: Vec<_> = config.audiences.iter().collect();
    let plans = sync::plan(
        &mapping,
        &audiences,
        &store,
        &source,
        PlanOptions::default(),
        &Progress::auto(),
    )
    .await?;
    for p in &plans {
        println!("{}", p.to_table(12));
    }
    source.close().await;
    store.close().await;

    println!("Try it yourself:");
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
