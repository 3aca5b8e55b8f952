//! Constant Contact error bodies (an array, a single object, or the OAuth shape, or anything a
//! proxy puts in front): decoded into a key and a bounded detail, whatever arrives.

use mailbridge::providers::constant_contact::{ApiProblem, MAX_DETAIL};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

pub fn check_error_body(input: &[u8]) -> TestCaseResult {
    let problem = ApiProblem::decode(input);
    // The detail goes into our messages: never more than the bound (and its ellipsis).
    prop_assert!(
        problem.detail.chars().count() <= MAX_DETAIL + 1,
        "{} characters",
        problem.detail.chars().count()
    );
    if let Some(key) = &problem.key {
        prop_assert!(!key.is_empty(), "an empty key is no key");
    }
    // What a well-formed body says is what is decoded: the first item's key, and each message.
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(input)
    {
        let first_key = items.iter().find_map(|i| {
            i.get("error_key")
                .or_else(|| i.get("error"))
                .and_then(|k| k.as_str())
                .filter(|k| !k.is_empty())
        });
        if items.iter().all(|i| {
            i.as_object()
                .is_some_and(|o| o.values().all(|v| v.is_string() || v.is_null()))
        }) {
            prop_assert_eq!(problem.key.as_deref(), first_key);
        }
    }
    Ok(())
}
