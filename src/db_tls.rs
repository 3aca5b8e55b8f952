//! TLS to the member and state databases (PostgreSQL, MySQL/MariaDB), through sqlx's rustls: the
//! URL options that set it, checked and resolved once when the config is read, and TLS failures
//! turned into reasons a person can act on.
//!
//! PostgreSQL: `sslmode=disable|prefer|require|verify-ca|verify-full` (default `prefer`, or
//! `PGSSLMODE`), `sslrootcert=PATH`. As in libpq, `require` with an `sslrootcert` verifies the
//! certificate like `verify-ca`. MySQL/MariaDB: `ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|
//! VERIFY_IDENTITY` (default `PREFERRED`), `ssl-ca=PATH`. Client certificates: `sslcert`/`sslkey`
//! (`ssl-cert`/`ssl-key`). Relative paths are taken from the config file's folder. Without a CA
//! file, certificates are checked against the public web CAs (webpki-roots).

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a connection uses TLS, in the terms both engines share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext.
    Disable,
    /// TLS when the server offers it (certificate not checked), else plaintext.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, certificate signed by a trusted CA; any host name.
    VerifyCa,
    /// TLS, trusted certificate that names the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// Every mode, weakest first (the order error messages list them in).
    const ALL: [TlsMode; 5] = [
        TlsMode::Disable,
        TlsMode::Prefer,
        TlsMode::Require,
        TlsMode::VerifyCa,
        TlsMode::VerifyFull,
    ];

    /// Whether the connection fails rather than go plaintext.
    pub fn required(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }
}

/// The engine, for the spelling of its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Dialect {
    fn mode_key(self) -> &'static str {
        match self {
            Dialect::Postgres => "sslmode",
            Dialect::MySql => "ssl-mode",
        }
    }

    fn ca_key(self) -> &'static str {
        match self {
            Dialect::Postgres => "sslrootcert",
            Dialect::MySql => "ssl-ca",
        }
    }

    fn mode_name(self, mode: TlsMode) -> &'static str {
        match (self, mode) {
            (Dialect::Postgres, TlsMode::Disable) => "disable",
            (Dialect::Postgres, TlsMode::Prefer) => "prefer",
            (Dialect::Postgres, TlsMode::Require) => "require",
            (Dialect::Postgres, TlsMode::VerifyCa) => "verify-ca",
            (Dialect::Postgres, TlsMode::VerifyFull) => "verify-full",
            (Dialect::MySql, TlsMode::Disable) => "DISABLED",
            (Dialect::MySql, TlsMode::Prefer) => "PREFERRED",
            (Dialect::MySql, TlsMode::Require) => "REQUIRED",
            (Dialect::MySql, TlsMode::VerifyCa) => "VERIFY_CA",
            (Dialect::MySql, TlsMode::VerifyFull) => "VERIFY_IDENTITY",
        }
    }

    fn parse_mode(self, value: &str) -> Option<TlsMode> {
        let v = value.trim().to_ascii_lowercase();
        TlsMode::ALL
            .into_iter()
            .find(|m| self.mode_name(*m).eq_ignore_ascii_case(&v))
    }

    fn mode_keys(self) -> &'static [&'static str] {
        // The spellings sqlx reads, so that none reaches the driver unchecked.
        &["sslmode", "ssl-mode"]
    }

    fn file_keys(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => &[
                "sslrootcert",
                "ssl-root-cert",
                "ssl-ca",
                "sslcert",
                "ssl-cert",
                "sslkey",
                "ssl-key",
            ],
            Dialect::MySql => &[
                "sslca", "ssl-ca", "sslcert", "ssl-cert", "sslkey", "ssl-key",
            ],
        }
    }

    fn ca_keys(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => &["sslrootcert", "ssl-root-cert", "ssl-ca"],
            Dialect::MySql => &["sslca", "ssl-ca"],
        }
    }
}

