//! Decoding and verifying provider webhooks into [`NewEvent`]s: Mailchimp list webhooks
//! (form-encoded, optional `X-Mailchimp-Signature`) and Mailchimp Transactional (Mandrill)
//! webhooks (`mandrill_events` JSON, `X-Mandrill-Signature`). Pure functions over bytes; the HTTP
//! webhook handlers call them. Facts: research/mailchimp.md §6 and §11.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::Email;
use crate::providers::{EventMeaning, NewEvent};

/// The window in which a signed Mailchimp delivery's timestamp is accepted (research §6).
pub const SIGNATURE_WINDOW_SECS: i64 = 300;

pub use crate::providers::{MAX_FUTURE_SECS, not_after_now};

/// Bounds of a form body (Mailchimp sends a few dozen pairs, keys such as
/// `data[merges][ADDRESS][addr1]`); anything past them is refused before it is decoded further.
pub const MAX_FORM_PAIRS: usize = 1000;
/// Longest form key, in bytes once decoded.
pub const MAX_FORM_KEY_BYTES: usize = 256;
/// Most `[` levels in one form key (`data[merges][ADDRESS][addr1]` has three).
pub const MAX_FORM_DEPTH: usize = 4;
/// Most events in one Mailchimp Transactional batch (the provider sends up to 1,000).
pub const MAX_MANDRILL_EVENTS: usize = 1000;
/// Deepest nesting of arrays and objects in a Mailchimp Transactional batch.
pub const MAX_JSON_DEPTH: usize = 16;

/// The name list webhook events (and pulled member changes) are stored under.
pub const PROVIDER: &str = "mailchimp";
/// The name Mailchimp Transactional (Mandrill) events are stored under.
pub const TRANSACTIONAL: &str = "mailchimp_transactional";

/// The Mailchimp list webhook types (research §6). tests/attacks.rs fails when one has no case.
pub const MAILCHIMP_TYPES: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "profile",
    "upemail",
    "cleaned",
    "campaign",
];

/// The Mailchimp Transactional event types that change something (others are stored only).
/// tests/attacks.rs fails when one has no case.
pub const MANDRILL_TYPES: [&str; 5] = ["hard_bounce", "soft_bounce", "reject", "spam", "unsub"];

fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// Why a webhook was refused; each maps to an HTTP status in the handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// 401: the signature header is missing, malformed, stale or wrong.
    #[error("{0}")]
    Signature(String),
    /// 400: the body is not a well-formed event.
    #[error("{message}")]
    Malformed { code: &'static str, message: String },
}

impl WebhookError {
    fn malformed(code: &'static str, message: impl Into<String>) -> WebhookError {
        WebhookError::Malformed {
            code,
            message: message.into(),
        }
    }
}

/// Verifies `X-Mailchimp-Signature: t=<unix>,v1=<hex>` (HMAC-SHA256 over `<t>.<raw body>`) against
/// any of `secrets`; returns the index of the secret that signed it. Constant-time comparison.
pub fn verify_mailchimp_signature<S: AsRef<[u8]>>(
    header: Option<&str>,
    body: &[u8],
    secrets: &[S],
    now: DateTime<Utc>,
) -> Result<usize, WebhookError> {
    let header = header.ok_or_else(|| {
        WebhookError::Signature("missing X-Mailchimp-Signature header".to_owned())
    })?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.trim().parse::<i64>().ok(),
            Some(("v1", value)) => {
                if let Ok(bytes) = hex::decode(value.trim()) {
                    v1.push(bytes);
                }
            }
            _ => {}
        }
    }
    let (Some(t), false) = (t, v1.is_empty()) else {
        return Err(WebhookError::Signature(
            "X-Mailchimp-Signature must be `t=<unix seconds>,v1=<hex>`".to_owned(),
        ));
    };
    if (now.timestamp() - t).abs() > SIGNATURE_WINDOW_SECS {
        return Err(WebhookError::Signature(format!(
            "X-Mailchimp-Signature timestamp is more than {SIGNATURE_WINDOW_SECS} s away from now"
        )));
    }
    for (i, secret) in secrets.iter().enumerate() {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_ref()) else {
            continue;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        if v1.iter().any(|given| ct_eq(given, &expected)) {
            return Ok(i);
        }
    }
    Err(WebhookError::Signature(
        "X-Mailchimp-Signature does not match".to_owned(),
    ))
}

