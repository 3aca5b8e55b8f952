//! A transactional message as the web application hands it over ([`NewMessage`]), checked field
//! by field ([`InputError`] names the field) and rendered once into the bytes every attempt sends:
//! From from the config, a Message-ID on the sending domain, Date, MIME text (+ HTML alternative),
//! non-ASCII headers encoded by lettre.

use std::collections::BTreeMap;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use serde::Deserialize;

use crate::config::RelayConfig;
use crate::domain::Email;

/// The kinds of transactional mail; `password` may be allowed through suppression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Registration,
    Password,
    Notification,
    /// mailbridge's own quota alerts to `[alerts] to` (`relay::alerts`): no caller can ask for
    /// it ([`Category::parse`] does not know it), no member can opt out of it, and suppression
    /// does not hold it (the operator configured the address).
    Alert,
}

impl Category {
    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "registration" => Some(Category::Registration),
            "password" => Some(Category::Password),
            "notification" => Some(Category::Notification),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Registration => "registration",
            Category::Password => "password",
            Category::Notification => "notification",
            Category::Alert => "alert",
        }
    }

    /// Whether a member may opt out of this category (one-click unsubscribe, RFC 8058): the
    /// one place that decides it. Notifications, yes; the mail a member asked for by acting
    /// (registration acknowledgement, password reset), never.
    pub fn member_can_opt_out(self) -> bool {
        match self {
            Category::Notification => true,
            // Alerts go to the operator's own address, not to a member.
            Category::Registration | Category::Password | Category::Alert => false,
        }
    }
}

/// The request body of `POST /v1/messages` (and what `mailbridge send` builds).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub to: String,
    pub subject: String,
    pub text: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Required over HTTP (`registration`, `password` or `notification`); `mailbridge send`
    /// defaults it to `notification`.
    pub category: String,
}

/// A refused request: which field, and why. Nothing is queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

fn input(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        message: message.into(),
    }
}

/// Headers the relay sets itself; a caller may not override them.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "sender",
    "return-path",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    // One-click unsubscribe (RFC 8058): only the relay's own, signed tokens.
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// A message that passed every check, ready to render.
#[derive(Debug, Clone)]
pub struct Checked {
    pub to: Email,
    pub category: Category,
    to_mailbox: Mailbox,
    subject: String,
    text: String,
    html: Option<String>,
    reply_to: Option<Mailbox>,
    headers: Vec<(HeaderName, String)>,
}

/// Text that goes into a header: no line breaks (CR, LF: header injection) and no other control
/// characters, which lettre would write out raw and some mail software reads as line ends.
fn header_text(field: &str, value: &str) -> Result<(), InputError> {
    if value.contains(['\r', '\n']) {
        return Err(input(
            field,
            "must not contain line breaks (CR or LF): header injection",
        ));
    }
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(input(
            field,
            "must not contain control characters (other than tab)",
        ));
    }
    Ok(())
}

/// The longest header line lettre writes for `name: value`. It folds only before a space, so
/// each word stays on one line with the spaces before it (the first one after `Name: `).
fn longest_header_line(name: &str, value: &str) -> usize {
    let mut longest = 0;
    let mut line = name.len() + 2;
    let mut in_word = false;
    for b in value.bytes() {
        if b == b' ' && in_word {
            longest = longest.max(line);
            line = 0;
            in_word = false;
        }
        in_word |= b != b' ';
        line += 1;
    }
    longest.max(line)
}

/// RFC 5322 allows 998 bytes on a line; a longer one is cut or refused on the way.
fn fits_on_a_line(field: &str, name: &str, value: &str) -> Result<(), InputError> {
    if longest_header_line(name, value) > 998 {
        return Err(input(
            field,
            "has a run without spaces too long for one header line (998 bytes with the name)",
        ));
    }
    Ok(())
}

/// Every line end as `\n` (lettre sends each as CRLF): a bare CR would otherwise reach the wire,
/// where SMTP allows CR only before LF.
fn line_ends(body: &str) -> String {
    body.replace("\r\n", "\n").replace('\r', "\n")
}

/// Checks every field; the first problem is returned, naming its field.
pub fn check(msg: &NewMessage, config: &RelayConfig) -> Result<Checked, InputError> {
    check_as(msg, config, None)
}

