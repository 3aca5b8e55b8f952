//! DKIM signing of relay mail: the one place a message is signed (relaxed/relaxed, RSA-SHA256 or
//! Ed25519-SHA256, with mail-auth), once, when it is queued, so the stored bytes are the signed
//! bytes and every retry resends the same signature. Also the DNS record that publishes a key.

use mail_auth::common::crypto::{Algorithm, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};

use crate::config::{DkimConfig, DkimKey, RelayConfig};

/// Why a message could not be signed (mail-auth found no header to sign, or the crypto library
/// failed). The key is never part of the message.
#[derive(Debug, thiserror::Error)]
#[error("cannot DKIM-sign the message: {0}")]
pub struct DkimError(String);

/// The config's key, shared (not copied) into each message's signer.
struct Shared<'a>(&'a DkimKey);

impl SigningKey for Shared<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.signing_key().sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.signing_key().algorithm()
    }
}

/// `message` with a `DKIM-Signature` header in front, when `[relay.dkim]` is configured;
/// unchanged otherwise. `message` is the exact bytes every route sends (CRLF line ends).
pub fn sign_if_configured(message: Vec<u8>, config: &RelayConfig) -> Result<Vec<u8>, DkimError> {
    match (&config.dkim, &config.dkim_key) {
        (Some(dkim), Some(key)) => sign(&message, dkim, key),
        _ => Ok(message),
    }
}

/// `message` signed with `key` as `dkim` says.
pub fn sign(message: &[u8], dkim: &DkimConfig, key: &DkimKey) -> Result<Vec<u8>, DkimError> {
    let signature = DkimSigner::from_key(Shared(key))
        .domain(dkim.domain.clone())
        .selector(dkim.selector.clone())
        .headers(dkim.headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .map_err(|e| DkimError(e.to_string()))?;
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(message);
    Ok(signed)
}

/// The DNS name a key for `selector` at `domain` is published under (fully qualified).
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}.")
}

/// The TXT record's value: `v=DKIM1; k=rsa; p=…`.
pub fn record_value(key: &DkimKey) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key.algorithm().dns_name(),
        key.public_key_base64()
    )
}

/// The value as a zone file writes it: quoted strings of at most 255 bytes each (a TXT
/// record's character-strings are limited to 255; a 2048-bit RSA key needs two).
pub fn record_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_split_into_255_byte_strings() {
        let value = "a".repeat(300);
        let out = record_strings(&value);
        assert_eq!(
            out,
            format!("\"{}\" \"{}\"", "a".repeat(255), "a".repeat(45))
        );
        assert_eq!(record_strings("v=DKIM1"), "\"v=DKIM1\"");
        assert_eq!(
            record_name("mb1", "club.example"),
            "mb1._domainkey.club.example."
        );
    }

    #[test]
    fn the_record_names_the_key_type_and_carries_the_public_key() {
        let (_, rsa) = DkimKey::generate(false).expect("rsa");
        let value = record_value(&rsa);
        assert!(value.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBg"), "{value}");
        let (_, ed) = DkimKey::generate(true).expect("ed25519");
        assert_eq!(
            record_value(&ed),
            format!("v=DKIM1; k=ed25519; p={}", ed.public_key_base64())
        );
    }

    #[test]
    fn the_signature_goes_in_front_and_covers_the_configured_headers() {
        let (_, key) = DkimKey::generate(true).expect("ed25519");
        let dkim = DkimConfig {
            domain: "club.example".into(),
            selector: "mb1".into(),
            private_key_file: "k.pem".into(),
            headers: crate::config::DKIM_DEFAULT_HEADERS
                .map(str::to_owned)
                .to_vec(),
        };
        let message = b"From: c@club.example\r\nTo: a@example.org\r\nSubject: Hi\r\nList-Unsubscribe: <mailto:u@club.example>\r\n\r\nBody\r\n";
        let signed = sign(message, &dkim, &key).expect("signed");
        let text = String::from_utf8(signed).expect("ascii");
        assert!(
            text.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; s=mb1; d=club.example; c=relaxed/relaxed;"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(std::str::from_utf8(message).expect("ascii")),
            "{text}"
        );
        let header = text.split("\r\n\r\n").next().expect("header");
        let h = header
            .split("h=")
            .nth(1)
            .expect("h=")
            .split(';')
            .next()
            .expect("h");
        let mut signed: Vec<String> = h
            .replace(['\r', '\n', '\t', ' '], "")
            .split(':')
            .map(str::to_ascii_lowercase)
            .collect();
        signed.sort();
        let mut expected: Vec<String> = dkim
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        expected.sort();
        // Headers the message lacks are named too, so none can be added after signing.
        assert_eq!(signed, expected, "{header}");
    }
}
