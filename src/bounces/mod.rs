//! Bounce mail: parsing and classifying what comes back (DSNs, MTA bounce texts, ARF complaints,
//! auto-replies) into a [`BounceReport`], and applying it to the outbox, the suppression list and
//! the member database.
//!
//! [`parse`] is pure (no config, no database): `mailbridge bounce parse` prints its answer. It
//! decides, in this order:
//!
//! 1. a `message/feedback-report` part → [`BounceKind::Arf`] (recipients: `Original-Rcpt-To`, or
//!    the enclosed message's `To`);
//! 2. a `message/delivery-status` part naming recipients → [`BounceKind::Dsn`] (per recipient:
//!    `Final-Recipient`, `Action`, `Status`, `Diagnostic-Code`; the bounce's own text fills in a
//!    missing diagnostic);
//! 3. RFC 3834 / vacation markers on a message the mail system did not send →
//!    [`BounceKind::Autoreply`] (recipient: its `From`);
//! 4. a bounce by its sender, subject, `X-Failed-Recipients` or wording → [`BounceKind::Dsn`]
//!    from the text ([`text`]: the failed recipients and the words about each);
//! 5. anything else → [`BounceKind::NotBounce`] with the reason.
//!
//! The reason of each recipient is decided in one place, [`classify`] (its docs give the
//! precedence of status code, wording and reply code); `hard` is [`Reason::hard`] with
//! "permanent" meaning a 5xx reply or a 5.x.x status.
//!
//! Hostile input: at most [`mime::MAX_INPUT`] bytes are read, nested messages are bounded before
//! parsing, the MIME tree is walked with an explicit stack, and every text kept is bounded.

mod classify;
mod fields;
pub mod imap;
pub mod ingest;
mod mime;
mod notification;
mod report;
mod text;

pub use classify::{COMMAND_RULES, COMMANDS, LATE_PHRASES, PHRASES, REPLY, STATUS};
pub use report::{BounceKind, BounceReport, Reason, Recipient};

use fields::{Field, field_blocks, find_addresses, first_address, get};

/// Recipients one report names, at most.
const MAX_REPORT_RECIPIENTS: usize = 256;
/// Characters of a diagnostic kept in a report.
const MAX_REPORTED_DIAGNOSTIC: usize = 1000;

/// Parses and classifies one raw message (RFC 5322 bytes, any line endings). Never panics: a
/// message that cannot be read is a [`BounceKind::NotBounce`] with the reason.
pub fn parse(raw: &[u8]) -> BounceReport {
    let normalised = mime::normalise(raw);
    let g = match mime::gather(&normalised) {
        Ok(g) => g,
        Err(mime::Unreadable::NoHeaders) => {
            return BounceReport::not_bounce("not a mail message: no header fields");
        }
        Err(mime::Unreadable::Mime) => {
            return BounceReport::not_bounce("its MIME structure cannot be read");
        }
    };
    let (head, rest) = text::split_prose(&g.prose);
    let mut returned = g.returned.clone();
    if returned.is_empty()
        && let Some(block) = text::returned_headers(rest)
    {
        returned.push(block);
    }
    let original_message_id = returned
        .iter()
        .find_map(|b| get(b, "message-id"))
        .map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
                .to_owned()
        })
        .filter(|id| !id.is_empty() && id.len() <= 998);
    let verp = find_verp(&g.top, &returned);

    let mut report = if !g.arf.is_empty() || is_complaint(&g) {
        arf_report(&g, &returned)
    } else if let Some(report) = dsn_report(&g, head, &returned) {
        report
    } else if let Some(report) = notification::report(&g.prose) {
        report
    } else if let Some(report) = autoreply_report(&g) {
        report
    } else if text::looks_like_bounce(&g.top, head) {
        text_report(&g, head, &returned)
    } else {
        BounceReport::not_bounce(
            "no delivery status, feedback report, bounce text or auto-reply markers",
        )
    };
    if report.kind != BounceKind::NotBounce {
        report.original_message_id = original_message_id;
        report.verp = verp;
    }
    report.unsubscribe = find_unsubscribe(&g.top);
    report
}

