//! DMARC (RFC 7489) records and identifier alignment.
//!
//! The organisational domain is found by a simple rule instead of the Public Suffix List: the
//! last two labels, or the last three when the second-to-last is a common second-level label
//! under a two-letter country code (`club.org.uk`, `club.com.au`, `club.co.nz`). It is right for
//! the domains clubs use; a suffix the rule does not know (`x.github.io`, `y.pvt.k12.ma.us`)
//! makes relaxed alignment look looser than a receiver sees it.

/// A DMARC policy (`p=`, `sp=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub policy: Policy,
    pub subdomain_policy: Option<Policy>,
    /// `adkim=s`
    pub strict_dkim: bool,
    /// `aspf=s`
    pub strict_spf: bool,
    pub rua: Option<String>,
}

fn policy(value: &str, tag: &str) -> Result<Policy, String> {
    match value.to_ascii_lowercase().as_str() {
        "none" => Ok(Policy::None),
        "quarantine" => Ok(Policy::Quarantine),
        "reject" => Ok(Policy::Reject),
        _ => Err(format!(
            "{tag}={value}: expected none, quarantine or reject"
        )),
    }
}

fn mode(value: &str, tag: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "r" => Ok(false),
        "s" => Ok(true),
        _ => Err(format!("{tag}={value}: expected r or s")),
    }
}

/// Is `text` a DMARC record (starts with `v=DMARC1`)?
pub fn is_dmarc(text: &str) -> bool {
    text.split(';')
        .next()
        .and_then(|t| t.split_once('='))
        .is_some_and(|(k, v)| k.trim() == "v" && v.trim() == "DMARC1")
}

/// Parses a record; the error names the tag that is wrong.
pub fn parse(text: &str) -> Result<Record, String> {
    if !is_dmarc(text) {
        return Err("does not start with v=DMARC1".into());
    }
    let mut record = Record {
        policy: Policy::None,
        subdomain_policy: None,
        strict_dkim: false,
        strict_spf: false,
        rua: None,
    };
    let mut seen_p = false;
    for tag in text.split(';').skip(1) {
        let tag = tag.trim();
        if tag.is_empty() {
            continue;
        }
        let (name, value) = tag
            .split_once('=')
            .ok_or_else(|| format!("`{tag}` is not a tag=value pair"))?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "p" => {
                record.policy = policy(value, "p")?;
                seen_p = true;
            }
            "sp" => record.subdomain_policy = Some(policy(value, "sp")?),
            "adkim" => record.strict_dkim = mode(value, "adkim")?,
            "aspf" => record.strict_spf = mode(value, "aspf")?,
            "rua" => record.rua = Some(value.to_owned()),
            _ => {}
        }
    }
    if !seen_p {
        return Err("no p= tag (the policy)".into());
    }
    Ok(record)
}

const SECOND_LEVEL: &[&str] = &[
    "ac", "co", "com", "edu", "gov", "ltd", "me", "net", "nhs", "org", "plc", "sch", "asn", "id",
    "ne", "or", "go", "gr", "lg",
];

/// The organisational domain of `domain` by the rule in the module docs.
pub fn organisational_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let n = labels.len();
    let keep = if n >= 3 && labels[n - 1].len() == 2 && SECOND_LEVEL.contains(&labels[n - 2]) {
        3
    } else {
        2
    };
    labels[n.saturating_sub(keep)..].join(".")
}

/// Are the two domains aligned: the same (strict) or with the same organisational domain?
pub fn aligned(a: &str, b: &str, strict: bool) -> bool {
    let (a, b) = (
        a.trim_end_matches('.').to_ascii_lowercase(),
        b.trim_end_matches('.').to_ascii_lowercase(),
    );
    if strict {
        a == b
    } else {
        organisational_domain(&a) == organisational_domain(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisational_domains() {
        for (d, org) in [
            ("example.org", "example.org"),
            ("bounces.myclub.example.org", "example.org"),
            ("mail.club.org.uk", "club.org.uk"),
            ("club.co.uk", "club.co.uk"),
            ("a.b.club.com.au", "club.com.au"),
            ("co.uk", "co.uk"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(organisational_domain(d), org, "{d}");
        }
        assert!(aligned("bounces.club.test", "club.test", false));
        assert!(!aligned("bounces.club.test", "club.test", true));
        assert!(!aligned("club.test", "other.test", false));
    }

    #[test]
    fn records() {
        let r = parse("v=DMARC1; p=reject; aspf=s; rua=mailto:d@club.test").unwrap();
        assert_eq!(
            (r.policy, r.strict_spf, r.strict_dkim),
            (Policy::Reject, true, false)
        );
        assert!(parse("v=DMARC1; rua=mailto:x@y").is_err());
        assert!(parse("v=DMARC1; p=block").is_err());
        assert!(parse("p=none; v=DMARC1").is_err());
        assert!(!is_dmarc("v=spf1 -all"));
    }
}
