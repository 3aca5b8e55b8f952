//! `mailbridge doctor`: what receivers check about our mail, checked against live DNS before they
//! do. For the From domain (and the Return-Path domain when VERP is on) and each route: SPF (one
//! record, valid, at most 10 lookups, authorising the smarthost), DKIM (the selector's key is the
//! private key's), DMARC (a policy, and alignment of From with the DKIM `d=` and the Return-Path),
//! the bounce domain's MX, and the sending IP's PTR with a matching forward lookup.
//!
//! Each [`Finding`] has a verdict, what was found and the record to publish. The verdicts' rules:
//! - A missing DMARC record is a `fail`: Gmail and Yahoo refuse bulk mail from a domain without
//!   one. `p=none` is a `warn`: accepted, but it protects nothing.
//! - DMARC passes when SPF or DKIM is aligned with the From domain. An identifier that is not
//!   aligned is a `warn` while the other one is (a forwarded message loses SPF, so both should
//!   be), and a `fail` when neither is: a `p=quarantine`/`p=reject` receiver then drops the mail.
//! - No DKIM set up is a `warn` (the bulk senders' rules want it; SPF alone passes DMARC).
//! - A DNS query that fails (timeout, SERVFAIL) is a `fail` of the check that needed it.

mod dkim;
mod dmarc;
mod dns;
mod spf;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{DoctorConfig, RelayConfig};

pub use dkim::{PublicKey, public_key_from_pem};
pub use dmarc::organisational_domain;
pub use dns::{Dns, DnsFailure, ResolverError};

/// The include that authorises Mailchimp Transactional (Mandrill).
const MANDRILL_SPF: &str = "spf.mandrillapp.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `spf`, `spf.lookups`, `spf.smarthost`, `spf.sending_ip`, `dkim`, `dmarc`,
    /// `dmarc.spf_alignment`, `dmarc.dkim_alignment`, `mx.bounce`, `ptr`.
    pub check: String,
    /// The domain (or address) checked.
    pub subject: String,
    pub verdict: Verdict,
    /// What was seen.
    pub found: String,
    /// What to publish (a zone-file line) or do; `None` when nothing is to be done.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

impl Report {
    fn new(findings: Vec<Finding>) -> Report {
        let count = |v| findings.iter().filter(|f| f.verdict == v).count();
        let summary = Summary {
            ok: count(Verdict::Ok),
            warn: count(Verdict::Warn),
            fail: count(Verdict::Fail),
            verdict: findings
                .iter()
                .map(|f| f.verdict)
                .max()
                .unwrap_or(Verdict::Ok),
        };
        Report { findings, summary }
    }

    /// 0 all ok, 1 any fail, 3 warnings only.
    pub fn exit_code(&self) -> u8 {
        match self.summary.verdict {
            Verdict::Ok => 0,
            Verdict::Fail => 1,
            Verdict::Warn => 3,
        }
    }

    /// The findings of `check`.
    pub fn of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }
}

/// How mail leaves, as far as SPF is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An SMTP smarthost; its SPF include (`[relay.smtp] spf_include`) if configured.
    Smtp {
        host: String,
        spf_include: Option<String>,
    },
    /// Mailchimp Transactional: its include is `spf.mandrillapp.com`.
    MailchimpTransactional,
    /// The local MTA: the sending IP (`--ip`) tells.
    Sendmail,
}

/// The DKIM key a relay signs with. The PEM is the private key: it is read here for its public
/// half and never shown.
#[derive(Clone)]
pub struct DkimSetup {
    pub domain: String,
    pub selector: String,
    pub private_key_pem: Vec<u8>,
}

impl std::fmt::Debug for DkimSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSetup")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// What the doctor checks.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The From address's domain.
    pub from_domain: String,
    /// The Return-Path domain: `[relay] bounce_domain` with VERP, else the From domain.
    pub return_path_domain: String,
    pub routes: Vec<Route>,
    pub dkim: Option<DkimSetup>,
    pub sending_ip: Option<IpAddr>,
}

/// The domain of `Name <user@domain>` or `user@domain`.
pub fn domain_of_address(from: &str) -> Option<String> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from,
    };
    let domain = addr.trim().rsplit_once('@')?.1.trim().trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

