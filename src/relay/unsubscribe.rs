//! RFC 8058 one-click unsubscribe for relay mail: the tokens (https and mailto) and the
//! `List-Unsubscribe` header pair that [`super::render`] adds. Recording an opt-out, which
//! `POST /u/{token}` and a mailed `unsubscribe+…@<bounce_domain>` (the bounce path) share, is
//! `events::opt_out`'s.
//!
//! A token names its recipient (identity form) and category, and carries an HMAC-SHA256 over both
//! under `[relay] unsubscribe_secret` (a key of its own, not the VERP key), so the server checks it
//! without a lookup table, and a token cannot be guessed, nor altered or replayed for another
//! address or category. It is lower-case base32 (decoded in either case), safe in a URL path and
//! in a mail local part.

use data_encoding::BASE32_DNSSEC;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::render::Category;
use crate::config::RelayConfig;
use crate::domain::Email;

/// The token format's version (its first byte).
const VERSION: u8 = 1;
/// Bytes of the HMAC kept in a token (96 bits: beyond guessing, short enough for a local part).
const MAC_BYTES: usize = 12;
/// Domain separation: this key signs nothing else, but the label keeps a token's MAC from ever
/// meaning anything to another use of HMAC under the same key.
const LABEL: &[u8] = b"mailbridge one-click unsubscribe v1";
/// The local part a mailed unsubscribe request starts with.
pub const MAIL_PREFIX: &str = "unsubscribe+";
/// The longest token read (an address is at most 254 bytes: 2 + 12 + 254 bytes in base32).
pub const MAX_TOKEN_CHARS: usize = 430;
/// The value of `List-Unsubscribe-Post` and the only body `POST /u/{token}` accepts.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// A token that does not verify. Deliberately without detail: the answer to it says nothing of
/// why (wrong MAC, bad encoding, unknown category), and nothing of it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid unsubscribe token")]
pub struct BadToken;

/// The byte a category is carried as (only categories a member can opt out of have one).
fn category_code(category: Category) -> Option<u8> {
    category.member_can_opt_out().then_some(match category {
        Category::Notification => b'n',
        Category::Registration => b'r',
        Category::Password => b'p',
        Category::Alert => b'a',
    })
}

fn category_of(code: u8) -> Option<Category> {
    let category = match code {
        b'n' => Category::Notification,
        b'r' => Category::Registration,
        b'p' => Category::Password,
        _ => return None,
    };
    category.member_can_opt_out().then_some(category)
}

fn mac(secret: &[u8], email: &str, category: Category) -> [u8; MAC_BYTES] {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(LABEL);
    mac.update(&[0]);
    mac.update(category.as_str().as_bytes());
    mac.update(&[0]);
    mac.update(email.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&digest[..MAC_BYTES]);
    out
}

/// The token for `email` and `category`; `None` for a category no member can opt out of.
pub fn token(secret: &[u8], email: &Email, category: Category) -> Option<String> {
    let code = category_code(category)?;
    let address = email.as_str();
    let mut bytes = Vec::with_capacity(2 + MAC_BYTES + address.len());
    bytes.push(VERSION);
    bytes.push(code);
    bytes.extend_from_slice(&mac(secret, address, category));
    bytes.extend_from_slice(address.as_bytes());
    Some(BASE32_DNSSEC.encode(&bytes))
}

/// The address and category a token names, once its MAC checks (in constant time).
pub fn verify(secret: &[u8], token: &str) -> Result<(Email, Category), BadToken> {
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS || !token.is_ascii() {
        return Err(BadToken);
    }
    let bytes = BASE32_DNSSEC
        .decode(token.as_bytes())
        .map_err(|_| BadToken)?;
    let (&[version, code], rest) = bytes.split_first_chunk::<2>().ok_or(BadToken)?;
    let (given, address) = rest.split_at_checked(MAC_BYTES).ok_or(BadToken)?;
    if version != VERSION || address.is_empty() {
        return Err(BadToken);
    }
    let category = category_of(code).ok_or(BadToken)?;
    let address = std::str::from_utf8(address).map_err(|_| BadToken)?;
    let expected = mac(secret, address, category);
    if !bool::from(given.ct_eq(&expected)) {
        return Err(BadToken);
    }
    // Only an address in identity form was ever signed; anything else is not ours.
    let email = Email::parse(address).map_err(|_| BadToken)?;
    if email.as_str() != address {
        return Err(BadToken);
    }
    Ok((email, category))
}