/// The TLS settings of one database URL, as the driver will use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbTls {
    pub dialect: Dialect,
    pub mode: TlsMode,
    /// The CA file (`sslrootcert` / `ssl-ca`); `None`: the public web CAs.
    pub root_cert: Option<PathBuf>,
}

impl DbTls {
    /// The mode as the URL spells it, e.g. `sslmode=verify-full`.
    pub fn mode_text(&self) -> String {
        format!(
            "{}={}",
            self.dialect.mode_key(),
            self.dialect.mode_name(self.mode)
        )
    }

    /// One line for people: what this connection's TLS does.
    pub fn describe(&self) -> String {
        let ca = match &self.root_cert {
            Some(p) => format!("the CA in {}", p.display()),
            None => "the public web CAs".to_owned(),
        };
        let what = match self.mode {
            TlsMode::Disable => "no TLS".to_owned(),
            TlsMode::Prefer => {
                "TLS when the server offers it, else plaintext; certificate not checked".to_owned()
            }
            TlsMode::Require => "TLS required; certificate not checked".to_owned(),
            TlsMode::VerifyCa => format!("TLS required; certificate checked against {ca}"),
            TlsMode::VerifyFull => {
                format!("TLS required; certificate and host name checked against {ca}")
            }
        };
        format!("{} ({what})", self.mode_text())
    }

    /// The settings of a PostgreSQL or MySQL URL as the driver reads them (PostgreSQL also
    /// takes `PGSSLMODE` and `PGSSLROOTCERT` when the URL does not say).
    pub fn of_url(dialect: Dialect, url: &str) -> DbTls {
        let parsed = url::Url::parse(url).ok();
        let param = |keys: &[&str]| {
            parsed.as_ref().and_then(|u| {
                u.query_pairs()
                    .filter(|(k, _)| keys.contains(&k.as_ref()))
                    .last()
                    .map(|(_, v)| v.into_owned())
            })
        };
        let mode = match dialect {
            Dialect::Postgres => sqlx::postgres::PgConnectOptions::from_str(url)
                .map(|o| match o.get_ssl_mode() {
                    sqlx::postgres::PgSslMode::Disable | sqlx::postgres::PgSslMode::Allow => {
                        TlsMode::Disable
                    }
                    sqlx::postgres::PgSslMode::Prefer => TlsMode::Prefer,
                    sqlx::postgres::PgSslMode::Require => TlsMode::Require,
                    sqlx::postgres::PgSslMode::VerifyCa => TlsMode::VerifyCa,
                    sqlx::postgres::PgSslMode::VerifyFull => TlsMode::VerifyFull,
                })
                .unwrap_or(TlsMode::Prefer),
            Dialect::MySql => sqlx::mysql::MySqlConnectOptions::from_str(url)
                .map(|o| match o.get_ssl_mode() {
                    sqlx::mysql::MySqlSslMode::Disabled => TlsMode::Disable,
                    sqlx::mysql::MySqlSslMode::Preferred => TlsMode::Prefer,
                    sqlx::mysql::MySqlSslMode::Required => TlsMode::Require,
                    sqlx::mysql::MySqlSslMode::VerifyCa => TlsMode::VerifyCa,
                    sqlx::mysql::MySqlSslMode::VerifyIdentity => TlsMode::VerifyFull,
                })
                .unwrap_or(TlsMode::Prefer),
        };
        let root = param(dialect.ca_keys()).or_else(|| match dialect {
            Dialect::Postgres => std::env::var("PGSSLROOTCERT").ok(),
            Dialect::MySql => None,
        });
        DbTls {
            dialect,
            mode,
            root_cert: root.filter(|r| !is_inline_pem(r)).map(PathBuf::from),
        }
    }
}

/// Chooses ring as the process's rustls crypto provider, once, before a database connection
/// needs one: sqlx's `verify-ca` verifier asks for the process default, and with two providers
/// compiled in (ring, and aws-lc-rs through other crates) rustls cannot pick one by itself.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another part of the process chose one already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn is_inline_pem(value: &str) -> bool {
    let v = value.trim();
    v.starts_with("-----BEGIN") && v.ends_with("-----")
}

