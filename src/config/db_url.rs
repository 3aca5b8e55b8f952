//! Database URLs: which engine one names, where it is, and a `Display` that hides the password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

/// A database URL. `Display` shows it with the password replaced by `***`.
#[derive(Clone)]
pub struct DbUrl {
    url: SecretString,
    redacted: String,
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
    MySql,
}

impl DbUrl {
    /// Parses and checks a URL; relative SQLite paths are resolved against `base_dir`.
    pub fn parse(raw: &str, base_dir: &Path) -> Result<DbUrl, String> {
        let raw = raw.trim();
        let (scheme, _) = raw.split_once(':').ok_or_else(|| {
            "expected a URL such as sqlite://file.db or postgres://host/db".to_owned()
        })?;
        let url = match scheme {
            "sqlite" => {
                let rest = raw
                    .strip_prefix("sqlite://")
                    .or_else(|| raw.strip_prefix("sqlite:"))
                    .unwrap_or_default();
                let (path, query) = match rest.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err("the sqlite URL names no file".into());
                }
                let path = if path == ":memory:" || Path::new(path).is_absolute() {
                    path.to_owned()
                } else {
                    base_dir.join(path).to_string_lossy().into_owned()
                };
                match query {
                    Some(q) => format!("sqlite://{path}?{q}"),
                    None => format!("sqlite://{path}"),
                }
            }
            "postgres" | "postgresql" | "mysql" | "mariadb" => {
                let parsed = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
                if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                    return Err("the URL names no host".into());
                }
                let (url, dialect) = if scheme == "mariadb" || scheme == "mysql" {
                    (
                        format!("mysql{}", &raw[scheme.len()..]),
                        crate::db_tls::Dialect::MySql,
                    )
                } else {
                    (raw.to_owned(), crate::db_tls::Dialect::Postgres)
                };
                crate::db_tls::resolve(dialect, &url, base_dir)?
            }
            other => {
                return Err(format!(
                    "unsupported database `{other}`: expected sqlite://, postgres:// or mysql://"
                ));
            }
        };
        let redacted = redact_url(&url);
        Ok(DbUrl {
            url: SecretString::from(url),
            redacted,
        })
    }

    pub fn kind(&self) -> DbKind {
        let url = self.url.expose_secret();
        if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("mysql:") {
            DbKind::MySql
        } else {
            DbKind::Postgres
        }
    }

    /// The URL with its password, for the database driver only.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// For SQLite URLs: the file path (None for `:memory:`).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.expose().strip_prefix("sqlite://")?;
        let path = rest.split('?').next().unwrap_or(rest);
        (path != ":memory:").then(|| PathBuf::from(path))
    }

    /// Where the database is, for messages: `host:port/database` (as the driver will connect),
    /// or the file. Never the password.
    pub fn location(&self) -> String {
        let url = self.expose();
        let target = |host: &str, port: u16, db: Option<&str>| match db {
            Some(db) => format!("{host}:{port}/{db}"),
            None => format!("{host}:{port}"),
        };
        match self.kind() {
            DbKind::Sqlite => self
                .sqlite_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ":memory:".into()),
            DbKind::Postgres => match sqlx::postgres::PgConnectOptions::from_str(url) {
                Ok(o) => target(o.get_host(), o.get_port(), o.get_database()),
                Err(_) => self.redacted.clone(),
            },
            DbKind::MySql => match sqlx::mysql::MySqlConnectOptions::from_str(url) {
                Ok(o) => target(o.get_host(), o.get_port(), o.get_database()),
                Err(_) => self.redacted.clone(),
            },
        }
    }

    /// The TLS settings the driver will use (`None` for SQLite).
    pub fn tls(&self) -> Option<crate::db_tls::DbTls> {
        use crate::db_tls::{DbTls, Dialect};
        match self.kind() {
            DbKind::Sqlite => None,
            DbKind::Postgres => Some(DbTls::of_url(Dialect::Postgres, self.expose())),
            DbKind::MySql => Some(DbTls::of_url(Dialect::MySql, self.expose())),
        }
    }
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => {
            // Passwords may also travel as a query parameter.
            if u.query_pairs().any(|(k, _)| k == "password") {
                let mut u2 = u.clone();
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u2.query_pairs_mut().clear().extend_pairs(pairs);
                userinfo_hidden(u2.as_ref())
            } else {
                userinfo_hidden(url)
            }
        }
        Err(_) => userinfo_hidden(url),
    }
}

/// `url` with the text between a `:` and an `@` in any `user:password@` part hidden, wherever it
/// stands: a URL that the url crate does not read as having a password may still carry one (a
/// `postgres://${DATABASE_URL}` whose variable holds a whole URL reads as a host `postgres` and a
/// path `//user:password@host/db`).
fn userinfo_hidden(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        // The user-info part starts after the last `/` before the `@`.
        let start = before.rfind('/').map_or(0, |i| i + 1);
        match before[start..].find(':') {
            Some(colon) => {
                out.push_str(&before[..start + colon + 1]);
                out.push_str("***");
            }
            None => out.push_str(before),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_names_host_port_and_database_or_the_file() {
        let location = |raw: &str| {
            DbUrl::parse(raw, Path::new("/srv"))
                .expect("valid")
                .location()
        };
        assert_eq!(
            location("mariadb://u:pw@db.example/club"),
            "db.example:3306/club"
        );
        assert_eq!(
            location("postgres://u:pw@db.example:6543"),
            "db.example:6543"
        );
        assert_eq!(location("sqlite://m.db"), "/srv/m.db");
        assert_eq!(location("sqlite::memory:"), ":memory:");
    }

    #[test]
    fn a_password_is_hidden_wherever_a_url_carries_it() {
        assert_eq!(
            userinfo_hidden("postgres://postgres://club:pw@db.example/club"),
            "postgres://postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("postgres://postgres://club:pw@db.example/club"),
            "postgres://postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("postgres://club:pw@db.example/club"),
            "postgres://club:***@db.example/club"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/members@2026.db"),
            "sqlite:///var/lib/members@2026.db"
        );
        assert_eq!(redact_url("not a url: x:y@z"), "not a url:***@z");
    }
}
