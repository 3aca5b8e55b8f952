//! `${ENV}` expansion of config values, and whole `mailbridge.toml` files through the loader.

use std::path::Path;

use mailbridge::config::{Config, ConfigError, DbUrl, expand_env};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

use crate::harness::text;

/// The environment the targets see. Values are distinctive (`Zq9`) so a leak is easy to spot, and
/// some contain expansion syntax that must come out verbatim (expansion is one pass).
const VARS: &[(&str, &str)] = &[
    ("DB_PASSWORD", "s3cr3t-Zq9-db"),
    ("DB_USER", "club"),
    ("DB_HOST", "db.example"),
    ("STATE_DB_PASSWORD", "st4te-Zq9"),
    ("MAILCHIMP_API_KEY", "0123456789abcdefZq9-us6"),
    ("SMTP_USER", "ac12345"),
    ("SMTP_PASSWORD", "smtp-Zq9-pass"),
    ("SMTP_HOST", "mail.example"),
    ("MAILBRIDGE_API_TOKEN", "tok-Zq9"),
    ("MAILBRIDGE_WEBHOOK_SECRET", "hook-Zq9"),
    ("VERP_SECRET", "verp-Zq9"),
    ("CC_CLIENT_ID", "cc-client"),
    ("CC_REFRESH_TOKEN", "cc-refresh-Zq9"),
    ("MANDRILL_API_KEY", "md-Zq9"),
    ("MANDRILL_WEBHOOK_KEY", "mdhook-Zq9"),
    ("PUBLIC_HOST", "club.example"),
    ("CLUB_FROM", "club@club.example"),
    ("HOME", "/home/Zq9"),
    ("A", "${A}"),
    ("DOLLARS", "x$${DB_PASSWORD}$$y}{"),
];

fn lookup(name: &str) -> Option<String> {
    VARS.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| (*v).to_owned())
}

/// What expansion must do, written independently of the implementation: one pass over the
/// characters; `$$` is `$`; `${NAME}` with NAME of ASCII letters, digits and `_` is replaced by its
/// value; any other `$` stays. Errors name the `$`'s character position (1-based), never the text
/// between the braces (a literal secret that happens to contain `${` must not be echoed).
pub fn model(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let at = i + 1;
                let Some(len) = chars[i + 2..].iter().position(|&c| c == '}') else {
                    return Err(format!(
                        "`${{` at character {at} is not closed by `}}` (write `$$` for a literal `$`)"
                    ));
                };
                let name: String = chars[i + 2..i + 2 + len].iter().collect();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "`${{…}}` at character {at} is not a valid environment variable name: use letters, digits and `_` (write `$$` for a literal `$`)"
                    ));
                }
                match lookup(&name) {
                    Some(v) => out.push_str(&v),
                    None => return Err(format!("environment variable {name} is not set")),
                }
                i += 2 + len + 1;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

pub fn check_value(input: &[u8]) -> TestCaseResult {
    let value = text(input);
    let got = expand_env(&value, &lookup);
    prop_assert_eq!(&got, &model(&value, &lookup), "value {:?}", value);
    if !value.contains('$') {
        prop_assert_eq!(got.as_deref(), Ok(value.as_str()), "no `$`: identity");
    }
    if let Err(message) = &got {
        // The secrets are the values marked `Zq9`: an error may name the unset variable, and
        // a name from the input can contain a plain value such as `club` (`${clubPUBLIC_HOST}`).
        for (_, secret) in VARS.iter().filter(|(_, v)| v.contains("Zq9")) {
            prop_assert!(
                !message.contains(secret),
                "a variable's value leaked into {message:?}"
            );
        }
    }
    // Doubling every `$` is how a literal is written; it always comes back unchanged.
    let escaped = value.replace('$', "$$");
    prop_assert_eq!(expand_env(&escaped, &lookup), Ok(value.clone()));
    Ok(())
}

/// A redacted URL shows `***` wherever the driver would find a password. (Text that only looks
/// like a password, as in `postgres://postgres://u:pw@h/db`, is not a password to the driver and
/// shows: see the report of issue 24's fuzzing.)
fn redacted(url: &DbUrl) -> TestCaseResult {
    let (Ok(real), Ok(shown)) = (
        url::Url::parse(url.expose()),
        url::Url::parse(&url.to_string()),
    ) else {
        return Ok(());
    };
    if real.password().is_some_and(|p| !p.is_empty()) {
        prop_assert_eq!(shown.password(), Some("***"), "{} shows its password", url);
    }
    for (k, v) in real.query_pairs() {
        if k == "password" && !v.is_empty() {
            prop_assert!(
                shown
                    .query_pairs()
                    .any(|(k, v)| k == "password" && v == "***"),
                "{url} shows its password parameter"
            );
        }
    }
    prop_assert_eq!(format!("{url:?}"), format!("DbUrl({url})"));
    Ok(())
}

pub fn check_config_file(input: &[u8]) -> TestCaseResult {
    let text = text(input);
    let path = Path::new("fuzz/mailbridge.toml");
    match Config::from_str_with_env(path, &text, &lookup) {
        Ok(cfg) => {
            redacted(&cfg.state.url)?;
            redacted(&cfg.members.url)?;
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(
                message.starts_with("fuzz/mailbridge.toml"),
                "the error names the file: {message}"
            );
            if let ConfigError::Invalid { line, key, .. } = &e {
                let lines = text.lines().count().max(1);
                prop_assert!(
                    (1..=lines + 1).contains(line),
                    "line {line} of {lines}: {message}"
                );
                prop_assert!(!key.is_empty(), "{message}");
            }
        }
    }
    Ok(())
}
