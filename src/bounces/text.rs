//! Bounce texts without a DSN part (qmail, Exim, Postfix and Sendmail texts, Exchange, hosted
//! mailbox providers…): what makes a message a bounce, where its prose ends and the returned
//! message begins, and which addresses in the prose are the failed recipients with the words
//! about each.
//!
//! The shapes are common to the MTAs, not one per MTA: a recipient is an address in the prose
//! that is none of the parties of the exchange (the bounce's sender and addressee, the returned
//! message's sender, the mail system's own mailboxes); its diagnostic is the prose from where it
//! is first named to where the next recipient is, plus any later line naming it (a transcript).

use super::fields::{Field, field_blocks, find_addresses, get};

/// Addresses taken from prose, at most.
const MAX_RECIPIENTS: usize = 64;
/// Bytes of one recipient's diagnostic.
pub const MAX_DIAGNOSTIC: usize = 2048;

/// Words in a sender's local part that mark the mail system itself.
const SYSTEM_SENDERS: &[&str] = &[
    "mailer-daemon",
    "mailer_daemon",
    "post_master",
    "maildaemon",
    "mail-daemon",
    "postmaster",
    "mail delivery",
    "mail administrator",
    "mail.delivery",
    "bounce",
    "daemon@",
    "nobody@",
    "auto-notify",
    "deliverystatus",
    "notification",
    "root@",
    "smtp gateway",
    "mailadmin",
];

/// Subjects of bounces.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "delivery status",
    "delivery failure",
    "delivery failed",
    "delivery notification",
    "delivery problem",
    "failure notice",
    "failure delivery",
    "returned mail",
    "returned to sender",
    "mail delivery",
    "could not send message",
    "nondeliverable",
    "non-deliverable",
    "non deliverable",
    "not delivered",
    "couldn't be delivered",
    "could not be delivered",
    "delivery has failed",
    "mail system error",
    "message delivery",
    "rejected",
    "error sending",
    "mail failure",
    "permanent error",
    "permanent failure",
    "warning: message",
    "unable to deliver",
    "mail could not",
    "nicht zustellbar",
    "unzustellbar",
    "non remis",
    "undeliverable",
    "bounce",
    "delayed mail",
    "delivery delay",
    "delivery final",
    "message you sent",
    "message not delivered",
    "mensaje no entregado",
    "no se puede entregar",
    "dsn",
];

/// Phrases of bounce prose (lower case).
const BOUNCE_PHRASES: &[&str] = &[
    "could not be delivered",
    "couldn't be delivered",
    "delivery to the following recipient",
    "delivery has failed",
    "permanent fatal errors",
    "this is a permanent error",
    "permanent error",
    "i'm sorry to have to inform you",
    "i'm afraid i wasn't able to deliver",
    "unable to deliver",
    "message was not delivered",
    "was not delivered",
    "undeliverable",
    "delivery failed",
    "failed permanently",
    "the following addresses had",
    "smtp error from remote",
    "remote host said",
    "does not like recipient",
    "returned to sender",
    "mail delivery failed",
    "could not deliver",
    "delivery status notification",
    "delivery to the following recipients failed",
    "your message did not reach",
    "your message couldn't be delivered",
    "your message wasn't delivered",
    "message you sent",
    "failed recipient",
    "user unknown",
    "not be delivered",
];

/// Lines (lower case, trimmed) where the returned message starts in a bounce without MIME parts.
const RETURNED_MARKERS: &[&str] = &[
    "original message follows",
    "this is a copy of the message",
    "below this line is a copy of the message",
    "--- original message",
    "----- original message",
    "original message headers",
    "unsent message follows",
    "returned message follows",
    "header of the original message",
    "headers of the original message",
    "the original message headers",
    "original message header",
    "message headers follow",
    "the header and top",
    "header of original message",
    "--- the header of the original message",
    "returned mail follows",
    "content-type: message/rfc822",
    "content-type: text/rfc822-headers",
    "------- returned message",
    "original message:",
    "include the original message",
    "a copy of the original message",
];

/// Header names that begin a returned message's header block in prose.
const RETURNED_HEADER_STARTS: &[&str] = &[
    "received:",
    "return-path:",
    "dkim-signature:",
    "x-original-to:",
    "delivered-to:",
    "arc-seal:",
];

/// Whether a message looks like a bounce by its headers or prose.
pub fn looks_like_bounce(top: &[Field], prose: &str) -> bool {
    let from = get(top, "from").unwrap_or("").to_ascii_lowercase();
    let subject = get(top, "subject").unwrap_or("").to_ascii_lowercase();
    if get(top, "x-failed-recipients").is_some() {
        return true;
    }
    if SYSTEM_SENDERS.iter().any(|s| from.contains(s)) {
        return true;
    }
    if BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s)) {
        return true;
    }
    let head = prose_head(prose).to_ascii_lowercase();
    BOUNCE_PHRASES.iter().filter(|p| head.contains(*p)).count() >= 1
        && (from.contains("daemon") || from.contains("postmaster") || !subject.is_empty())
}