impl Setup {
    /// The setup `[relay]` describes (with `[relay.dkim]`); `domain` replaces the From domain
    /// (`--domain`). The sending IP (and a DKIM key given by flags) are set by the caller.
    pub fn from_config(relay: Option<&RelayConfig>, domain: Option<&str>) -> Option<Setup> {
        let from_domain = domain
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .or_else(|| relay.and_then(|r| domain_of_address(&r.from)))?;
        let return_path_domain = relay
            .and_then(|r| r.bounce_domain.clone())
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_else(|| from_domain.clone());
        let routes = relay
            .map(|r| {
                r.routes
                    .iter()
                    .filter_map(|name| match name.as_str() {
                        "smtp" => r.smtp.as_ref().map(|s| Route::Smtp {
                            host: s.host.clone(),
                            spf_include: s.spf_include.clone(),
                        }),
                        "mailchimp_transactional" => Some(Route::MailchimpTransactional),
                        "sendmail" => Some(Route::Sendmail),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Setup {
            from_domain,
            return_path_domain,
            routes,
            // `[relay.dkim]`, its key file read again (the config checked it loads); a file
            // that cannot be read now is the DKIM finding's failure, not a missing setup.
            dkim: relay.and_then(|r| r.dkim.as_ref()).map(|d| DkimSetup {
                domain: d.domain.clone(),
                selector: d.selector.clone(),
                private_key_pem: std::fs::read(&d.private_key_file).unwrap_or_default(),
            }),
            sending_ip: None,
        })
    }
}

/// The resolver the config (or `--resolver`) names.
pub fn resolver(config: &DoctorConfig) -> Result<Dns, ResolverError> {
    Dns::new(config.resolver, Duration::from_secs(config.timeout_secs))
}

fn finding(
    check: &str,
    subject: &str,
    verdict: Verdict,
    found: impl Into<String>,
    fix: Option<String>,
) -> Finding {
    Finding {
        check: check.to_owned(),
        subject: subject.to_owned(),
        verdict,
        found: found.into(),
        fix,
    }
}

/// A TXT record line for a zone file, its text split into strings of at most 255 bytes.
pub fn txt_line(name: &str, text: &str) -> String {
    let chunks: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT {}", chunks.join(" "))
}

/// Runs every check for `setup`.
#[tracing::instrument(skip_all, fields(domain = %setup.from_domain))]
pub async fn run(dns: &Dns, setup: &Setup) -> Report {
    let mut findings = Vec::new();
    let mut spf_domains = vec![setup.return_path_domain.clone()];
    if setup.from_domain != setup.return_path_domain {
        spf_domains.push(setup.from_domain.clone());
    }
    let mut spf_ok_for_return_path = false;
    for (i, domain) in spf_domains.iter().enumerate() {
        let authorised = check_spf(dns, setup, domain, &mut findings).await;
        if i == 0 {
            spf_ok_for_return_path = authorised;
        }
    }
    let dkim_ok = match &setup.dkim {
        Some(d) => check_dkim(dns, d, &mut findings).await,
        None => {
            findings.push(finding(
                "dkim",
                &setup.from_domain,
                Verdict::Warn,
                "no DKIM key configured: mail leaves unsigned",
                Some(
                    "set [relay.dkim] (domain, selector, private_key_file); `mailbridge dkim keygen` prints the record to publish"
                        .into(),
                ),
            ));
            false
        }
    };
    check_dmarc(dns, setup, spf_ok_for_return_path, dkim_ok, &mut findings).await;
    check_mx(dns, &setup.return_path_domain, &mut findings).await;
    if let Some(ip) = setup.sending_ip {
        check_ptr(dns, ip, &mut findings).await;
    }
    Report::new(findings)
}

/// The SPF checks of `domain`; true when its record authorises every route checked.
async fn check_spf(dns: &Dns, setup: &Setup, domain: &str, out: &mut Vec<Finding>) -> bool {
    let suggested = suggested_spf(setup);
    let txts = match dns.txt(domain).await {
        Ok(t) => t,
        Err(f) => {
            out.push(finding("spf", domain, Verdict::Fail, f.to_string(), None));
            return false;
        }
    };
    let text = match spf::select(&txts) {
        Ok(Some(t)) => t.to_owned(),
        Ok(None) => {
            out.push(finding(
                "spf",
                domain,
                Verdict::Fail,
                "no SPF record (no TXT record starting with v=spf1)",
                Some(txt_line(domain, &suggested)),
            ));
            return false;
        }
        Err(e) => {
            out.push(finding(
                "spf",
                domain,
                Verdict::Fail,
                e,
                Some(format!("keep one: {}", txt_line(domain, &suggested))),
            ));
            return false;
        }
    };
    let record = match spf::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(
                "spf",
                domain,
                Verdict::Fail,
                format!("\"{text}\": {e}"),
                Some(txt_line(domain, &suggested)),
            ));
            return false;
        }
    };
    out.push(finding(
        "spf",
        domain,
        Verdict::Ok,
        format!("\"{text}\""),
        None,
    ));
    let tree = spf::Tree::walk(dns, domain, record).await;
    out.push(lookups_finding(domain, &tree));
    let mut all_ok = tree.errors.is_empty() && tree.dns_failures.is_empty();
    for route in &setup.routes {
        let f = match route {
            Route::Smtp {
                spf_include: Some(inc),
                host,
            } => include_finding(domain, &text, &tree, inc, &format!("smarthost {host}")),
            Route::Smtp {
                host,
                spf_include: None,
            } => host_finding(dns, domain, &text, &tree, host).await,
            Route::MailchimpTransactional => include_finding(
                domain,
                &text,
                &tree,
                MANDRILL_SPF,
                "Mailchimp Transactional",
            ),
            Route::Sendmail if setup.sending_ip.is_none() => finding(
                "spf.sendmail",
                domain,
                Verdict::Warn,
                "route sendmail: the local MTA's address is unknown",
                Some("run with --ip ADDRESS (or [doctor] sending_ip) to check it".into()),
            ),
            Route::Sendmail => continue,
        };
        all_ok &= f.verdict == Verdict::Ok;
        out.push(f);
    }
    if let Some(ip) = setup.sending_ip {
        let term = if ip.is_ipv4() {
            format!("ip4:{ip}")
        } else {
            format!("ip6:{ip}")
        };
        let f = ip_finding("spf.sending_ip", domain, &text, &tree, ip, &term);
        all_ok &= f.verdict == Verdict::Ok;
        out.push(f);
    }
    all_ok
}