/// A one-click unsubscribe request address (`unsubscribe+…@…`), raw, from the headers the mail
/// was delivered with (never from a returned message: a bounce of our own mail is no request).
fn find_unsubscribe(top: &[Field]) -> Option<String> {
    const TOP: &[&str] = &[
        "to",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
    ];
    let prefix = crate::relay::unsubscribe::MAIL_PREFIX;
    top.iter()
        .filter(|f| TOP.contains(&f.name.as_str()))
        .flat_map(|f| find_addresses(&f.value, 16))
        .map(|a| a.address)
        .find(|a| {
            a.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
}

/// The bounce's parties: addresses that are never the failed recipient.
fn parties(top: &[Field], returned: &[Vec<Field>]) -> Vec<String> {
    // Not X-Original-To or Delivered-To: some MTAs put the failed recipient there.
    const TOP: &[&str] = &[
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "return-path",
        "errors-to",
    ];
    const RETURNED: &[&str] = &["from", "sender", "return-path", "reply-to", "errors-to"];
    let mut out = Vec::new();
    let mut add = |fields: &[Field], names: &[&str]| {
        for f in fields.iter().filter(|f| names.contains(&f.name.as_str())) {
            for a in find_addresses(&f.value, 16) {
                out.push(a.address.to_ascii_lowercase());
            }
        }
    };
    add(top, TOP);
    for block in returned {
        add(block, RETURNED);
    }
    out
}

/// A VERP bounce address (`bounces+…@…`), raw: in the returned message's envelope sender or
/// sender headers, or in the headers the bounce was delivered with.
fn find_verp(top: &[Field], returned: &[Vec<Field>]) -> Option<String> {
    const RETURNED: &[&str] = &["return-path", "from", "sender"];
    const TOP: &[&str] = &[
        "to",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
    ];
    let candidates = returned
        .iter()
        .flat_map(|b| b.iter().filter(|f| RETURNED.contains(&f.name.as_str())))
        .chain(top.iter().filter(|f| TOP.contains(&f.name.as_str())));
    for f in candidates {
        for a in find_addresses(&f.value, 16) {
            if a.address
                .get(..crate::relay::verp::PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(crate::relay::verp::PREFIX))
            {
                return Some(a.address);
            }
        }
    }
    None
}

fn arf_report(g: &mime::Gathered, returned: &[Vec<Field>]) -> BounceReport {
    let fields: Vec<Field> = g
        .arf
        .iter()
        .flat_map(|body| field_blocks(body, 8).into_iter().flatten())
        .collect();
    // A complaint without a report part (Microsoft's JMRP) is an abuse report.
    let feedback_type = get(&fields, "feedback-type")
        .map(|t| t.trim().to_ascii_lowercase())
        .or_else(|| g.arf.is_empty().then(|| "abuse".to_owned()));
    let mut emails: Vec<String> = fields
        .iter()
        .filter(|f| f.name == "original-rcpt-to")
        .filter_map(|f| first_address(&f.value))
        .collect();
    if emails.is_empty() {
        emails = returned
            .iter()
            .filter_map(|b| get(b, "x-hmxmroriginalrecipient").or_else(|| get(b, "to")))
            .flat_map(|to| find_addresses(to, 16))
            .map(|a| a.address)
            .collect();
    }
    dedupe(&mut emails);
    BounceReport {
        kind: BounceKind::Arf,
        recipients: emails
            .into_iter()
            .map(|email| Recipient {
                email,
                action: None,
                status: None,
                reply_code: None,
                reason: Reason::Feedback,
                hard: Reason::Feedback.hard(false),
                diagnostic: None,
            })
            .collect(),
        feedback_type,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    }
}

fn dedupe(emails: &mut Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    emails.retain(|e| {
        let lower = e.to_ascii_lowercase();
        if seen.contains(&lower) {
            false
        } else {
            seen.push(lower);
            true
        }
    });
    emails.truncate(MAX_REPORT_RECIPIENTS);
}

/// One recipient's fields in a delivery-status body.
#[derive(Debug, Default)]
struct DsnEntry {
    final_recipient: Option<String>,
    original_recipient: Option<String>,
    action: Option<String>,
    status: Option<String>,
    diagnostic: Option<String>,
    /// PowerMTA's `X-PowerMTA-BounceCategory`.
    category: Option<String>,
}

impl DsnEntry {
    fn named(&self) -> bool {
        self.final_recipient.is_some() || self.original_recipient.is_some()
    }

    fn email(&self) -> Option<String> {
        let addr = |v: &Option<String>| v.as_deref().and_then(first_address);
        addr(&self.final_recipient).or_else(|| addr(&self.original_recipient))
    }
}

/// The per-recipient entries of a delivery-status body (per-message fields are skipped; a
/// recipient without a blank line before it still starts a new entry).
fn dsn_entries(body: &str) -> Vec<DsnEntry> {
    let mut out = Vec::new();
    for block in field_blocks(body, 2 * MAX_REPORT_RECIPIENTS) {
        let mut current = DsnEntry::default();
        for f in block {
            match f.name.as_str() {
                "final-recipient" => {
                    if current.final_recipient.is_some() {
                        out.push(std::mem::take(&mut current));
                    }
                    current.final_recipient = Some(f.value);
                }
                "original-recipient" => {
                    if current.original_recipient.is_some() {
                        out.push(std::mem::take(&mut current));
                    }
                    current.original_recipient = Some(f.value);
                }
                "action" => current.action = Some(f.value.trim().to_ascii_lowercase()),
                "status" => current.status = Some(f.value),
                "diagnostic-code" => current.diagnostic = Some(diagnostic_text(&f.value)),
                "x-powermta-bouncecategory" => current.category = Some(f.value),
                _ => {}
            }
        }
        if current.named() {
            out.push(current);
        }
        if out.len() >= MAX_REPORT_RECIPIENTS {
            break;
        }
    }
    out
}

/// A `Diagnostic-Code` without its type (`smtp; 550 …` → `550 …`).
fn diagnostic_text(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if kind.len() <= 20 && !kind.trim().contains(' ') => {
            rest.trim().to_owned()
        }
        _ => value.trim().to_owned(),
    }
}

/// The first RFC 3463 status (`5.1.1`) in `text`.
fn status_in(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if boundary && matches!(c, b'2' | b'4' | b'5') && bytes.get(i + 1) == Some(&b'.') {
            let mut j = i + 2;
            let subject_start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() && j - subject_start < 3 {
                j += 1;
            }
            if j > subject_start && bytes.get(j) == Some(&b'.') {
                let detail_start = j + 1;
                let mut k = detail_start;
                while k < bytes.len() && bytes[k].is_ascii_digit() && k - detail_start < 3 {
                    k += 1;
                }
                let end_ok = k == bytes.len() || !(bytes[k].is_ascii_alphanumeric());
                if k > detail_start
                    && end_ok
                    && !(bytes.get(k) == Some(&b'.')
                        && bytes.get(k + 1).is_some_and(u8::is_ascii_digit))
                {
                    return Some(text[i..k].to_owned());
                }
            }
        }
        i += 1;
    }
    None
}

