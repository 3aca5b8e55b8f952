//! VERP bounce addresses: what decodes is exactly what the relay encoded, under its secret.

use mailbridge::relay::verp::{VerpError, decode, encode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

use crate::harness::text;

/// The secret and domain the corpus's `valid-*` seeds were made with.
pub const SECRET: &[u8] = b"fuzz-verp-secret";
pub const DOMAIN: &str = "bounces.club.example";
const PREFIX_LEN: usize = "bounces+".len();

pub fn check_decode(input: &[u8]) -> TestCaseResult {
    let address = text(input);
    match decode(&address, DOMAIN, SECRET) {
        Ok(id) => {
            // Only an address the relay itself made decodes: same id, same tag, same domain (the
            // tag and domain in any ASCII case, surrounding white space trimmed).
            let made = encode(&id, DOMAIN, SECRET);
            prop_assert!(
                made.eq_ignore_ascii_case(address.trim()),
                "{:?} decoded to {:?}, whose address is {:?}",
                address,
                id,
                made
            );
            let named = format!("+{id}.");
            prop_assert!(
                address.contains(&named),
                "{:?} does not name {:?}",
                address,
                id
            );
            // A relay with another secret refuses it: the tag is what is checked.
            prop_assert!(
                matches!(
                    decode(&address, DOMAIN, b"another-secret"),
                    Err(VerpError::BadTag(_))
                ),
                "{address:?} decodes under another secret"
            );
        }
        Err(VerpError::NotVerp(a) | VerpError::BadTag(a)) => {
            prop_assert_eq!(a, address, "the error names the address as given");
        }
    }
    Ok(())
}

/// Outbox ids (the relay's 32 hex digits, and any other non-empty text) and bounce domains.
pub fn ids_and_domains() -> impl Strategy<Value = (String, String, Vec<u8>)> {
    (
        prop_oneof!["[0-9a-f]{32}", ".{1,40}", "[a-z0-9.+=_-]{1,20}"],
        prop_oneof![
            Just(DOMAIN.to_owned()),
            "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){1,3}",
        ],
        prop::collection::vec(any::<u8>(), 0..48),
    )
}

pub fn check_round_trip((id, domain, secret): (String, String, Vec<u8>)) -> TestCaseResult {
    let address = encode(&id, &domain, &secret);
    prop_assert_eq!(decode(&address, &domain, &secret), Ok(id.clone()));
    // The tag and the domain may come back in another case (some MTAs change it); the id may not.
    let tag = &address[PREFIX_LEN + id.len() + 1..address.len() - domain.len() - 1];
    let shouted = format!(
        "bounces+{id}.{}@{}",
        tag.to_ascii_uppercase(),
        domain.to_ascii_uppercase()
    );
    prop_assert_eq!(decode(&shouted, &domain, &secret), Ok(id.clone()));
    if id.to_ascii_uppercase() != id {
        let other_id = address.replacen(&id, &id.to_ascii_uppercase(), 1);
        prop_assert!(decode(&other_id, &domain, &secret).is_err(), "{other_id:?}");
    }
    // Another id under this id's tag is a forgery.
    let forged = address.replacen(&format!("+{id}."), &format!("+{id}x."), 1);
    prop_assert!(
        matches!(decode(&forged, &domain, &secret), Err(VerpError::BadTag(_))),
        "{forged:?}"
    );
    Ok(())
}

/// The corpus was made with [`SECRET`] and [`DOMAIN`]: its `valid-*` seeds decode, the rest are
/// refused (forged, foreign or not VERP at all).
pub fn check_seed_names() {
    for (name, bytes) in crate::harness::seeds("verp") {
        let decoded = decode(&text(&bytes), DOMAIN, SECRET);
        assert_eq!(
            decoded.is_ok(),
            name.starts_with("valid-"),
            "{name}: {decoded:?}"
        );
    }
}
