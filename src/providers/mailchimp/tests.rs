//! Unit tests of the pure parts: hashing, request bodies, error classification, redaction.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::SecretString;
use serde_json::json;

use super::client::{error_from_response, format_since};
use super::wire;
use super::*;
use crate::config::MailchimpConfig;
use crate::domain::Email;

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap()
}

fn classify(status: u16, body: &str) -> ErrorKind {
    error_from_response(
        StatusCode::from_u16(status).unwrap(),
        &HeaderMap::new(),
        body.as_bytes(),
        "https://us6.api.mailchimp.com/3.0",
        now(),
    )
}

#[test]
fn subscriber_hash_is_md5_of_the_lower_cased_address() {
    // The example address of Mailchimp's docs; checked with `md5sum`.
    let h = subscriber_hash(&email("Urist.McVankab@FreddiesJokes.com"));
    assert_eq!(h.as_str(), "62eeb292278cc15f5817cb78f7790b08");
    assert_eq!(
        SubscriberHash::of_address(" URIST.mcvankab@freddiesjokes.com "),
        h
    );
    assert_eq!(SubscriberHash::parse(h.as_str()), Some(h.clone()));
    assert_eq!(
        SubscriberHash::parse("62EEB292278CC15F5817CB78F7790B08"),
        None
    );
    assert_eq!(SubscriberHash::parse("abc"), None);
}

#[test]
fn since_is_written_with_an_explicit_utc_offset() {
    assert_eq!(format_since(now()), "2015-10-21T07:28:00+00:00");
}

#[test]
fn batch_member_body_leaves_out_empty_fields_and_keeps_the_address_as_written() {
    let address = email("Ann@Example.com");
    let member = wire::BatchSubscribeMember {
        email_address: address.original(),
        status: WriteStatus::Pending.as_str(),
        merge_fields: None,
        tags: None,
    };
    assert_eq!(
        serde_json::to_value(&member).unwrap(),
        json!({"email_address": "Ann@Example.com", "status": "pending"})
    );
}

#[test]
fn status_codes_decide_the_kind_even_without_a_body() {
    assert!(matches!(classify(401, ""), ErrorKind::Unauthorized { .. }));
    assert!(matches!(classify(403, ""), ErrorKind::Forbidden { .. }));
    assert!(matches!(classify(404, "{}"), ErrorKind::NotFound { .. }));
    assert!(matches!(
        classify(429, ""),
        ErrorKind::RateLimited { retry_after: None }
    ));
    assert!(matches!(
        classify(502, "<html><body>Bad Gateway</body></html>"),
        ErrorKind::Server { status: 502, .. }
    ));
    match classify(405, "") {
        ErrorKind::Rejected { status, title, .. } => {
            assert_eq!((status, title.as_str()), (405, "Method Not Allowed"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn problem_titles_refine_400s() {
    let problem = |title: &str| {
        json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title,
               "status": 400, "detail": "d", "instance": "req-1"})
        .to_string()
    };
    assert!(matches!(
        classify(400, &problem("Member In Compliance State")),
        ErrorKind::Compliance { .. }
    ));
    assert!(matches!(
        classify(400, &problem("Forgotten Email Not Subscribed")),
        ErrorKind::Forgotten { .. }
    ));
    assert!(matches!(
        classify(400, &problem("Member Exists")),
        ErrorKind::MemberExists { .. }
    ));
    match classify(400, &problem("JSON Parse Exception")) {
        ErrorKind::Rejected { title, detail, .. } => {
            assert_eq!(title, "JSON Parse Exception");
            assert_eq!(detail, "d [request req-1]");
        }
        other => panic!("{other:?}"),
    }
    let invalid = json!({"title": "Invalid Resource", "status": 400,
        "detail": "Your merge fields were invalid.",
        "errors": [{"field": "RADIO", "message": "Please enter a value"}]});
    let kind = classify(400, &invalid.to_string());
    assert_eq!(
        kind.to_string(),
        "invalid resource (400): Your merge fields were invalid.; RADIO: Please enter a value"
    );
    assert!(matches!(kind, ErrorKind::InvalidResource { ref errors, .. } if errors.len() == 1));
}

#[test]
fn retry_after_is_read_for_429_and_5xx() {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
    let kind = error_from_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"", "b", now());
    assert!(matches!(
        kind,
        ErrorKind::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)
    ));
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:10 GMT"),
    );
    let kind = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, b"", "b", now());
    assert!(matches!(
        kind,
        ErrorKind::Server { retry_after: Some(d), .. } if d == Duration::from_secs(10)
    ));
}