/// The signature header a Mailchimp delivery of `body` at `t` carries (for the simulator).
pub fn mailchimp_signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// `X-Mandrill-Signature`: base64(HMAC-SHA1(key, url + each POST field sorted by key as
/// key + value)).
pub fn mandrill_signature(key: &[u8], url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Verifies `X-Mandrill-Signature` over the decoded form `fields`.
pub fn verify_mandrill_signature(
    header: Option<&str>,
    key: &[u8],
    url: &str,
    fields: &[(String, String)],
) -> Result<(), WebhookError> {
    let given = header
        .ok_or_else(|| WebhookError::Signature("missing X-Mandrill-Signature header".to_owned()))?;
    let expected = mandrill_signature(key, url, fields);
    if ct_eq(given.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(WebhookError::Signature(
            "X-Mandrill-Signature does not match".to_owned(),
        ))
    }
}

/// Decodes a form body into pairs (order kept), within the bounds above: at most
/// [`MAX_FORM_PAIRS`] pairs, keys of at most [`MAX_FORM_KEY_BYTES`] with at most
/// [`MAX_FORM_DEPTH`] `[` levels. The pairs are counted before anything is decoded.
pub fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, WebhookError> {
    let pairs = body.split(|b| *b == b'&').filter(|p| !p.is_empty()).count();
    if pairs > MAX_FORM_PAIRS {
        return Err(WebhookError::malformed(
            "too_many_fields",
            format!("the form has {pairs} fields; at most {MAX_FORM_PAIRS} are accepted"),
        ));
    }
    let decoded = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).map_err(|e| {
        WebhookError::malformed(
            "malformed_body",
            format!("body is not application/x-www-form-urlencoded: {e}"),
        )
    })?;
    for (key, _) in &decoded {
        if key.len() > MAX_FORM_KEY_BYTES {
            return Err(WebhookError::malformed(
                "key_too_long",
                format!(
                    "a form key is {} bytes long; at most {MAX_FORM_KEY_BYTES} are accepted",
                    key.len()
                ),
            ));
        }
        let depth = key.bytes().filter(|b| *b == b'[').count();
        if depth > MAX_FORM_DEPTH {
            return Err(WebhookError::malformed(
                "too_deep",
                format!(
                    "form key `{}` nests {depth} levels; at most {MAX_FORM_DEPTH} are accepted",
                    shown(key)
                ),
            ));
        }
    }
    Ok(decoded)
}

