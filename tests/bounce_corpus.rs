//! The bounce parser against Sisimai's corpus (`tests/data/bounce-corpus/`, expected answers in
//! `index.tsv`, one row per fact): prints, overall and per family, how many facts have the right
//! recipients, hard/soft and reason, and fails below the bar of issue 18 (recipients 98%,
//! hard/soft 97%, reason 90%). The CRLF and CR copies must give the same reports as the LF ones.
//!
//! A fact is scored against the report of its file: recipients are right when the set of
//! reported addresses (lower-cased) is the set the file's facts name (a not-a-bounce file: kind
//! `not_bounce` and no recipients); hard/soft and reason are right when the recipient the fact
//! names is reported with that answer.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mailbridge::bounces::{BounceKind, BounceReport, parse};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounce-corpus")
}

#[derive(Debug, Clone)]
struct Fact {
    file: String,
    recipient: String,
    reason: String,
    hard_or_soft: String,
}

fn facts() -> Vec<Fact> {
    let index = std::fs::read_to_string(corpus().join("index.tsv")).unwrap();
    let mut lines = index.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (file, recipient, reason, hs) = (
        col("file"),
        col("recipient"),
        col("reason"),
        col("hard_or_soft"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split('\t').collect();
            Fact {
                file: cells[file].to_owned(),
                recipient: cells[recipient].to_ascii_lowercase(),
                reason: cells[reason].to_owned(),
                hard_or_soft: cells[hs].to_owned(),
            }
        })
        .collect()
}

/// `lhost-postfix-01.eml` → `lhost-postfix`; `rfc3464-01.eml` → `rfc3464`.
fn mta(file: &str) -> String {
    let name = file.rsplit('/').next().unwrap().trim_end_matches(".eml");
    match name.rsplit_once('-') {
        Some((stem, n)) if n.chars().all(|c| c.is_ascii_digit()) => stem.to_owned(),
        _ => name.to_owned(),
    }
}

/// The families the issue reports on: lhost-*, rhost-*, rfc3464, arf, rfc3834 (others by name).
fn family(mta: &str) -> String {
    if mta.starts_with("lhost-") {
        "lhost-*".into()
    } else if mta.starts_with("rhost-") {
        "rhost-*".into()
    } else {
        mta.to_owned()
    }
}

#[derive(Default, Clone, Copy)]
struct Score {
    facts: u32,
    recipients: u32,
    hard: u32,
    reason: u32,
}

impl Score {
    fn add(&mut self, r: bool, h: bool, why: bool) {
        self.facts += 1;
        self.recipients += u32::from(r);
        self.hard += u32::from(h);
        self.reason += u32::from(why);
    }
    fn pct(n: u32, d: u32) -> f64 {
        if d == 0 {
            100.0
        } else {
            100.0 * f64::from(n) / f64::from(d)
        }
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>4} facts  recipients {:>6.2}%  hard/soft {:>6.2}%  reason {:>6.2}%",
            self.facts,
            Self::pct(self.recipients, self.facts),
            Self::pct(self.hard, self.facts),
            Self::pct(self.reason, self.facts)
        )
    }
}

fn hard_word(h: Option<bool>) -> &'static str {
    match h {
        Some(true) => "hard",
        Some(false) => "soft",
        None => "none",
    }
}

