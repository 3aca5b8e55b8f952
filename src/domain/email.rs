//! E-mail addresses as the bridge understands them.
//!
//! Rule (documented in the README, tested below): the input is trimmed of surrounding white space;
//! it must then be at most 254 characters of printable ASCII with exactly one `@`; the local part is
//! 1–64 characters from `A-Z a-z 0-9 ! # $ % & ' * + - / = ? ^ _ \` { | } ~ .`, with no leading,
//! trailing or doubled dot; the domain has at least two dot-separated labels of 1–63 characters
//! (`a-z 0-9 -`, not starting or ending with `-`), and its last label is not all digits. Quoted
//! local parts, IP-literal domains and non-ASCII addresses are refused: the newsletter services
//! refuse them too. Identity is the trimmed, lower-cased form; the trimmed original is kept for
//! display.

use std::fmt;
use std::hash::{Hash, Hasher};

/// A syntactically valid e-mail address.
#[derive(Clone, Debug)]
pub struct Email {
    /// The address as written, trimmed.
    original: String,
    /// The identity form when it is not `original` itself (the address has capitals): most
    /// addresses are written in lower case, and a sync parses every member's.
    lowered: Option<Box<str>>,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("the address is missing")]
    Missing,
    #[error("the address is blank")]
    Blank,
    #[error("`{0}` is not a valid e-mail address: {1}")]
    Invalid(String, &'static str),
}

impl EmailError {
    /// A short, stable code for reports.
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::Missing => "missing_email",
            EmailError::Blank => "blank_email",
            EmailError::Invalid(..) => "invalid_email",
        }
    }
}

const LOCAL_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~.";

impl Email {
    /// Parses an address as it comes from a member row or a provider.
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Blank);
        }
        let invalid = |why| Err(EmailError::Invalid(trimmed.to_owned(), why));
        if trimmed.len() > 254 {
            return invalid("longer than 254 characters");
        }
        if !trimmed.is_ascii() {
            return invalid("contains non-ASCII characters");
        }
        // Byte loops rather than `split` and `contains`: their searchers cost more to set up than
        // a short address takes to scan, and a sync parses every member's address.
        let bytes = trimmed.as_bytes();
        let (Some(at), 1) = (
            bytes.iter().position(|&b| b == b'@'),
            bytes.iter().filter(|&&b| b == b'@').count(),
        ) else {
            return invalid("it must contain exactly one @");
        };
        let (local, domain) = (&trimmed[..at], &trimmed[at + 1..]);
        if local.is_empty() || local.len() > 64 {
            return invalid("the part before @ must be 1 to 64 characters");
        }
        if !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b))
        {
            return invalid("the part before @ contains a character that is not allowed");
        }
        if local.starts_with('.')
            || local.ends_with('.')
            || local.as_bytes().windows(2).any(|w| w == b"..")
        {
            return invalid("the part before @ has a misplaced dot");
        }
        if !domain.as_bytes().contains(&b'.') {
            return invalid("the domain needs at least one dot");
        }
        let mut tld = "";
        for label in domain.split('.') {
            if label.is_empty() || label.len() > 63 {
                return invalid("a domain label is empty or longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return invalid("the domain contains a character that is not allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return invalid("a domain label starts or ends with a hyphen");
            }
            tld = label;
        }
        if tld.bytes().all(|b| b.is_ascii_digit()) {
            return invalid("the top-level domain is numeric");
        }
        Ok(Email {
            original: trimmed.to_owned(),
            lowered: trimmed
                .bytes()
                .any(|b| b.is_ascii_uppercase())
                .then(|| trimmed.to_ascii_lowercase().into_boxed_str()),
        })
    }

    /// Parses an optional column value; NULL is [`EmailError::Missing`].
    pub fn parse_opt(raw: Option<&str>) -> Result<Email, EmailError> {
        match raw {
            None => Err(EmailError::Missing),
            Some(raw) => Email::parse(raw),
        }
    }

    /// The identity form: trimmed and lower-cased. Two addresses are the same when these match.
    pub fn as_str(&self) -> &str {
        self.lowered.as_deref().unwrap_or(&self.original)
    }

    /// The address as it was written (trimmed), for display.
    pub fn original(&self) -> &str {
        &self.original
    }
}

impl PartialEq for Email {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Email {}
impl Hash for Email {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}
impl PartialOrd for Email {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Email {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Serialized as the address as written; read back through [`Email::parse`], so a stored address
/// is checked again and comes back with the same original and identity.
impl serde::Serialize for Email {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.original)
    }
}

impl<'de> serde::Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Email, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// What an operator types to find an address (the admin pages' search): the start of the
/// address, in identity form (trimmed, lower-cased). Stored addresses are in identity form, so the
/// addresses it finds are one range in byte order: from [`AddressPrefix::start`] (included) to
/// [`AddressPrefix::end`] (excluded), which an index on the address reads without a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPrefix {
    start: String,
    end: String,
}

