//! `mailbridge admin set-password`: asks for the admin pages' password (twice on a terminal, one
//! line from standard input otherwise), writes its argon2 hash to `[admin] password_hash` of the
//! config file (every other line, comment and key kept as written) and logs out every admin
//! session, so a changed password locks out whoever knew the old one.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

use crate::app::App;
use crate::process::UsageError;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Sets the admin pages' password: its hash goes to `[admin] password_hash` in the config.
    SetPassword,
}

/// Shortest password taken.
const MIN_CHARS: usize = 12;

pub async fn run(config_path: &Path, command: AdminCommand) -> anyhow::Result<u8> {
    match command {
        AdminCommand::SetPassword => set_password(config_path).await,
    }
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New admin password: ")?;
        let second = rpassword::prompt_password("The same again: ")?;
        if first != second {
            return Err(UsageError("the two passwords differ; nothing was changed".into()).into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn set_password(config_path: &Path) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let password = read_password()?;
    if password.chars().count() < MIN_CHARS {
        return Err(UsageError(format!(
            "the password must have at least {MIN_CHARS} characters; nothing was changed"
        ))
        .into());
    }
    let hash = crate::config::hash_admin_password(&password).map_err(anyhow::Error::msg)?;
    let new_text = crate::config::with_admin_password_hash(&text, &hash).map_err(|e| {
        UsageError(format!(
            "{}: {e}; nothing was changed",
            config_path.display()
        ))
    })?;
    // Written beside the file and renamed over it: a crash leaves the old file or the new one.
    let dir = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write beside {}", config_path.display()))?;
    if let Ok(meta) = std::fs::metadata(config_path) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.write_all(new_text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(config_path)
        .with_context(|| format!("cannot replace {}", config_path.display()))?;
    println!(
        "Wrote [admin] password_hash to {}; `serve` uses it from its next start.",
        config_path.display()
    );
    // Whoever knew the old password is logged out. The config may not load here (an
    // environment variable only the server has): then say so, the hash is written anyway.
    match App::load(config_path) {
        Ok(app) => {
            let ended = match app.store().await {
                Ok(store) => store
                    .end_all_admin_sessions()
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            app.close().await;
            match ended {
                Ok(n) => println!("Logged out {n} admin session(s)."),
                Err(e) => eprintln!("warning: admin sessions were not logged out: {e}"),
            }
        }
        Err(e) => eprintln!("warning: admin sessions were not logged out: {e}"),
    }
    Ok(0)
}