/// A record to start from: the routes' includes (or hosts) and `-all`.
fn suggested_spf(setup: &Setup) -> String {
    let mut terms: Vec<String> = Vec::new();
    for r in &setup.routes {
        terms.push(match r {
            Route::Smtp {
                spf_include: Some(i),
                ..
            } => format!("include:{i}"),
            Route::Smtp { host, .. } => format!("a:{host}"),
            Route::MailchimpTransactional => format!("include:{MANDRILL_SPF}"),
            Route::Sendmail => continue,
        });
    }
    if let Some(ip) = setup.sending_ip {
        terms.push(match ip {
            IpAddr::V4(v4) => format!("ip4:{v4}"),
            IpAddr::V6(v6) => format!("ip6:{v6}"),
        });
    }
    let mut seen = BTreeSet::new();
    terms.retain(|t| seen.insert(t.clone()));
    terms.insert(0, "v=spf1".into());
    terms.push("-all".into());
    terms.join(" ")
}

fn lookups_finding(domain: &str, tree: &spf::Tree) -> Finding {
    let counted = format!(
        "{} DNS-querying terms (at most {}), {} void lookups (at most {})",
        tree.lookups,
        spf::MAX_LOOKUPS,
        tree.void_lookups,
        spf::MAX_VOID_LOOKUPS
    );
    if tree.lookups > spf::MAX_LOOKUPS || tree.void_lookups > spf::MAX_VOID_LOOKUPS {
        return finding(
            "spf.lookups",
            domain,
            Verdict::Fail,
            format!("{counted}: receivers answer permerror, the same as no SPF"),
            Some(
                "remove include:/a/mx terms of services you no longer send through, or replace them with their ip4:/ip6: ranges, until at most 10 remain"
                    .into(),
            ),
        );
    }
    if let Some(f) = tree.dns_failures.first() {
        return finding(
            "spf.lookups",
            domain,
            Verdict::Fail,
            format!("{counted} so far; a query failed: {f}"),
            None,
        );
    }
    if !tree.errors.is_empty() {
        return finding(
            "spf.lookups",
            domain,
            Verdict::Fail,
            format!("{counted}; {}", tree.errors.join("; ")),
            Some("remove or correct the include:/redirect= named".into()),
        );
    }
    finding("spf.lookups", domain, Verdict::Ok, counted, None)
}