#[test]
fn retryable_kinds() {
    let err = |kind| MailchimpError::new("op", Some("l1"), kind);
    assert!(err(classify(429, "")).is_retryable());
    assert!(err(classify(500, "")).is_retryable());
    assert!(err(ErrorKind::Timeout).is_retryable());
    assert!(
        err(ErrorKind::Connect {
            detail: String::new()
        })
        .is_retryable()
    );
    assert!(!err(classify(400, "")).is_retryable());
    assert!(!err(classify(401, "")).is_retryable());
    assert!(
        !err(ErrorKind::MalformedResponse {
            detail: String::new()
        })
        .is_retryable()
    );
    assert!(!err(ErrorKind::TooManyMembers { count: 501 }).is_retryable());
}

#[test]
fn errors_name_the_operation_and_list() {
    let e = MailchimpError::new("batch_subscribe", Some("abc123"), classify(500, ""));
    assert_eq!(
        e.to_string(),
        "Mailchimp batch_subscribe on list abc123 failed: server error (500)"
    );
    assert_eq!(e.code(), "server_error");
}

const KEY: &str = "0123456789abcdef0123456789abcdef-us6";

/// A client configuration with `KEY` and the default limits.
fn config(base_url: &str) -> MailchimpConfig {
    MailchimpConfig {
        api_key: SecretString::from(KEY),
        base_url: base_url.to_owned(),
        max_in_flight: 10,
        timeout_secs: 120,
    }
}

#[test]
fn debug_and_unauthorized_never_show_the_key() {
    let config = config("https://user:pw@us6.api.mailchimp.com/3.0");
    let client = MailchimpClient::new(&config).unwrap();
    let debug = format!("{client:?}");
    assert!(
        !debug.contains(KEY) && !debug.contains("0123456789abcdef"),
        "{debug}"
    );
    assert!(!debug.contains("pw@"), "{debug}");
    assert!(debug.contains("us6.api.mailchimp.com"));
    let e = MailchimpError::new(
        "ping",
        None,
        ErrorKind::Unauthorized {
            base_url: "https://us6.api.mailchimp.com/3.0".into(),
        },
    );
    assert!(!e.to_string().contains(KEY));
    assert!(e.to_string().contains("https://us6.api.mailchimp.com/3.0"));
}

#[test]
fn a_bad_base_url_is_a_setup_error() {
    let config = config("mailto:x@example.com");
    let err = MailchimpClient::new(&config).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Setup { .. }));
    assert!(!err.to_string().contains(KEY));
}

#[test]
fn batch_member_from_contact_copies_fields_and_tags() {
    let contact = crate::mapping::Contact {
        member_key: crate::domain::MemberKey::from_int(7),
        email: email("a@example.com"),
        merge_fields: BTreeMap::from([(
            "FNAME".to_owned(),
            crate::mapping::FieldValue::Text("Ann".into()),
        )]),
        tags: BTreeSet::from(["member".to_owned()]),
    };
    let m = BatchMember::from_contact(&contact, WriteStatus::Subscribed);
    assert_eq!(m.email, contact.email);
    assert_eq!(m.merge_fields, contact.merge_fields);
    assert_eq!(m.tags, contact.tags);
}

