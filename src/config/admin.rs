//! `[admin]`: the admin web pages of `serve` (`/admin`): the admin password (an argon2 PHC hash
//! that `mailbridge admin set-password` writes), how long a login lasts, and how many login
//! attempts an address may make per minute. The login takes this password or the API token
//! (`[server] api_token`); with neither configured, nobody can log in.

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    password_hash: Option<Raw>,
    session_hours: Option<Spanned<u64>>,
    login_attempts_per_minute: Option<Spanned<u32>>,
}

/// `[admin]` (defaults when absent).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The admin password as an argon2 PHC string (`$argon2id$v=19$…`). Held as a secret: a hash
    /// is still something to guess against, so it is never shown.
    pub password_hash: Option<SecretString>,
    /// How long a login lasts.
    pub session_hours: u64,
    /// Login attempts (right or wrong) allowed per client address per minute, and ten times that
    /// for all clients together; further attempts are refused without checking the password.
    pub login_attempts_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            password_hash: None,
            session_hours: 12,
            login_attempts_per_minute: 5,
        }
    }
}

impl AdminConfig {
    pub(super) fn read(l: &Loader<'_>, raw: Option<&RawAdmin>) -> Result<AdminConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(AdminConfig::default());
        };
        let defaults = AdminConfig::default();
        Ok(AdminConfig {
            password_hash: l.optional(&raw.password_hash, "admin.password_hash", read_hash)?,
            session_hours: l.bounded(
                &raw.session_hours,
                "admin.session_hours",
                1..=24 * 30,
                defaults.session_hours,
            )?,
            login_attempts_per_minute: l.bounded(
                &raw.login_attempts_per_minute,
                "admin.login_attempts_per_minute",
                1..=1000,
                defaults.login_attempts_per_minute,
            )?,
        })
    }
}

/// An argon2 PHC string. The error never quotes the value.
fn read_hash(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<SecretString, ConfigError> {
    let value = l.nonempty(raw, key)?;
    let value = value.trim();
    match argon2::PasswordHash::new(value) {
        Ok(hash) if hash.algorithm.as_str().starts_with("argon2") && hash.hash.is_some() => {
            Ok(SecretString::from(value.to_owned()))
        }
        _ => Err(l.invalid(
            raw.span(),
            key,
            "expected an argon2 hash in PHC form (`$argon2id$v=19$m=…`); `mailbridge admin set-password` writes one",
        )),
    }
}

/// The PHC string of `password` under argon2id with the crate's default cost (19 MiB, 2 passes)
/// and a fresh random salt: what `[admin] password_hash` holds.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// Whether `password` matches `hash` (a PHC string [`AdminConfig::read`] checked), in the time
/// argon2 takes whatever the answer: call it off the async threads.
pub fn verify_password(password: &str, hash: &SecretString) -> bool {
    use argon2::PasswordVerifier;
    use secrecy::ExposeSecret;
    match argon2::PasswordHash::new(hash.expose_secret()) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// `text` (a config file) with `[admin] password_hash` set to `hash`.
pub fn with_password_hash(text: &str, hash: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string().trim_end().to_owned())?;
    let admin = doc
        .entry("admin")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = admin.as_table_like_mut() else {
        return Err("`admin` is not a table".to_owned());
    };
    table.insert("password_hash", toml_edit::value(hash));
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::testing::{BASE, assert_refused, parse};
    use super::*;

    #[test]
    fn a_hash_it_writes_verifies_and_loads() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        let config = parse(&format!("{BASE}[admin]\npassword_hash = \"{hash}\"\n"));
        let stored = config.admin.password_hash.unwrap();
        assert_eq!(stored.expose_secret(), hash);
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("correct horse ", &stored));
        assert!(!verify_password("", &stored));
    }

    #[test]
    fn defaults_and_refusals() {
        let config = parse(BASE);
        assert!(config.admin.password_hash.is_none());
        assert_eq!(config.admin.session_hours, 12);
        assert_eq!(config.admin.login_attempts_per_minute, 5);
        assert_refused(
            BASE,
            &[
                // A password written where its hash belongs is refused and never quoted.
                (
                    "[admin]\npassword_hash = \"hunter2-plain\"\n",
                    "mb.toml:5: `admin.password_hash`: expected an argon2 hash in PHC form (`$argon2id$v=19$m=…`); `mailbridge admin set-password` writes one",
                ),
                (
                    "[admin]\nsession_hours = 0\n",
                    "mb.toml:5: `admin.session_hours`: expected 1 to 720",
                ),
                (
                    "[admin]\nlogin_attempts_per_minute = 0\n",
                    "mb.toml:5: `admin.login_attempts_per_minute`: expected 1 to 1000",
                ),
            ],
        );
    }

    #[test]
    fn the_hash_is_set_and_the_rest_kept() {
        let text = "# the club's config\n[members]\nurl = \"sqlite://m.db\" # members\n\n[admin]\nsession_hours = 4\npassword_hash = \"$argon2id$old\"\n";
        let out = with_password_hash(text, "$argon2id$new").unwrap();
        assert_eq!(
            out,
            "# the club's config\n[members]\nurl = \"sqlite://m.db\" # members\n\n[admin]\nsession_hours = 4\npassword_hash = \"$argon2id$new\"\n"
        );
        let added = with_password_hash("[members]\nurl = \"x\"\n", "$argon2id$h").unwrap();
        assert_eq!(
            added,
            "[members]\nurl = \"x\"\n\n[admin]\npassword_hash = \"$argon2id$h\"\n"
        );
        assert!(with_password_hash("admin = 3\n", "h").is_err());
        assert!(with_password_hash("[members\n", "h").is_err());
    }
}