fn include_finding(
    domain: &str,
    text: &str,
    tree: &spf::Tree,
    include: &str,
    what: &str,
) -> Finding {
    let check = if include == MANDRILL_SPF {
        "spf.mandrill"
    } else {
        "spf.smarthost"
    };
    if tree.reached.contains(include) {
        finding(
            check,
            domain,
            Verdict::Ok,
            format!("{what}: include:{include} is reached"),
            None,
        )
    } else {
        finding(
            check,
            domain,
            Verdict::Fail,
            format!("{what}: include:{include} is not reached from \"{text}\""),
            Some(txt_line(domain, &spf::with_include(text, include))),
        )
    }
}

fn ip_finding(
    check: &str,
    domain: &str,
    text: &str,
    tree: &spf::Tree,
    ip: IpAddr,
    term: &str,
) -> Finding {
    match tree.evaluate(domain, ip) {
        Some(spf::Qualifier::Pass) => {
            finding(check, domain, Verdict::Ok, format!("{ip} passes"), None)
        }
        None => finding(
            check,
            domain,
            Verdict::Warn,
            format!(
                "cannot tell whether {ip} passes (the record uses macros, ptr or exists, or is broken)"
            ),
            None,
        ),
        Some(q) => finding(
            check,
            domain,
            Verdict::Fail,
            format!("{ip} does not pass: {q:?}"),
            Some(txt_line(domain, &spf::with_term(text, term))),
        ),
    }
}

