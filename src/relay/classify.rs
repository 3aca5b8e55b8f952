//! The one place that decides what a failed delivery attempt means (CONVENTIONS habit 4). Pure:
//! routes describe what happened as a [`Failure`]; [`classify`] turns it into a [`Verdict`]; the
//! worker acts on the verdict (retry later, try the next route, bounce, suppress, alert).
//!
//! | what happened | verdict |
//! |---|---|
//! | connection refused / timeout / network / TLS, SMTP 421, API 5xx or transport error, before the message was handed over | route down: next route, else deferred |
//! | the message was handed over and its answer was lost (connection closed or timed out after the SMTP content, an API 2xx that cannot be read, an API request that timed out once sent) | ambiguous: retried on the same route after the back-off, never sent through another route in the same pass |
//! | SMTP 4xx (451, 452, 450 …), sendmail EX_TEMPFAIL | deferred (exponential backoff with jitter) |
//! | SMTP 433/443 (AuthSMTP quota), 454 (temporary auth failure) | route down |
//! | SMTP 5xx with 5.1.x on the recipient (bad mailbox/domain/syntax/moved) | bounced + suppressed |
//! | SMTP 5xx with 5.2.x, 5.3.x, 5.4.x, 5.5.x, 5.6.x or no enhanced code on RCPT/DATA (550–554) | bounced |
//! | SMTP 530/534/535/538 or 5.7.x (auth, policy, relaying denied), 5.1.7/5.1.8 (sender), 500–504 (AuthSMTP: sender not authorised) | route misconfigured |
//! | sendmail EX_NOUSER/EX_NOHOST | bounced + suppressed; EX_DATAERR … bounced; missing binary, EX_CONFIG … misconfigured |
//! | API `rejected`/`invalid` per recipient | bounced (hard-bounce/invalid also suppress); `invalid-sender`, 4xx → misconfigured |

/// What a route reports about a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The route could not be reached or the conversation broke before the message was handed
    /// over: refused, timeout, DNS, TLS, network, HTTP transport error.
    Unreachable { detail: String },
    /// The message was handed over in full and then the answer was lost: the connection closed
    /// or timed out after the SMTP content and its final `.` were written, an HTTP API answered
    /// 2xx with a body that cannot be read, or an API request timed out after it was sent. The
    /// route may have accepted the message.
    Unanswered { detail: String },
    /// A negative SMTP reply (any stage); `text` is the server's text, with the enhanced status
    /// code when it sent one.
    Smtp { code: u16, text: String },
    /// The sendmail binary could not be run or exited non-zero (sysexits.h codes).
    Sendmail { exit: Option<i32>, detail: String },
    /// An HTTP API answered with an error status (`name` from its error body, if any).
    ApiStatus { status: u16, name: Option<String> },
    /// An HTTP API accepted the request but refused the recipient.
    ApiRejected { reason: String },
    /// The route is set up wrong in a way found before talking to it (bad CA file, missing binary).
    Setup { detail: String },
}

impl Failure {
    /// A short text for the outbox's `last_reply` and for logs (never contains secrets: routes
    /// build it from server replies and local errors only).
    pub fn reply(&self) -> String {
        match self {
            Failure::Unreachable { detail } => format!("unreachable: {detail}"),
            Failure::Unanswered { detail } => format!("outcome unknown: {detail}"),
            Failure::Smtp { code, text } => format!("{code} {text}"),
            Failure::Sendmail { exit, detail } => match exit {
                Some(code) => format!("sendmail exited with {code}: {detail}"),
                None => format!("sendmail failed: {detail}"),
            },
            Failure::ApiStatus { status, name } => match name {
                Some(n) => format!("API answered {status} ({n})"),
                None => format!("API answered {status}"),
            },
            Failure::ApiRejected { reason } => format!("API rejected the recipient: {reason}"),
            Failure::Setup { detail } => format!("route setup: {detail}"),
        }
    }
}

