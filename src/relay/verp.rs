//! VERP Return-Path addresses: `bounces+<id>.<tag>@<bounce_domain>`, where `<tag>` is an
//! HMAC-SHA256 of the outbox id under `[relay] verp_secret`. A bounce sent to such an address names
//! its message, and a forged one (wrong or missing tag) is refused before anything is changed.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Hex digits of the HMAC kept in the address (64 bits: enough against guessing, short enough for
/// a local part).
const TAG_HEX: usize = 16;
/// The local part every VERP address starts with (the bounce parser looks for it too).
pub(crate) const PREFIX: &str = "bounces+";

/// Why a bounce address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerpError {
    #[error("`{0}` is not a VERP bounce address of this relay")]
    NotVerp(String),
    #[error("the VERP bounce address `{0}` has a wrong signature (forged or from another relay)")]
    BadTag(String),
}

fn tag(secret: &[u8], id: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(id.as_bytes());
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..TAG_HEX / 2])
}

/// The Return-Path address for outbox message `id`.
pub fn encode(id: &str, bounce_domain: &str, secret: &[u8]) -> String {
    format!("{PREFIX}{id}.{}@{bounce_domain}", tag(secret, id))
}

/// The outbox id named by a bounce address, after checking its tag (in constant time).
pub fn decode(address: &str, bounce_domain: &str, secret: &[u8]) -> Result<String, VerpError> {
    let not_verp = || VerpError::NotVerp(address.to_owned());
    let (local, domain) = address.trim().rsplit_once('@').ok_or_else(not_verp)?;
    if !domain.eq_ignore_ascii_case(bounce_domain) {
        return Err(not_verp());
    }
    let token = local.strip_prefix(PREFIX).ok_or_else(not_verp)?;
    let (id, given) = token.rsplit_once('.').ok_or_else(not_verp)?;
    if id.is_empty() || given.len() != TAG_HEX {
        return Err(not_verp());
    }
    let expected = tag(secret, id);
    if bool::from(
        given
            .to_ascii_lowercase()
            .as_bytes()
            .ct_eq(expected.as_bytes()),
    ) {
        Ok(id.to_owned())
    } else {
        Err(VerpError::BadTag(address.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"verp-test-secret";

    #[test]
    fn round_trips_and_names_the_message() {
        let addr = encode("0a1b2c", "bounces.club.example", SECRET);
        assert!(addr.starts_with("bounces+0a1b2c."), "{addr}");
        assert!(addr.ends_with("@bounces.club.example"), "{addr}");
        assert_eq!(
            decode(&addr, "bounces.club.example", SECRET).unwrap(),
            "0a1b2c"
        );
        assert_eq!(
            decode(
                &addr
                    .to_uppercase()
                    .replace("BOUNCES+0A1B2C", "bounces+0a1b2c"),
                "BOUNCES.CLUB.EXAMPLE",
                SECRET
            )
            .unwrap(),
            "0a1b2c",
            "domain and tag case do not matter"
        );
    }

    #[test]
    fn forged_or_foreign_addresses_are_refused() {
        let addr = encode("0a1b2c", "b.example", SECRET);
        // Another message id with the first one's tag.
        let forged = addr.replace("0a1b2c", "0a1b2d");
        assert!(matches!(
            decode(&forged, "b.example", SECRET),
            Err(VerpError::BadTag(_))
        ));
        // Right address, other secret.
        assert!(matches!(
            decode(&addr, "b.example", b"other"),
            Err(VerpError::BadTag(_))
        ));
        for bad in [
            "bounces+0a1b2c@b.example",
            "club@b.example",
            "bounces+.0123456789abcdef@b.example",
            "bounces+x.0123@b.example",
            "no-at-sign",
        ] {
            assert!(
                matches!(decode(bad, "b.example", SECRET), Err(VerpError::NotVerp(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            decode(&addr, "other.example", SECRET),
            Err(VerpError::NotVerp(_))
        ));
    }
}
