//! `mailbridge auth constant-contact`: connects the Constant Contact account. The device flow
//! (the default) prints a page and a code for someone with the account to approve in a browser,
//! then waits for the approval; `--refresh-token -` takes a refresh token from stdin instead
//! (one obtained elsewhere, never on the command line where `ps` would show it). Either way the
//! rotated tokens go to the state DB, and one API call proves the connection.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use secrecy::SecretString;

use crate::app::App;
use crate::process::UsageError;
use crate::providers::constant_contact::{DeviceCode, device_flow, store_refresh_token};

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Connects the Constant Contact account of `[providers.constant_contact]`.
    ConstantContact(ConstantContactArgs),
}

#[derive(Args, Debug)]
pub struct ConstantContactArgs {
    /// Read a refresh token from stdin (`-`) instead of running the device flow.
    #[arg(long, value_name = "-")]
    pub refresh_token: Option<String>,
}

/// Runs an `auth` subcommand; returns the exit code.
pub async fn run(config: &Path, command: AuthCommand) -> anyhow::Result<u8> {
    let AuthCommand::ConstantContact(args) = command;
    let app = App::load(config)?;
    let Some(cc) = app.config.constant_contact.clone() else {
        return Err(UsageError(format!(
            "{}: [providers.constant_contact] is missing; add it (client_id, and client_secret for a confidential app) first",
            app.config.path.display()
        ))
        .into());
    };
    let store = app
        .migrated_store()
        .await
        .context("cannot open the state database")?;
    match args.refresh_token.as_deref() {
        Some("-") => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .context("cannot read the refresh token from stdin")?;
            let token = token.trim();
            if token.is_empty() {
                return Err(UsageError("no refresh token on stdin".to_owned()).into());
            }
            store_refresh_token(&cc, store, SecretString::from(token.to_owned()))
                .await
                .context("cannot connect the Constant Contact account")?;
        }
        Some(_) => {
            return Err(UsageError(
                "--refresh-token takes `-` (the token is read from stdin, never from the command line)"
                    .to_owned(),
            )
            .into());
        }
        None => {
            device_flow(&cc, store, show)
                .await
                .context("cannot connect the Constant Contact account")?;
        }
    }
    app.close().await;
    println!(
        "Connected: the Constant Contact tokens are in the state database at {}.",
        store.location()
    );
    Ok(0)
}

/// What the person approving the connection needs to see.
fn show(code: &DeviceCode) {
    println!("To connect mailbridge to Constant Contact, open");
    println!("  {}", code.verification_uri);
    println!("and enter the code {}", code.user_code);
    if let Some(complete) = &code.verification_uri_complete {
        println!("(or open {complete})");
    }
    println!(
        "The code is valid for {} minutes; waiting for the approval...",
        code.expires_in.as_secs().div_ceil(60)
    );
}
