//! A contact's subscription status at a provider, in provider-neutral terms.

use std::fmt;
use std::str::FromStr;

/// Where a contact stands at the provider. `Unsubscribed` and `Cleaned` are compliance states:
/// mailbridge never moves a contact out of them into `Subscribed` (DESIGN.md invariant 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Subscribed,
    Pending,
    Unsubscribed,
    Cleaned,
    Archived,
    Transactional,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Subscribed => "subscribed",
            SubscriptionStatus::Pending => "pending",
            SubscriptionStatus::Unsubscribed => "unsubscribed",
            SubscriptionStatus::Cleaned => "cleaned",
            SubscriptionStatus::Archived => "archived",
            SubscriptionStatus::Transactional => "transactional",
        }
    }

    /// True for states only the person (not a sync) may leave.
    pub fn is_opted_out(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Unsubscribed | SubscriptionStatus::Cleaned
        )
    }
}

impl FromStr for SubscriptionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "subscribed" => SubscriptionStatus::Subscribed,
            "pending" => SubscriptionStatus::Pending,
            "unsubscribed" => SubscriptionStatus::Unsubscribed,
            "cleaned" => SubscriptionStatus::Cleaned,
            "archived" => SubscriptionStatus::Archived,
            "transactional" => SubscriptionStatus::Transactional,
            other => return Err(format!("unknown subscription status `{other}`")),
        })
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status mailbridge may ask a provider to set. `cleaned`, `archived` and `transactional` are the
/// provider's to set, so they cannot be expressed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Subscribed,
    /// Double opt-in: the provider mails a confirmation; the way back after an unsubscribe.
    Pending,
    Unsubscribed,
}

impl WriteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteStatus::Subscribed => "subscribed",
            WriteStatus::Pending => "pending",
            WriteStatus::Unsubscribed => "unsubscribed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for s in [
            SubscriptionStatus::Subscribed,
            SubscriptionStatus::Pending,
            SubscriptionStatus::Unsubscribed,
            SubscriptionStatus::Cleaned,
            SubscriptionStatus::Archived,
            SubscriptionStatus::Transactional,
        ] {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>().unwrap(), s);
        }
        assert!("bogus".parse::<SubscriptionStatus>().is_err());
        assert!(SubscriptionStatus::Cleaned.is_opted_out());
        assert!(!SubscriptionStatus::Pending.is_opted_out());
    }
}
