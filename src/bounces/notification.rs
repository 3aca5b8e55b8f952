//! Bounce notifications sent as JSON in a mail body (Amazon SES, directly or inside an SNS
//! envelope whose `Message` is the notification as a string): `notificationType` Bounce,
//! Delivery or Complaint, with the recipients and the remote server's words.

use serde_json::Value;

use super::report::{BounceKind, BounceReport, Reason, Recipient};

/// Recipients read from one notification, at most.
const MAX: usize = 256;

/// The report a JSON notification in `prose` gives, if there is one. A notification whose long
/// lines a mail system broke (sendmail's line limit wraps an overlong line with `!`, a line
/// break and a space; others with the line break and space alone) is read unwrapped.
pub fn report(prose: &str) -> Option<BounceReport> {
    read(prose).or_else(|| {
        prose
            .contains("\n ")
            .then(|| read(&prose.replace("!\n ", "").replace("\n ", "")))?
    })
}

fn read(prose: &str) -> Option<BounceReport> {
    // The name is quoted, or escaped inside an SNS envelope's `Message` string: the object is
    // the nearest `{` before it, or the envelope's, the first.
    let at = prose.find("notificationType")?;
    let nearest = prose[..at].rfind('{')?;
    let first = prose[..at].find('{')?;
    // serde_json bounds its own nesting (128 levels), so hostile JSON cannot overflow the stack.
    let parse = |start: usize| -> Option<Value> {
        serde_json::Deserializer::from_str(&prose[start..])
            .into_iter::<Value>()
            .next()?
            .ok()
    };
    let mut value = parse(nearest)
        .filter(|v| v.get("notificationType").is_some())
        .or_else(|| parse(first))?;
    if let Some(inner) = value.get("Message").and_then(Value::as_str) {
        value = serde_json::from_str(inner).ok()?;
    }
    let kind = value
        .get("notificationType")?
        .as_str()?
        .to_ascii_lowercase();
    let list = |outer: &str, inner: &str| -> Vec<Value> {
        value
            .get(outer)
            .and_then(|o| o.get(inner))
            .and_then(Value::as_array)
            .map(|a| a.iter().take(MAX).cloned().collect())
            .unwrap_or_default()
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut report = BounceReport {
        kind: BounceKind::Dsn,
        recipients: Vec::new(),
        feedback_type: None,
        original_message_id: None,
        verp: None,
        unsubscribe: None,
        not_bounce_reason: None,
    };
    match kind.as_str() {
        "bounce" => {
            for r in list("bounce", "bouncedRecipients") {
                let Some(email) = text(&r, "emailAddress") else {
                    continue;
                };
                let diagnostic = text(&r, "diagnosticCode").unwrap_or_default();
                report.recipients.push(super::recipient(
                    email,
                    text(&r, "action"),
                    text(&r, "status"),
                    &diagnostic,
                    "",
                    None,
                    super::Around::default(),
                ));
            }
        }
        "delivery" => {
            let smtp = value
                .get("delivery")
                .and_then(|d| d.get("smtpResponse"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            for r in list("delivery", "recipients") {
                let Some(email) = r.as_str() else { continue };
                report.recipients.push(super::recipient(
                    email.to_owned(),
                    Some("delivered".into()),
                    None,
                    &smtp,
                    "",
                    None,
                    super::Around::default(),
                ));
            }
        }
        "complaint" => {
            report.kind = BounceKind::Arf;
            report.feedback_type = Some(
                value
                    .get("complaint")
                    .and_then(|c| c.get("complaintFeedbackType"))
                    .and_then(Value::as_str)
                    .unwrap_or("abuse")
                    .to_ascii_lowercase(),
            );
            for r in list("complaint", "complainedRecipients") {
                let Some(email) = text(&r, "emailAddress") else {
                    continue;
                };
                report.recipients.push(Recipient {
                    email,
                    action: None,
                    status: None,
                    reply_code: None,
                    reason: Reason::Feedback,
                    hard: Reason::Feedback.hard(false),
                    diagnostic: None,
                });
            }
        }
        _ => return None,
    }
    (!report.recipients.is_empty()).then_some(report)
}
