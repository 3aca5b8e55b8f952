//! Bounce mail: whatever arrives at the bounce mailbox, `parse` answers without panicking, within
//! its bounds, consistently (the same answer for CRLF line ends; hard/soft only on failures).

use mailbridge::bounces::{BounceKind, Reason, parse};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

pub fn check_parse(input: &[u8]) -> TestCaseResult {
    let report = parse(input);
    prop_assert!(
        report.recipients.len() <= 256,
        "{} recipients",
        report.recipients.len()
    );
    match report.kind {
        BounceKind::NotBounce => {
            prop_assert!(report.recipients.is_empty());
            prop_assert!(report.not_bounce_reason.is_some());
        }
        _ => prop_assert!(report.not_bounce_reason.is_none()),
    }
    for r in &report.recipients {
        prop_assert!(
            r.email.contains('@') && r.email.len() <= 320,
            "{:?}",
            r.email
        );
        prop_assert!(
            r.diagnostic
                .as_ref()
                .is_none_or(|d| d.chars().count() <= 1000),
            "diagnostic too long"
        );
        let no_failure = matches!(
            r.reason,
            Reason::Delivered | Reason::Feedback | Reason::Vacation
        );
        prop_assert_eq!(r.hard.is_none(), no_failure, "{:?}", r);
        prop_assert!(r.reply_code.is_none_or(|c| (200..600).contains(&c)));
    }
    // Line ends do not change the answer (inputs with a CR of their own aside: CR LF is one
    // line end, so doubling it would add lines).
    if !input.contains(&b'\r') && input.len() < 256 * 1024 {
        let crlf: Vec<u8> = input
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect();
        prop_assert_eq!(parse(&crlf), report);
    }
    Ok(())
}