/// Checks the TLS options of a PostgreSQL or MySQL URL and returns the URL for the driver:
/// certificate paths resolved against `base_dir`, and (PostgreSQL, as libpq does) `require`
/// with an `sslrootcert` made `verify-ca`. The error names the option and says what is wrong.
pub(crate) fn resolve(dialect: Dialect, raw: &str, base_dir: &Path) -> Result<String, String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut changed = false;
    let mut out = Vec::with_capacity(pairs.len());
    let mut mode = None;
    let mut has_ca = false;
    for (key, value) in pairs {
        if dialect.mode_keys().contains(&key.as_str()) {
            let Some(m) = dialect.parse_mode(&value) else {
                let known: Vec<&str> = TlsMode::ALL
                    .into_iter()
                    .map(|m| dialect.mode_name(m))
                    .collect();
                return Err(format!(
                    "{key}={value} is not a TLS mode here: expected one of {}",
                    known.join(", ")
                ));
            };
            mode = Some(m);
            out.push((key, value));
        } else if dialect.file_keys().contains(&key.as_str()) && !is_inline_pem(&value) {
            if value.trim().is_empty() {
                return Err(format!("{key} names no file"));
            }
            let path = Path::new(value.trim());
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                changed = true;
                base_dir.join(path)
            };
            if !path.is_file() {
                return Err(format!("{key}: no file at {}", path.display()));
            }
            has_ca |= dialect.ca_keys().contains(&key.as_str());
            out.push((key, path.to_string_lossy().into_owned()));
        } else {
            out.push((key, value));
        }
    }
    if dialect == Dialect::Postgres && mode == Some(TlsMode::Require) && has_ca {
        for (k, v) in &mut out {
            if dialect.mode_keys().contains(&k.as_str()) {
                *v = "verify-ca".to_owned();
            }
        }
        changed = true;
    }
    if !changed {
        return Ok(raw.to_owned());
    }
    url.query_pairs_mut().clear().extend_pairs(out);
    Ok(url.to_string())
}

/// Why a connection failed, when TLS was the reason: in words that say what to fix. `None` for
/// failures that have nothing to do with TLS.
pub fn explain(err: &sqlx::Error, tls: &DbTls) -> Option<String> {
    match err {
        sqlx::Error::Tls(inner) => {
            if let Some(e) = inner.downcast_ref::<rustls::Error>() {
                return Some(rustls_reason(e, tls));
            }
            let text = inner.to_string();
            if text.contains("does not support TLS") {
                Some(format!(
                    "the server does not support TLS, and {} does not fall back to plaintext",
                    tls.mode_text()
                ))
            } else if text.contains("Invalid certificate") {
                Some(format!(
                    "the CA file in {} holds no usable certificate ({text})",
                    ca_text(tls)
                ))
            } else {
                Some(format!("the TLS setup failed: {text}"))
            }
        }
        sqlx::Error::Io(io) => {
            if let Some(e) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(rustls_reason(e, tls));
            }
            if io.kind() == std::io::ErrorKind::NotFound && tls.root_cert.is_some() {
                return Some(format!("cannot read the CA file in {}", ca_text(tls)));
            }
            None
        }
        _ => None,
    }
}

fn ca_text(tls: &DbTls) -> String {
    match &tls.root_cert {
        Some(p) => format!("{} ({})", tls.dialect.ca_key(), p.display()),
        None => tls.dialect.ca_key().to_owned(),
    }
}