/// The first SMTP reply code (`550`, `452`) in `text`: three digits, 2xx, 4xx or 5xx, standing
/// alone or followed by `-`.
fn reply_code_in(text: &str) -> Option<u16> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        let before_ok = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || matches!(bytes[i - 1], b'.' | b'-' | b':' | b'/' | b'#' | b'['));
        let digits = &bytes[i..i + 3];
        let after = bytes.get(i + 3).copied();
        let after_ok = after.is_none_or(|b| b == b' ' || b == b'-' || b == b'\n' || b == b'\t');
        if before_ok
            && matches!(digits[0], b'4' | b'5')
            && digits[1].is_ascii_digit()
            && digits[1] <= b'5'
            && digits[2].is_ascii_digit()
            && after_ok
        {
            let code = u16::from(digits[0] - b'0') * 100
                + u16::from(digits[1] - b'0') * 10
                + u16::from(digits[2] - b'0');
            return Some(code);
        }
        i += 1;
    }
    None
}

/// A status that says only "failed" (`5.0.0`, `4.0.0`) says less than one in the diagnostic.
fn is_generic_status(status: &str) -> bool {
    status.ends_with(".0.0")
}

/// What a bounce says about all its recipients: who sent the returned message and which
/// system wrote the report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Around<'a> {
    /// The returned message's sender addresses (lower case).
    pub senders: &'a [String],
    /// The DSN's `Reporting-MTA` host name, if it gave one.
    pub reporting_mta: Option<&'a str>,
}