/// Whether the bounce's sender is the mail system (a bounce by its sender alone).
pub fn from_mail_system(top: &[Field]) -> bool {
    let from = get(top, "from").unwrap_or("").to_ascii_lowercase();
    SYSTEM_SENDERS.iter().any(|s| from.contains(s))
}

/// Whether the subject says it is a bounce.
pub fn bounce_subject(top: &[Field]) -> bool {
    let subject = get(top, "subject").unwrap_or("").to_ascii_lowercase();
    BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
}

/// The prose before the returned message, and the returned part (if it starts in the prose).
pub fn split_prose(prose: &str) -> (&str, &str) {
    let mut offset = 0;
    for (n, line) in prose.split_inclusive('\n').enumerate() {
        let lower = line.trim().to_ascii_lowercase();
        let marker = RETURNED_MARKERS.iter().any(|m| lower.contains(m));
        let header = n > 0
            && RETURNED_HEADER_STARTS
                .iter()
                .any(|h| line.to_ascii_lowercase().starts_with(h));
        if (marker || header) && offset > 0 {
            return (&prose[..offset], &prose[offset..]);
        }
        offset += line.len();
    }
    (prose, "")
}

fn prose_head(prose: &str) -> &str {
    split_prose(prose).0
}

/// The header block of a returned message in `rest` (prose after the marker), if any.
pub fn returned_headers(rest: &str) -> Option<Vec<Field>> {
    // Skip the marker line(s) until something shaped like a header appears.
    let mut offset = 0;
    for line in rest.split_inclusive('\n').take(40) {
        let lower = line.to_ascii_lowercase();
        if RETURNED_HEADER_STARTS.iter().any(|h| lower.starts_with(h))
            || ["from:", "to:", "subject:", "message-id:", "date:"]
                .iter()
                .any(|h| lower.starts_with(h))
        {
            return field_blocks(&rest[offset..], 1)
                .into_iter()
                .next()
                .filter(|b| b.len() >= 2);
        }
        offset += line.len();
    }
    None
}

/// A recipient named in prose and the words about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProseRecipient {
    pub email: String,
    pub diagnostic: String,
}

/// Lower-cased local parts of the mail system's own mailboxes.
fn is_system_mailbox(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or("").to_ascii_lowercase();
    matches!(
        local.as_str(),
        "postmaster" | "mailer-daemon" | "mailer_daemon" | "mail-daemon" | "abuse" | "hostmaster"
    )
}

/// The failed recipients in `head` (the prose before the returned message): addresses that are
/// not in `exclude` (lower case) nor the mail system's own, unless the returned message was
/// addressed to them (`addressees`: a postmaster can bounce too, and so can a sender's own
/// address). `named` are recipients known from
/// a header (X-Failed-Recipients): then only their diagnostics are looked for.
pub fn recipients(
    head: &str,
    exclude: &[String],
    named: &[String],
    addressees: &[String],
) -> Vec<ProseRecipient> {
    let found = find_addresses(head, 4 * MAX_RECIPIENTS);
    // (address lower-cased, first position)
    let mut firsts: Vec<(String, usize)> = Vec::new();
    // An address on a header-shaped line of the prose ("To: …" in Exchange's "Your message
    // To: … did not reach the following recipient(s)") quotes the returned message: read only
    // where the prose names no other address.
    let quoted = |f: &super::fields::Found| {
        let line_start = head[..f.start].rfind('\n').map_or(0, |p| p + 1);
        let line = head[line_start..f.start].trim_start().to_ascii_lowercase();
        ["to:", "cc:"].iter().any(|h| line.starts_with(h))
    };
    let unquoted = found.iter().filter(|f| !quoted(f)).count();
    for f in found.iter().filter(|f| unquoted == 0 || !quoted(f)) {
        let lower = f.address.to_ascii_lowercase();
        // Every candidate bounds the words of the one before it; only the named ones (when a
        // header names them) are reported.
        // "(expanded from <alias>)", "(generated from alias)": the alias is not a recipient.
        let before = head[..f.start].to_ascii_lowercase();
        let before = before.trim_end_matches(['<', ' ', ':']);
        // "MAIL FROM:<…>" in a transcript (or its continuation line "FROM:<…>"), "(expanded
        // from <alias>)", "(generated from alias)": the envelope sender and aliases are no
        // recipients.
        let line_start = head[..f.start].rfind('\n').map_or(0, |p| p + 1);
        let line_before = head[line_start..f.start].to_ascii_lowercase();
        let alias = before.ends_with("from")
            || line_before.contains("mail from:")
            || line_before.trim_start().starts_with("from:");
        if alias && !named.contains(&lower) {
            continue;
        }
        let keep = named.contains(&lower)
            || addressees.contains(&lower)
            || (!exclude.contains(&lower)
                && !is_system_mailbox(&lower)
                && !looks_like_message_id(head, f));
        if keep && !firsts.iter().any(|(a, _)| *a == lower) && firsts.len() < MAX_RECIPIENTS {
            firsts.push((lower, f.start));
        }
    }
    let mut out: Vec<ProseRecipient> = Vec::new();
    for (i, (address, start)) in firsts.iter().enumerate() {
        if !named.is_empty() && !named.contains(address) {
            continue;
        }
        // The words about it end where another recipient is named (first or again: a bounce
        // may list its recipients twice, in two languages).
        let end = found
            .iter()
            .filter(|f| f.start > *start && !f.address.eq_ignore_ascii_case(address))
            .filter(|f| {
                let lower = f.address.to_ascii_lowercase();
                firsts.iter().any(|(a, _)| *a == lower)
            })
            .map(|f| f.start)
            .next()
            .unwrap_or(head.len())
            .min(firsts.get(i + 1).map_or(head.len(), |(_, s)| *s));
        let line_start = head[..*start].rfind('\n').map_or(0, |p| p + 1);
        let mut diagnostic = String::new();
        add_words(&mut diagnostic, &head[line_start..end]);
        // Later lines that name it again (a session transcript), with the line after each.
        for f in found.iter().filter(|f| f.start >= end) {
            if f.address.eq_ignore_ascii_case(address) {
                let ls = head[..f.start].rfind('\n').map_or(0, |p| p + 1);
                let le = head[f.end..]
                    .find('\n')
                    .map(|p| f.end + p + 1)
                    .and_then(|p| head[p..].find('\n').map(|q| p + q))
                    .unwrap_or(head.len());
                add_words(&mut diagnostic, &head[ls..le]);
            }
        }
        let email = found
            .iter()
            .find(|f| f.address.eq_ignore_ascii_case(address))
            .map_or_else(|| address.clone(), |f| f.address.clone());
        out.push(ProseRecipient { email, diagnostic });
    }
    // Recipients named by a header but not in the prose still count.
    for n in named {
        if !out.iter().any(|r| r.email.eq_ignore_ascii_case(n)) {
            out.push(ProseRecipient {
                email: n.clone(),
                diagnostic: String::new(),
            });
        }
    }
    out
}