/// Scores the parser over every fact of the corpus; prints them overall, per family and per MTA
/// (and every miss with `BOUNCE_CORPUS_MISSES=1`). Returns (recipients, hard/soft, reason) in %.
fn corpus_scores() -> (f64, f64, f64) {
    let facts = facts();
    let mut by_file: BTreeMap<String, Vec<Fact>> = BTreeMap::new();
    for f in facts {
        by_file.entry(f.file.clone()).or_default().push(f);
    }
    let mut overall = Score::default();
    let mut families: BTreeMap<String, Score> = BTreeMap::new();
    let mut mtas: BTreeMap<String, Score> = BTreeMap::new();
    let mut misses = Vec::new();
    // `BOUNCE_CORPUS_ALL=1`: list every fact (right ones too, marked `ok`) with what we found.
    let all = std::env::var_os("BOUNCE_CORPUS_ALL").is_some();
    for (file, facts) in &by_file {
        let raw = std::fs::read(corpus().join(file)).unwrap();
        let report = parse(&raw);
        let got: BTreeSet<String> = report
            .recipients
            .iter()
            .map(|r| r.email.to_ascii_lowercase())
            .collect();
        let expected: BTreeSet<String> = facts
            .iter()
            .filter(|f| !f.recipient.is_empty())
            .map(|f| f.recipient.clone())
            .collect();
        let mta = mta(file);
        for fact in facts {
            let (r, h, why) = if fact.reason == "not-a-bounce" {
                let ok = report.kind == BounceKind::NotBounce && got.is_empty();
                (ok, ok, ok)
            } else {
                let mine = report
                    .recipients
                    .iter()
                    .find(|r| r.email.eq_ignore_ascii_case(&fact.recipient));
                (
                    got == expected,
                    mine.is_some_and(|m| hard_word(m.hard) == fact.hard_or_soft),
                    mine.is_some_and(|m| m.reason.as_str() == fact.reason),
                )
            };
            overall.add(r, h, why);
            families.entry(family(&mta)).or_default().add(r, h, why);
            mtas.entry(mta.clone()).or_default().add(r, h, why);
            if !(r && h && why) || all {
                let mine = report
                    .recipients
                    .iter()
                    .find(|m| m.email.eq_ignore_ascii_case(&fact.recipient));
                misses.push(format!(
                    "{}{file}: expected {} {} {}; got {:?} {}",
                    if r && h && why { "ok " } else { "" },
                    fact.recipient,
                    fact.reason,
                    fact.hard_or_soft,
                    got,
                    mine.map_or_else(
                        || format!("{:?} {:?}", report.kind, report.not_bounce_reason),
                        |m| format!(
                            "{} {} [{:?} {:?}] {:?}",
                            m.reason.as_str(),
                            hard_word(m.hard),
                            m.status,
                            m.reply_code,
                            m.diagnostic
                                .as_deref()
                                .map(|d| d.chars().take(160).collect::<String>())
                        )
                    )
                ));
            }
        }
    }
    println!("bounce corpus: {} files", by_file.len());
    println!("{}", overall.line("overall"));
    for (name, s) in &families {
        println!("{}", s.line(name));
    }
    println!("per MTA:");
    for (name, s) in &mtas {
        println!("  {}", s.line(name));
    }
    if all || std::env::var_os("BOUNCE_CORPUS_MISSES").is_some() {
        for m in &misses {
            println!("MISS {m}");
        }
    }
    let pct = |n| Score::pct(n, overall.facts);
    (
        pct(overall.recipients),
        pct(overall.hard),
        pct(overall.reason),
    )
}

/// The issue's bar (issue 18): recipients 98%, hard/soft 97%, reason 90%.
#[test]
fn the_scores_meet_the_bar() {
    let (recipients, hard, reason) = corpus_scores();
    assert!(recipients >= 98.0, "recipients {recipients:.2}% < 98%");
    assert!(hard >= 97.0, "hard/soft {hard:.2}% < 97%");
    assert!(reason >= 90.0, "reason {reason:.2}% < 90%");
}

/// A ratchet: the scores reached so far (recipients 99.19%, hard/soft 97.29%, reason 91.60%, over
/// 369 facts) may not fall; raise these floors when the parser gets better.
#[test]
fn the_scores_do_not_fall() {
    let (recipients, hard, reason) = corpus_scores();
    assert!(recipients >= 99.1, "recipients {recipients:.2}% < 99.1%");
    assert!(hard >= 97.2, "hard/soft {hard:.2}% < 97.2%");
    assert!(reason >= 91.5, "reason {reason:.2}% < 91.5%");
}

/// The CRLF and CR copies read exactly like the LF original.
#[test]
fn line_endings_do_not_change_the_answer() {
    let mut compared = 0;
    for dir in ["emails-crlf", "emails-cr"] {
        for entry in std::fs::read_dir(corpus().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            let lf = std::fs::read(corpus().join("emails").join(name)).unwrap();
            let other = std::fs::read(&path).unwrap();
            assert_ne!(lf, other, "{}: same bytes as the LF copy", path.display());
            let (a, b): (BounceReport, BounceReport) = (parse(&lf), parse(&other));
            assert_eq!(a, b, "{}", path.display());
            compared += 1;
        }
    }
    assert!(compared >= 60, "only {compared} copies compared");
}
