//! DKIM keys: the public key a private key PEM gives (RSA in PKCS#1 or PKCS#8, Ed25519 in PKCS#8,
//! read with ring and rustls' PEM reader), the `p=` a selector's TXT record publishes, and whether
//! they are the same key. The private key itself never leaves this module.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// A DKIM public key, as it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `k=rsa`: the RSAPublicKey (PKCS#1) DER; published as its SubjectPublicKeyInfo.
    Rsa(Vec<u8>),
    /// `k=ed25519`: the 32 raw bytes (RFC 8463).
    Ed25519(Vec<u8>),
}

impl PublicKey {
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa(_) => "rsa",
            PublicKey::Ed25519(_) => "ed25519",
        }
    }

    /// The `p=` value to publish.
    pub fn p_value(&self) -> String {
        match self {
            PublicKey::Rsa(pkcs1) => STANDARD.encode(rsa_spki(pkcs1)),
            PublicKey::Ed25519(raw) => STANDARD.encode(raw),
        }
    }

    /// The TXT record's text to publish.
    pub fn record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.kind(), self.p_value())
    }

    /// Does the published `p=` (base64 decoded) hold this key? An RSA key may be published as
    /// its SubjectPublicKeyInfo (what `openssl rsa -pubout` writes, and what everyone uses) or as
    /// the bare RSAPublicKey; both are accepted, as verifiers accept both.
    pub fn matches(&self, kind: &str, published: &[u8]) -> bool {
        match self {
            PublicKey::Rsa(pkcs1) => {
                kind.eq_ignore_ascii_case("rsa")
                    && (published == rsa_spki(pkcs1).as_slice() || published == pkcs1.as_slice())
            }
            PublicKey::Ed25519(raw) => {
                kind.eq_ignore_ascii_case("ed25519") && published == raw.as_slice()
            }
        }
    }
}

/// The public key of a PEM private key; the error says what the file holds, never its bytes.
pub fn public_key_from_pem(pem: &[u8]) -> Result<PublicKey, String> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!("not a PEM private key (expected \"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\"): {e}")
    })?;
    match key {
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
            .map(|k| PublicKey::Rsa(k.public_key().as_ref().to_vec()))
            .map_err(|e| format!("RSA key refused: {e} (RSA keys must be 2048 to 4096 bits)")),
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
                return Ok(PublicKey::Rsa(k.public_key().as_ref().to_vec()));
            }
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(|k| PublicKey::Ed25519(k.public_key().as_ref().to_vec()))
                .map_err(|e| {
                    format!(
                        "PKCS#8 key is neither an RSA (2048 to 4096 bits) nor an Ed25519 key: {e}"
                    )
                })
        }
        PrivateKeyDer::Sec1(_) => {
            Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519 only".into())
        }
        _ => Err("an unknown kind of private key".into()),
    }
}

/// A DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// SubjectPublicKeyInfo { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING { pkcs1 } }.
/// Written here (a fixed prefix and two lengths) rather than with an ASN.1 crate for one shape.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bits);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALGORITHM.len() + bits.len(), &mut out);
    out.extend_from_slice(&ALGORITHM);
    out.extend(bits);
    out
}

/// A DKIM key record's tags that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `k=`, `rsa` when absent.
    pub kind: String,
    /// `p=` decoded; empty = the key is revoked.
    pub public_key: Vec<u8>,
}

/// Parses a key record (RFC 6376 §3.6.1): `tag=value` pairs separated by `;`.
pub fn parse_record(text: &str) -> Result<KeyRecord, String> {
    let mut kind = "rsa".to_owned();
    let mut p = None;
    for (i, tag) in text.split(';').enumerate() {
        let tag = tag.trim();
        if tag.is_empty() {
            continue;
        }
        let (name, value) = tag
            .split_once('=')
            .ok_or_else(|| format!("`{tag}` is not a tag=value pair"))?;
        let (name, value) = (name.trim(), value.trim());
        match name {
            "v" if i != 0 => return Err("v= must come first".into()),
            "v" if value != "DKIM1" => return Err(format!("v={value}: expected v=DKIM1")),
            "k" => kind = value.to_ascii_lowercase(),
            "p" => {
                let clean: String = value.chars().filter(|c| !c.is_whitespace()).collect();
                p = Some(
                    STANDARD
                        .decode(clean.as_bytes())
                        .map_err(|e| format!("p= is not base64: {e}"))?,
                );
            }
            _ => {}
        }
    }
    Ok(KeyRecord {
        kind,
        public_key: p.ok_or("no p= tag")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_lengths_are_der() {
        let short = rsa_spki(&[1, 2, 3]);
        assert_eq!(short[..2], [0x30, 15 + 2 + 4]);
        let long = rsa_spki(&[0u8; 270]);
        // 15 + (1 + 3 + 271) = 290 bytes of content: two length bytes.
        assert_eq!(long[..4], [0x30, 0x82, 0x01, 0x22]);
        assert_eq!(long[19..24], [0x03, 0x82, 0x01, 0x0f, 0x00]);
    }

    #[test]
    fn records_are_read_tag_by_tag() {
        let r = parse_record("v=DKIM1; k=ed25519; p=AAEC").unwrap();
        assert_eq!((r.kind.as_str(), r.public_key), ("ed25519", vec![0, 1, 2]));
        assert_eq!(parse_record("p=").unwrap().public_key, Vec::<u8>::new());
        assert!(parse_record("k=rsa").is_err());
        assert!(parse_record("k=rsa; v=DKIM1; p=AA==").is_err());
        assert!(parse_record("v=DKIM1; p=!!").is_err());
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(public_key_from_pem(b"hello").is_err());
        let bad = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(public_key_from_pem(bad).is_err());
    }
}