/// The host name in a DSN's `Reporting-MTA: dns; host` field, if any delivery-status body has one.
fn reporting_mta(dsn: &[String]) -> Option<String> {
    dsn.iter()
        .flat_map(|body| field_blocks(body, 1))
        .flatten()
        .find(|f| f.name == "reporting-mta")
        .map(|f| {
            let value = f.value.rsplit(';').next().unwrap_or("");
            value.trim().trim_end_matches('.').to_ascii_lowercase()
        })
        .filter(|host| !host.is_empty())
}

/// One recipient, classified: `status` and `reply_code` fall back to what the diagnostic says.
pub(crate) fn recipient(
    email: String,
    action: Option<String>,
    status: Option<String>,
    diagnostic: &str,
    fallback_text: &str,
    category: Option<&str>,
    around: Around<'_>,
) -> Recipient {
    let from_text = status_in(diagnostic);
    // The remote server's own status is more precise than the reporting MTA's summary.
    let status = match (status, from_text) {
        (Some(s), Some(t))
            if !is_generic_status(&t) && s.as_bytes().first() == t.as_bytes().first() =>
        {
            Some(t)
        }
        (Some(s), _) => Some(s),
        (None, t) => t,
    };
    let reply_code = reply_code_in(diagnostic);
    // The diagnostic is what the remote server said; where it has no recognisable words (or
    // none at all), the bounce's own text about this recipient is read too.
    let text = if classify::reason_from_text(diagnostic).is_some() || fallback_text.is_empty() {
        diagnostic.to_owned()
    } else {
        format!("{diagnostic} {fallback_text}")
    };
    // The diagnostic quotes the returned message's sender and not this recipient: the remote
    // refused the sender ("550 5.7.1 <sender>... Access denied"), whatever else it says.
    let lower = diagnostic.to_ascii_lowercase();
    let about_sender = !lower.contains(&email.to_ascii_lowercase())
        && around
            .senders
            .iter()
            .any(|s| !s.is_empty() && lower.contains(s.as_str()));
    let reason = classify::classify(&classify::Facts {
        about_sender,
        reporting_mta: around.reporting_mta,
        diagnostic: &text,
        status: status.as_deref(),
        reply_code,
        action: action.as_deref(),
        context: fallback_text,
        category,
    });
    let hard = reason.hard(classify::permanent(status.as_deref(), reply_code));
    let diagnostic = bounded_diagnostic(if diagnostic.is_empty() {
        fallback_text
    } else {
        diagnostic
    });
    Recipient {
        email,
        action,
        status,
        reply_code,
        reason,
        hard,
        diagnostic,
    }
}

fn bounded_diagnostic(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(text.chars().take(MAX_REPORTED_DIAGNOSTIC).collect())
}

