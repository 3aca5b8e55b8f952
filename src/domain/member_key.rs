//! The member database's primary key for a member, as text. Distinct from any provider id.

use std::fmt;

/// A member's key in the club's member database (the mapping's `key` column), held as text.
///
/// Integer keys are rendered in decimal; [`MemberKey::is_integer`] tells whether the key must be
/// bound as an integer when it is sent back to the member database.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey(String);

impl MemberKey {
    /// A key from an integer column.
    pub fn from_int(value: i64) -> MemberKey {
        MemberKey(value.to_string())
    }

    /// A key from a text column or from the state DB. Empty keys are refused.
    pub fn parse(value: &str) -> Option<MemberKey> {
        let value = value.trim();
        (!value.is_empty()).then(|| MemberKey(value.to_owned()))
    }

    /// [`MemberKey::parse`] of a string the caller owns, kept as it is when it needs no
    /// trimming (the state DB's keys, read for every contact of a sync); a blank one comes back.
    pub fn parse_owned(value: String) -> Result<MemberKey, String> {
        if !value.is_empty() && value.trim().len() == value.len() {
            return Ok(MemberKey(value));
        }
        MemberKey::parse(&value).ok_or(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an integer when it is the canonical decimal form of one (no sign but a
    /// leading `-`, no leading zero, no `-0`). Allocates nothing: the sync asks it of every member.
    pub fn as_int(&self) -> Option<i64> {
        let digits = self.0.strip_prefix('-').unwrap_or(&self.0);
        let canonical = match digits.as_bytes() {
            [] => false,
            [b'0'] => digits.len() == self.0.len(),
            [b'0', ..] => false,
            d => d.iter().all(u8::is_ascii_digit),
        };
        if canonical { self.0.parse().ok() } else { None }
    }

    /// The order the sync streams contacts from the state DB in, to merge them with the member
    /// rows: shorter keys first (in characters, as SQL's `length` counts), then by bytes. For
    /// non-negative integer keys that is their numeric order, the order the member DB returns
    /// an integer key column in.
    pub fn stream_cmp(&self, other: &MemberKey) -> std::cmp::Ordering {
        let (a, b) = (self.as_str(), other.as_str());
        let len = |s: &str| {
            if s.is_ascii() {
                s.len()
            } else {
                s.chars().count()
            }
        };
        len(a).cmp(&len(b)).then_with(|| a.cmp(b))
    }

    pub fn is_integer(&self) -> bool {
        self.as_int().is_some()
    }
}

/// Serialized as its text; read back through [`MemberKey::parse`] (an empty key is refused).
impl serde::Serialize for MemberKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for MemberKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MemberKey, D::Error> {
        let raw = String::deserialize(deserializer)?;
        MemberKey::parse(&raw).ok_or_else(|| serde::de::Error::custom("an empty member key"))
    }
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_key_is_parsed_as_a_borrowed_one() {
        for raw in ["7", " 7", "M-17 ", "\tü-key", "007"] {
            assert_eq!(
                MemberKey::parse_owned(raw.to_owned()).ok(),
                MemberKey::parse(raw),
                "{raw:?}"
            );
        }
        for blank in ["", "  ", "\n"] {
            assert_eq!(
                MemberKey::parse_owned(blank.to_owned()),
                Err(blank.to_owned())
            );
        }
    }

    #[test]
    fn integer_keys_round_trip_and_text_keys_stay_text() {
        assert_eq!(MemberKey::from_int(42).as_int(), Some(42));
        assert_eq!(MemberKey::parse("42").unwrap().as_int(), Some(42));
        assert_eq!(MemberKey::parse("007").unwrap().as_int(), None);
        assert_eq!(MemberKey::parse("M-17").unwrap().as_int(), None);
        assert!(MemberKey::parse("  ").is_none());
        assert_eq!(MemberKey::parse("0").unwrap().as_int(), Some(0));
        assert_eq!(MemberKey::parse("-12").unwrap().as_int(), Some(-12));
        for not_canonical in ["-0", "+5", "-", "00", "-07", "1e3", "99999999999999999999"] {
            assert_eq!(MemberKey::parse(not_canonical).unwrap().as_int(), None);
        }
    }

    #[test]
    fn stream_order_is_numeric_for_integer_keys() {
        let mut keys: Vec<MemberKey> = ["10", "9", "100", "2", "b", "a"]
            .iter()
            .map(|k| MemberKey::parse(k).unwrap())
            .collect();
        keys.sort_by(MemberKey::stream_cmp);
        let order: Vec<&str> = keys.iter().map(MemberKey::as_str).collect();
        assert_eq!(order, ["2", "9", "a", "b", "10", "100"]);
    }
}
