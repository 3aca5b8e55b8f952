//! `[relay.dkim]`: the domain, selector and private key relay mail is DKIM-signed with, and the
//! headers the signature covers. The key file is read and checked here, when the config is
//! loaded, into a [`DkimKey`] kept for the life of the process: a missing, unreadable, short or
//! wrong-type key is a config error naming `relay.dkim.private_key_file` and the path, never the
//! key's bytes. Signing itself is `relay::dkim`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::read::{Loader, Raw};

/// What the signature covers unless `headers` says otherwise: the headers a receiver shows or
/// acts on, the MIME headers that say how to read the body, and the RFC 8058 pair (a
/// one-click unsubscribe must be signed to be honoured). A header a message lacks is left out.
pub const DEFAULT_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A key file larger than this is not a PEM private key (an 8192-bit RSA key is about 6.5 KB).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawDkim {
    domain: Raw,
    selector: Raw,
    private_key_file: Raw,
    headers: Option<Vec<Raw>>,
}

#[derive(Debug, Clone)]
pub struct DkimConfig {
    /// `d=`: the signing domain, the From domain or a parent of it (DMARC alignment).
    pub domain: String,
    /// `s=`: the key is published at `{selector}._domainkey.{domain}`.
    pub selector: String,
    pub private_key_file: PathBuf,
    /// Header names the signature covers (`h=`), as written.
    pub headers: Vec<String>,
}

/// The algorithm of a DKIM key, and for RSA its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    /// RSA-SHA256 with a modulus of `bits` bits (2048 to 8192).
    Rsa { bits: usize },
    /// Ed25519-SHA256 (RFC 8463).
    Ed25519,
}

impl DkimAlgorithm {
    /// The key type as the DNS record's `k=` tag names it.
    pub fn dns_name(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa { .. } => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }
}

/// A DKIM private key, parsed once; cheap to clone. `Debug` shows its algorithm only.
#[derive(Clone)]
pub struct DkimKey {
    signing: Arc<SigningKey>,
    algorithm: DkimAlgorithm,
    /// What the DNS record's `p=` carries: an RSA key's SubjectPublicKeyInfo (DER), as
    /// `openssl rsa -pubout` and opendkim-genkey write it, or Ed25519's 32 raw bytes (RFC 8463).
    public_key: Vec<u8>,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DkimKey({:?})", self.algorithm)
    }
}

impl DkimKey {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`: RSA or Ed25519) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`). The error says what is wrong with the file, never its bytes.
    pub fn from_pem(pem: &[u8]) -> Result<DkimKey, String> {
        const NOT_A_KEY: &str = "not a PEM private key (expected \"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")";
        // The parser's own errors may quote a line of the file: they are replaced, not shown.
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| NOT_A_KEY.to_owned())?;
        match der {
            PrivateKeyDer::Pkcs1(der) => rsa(PrivateKeyDer::Pkcs1(der)),
            PrivateKeyDer::Pkcs8(der) => {
                if Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).is_ok() {
                    ed25519(&der)
                } else {
                    rsa(PrivateKeyDer::Pkcs8(der))
                }
            }
            PrivateKeyDer::Sec1(_) => {
                Err("an EC key: DKIM signs with RSA (2048 bits or more) or Ed25519 keys".to_owned())
            }
            _ => Err(NOT_A_KEY.to_owned()),
        }
    }

    /// A new key: RSA of 2048 bits, or Ed25519. Returns the PEM (PKCS#8) to write to the key
    /// file and the key it holds.
    pub fn generate(ed25519: bool) -> Result<(String, DkimKey), String> {
        use aws_lc_rs::encoding::AsDer;
        let failed = |_| "the crypto library could not generate a key".to_owned();
        let pem = if ed25519 {
            let pair = Ed25519KeyPair::generate().map_err(failed)?;
            pkcs8_pem(pair.to_pkcs8v1().map_err(failed)?.as_ref())
        } else {
            let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?;
            pkcs8_pem(pair.as_der().map_err(failed)?.as_ref())
        };
        let key = DkimKey::from_pem(pem.as_bytes())?;
        Ok((pem, key))
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// The `p=` value of the DNS record that publishes this key (base64).
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.public_key)
    }

    /// The key in the form mail-auth signs with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