fn dsn_report(g: &mime::Gathered, head: &str, returned: &[Vec<Field>]) -> Option<BounceReport> {
    let exclude = parties(&g.top, returned);
    let senders = parties(&[], returned);
    let reporter = reporting_mta(&g.dsn);
    let around = Around {
        senders: &senders,
        reporting_mta: reporter.as_deref(),
    };
    // DSN fields written into the text itself (a multipart body not marked as one, or an MTA
    // that prints them) count as a delivery-status part.
    let inline = g.dsn.is_empty() && g.prose.to_ascii_lowercase().contains("final-recipient:");
    let entries: Vec<DsnEntry> = if inline {
        dsn_entries(&g.prose)
    } else {
        g.dsn.iter().flat_map(|b| dsn_entries(b)).collect()
    };
    let mut recipients: Vec<Recipient> = Vec::new();
    let single = {
        let mut emails: Vec<String> = entries
            .iter()
            .filter_map(DsnEntry::email)
            .map(|e| e.to_ascii_lowercase())
            .collect();
        emails.sort();
        emails.dedup();
        emails.len() == 1
    };
    for e in entries {
        let Some(email) = e.email() else { continue };
        if recipients
            .iter()
            .any(|r| r.email.eq_ignore_ascii_case(&email))
        {
            continue;
        }
        let diagnostic = fields::unfold(e.diagnostic.as_deref().unwrap_or(""));
        let mut prose = text::recipients(
            head,
            &exclude,
            std::slice::from_ref(&email.to_ascii_lowercase()),
            &[],
        )
        .into_iter()
        .next()
        .map(|r| r.diagnostic)
        .unwrap_or_default();
        // A report about one recipient with no Diagnostic-Code: the whole notification is about
        // that recipient, including what it says before naming it ("The user(s) account is
        // disabled." above the transcript line).
        if single && diagnostic.trim().is_empty() {
            prose.clear();
            text::add_words(&mut prose, head);
        }
        recipients.push(recipient(
            email,
            e.action.clone(),
            e.status.as_deref().and_then(status_in),
            &diagnostic,
            &prose,
            e.category.as_deref(),
            around,
        ));
        if recipients.len() >= MAX_REPORT_RECIPIENTS {
            break;
        }
    }
    if recipients.is_empty() {
        return None;
    }
    Some(BounceReport {
        kind: BounceKind::Dsn,
        recipients,
        feedback_type: None,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    })
}

/// Subjects of complaints sent without a feedback-report part (lower case).
const COMPLAINT_SUBJECTS: &[&str] = &["complaint about message", "abuse report"];

/// A complaint that returns the message but has no `message/feedback-report` part.
fn is_complaint(g: &mime::Gathered) -> bool {
    let subject = get(&g.top, "subject").unwrap_or("").to_ascii_lowercase();
    g.has_returned_part && COMPLAINT_SUBJECTS.iter().any(|s| subject.contains(s))
}

/// Subjects of auto-replies (lower case, anywhere in the subject).
const AUTOREPLY_SUBJECTS: &[&str] = &[
    "auto:",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "auto response",
    "autoresponse",
    "out of office",
    "out of the office",
    "vacation",
    "away from",
    "away until",
    "on leave",
    "abwesenheit",
    "réponse automatique",
    "absence",
    "respuesta automática",
];

fn autoreply_report(g: &mime::Gathered) -> Option<BounceReport> {
    let top = &g.top;
    let auto_submitted = get(top, "auto-submitted")
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("auto-replied"));
    let header_marks = top.iter().any(|f| {
        matches!(
            f.name.as_str(),
            "x-autoreply"
                | "x-autorespond"
                | "x-autoresponder"
                | "x-autoreply-from"
                | "x-mail-autoreply"
                | "x-vacation"
        )
    }) || get(top, "precedence")
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("auto_reply"))
        || get(top, "x-auto-response-suppress").is_some();
    let subject = get(top, "subject").unwrap_or("").to_ascii_lowercase();
    let subject_marks = AUTOREPLY_SUBJECTS.iter().any(|s| subject.contains(s));
    let marked =
        auto_submitted || (header_marks && subject_marks) || subject_marks && !g.has_returned_part;
    if !marked || text::from_mail_system(top) || text::bounce_subject(top) {
        return None;
    }
    let from = get(top, "from").and_then(first_address)?;
    Some(BounceReport {
        kind: BounceKind::Autoreply,
        recipients: vec![Recipient {
            email: from,
            action: None,
            status: None,
            reply_code: None,
            reason: Reason::Vacation,
            hard: Reason::Vacation.hard(false),
            diagnostic: None,
        }],
        feedback_type: None,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    })
}

