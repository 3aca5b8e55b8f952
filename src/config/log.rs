//! `[log]`: how log lines are written. Logging starts before the config is loaded, so
//! [`format_in_file`] reads this one key on its own first; the full load checks it like any other.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Option<Raw>,
}

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, `target`, the event's fields
    /// and its spans' fields (run, job, message ids).
    Json,
}

const FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(name: &str) -> Option<LogFormat> {
        FORMATS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The names `parse` takes.
    pub fn names() -> [&'static str; 2] {
        [FORMATS[0].0, FORMATS[1].0]
    }
}

/// `[log]` (defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl LogConfig {
    pub(super) fn read(l: &Loader<'_>, raw: Option<&RawLog>) -> Result<LogConfig, ConfigError> {
        let format = match raw.and_then(|r| r.format.as_ref()) {
            None => LogFormat::default(),
            Some(r) => l.choice(r, "log.format", "log format", FORMATS)?,
        };
        Ok(LogConfig { format })
    }
}

/// `[log] format` of the config file at `path`, read before logging starts (`${ENV}` expanded
/// from the process environment). `None` when the file is missing, unreadable or the key is not
/// a known format: the command's own config load reports a broken file, and until then the log
/// is text.
pub fn format_in_file(path: &Path) -> Option<LogFormat> {
    #[derive(Deserialize)]
    struct OnlyLog {
        log: Option<OnlyFormat>,
    }
    #[derive(Deserialize)]
    struct OnlyFormat {
        format: Option<String>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let only: OnlyLog = toml::from_str(&text).ok()?;
    let raw = only.log?.format?;
    let value = super::expand_env(&raw, &|name| std::env::var(name).ok()).ok()?;
    LogFormat::parse(&value)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, assert_refused, parse};
    use super::*;

    #[test]
    fn text_by_default_json_when_asked_and_other_names_refused() {
        assert_eq!(parse(BASE).log.format, LogFormat::Text);
        assert_eq!(
            parse(&format!("{BASE}[log]\nformat = \"json\"\n"))
                .log
                .format,
            LogFormat::Json
        );
        assert_refused(
            BASE,
            &[
                (
                    "[log]\nformat = \"xml\"\n",
                    "mb.toml:5: `log.format`: unknown log format `xml`: expected \"text\" or \"json\"",
                ),
                (
                    "[log]\nlevel = \"debug\"\n",
                    "mb.toml: TOML parse error at line 5, column 1\n  |\n5 | level = \"debug\"\n  | ^^^^^\nunknown field `level`, expected `format`",
                ),
            ],
        );
    }

    #[test]
    fn the_format_is_read_from_a_file_before_the_rest_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mb.toml");
        assert_eq!(format_in_file(&path), None, "no file");
        // The rest of the file need not be valid: only `[log]` is read here.
        std::fs::write(&path, "[log]\nformat = \"json\"\n[members]\nnonsense = 1\n").unwrap();
        assert_eq!(format_in_file(&path), Some(LogFormat::Json));
        std::fs::write(&path, "[log]\nformat = \"yaml\"\n").unwrap();
        assert_eq!(format_in_file(&path), None);
        std::fs::write(&path, "[members]\n").unwrap();
        assert_eq!(format_in_file(&path), None);
    }
}
