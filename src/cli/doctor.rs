//! `mailbridge doctor`: parses its flags, hands the setup to [`crate::relay::doctor`], prints the
//! findings (an aligned table, or one JSON document with `--json`) and exits 0 (all ok), 1 (a
//! fail) or 3 (warnings only).

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Config;
use crate::process::UsageError;
use crate::relay::doctor::{self, DkimSetup, Report, Setup, Verdict};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Check this From domain instead of `[relay] from`'s (works without a config file).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Ask this DNS server (`127.0.0.1:5353`) instead of `[doctor] resolver` or the system's.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_resolver)]
    pub resolver: Option<SocketAddr>,
    /// The address mail leaves from: its PTR record and SPF are checked.
    #[arg(long = "ip", value_name = "ADDRESS")]
    pub ip: Option<IpAddr>,
    /// The DKIM selector to check (with --dkim-key).
    #[arg(long, value_name = "SELECTOR", requires = "dkim_key")]
    pub dkim_selector: Option<String>,
    /// The DKIM private key (PEM) whose public half must be published (with --dkim-selector).
    #[arg(long, value_name = "FILE", requires = "dkim_selector")]
    pub dkim_key: Option<PathBuf>,
    /// The DKIM signing domain (`d=`); the From domain by default.
    #[arg(long, value_name = "DOMAIN", requires = "dkim_selector")]
    pub dkim_domain: Option<String>,
    /// Print one JSON document: {"findings": [...], "summary": {...}}.
    #[arg(long)]
    pub json: bool,
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    crate::config::parse_resolver(s)
        .ok_or_else(|| "expected an address such as 127.0.0.1:5353".to_owned())
}

pub async fn run(config_path: &Path, args: DoctorArgs) -> anyhow::Result<u8> {
    // With --domain and no config file, the doctor runs on its own.
    let config = if args.domain.is_some() && !config_path.exists() {
        None
    } else {
        Some(Config::load(config_path)?)
    };
    let relay = config.as_ref().and_then(|c| c.relay.as_ref());
    let mut setup = Setup::from_config(relay, args.domain.as_deref()).ok_or_else(|| {
        UsageError(format!(
            "{}: no [relay] from to take the domain from; pass --domain",
            config_path.display()
        ))
    })?;
    let mut doctor_config = config
        .as_ref()
        .map(|c| c.doctor.clone())
        .unwrap_or_default();
    if let Some(r) = args.resolver {
        doctor_config.resolver = Some(r);
    }
    setup.sending_ip = args.ip.or(doctor_config.sending_ip);
    if let (Some(selector), Some(key)) = (&args.dkim_selector, &args.dkim_key) {
        let pem = std::fs::read(key)
            .map_err(|e| UsageError(format!("--dkim-key {}: {e}", key.display())))?;
        setup.dkim = Some(DkimSetup {
            domain: args
                .dkim_domain
                .clone()
                .unwrap_or_else(|| setup.from_domain.clone()),
            selector: selector.clone(),
            private_key_pem: pem,
        });
    }
    let dns = doctor::resolver(&doctor_config)?;
    let report = doctor::run(&dns, &setup).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report, std::io::stdout().is_terminal()));
    }
    Ok(report.exit_code())
}

/// The findings as a table: verdict, check, subject, what was found; the fix on a line below.
pub fn table(report: &Report, colour: bool) -> String {
    let width = |f: fn(&doctor::Finding) -> usize, title: &str| {
        report
            .findings
            .iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let wc = width(|f| f.check.chars().count(), "CHECK");
    let ws = width(|f| f.subject.chars().count(), "FOR");
    let mut out = format!("{:<6} {:<wc$} {:<ws$} FOUND\n", "", "CHECK", "FOR");
    for f in &report.findings {
        let verdict = f.verdict.as_str().to_ascii_uppercase();
        let shown = if colour {
            let code = match f.verdict {
                Verdict::Ok => "32",
                Verdict::Warn => "33",
                Verdict::Fail => "31",
            };
            format!("\x1b[{code}m{verdict:<6}\x1b[0m")
        } else {
            format!("{verdict:<6}")
        };
        out.push_str(&format!(
            "{shown} {:<wc$} {:<ws$} {}\n",
            f.check, f.subject, f.found
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:<6} {:<wc$} fix: {fix}\n", "", ""));
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "\n{} ok, {} warn, {} fail: {}\n",
        s.ok,
        s.warn,
        s.fail,
        match s.verdict {
            Verdict::Ok => "receivers should find nothing to object to",
            Verdict::Warn => "mail should arrive; the warnings say what would make it surer",
            Verdict::Fail => "fix the failures, or receivers may reject or junk this mail",
        }
    ));
    out
}
