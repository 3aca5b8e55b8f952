//! The doctor's DNS: hickory-resolver, pointed at the system's resolver or at `[doctor] resolver`
//! (UDP, then TCP for long answers), every query bounded in time. An answer is a list (empty when
//! the name or the type does not exist: what SPF calls a void lookup); a failure to get an answer
//! (timeout, SERVFAIL, refused) is a [`DnsFailure`] the checks turn into a finding.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// Why a query got no answer (not "the record does not exist": that is an empty answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{query}: {reason}")]
pub struct DnsFailure {
    /// `TXT example.org`
    pub query: String,
    pub reason: String,
}

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver ({what}): {reason}")]
pub struct ResolverError {
    what: String,
    reason: String,
}

/// A resolver with a bound on each query.
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Dns {
    /// The system's resolver, or `server` over UDP and TCP; each query gives up after `timeout`.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    provider,
                );
                // Only the server named answers: no /etc/hosts in between.
                b.options_mut().use_hosts_file = ResolveHosts::Never;
                b
            }
            None => TokioResolver::builder(provider).map_err(|e| ResolverError {
                what: "the system's configuration".into(),
                reason: e.to_string(),
            })?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.edns0 = true;
        opts.try_tcp_on_error = true;
        let resolver = builder.build().map_err(|e| ResolverError {
            what: server.map_or_else(|| "system".to_owned(), |a| a.to_string()),
            reason: e.to_string(),
        })?;
        Ok(Dns { resolver, timeout })
    }

    async fn lookup(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsFailure> {
        let query = format!("{kind} {name}");
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        let name = Name::from_utf8(&fqdn).map_err(|e| DnsFailure {
            query: query.clone(),
            reason: format!("not a domain name: {e}"),
        })?;
        self.lookup_name(name, kind, query).await
    }

    async fn lookup_name(
        &self,
        name: Name,
        kind: RecordType,
        query: String,
    ) -> Result<Vec<RData>, DnsFailure> {
        // The resolver's own timeout covers one attempt; this bounds the whole lookup, TCP
        // fallback included.
        let answer = tokio::time::timeout(self.timeout * 3, self.resolver.lookup(name, kind)).await;
        match answer {
            Err(_) => Err(DnsFailure {
                query,
                reason: "timed out".into(),
            }),
            Ok(Err(e)) if no_such_record(&e) => Ok(Vec::new()),
            Ok(Err(e)) => Err(DnsFailure {
                query,
                reason: e.to_string(),
            }),
            Ok(Ok(lookup)) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == kind)
                .map(|r| r.data.clone())
                .collect()),
        }
    }

    /// Each TXT record at `name`, its strings joined (RFC 7208 §3.3: a record split in several
    /// strings is read as one). Bytes that are not UTF-8 are replaced.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsFailure> {
        Ok(self
            .lookup(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// `(preference, exchange)` of each MX record, exchange without its final dot, lower case.
    pub async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsFailure> {
        let mut out: Vec<(u16, String)> = self
            .lookup(name, RecordType::MX)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange))),
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The A and AAAA addresses of `name`.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let mut out: Vec<IpAddr> = Vec::new();
        for kind in [RecordType::A, RecordType::AAAA] {
            for d in self.lookup(name, kind).await? {
                match d {
                    RData::A(a) => out.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The names the PTR records of `ip` give, without final dots, lower case.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsFailure> {
        let name = Name::from(ip);
        let query = format!("PTR {name}");
        Ok(self
            .lookup_name(name, RecordType::PTR, query)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(host_name(&p.0)),
                _ => None,
            })
            .collect())
    }
}

fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// NXDOMAIN or an answer without records of the type asked: the record does not exist.
fn no_such_record(e: &NetError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}
