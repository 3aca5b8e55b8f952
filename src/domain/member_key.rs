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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an integer when it is the canonical decimal form of one.
    pub fn as_int(&self) -> Option<i64> {
        let n: i64 = self.0.parse().ok()?;
        (n.to_string() == self.0).then_some(n)
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
    fn integer_keys_round_trip_and_text_keys_stay_text() {
        assert_eq!(MemberKey::from_int(42).as_int(), Some(42));
        assert_eq!(MemberKey::parse("42").unwrap().as_int(), Some(42));
        assert_eq!(MemberKey::parse("007").unwrap().as_int(), None);
        assert_eq!(MemberKey::parse("M-17").unwrap().as_int(), None);
        assert!(MemberKey::parse("  ").is_none());
    }
}