fn rsa(der: PrivateKeyDer<'_>) -> Result<DkimKey, String> {
    let parsed = match &der {
        PrivateKeyDer::Pkcs1(d) => RsaKeyPair::from_der(d.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(d) => RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()),
        _ => return Err("not an RSA or Ed25519 private key".to_owned()),
    };
    let pair = parsed.map_err(|e| match e.description_() {
        "TooSmall" => "an RSA key shorter than 2048 bits: receivers ignore such signatures; make a new key with `mailbridge dkim keygen`".to_owned(),
        "TooLarge" => "an RSA key longer than 8192 bits".to_owned(),
        _ => "not an RSA or Ed25519 private key (or a damaged one)".to_owned(),
    })?;
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let public: PublicKeyX509Der<'_> = pair
        .public_key()
        .as_der()
        .map_err(|_| "cannot derive the RSA public key".to_owned())?;
    let bits = pair.public_modulus_len() * 8;
    let signing = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|_| "not a usable RSA private key".to_owned())?;
    Ok(DkimKey {
        signing: Arc::new(SigningKey::Rsa(signing)),
        algorithm: DkimAlgorithm::Rsa { bits },
        public_key: public.as_ref().to_vec(),
    })
}

fn ed25519(der: &PrivatePkcs8KeyDer<'_>) -> Result<DkimKey, String> {
    let bad = |_| "not a usable Ed25519 private key".to_owned();
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(bad)?;
    let signing = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
        .map_err(|_| "not a usable Ed25519 private key".to_owned())?;
    Ok(DkimKey {
        signing: Arc::new(SigningKey::Ed25519(signing)),
        algorithm: DkimAlgorithm::Ed25519,
        public_key: pair.public_key().as_ref().to_vec(),
    })
}

