//! `mailbridge doctor` against a real DNS server (dnsmasq on loopback) serving crafted records:
//! one correct domain and one broken record per scenario, each asserting the verdict of the check
//! it breaks. DKIM keys are made per run by the openssl CLI, which also derives the public key
//! published (independently of the doctor's own derivation).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use mailbridge::relay::doctor::{self, DkimSetup, Dns, Report, Route, Setup, Verdict};
use support::dns::{DnsServer, Zone};

const FROM: &str = "club.example";
const SMARTHOST: &str = "mail.authsmtp.example";
const SENDING_IP: &str = "192.0.2.10";

/// A private key (PEM) of `algorithm` made by openssl, and its public key as DKIM's p= (base64
/// of the SubjectPublicKeyInfo for RSA, of the 32 raw bytes for Ed25519).
fn keypair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, String) {
    let key = dir.join(format!("{name}.pem"));
    support::run_ok(
        Command::new("openssl")
            .args(["genpkey"])
            .args(algorithm)
            .arg("-out")
            .arg(&key),
        "openssl genpkey",
    );
    let der = support::run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key),
        "openssl pkey -pubout",
    )
    .stdout;
    let published = if algorithm.contains(&"ed25519") {
        der[der.len() - 32..].to_vec()
    } else {
        der
    };
    (
        std::fs::read(&key).unwrap(),
        base64::engine::general_purpose::STANDARD.encode(published),
    )
}

fn rsa(dir: &Path, name: &str) -> (Vec<u8>, String) {
    keypair(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

/// The records of a domain that gets everything right, with `spf` as the From domain's SPF
/// record, `dkim_p` as the published key and `dmarc` as its DMARC record (none when `None`).
fn zone(spf: &str, dkim_p: &str, dmarc: Option<&str>) -> Zone {
    let mut z = Zone::new()
        .txt(FROM, spf)
        .txt(
            "authsmtp.example",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
        )
        .host(SMARTHOST, "192.0.2.25")
        .txt(
            &format!("sel._domainkey.{FROM}"),
            &format!("v=DKIM1; k=rsa; p={dkim_p}"),
        )
        .mx(FROM, "mx.club.example", 10)
        .host("mx.club.example", "192.0.2.30")
        .host("out.club.example", SENDING_IP)
        // A VERP bounce domain of another organisation, for the alignment scenario.
        .txt(
            "bounces.other.example",
            "v=spf1 include:authsmtp.example -all",
        )
        .mx("bounces.other.example", "mx.club.example", 10);
    if let Some(d) = dmarc {
        z = z.txt(&format!("_dmarc.{FROM}"), d);
    }
    z
}

const GOOD_SPF: &str = "v=spf1 mx include:authsmtp.example -all";
const GOOD_DMARC: &str = "v=DMARC1; p=reject; rua=mailto:dmarc@club.example";

fn setup(key: &[u8]) -> Setup {
    Setup {
        from_domain: FROM.into(),
        return_path_domain: FROM.into(),
        routes: vec![Route::Smtp {
            host: SMARTHOST.into(),
            spf_include: Some("authsmtp.example".into()),
        }],
        dkim: Some(DkimSetup {
            domain: FROM.into(),
            selector: "sel".into(),
            private_key_pem: key.to_vec(),
        }),
        sending_ip: Some(SENDING_IP.parse().unwrap()),
    }
}

async fn check(server: &DnsServer, setup: &Setup) -> Report {
    let dns = Dns::new(Some(server.addr), Duration::from_secs(2)).unwrap();
    doctor::run(&dns, setup).await
}

/// The one finding of `check`, which must have `verdict`.
fn verdict_of(report: &Report, check: &str, verdict: Verdict) -> doctor::Finding {
    let found: Vec<_> = report.of(check).collect();
    assert_eq!(found.len(), 1, "one {check} finding in {report:#?}");
    assert_eq!(found[0].verdict, verdict, "{check}: {report:#?}");
    found[0].clone()
}

fn only_failure(report: &Report, check: &str) -> doctor::Finding {
    let failing: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.verdict != Verdict::Ok)
        .map(|f| f.check.as_str())
        .collect();
    assert_eq!(failing, [check], "{report:#?}");
    assert_eq!(report.exit_code(), 1);
    verdict_of(report, check, Verdict::Fail)
}

#[tokio::test]
async fn a_correct_domain_is_all_ok_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    let Some(server) = DnsServer::start(&zone(GOOD_SPF, &p, Some(GOOD_DMARC))) else {
        return;
    };
    std::fs::write(dir.path().join("dkim.pem"), &key).unwrap();
    let config = support::ConfigFile::new("sqlite://state.db", "sqlite://members.db")
        .relay(&format!(
            "routes = [\"smtp\"]\n[relay.smtp]\nhost = \"{SMARTHOST}\"\nspf_include = \"authsmtp.example\"\n\
             [relay.dkim]\ndomain = \"{FROM}\"\nselector = \"sel\"\nprivate_key_file = \"dkim.pem\"\n"
        ))
        .extra(&format!(
            "\n[doctor]\nresolver = \"{}\"\ntimeout_secs = 2\n",
            server.addr
        ))
        .write(dir.path());
    // The DKIM key is `[relay.dkim]`'s (no --dkim-* flags).
    let args = ["doctor", "--json", "--ip", SENDING_IP];
    let out = support::db::run_binary(&config, &args).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    let findings = json["findings"].as_array().unwrap();
    let checks: Vec<&str> = findings
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "spf",
            "spf.lookups",
            "spf.smarthost",
            "spf.sending_ip",
            "dkim",
            "dmarc",
            "dmarc.spf_alignment",
            "dmarc.dkim_alignment",
            "mx.bounce",
            "ptr"
        ]
    );
    for f in findings {
        assert_eq!(f["verdict"], "ok", "{f:#}");
        assert!(f["subject"].as_str().is_some(), "{f:#}");
        assert!(f["found"].as_str().is_some_and(|s| !s.is_empty()), "{f:#}");
        assert!(f["fix"].is_null(), "{f:#}");
    }
    assert_eq!(
        json["summary"],
        serde_json::json!({"ok": 10, "warn": 0, "fail": 0, "verdict": "ok"})
    );
    // The secret key is nowhere in what is printed.
    let pem = String::from_utf8(key).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&body[..40]));

    // The same without --json: a table, and a domain without records exits 1.
    let out = support::db::run_binary(
        &config,
        &[
            "doctor",
            "--domain",
            "nothing.example",
            "--resolver",
            &server.addr.to_string(),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("       CHECK"), "{text}");
    assert!(
        text.contains("fix: _dmarc.nothing.example. IN TXT \"v=DMARC1; p=quarantine;"),
        "{text}"
    );
}

