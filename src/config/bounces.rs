//! `[bounces.imap]`: the bounce mailbox that `bounce fetch` and `serve` read over IMAP: the
//! server, TLS (always on, certificates always checked), the login, the folder, and what becomes
//! of a message once it is ingested (moved to `move_to`, or deleted).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw, value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBounces {
    imap: Option<Spanned<RawImap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImap {
    host: Raw,
    port: Option<Spanned<u16>>,
    tls: Option<Raw>,
    username: Raw,
    password: Raw,
    folder: Option<Raw>,
    move_to: Option<Raw>,
    delete: Option<Spanned<bool>>,
    poll_every: Option<Raw>,
    ca_file: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
}

/// `[bounces]`: where bounce mail is read from, besides the pipe alias and `POST /v1/bounces`.
#[derive(Debug, Clone, Default)]
pub struct BouncesConfig {
    pub imap: Option<ImapConfig>,
}

/// How the connection is encrypted. There is no plaintext choice: the password crosses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapTls {
    /// Implicit TLS from the first byte (IMAPS, port 993).
    Tls,
    /// Plain connection upgraded with STARTTLS before LOGIN (port 143); a server that does not
    /// offer it is refused, never talked to in plaintext.
    StartTls,
}

/// What becomes of a message once it is ingested (or refused: it was handled all the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterIngest {
    /// Moved to this folder, which must exist.
    MoveTo(String),
    /// Flagged `\Deleted` and expunged.
    Delete,
}

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub tls: ImapTls,
    pub username: String,
    pub password: SecretString,
    /// The folder read; every message in it is taken as new (handled ones leave it).
    pub folder: String,
    pub after: AfterIngest,
    /// How often `serve` reads the mailbox.
    pub poll_every: Duration,
    /// A PEM CA trusted besides the public web CAs (a private or self-signed server).
    pub ca_file: Option<PathBuf>,
    /// Connect and per-command timeout.
    pub timeout_secs: u64,
}

impl ImapConfig {
    pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(300);
}

impl BouncesConfig {
    pub(super) fn read(
        l: &Loader<'_>,
        raw: Option<&RawBounces>,
    ) -> Result<BouncesConfig, ConfigError> {
        let imap = raw
            .and_then(|b| b.imap.as_ref())
            .map(|i| read_imap(l, i))
            .transpose()?;
        Ok(BouncesConfig { imap })
    }
}