/// The start of an outside string, for an error message (never a whole hostile input).
fn shown(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The deepest nesting of arrays and objects in `json`, counted without parsing (and without
/// recursion): brackets inside strings do not count.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses Mailchimp's `fired_at` (`YYYY-MM-DD HH:MM:SS`, taken as UTC) or RFC 3339.
fn fired_at(raw: &str) -> Option<DateTime<Utc>> {
    crate::domain::parse_time(raw)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Nests `data[merges][FNAME]`-style keys into JSON objects (for the stored payload).
fn nest(pairs: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for (key, value) in pairs {
        let mut path: Vec<&str> = Vec::new();
        let (head, rest) = key.split_once('[').unwrap_or((key.as_str(), ""));
        path.push(head);
        for seg in rest.split('[') {
            let seg = seg.trim_end_matches(']');
            if !seg.is_empty() {
                path.push(seg);
            }
        }
        let mut node = &mut root;
        for (i, seg) in path.iter().enumerate() {
            if i + 1 == path.len() {
                node.insert((*seg).to_owned(), Value::String(value.clone()));
            } else {
                let entry = node
                    .entry((*seg).to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                match entry {
                    Value::Object(m) => node = m,
                    _ => break,
                }
            }
        }
    }
    Value::Object(root)
}

fn email_field(
    data: &BTreeMap<&str, &str>,
    key: &'static str,
    kind: &str,
) -> Result<Email, WebhookError> {
    let raw = data
        .get(key)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            WebhookError::malformed("missing_email", format!("a `{kind}` event needs `{key}`"))
        })?;
    Email::parse(raw).map_err(|e| {
        WebhookError::malformed("invalid_email", format!("`{key}` is not an address: {e}"))
    })
}

fn unknown_type(kind: &str) -> WebhookError {
    WebhookError::malformed(
        "unknown_type",
        format!(
            "unknown event type `{}`: expected one of {}",
            shown(kind),
            MAILCHIMP_TYPES.join(", ")
        ),
    )
}

/// Decodes one Mailchimp list webhook delivery. `audience_of` maps a list id to the configured
/// audience name (None for a list we do not sync: such an event is stored as ignored). Nothing in
/// the body selects a member: merge fields are kept in the payload for the record only, and the
/// member is the one the state DB ties to the list and address. The event is unverified; the
/// handler marks it verified when the delivery's signature was. `now` is the time of receipt.
pub fn decode_mailchimp(
    pairs: &[(String, String)],
    audience_of: impl Fn(&str) -> Option<String>,
    now: DateTime<Utc>,
) -> Result<NewEvent, WebhookError> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let kind = get("type")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WebhookError::malformed("missing_type", "the form has no `type`"))?;
    let fired_raw = get("fired_at")
        .ok_or_else(|| WebhookError::malformed("missing_fired_at", "the form has no `fired_at`"))?;
    let fired = fired_at(fired_raw)
        .filter(|t| *t >= DateTime::UNIX_EPOCH)
        .ok_or_else(|| {
            WebhookError::malformed(
                "invalid_fired_at",
                format!(
                    "`fired_at` = `{}` is not `YYYY-MM-DD HH:MM:SS` from 1970 on",
                    shown(fired_raw)
                ),
            )
        })?;
    let data: BTreeMap<&str, &str> = pairs
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("data[")
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|inner| !inner.contains('['))
                .map(|inner| (inner, v.as_str()))
        })
        .collect();
    let list_id = data
        .get("list_id")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WebhookError::malformed("missing_list_id", "`data[list_id]` is missing"))?;
    let reason = data
        .get("reason")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let (event_type, email) = match kind {
        // Only the listed types are decoded: a new one must join the list (and the attack table).
        other if !MAILCHIMP_TYPES.contains(&other) => return Err(unknown_type(other)),
        "subscribe" => ("subscribed", Some(email_field(&data, "email", kind)?)),
        "unsubscribe" => {
            let abuse = reason.as_deref() == Some("abuse");
            (
                if abuse { "complained" } else { "unsubscribed" },
                Some(email_field(&data, "email", kind)?),
            )
        }
        "profile" => ("profile", Some(email_field(&data, "email", kind)?)),
        "cleaned" => ("cleaned", Some(email_field(&data, "email", kind)?)),
        "upemail" => {
            let old = email_field(&data, "old_email", kind)?;
            email_field(&data, "new_email", kind)?;
            ("upemail", Some(old))
        }
        "campaign" => ("campaign", None),
        other => return Err(unknown_type(other)),
    };
    let audience = audience_of(&list_id);
    Ok(NewEvent {
        provider: PROVIDER,
        ignored: audience.is_none().then_some("unknown_list"),
        audience,
        list_id: Some(list_id),
        event_type: event_type.to_owned(),
        email: email.map(|e| e.as_str().to_owned()),
        member_key: None,
        reason,
        fired_at: rfc3339(not_after_now(fired, now)),
        source_id: None,
        payload: nest(pairs).to_string(),
        verified: false,
    })
}

