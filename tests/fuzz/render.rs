//! Transactional message rendering: whatever the request says, the bytes on the wire are a
//! well-formed message with exactly the headers the relay means to set, and every value the
//! caller gave comes back out of them unchanged (no header injection, no lost text).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use mailbridge::config::{Config, RelayConfig};
use mailbridge::relay::render::{NewMessage, check, render};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

use crate::harness::{TOKENS, ensure};

const ID: &str = "0123456789abcdef0123456789abcdef";

static CONFIG: LazyLock<RelayConfig> = LazyLock::new(|| {
    let text = r#"
[members]
url = "sqlite://m.db"
mapping = "m.toml"
[relay]
from = "Riverside Rowing Club <club@club.example>"
routes = ["sendmail"]
max_message_bytes = 4096
"#;
    Config::from_str_with_env(std::path::Path::new("fuzz.toml"), text, &|_| None)
        .expect("the fuzz relay config loads")
        .relay
        .expect("it has a [relay]")
});

/// A `POST /v1/messages` body, decoded as the HTTP route decodes it.
pub fn check_json(input: &[u8]) -> TestCaseResult {
    match serde_json::from_slice::<NewMessage>(input) {
        Ok(msg) => check_message(msg),
        Err(_) => Ok(()),
    }
}

/// Text that leans on what breaks headers: line breaks, controls, quotes, encoded-word syntax,
/// non-ASCII, long runs without spaces.
fn nasty(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => "[a-zA-Z0-9 ]{1,12}",
            2 => prop::sample::select(TOKENS).prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
            1 => "[\\x00-\\x1f\\x7f]",
            1 => (1usize..1100).prop_map(|n| "x".repeat(n)),
            // Just under the 998-byte limits, where a header line without spaces overflows.
            1 => (970usize..1000).prop_map(|n| "y".repeat(n)),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9._%+'=-]{1,20}@[a-z0-9-]{1,10}\\.(example|org|co\\.uk)",
        1 => nasty(4),
    ]
}

/// Structured requests: every field from [`nasty`], addresses mostly valid.
pub fn messages() -> impl Strategy<Value = NewMessage> {
    (
        address(),
        nasty(12),
        nasty(24),
        prop::option::of(nasty(24)),
        prop::option::of(address()),
        prop::collection::btree_map(
            prop_oneof![3 => "X-[A-Za-z0-9-]{1,20}", 1 => nasty(2)],
            nasty(8),
            0..4,
        ),
        prop_oneof![
            Just("registration".to_owned()),
            Just("password".to_owned()),
            Just("notification".to_owned()),
            nasty(2),
        ],
    )
        .prop_map(
            |(to, subject, text, html, reply_to, headers, category)| NewMessage {
                to,
                subject,
                text,
                html,
                reply_to,
                headers,
                category,
            },
        )
}

pub fn check_message(msg: NewMessage) -> TestCaseResult {
    let checked = match check(&msg, &CONFIG) {
        Ok(c) => c,
        Err(e) => {
            let known = ["to", "subject", "text", "html", "reply_to", "category"];
            prop_assert!(
                known.contains(&e.field.as_str()) || e.field.starts_with("headers."),
                "the error names a field of the request: {e}"
            );
            return Ok(());
        }
    };
    let (raw, message_id) = render(&checked, ID, &CONFIG)
        .map_err(|e| TestCaseError::fail(format!("a checked message must render: {e}")))?;
    prop_assert_eq!(
        &message_id,
        "<0123456789abcdef0123456789abcdef@club.example>"
    );
    wire_format(&raw)?;
    let text = String::from_utf8(raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| TestCaseError::fail("no blank line after the headers"))?;
    let headers = header_fields(head)?;

    // Exactly the headers the relay sets, plus the caller's own: nothing injected.
    let mut want: Vec<String> = [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ]
    .map(str::to_owned)
    .to_vec();
    if msg.reply_to.is_some() {
        want.push("reply-to".into());
    }
    want.extend(msg.headers.keys().map(|k| k.to_ascii_lowercase()));
    let mut got: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| !(n == "content-transfer-encoding" && msg.html.is_none()))
        .collect();
    want.sort();
    got.sort();
    prop_assert_eq!(got, want, "header names of\n{}", head);

    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    same_text("Subject", value("subject"), &msg.subject)?;
    for (name, v) in &msg.headers {
        same_text(name, value(name), v)?;
    }
    let to = value("to");
    prop_assert!(
        to.trim() == msg.to.trim() || to.contains(&format!("<{}>", msg.to.trim())),
        "To: {to:?} for {:?}",
        msg.to
    );
    prop_assert_eq!(value("message-id").trim(), message_id.as_str());

    // The body parts decode back to what was given (line ends as CRLF).
    let content_type = value("content-type");
    match &msg.html {
        None => {
            prop_assert!(content_type.contains("text/plain"), "{content_type}");
            // lettre ends the body with a CRLF of its own.
            let body = body
                .strip_suffix("\r\n")
                .ok_or_else(|| TestCaseError::fail("the body does not end with CRLF"))?;
            let decoded = decode_body(value("content-transfer-encoding"), body)?;
            prop_assert_eq!(decoded, crlf(&msg.text));
        }
        Some(html) => {
            let parts = multipart(content_type, body)?;
            prop_assert_eq!(parts.len(), 2, "two alternatives");
            prop_assert_eq!(&parts[0].0, &crlf(&msg.text));
            prop_assert!(parts[0].1.contains("text/plain"));
            prop_assert_eq!(&parts[1].0, &crlf(html));
            prop_assert!(parts[1].1.contains("text/html"));
        }
    }
    Ok(())
}