/// [`check`] for a message mailbridge writes itself, in a category no caller may ask for.
pub(crate) fn check_internal(
    msg: &NewMessage,
    config: &RelayConfig,
    category: Category,
) -> Result<Checked, InputError> {
    check_as(msg, config, Some(category))
}

fn check_as(
    msg: &NewMessage,
    config: &RelayConfig,
    internal: Option<Category>,
) -> Result<Checked, InputError> {
    let to = Email::parse(&msg.to).map_err(|e| input("to", e.to_string()))?;
    let to_mailbox: Mailbox = to
        .original()
        .parse()
        .map_err(|e| input("to", format!("not a usable address: {e}")))?;
    header_text("subject", &msg.subject)?;
    if msg.subject.trim().is_empty() {
        return Err(input("subject", "must not be empty"));
    }
    if msg.subject.len() > 998 {
        return Err(input("subject", "longer than 998 bytes"));
    }
    fits_on_a_line("subject", "Subject", &msg.subject)?;
    let limit = config.max_message_bytes;
    if msg.text.len() as u64 > limit {
        return Err(input(
            "text",
            format!(
                "{} bytes is over the limit of {limit} ([relay] max_message_bytes)",
                msg.text.len()
            ),
        ));
    }
    if let Some(html) = &msg.html
        && html.len() as u64 > limit
    {
        return Err(input(
            "html",
            format!(
                "{} bytes is over the limit of {limit} ([relay] max_message_bytes)",
                html.len()
            ),
        ));
    }
    if msg.text.contains('\0') {
        return Err(input("text", "must not contain NUL characters"));
    }
    if msg.html.as_ref().is_some_and(|h| h.contains('\0')) {
        return Err(input("html", "must not contain NUL characters"));
    }
    let category = internal.map_or_else(|| Category::parse(&msg.category), Some).ok_or_else(|| {
        input(
            "category",
            format!(
                "unknown category `{}`: expected \"registration\", \"password\" or \"notification\"",
                msg.category
            ),
        )
    })?;
    let reply_to = match &msg.reply_to {
        None => None,
        Some(r) => {
            header_text("reply_to", r)?;
            let email = Email::parse(r).map_err(|e| input("reply_to", e.to_string()))?;
            Some(
                email
                    .original()
                    .parse::<Mailbox>()
                    .map_err(|e| input("reply_to", format!("not a usable address: {e}")))?,
            )
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &msg.headers {
        let field = format!("headers.{name}");
        header_text(&field, name)?;
        header_text(&field, value)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(input(
                field,
                "a header name is printable ASCII without spaces or `:`",
            ));
        }
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(input(
                field,
                "this header is set by the relay (use the request's own fields)",
            ));
        }
        if value.len() > 998 {
            return Err(input(field, "longer than 998 bytes"));
        }
        fits_on_a_line(&field, name, value)?;
        let header = HeaderName::new_from_ascii(name.clone())
            .map_err(|_| input(format!("headers.{name}"), "not a valid header name"))?;
        headers.push((header, value.clone()));
    }
    Ok(Checked {
        to,
        category,
        to_mailbox,
        subject: msg.subject.clone(),
        text: line_ends(&msg.text),
        html: msg.html.as_deref().map(line_ends),
        reply_to,
        headers,
    })
}

/// Why a checked message could not be rendered (a bad `[relay] from`, which config loading
/// already refuses; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("cannot render the message: {0}")]
pub struct RenderError(String);

impl RenderError {
    pub(crate) fn from_text(text: String) -> RenderError {
        RenderError(text)
    }
}

/// The domain Message-IDs are made on: the From address's domain.
pub fn sending_domain(config: &RelayConfig) -> Result<String, RenderError> {
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|e| RenderError(format!("[relay] from: {e}")))?;
    Ok(from.email.domain().to_owned())
}