#[tokio::test]
async fn spf_with_eleven_lookups_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    // authsmtp (1) + a chain of ten includes, each reached only through the one before: 11.
    let mut z = zone(
        "v=spf1 include:authsmtp.example include:n1.example -all",
        &p,
        Some(GOOD_DMARC),
    );
    for n in 1..10 {
        z = z.txt(
            &format!("n{n}.example"),
            &format!("v=spf1 include:n{}.example -all", n + 1),
        );
    }
    z = z.txt("n10.example", "v=spf1 ip4:198.51.100.0/24 -all");
    let Some(server) = DnsServer::start(&z) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    let f = only_failure(&report, "spf.lookups");
    assert!(
        f.found.starts_with("11 DNS-querying terms (at most 10)"),
        "{f:?}"
    );

    // Ten are fine.
    let z10 = zone(
        "v=spf1 include:authsmtp.example include:n2.example -all",
        &p,
        Some(GOOD_DMARC),
    );
    let mut z10 = z10;
    for n in 2..10 {
        z10 = z10.txt(
            &format!("n{n}.example"),
            &format!("v=spf1 include:n{}.example -all", n + 1),
        );
    }
    let z10 = z10.txt("n10.example", "v=spf1 ip4:198.51.100.0/24 -all");
    let Some(server) = DnsServer::start(&z10) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    let f = verdict_of(&report, "spf.lookups", Verdict::Ok);
    assert!(f.found.starts_with("10 DNS-querying terms"), "{f:?}");
}

#[tokio::test]
async fn spf_without_the_smarthost_include_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    // The sending IP passes by ip4:, but the smarthost's include is missing.
    let spf = "v=spf1 mx ip4:192.0.2.10 -all";
    let Some(server) = DnsServer::start(&zone(spf, &p, Some(GOOD_DMARC))) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    let f = only_failure(&report, "spf.smarthost");
    assert_eq!(
        f.fix.as_deref(),
        Some("club.example. IN TXT \"v=spf1 mx ip4:192.0.2.10 include:authsmtp.example -all\"")
    );

    // Without spf_include, the smarthost's own addresses are evaluated: 192.0.2.25 fails here…
    let mut by_host = setup(&key);
    by_host.routes = vec![Route::Smtp {
        host: SMARTHOST.into(),
        spf_include: None,
    }];
    let report = check(&server, &by_host).await;
    let f = only_failure(&report, "spf.smarthost");
    assert!(f.found.contains("192.0.2.25 do not pass"), "{f:?}");
    // …and passes through the include.
    let Some(good) = DnsServer::start(&zone(GOOD_SPF, &p, Some(GOOD_DMARC))) else {
        return;
    };
    let report = check(&good, &by_host).await;
    verdict_of(&report, "spf.smarthost", Verdict::Ok);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
}