/// `-----BEGIN PRIVATE KEY-----` around `pkcs8`, 64 base64 characters a line. Written here
/// because rustls-pki-types only decodes PEM, and five lines do not justify a `pem` crate.
fn pkcs8_pem(pkcs8: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Reads the key file; the message names the path, never the content.
pub fn read_key_file(path: &Path) -> Result<DkimKey, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(format!(
            "{shown} is {len} bytes: too large for a private key"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    DkimKey::from_pem(&bytes).map_err(|m| format!("{shown}: {m}"))
}

/// A domain name or selector: dot-separated labels of letters, digits, `-` and `_`.
fn dns_name(l: &Loader<'_>, raw: &Raw, key: &str) -> Result<String, ConfigError> {
    let value = l.nonempty(raw, key)?;
    let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok || name.len() > 253 {
        return Err(l.invalid(
            raw.span(),
            key,
            format!("`{value}` is not a DNS name (letters, digits, `-`, dot-separated)"),
        ));
    }
    Ok(name)
}

/// Whether `domain` is `from_domain` or a parent of it: a signature with `d=` there is aligned
/// with the From address under DMARC's relaxed rule (without a public-suffix list, a `d=` that
/// is a sibling or child is not recognised, and is refused rather than guessed at).
pub fn aligned(domain: &str, from_domain: &str) -> bool {
    let from = from_domain.to_ascii_lowercase();
    let d = domain.to_ascii_lowercase();
    from == d || from.ends_with(&format!(".{d}"))
}

impl DkimConfig {
    /// Reads the section and its key; `from_domain` is `[relay] from`'s domain.
    pub(super) fn read(
        l: &Loader<'_>,
        r: &RawDkim,
        from_domain: &str,
    ) -> Result<(DkimConfig, DkimKey), ConfigError> {
        let domain = dns_name(l, &r.domain, "relay.dkim.domain")?;
        // Refused, not warned about: an unaligned signature does not satisfy DMARC, so mail
        // would be signed and still fail the Gmail/Yahoo bulk-sender rules.
        if !aligned(&domain, from_domain) {
            return Err(l.invalid(
                r.domain.span(),
                "relay.dkim.domain",
                format!(
                    "`{domain}` is neither the From domain `{from_domain}` ([relay] from) nor a parent of it: the signature would not align with the From address (DMARC)"
                ),
            ));
        }
        let selector = dns_name(l, &r.selector, "relay.dkim.selector")?;
        let headers = match &r.headers {
            None => DEFAULT_HEADERS.map(str::to_owned).to_vec(),
            Some(list) => read_headers(l, r, list)?,
        };
        let private_key_file = l.path(&r.private_key_file, "relay.dkim.private_key_file")?;
        let key = read_key_file(&private_key_file)
            .map_err(|m| l.invalid(r.private_key_file.span(), "relay.dkim.private_key_file", m))?;
        Ok((
            DkimConfig {
                domain,
                selector,
                private_key_file,
                headers,
            },
            key,
        ))
    }
}

fn read_headers(l: &Loader<'_>, r: &RawDkim, list: &[Raw]) -> Result<Vec<String>, ConfigError> {
    let mut headers = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = format!("relay.dkim.headers[{i}]");
        let name = l.nonempty(raw, &key)?.trim().to_owned();
        if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(l.invalid(
                raw.span(),
                &key,
                "a header name is printable ASCII without spaces or `:`",
            ));
        }
        headers.push(name);
    }
    // RFC 6376 §5.4: the From header must be signed.
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        let span = list.first().map_or(r.domain.span(), |h| h.span());
        return Err(l.invalid(
            span,
            "relay.dkim.headers",
            "must include \"From\" (RFC 6376 requires it to be signed)",
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testing::{BASE, error, parse};

    const RELAY: &str = "[relay]\nfrom = \"Club <club@mail.club.example>\"\n";

    /// A fresh key of each kind, written as PEM into a temporary folder.
    fn key_files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rsa_path = dir.path().join("rsa.pem");
        std::fs::write(&rsa_path, DkimKey::generate(false).expect("rsa").0).expect("write");
        let ed_path = dir.path().join("ed.pem");
        std::fs::write(&ed_path, DkimKey::generate(true).expect("ed25519").0).expect("write");
        (dir, rsa_path, ed_path)
    }

    fn section(path: &Path, extra: &str) -> String {
        format!(
            "{BASE}{RELAY}[relay.dkim]\ndomain = \"club.example\"\nselector = \"mb1\"\nprivate_key_file = \"{}\"\n{extra}",
            path.display()
        )
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dkim")
            .join(name)
    }

    #[test]
    fn reads_rsa_and_ed25519_keys_with_the_default_headers() {
        let (_dir, rsa, ed) = key_files();
        let relay = parse(&section(&rsa, "")).relay.expect("relay");
        let dkim = relay.dkim.expect("dkim");
        assert_eq!(
            (dkim.domain.as_str(), dkim.selector.as_str()),
            ("club.example", "mb1")
        );
        assert_eq!(dkim.private_key_file, rsa);
        assert_eq!(dkim.headers, DEFAULT_HEADERS.map(str::to_owned).to_vec());
        let key = relay.dkim_key.expect("key");
        assert_eq!(key.algorithm(), DkimAlgorithm::Rsa { bits: 2048 });
        assert!(
            key.public_key_base64()
                .starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA")
        );
        assert_eq!(format!("{key:?}"), "DkimKey(Rsa { bits: 2048 })");

        let relay = parse(&section(&ed, "headers = [\"from\", \"Subject\"]\n"))
            .relay
            .expect("relay");
        let key = relay.dkim_key.expect("key");
        assert_eq!(key.algorithm(), DkimAlgorithm::Ed25519);
        assert_eq!(key.public_key_base64().len(), 44, "32 bytes in base64");
        assert_eq!(relay.dkim.expect("dkim").headers, ["from", "Subject"]);
    }

    #[test]
    fn a_pkcs1_rsa_key_is_read() {
        let relay = parse(&section(&fixture("rsa2048-pkcs1.pem"), ""))
            .relay
            .expect("relay");
        assert_eq!(
            relay.dkim_key.expect("key").algorithm(),
            DkimAlgorithm::Rsa { bits: 2048 }
        );
    }

    #[test]
    fn key_errors_name_the_key_and_the_path_and_never_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let not_key = dir.path().join("notes.txt");
        std::fs::write(&not_key, "just some text\nSECRET-LOOKING-LINE\n").expect("write");
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nTUlJQkNBS0NBUUVB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let damaged = dir.path().join("damaged.pem");
        std::fs::write(&damaged, pkcs8_pem(b"SECRET-LOOKING-BYTES")).expect("write");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; 70_000]).expect("write");
        let short = fixture("rsa1024.pem");
        let ec = fixture("ec-p256.pem");
        let cases: [(&Path, String); 7] = [
            (
                &missing,
                format!(
                    "cannot read {}: No such file or directory (os error 2)",
                    missing.display()
                ),
            ),
            (
                &not_key,
                format!(
                    "{}: not a PEM private key (expected \"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")",
                    not_key.display()
                ),
            ),
            (
                &cert,
                format!(
                    "{}: not a PEM private key (expected \"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")",
                    cert.display()
                ),
            ),
            (
                &damaged,
                format!(
                    "{}: not an RSA or Ed25519 private key (or a damaged one)",
                    damaged.display()
                ),
            ),
            (
                &big,
                format!(
                    "{} is 70000 bytes: too large for a private key",
                    big.display()
                ),
            ),
            (
                &short,
                format!(
                    "{}: an RSA key shorter than 2048 bits: receivers ignore such signatures; make a new key with `mailbridge dkim keygen`",
                    short.display()
                ),
            ),
            (
                &ec,
                format!(
                    "{}: an EC key: DKIM signs with RSA (2048 bits or more) or Ed25519 keys",
                    ec.display()
                ),
            ),
        ];
        for (path, message) in cases {
            let got = error(&section(path, ""));
            assert_eq!(
                got,
                format!("mb.toml:9: `relay.dkim.private_key_file`: {message}")
            );
            assert!(!got.contains("SECRET"), "{got}");
        }
    }

    #[test]
    fn section_errors_name_file_line_and_key() {
        let (_dir, rsa, _) = key_files();
        let cases = [
            (
                section(&rsa, "").replace("\"club.example\"", "\"other.example\""),
                "mb.toml:7: `relay.dkim.domain`: `other.example` is neither the From domain `mail.club.example` ([relay] from) nor a parent of it: the signature would not align with the From address (DMARC)",
            ),
            (
                section(&rsa, "").replace("\"club.example\"", "\"ub.example\""),
                "mb.toml:7: `relay.dkim.domain`: `ub.example` is neither the From domain `mail.club.example` ([relay] from) nor a parent of it: the signature would not align with the From address (DMARC)",
            ),
            (
                section(&rsa, "").replace("\"mb1\"", "\"mb 1\""),
                "mb.toml:8: `relay.dkim.selector`: `mb 1` is not a DNS name (letters, digits, `-`, dot-separated)",
            ),
            (
                section(&rsa, "").replace("\"mb1\"", "\"\""),
                "mb.toml:8: `relay.dkim.selector`: must not be empty",
            ),
            (
                section(&rsa, "headers = [\"Subject\"]\n"),
                "mb.toml:10: `relay.dkim.headers`: must include \"From\" (RFC 6376 requires it to be signed)",
            ),
            (
                section(&rsa, "headers = [\"From\", \"X Y\"]\n"),
                "mb.toml:10: `relay.dkim.headers[1]`: a header name is printable ASCII without spaces or `:`",
            ),
            (
                section(&rsa, "").replace("selector", "selektor"),
                "mb.toml: TOML parse error at line 8, column 1\n  |\n8 | selektor = \"mb1\"\n  | ^^^^^^^^\nunknown field `selektor`, expected one of `domain`, `selector`, `private_key_file`, `headers`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(&text), expected, "{text}");
        }
    }

    #[test]
    fn the_from_domain_and_its_parents_are_aligned() {
        assert!(aligned("club.example", "club.example"));
        assert!(aligned("Club.Example", "mail.club.example"));
        assert!(!aligned("mail.club.example", "club.example"));
        assert!(!aligned("ub.example", "club.example"));
        assert!(!aligned("other.example", "club.example"));
    }
}