fn rustls_reason(e: &rustls::Error, tls: &DbTls) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = e else {
        return match e {
            rustls::Error::AlertReceived(alert) => {
                format!("the server ended the TLS handshake ({alert:?})")
            }
            other => format!("the TLS handshake failed: {other}"),
        };
    };
    match cert {
        C::UnknownIssuer => match &tls.root_cert {
            Some(p) => format!(
                "the server's certificate is not trusted: it is not signed by the CA in {} ({})",
                tls.dialect.ca_key(),
                p.display()
            ),
            None => format!(
                "the server's certificate is not trusted: it is not signed by a public CA (set {} to the file of the CA that signed it)",
                tls.dialect.ca_key()
            ),
        },
        C::NotValidForName => format!(
            "the server's certificate does not name the host connected to ({} checks the name)",
            tls.mode_text()
        ),
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = match expected {
                rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
                rustls::pki_types::ServerName::IpAddress(ip) => {
                    std::net::IpAddr::from(*ip).to_string()
                }
                other => format!("{other:?}"),
            };
            let names: Vec<String> = presented.iter().map(|p| plain_name(p)).collect();
            format!(
                "the server's certificate does not name the host `{expected}` (it names {}; {} checks the name)",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
                tls.mode_text()
            )
        }
        C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check this machine's clock)".to_owned()
        }
        C::Revoked => "the server's certificate has been revoked".to_owned(),
        C::BadSignature => "the server's certificate has a bad signature".to_owned(),
        other => format!("the server's certificate was refused: {other:?}"),
    }
}

