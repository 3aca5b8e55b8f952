//! `[doctor]`: how `mailbridge doctor` looks at DNS: the resolver it asks (the system's by
//! default), how long one query may take, and the IP address mail leaves from (for the PTR check).

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDoctor {
    resolver: Option<Raw>,
    timeout_secs: Option<Spanned<u64>>,
    sending_ip: Option<Raw>,
}

#[derive(Debug, Clone)]
pub struct DoctorConfig {
    /// A resolver asked over UDP and TCP instead of the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// How long one DNS query may take.
    pub timeout_secs: u64,
    /// The address mail leaves from, whose PTR record is checked.
    pub sending_ip: Option<IpAddr>,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            resolver: None,
            timeout_secs: 5,
            sending_ip: None,
        }
    }
}

impl DoctorConfig {
    pub(super) fn read(l: &Loader<'_>, d: Option<&RawDoctor>) -> Result<DoctorConfig, ConfigError> {
        let Some(d) = d else {
            return Ok(DoctorConfig::default());
        };
        let resolver = l.optional(&d.resolver, "doctor.resolver", |l, raw, key| {
            let text = l.nonempty(raw, key)?;
            parse_resolver(text.trim()).ok_or_else(|| {
                l.invalid(
                    raw.span(),
                    key,
                    "expected an address such as \"127.0.0.1:53\" or \"[::1]:5353\" (port 53 when none)",
                )
            })
        })?;
        let sending_ip = l.optional(&d.sending_ip, "doctor.sending_ip", |l, raw, key| {
            l.nonempty(raw, key)?
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| l.invalid(raw.span(), key, "expected an IPv4 or IPv6 address"))
        })?;
        Ok(DoctorConfig {
            resolver,
            timeout_secs: l.bounded(&d.timeout_secs, "doctor.timeout_secs", 1..=60, 5)?,
            sending_ip,
        })
    }
}

/// `ip:port`, `[ipv6]:port`, or a bare address (port 53).
pub fn parse_resolver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, assert_refused, parse};

    #[test]
    fn defaults_to_the_system_resolver() {
        let d = parse(BASE).doctor;
        assert_eq!((d.resolver, d.timeout_secs, d.sending_ip), (None, 5, None));
        let d = parse(&format!(
            "{BASE}[doctor]\nresolver = \"127.0.0.1:5353\"\nsending_ip = \"192.0.2.1\"\n"
        ))
        .doctor;
        assert_eq!(d.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(d.sending_ip, Some("192.0.2.1".parse().unwrap()));
        let d = parse(&format!("{BASE}[doctor]\nresolver = \"::1\"\n")).doctor;
        assert_eq!(d.resolver, Some("[::1]:53".parse().unwrap()));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused::<&str>(
            BASE,
            &[
                (
                    "[doctor]\nresolver = \"dns.example\"\n",
                    "mb.toml:5: `doctor.resolver`: expected an address such as \"127.0.0.1:53\" or \"[::1]:5353\" (port 53 when none)",
                ),
                (
                    "[doctor]\nsending_ip = \"1.2.3\"\n",
                    "mb.toml:5: `doctor.sending_ip`: expected an IPv4 or IPv6 address",
                ),
                (
                    "[doctor]\ntimeout_secs = 0\n",
                    "mb.toml:5: `doctor.timeout_secs`: expected 1 to 60",
                ),
            ],
        );
    }
}