impl AddressPrefix {
    /// The search `typed`, or `None` when it is blank. "Anna@" finds every address of anna at
    /// any domain, the whole address finds that address.
    pub fn parse(typed: &str) -> Option<AddressPrefix> {
        let start = typed.trim().to_ascii_lowercase();
        if start.is_empty() {
            return None;
        }
        // U+10FFFF is the greatest character, and UTF-8 keeps character order in byte order: every
        // text that starts with `start` sorts before `start` followed by it (but for one that goes
        // on with U+10FFFF itself, which no address does: addresses are ASCII).
        let end = format!("{start}\u{10FFFF}");
        Some(AddressPrefix { start, end })
    }

    /// The search as typed, in identity form: the first address it could find.
    pub fn start(&self) -> &str {
        &self.start
    }

    /// The first text after every address it finds (excluded).
    pub fn end(&self) -> &str {
        &self.end
    }

    /// Whether `address` (identity form) is one it finds.
    pub fn matches(&self, address: &str) -> bool {
        address.starts_with(&self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_prefix_is_one_byte_order_range() {
        assert_eq!(AddressPrefix::parse("  \t"), None);
        let p = AddressPrefix::parse(" Anna@ ").unwrap();
        assert_eq!(p.start(), "anna@");
        for a in ["anna@", "anna@example.org", "anna@~", "anna@zz.zz"] {
            assert!(p.matches(a) && a >= p.start() && a < p.end(), "{a}");
        }
        for a in [
            "anna",
            "anna.b@example.org",
            "annab@example.org",
            "anna?",
            "b@example.org",
        ] {
            let in_range = a >= p.start() && a < p.end();
            assert!(!p.matches(a) && !in_range, "{a}");
        }
    }

    proptest! {
        /// The range holds exactly the addresses that start with the search.
        #[test]
        fn the_range_is_the_prefix(search in "[a-z@.~]{1,4}", address in "[a-z@.~]{0,8}") {
            let p = AddressPrefix::parse(&search).unwrap();
            let in_range = address.as_str() >= p.start() && address.as_str() < p.end();
            prop_assert_eq!(in_range, p.matches(&address));
        }
    }

    #[test]
    fn identity_is_trimmed_and_lower_cased_original_kept() {
        let e = Email::parse("  Ann.Smith@Example.ORG \t").unwrap();
        assert_eq!(e.as_str(), "ann.smith@example.org");
        assert_eq!(e.original(), "Ann.Smith@Example.ORG");
        assert_eq!(e, Email::parse("ann.smith@example.org").unwrap());
    }

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.com",
            "o'brien@example.ie",
            "x_y-z@a-b.example",
            "123@example.com",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn refuses_missing_blank_and_malformed() {
        assert_eq!(Email::parse_opt(None), Err(EmailError::Missing));
        assert_eq!(Email::parse("   "), Err(EmailError::Blank));
        for bad in [
            "plainaddress",
            "two@@example.com",
            "a@b@example.com",
            "@example.com",
            "ann@",
            "ann@localhost",
            "ann@exa mple.com",
            "ann smith@example.com",
            ".ann@example.com",
            "ann.@example.com",
            "an..n@example.com",
            "ann@-example.com",
            "ann@example-.com",
            "ann@example..com",
            "ann@127.0.0.1",
            "ann@[127.0.0.1]",
            "\"ann\"@example.com",
            "jürgen@example.de",
            "ann@example.com,bob@example.com",
        ] {
            assert!(
                matches!(Email::parse(bad), Err(EmailError::Invalid(..))),
                "{bad} should be invalid"
            );
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn error_names_the_address() {
        let err = Email::parse("ann@localhost").unwrap_err();
        assert!(err.to_string().contains("ann@localhost"), "{err}");
        assert_eq!(err.code(), "invalid_email");
    }

    proptest! {
        #[test]
        fn case_and_surrounding_space_never_change_identity(
            local in "[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]",
            domain in "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.[a-z]{2,6}",
            pad in "[ \t]{0,3}",
        ) {
            prop_assume!(!local.contains(".."));
            let plain = format!("{local}@{domain}");
            let shouted = format!("{pad}{}{pad}", plain.to_uppercase());
            let a = Email::parse(&plain).unwrap();
            let b = Email::parse(&shouted).unwrap();
            prop_assert_eq!(a.as_str(), b.as_str());
            prop_assert_eq!(b.original(), plain.to_uppercase());
        }

        #[test]
        fn parse_never_panics_and_valid_identity_is_lowercase(s in ".{0,80}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(e.as_str(), e.as_str().to_ascii_lowercase());
                prop_assert_eq!(e.as_str().matches('@').count(), 1);
                // Parsing the identity again gives the same identity.
                let again = Email::parse(e.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), e.as_str());
            }
        }
    }
}
