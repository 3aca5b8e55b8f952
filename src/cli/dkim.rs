//! `mailbridge dkim keygen --selector S --domain D [--out FILE] [--algorithm rsa|ed25519]`:
//! writes a new DKIM private key (mode 0600, never over an existing file) and prints the DNS
//! record to publish and the `[relay.dkim]` section that uses the key. Reads no config.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::config::DkimKey;
use crate::process::UsageError;
use crate::relay::dkim::{record_name, record_strings, record_value};

#[derive(Subcommand, Debug)]
pub enum DkimCommand {
    /// Writes a new private key and prints the TXT record to publish and the config to use.
    Keygen(KeygenArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA, 2048 bits: every receiver verifies it.
    Rsa,
    /// Ed25519 (RFC 8463): short, but not every receiver verifies it; pair it with an RSA key.
    Ed25519,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The selector: the key is published at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    pub selector: String,
    /// The signing domain: the From address's domain or a parent of it.
    #[arg(long)]
    pub domain: String,
    /// Where to write the private key (refused if the file exists).
    #[arg(long, default_value = "dkim-private.pem")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
    pub algorithm: KeyAlgorithm,
}

pub fn run(command: DkimCommand) -> anyhow::Result<u8> {
    match command {
        DkimCommand::Keygen(args) => keygen(&args),
    }
}

/// A selector or domain as DNS names it: dot-separated labels of letters, digits, `-`, `_`.
fn check_name(flag: &str, value: &str) -> Result<String, UsageError> {
    let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name)
    } else {
        Err(UsageError(format!(
            "--{flag} `{value}` is not a DNS name (letters, digits, `-`, dot-separated)"
        )))
    }
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<u8> {
    let selector = check_name("selector", &args.selector)?;
    let domain = check_name("domain", &args.domain)?;
    let (pem, key) = DkimKey::generate(matches!(args.algorithm, KeyAlgorithm::Ed25519))
        .map_err(anyhow::Error::msg)?;
    write_new_private(&args.out, pem.as_bytes())?;
    let value = record_value(&key);
    let name = record_name(&selector, &domain);
    let out = args.out.display();
    println!("Wrote the private key to {out} (readable by its owner only; keep it secret).");
    println!();
    println!("Publish this DNS TXT record (a zone file line; strings of at most 255 bytes):");
    println!();
    println!("{name} IN TXT {}", record_strings(&value));
    println!();
    println!("In a DNS provider's web form: name `{selector}._domainkey` (in zone {domain}),");
    println!("type TXT, value:");
    println!();
    println!("{value}");
    println!();
    println!("Then add to mailbridge.toml:");
    println!();
    println!("[relay.dkim]");
    println!("domain = \"{domain}\"");
    println!("selector = \"{selector}\"");
    println!(
        "private_key_file = \"{}\"",
        out.to_string().replace('\\', "/")
    );
    Ok(0)
}

/// Creates `path` with mode 0600 and writes `bytes`; an existing file is refused, not replaced
/// (it may be the key a published record names).
fn write_new_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::Error::new(UsageError(format!(
                "{} already exists: not overwritten (choose another --out, or remove it if no published record names it)",
                path.display()
            )))
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
