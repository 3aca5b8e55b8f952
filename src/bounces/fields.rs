//! Small readers the bounce parser shares: blocks of header fields (a DSN's or an ARF report's
//! fields, returned headers) and e-mail addresses in free text. Hand-written because a DSN body
//! is not a message (mail-parser leaves it as bytes) and prose is not an address list.

/// One header field: the name lower-cased, the value unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// Fields read from one block, at most this many (a hostile block of a million short lines
/// costs nothing past it).
const MAX_FIELDS: usize = 512;

/// Splits `text` into blocks of header fields separated by blank lines, unfolding continuation
/// lines. Lines that are neither a field nor a continuation are skipped. At most `max_blocks`
/// blocks are read.
pub fn field_blocks(text: &str, max_blocks: usize) -> Vec<Vec<Field>> {
    let mut blocks: Vec<Vec<Field>> = Vec::new();
    let mut current: Vec<Field> = Vec::new();
    let mut fields_seen = 0usize;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
                if blocks.len() >= max_blocks {
                    return blocks;
                }
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = current.last_mut()
                && last.value.len() < 4096
            {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = split_field(line) {
            fields_seen += 1;
            if fields_seen > MAX_FIELDS {
                break;
            }
            current.push(Field {
                name: name.to_ascii_lowercase(),
                value: value.trim().to_owned(),
            });
        }
    }
    if !current.is_empty() && blocks.len() < max_blocks {
        blocks.push(current);
    }
    blocks
}

/// `Name: value` when the line is a header field (a name of printable ASCII without space).
pub fn split_field(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let ok = !name.is_empty()
        && name.len() <= 76
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some((name, value))
}

/// The first value of field `name` (lower-case) in `fields`.
pub fn get<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// Unfolds a raw header value (line breaks and the white space after them become one space).
pub fn unfold(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut last_space = false;
    for c in raw.trim().chars() {
        if c == '\r' || c == '\n' || c == '\t' || c == ' ' {
            if !last_space {
                out.push(' ');
                last_space = true;
            }
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b".!#$%&'*+/?^_`{|}~-".contains(&c)
}

fn is_domain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

/// An address found in text: its byte range and the address itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub address: String,
}

/// The e-mail addresses in `text` (`local@domain.tld`, ASCII), in order, at most `max`.
pub fn find_addresses(text: &str, max: usize) -> Vec<Found> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut resume = 0;
    while i < bytes.len() && out.len() < max {
        if bytes[i] != b'@' || i < resume {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > resume && is_local_char(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < bytes.len() && is_domain_char(bytes[end]) {
            end += 1;
        }
        // Sentence punctuation and a leading dot are not part of an address.
        while start < i && matches!(bytes[start], b'.' | b'\'' | b'`' | b'/' | b'|' | b'{') {
            start += 1;
        }
        while end > i + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let local = &text[start..i];
        let domain = &text[i + 1..end];
        let domain_ok = domain.contains('.')
            && !domain.starts_with(['.', '-'])
            && !domain.contains("..")
            && domain
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
        if !local.is_empty() && local.len() <= 64 && domain_ok && domain.len() <= 255 {
            out.push(Found {
                start,
                end,
                address: text[start..end].to_owned(),
            });
        }
        resume = end.max(i + 1);
        i = resume;
    }
    out
}

/// The address in a header value such as `"Name" <a@b.example>` or `rfc822; a@b.example`.
pub fn first_address(value: &str) -> Option<String> {
    find_addresses(value, 1)
        .into_iter()
        .next()
        .map(|f| f.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_unfold_and_split_on_blank_lines() {
        let text = "Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@b.example\nDiagnostic-Code: smtp; 550 5.1.1\n  user unknown\n\nFinal-Recipient: rfc822; c@d.example\n";
        let blocks = field_blocks(text, 10);
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            get(&blocks[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 user unknown")
        );
        assert_eq!(field_blocks(text, 1).len(), 1);
    }

    #[test]
    fn addresses_in_prose() {
        let found = find_addresses(
            "<kijitora@example.jp>: host mx.example.jp[192.0.2.1] said: 550 to=<neko@example.org>. Mail to x@localhost.",
            10,
        );
        let addrs: Vec<_> = found.iter().map(|f| f.address.as_str()).collect();
        assert_eq!(addrs, ["kijitora@example.jp", "neko@example.org"]);
        assert_eq!(
            first_address("rfc822; \"Neko\" <a.b+c@x.example.>"),
            Some("a.b+c@x.example".into())
        );
        assert_eq!(find_addresses("@@@ a@ @b.c", 10), vec![]);
    }
}
