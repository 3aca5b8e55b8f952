//! What the section tests share: a smallest valid file and readers that return the config or the
//! error's exact text.

use std::path::Path;

use super::Config;

/// `[members]`, the one section every file has: three lines, so a section appended starts at 4.
pub(super) const BASE: &str = "[members]\nurl = \"sqlite://m.db\"\nmapping = \"m.toml\"\n";

fn lookup(name: &str) -> Option<String> {
    (name == "SET").then(|| "v".to_owned())
}

/// `text`, read as `mb.toml`; panics with the error when it does not load.
pub(super) fn parse(text: &str) -> Config {
    Config::from_str_with_env(Path::new("mb.toml"), text, &lookup)
        .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
}

/// The error `text` is refused with, read as `mb.toml`.
pub(super) fn error(text: &str) -> String {
    match Config::from_str_with_env(Path::new("mb.toml"), text, &lookup) {
        Ok(_) => panic!("loaded, but should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Each case, appended to `prefix`, is refused with exactly the text given.
pub(super) fn assert_refused<S: AsRef<str>>(prefix: &str, cases: &[(S, &str)]) {
    for (section, expected) in cases {
        let section = section.as_ref();
        assert_eq!(error(&format!("{prefix}{section}")), *expected, "{section}");
    }
}