/// The engine sees a Mailchimp failure only as a [`crate::providers::ProviderError`]: how it
/// reacts (stop the run, count an archive, retry, ask whether a send may have run) is decided
/// here, once, from the Mailchimp error kind; the message is Mailchimp's own.
#[test]
fn a_mailchimp_error_becomes_the_engines_provider_error() {
    use crate::providers::{ProviderError, Reaction};
    let detail = String::new;
    let rows: Vec<(&str, ErrorKind, Reaction, bool, bool)> = vec![
        // (case, kind, reaction, retryable, may have run)
        (
            "bad key",
            ErrorKind::Unauthorized {
                base_url: "https://us6.api.mailchimp.com/3.0".into(),
            },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "forbidden",
            ErrorKind::Forbidden { detail: detail() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "setup",
            ErrorKind::Setup { detail: detail() },
            Reaction::Stop,
            false,
            false,
        ),
        (
            "cannot archive",
            ErrorKind::CannotArchive { detail: detail() },
            Reaction::CannotArchive,
            false,
            false,
        ),
        (
            "not found",
            ErrorKind::NotFound { detail: detail() },
            Reaction::NotFound,
            false,
            false,
        ),
        (
            "compliance",
            ErrorKind::Compliance { detail: detail() },
            Reaction::Failed,
            false,
            false,
        ),
        (
            "rate limited",
            ErrorKind::RateLimited { retry_after: None },
            Reaction::Failed,
            true,
            false,
        ),
        ("timeout", ErrorKind::Timeout, Reaction::Failed, true, true),
        (
            "closed",
            ErrorKind::ConnectionClosed { detail: detail() },
            Reaction::Failed,
            true,
            true,
        ),
        (
            "server error",
            ErrorKind::Server {
                status: 503,
                detail: detail(),
                retry_after: None,
            },
            Reaction::Failed,
            true,
            true,
        ),
        (
            "no connection",
            ErrorKind::Connect { detail: detail() },
            Reaction::Failed,
            true,
            false,
        ),
    ];
    for (case, kind, reaction, retryable, may_have_run) in rows {
        let code = kind.code();
        let mailchimp = MailchimpError::new("archive_member", Some("L1"), kind);
        let message = mailchimp.to_string();
        let e = ProviderError::from(mailchimp);
        assert_eq!(e.reaction(), reaction, "{case}");
        assert_eq!(e.is_retryable(), retryable, "{case}");
        assert_eq!(e.may_have_run_there(), may_have_run, "{case}");
        assert_eq!(e.code(), code, "{case}");
        assert_eq!(e.operation(), "archive_member", "{case}");
        assert_eq!(e.provider_name(), "Mailchimp", "{case}");
        assert_eq!(e.to_string(), message, "{case}");
    }
}

/// A batch's answer, member by member in the order sent: a refusal is matched by subscriber hash
/// (Mailchimp may respell the address), an address Mailchimp calls fake or invalid is marked so
/// later runs skip it, another refusal keeps Mailchimp's code, and a member the answer lists as
/// created or updated gets the status it gives.
#[test]
fn a_batch_answer_becomes_one_outcome_per_member_sent() {
    use crate::providers::{MemberRefusal, UpsertOutcome};
    let member = |address: &str| BatchMember {
        email: email(address),
        status: WriteStatus::Subscribed,
        merge_fields: BTreeMap::new(),
        tags: BTreeSet::new(),
    };
    let batch = [
        member("ok@example.org"),
        member("Fake@Example.org"),
        member("odd@example.org"),
        member("quiet@example.org"),
    ];
    let refused =
        |address: &str, error: &str, code: Option<&str>, field: Option<&str>| BatchMemberError {
            email_address: address.into(),
            error: error.into(),
            error_code: code.map(Into::into),
            field: field.map(Into::into),
            field_message: None,
        };
    let result = BatchResult {
        created: vec![BatchMemberOutcome {
            email_address: "ok@example.org".into(),
            id: SubscriberHash::of_address("ok@example.org"),
            status: crate::domain::SubscriptionStatus::Pending,
        }],
        updated: Vec::new(),
        errors: vec![
            refused(
                "FAKE@example.ORG",
                "fake@example.org looks fake or invalid, please enter a real email address.",
                Some("ERROR_GENERIC"),
                None,
            ),
            refused(
                "odd@example.org",
                "Your merge fields were invalid.",
                Some("ERROR_GENERIC"),
                Some("BIRTHDAY"),
            ),
        ],
        total_created: 1,
        total_updated: 0,
        error_count: 2,
    };
    assert_eq!(
        super::engine::outcomes(&batch, &result),
        vec![
            UpsertOutcome::Accepted(Some(crate::domain::SubscriptionStatus::Pending)),
            UpsertOutcome::Refused(MemberRefusal {
                code: "provider_invalid_email".into(),
                message:
                    "fake@example.org looks fake or invalid, please enter a real email address."
                        .into(),
                invalid_address: true,
            }),
            UpsertOutcome::Refused(MemberRefusal {
                code: "ERROR_GENERIC".into(),
                message: "Your merge fields were invalid.".into(),
                invalid_address: false,
            }),
            UpsertOutcome::Accepted(None),
        ]
    );
}

mod batch_results {
    use std::collections::HashSet;
    use std::io::Write;

    use super::super::client::unpack_results;

    /// A gzipped tar of `(name, bytes)` entries.
    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *bytes).unwrap();
        }
        let mut gz = tar.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn results_are_read_by_operation_id_and_hostile_entries_are_skipped() {
        let results = br#"[
            {"status_code": 200, "operation_id": "member-0", "response": "{\"status\":\"subscribed\"}"},
            {"status_code": 400, "operation_id": "member-1", "response": "{\"title\":\"Invalid Resource\"}"},
            {"status_code": 200, "operation_id": "someone-else", "response": "{}"},
            {"status_code": "two hundred", "operation_id": "member-2"},
            {"status_code": 500, "operation_id": "member-0", "response": "{}"}
        ]"#;
        let gz = archive(&[
            ("x/readme.txt", b"not json"),
            ("x/broken.json", b"{\"not\": \"an array\""),
            ("x/0.json", results),
        ]);
        let wanted: HashSet<&str> = ["member-0", "member-1", "member-2"].into();
        let got = unpack_results(&gz, &wanted).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got["member-0"].status_code, 200,
            "the first result of an id wins"
        );
        assert_eq!(got["member-0"].response, "{\"status\":\"subscribed\"}");
        assert_eq!(got["member-1"].status_code, 400);
        assert!(!got.contains_key("someone-else"));
    }

    #[test]
    fn an_archive_that_is_not_a_gzipped_tar_is_an_error_not_a_panic() {
        let wanted: HashSet<&str> = ["member-0"].into();
        assert!(unpack_results(b"plain text", &wanted).is_err());
        let mut gz = archive(&[("x/0.json", b"[]")]);
        gz.truncate(gz.len() / 2);
        assert!(unpack_results(&gz, &wanted).is_err());
    }
}