/// The token of a mailed request: the local part of `unsubscribe+TOKEN@<bounce_domain>`.
pub fn token_of_address<'a>(address: &'a str, bounce_domain: &str) -> Option<&'a str> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(bounce_domain) {
        return None;
    }
    let prefix = local.get(..MAIL_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(MAIL_PREFIX)
        .then(|| &local[MAIL_PREFIX.len()..])
}

/// Domain separation of the mailto token's MAC from the https token's.
const MAIL_LABEL: &[u8] = b"mailbridge one-click unsubscribe by mail v1";
/// Hex digits of the mailto token's MAC (64 bits, as VERP's: `unsubscribe+` + a 32-digit
/// outbox id + `.` + 16 = 61 octets, within RFC 5321's 64 for a local part).
const MAIL_TAG_HEX: usize = 16;

fn mail_tag(secret: &[u8], id: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(MAIL_LABEL);
    mac.update(&[0]);
    mac.update(id.as_bytes());
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..MAIL_TAG_HEX / 2])
}

/// The mailto token of outbox message `id`: `<id>.<tag>`. A mail local part holds at most 64
/// octets, too few for the https token (which carries the address), so the mailed request names
/// the message instead; its recipient and category are read from the outbox when it comes in.
pub fn mail_token(secret: &[u8], id: &str) -> String {
    format!("{id}.{}", mail_tag(secret, id))
}

/// The outbox id a mailto token names, once its MAC checks (in constant time).
pub fn verify_mail_token(secret: &[u8], token: &str) -> Result<String, BadToken> {
    // Outbox ids and tags are lower-case hex; a mail system may have upper-cased the local part.
    let token = token.to_ascii_lowercase();
    let (id, given) = token.rsplit_once('.').ok_or(BadToken)?;
    if id.is_empty()
        || id.len() > 64
        || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        || given.len() != MAIL_TAG_HEX
    {
        return Err(BadToken);
    }
    let expected = mail_tag(secret, id);
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(id.to_owned())
    } else {
        Err(BadToken)
    }
}

/// [`verify_mail_token`] with `[relay] unsubscribe_secret` (no relay or no secret: no token is
/// valid).
pub fn check_mail(config: Option<&RelayConfig>, token: &str) -> Result<String, BadToken> {
    let secret = config
        .and_then(|c| c.unsubscribe_secret.as_ref())
        .ok_or(BadToken)?;
    verify_mail_token(secret.expose_secret().as_bytes(), token)
}

/// The `List-Unsubscribe` and `List-Unsubscribe-Post` values for outbox message `id` of
/// `category` to `to`, or `None` when the category cannot be opted out of or nothing is
/// configured to take the request (`[relay] unsubscribe_secret`, and an https `[server]
/// public_url` or a `[relay] bounce_domain`). `List-Unsubscribe-Post` comes only with an https
/// link (RFC 8058 §3.1: the POST goes to the HTTPS URI).
pub fn headers(
    config: &RelayConfig,
    id: &str,
    to: &Email,
    category: Category,
) -> Option<(String, Option<&'static str>)> {
    let secret = config.unsubscribe_secret.as_ref()?;
    let secret = secret.expose_secret().as_bytes();
    let token = token(secret, to, category)?;
    let https = config
        .unsubscribe_base
        .as_deref()
        .map(|base| format!("<{}/u/{token}>", base.trim_end_matches('/')));
    let mailto = config
        .bounce_domain
        .as_deref()
        .map(|domain| format!("<mailto:{MAIL_PREFIX}{}@{domain}>", mail_token(secret, id)));
    let post = https.is_some().then_some(ONE_CLICK);
    let links: Vec<String> = [https, mailto].into_iter().flatten().collect();
    (!links.is_empty()).then(|| (links.join(", "), post))
}

/// How an opt-out request came in (kept with the opt-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Https,
    Mail,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Https => "https",
            Via::Mail => "mail",
        }
    }
}

