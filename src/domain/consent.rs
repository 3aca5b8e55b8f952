//! Consent to receive a newsletter, as read from the member database's consent column.

/// Whether a member consents to the newsletter. Only an explicit yes counts: NULL, unknown text
/// and zero are [`Consent::Withheld`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consent {
    Given,
    Withheld,
}

impl Consent {
    /// Interprets text such as `yes`, `true`, `1`, `y`, `on` (any case) as consent.
    pub fn from_text(value: &str) -> Consent {
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "y" | "yes" | "on" => Consent::Given,
            _ => Consent::Withheld,
        }
    }

    pub fn from_bool(value: bool) -> Consent {
        if value {
            Consent::Given
        } else {
            Consent::Withheld
        }
    }

    pub fn is_given(self) -> bool {
        self == Consent::Given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_explicit_yes_is_consent() {
        for yes in ["1", "true", "TRUE", " yes ", "Y", "on", "t"] {
            assert_eq!(Consent::from_text(yes), Consent::Given, "{yes}");
        }
        for no in ["0", "false", "no", "", "maybe", "2"] {
            assert_eq!(Consent::from_text(no), Consent::Withheld, "{no}");
        }
        assert!(Consent::from_bool(true).is_given());
        assert!(!Consent::from_bool(false).is_given());
    }
}