/// Decodes a Mailchimp Transactional batch: the `mandrill_events` form field, a JSON array of at
/// most [`MAX_MANDRILL_EVENTS`] events nested at most [`MAX_JSON_DEPTH`] deep. Message events
/// need `msg.email` and `ts`; other kinds (sync, inbound) are kept as they come. The batch's
/// signature was checked before it was decoded, so its events are verified. `now` is the time of
/// receipt.
pub fn decode_mandrill(
    pairs: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<Vec<NewEvent>, WebhookError> {
    let raw = pairs
        .iter()
        .find(|(k, _)| k == "mandrill_events")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            WebhookError::malformed("missing_events", "the form has no `mandrill_events` field")
        })?;
    let depth = json_depth(raw);
    if depth > MAX_JSON_DEPTH {
        return Err(WebhookError::malformed(
            "too_deep",
            format!(
                "`mandrill_events` nests {depth} levels; at most {MAX_JSON_DEPTH} are accepted"
            ),
        ));
    }
    let items: Vec<Value> = serde_json::from_str(raw).map_err(|e| {
        WebhookError::malformed(
            "malformed_body",
            format!("`mandrill_events` is not a JSON array: {e}"),
        )
    })?;
    if items.len() > MAX_MANDRILL_EVENTS {
        return Err(WebhookError::malformed(
            "too_many_events",
            format!(
                "`mandrill_events` has {} events; at most {MAX_MANDRILL_EVENTS} are accepted",
                items.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |msg: String| {
            WebhookError::malformed("malformed_event", format!("mandrill_events[{i}]: {msg}"))
        };
        let Some(obj) = item.as_object() else {
            return Err(at("not an object".to_owned()));
        };
        let ts = obj
            .get("ts")
            .and_then(Value::as_i64)
            .ok_or_else(|| at("`ts` (unix seconds) is missing".to_owned()))?;
        let fired = Utc
            .timestamp_opt(ts, 0)
            .single()
            .filter(|_| ts >= 0)
            .ok_or_else(|| at(format!("`ts` = {ts} is out of range")))?;
        let kind = obj
            .get("event")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| at("`event` is missing".to_owned()))?;
        let msg = obj.get("msg").and_then(Value::as_object);
        let is_message_event = obj.contains_key("event") && kind != "inbound";
        let email = match msg.and_then(|m| m.get("email")).and_then(Value::as_str) {
            Some(raw) => Some(
                Email::parse(raw)
                    .map_err(|e| at(format!("`msg.email` is not an address: {e}")))?
                    .as_str()
                    .to_owned(),
            ),
            None if is_message_event => {
                return Err(WebhookError::malformed(
                    "missing_email",
                    format!("mandrill_events[{i}]: a `{kind}` event needs `msg.email`"),
                ));
            }
            None => None,
        };
        let id = obj.get("_id").and_then(Value::as_str).map(str::to_owned);
        let reason = msg
            .and_then(|m| {
                m.get("bounce_description")
                    .or_else(|| m.get("diag"))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .filter(|s| !s.is_empty());
        let event_type = match kind {
            "hard_bounce" | "soft_bounce" | "reject" | "spam" | "unsub" => kind.to_owned(),
            other => other.to_owned(),
        };
        out.push(NewEvent {
            provider: TRANSACTIONAL,
            audience: None,
            list_id: None,
            event_type,
            email,
            member_key: None,
            reason,
            fired_at: rfc3339(not_after_now(fired, now)),
            source_id: id,
            payload: json!(item).to_string(),
            verified: true,
            ignored: None,
        });
    }
    Ok(out)
}

/// What a list event means: its type, and for `cleaned` the reason (`abuse`: a complaint).
pub fn list_event(kind: &str, reason: Option<&str>) -> EventMeaning {
    match kind {
        "subscribed" => EventMeaning::Subscribed,
        "pending" => EventMeaning::Pending,
        "unsubscribed" => EventMeaning::Unsubscribed { from_list: true },
        "complained" => EventMeaning::Complained { from_list: true },
        "cleaned" => EventMeaning::Cleaned {
            abuse: reason == Some("abuse"),
        },
        "upemail" => EventMeaning::EmailChanged,
        _ => EventMeaning::Nothing,
    }
}

/// What a Mailchimp Transactional (Mandrill) event means.
pub fn transactional_event(kind: &str) -> EventMeaning {
    match kind {
        "unsub" => EventMeaning::Unsubscribed { from_list: false },
        "spam" => EventMeaning::Complained { from_list: false },
        "hard_bounce" => EventMeaning::HardBounce,
        "reject" => EventMeaning::Rejected,
        "soft_bounce" => EventMeaning::SoftBounce,
        _ => EventMeaning::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        form_pairs(s.as_bytes()).unwrap()
    }

    const UNSUB: &str = "type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data%5Baction%5D=unsub&data%5Breason%5D=manual&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=a6b5da1054&data%5Bemail%5D=api%2Bunsub%40mailchimp.com&data%5Bemail_type%5D=html&data%5Bip_opt%5D=10.20.10.30&data%5Bcampaign_id%5D=cb398d21d2&data%5Bmerges%5D%5BEMAIL%5D=api%2Bunsub%40mailchimp.com&data%5Bmerges%5D%5BFNAME%5D=Mailchimp&data%5Bmerges%5D%5BLNAME%5D=API&data%5Bmerges%5D%5BINTERESTS%5D=Group1%2CGroup2";

    #[test]
    fn decodes_the_documented_unsubscribe() {
        let e = decode_mailchimp(
            &pairs(UNSUB),
            |l| (l == "a6b5da1054").then(|| "news".into()),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(e.event_type, "unsubscribed");
        assert_eq!(e.email.as_deref(), Some("api+unsub@mailchimp.com"));
        assert_eq!(e.audience.as_deref(), Some("news"));
        assert_eq!(e.reason.as_deref(), Some("manual"));
        assert_eq!(e.fired_at, "2009-03-26T21:40:57.000Z");
        // Merge fields are kept for the record; none of them selects a member.
        assert_eq!(e.member_key, None);
        assert!(!e.verified);
        assert_eq!(e.ignored, None);
        let payload: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(payload["data"]["merges"]["LNAME"], "API");
        assert_eq!(payload["data"]["action"], "unsub");
    }

    #[test]
    fn abuse_unsubscribe_is_a_complaint_and_upemail_keys_on_the_old_address() {
        let abuse = UNSUB.replace("reason%5D=manual", "reason%5D=abuse");
        let e = decode_mailchimp(&pairs(&abuse), |_| None, Utc::now()).unwrap();
        assert_eq!(e.event_type, "complained");
        let up = "type=upemail&fired_at=2009-03-26+22%3A15%3A09&data%5Blist_id%5D=a6b5da1054&data%5Bnew_id%5D=51da8c3259&data%5Bnew_email%5D=api%2Bnew%40mailchimp.com&data%5Bold_email%5D=api%2Bold%40mailchimp.com";
        let e = decode_mailchimp(&pairs(up), |_| None, Utc::now()).unwrap();
        assert_eq!(e.event_type, "upemail");
        assert_eq!(e.email.as_deref(), Some("api+old@mailchimp.com"));
        let payload: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(payload["data"]["new_email"], "api+new@mailchimp.com");
    }

    #[test]
    fn refuses_unknown_types_missing_emails_and_bad_times() {
        // (what is wrong, the payload, the code it is refused with)
        let cases = [
            (
                "unknown type",
                UNSUB.replace("type=unsubscribe", "type=explode"),
                "unknown_type",
            ),
            (
                "no email",
                "type=cleaned&fired_at=2009-03-26+22%3A01%3A00&data%5Blist_id%5D=a6b5da1054&data%5Breason%5D=hard".to_owned(),
                "missing_email",
            ),
            // Found by the fuzz target: a year before 1970 (here -9) parsed, and was stored as a
            // time that is not RFC 3339.
            (
                "negative year",
                UNSUB.replace("2009-03-26+21%3A40%3A57", "-009-03-26+21%3A40%3A57"),
                "invalid_fired_at",
            ),
            (
                "not a time",
                UNSUB.replace("2009-03-26+21%3A40%3A57", "yesterday"),
                "invalid_fired_at",
            ),
        ];
        for (name, payload, want) in &cases {
            match decode_mailchimp(&pairs(payload), |_| None, Utc::now()) {
                Err(WebhookError::Malformed { code, .. }) => assert_eq!(code, *want, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let campaign = "type=campaign&fired_at=2009-03-26+21%3A31%3A21&data%5Bid%5D=5aa2102003&data%5Bsubject%5D=Test+Campaign+Subject&data%5Bstatus%5D=sent&data%5Breason%5D=&data%5Blist_id%5D=a6b5da1054";
        let e = decode_mailchimp(&pairs(campaign), |_| None, Utc::now()).unwrap();
        assert_eq!(e.event_type, "campaign");
        assert_eq!(e.email, None);
    }

    #[test]
    fn mailchimp_signature_round_trips_and_rejects_stale_or_wrong() {
        let now = Utc::now();
        let body = UNSUB.as_bytes();
        let header = mailchimp_signature(b"s3cret", now.timestamp(), body);
        let secrets = [b"other".to_vec(), b"s3cret".to_vec()];
        assert_eq!(
            verify_mailchimp_signature(Some(&header), body, &secrets, now),
            Ok(1)
        );
        let mut tampered = body.to_vec();
        tampered[0] = b'T';
        assert!(verify_mailchimp_signature(Some(&header), &tampered, &secrets, now).is_err());
        let old = mailchimp_signature(b"s3cret", now.timestamp() - 301, body);
        assert!(verify_mailchimp_signature(Some(&old), body, &secrets, now).is_err());
        assert!(verify_mailchimp_signature(None, body, &secrets, now).is_err());
        assert!(verify_mailchimp_signature(Some("v1=00"), body, &secrets, now).is_err());
    }

    #[test]
    fn mandrill_signature_matches_the_documented_algorithm() {
        // Computed independently: base64(HMAC-SHA1("key", url + "mandrill_events" + "[]")).
        let fields = vec![("mandrill_events".to_owned(), "[]".to_owned())];
        let sig = mandrill_signature(b"key", "https://example.org/hook", &fields);
        let mut mac = Hmac::<Sha1>::new_from_slice(b"key").unwrap();
        mac.update(b"https://example.org/hookmandrill_events[]");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sig, expected);
        assert!(
            verify_mandrill_signature(Some(&sig), b"key", "https://example.org/hook", &fields)
                .is_ok()
        );
        assert!(
            verify_mandrill_signature(Some(&sig), b"key", "https://example.org/hook/", &fields)
                .is_err()
        );
    }

    #[test]
    fn decodes_mandrill_batches() {
        let events = json!([
            {"event": "hard_bounce", "ts": 1_700_000_000, "_id": "abc", "msg": {"email": "Gone@Example.org", "bounce_description": "bad_mailbox", "diag": "smtp;550 5.1.1"}},
            {"event": "open", "ts": 1_700_000_001, "_id": "abc", "msg": {"email": "x@example.org"}},
            {"type": "blacklist", "action": "add", "reject": {"email": "y@example.org"}, "ts": 1_700_000_002}
        ]);
        let fields = vec![("mandrill_events".to_owned(), events.to_string())];
        let out = decode_mandrill(&fields, Utc::now()).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].event_type, "hard_bounce");
        assert_eq!(out[0].email.as_deref(), Some("gone@example.org"));
        assert_eq!(out[0].reason.as_deref(), Some("bad_mailbox"));
        assert_eq!(out[2].event_type, "blacklist");
        let missing = vec![(
            "mandrill_events".to_owned(),
            r#"[{"event":"spam","ts":1}]"#.to_owned(),
        )];
        assert!(matches!(
            decode_mandrill(&missing, Utc::now()),
            Err(WebhookError::Malformed {
                code: "missing_email",
                ..
            })
        ));
        assert!(
            decode_mandrill(
                &[("mandrill_events".to_owned(), "[]".to_owned())],
                Utc::now()
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn an_event_for_a_list_no_audience_has_is_marked_ignored() {
        let e = decode_mailchimp(&pairs(UNSUB), |_| None, Utc::now()).unwrap();
        assert_eq!(e.ignored, Some("unknown_list"));
        assert_eq!(e.audience, None);
    }

    #[test]
    fn a_far_future_event_is_dated_at_receipt() {
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let future = UNSUB.replace("2009-03-26+21%3A40%3A57", "9999-12-31+23%3A59%3A59");
        let e = decode_mailchimp(&pairs(&future), |_| None, now).unwrap();
        assert_eq!(e.fired_at, "2026-12-06T12:00:00.000Z");
        // A clock a little ahead of ours is left alone.
        let soon = UNSUB.replace("2009-03-26+21%3A40%3A57", "2026-12-06+12%3A04%3A00");
        let e = decode_mailchimp(&pairs(&soon), |_| None, now).unwrap();
        assert_eq!(e.fired_at, "2026-12-06T12:04:00.000Z");
        let batch = json!([{"event": "hard_bounce", "ts": 253_402_300_799_i64, "_id": "a", "msg": {"email": "a@example.org"}}]);
        let fields = vec![("mandrill_events".to_owned(), batch.to_string())];
        assert_eq!(
            decode_mandrill(&fields, now).unwrap()[0].fired_at,
            "2026-12-06T12:00:00.000Z"
        );
    }

    #[test]
    fn form_bounds_are_refused_before_anything_is_built() {
        let deep = format!("data[a]{}=1", "[b".repeat(20_000));
        let err = form_pairs(deep.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                WebhookError::Malformed {
                    code: "key_too_long",
                    ..
                }
            ),
            "{err:?}"
        );
        let deep_short = "data[a][b][c][d][e]=1";
        assert!(matches!(
            form_pairs(deep_short.as_bytes()),
            Err(WebhookError::Malformed {
                code: "too_deep",
                ..
            })
        ));
        assert!(form_pairs(b"data[merges][ADDRESS][addr1]=x").is_ok());
        let many = vec!["a=1"; MAX_FORM_PAIRS + 1].join("&");
        assert!(matches!(
            form_pairs(many.as_bytes()),
            Err(WebhookError::Malformed {
                code: "too_many_fields",
                ..
            })
        ));
        let fine = vec!["a=1"; MAX_FORM_PAIRS].join("&");
        assert_eq!(form_pairs(fine.as_bytes()).unwrap().len(), MAX_FORM_PAIRS);
    }

    #[test]
    fn mandrill_bounds_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let fields = vec![("mandrill_events".to_owned(), deep)];
        assert!(matches!(
            decode_mandrill(&fields, Utc::now()),
            Err(WebhookError::Malformed {
                code: "too_deep",
                ..
            })
        ));
        // Brackets inside strings are text, not nesting.
        assert_eq!(json_depth(r#"[{"a": "[[[[[[[[[[[[[[[[[[[[[[\"[["}]"#), 2);
        let one = json!({"event": "open", "ts": 1, "msg": {"email": "a@example.org"}});
        let many = Value::Array(vec![one; MAX_MANDRILL_EVENTS + 1]);
        let fields = vec![("mandrill_events".to_owned(), many.to_string())];
        assert!(matches!(
            decode_mandrill(&fields, Utc::now()),
            Err(WebhookError::Malformed {
                code: "too_many_events",
                ..
            })
        ));
    }
}