/// Addresses (lower case) that stand alone on a line of `head`: `a@b`, `<a@b>`, `a@b:`, the
/// way failure lists name their recipients. Not the mail system's own mailboxes.
pub fn listed_alone(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in head.lines() {
        let bare = line
            .trim()
            .trim_end_matches(':')
            .trim_start_matches('<')
            .trim_end_matches('>');
        if bare.is_empty() || bare.contains(char::is_whitespace) {
            continue;
        }
        let found = find_addresses(bare, 2);
        if let [only] = found.as_slice()
            && only.address.len() == bare.len()
        {
            let lower = only.address.to_ascii_lowercase();
            if !is_system_mailbox(&lower) && !out.contains(&lower) && out.len() < MAX_RECIPIENTS {
                out.push(lower);
            }
        }
    }
    out
}

/// An address that is the right side of `<…>` in a Message-ID line is no recipient.
fn looks_like_message_id(text: &str, f: &super::fields::Found) -> bool {
    let line_start = text[..f.start].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..f.start].to_ascii_lowercase();
    line.contains("message-id")
        || line.contains("message id")
        || line.contains("in-reply-to")
        || line.contains("references:")
}

/// Appends the words of `text` (white space collapsed) to `out`, bounded.
pub fn add_words(out: &mut String, text: &str) {
    for word in text.split_whitespace() {
        if out.len() + word.len() + 1 > MAX_DIAGNOSTIC {
            return;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_returned_message_is_cut_off() {
        let prose = "Hi. This is the qmail-send program.\n<a@b.example>:\nSorry.\n--- Below this line is a copy of the message.\n\nReturn-Path: <s@c.example>\nTo: a@b.example\nFrom: s@c.example\n\nbody";
        let (head, rest) = split_prose(prose);
        assert!(head.contains("Sorry."));
        assert!(!head.contains("Return-Path"));
        let headers = returned_headers(rest).unwrap();
        assert_eq!(get(&headers, "from"), Some("s@c.example"));
    }

    #[test]
    fn addresses_alone_on_their_line_are_listed() {
        let head = "The following address(es) failed:\n\n  me@c.example:\n<b@d.example>\npostmaster@mx.example\nwrite to x@y.example for help\nme@c.example\n";
        assert_eq!(listed_alone(head), ["me@c.example", "b@d.example"]);
    }

    #[test]
    fn recipients_exclude_the_parties_and_take_their_words() {
        let head = "From postmaster@mx.example:\n<a@b.example>: host said: 550 unknown user\n<c@d.example>: mailbox full\nsender was s@c.example\nRCPT TO:<a@b.example>\n<<< 550 5.1.1 no such user\n";
        let r = recipients(head, &["s@c.example".into()], &[], &[]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].email, "a@b.example");
        assert!(r[0].diagnostic.contains("unknown user"));
        assert!(r[0].diagnostic.contains("no such user"));
        assert!(r[1].diagnostic.contains("mailbox full"));
        let named = recipients(head, &[], &["c@d.example".into()], &[]);
        assert_eq!(named.len(), 1);
    }
}