async fn host_finding(
    dns: &Dns,
    domain: &str,
    text: &str,
    tree: &spf::Tree,
    host: &str,
) -> Finding {
    let addrs = match dns.addresses(host).await {
        Ok(a) if a.is_empty() => {
            return finding(
                "spf.smarthost",
                domain,
                Verdict::Warn,
                format!("smarthost {host} has no A/AAAA record to check"),
                Some("set [relay.smtp] spf_include to the smarthost's SPF domain".into()),
            );
        }
        Ok(a) => a,
        Err(f) => {
            return finding("spf.smarthost", domain, Verdict::Fail, f.to_string(), None);
        }
    };
    let failing: Vec<String> = addrs
        .iter()
        .filter(|ip| tree.evaluate(domain, **ip) != Some(spf::Qualifier::Pass))
        .map(ToString::to_string)
        .collect();
    if failing.is_empty() {
        finding(
            "spf.smarthost",
            domain,
            Verdict::Ok,
            format!(
                "smarthost {host}: {} pass",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )
    } else {
        finding(
            "spf.smarthost",
            domain,
            Verdict::Fail,
            format!("smarthost {host}: {} do not pass", failing.join(", ")),
            Some(format!(
                "{} (or the smarthost's include: with [relay.smtp] spf_include)",
                txt_line(domain, &spf::with_term(text, &format!("a:{host}")))
            )),
        )
    }
}

/// The DKIM check; true when the published key is the private key's.
async fn check_dkim(dns: &Dns, d: &DkimSetup, out: &mut Vec<Finding>) -> bool {
    let name = format!("{}._domainkey.{}", d.selector, d.domain);
    let key = match public_key_from_pem(&d.private_key_pem) {
        Ok(k) => k,
        Err(e) => {
            out.push(finding(
                "dkim",
                &name,
                Verdict::Fail,
                format!("the private key: {e}"),
                None,
            ));
            return false;
        }
    };
    let fix = Some(txt_line(&name, &key.record()));
    let txts = match dns.txt(&name).await {
        Ok(t) => t,
        Err(f) => {
            out.push(finding("dkim", &name, Verdict::Fail, f.to_string(), None));
            return false;
        }
    };
    let records: Vec<&String> = txts
        .iter()
        .filter(|t| t.contains("p=") || t.contains("v=DKIM1"))
        .collect();
    let (verdict, found) = match records.as_slice() {
        [] => (Verdict::Fail, "no DKIM key record published".to_owned()),
        [one] => match dkim::parse_record(one) {
            Err(e) => (Verdict::Fail, format!("unreadable record: {e}")),
            Ok(r) if r.public_key.is_empty() => {
                (Verdict::Fail, "the key is revoked (empty p=)".to_owned())
            }
            Ok(r) if key.matches(&r.kind, &r.public_key) => (
                Verdict::Ok,
                format!("k={} key matches the private key", r.kind),
            ),
            Ok(r) => (
                Verdict::Fail,
                format!(
                    "published k={} key is not the private key's public key ({})",
                    r.kind,
                    key.kind()
                ),
            ),
        },
        many => (
            Verdict::Fail,
            format!("{} key records (there must be one)", many.len()),
        ),
    };
    let ok = verdict == Verdict::Ok;
    out.push(finding(
        "dkim",
        &name,
        verdict,
        found,
        if ok { None } else { fix },
    ));
    ok
}

async fn check_dmarc(
    dns: &Dns,
    setup: &Setup,
    spf_ok: bool,
    dkim_ok: bool,
    out: &mut Vec<Finding>,
) {
    let from = &setup.from_domain;
    let org = organisational_domain(from);
    let fix = txt_line(
        &format!("_dmarc.{from}"),
        &format!("v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{from}"),
    );
    // The From domain's record, else the organisational domain's (RFC 7489 §6.6.3).
    let mut candidates = vec![(from.clone(), false)];
    if org != *from {
        candidates.push((org.clone(), true));
    }
    let mut found = None;
    for (d, inherited) in candidates {
        let name = format!("_dmarc.{d}");
        let txts = match dns.txt(&name).await {
            Ok(t) => t,
            Err(f) => {
                out.push(finding("dmarc", from, Verdict::Fail, f.to_string(), None));
                return;
            }
        };
        let recs: Vec<&String> = txts.iter().filter(|t| dmarc::is_dmarc(t)).collect();
        match recs.as_slice() {
            [] => continue,
            [one] => {
                found = Some((name, (*one).clone(), inherited));
                break;
            }
            many => {
                out.push(finding(
                    "dmarc",
                    from,
                    Verdict::Fail,
                    format!(
                        "{name}: {} DMARC records (receivers ignore all)",
                        many.len()
                    ),
                    Some(format!("keep one: {fix}")),
                ));
                return;
            }
        }
    }
    let Some((name, text, inherited)) = found else {
        out.push(finding(
            "dmarc",
            from,
            Verdict::Fail,
            format!(
                "no DMARC record at _dmarc.{from}: Gmail and Yahoo refuse bulk mail without one"
            ),
            Some(fix),
        ));
        return;
    };
    let record = match dmarc::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(
                "dmarc",
                from,
                Verdict::Fail,
                format!("{name}: \"{text}\": {e}"),
                Some(fix),
            ));
            return;
        }
    };
    let policy = if inherited {
        record.subdomain_policy.unwrap_or(record.policy)
    } else {
        record.policy
    };
    let seen = format!("{name}: \"{text}\"");
    out.push(match policy {
        dmarc::Policy::None => finding(
            "dmarc",
            from,
            Verdict::Warn,
            format!("{seen}: p=none asks receivers to do nothing with mail that fails"),
            Some(txt_line(
                &format!("_dmarc.{from}"),
                &text.replacen("p=none", "p=quarantine", 1),
            )),
        ),
        p => finding(
            "dmarc",
            from,
            Verdict::Ok,
            format!("{seen}: p={}", p.as_str()),
            None,
        ),
    });
    let spf_aligned = dmarc::aligned(&setup.return_path_domain, from, record.strict_spf);
    let dkim_aligned = setup
        .dkim
        .as_ref()
        .map(|d| dmarc::aligned(&d.domain, from, record.strict_dkim));
    let any_aligned = (spf_aligned && spf_ok) || (dkim_aligned == Some(true) && dkim_ok);
    let mode = |strict| if strict { "strict" } else { "relaxed" };
    out.push(if spf_aligned {
        finding(
            "dmarc.spf_alignment",
            from,
            Verdict::Ok,
            format!(
                "Return-Path domain {} is aligned ({}, aspf)",
                setup.return_path_domain,
                mode(record.strict_spf)
            ),
            None,
        )
    } else {
        finding(
            "dmarc.spf_alignment",
            from,
            if any_aligned { Verdict::Warn } else { Verdict::Fail },
            format!(
                "Return-Path domain {} is not aligned with {from} ({}, aspf){}",
                setup.return_path_domain,
                mode(record.strict_spf),
                if any_aligned {
                    ": DMARC rests on DKIM alone"
                } else {
                    ": DMARC fails, receivers apply the policy"
                }
            ),
            Some(if record.strict_spf {
                format!("set [relay] bounce_domain to {from}, or relax the record to aspf=r with a bounce domain under {org}")
            } else {
                format!("set [relay] bounce_domain to a domain under {org} (e.g. bounces.{org})")
            }),
        )
    });
    if let (Some(d), Some(aligned)) = (&setup.dkim, dkim_aligned) {
        out.push(if aligned {
            finding(
                "dmarc.dkim_alignment",
                from,
                Verdict::Ok,
                format!(
                    "DKIM d={} is aligned ({}, adkim)",
                    d.domain,
                    mode(record.strict_dkim)
                ),
                None,
            )
        } else {
            finding(
                "dmarc.dkim_alignment",
                from,
                if any_aligned {
                    Verdict::Warn
                } else {
                    Verdict::Fail
                },
                format!(
                    "DKIM d={} is not aligned with {from} ({}, adkim)",
                    d.domain,
                    mode(record.strict_dkim)
                ),
                Some(format!("sign with d={from} ([relay.dkim] domain)")),
            )
        });
    }
}