/// Renders the message with Message-ID `<{id}@{domain}>`; returns the bytes and the Message-ID.
pub fn render(
    msg: &Checked,
    id: &str,
    config: &RelayConfig,
) -> Result<(Vec<u8>, String), RenderError> {
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|e| RenderError(format!("[relay] from: {e}")))?;
    let message_id = format!("<{id}@{}>", from.email.domain());
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(msg.to_mailbox.clone())
        .subject(msg.subject.clone())
        .date_now()
        .message_id(Some(message_id.clone()));
    if let Some(r) = &msg.reply_to {
        builder = builder.reply_to(r.clone());
    }
    for (name, value) in &msg.headers {
        builder = builder.raw_header(HeaderValue::new(name.clone(), value.clone()));
    }
    // Added here and nowhere else, so that signing after rendering covers them.
    if let Some((links, post)) = super::unsubscribe::headers(config, id, &msg.to, msg.category) {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            links,
        ));
        if let Some(post) = post {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                post.to_owned(),
            ));
        }
    }
    let message = match &msg.html {
        None => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(msg.text.clone()),
        ),
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            msg.text.clone(),
            html.clone(),
        )),
    }
    .map_err(|e| RenderError(e.to_string()))?;
    Ok((message.formatted(), message_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayConfig {
        let text = r#"
[members]
url = "sqlite://m.db"
mapping = "m.toml"
[relay]
from = "Riverside Rowing Club <club@club.example>"
routes = ["sendmail"]
max_message_bytes = 100
"#;
        crate::config::Config::from_str_with_env(std::path::Path::new("t.toml"), text, &|_| None)
            .unwrap()
            .relay
            .unwrap()
    }

    fn msg() -> NewMessage {
        NewMessage {
            to: "Ana@Example.org".into(),
            subject: "Willkommen, Zoë — bitte bestätigen".into(),
            text: "Hallo Zoë,\nbitte bestätigen.".into(),
            html: Some("<p>Hallo Zoë</p>".into()),
            reply_to: Some("help@club.example".into()),
            headers: BTreeMap::from([("X-Club-Ref".into(), "reg-42 ünïcode".into())]),
            category: "registration".into(),
        }
    }

    #[test]
    fn renders_headers_mime_and_message_id() {
        let cfg = config();
        let checked = check(&msg(), &cfg).unwrap();
        assert_eq!(checked.to.as_str(), "ana@example.org");
        let (raw, mid) = render(&checked, "abc123", &cfg).unwrap();
        assert_eq!(mid, "<abc123@club.example>");
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains("Message-ID: <abc123@club.example>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("From: \"Riverside Rowing Club\" <club@club.example>")
                || text.contains("From: Riverside Rowing Club <club@club.example>"),
            "{text}"
        );
        assert!(text.contains("To: Ana@Example.org\r\n"), "{text}");
        assert!(text.contains("Reply-To: help@club.example\r\n"), "{text}");
        assert!(text.contains("Date: "), "{text}");
        assert!(
            text.contains("Subject: Willkommen, =?utf-8?b?"),
            "non-ASCII subject is encoded: {text}"
        );
        assert!(text.contains("X-Club-Ref: reg-42 =?utf-8?b?"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(
            text.contains("text/plain") && text.contains("text/html"),
            "{text}"
        );
        assert!(
            text.is_ascii(),
            "every byte on the wire is ASCII after encoding"
        );
    }

    #[test]
    fn long_header_values_fold_at_spaces_and_bare_crs_end_lines() {
        let mut cfg = config();
        cfg.max_message_bytes = 10_000;
        let mut m = msg();
        m.subject = "word ".repeat(190);
        m.headers = BTreeMap::from([("X-Long".into(), format!("{} tail", "y".repeat(980)))]);
        m.text = "one\rtwo\r\nthree\n".into();
        m.html = None;
        let (raw, _) = render(&check(&m, &cfg).unwrap(), "x2", &cfg).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 998), "{text}");
        assert!(text.contains("X-Long: yyy"), "{text}");
        assert!(
            text.ends_with("\r\n\r\none\r\ntwo\r\nthree\r\n\r\n"),
            "a bare CR is a line end: {text}"
        );
    }

    #[test]
    fn one_click_unsubscribe_headers_only_for_notifications() {
        let mut cfg = config();
        cfg.unsubscribe_secret = Some("unsub-key".to_owned().into());
        cfg.unsubscribe_base = Some("https://mail.club.example".into());
        cfg.bounce_domain = Some("bounces.club.example".into());
        let mut m = msg();
        m.category = "notification".into();
        let checked = check(&m, &cfg).unwrap();
        let (raw, _) = render(&checked, "n1", &cfg).unwrap();
        // lettre folds the long value between the two links; unfolded, it reads as one line.
        let text = String::from_utf8(raw).unwrap().replace("\r\n ", " ");
        let token =
            super::super::unsubscribe::token(b"unsub-key", &checked.to, Category::Notification)
                .unwrap();
        let mail = super::super::unsubscribe::mail_token(b"unsub-key", "n1");
        let expected = format!(
            "List-Unsubscribe: <https://mail.club.example/u/{token}>, <mailto:unsubscribe+{mail}@bounces.club.example>\r\n"
        );
        assert!(text.contains(&expected), "{text}");
        assert!(
            text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{text}"
        );
        for category in ["registration", "password"] {
            m.category = category.into();
            let (raw, _) = render(&check(&m, &cfg).unwrap(), "r1", &cfg).unwrap();
            let text = String::from_utf8(raw).unwrap();
            assert!(!text.contains("List-Unsubscribe"), "{category}: {text}");
        }
        // Without an https base: only the mailto link, and no one-click POST promised.
        cfg.unsubscribe_base = None;
        m.category = "notification".into();
        let (raw, _) = render(&check(&m, &cfg).unwrap(), "n2", &cfg).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains(&format!(
                "List-Unsubscribe: <mailto:unsubscribe+{}@bounces.club.example>\r\n",
                super::super::unsubscribe::mail_token(b"unsub-key", "n2")
            )),
            "{text}"
        );
        assert!(!text.contains("List-Unsubscribe-Post"), "{text}");
        // Without a secret: no headers at all.
        cfg.unsubscribe_secret = None;
        let (raw, _) = render(&check(&m, &cfg).unwrap(), "n3", &cfg).unwrap();
        assert!(!String::from_utf8(raw).unwrap().contains("List-Unsubscribe"));
    }

    #[test]
    fn text_only_is_a_single_part() {
        let cfg = config();
        let mut m = msg();
        m.html = None;
        let (raw, _) = render(&check(&m, &cfg).unwrap(), "x1", &cfg).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("multipart"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8"),
            "{text}"
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let cfg = config();
        type Mutation = Box<dyn Fn(&mut NewMessage)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|m| m.to = "not-an-address".into()), "to"),
            (
                Box::new(|m| m.to = "a@b.example\r\nBcc: x@y.example".into()),
                "to",
            ),
            (
                Box::new(|m| m.subject = "Hi\r\nBcc: x@y.example".into()),
                "subject",
            ),
            (Box::new(|m| m.subject = "Hi\nthere".into()), "subject"),
            (Box::new(|m| m.subject = " ".into()), "subject"),
            (Box::new(|m| m.text = "x".repeat(101)), "text"),
            (Box::new(|m| m.html = Some("x".repeat(101))), "html"),
            (Box::new(|m| m.category = "newsletter".into()), "category"),
            (Box::new(|m| m.reply_to = Some("nope".into())), "reply_to"),
            (
                Box::new(|m| {
                    m.headers
                        .insert("X-Evil".into(), "a\r\nBcc: x@y.example".into());
                }),
                "headers.X-Evil",
            ),
            (
                Box::new(|m| {
                    m.headers.insert("Bcc".into(), "x@y.example".into());
                }),
                "headers.Bcc",
            ),
            (
                Box::new(|m| {
                    m.headers
                        .insert("List-Unsubscribe".into(), "<https://evil.example/>".into());
                }),
                "headers.List-Unsubscribe",
            ),
            (
                Box::new(|m| {
                    m.headers.insert(
                        "list-unsubscribe-post".into(),
                        "List-Unsubscribe=One-Click".into(),
                    );
                }),
                "headers.list-unsubscribe-post",
            ),
            (
                Box::new(|m| {
                    m.headers.insert("X Bad".into(), "v".into());
                }),
                "headers.X Bad",
            ),
            // Found by tests/fuzz (message_render_fields): written out raw, these broke the wire
            // format (a control character in a header, a NUL in a 7bit body, a 999-byte line).
            (
                Box::new(|m| {
                    m.headers.insert("X-A".into(), "\u{7f}".into());
                }),
                "headers.X-A",
            ),
            (Box::new(|m| m.subject = "Hi\u{1b}[2J".into()), "subject"),
            (Box::new(|m| m.text = "a\0b".into()), "text"),
            (Box::new(|m| m.html = Some("<p>\0</p>".into())), "html"),
            (
                Box::new(|m| {
                    m.headers.insert("X-0".into(), "y".repeat(995));
                }),
                "headers.X-0",
            ),
            (
                Box::new(|m| m.subject = format!("  {}", "y".repeat(988))),
                "subject",
            ),
        ];
        for (mutate, field) in cases {
            let mut m = msg();
            mutate(&mut m);
            let err = check(&m, &cfg).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
