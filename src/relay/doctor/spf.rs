//! SPF (RFC 7208) as the doctor needs it: parse a record, walk it and everything it reaches
//! through `include:` and `redirect=` with an explicit work list (never recursion) counting the
//! DNS-querying terms (§4.6.4: at most 10) and the void lookups (at most 2), and evaluate whether
//! an address passes.
//!
//! Hand-written rather than mail-auth's `check_host`: that answers pass/fail for one address but
//! does not report the lookup count, which includes are reachable, or why, which is what the
//! doctor must show; and it would bring a second resolver stack (mail-auth 0.13 carries its own
//! hickory-resolver). Macros (`%{i}`) and the `ptr`/`exists` mechanisms are counted but not
//! evaluated: a record that depends on them is reported as "cannot tell".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use super::dns::{Dns, DnsFailure};

/// RFC 7208 §4.6.4.
pub const MAX_LOOKUPS: u32 = 10;
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// Records processed in one walk (an include loop stops here).
const MAX_RECORDS: usize = 40;
/// MX names looked up per `mx` mechanism (§4.6.4).
const MAX_MX_NAMES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip(IpAddr, u8),
    Exists(String),
}

impl Mechanism {
    fn queries_dns(&self) -> bool {
        !matches!(self, Mechanism::All | Mechanism::Ip(..))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub terms: Vec<(Qualifier, Mechanism)>,
    pub redirect: Option<String>,
}

impl Record {
    fn has_all(&self) -> bool {
        self.terms.iter().any(|(_, m)| *m == Mechanism::All)
    }