async fn check_mx(dns: &Dns, domain: &str, out: &mut Vec<Finding>) {
    let fix = format!("{domain}. IN MX 10 mail.{domain}.");
    out.push(match dns.mx(domain).await {
        Err(f) => finding("mx.bounce", domain, Verdict::Fail, f.to_string(), None),
        Ok(mx) if mx.is_empty() => finding(
            "mx.bounce",
            domain,
            Verdict::Fail,
            "no MX record: bounces to this domain cannot be delivered",
            Some(format!("{fix} (a host that passes bounces to mailbridge)")),
        ),
        Ok(mx) if mx.iter().all(|(_, n)| n.is_empty()) => finding(
            "mx.bounce",
            domain,
            Verdict::Fail,
            "null MX (\"0 .\"): the domain refuses all mail, bounces included",
            Some(fix),
        ),
        Ok(mx) => finding(
            "mx.bounce",
            domain,
            Verdict::Ok,
            mx.iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            None,
        ),
    });
}

async fn check_ptr(dns: &Dns, ip: IpAddr, out: &mut Vec<Finding>) {
    let subject = ip.to_string();
    let names = match dns.ptr(ip).await {
        Ok(n) => n,
        Err(f) => {
            out.push(finding("ptr", &subject, Verdict::Fail, f.to_string(), None));
            return;
        }
    };
    if names.is_empty() {
        out.push(finding(
            "ptr",
            &subject,
            Verdict::Fail,
            "no PTR record: many receivers refuse mail from an address without one",
            Some(format!(
                "ask the address's owner (your ISP or host) for a PTR record naming a host whose A/AAAA record is {ip}"
            )),
        ));
        return;
    }
    let mut seen = Vec::new();
    for name in &names {
        match dns.addresses(name).await {
            Ok(addrs) if addrs.contains(&ip) => {
                out.push(finding(
                    "ptr",
                    &subject,
                    Verdict::Ok,
                    format!("PTR {name}, whose address is {ip}"),
                    None,
                ));
                return;
            }
            Ok(addrs) => seen.push(format!(
                "PTR {name} → {}",
                if addrs.is_empty() {
                    "no address".to_owned()
                } else {
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Err(f) => seen.push(format!("PTR {name} → {f}")),
        }
    }
    let name = &names[0];
    let rr = if ip.is_ipv4() { "A" } else { "AAAA" };
    out.push(finding(
        "ptr",
        &subject,
        Verdict::Fail,
        format!(
            "{}: the forward lookup does not return {ip}",
            seen.join("; ")
        ),
        Some(format!(
            "{name}. IN {rr} {ip}  (or have the PTR name a host that has it)"
        )),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domains() {
        assert_eq!(
            domain_of_address("Club <Club@MyClub.Example>").as_deref(),
            Some("myclub.example")
        );
        assert_eq!(domain_of_address("a@b.test").as_deref(), Some("b.test"));
        assert_eq!(domain_of_address("nobody"), None);
    }

    #[test]
    fn long_txt_records_are_split_at_255_bytes() {
        let line = txt_line("s._domainkey.club.test", &"x".repeat(300));
        assert_eq!(
            line,
            format!(
                "s._domainkey.club.test. IN TXT \"{}\" \"{}\"",
                "x".repeat(255),
                "x".repeat(45)
            )
        );
    }

    #[test]
    fn exit_codes_follow_the_worst_verdict() {
        let f = |v| finding("x", "d", v, "", None);
        assert_eq!(Report::new(vec![]).exit_code(), 0);
        assert_eq!(
            Report::new(vec![f(Verdict::Ok), f(Verdict::Warn)]).exit_code(),
            3
        );
        assert_eq!(
            Report::new(vec![f(Verdict::Fail), f(Verdict::Warn)]).exit_code(),
            1
        );
    }
}