/// The token's address and category, checked with `[relay] unsubscribe_secret` (no relay or no
/// secret: no token is valid).
pub fn check(config: Option<&RelayConfig>, token: &str) -> Result<(Email, Category), BadToken> {
    let secret = config
        .and_then(|c| c.unsubscribe_secret.as_ref())
        .ok_or(BadToken)?;
    verify(secret.expose_secret().as_bytes(), token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unsubscribe-test-secret";

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn mail_tokens_name_their_message_and_fit_a_local_part() {
        let id = "0123456789abcdef0123456789abcdef";
        let t = mail_token(SECRET, id);
        assert!(format!("{MAIL_PREFIX}{t}").len() <= 64, "{t}");
        assert_eq!(verify_mail_token(SECRET, &t).as_deref(), Ok(id));
        // A mail system that upper-cases the local part changes nothing (ids are lower-case).
        assert_eq!(
            verify_mail_token(SECRET, &t.to_ascii_uppercase()).as_deref(),
            Ok(id)
        );
        // Another message, another key, a changed tag: refused.
        let (_, tag) = t.rsplit_once('.').unwrap();
        let other = format!("{}.{tag}", "f".repeat(32));
        assert_eq!(verify_mail_token(SECRET, &other), Err(BadToken));
        assert_eq!(verify_mail_token(b"another key", &t), Err(BadToken));
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify_mail_token(SECRET, &flipped), Err(BadToken));
        for bad in ["", ".", "abc", "x.y", "a b.0123456789abcdef"] {
            assert_eq!(verify_mail_token(SECRET, bad), Err(BadToken), "{bad}");
        }
    }

    #[test]
    fn round_trips_in_either_case() {
        let t = token(SECRET, &email("Ana@Example.org"), Category::Notification).unwrap();
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{t}"
        );
        let (e, c) = verify(SECRET, &t).unwrap();
        assert_eq!(e.as_str(), "ana@example.org");
        assert_eq!(c, Category::Notification);
        assert_eq!(verify(SECRET, &t.to_uppercase()).unwrap().0, e);
    }

    #[test]
    fn only_opt_out_categories_get_a_token() {
        assert!(token(SECRET, &email("a@b.example"), Category::Registration).is_none());
        assert!(token(SECRET, &email("a@b.example"), Category::Password).is_none());
    }

    /// Re-encodes `t` with its address or category changed, keeping its MAC.
    fn altered(t: &str, f: impl Fn(&mut Vec<u8>)) -> String {
        let mut bytes = BASE32_DNSSEC.decode(t.as_bytes()).unwrap();
        f(&mut bytes);
        BASE32_DNSSEC.encode(&bytes)
    }

    #[test]
    fn tampered_replayed_or_foreign_tokens_are_refused() {
        let t = token(SECRET, &email("ana@example.org"), Category::Notification).unwrap();
        // Another address with Ana's MAC (a replay for someone else).
        let other = altered(&t, |b| {
            let n = b.len();
            b.truncate(n - "ana@example.org".len());
            b.extend_from_slice(b"bob@example.org");
        });
        // Another category with Ana's MAC.
        let password = altered(&t, |b| b[1] = b'p');
        let registration = altered(&t, |b| b[1] = b'r');
        let flipped_mac = altered(&t, |b| b[5] ^= 1);
        let version = altered(&t, |b| b[0] = 2);
        let upper_address = altered(&t, |b| {
            let n = b.len();
            b[n - 1] = b'G';
        });
        for bad in [
            other,
            password,
            registration,
            flipped_mac,
            version,
            upper_address,
            String::new(),
            "!!!".into(),
            "a".repeat(MAX_TOKEN_CHARS + 1),
            t[..t.len() - 3].to_owned(),
        ] {
            assert_eq!(verify(SECRET, &bad), Err(BadToken), "{bad}");
        }
        assert_eq!(verify(b"another key", &t), Err(BadToken));
    }

    #[test]
    fn mailed_request_addresses() {
        assert_eq!(
            token_of_address(
                "Unsubscribe+abc@Bounces.Club.Example",
                "bounces.club.example"
            ),
            Some("abc")
        );
        assert_eq!(
            token_of_address("unsubscribe+abc@other.example", "bounces.club.example"),
            None
        );
        assert_eq!(
            token_of_address("bounces+abc@bounces.club.example", "bounces.club.example"),
            None
        );
    }
}