    /// `redirect=` is used only by a record without `all` (§6.1).
    fn effective_redirect(&self) -> Option<&str> {
        self.redirect.as_deref().filter(|_| !self.has_all())
    }
}

/// Is `text` an SPF record at all (`v=spf1` alone or followed by a space)?
pub fn is_spf(text: &str) -> bool {
    let t = text.trim_start();
    t.len() >= 6
        && t[..6].eq_ignore_ascii_case("v=spf1")
        && t[6..].chars().next().is_none_or(|c| c == ' ')
}

fn domain_spec(s: &str, term: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._%{}+=,/|".contains(&b));
    if ok {
        Ok(d)
    } else {
        Err(format!("`{term}`: `{s}` is not a domain"))
    }
}

/// `domain/cidr4//cidr6` split.
fn cidrs(spec: &str, term: &str) -> Result<(Option<String>, u8, u8), String> {
    let bad = || format!("`{term}`: bad prefix length");
    let (rest, v6) = match spec.split_once("//") {
        Some((r, v6)) => (
            r,
            v6.parse::<u8>()
                .ok()
                .filter(|n| *n <= 128)
                .ok_or_else(bad)?,
        ),
        None => (spec, 128),
    };
    let (domain, v4) = match rest.rsplit_once('/') {
        Some((d, v4)) => (
            d,
            v4.parse::<u8>().ok().filter(|n| *n <= 32).ok_or_else(bad)?,
        ),
        None => (rest, 32),
    };
    let domain = match domain.strip_prefix(':') {
        Some(d) => Some(domain_spec(d, term)?),
        None if domain.is_empty() => None,
        None => return Err(format!("`{term}`: unknown mechanism")),
    };
    Ok((domain, v4, v6))
}

fn ip_net(spec: &str, v6: bool, term: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("`{term}`: not an IPv{} network", if v6 { 6 } else { 4 });
    let (addr, len) = match spec.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
        None => (spec, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv6() { 128 } else { 32 };
    if ip.is_ipv6() != v6 || len.is_some_and(|l| l > max) {
        return Err(bad());
    }
    Ok((ip, len.unwrap_or(max)))
}

/// Parses one SPF record; the error names the term that is wrong.
pub fn parse(text: &str) -> Result<Record, String> {
    let mut words = text.split_ascii_whitespace();
    if !words
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
    {
        return Err("does not start with v=spf1".into());
    }
    let mut record = Record {
        terms: Vec::new(),
        redirect: None,
    };
    for term in words {
        let name_end = term
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .unwrap_or(term.len());
        if term[name_end..].starts_with('=') {
            let (name, value) = (&term[..name_end], &term[name_end + 1..]);
            if name.eq_ignore_ascii_case("redirect") {
                if record.redirect.is_some() {
                    return Err("more than one redirect=".into());
                }
                record.redirect = Some(domain_spec(value, term)?);
            } else if name.eq_ignore_ascii_case("exp") {
                domain_spec(value, term)?;
            }
            // Unknown modifiers are ignored (§6).
            continue;
        }
        let (qualifier, body) = match term.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, &term[1..]),
            Some(b'-') => (Qualifier::Fail, &term[1..]),
            Some(b'~') => (Qualifier::SoftFail, &term[1..]),
            Some(b'?') => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let split = body.find([':', '/']).unwrap_or(body.len());
        let (name, rest) = (body[..split].to_ascii_lowercase(), &body[split..]);
        let arg = |what: &str| -> Result<String, String> {
            rest.strip_prefix(':')
                .map(str::to_owned)
                .ok_or_else(|| format!("`{term}`: {what} needs a value"))
        };
        let mechanism = match name.as_str() {
            "all" if rest.is_empty() => Mechanism::All,
            "include" => Mechanism::Include(domain_spec(&arg("include")?, term)?),
            "exists" => Mechanism::Exists(domain_spec(&arg("exists")?, term)?),
            "a" => {
                let (d, v4, v6) = cidrs(rest, term)?;
                Mechanism::A(d, v4, v6)
            }
            "mx" => {
                let (d, v4, v6) = cidrs(rest, term)?;
                Mechanism::Mx(d, v4, v6)
            }
            "ptr" => Mechanism::Ptr(match rest.strip_prefix(':') {
                Some(d) => Some(domain_spec(d, term)?),
                None if rest.is_empty() => None,
                None => return Err(format!("`{term}`: unknown mechanism")),
            }),
            "ip4" | "ip6" => {
                let (ip, len) = ip_net(&arg(&name)?, name == "ip6", term)?;
                Mechanism::Ip(ip, len)
            }
            _ => return Err(format!("`{term}`: unknown mechanism")),
        };
        record.terms.push((qualifier, mechanism));
    }
    Ok(record)
}

/// The one SPF record among a name's TXT records: `Ok(None)` when there is none, an error when
/// there are several (§4.5: permerror).
pub fn select(txts: &[String]) -> Result<Option<&str>, String> {
    let spf: Vec<&String> = txts.iter().filter(|t| is_spf(t)).collect();
    match spf.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.as_str())),
        many => Err(format!(
            "{} SPF records (there must be exactly one): {}",
            many.len(),
            many.iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What a walk from one domain's record found.
#[derive(Debug, Default)]
pub struct Tree {
    /// Each record reached, by domain; `Err` says why a domain has no usable record.
    pub records: HashMap<String, Result<Record, String>>,
    /// DNS-querying terms over the whole walk (§4.6.4).
    pub lookups: u32,
    /// Lookups that found nothing (§4.6.4).
    pub void_lookups: u32,
    /// Every domain reached through `include:` or `redirect=`.
    pub reached: BTreeSet<String>,
    /// Problems that make the record a permerror (a missing include target, a bad term).
    pub errors: Vec<String>,
    /// Queries that failed (temperror).
    pub dns_failures: Vec<DnsFailure>,
    /// What was not evaluated (macros, ptr, exists, the walk's bound).
    pub unchecked: Vec<String>,
    /// A and MX answers, by (mechanism, domain): what `a` and `mx` evaluate against.
    hosts: HashMap<(bool, String), Vec<IpAddr>>,
}

fn has_macro(d: &str) -> bool {
    d.contains('%')
}

impl Tree {
    /// Walks `root`'s record (already parsed) and all it reaches.
    pub async fn walk(dns: &Dns, root: &str, record: Record) -> Tree {
        let mut tree = Tree::default();
        let mut work: VecDeque<(String, Option<Record>)> = VecDeque::new();
        work.push_back((root.to_owned(), Some(record)));
        let mut processed = 0usize;
        while let Some((domain, given)) = work.pop_front() {
            processed += 1;
            if processed > MAX_RECORDS {
                tree.errors.push(format!(
                    "more than {MAX_RECORDS} records reached (an include loop?); stopped counting"
                ));
                break;
            }
            let record = match given {
                Some(r) => r,
                None => match tree.records.get(&domain) {
                    Some(Ok(r)) => r.clone(),
                    Some(Err(_)) => continue,
                    None => match tree.fetch(dns, &domain).await {
                        Some(r) => r,
                        None => continue,
                    },
                },
            };
            tree.records.insert(domain.clone(), Ok(record.clone()));
            for (_, m) in &record.terms {
                if m.queries_dns() {
                    tree.lookups += 1;
                }
                match m {
                    Mechanism::Include(d) if has_macro(d) => {
                        tree.unchecked.push(format!("include:{d} (macro)"));
                    }
                    Mechanism::Include(d) => {
                        tree.reached.insert(d.clone());
                        work.push_back((d.clone(), None));
                    }
                    Mechanism::A(d, _, _) | Mechanism::Mx(d, _, _) => {
                        let is_mx = matches!(m, Mechanism::Mx(..));
                        let target = d.clone().unwrap_or_else(|| domain.clone());
                        tree.resolve_hosts(dns, is_mx, &target).await;
                    }
                    Mechanism::Ptr(_) | Mechanism::Exists(_) => {
                        tree.unchecked.push(format!("{m:?} in {domain}"));
                    }
                    Mechanism::All | Mechanism::Ip(..) => {}
                }
            }
            if let Some(d) = record.effective_redirect() {
                tree.lookups += 1;
                if has_macro(d) {
                    tree.unchecked.push(format!("redirect={d} (macro)"));
                } else {
                    tree.reached.insert(d.to_owned());
                    work.push_back((d.to_owned(), None));
                }
            }
        }
        tree
    }

    /// The record at `domain`, or `None` with the reason stored.
    async fn fetch(&mut self, dns: &Dns, domain: &str) -> Option<Record> {
        let result = match dns.txt(domain).await {
            Err(f) => {
                self.dns_failures.push(f);
                return None;
            }
            Ok(txts) => {
                if txts.is_empty() {
                    self.void_lookups += 1;
                }
                match select(&txts) {
                    Ok(Some(text)) => parse(text).map_err(|e| format!("{domain}: {e}")),
                    Ok(None) => Err(format!("{domain} has no SPF record")),
                    Err(e) => Err(format!("{domain}: {e}")),
                }
            }
        };
        if let Err(e) = &result {
            self.errors.push(e.clone());
        }
        self.records.insert(domain.to_owned(), result.clone());
        result.ok()
    }

    async fn resolve_hosts(&mut self, dns: &Dns, is_mx: bool, domain: &str) {
        if has_macro(domain) {
            self.unchecked.push(format!("{domain} (macro)"));
            return;
        }
        if self.hosts.contains_key(&(is_mx, domain.to_owned())) {
            return;
        }
        let names = if is_mx {
            match dns.mx(domain).await {
                Ok(mx) => mx.into_iter().map(|(_, n)| n).collect(),
                Err(f) => {
                    self.dns_failures.push(f);
                    return;
                }
            }
        } else {
            vec![domain.to_owned()]
        };
        if names.len() > MAX_MX_NAMES {
            self.errors.push(format!(
                "mx:{domain} has {} MX records (at most {MAX_MX_NAMES})",
                names.len()
            ));
        }
        let mut addrs = Vec::new();
        for name in names.iter().take(MAX_MX_NAMES) {
            match dns.addresses(name).await {
                Ok(a) => addrs.extend(a),
                Err(f) => self.dns_failures.push(f),
            }
        }
        if addrs.is_empty() {
            self.void_lookups += 1;
        }
        self.hosts.insert((is_mx, domain.to_owned()), addrs);
    }

    /// Evaluates `ip` from `root` (check_host over the records already fetched): the qualifier
    /// of the term that matched, or `None` when the answer depends on something not evaluated
    /// or on a record that is broken.
    pub fn evaluate(&self, root: &str, ip: IpAddr) -> Option<Qualifier> {
        enum Step {
            Enter(String),
            Done(Qualifier),
        }
        // (domain, next term) per record being evaluated; an include pushes, a result pops.
        let mut stack: Vec<(String, usize)> = vec![(root.to_owned(), 0)];
        let mut returned: Option<Option<Qualifier>> = None;
        let mut uncertain = false;
        for _ in 0..MAX_RECORDS * 8 {
            let (domain, pos) = stack.last().cloned()?;
            let Some(Ok(record)) = self.records.get(&domain) else {
                return None;
            };
            let mut step = None;
            match returned.take() {
                // Back from the include at `pos - 1`: it matches when the included record passes.
                Some(Some(Qualifier::Pass)) => {
                    step = record
                        .terms
                        .get(pos.wrapping_sub(1))
                        .map(|t| Step::Done(t.0));
                }
                Some(None) => uncertain = true,
                Some(Some(_)) | None => {}
            }
            let mut i = pos;
            while step.is_none() && i < record.terms.len() {
                let (q, m) = &record.terms[i];
                i += 1;
                let matched = match m {
                    Mechanism::All => true,
                    Mechanism::Ip(net, len) => in_net(ip, *net, *len),
                    Mechanism::A(d, v4, v6) | Mechanism::Mx(d, v4, v6) => {
                        let target = d.clone().unwrap_or_else(|| domain.clone());
                        let is_mx = matches!(m, Mechanism::Mx(..));
                        match self.hosts.get(&(is_mx, target)) {
                            Some(addrs) => addrs
                                .iter()
                                .any(|a| in_net(ip, *a, if a.is_ipv4() { *v4 } else { *v6 })),
                            None => {
                                uncertain = true;
                                false
                            }
                        }
                    }
                    Mechanism::Include(d) => {
                        step = Some(Step::Enter(d.clone()));
                        false
                    }
                    Mechanism::Ptr(_) | Mechanism::Exists(_) => {
                        uncertain = true;
                        false
                    }
                };
                if matched {
                    step = Some(Step::Done(*q));
                }
            }
            if let Some(top) = stack.last_mut() {
                top.1 = i;
            }
            let result = match step {
                Some(Step::Enter(d)) => {
                    stack.push((d, 0));
                    continue;
                }
                Some(Step::Done(q)) => Some(q),
                None => match record.effective_redirect() {
                    Some(target) => {
                        if let Some(top) = stack.last_mut() {
                            *top = (target.to_owned(), 0);
                        }
                        continue;
                    }
                    None => Some(Qualifier::Neutral),
                },
            };
            stack.pop();
            if stack.is_empty() {
                return if uncertain && result != Some(Qualifier::Pass) {
                    None
                } else {
                    result
                };
            }
            returned = Some(result);
        }
        None
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `record` with `include:domain` added before its `all` (or at its end).
pub fn with_include(text: &str, domain: &str) -> String {
    with_term(text, &format!("include:{domain}"))
}

/// `record` with `term` added before its `all` or `redirect=` (or at its end).
pub fn with_term(text: &str, term: &str) -> String {
    let mut words: Vec<String> = text.split_ascii_whitespace().map(str::to_owned).collect();
    let at = words
        .iter()
        .position(|w| {
            let w = w.trim_start_matches(['+', '-', '~', '?']);
            w.eq_ignore_ascii_case("all") || w.to_ascii_lowercase().starts_with("redirect=")
        })
        .unwrap_or(words.len());
    words.insert(at, term.to_owned());
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms_and_refuses_bad_ones() {
        let r = parse("v=spf1 ip4:192.0.2.0/24 a mx:m.example/24 include:x.example ~all").unwrap();
        assert_eq!(r.terms.len(), 5);
        assert_eq!(r.terms[4], (Qualifier::SoftFail, Mechanism::All));
        assert_eq!(
            r.terms[2].1,
            Mechanism::Mx(Some("m.example".into()), 24, 128)
        );
        for bad in [
            "v=spf2 -all",
            "v=spf1 ip4:300.1.1.1 -all",
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 include -all",
            "v=spf1 foo:bar",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 ip6:192.0.2.1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_spf("v=spf1") && is_spf("V=SPF1 -all") && !is_spf("v=spf10"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_net(ip("192.0.2.7"), ip("192.0.2.0"), 24));
        assert!(!in_net(ip("192.0.3.7"), ip("192.0.2.0"), 24));
        assert!(in_net(ip("10.0.0.1"), ip("0.0.0.0"), 0));
        assert!(in_net(ip("2001:db8::1"), ip("2001:db8::"), 32));
        assert!(!in_net(ip("2001:db8::1"), ip("192.0.2.0"), 0));
    }

    #[test]
    fn include_goes_before_all() {
        assert_eq!(
            with_include("v=spf1 mx -all", "authsmtp.com"),
            "v=spf1 mx include:authsmtp.com -all"
        );
    }
}
