//! Targets for the two webhook decoders: Mailchimp list webhooks (form bodies) and Mailchimp
//! Transactional batches (`mandrill_events` JSON). Whatever the bytes, decoding returns, stays
//! within its bounds, selects no member, and dates nothing far in the future.

use chrono::{DateTime, Duration, Utc};
use mailbridge::providers::mailchimp::webhook::{
    MAX_FORM_DEPTH, MAX_FORM_KEY_BYTES, MAX_FORM_PAIRS, MAX_FUTURE_SECS, MAX_MANDRILL_EVENTS,
    decode_mailchimp, decode_mandrill, form_pairs,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

fn not_in_the_future(fired_at: &str, now: DateTime<Utc>) -> TestCaseResult {
    let at = DateTime::parse_from_rfc3339(fired_at)
        .map_err(|e| TestCaseError::fail(format!("fired_at `{fired_at}` is not RFC 3339: {e}")))?;
    prop_assert!(
        at <= now + Duration::seconds(MAX_FUTURE_SECS),
        "fired_at {fired_at} is more than {MAX_FUTURE_SECS} s after {now}"
    );
    Ok(())
}

pub fn check_mailchimp_form(input: &[u8]) -> TestCaseResult {
    let now = Utc::now();
    let Ok(pairs) = form_pairs(input) else {
        return Ok(());
    };
    prop_assert!(pairs.len() <= MAX_FORM_PAIRS);
    for (key, _) in &pairs {
        prop_assert!(
            key.len() <= MAX_FORM_KEY_BYTES,
            "key of {} bytes",
            key.len()
        );
        prop_assert!(
            key.matches('[').count() <= MAX_FORM_DEPTH,
            "key `{key}` too deep"
        );
    }
    let known = |list: &str| (list == "a6b5da1054").then(|| "news".to_owned());
    if let Ok(event) = decode_mailchimp(&pairs, known, now) {
        prop_assert_eq!(event.member_key, None, "a body selected a member");
        prop_assert!(!event.verified);
        prop_assert_eq!(
            event.ignored.is_some(),
            event.audience.is_none(),
            "an event of an unknown list must be ignored, and only such an event"
        );
        not_in_the_future(&event.fired_at, now)?;
        if let Some(email) = &event.email {
            prop_assert_eq!(email.trim().to_lowercase(), email.clone());
        }
        prop_assert!(serde_json::from_str::<serde_json::Value>(&event.payload).is_ok());
    }
    Ok(())
}

pub fn check_mandrill_json(input: &[u8]) -> TestCaseResult {
    let now = Utc::now();
    let fields = vec![(
        "mandrill_events".to_owned(),
        String::from_utf8_lossy(input).into_owned(),
    )];
    if let Ok(events) = decode_mandrill(&fields, now) {
        prop_assert!(events.len() <= MAX_MANDRILL_EVENTS);
        for event in &events {
            prop_assert!(event.verified, "a signed batch's events are verified");
            prop_assert_eq!(event.member_key.as_deref(), None);
            not_in_the_future(&event.fired_at, now)?;
        }
    }
    Ok(())
}