fn text_report(g: &mime::Gathered, head: &str, returned: &[Vec<Field>]) -> BounceReport {
    let named: Vec<String> = g
        .top
        .iter()
        .filter(|f| f.name == "x-failed-recipients")
        .flat_map(|f| find_addresses(&f.value, 64))
        .map(|a| a.address.to_ascii_lowercase())
        .collect();
    let addressees: Vec<String> = returned
        .iter()
        .flat_map(|b| b.iter().filter(|f| f.name == "to" || f.name == "cc"))
        .flat_map(|f| find_addresses(&f.value, 16))
        .map(|a| a.address.to_ascii_lowercase())
        .collect();
    let exclude = parties(&g.top, returned);
    let mut found = text::recipients(head, &exclude, &named, &addressees);
    if found.is_empty() {
        // A sender who wrote to themselves gets the bounce at the failed address: the
        // bounce's own addressee may be the recipient when the prose names nobody else.
        let senders: Vec<String> = parties(&[], returned)
            .into_iter()
            .chain(
                g.top
                    .iter()
                    .filter(|f| f.name == "from" || f.name == "sender")
                    .flat_map(|f| find_addresses(&f.value, 16))
                    .map(|a| a.address.to_ascii_lowercase()),
            )
            .collect();
        found = text::recipients(head, &senders, &named, &addressees);
    }
    if found.is_empty() {
        // Still nobody: an address standing alone on its line ("xxx@example.fr:" under "The
        // following address(es) failed:") is how the failure list names a recipient, even the
        // sender's own address (a sender who wrote to an alias of themselves).
        let listed = text::listed_alone(head);
        if !listed.is_empty() {
            found = text::recipients(head, &exclude, &listed, &addressees);
        }
    }
    if found.is_empty() {
        // Nothing named in the prose: the returned message's addressee, when there is one.
        let to: Vec<String> = returned
            .iter()
            .filter_map(|b| get(b, "to"))
            .flat_map(|v| find_addresses(v, 4))
            .map(|a| a.address)
            .collect();
        if to.len() == 1 {
            let mut diagnostic = String::new();
            text::add_words(&mut diagnostic, head);
            found.push(text::ProseRecipient {
                email: to[0].clone(),
                diagnostic,
            });
        }
    }
    let mut whole = String::new();
    text::add_words(&mut whole, head);
    let senders = parties(&[], returned);
    let recipients = found
        .into_iter()
        .take(MAX_REPORT_RECIPIENTS)
        .map(|r| {
            let around = Around {
                senders: &senders,
                reporting_mta: None,
            };
            recipient(r.email, None, None, &r.diagnostic, &whole, None, around)
        })
        .collect();
    BounceReport {
        kind: BounceKind::Dsn,
        recipients,
        feedback_type: None,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    }
}

