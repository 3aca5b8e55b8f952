//! The MIME side of a bounce: line endings made one, the input bounded, then mail-parser's tree
//! walked with an explicit stack (never recursion over the input's depth) to gather what the
//! classifier reads: the bounce's own headers and text, its `message/delivery-status` and
//! `message/feedback-report` bodies, and the headers of any returned message.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use super::fields::{Field, field_blocks, unfold};

/// Bytes of a message read at all: the parts a bounce is judged by come first; a returned
/// attachment past this is not needed.
pub const MAX_INPUT: usize = 1 << 20;
/// Nested messages (`message/rfc822`, digests) allowed before the input is cut: a returned
/// message inside a returned message is already rare, and the bound keeps the parsed tree (and
/// dropping it) shallow whatever the input.
const MAX_NESTED: usize = 8;
/// MIME parts looked at, over all nested messages.
const MAX_PARTS: usize = 256;
/// Bytes of prose (the bounce's own text parts) kept.
const MAX_PROSE: usize = 128 * 1024;
/// DSN or ARF bodies kept, and bytes of each.
const MAX_REPORTS: usize = 4;
const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Returned header blocks kept.
const MAX_RETURNED: usize = 4;

/// What the walk found.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The bounce's own header fields (raw values, unfolded).
    pub top: Vec<Field>,
    /// The bounce's own text (text/plain parts, and text/html stripped of tags), LF line ends.
    pub prose: String,
    /// `message/delivery-status` bodies.
    pub dsn: Vec<String>,
    /// `message/feedback-report` bodies.
    pub arf: Vec<String>,
    /// Header blocks of returned messages (`message/rfc822`, `text/rfc822-headers`).
    pub returned: Vec<Vec<Field>>,
    /// Whether the message had any MIME structure that separated a returned message from prose.
    pub has_returned_part: bool,
}

/// One line-ending convention (LF) for every input, so CRLF and CR copies of a message read
/// the same as the LF one; at most [`MAX_INPUT`] bytes, cut before the nesting bound.
pub fn normalise(raw: &[u8]) -> Vec<u8> {
    let raw = &raw[..raw.len().min(MAX_INPUT)];
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\r' {
            out.push(b'\n');
            if raw.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            out.push(b);
        }
        i += 1;
        // A `boundary=` parameter a mailer wrote on a line of its own after `Content-Type:
        // multipart/…;` (an unindented continuation) is folded back into its field.
        if out.ends_with(b";\n")
            && raw
                .get(i..i + 9)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"boundary="))
        {
            out.push(b' ');
        }
    }
    let cut = nesting_cut(&out);
    out.truncate(cut);
    out
}

/// Where the input must end so that it names at most [`MAX_NESTED`] nested-message types.
fn nesting_cut(bytes: &[u8]) -> usize {
    const NEEDLES: [&[u8]; 3] = [b"message/rfc822", b"message/global", b"multipart/digest"];
    let mut seen = 0;
    let mut i = 0;
    while i + 14 <= bytes.len() {
        let b = bytes[i];
        if (b == b'm' || b == b'M')
            && NEEDLES.iter().any(|n| {
                bytes
                    .get(i..i + n.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(n))
            })
        {
            seen += 1;
            if seen > MAX_NESTED {
                return i;
            }
        }
        i += 1;
    }
    bytes.len()
}

/// The header fields of the root message (its offsets count from the buffer parsed), values raw
/// (unfolded).
fn headers_of(message: &Message<'_>) -> Vec<Field> {
    let raw = message.raw_message();
    let Some(root) = message.parts.first() else {
        return Vec::new();
    };
    root.headers
        .iter()
        .filter_map(|h| {
            let value = raw.get(h.offset_start as usize..h.offset_end as usize)?;
            Some(Field {
                name: h.name.as_str().to_ascii_lowercase(),
                value: unfold(&String::from_utf8_lossy(value)),
            })
        })
        .collect()
}

fn push_bounded(out: &mut String, text: &str, max: usize) {
    let room = max.saturating_sub(out.len());
    if room == 0 {
        return;
    }
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&text[..end]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Text of an HTML body: tags dropped, a few entities decoded, block ends as line breaks.
/// Hand-written (html2text builds a DOM, more than a bounce's few lines need, and costs more on
/// hostile markup); linear in the input.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            rest = "";
            break;
        };
        let tag = after[..gt].trim_start_matches('/').to_ascii_lowercase();
        if ["br", "p", "div", "tr", "li", "h1", "h2", "h3", "table"]
            .iter()
            .any(|t| tag.starts_with(t))
        {
            out.push('\n');
        }
        rest = &after[gt + 1..];
    }
    out.push_str(rest);
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Why a mail gave nothing to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// No header fields: no mail at all.
    NoHeaders,
    /// The MIME parser gave up on its structure (see [`parse_mime`]).
    Mime,
}

/// mail-parser 0.11 panics on some malformed multipart nestings ("Invalid part ID, could not
/// find multipart", found by the `bounce_parse` fuzz target; its `regression-*` seed keeps it).
/// Nothing in a bounce may take the process down, so that panic is caught here and the mail is
/// read as unreadable: `parse` then answers `not_bounce`, and ingest applies nothing.
fn parse_mime(bytes: &[u8]) -> Result<Option<Message<'_>>, Unreadable> {
    std::panic::catch_unwind(|| MessageParser::default().parse(bytes)).map_err(|_| Unreadable::Mime)
}