/// SMTP-safe bytes: ASCII without NUL, CR and LF only as CRLF, lines of at most 998 bytes.
fn wire_format(raw: &[u8]) -> TestCaseResult {
    for (i, &b) in raw.iter().enumerate() {
        ensure(b.is_ascii() && b != 0, || format!("byte {b:#04x} at {i}"))?;
        if b == b'\r' {
            ensure(raw.get(i + 1) == Some(&b'\n'), || format!("bare CR at {i}"))?;
        }
        if b == b'\n' {
            ensure(i > 0 && raw[i - 1] == b'\r', || format!("bare LF at {i}"))?;
        }
    }
    for (n, line) in raw.split(|&b| b == b'\n').enumerate() {
        ensure(line.len() <= 999, || {
            format!("line {} is {} bytes", n + 1, line.len() - 1)
        })?;
    }
    Ok(())
}

/// The header fields, unfolded: (name, value without the leading white space).
fn header_fields(head: &str) -> Result<Vec<(String, String)>, TestCaseError> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = fields
                .last_mut()
                .ok_or_else(|| TestCaseError::fail("the headers start with a continuation"))?;
            last.1.push_str(line);
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| TestCaseError::fail(format!("not a header field: {line:?}")))?;
        ensure(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
            || format!("bad field name {name:?}"),
        )?;
        ensure(
            value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)),
            || format!("control character in {name}: {value:?}"),
        )?;
        fields.push((name.to_owned(), value.to_owned()));
    }
    for (_, v) in &mut fields {
        *v = v.strip_prefix(' ').unwrap_or(v).to_owned();
    }
    Ok(fields)
}

/// Decodes RFC 2047 `=?utf-8?b?…?=` words; white space between two encoded words is dropped.
fn decode_words(value: &str) -> Result<String, TestCaseError> {
    let mut out = String::new();
    let mut pending_ws = String::new();
    let mut last_was_word = false;
    let mut rest = value;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("=?")
            && let Some((charset, after)) = after.split_once('?')
            && let Some((encoding, after)) = after.split_once('?')
            && let Some((payload, after)) = after.split_once("?=")
            && charset.eq_ignore_ascii_case("utf-8")
            && encoding.eq_ignore_ascii_case("b")
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| TestCaseError::fail(format!("bad encoded word {payload:?}: {e}")))?;
            let word = String::from_utf8(bytes)
                .map_err(|e| TestCaseError::fail(format!("encoded word is not UTF-8: {e}")))?;
            if !last_was_word {
                out.push_str(&pending_ws);
            }
            pending_ws.clear();
            out.push_str(&word);
            last_was_word = true;
            rest = after;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        if c == ' ' || c == '\t' {
            pending_ws.push(c);
        } else {
            out.push_str(&pending_ws);
            pending_ws.clear();
            out.push(c);
            last_was_word = false;
        }
        rest = &rest[c.len_utf8()..];
    }
    out.push_str(&pending_ws);
    Ok(out)
}

/// A header value as read back (`raw`, RFC 2047 words decoded) equals the one given. White space is compared loosely: lettre
/// drops the spaces between two encoded words when there are several, and readers drop the
/// spaces right after the colon. Values that already look encoded are skipped.
fn same_text(name: &str, raw: &str, given: &str) -> TestCaseResult {
    if given.contains("=?") {
        return Ok(());
    }
    let got = &decode_words(raw)?;
    let squeeze = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    ensure(squeeze(got) == squeeze(given), || {
        format!("{name}: read back {got:?}, given {given:?}")
    })
}

/// `text` with every line end as CRLF, as lettre sends it.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

fn decode_body(encoding: &str, body: &str) -> Result<String, TestCaseError> {
    let bytes = match encoding.trim().to_ascii_lowercase().as_str() {
        "7bit" | "8bit" | "" => body.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.replace("\r\n", ""))
            .map_err(|e| TestCaseError::fail(format!("bad base64 body: {e}")))?,
        "quoted-printable" => quoted_printable(body)?,
        other => return Err(TestCaseError::fail(format!("unknown encoding {other:?}"))),
    };
    String::from_utf8(bytes).map_err(|e| TestCaseError::fail(format!("body not UTF-8: {e}")))
}

fn quoted_printable(body: &str) -> Result<Vec<u8>, TestCaseError> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TestCaseError::fail(format!("bad QP escape at {i}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The parts of a multipart body: (decoded body, the part's Content-Type).
fn multipart(content_type: &str, body: &str) -> Result<Vec<(String, String)>, TestCaseError> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| TestCaseError::fail(format!("no boundary in {content_type:?}")))?;
    let delimiter = format!("\r\n--{boundary}");
    let body = format!("\r\n{body}");
    let mut parts = Vec::new();
    let mut sections = body.split(&delimiter);
    sections.next(); // the preamble
    for section in sections {
        if section.starts_with("--") {
            break;
        }
        let section = section
            .strip_prefix("\r\n")
            .ok_or_else(|| TestCaseError::fail("no line end after a boundary"))?;
        let (head, part_body) = section
            .split_once("\r\n\r\n")
            .ok_or_else(|| TestCaseError::fail("a part without a blank line"))?;
        let fields: BTreeMap<String, String> = header_fields(head)?
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        let encoding = fields
            .get("content-transfer-encoding")
            .map(String::as_str)
            .unwrap_or("7bit");
        parts.push((
            decode_body(encoding, part_body)?,
            fields.get("content-type").cloned().unwrap_or_default(),
        ));
    }
    Ok(parts)
}