/// What the worker does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The route is down: skip it for a while and try the next one; without one, defer.
    RouteDown,
    /// This message should be retried later on the same routes.
    Defer,
    /// Whether the route accepted the message is unknown: it may have been delivered. Retried on
    /// the same route after the back-off (the route is not taken to be down), never sent through
    /// another route in the same pass.
    Ambiguous,
    /// The recipient was refused for good; `suppress` when the address itself is bad.
    Bounce { suppress: bool },
    /// Our side is wrong (credentials, unauthorised sender, policy): alert, skip the route, keep
    /// the message queued, suppress nothing.
    Misconfigured,
}

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

/// The enhanced status code at the start of an SMTP reply text, if any (`5.1.1 <x>: unknown`).
pub fn enhanced(text: &str) -> Option<Enhanced> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class = parts.next()?.parse::<u8>().ok()?;
    let subject = parts.next()?.parse::<u16>().ok()?;
    let detail = parts
        .next()?
        .trim_end_matches([',', ';', ':'])
        .parse::<u16>()
        .ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some(Enhanced {
        class,
        subject,
        detail,
    })
}

/// Decides what a failure means. See the module table.
pub fn classify(failure: &Failure) -> Verdict {
    match failure {
        Failure::Unreachable { .. } => Verdict::RouteDown,
        Failure::Unanswered { .. } => Verdict::Ambiguous,
        Failure::Setup { .. } => Verdict::Misconfigured,
        Failure::Smtp { code, text } => classify_smtp(*code, text),
        Failure::Sendmail { exit, .. } => match exit {
            // sysexits.h: EX_NOUSER, EX_NOHOST
            Some(67 | 68) => Verdict::Bounce { suppress: true },
            // EX_DATAERR (bad input), EX_NOINPUT: this message cannot be sent as is.
            Some(65 | 66) => Verdict::Bounce { suppress: false },
            // EX_TEMPFAIL
            Some(75) => Verdict::Defer,
            // EX_UNAVAILABLE, EX_IOERR, EX_OSERR, EX_CANTCREAT: the MTA is not working right now.
            Some(69 | 71 | 73 | 74) => Verdict::RouteDown,
            // EX_USAGE, EX_SOFTWARE, EX_OSFILE, EX_PROTOCOL, EX_NOPERM, EX_CONFIG, killed, or no
            // binary at all: someone must look at the local MTA.
            _ => Verdict::Misconfigured,
        },
        Failure::ApiStatus { status, name } => match (status, name.as_deref()) {
            (
                _,
                Some("Invalid_Key" | "PaymentRequired" | "Unknown_Subaccount" | "ValidationError"),
            ) => Verdict::Misconfigured,
            (401 | 403, _) => Verdict::Misconfigured,
            (429, _) => Verdict::Defer,
            (400..=499, _) => Verdict::Misconfigured,
            _ => Verdict::RouteDown,
        },
        Failure::ApiRejected { reason } => match reason.as_str() {
            "hard-bounce" | "invalid" | "unsub" | "spam" => Verdict::Bounce { suppress: true },
            "invalid-sender" | "unsigned" | "test-mode-limit" => Verdict::Misconfigured,
            _ => Verdict::Bounce { suppress: false },
        },
    }
}

fn classify_smtp(code: u16, text: &str) -> Verdict {
    let esc = enhanced(text);
    match code {
        // Service not available: the server is closing the connection.
        421 => Verdict::RouteDown,
        // AuthSMTP "account is at / over message quota"; temporary authentication failure.
        433 | 443 | 454 => Verdict::RouteDown,
        400..=499 => Verdict::Defer,
        // Authentication required / too weak / invalid / needs encryption.
        530 | 534 | 535 | 538 => Verdict::Misconfigured,
        // Syntax errors and AuthSMTP's "500 Envelope from address is not authorised" / "502 Header
        // from address is not authorised": our request or account, never the recipient.
        // Postfix answers a bad recipient address with 501 5.1.3, though: the recipient's
        // enhanced code wins.
        500..=504 => match esc {
            Some(Enhanced {
                subject: 1, detail, ..
            }) if detail != 7 && detail != 8 => Verdict::Bounce { suppress: true },
            _ => Verdict::Misconfigured,
        },
        505..=599 => match esc {
            Some(Enhanced { subject: 7, .. }) => Verdict::Misconfigured,
            // Bad sender mailbox / sender syntax: our From or Return-Path.
            Some(Enhanced {
                subject: 1,
                detail: 7 | 8,
                ..
            }) => Verdict::Misconfigured,
            Some(Enhanced { subject: 1, .. }) => Verdict::Bounce { suppress: true },
            _ => Verdict::Bounce { suppress: false },
        },
        // Not a failure code at all (a confused server): try again later rather than lose mail.
        _ => Verdict::Defer,
    }
}