/// `DnsName("db.example")` → `db.example`, `IpAddress(10.0.0.1)` → `10.0.0.1`.
fn plain_name(presented: &str) -> String {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(|inner| inner.trim_matches('"').to_owned())
        .unwrap_or_else(|| presented.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in files {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        dir
    }

    #[test]
    fn postgres_modes_are_checked_and_paths_resolved() {
        let dir = dir_with(&["ca.pem"]);
        let url = resolve(
            Dialect::Postgres,
            "postgres://u:p@db.example/club?sslmode=verify-full&sslrootcert=ca.pem",
            dir.path(),
        )
        .expect("valid");
        let tls = DbTls::of_url(Dialect::Postgres, &url);
        assert_eq!(tls.mode, TlsMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(dir.path().join("ca.pem")));
        assert_eq!(tls.mode_text(), "sslmode=verify-full");
        assert!(url.contains("u:p@db.example/club"), "{url}");

        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let raw = format!("postgres://db.example/club?sslmode={mode}");
            assert_eq!(
                resolve(Dialect::Postgres, &raw, dir.path()).as_deref(),
                Ok(raw.as_str())
            );
        }
        let expected_one_of = "is not a TLS mode here: expected one of disable, prefer, require, verify-ca, verify-full";
        let missing = dir.path().join("missing.pem");
        for (name, raw, expected) in [
            (
                "underscore in the mode",
                "postgres://db.example/club?sslmode=verify_full",
                format!("sslmode=verify_full {expected_one_of}"),
            ),
            (
                "libpq's allow",
                "postgres://db.example/club?sslmode=allow",
                format!("sslmode=allow {expected_one_of}"),
            ),
            (
                "missing root cert",
                "postgres://db.example/club?sslmode=verify-ca&sslrootcert=missing.pem",
                format!("sslrootcert: no file at {}", missing.display()),
            ),
        ] {
            assert_eq!(
                resolve(Dialect::Postgres, raw, dir.path()),
                Err(expected),
                "{name}"
            );
        }
    }

    /// The mode a URL resolved in a folder holding `ca.pem` comes to.
    fn resolved_mode(dialect: Dialect, raw: &str) -> TlsMode {
        let dir = dir_with(&["ca.pem"]);
        let url = resolve(dialect, raw, dir.path()).expect("valid");
        DbTls::of_url(dialect, &url).mode
    }

    #[test]
    fn require_with_a_ca_verifies_it_on_postgres_as_libpq_does_but_not_on_mysql() {
        for (name, dialect, raw, mode) in [
            (
                "postgres require with a CA",
                Dialect::Postgres,
                "postgres://db.example/club?sslmode=require&sslrootcert=ca.pem",
                TlsMode::VerifyCa,
            ),
            (
                "postgres require without a CA",
                Dialect::Postgres,
                "postgres://db.example/club?sslmode=require",
                TlsMode::Require,
            ),
            // MySQL does not turn REQUIRED into a verification: it stays what it says.
            (
                "mysql REQUIRED with a CA",
                Dialect::MySql,
                "mysql://db.example/club?ssl-mode=REQUIRED&ssl-ca=ca.pem",
                TlsMode::Require,
            ),
        ] {
            assert_eq!(resolved_mode(dialect, raw), mode, "{name}");
        }
    }

    #[test]
    fn mysql_modes_are_checked_and_paths_resolved() {
        let dir = dir_with(&["ca.pem", "client.pem", "client.key"]);
        for (given, mode) in [
            ("DISABLED", TlsMode::Disable),
            ("PREFERRED", TlsMode::Prefer),
            ("REQUIRED", TlsMode::Require),
            ("VERIFY_CA", TlsMode::VerifyCa),
            ("VERIFY_IDENTITY", TlsMode::VerifyFull),
            ("verify_identity", TlsMode::VerifyFull),
        ] {
            let url = resolve(
                Dialect::MySql,
                &format!("mysql://u:p@db.example/club?ssl-mode={given}&ssl-ca=ca.pem&ssl-cert=client.pem&ssl-key=client.key"),
                dir.path(),
            )
            .expect("valid");
            let tls = DbTls::of_url(Dialect::MySql, &url);
            assert_eq!(tls.mode, mode, "{given}");
            assert_eq!(tls.root_cert, Some(dir.path().join("ca.pem")));
            assert!(
                url.contains(&format!(
                    "ssl-key={}",
                    url::form_urlencoded::byte_serialize(
                        dir.path().join("client.key").to_string_lossy().as_bytes()
                    )
                    .collect::<String>()
                )),
                "{url}"
            );
        }
        let err = resolve(
            Dialect::MySql,
            "mysql://db.example/club?ssl-mode=verify-full",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "ssl-mode=verify-full is not a TLS mode here: expected one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
        );
        assert_eq!(
            DbTls::of_url(Dialect::MySql, "mysql://db.example/club").mode,
            TlsMode::Prefer
        );
        assert_eq!(
            DbTls::of_url(
                Dialect::MySql,
                "mysql://db.example/club?ssl-mode=VERIFY_IDENTITY"
            )
            .mode_text(),
            "ssl-mode=VERIFY_IDENTITY"
        );
    }

    #[test]
    fn tls_failures_are_explained() {
        let tls = DbTls {
            dialect: Dialect::Postgres,
            mode: TlsMode::VerifyFull,
            root_cert: Some(PathBuf::from("/etc/ca.pem")),
        };
        let io = |e: rustls::Error| {
            sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        };
        assert_eq!(
            explain(
                &io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                )),
                &tls
            )
            .as_deref(),
            Some(
                "the server's certificate is not trusted: it is not signed by the CA in sslrootcert (/etc/ca.pem)"
            )
        );
        let wrong_name = rustls::CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1")
                .expect("ip")
                .to_owned(),
            presented: vec!["DnsName(\"localhost\")".into()],
        };
        assert_eq!(
            explain(&io(rustls::Error::InvalidCertificate(wrong_name)), &tls).as_deref(),
            Some(
                "the server's certificate does not name the host `127.0.0.1` (it names localhost; sslmode=verify-full checks the name)"
            )
        );
        let require = DbTls {
            dialect: Dialect::MySql,
            mode: TlsMode::Require,
            root_cert: None,
        };
        assert_eq!(
            explain(
                &sqlx::Error::Tls("server does not support TLS".into()),
                &require
            )
            .as_deref(),
            Some(
                "the server does not support TLS, and ssl-mode=REQUIRED does not fall back to plaintext"
            )
        );
        assert_eq!(
            explain(
                &io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                )),
                &require
            )
            .as_deref(),
            Some(
                "the server's certificate is not trusted: it is not signed by a public CA (set ssl-ca to the file of the CA that signed it)"
            )
        );
        assert_eq!(
            explain(&sqlx::Error::PoolTimedOut, &tls),
            None,
            "not a TLS failure"
        );
    }
}