fn read_imap(l: &Loader<'_>, raw: &Spanned<RawImap>) -> Result<ImapConfig, ConfigError> {
    let i = raw.get_ref();
    let tls = l
        .optional(&i.tls, "bounces.imap.tls", |l, t, key| {
            l.choice(
                t,
                key,
                "value",
                &[("tls", ImapTls::Tls), ("starttls", ImapTls::StartTls)],
            )
        })?
        .unwrap_or(ImapTls::Tls);
    let folder = l
        .optional(&i.folder, "bounces.imap.folder", Loader::nonempty)?
        .unwrap_or_else(|| "INBOX".to_owned());
    let move_to = l.optional(&i.move_to, "bounces.imap.move_to", Loader::nonempty)?;
    let after = match (move_to, i.delete.as_ref().map(|d| (*d.get_ref(), d.span()))) {
        (Some(_), Some((true, span))) => {
            return Err(l.invalid(
                span,
                "bounces.imap.delete",
                "`move_to` and `delete = true` exclude each other: choose one",
            ));
        }
        (Some(to), _) => {
            if to == folder {
                return Err(l.invalid(
                    i.move_to.as_ref().map_or(raw.span(), |m| m.span()),
                    "bounces.imap.move_to",
                    "must differ from `folder`: a handled message must leave the folder read",
                ));
            }
            AfterIngest::MoveTo(to)
        }
        (None, Some((true, _))) => AfterIngest::Delete,
        (None, delete) => {
            return Err(l.invalid(
                delete.map_or(raw.span(), |(_, span)| span),
                "bounces.imap",
                "set `move_to = \"FOLDER\"` or `delete = true`: what becomes of a message once it is ingested",
            ));
        }
    };
    Ok(ImapConfig {
        host: l.nonempty(&i.host, "bounces.imap.host")?,
        port: value(&i.port).unwrap_or(match tls {
            ImapTls::Tls => 993,
            ImapTls::StartTls => 143,
        }),
        tls,
        username: l.nonempty(&i.username, "bounces.imap.username")?,
        password: l.secret(&i.password, "bounces.imap.password")?,
        folder,
        after,
        poll_every: l
            .optional(&i.poll_every, "bounces.imap.poll_every", Loader::duration)?
            .unwrap_or(ImapConfig::DEFAULT_POLL_EVERY),
        ca_file: l.optional(&i.ca_file, "bounces.imap.ca_file", Loader::path)?,
        timeout_secs: l.bounded(
            &i.timeout_secs,
            "bounces.imap.timeout_secs",
            1..=3600,
            ImapConfig::DEFAULT_TIMEOUT_SECS,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::{AfterIngest, ImapTls};
    use crate::config::testing::{BASE, assert_refused, parse};

    const IMAP: &str = "[bounces.imap]\nhost = \"imap.isp.example\"\nusername = \"bounces@club.example\"\npassword = \"${SET}\"\n";

    #[test]
    fn defaults_to_implicit_tls_on_993_reading_the_inbox_every_five_minutes() {
        let imap = parse(&format!("{BASE}{IMAP}delete = true\n"))
            .bounces
            .imap
            .expect("imap");
        assert_eq!((imap.port, imap.tls), (993, ImapTls::Tls));
        assert_eq!(imap.folder, "INBOX");
        assert_eq!(imap.after, AfterIngest::Delete);
        assert_eq!(imap.poll_every.as_secs(), 300);
        assert_eq!((imap.timeout_secs, imap.ca_file.as_deref()), (60, None));
        assert_eq!(imap.password.expose_secret(), "v");
        assert!(!format!("{imap:?}").contains("\"v\""), "{imap:?}");

        let imap = parse(&format!(
            "{BASE}{IMAP}tls = \"starttls\"\nfolder = \"Bounces\"\nmove_to = \"Bounces/Done\"\npoll_every = \"90s\"\nca_file = \"ca.pem\"\ntimeout_secs = 5\n"
        ))
        .bounces
        .imap
        .expect("imap");
        assert_eq!((imap.port, imap.tls), (143, ImapTls::StartTls));
        assert_eq!(imap.after, AfterIngest::MoveTo("Bounces/Done".into()));
        assert_eq!(imap.poll_every.as_secs(), 90);
        assert_eq!(
            imap.ca_file.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(imap.timeout_secs, 5);
        assert!(parse(BASE).bounces.imap.is_none());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    format!("{IMAP}delete = true\nhots = \"x\"\n"),
                    "mb.toml: TOML parse error at line 9, column 1\n  |\n9 | hots = \"x\"\n  | ^^^^\nunknown field `hots`, expected one of `host`, `port`, `tls`, `username`, `password`, `folder`, `move_to`, `delete`, `poll_every`, `ca_file`, `timeout_secs`",
                ),
                (
                    IMAP.to_owned(),
                    "mb.toml:4: `bounces.imap`: set `move_to = \"FOLDER\"` or `delete = true`: what becomes of a message once it is ingested",
                ),
                (
                    format!("{IMAP}delete = false\n"),
                    "mb.toml:8: `bounces.imap`: set `move_to = \"FOLDER\"` or `delete = true`: what becomes of a message once it is ingested",
                ),
                (
                    format!("{IMAP}move_to = \"Done\"\ndelete = true\n"),
                    "mb.toml:9: `bounces.imap.delete`: `move_to` and `delete = true` exclude each other: choose one",
                ),
                (
                    format!("{IMAP}move_to = \"INBOX\"\n"),
                    "mb.toml:8: `bounces.imap.move_to`: must differ from `folder`: a handled message must leave the folder read",
                ),
                (
                    format!("{IMAP}move_to = \"\"\n"),
                    "mb.toml:8: `bounces.imap.move_to`: must not be empty",
                ),
                (
                    format!("{IMAP}delete = true\ntls = \"none\"\n"),
                    "mb.toml:9: `bounces.imap.tls`: unknown value `none`: expected \"tls\" or \"starttls\"",
                ),
                (
                    IMAP.replace("${SET}", "${UNSET}") + "delete = true\n",
                    "mb.toml:7: `bounces.imap.password`: environment variable UNSET is not set",
                ),
                (
                    IMAP.replace("\"bounces@club.example\"", "\"\"") + "delete = true\n",
                    "mb.toml:6: `bounces.imap.username`: must not be empty",
                ),
                (
                    format!("{IMAP}delete = true\npoll_every = \"5\"\n"),
                    "mb.toml:9: `bounces.imap.poll_every`: expected a duration such as \"90s\", \"15m\" or \"1h\"",
                ),
                (
                    format!("{IMAP}delete = true\ntimeout_secs = 0\n"),
                    "mb.toml:9: `bounces.imap.timeout_secs`: expected 1 to 3600",
                ),
                (
                    format!("{IMAP}delete = true\nca_file = \"\"\n"),
                    "mb.toml:9: `bounces.imap.ca_file`: must not be empty",
                ),
                (
                    "[bounces.imap]\nhost = \"h\"\nusername = \"u\"\ndelete = true\n".to_owned(),
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [bounces.imap]\n  | ^^^^^^^^^^^^^^\nmissing field `password`",
                ),
            ],
        );
    }
}