/// The delay before retry number `attempts` (1 = the first retry): `base · 2^(attempts-1)`,
/// capped at `max`, then scaled by `jitter` in `[0.5, 1.0]` so that many deferred messages do not
/// come back at the same instant.
pub fn backoff(attempts: u64, base_secs: u64, max_secs: u64, jitter: f64) -> std::time::Duration {
    let exp = attempts.saturating_sub(1).min(32) as u32;
    let raw = base_secs.saturating_mul(1u64 << exp).min(max_secs);
    let jitter = jitter.clamp(0.5, 1.0);
    std::time::Duration::from_millis((raw as f64 * 1000.0 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(code: u16, text: &str) -> Verdict {
        classify(&Failure::Smtp {
            code,
            text: text.into(),
        })
    }

    #[test]
    fn smtp_replies_table() {
        let cases: &[(u16, &str, Verdict)] = &[
            (421, "4.3.2 Service shutting down", Verdict::RouteDown),
            (451, "4.3.0 Try again later", Verdict::Defer),
            (450, "4.2.1 Mailbox busy", Verdict::Defer),
            (452, "4.2.2 Mailbox full", Verdict::Defer),
            (433, "Account is at message quota", Verdict::RouteDown),
            (443, "Account is over message quota", Verdict::RouteDown),
            (
                454,
                "4.7.0 Temporary authentication failure",
                Verdict::RouteDown,
            ),
            (
                550,
                "5.1.1 <x@y.example>: User unknown",
                Verdict::Bounce { suppress: true },
            ),
            (
                550,
                "5.1.2 Host unknown",
                Verdict::Bounce { suppress: true },
            ),
            (
                553,
                "5.1.3 Bad address syntax",
                Verdict::Bounce { suppress: true },
            ),
            (550, "5.1.10 Null MX", Verdict::Bounce { suppress: true }),
            (
                501,
                "5.1.3 Bad recipient address syntax",
                Verdict::Bounce { suppress: true },
            ),
            (
                501,
                "5.1.7 Bad sender address syntax",
                Verdict::Misconfigured,
            ),
            (501, "5.5.4 Syntax error", Verdict::Misconfigured),
            (
                552,
                "5.2.2 Mailbox full",
                Verdict::Bounce { suppress: false },
            ),
            (
                550,
                "5.2.1 Mailbox disabled",
                Verdict::Bounce { suppress: false },
            ),
            (
                552,
                "5.3.4 Message too big",
                Verdict::Bounce { suppress: false },
            ),
            (
                550,
                "Mailbox unavailable",
                Verdict::Bounce { suppress: false },
            ),
            (
                554,
                "Transaction failed",
                Verdict::Bounce { suppress: false },
            ),
            (
                535,
                "5.7.8 Authentication credentials invalid",
                Verdict::Misconfigured,
            ),
            (530, "5.7.0 Authentication required", Verdict::Misconfigured),
            (534, "5.7.9 Mechanism too weak", Verdict::Misconfigured),
            (538, "5.7.11 Encryption required", Verdict::Misconfigured),
            (550, "5.7.1 Relaying denied", Verdict::Misconfigured),
            (554, "5.7.26 DMARC policy", Verdict::Misconfigured),
            (553, "5.1.8 Sender address rejected", Verdict::Misconfigured),
            (
                550,
                "5.1.7 Bad sender mailbox syntax",
                Verdict::Misconfigured,
            ),
            (
                500,
                "Envelope from address is not authorised",
                Verdict::Misconfigured,
            ),
            (
                502,
                "Header from address is not authorised",
                Verdict::Misconfigured,
            ),
            (250, "OK", Verdict::Defer),
        ];
        for (code, text, want) in cases {
            assert_eq!(smtp(*code, text), *want, "{code} {text}");
        }
    }

    #[test]
    fn connection_problems_take_the_route_down() {
        assert_eq!(
            classify(&Failure::Unreachable {
                detail: "Connection refused".into()
            }),
            Verdict::RouteDown
        );
        assert_eq!(
            classify(&Failure::Setup {
                detail: "cannot read the CA file".into()
            }),
            Verdict::Misconfigured
        );
    }

    #[test]
    fn a_lost_answer_after_the_handover_is_ambiguous_not_down() {
        let lost = Failure::Unanswered {
            detail: "connection closed after the message content".into(),
        };
        assert_eq!(classify(&lost), Verdict::Ambiguous);
        assert!(
            lost.reply().starts_with("outcome unknown: "),
            "{}",
            lost.reply()
        );
        // The same break before the handover is the route's: the next route may take it.
        assert_eq!(
            classify(&Failure::Unreachable {
                detail: "connection closed after the message content".into()
            }),
            Verdict::RouteDown
        );
    }

    #[test]
    fn sendmail_exit_codes() {
        let s = |exit| {
            classify(&Failure::Sendmail {
                exit,
                detail: String::new(),
            })
        };
        assert_eq!(s(Some(67)), Verdict::Bounce { suppress: true });
        assert_eq!(s(Some(68)), Verdict::Bounce { suppress: true });
        assert_eq!(s(Some(65)), Verdict::Bounce { suppress: false });
        assert_eq!(s(Some(75)), Verdict::Defer);
        assert_eq!(s(Some(69)), Verdict::RouteDown);
        assert_eq!(s(Some(78)), Verdict::Misconfigured);
        assert_eq!(s(Some(1)), Verdict::Misconfigured);
        assert_eq!(s(None), Verdict::Misconfigured);
    }

    #[test]
    fn api_answers() {
        let st = |status, name: Option<&str>| {
            classify(&Failure::ApiStatus {
                status,
                name: name.map(str::to_owned),
            })
        };
        assert_eq!(st(500, Some("Invalid_Key")), Verdict::Misconfigured);
        assert_eq!(st(500, Some("GeneralError")), Verdict::RouteDown);
        assert_eq!(st(503, None), Verdict::RouteDown);
        assert_eq!(st(429, None), Verdict::Defer);
        assert_eq!(st(401, None), Verdict::Misconfigured);
        let rej = |r: &str| classify(&Failure::ApiRejected { reason: r.into() });
        assert_eq!(rej("hard-bounce"), Verdict::Bounce { suppress: true });
        assert_eq!(rej("soft-bounce"), Verdict::Bounce { suppress: false });
        assert_eq!(rej("invalid-sender"), Verdict::Misconfigured);
    }

    #[test]
    fn enhanced_codes_are_read_only_at_the_start() {
        assert_eq!(
            enhanced("5.1.1 <a@b>: no"),
            Some(Enhanced {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert_eq!(enhanced("  4.7.0 later").map(|e| e.subject), Some(7));
        assert_eq!(enhanced("User unknown 5.1.1"), None);
        assert_eq!(enhanced("1.2.3 x"), None);
        assert_eq!(enhanced("5.1 x"), None);
        assert_eq!(enhanced(""), None);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        use std::time::Duration;
        assert_eq!(backoff(1, 60, 3600, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(2, 60, 3600, 1.0), Duration::from_secs(120));
        assert_eq!(backoff(3, 60, 3600, 1.0), Duration::from_secs(240));
        assert_eq!(backoff(20, 60, 3600, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(u64::MAX, 60, 3600, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(1, 60, 3600, 0.5), Duration::from_secs(30));
        assert_eq!(
            backoff(1, 60, 3600, 0.0),
            Duration::from_secs(30),
            "jitter is clamped"
        );
        assert_eq!(backoff(5, 0, 3600, 1.0), Duration::ZERO);
    }
}