#[tokio::test]
async fn a_dkim_key_that_is_not_the_private_keys_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = rsa(dir.path(), "signing");
    let (_, other_p) = rsa(dir.path(), "other");
    let Some(server) = DnsServer::start(&zone(GOOD_SPF, &other_p, Some(GOOD_DMARC))) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    let f = only_failure(&report, "dkim");
    assert!(f.found.contains("not the private key's"), "{f:?}");
    // The fix is the record for the key we sign with, split in 255-byte strings.
    let fix = f.fix.unwrap();
    assert!(
        fix.starts_with("sel._domainkey.club.example. IN TXT \"v=DKIM1; k=rsa; p="),
        "{fix}"
    );
    assert!(fix.contains("\" \""), "{fix}");

    // An Ed25519 key published as such passes.
    let (ed, ed_p) = keypair(dir.path(), "ed", &["-algorithm", "ed25519"]);
    let z = zone(GOOD_SPF, "x", Some(GOOD_DMARC)).txt(
        &format!("ed._domainkey.{FROM}"),
        &format!("v=DKIM1; k=ed25519; p={ed_p}"),
    );
    let Some(server) = DnsServer::start(&z) else {
        return;
    };
    let mut s = setup(&ed);
    if let Some(d) = s.dkim.as_mut() {
        d.selector = "ed".into();
    }
    let report = check(&server, &s).await;
    verdict_of(&report, "dkim", Verdict::Ok);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
}

#[tokio::test]
async fn dmarc_reject_with_a_misaligned_return_path() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    let Some(server) = DnsServer::start(&zone(GOOD_SPF, &p, Some(GOOD_DMARC))) else {
        return;
    };
    let mut s = setup(&key);
    s.return_path_domain = "bounces.other.example".into();
    // DKIM is aligned and carries DMARC: a warning, exit 3.
    let report = check(&server, &s).await;
    let f = verdict_of(&report, "dmarc.spf_alignment", Verdict::Warn);
    assert!(f.found.contains("not aligned"), "{f:?}");
    assert_eq!(report.exit_code(), 3, "{report:#?}");
    // Without DKIM nothing is aligned: the policy rejects the mail.
    s.dkim = None;
    let report = check(&server, &s).await;
    verdict_of(&report, "dmarc.spf_alignment", Verdict::Fail);
    assert_eq!(report.exit_code(), 1);
    // A bounce domain under the From's organisational domain is aligned (relaxed)…
    let z = zone(GOOD_SPF, &p, Some(GOOD_DMARC))
        .txt("bounces.club.example", GOOD_SPF)
        .mx("bounces.club.example", "mx.club.example", 10);
    let Some(server) = DnsServer::start(&z) else {
        return;
    };
    let mut s = setup(&key);
    s.return_path_domain = "bounces.club.example".into();
    let report = check(&server, &s).await;
    verdict_of(&report, "dmarc.spf_alignment", Verdict::Ok);
    assert_eq!(report.exit_code(), 0, "{report:#?}");
    // …but not under aspf=s.
    let z = zone(GOOD_SPF, &p, Some("v=DMARC1; p=reject; aspf=s"))
        .txt("bounces.club.example", GOOD_SPF)
        .mx("bounces.club.example", "mx.club.example", 10);
    let Some(server) = DnsServer::start(&z) else {
        return;
    };
    let report = check(&server, &s).await;
    verdict_of(&report, "dmarc.spf_alignment", Verdict::Warn);
}

#[tokio::test]
async fn no_dmarc_record_fails_and_p_none_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    let Some(server) = DnsServer::start(&zone(GOOD_SPF, &p, None)) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    let f = only_failure(&report, "dmarc");
    assert_eq!(
        f.fix.as_deref(),
        Some(
            "_dmarc.club.example. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@club.example\""
        )
    );
    let Some(server) = DnsServer::start(&zone(GOOD_SPF, &p, Some("v=DMARC1; p=none"))) else {
        return;
    };
    let report = check(&server, &setup(&key)).await;
    verdict_of(&report, "dmarc", Verdict::Warn);
    assert_eq!(report.exit_code(), 3, "{report:#?}");
}

#[tokio::test]
async fn a_ptr_whose_name_does_not_resolve_back_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, p) = rsa(dir.path(), "dkim");
    let z = zone(GOOD_SPF, &p, Some(GOOD_DMARC))
        .ptr("192.0.2.20", "wrong.club.example")
        .host("wrong.club.example", "192.0.2.99");
    let Some(server) = DnsServer::start(&z) else {
        return;
    };
    let mut s = setup(&key);
    s.sending_ip = Some("192.0.2.20".parse::<IpAddr>().unwrap());
    let report = check(&server, &s).await;
    let f = only_failure(&report, "ptr");
    assert!(
        f.found.contains("PTR wrong.club.example → 192.0.2.99"),
        "{f:?}"
    );
    // An address without any PTR record fails too.
    s.sending_ip = Some("192.0.2.21".parse::<IpAddr>().unwrap());
    let report = check(&server, &s).await;
    let f = only_failure(&report, "ptr");
    assert!(f.found.starts_with("no PTR record"), "{f:?}");
}