/// Bounce mails received since `since` (RFC 3339), by what they were found to be (`kind`;
/// `unprocessed` for those not read yet), most first.
pub async fn received_since(
    store: &crate::store::Store,
    since: &str,
) -> Result<Vec<(String, u64)>, crate::store::StoreError> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT kind, COUNT(*) FROM bounce_messages WHERE received_at >= $1 GROUP BY kind",
    )
    .bind(since)
    .fetch_all(store.pool())
    .await
    .map_err(crate::store::StoreError::query("count bounce mails"))?;
    let mut counts: Vec<(String, u64)> = rows
        .into_iter()
        .map(|(kind, n)| {
            (
                kind.unwrap_or_else(|| "unprocessed".to_owned()),
                u64::try_from(n).unwrap_or(0),
            )
        })
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_text() {
        assert_eq!(status_in("smtp; 550 5.1.1 <a@b>"), Some("5.1.1".into()));
        assert_eq!(
            status_in("version 10.5.1.2 then 4.2.2."),
            Some("4.2.2".into())
        );
        assert_eq!(status_in("nothing 1.2.3"), None);
        assert_eq!(reply_code_in("host said: 550-5.1.1 x"), Some(550));
        assert_eq!(reply_code_in("port 25, 4500 bytes, 452 full"), Some(452));
        assert_eq!(reply_code_in("[192.0.2.550]"), None);
    }

    #[test]
    fn dsn_entries_split_per_recipient() {
        let body = "Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 unknown\nFinal-Recipient: rfc822; c@d.example\nAction: delayed\nStatus: 4.2.2\n";
        let e = dsn_entries(body);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].email().as_deref(), Some("a@b.example"));
        assert_eq!(e[0].diagnostic.as_deref(), Some("550 5.1.1 unknown"));
        assert_eq!(e[1].action.as_deref(), Some("delayed"));
    }

    /// A multipart/report bounce: `prose` as its text part, `dsn` as its delivery-status part,
    /// and a returned message sent by `sender`.
    fn report(prose: &str, dsn: &str, sender: &str) -> BounceReport {
        let mail = format!(
            "From: MAILER-DAEMON@mx.example\nTo: {sender}\nSubject: Undelivered Mail\n\
             MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; \
             boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n{prose}\n--b\n\
             Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n{dsn}\n\
             --b\nContent-Type: text/rfc822-headers\n\nReturn-Path: <{sender}>\nFrom: {sender}\n\
             To: a@b.example\nSubject: hi\n\n--b--\n"
        );
        parse(mail.as_bytes())
    }

    #[test]
    fn one_recipient_without_a_diagnostic_code_is_read_from_the_whole_notification() {
        let prose = "The user(s) account is disabled.\n\n<a@b.example>: 550 user unknown (in reply to RCPT TO command)";
        let one = report(
            prose,
            "Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.0.0",
            "s@c.example",
        );
        assert_eq!(one.recipients.len(), 1);
        assert_eq!(one.recipients[0].reason, Reason::Suspend);
        assert_eq!(one.recipients[0].hard, Some(false));
        // Its own Diagnostic-Code is what the remote said: the prose above it is not read.
        let coded = report(
            prose,
            "Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.0.0\n\
             Diagnostic-Code: smtp; 550 user unknown",
            "s@c.example",
        );
        assert_eq!(coded.recipients[0].reason, Reason::UserUnknown);
    }

    #[test]
    fn words_about_the_sender_are_no_verdict_on_the_recipient() {
        let dsn = |quoted: &str| {
            format!(
                "Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.0.0\n\
                 Diagnostic-Code: smtp; 5.1.0 - Unknown address error 550-'5.7.1 <{quoted}>... Access denied'"
            )
        };
        let sender = report("Undeliverable.", &dsn("s@c.example"), "s@c.example");
        assert_eq!(sender.recipients[0].reason, Reason::Rejected);
        assert_eq!(sender.recipients[0].hard, Some(false));
        let recipient = report("Undeliverable.", &dsn("a@b.example"), "s@c.example");
        assert_eq!(recipient.recipients[0].reason, Reason::UserUnknown);
        assert_eq!(recipient.recipients[0].hard, Some(true));
    }

    #[test]
    fn a_receipt_rule_bounce_is_a_filter() {
        let from = |reporter: &str| {
            let raw = format!(
                "From: postmaster@b.example\nTo: s@c.example\n\
                 Subject: Delivery Status Notification (Failure)\nMIME-Version: 1.0\n\
                 Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
                 --b\nContent-Type: text/plain\n\nThis message could not be delivered.\n--b\n\
                 Content-Type: message/delivery-status\n\nReporting-MTA: dns; {reporter}\n\n\
                 Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.1.1\n\
                 Diagnostic-Code: smtp; 550 5.1.1 Mailbox does not exist\n--b--\n"
            );
            let r = parse(raw.as_bytes());
            (r.recipients[0].reason, r.recipients[0].hard)
        };
        assert_eq!(
            from("inbound-smtp.us-west-2.amazonaws.com"),
            (Reason::Filtered, Some(false))
        );
        assert_eq!(from("mx.b.example"), (Reason::UserUnknown, Some(true)));
        assert_eq!(
            from("inbound-smtp.b.example"),
            (Reason::UserUnknown, Some(true))
        );
    }

    #[test]
    fn the_failure_list_names_a_recipient_who_is_also_the_sender() {
        let mail = "From: Mail Delivery System <mailer-daemon@mx.example>\nTo: me@c.example\n\
                    Subject: Mail delivery failed: returning message to sender\n\n\
                    A message that you sent could not be delivered to one or more of\n\
                    its recipients. This is a permanent error. The following address(es)\n\
                    failed:\n\nme@c.example:\nSMTP error from remote server for TEXT command, host: \
                    mx.c.example reason: 550 5.2.0 Mail rejected\n\n\
                    --- The header of the original message is following. ---\n\n\
                    Received: from x by y\nFrom: <me@c.example>\nTo: alias@d.example\nSubject: x\n";
        let r = parse(mail.as_bytes());
        let emails: Vec<&str> = r.recipients.iter().map(|r| r.email.as_str()).collect();
        assert_eq!(emails, ["me@c.example"]);
        assert_eq!(r.recipients[0].status.as_deref(), Some("5.2.0"));
    }

    #[test]
    fn a_bounce_of_a_bounce_reports_only_its_own_recipients() {
        let inner = "From: MAILER-DAEMON@mx.example\nTo: a@b.example\nSubject: Returned mail\n\
                     MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"i\"\n\n\
                     --i\nContent-Type: text/plain\n\nfailed\n--i\nContent-Type: message/delivery-status\n\n\
                     Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; other@d.example\nAction: failed\n\
                     Status: 5.3.5\nDiagnostic-Code: smtp; 553 5.3.5 system config error\n--i--\n";
        let outer = format!(
            "From: MAILER-DAEMON@mx2.example\nTo: postmaster@mx.example\nSubject: Returned mail\n\
             MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"o\"\n\n\
             --o\nContent-Type: text/plain\n\nfailed\n--o\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; mx2.example\n\nFinal-Recipient: rfc822; a@b.example\nAction: failed\n\
             Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\n--o\n\
             Content-Type: message/rfc822\n\n{inner}--o--\n"
        );
        let r = parse(outer.as_bytes());
        let emails: Vec<&str> = r.recipients.iter().map(|r| r.email.as_str()).collect();
        assert_eq!(emails, ["a@b.example"]);
        // A report forwarded inside a message, with none outside, still counts.
        let forwarded = format!(
            "From: someone@mx2.example\nTo: postmaster@mx.example\nSubject: Fwd: Returned mail\n\
             MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"o\"\n\n\
             --o\nContent-Type: text/plain\n\nsee below\n--o\nContent-Type: message/rfc822\n\n{inner}--o--\n"
        );
        let r = parse(forwarded.as_bytes());
        let emails: Vec<&str> = r.recipients.iter().map(|r| r.email.as_str()).collect();
        assert_eq!(emails, ["other@d.example"]);
    }

    #[test]
    fn no_headers_is_not_a_bounce() {
        let r = parse(b"");
        assert_eq!(r.kind, BounceKind::NotBounce);
        assert!(r.not_bounce_reason.is_some());
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    /// Inputs built to cost: deep multipart nesting, a million tiny parts, one endless line,
    /// nested returned messages. Each is answered, bounded, and quickly.
    #[test]
    fn costly_shapes_are_answered_within_bounds() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let mut nested = String::from("From: MAILER-DAEMON@x.example\nSubject: Undelivered\n");
        for i in 0..5000 {
            nested.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        inputs.push(nested.into_bytes());
        let mut parts =
            String::from("From: x@y.example\nContent-Type: multipart/mixed; boundary=z\n\n");
        parts.push_str(&"--z\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b.example\n\n".repeat(20_000));
        inputs.push(parts.into_bytes());
        let mut line = b"From: MAILER-DAEMON@x.example\n\n".to_vec();
        line.extend(std::iter::repeat_n(b'a', 3 << 20));
        inputs.push(line);
        let rfc822 = "Content-Type: message/rfc822\n\n".repeat(50_000);
        inputs.push(format!("Subject: x\n{rfc822}").into_bytes());
        for input in inputs {
            let started = std::time::Instant::now();
            let report = parse(&input);
            assert!(report.recipients.len() <= MAX_REPORT_RECIPIENTS);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }
    }
}