/// Parses `normalised` (see [`normalise`]) and gathers what the classifier reads.
pub fn gather(normalised: &[u8]) -> Result<Gathered, Unreadable> {
    let message = parse_mime(normalised)?.ok_or(Unreadable::NoHeaders)?;
    let mut g = Gathered {
        top: headers_of(&message),
        ..Gathered::default()
    };
    if g.top.is_empty() {
        return Err(Unreadable::NoHeaders);
    }
    let mut html = String::new();
    // Reports with the depth of the message they were found in.
    let mut dsn: Vec<(usize, String)> = Vec::new();
    let mut arf: Vec<(usize, String)> = Vec::new();
    let mut stack: Vec<(&Message<'_>, usize)> = vec![(&message, 0)];
    let mut parts_seen = 0usize;
    while let Some((msg, depth)) = stack.pop() {
        for (index, part) in msg.parts.iter().enumerate() {
            parts_seen += 1;
            if parts_seen > MAX_PARTS {
                break;
            }
            let (ctype, subtype) = part
                .content_type()
                .map(|ct| {
                    (
                        ct.ctype().to_ascii_lowercase(),
                        ct.subtype().unwrap_or("").to_ascii_lowercase(),
                    )
                })
                .unwrap_or_default();
            let kind = (ctype.as_str(), subtype.as_str());
            match (&part.body, kind) {
                (PartType::Message(inner), _) => {
                    g.has_returned_part = true;
                    if g.returned.len() < MAX_RETURNED {
                        // A nested message's header offsets count from the outer buffer, its
                        // raw bytes from itself: its header block is read from the bytes.
                        let text = bounded_text(inner.raw_message());
                        if let Some(block) = field_blocks(&text, 1).into_iter().next() {
                            g.returned.push(block);
                        }
                    }
                    if stack.len() < MAX_NESTED {
                        stack.push((inner, depth + 1));
                    }
                }
                (PartType::Multipart(_), _) => {}
                (_, ("message", "delivery-status" | "global-delivery-status"))
                    if dsn.len() < MAX_REPORTS =>
                {
                    dsn.push((depth, bounded_text(part.contents())));
                }
                (_, ("message", "feedback-report")) if arf.len() < MAX_REPORTS => {
                    arf.push((depth, bounded_text(part.contents())));
                }
                (_, ("text", "rfc822-headers") | ("message", "rfc822-headers"))
                | (_, ("message", "rfc822" | "global")) => {
                    g.has_returned_part = true;
                    if g.returned.len() < MAX_RETURNED {
                        let text = bounded_text(part.contents());
                        if let Some(block) = field_blocks(&text, 1).into_iter().next() {
                            g.returned.push(block);
                        }
                    }
                }
                (PartType::Text(text), _) if depth == 0 => {
                    // The root part of a single-part message is the root itself (index 0).
                    let _ = index;
                    push_bounded(&mut g.prose, text, MAX_PROSE);
                }
                (PartType::Html(text), _) if depth == 0 => {
                    push_bounded(&mut html, text, MAX_PROSE);
                }
                _ => {}
            }
        }
    }
    g.dsn = shallowest(dsn);
    g.arf = shallowest(arf);
    if g.prose.trim().is_empty() && !html.is_empty() {
        let text = html_to_text(&html);
        push_bounded(&mut g.prose, &text, MAX_PROSE);
    }
    Ok(g)
}

/// The reports of the outermost message that has any: a bounce's own report, not the one of
/// a bounce it returns (a bounce of a bounce names the first bounce's recipients too); a report
/// forwarded inside a message still counts when the outer one has none.
fn shallowest(reports: Vec<(usize, String)>) -> Vec<String> {
    let Some(top) = reports.iter().map(|(depth, _)| *depth).min() else {
        return Vec::new();
    };
    reports
        .into_iter()
        .filter(|(depth, _)| *depth == top)
        .map(|(_, body)| body)
        .collect()
}

fn bounded_text(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_REPORT_BYTES)];
    String::from_utf8_lossy(bytes).replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_become_lf() {
        assert_eq!(normalise(b"a\r\nb\rc\n\r\n"), b"a\nb\nc\n\n");
    }

    #[test]
    fn deep_nesting_is_cut() {
        let one = "Content-Type: message/rfc822\n\n";
        let input = format!("Subject: x\n{}", one.repeat(10_000));
        let cut = normalise(input.as_bytes());
        assert!(cut.len() < 11 + one.len() * (MAX_NESTED + 1));
        assert!(gather(&cut).is_ok());
    }

    #[test]
    fn html_is_read_as_text() {
        assert_eq!(
            html_to_text("<p>User &lt;a@b.example&gt; unknown</p><br>x"),
            "\nUser <a@b.example> unknown\n\nx"
        );
    }

    /// mail-parser 0.11.9 panics on this mail (found by the fuzz target): the panic is caught,
    /// and the mail is unreadable, not a crash.
    #[test]
    fn a_panic_in_the_mime_parser_is_an_unreadable_mail() {
        let seed = include_bytes!(
            "../../tests/fixtures/fuzz/bounce_parse/regression-mail-parser-part-id.eml"
        );
        let normalised = normalise(seed);
        assert_eq!(parse_mime(&normalised).err(), Some(Unreadable::Mime));
        let report = crate::bounces::parse(seed);
        assert_eq!(report.kind, crate::bounces::BounceKind::NotBounce);
        assert_eq!(
            report.not_bounce_reason.as_deref(),
            Some("its MIME structure cannot be read")
        );
    }
}
