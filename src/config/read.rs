//! Reading one key with its line: the helpers every section uses, so that each check (a required
//! or optional string, a secret, a URL, a path, one of a few names, a number within a range) is
//! written once and its error names the file, the line and the key the same way everywhere.

use std::fmt::Display;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use toml::Spanned;

use super::{ConfigError, DbUrl, expand_env};

/// A value that may be written as `${ENV_VAR}` (or contain such references), with its position.
pub(super) type Raw = Spanned<String>;

/// The file being read: where errors point, and how `${ENV}` references are answered.
pub(super) struct Loader<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Loader<'_> {
    /// The config file's folder: relative paths in the file are resolved against it.
    pub(super) fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub(super) fn invalid(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The value with `${ENV}` expanded; it may be empty.
    pub(super) fn string(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        expand_env(raw.get_ref(), self.lookup).map_err(|m| self.invalid(raw.span(), key, m))
    }

    pub(super) fn nonempty(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        let value = self.string(raw, key)?;
        if value.trim().is_empty() {
            return Err(self.invalid(raw.span(), key, "must not be empty"));
        }
        Ok(value)
    }

    /// A non-empty value held so that `Debug` never shows it.
    pub(super) fn secret(&self, raw: &Raw, key: &str) -> Result<SecretString, ConfigError> {
        self.nonempty(raw, key).map(SecretString::from)
    }

    /// A non-empty path, resolved against the config file's folder.
    pub(super) fn path(&self, raw: &Raw, key: &str) -> Result<PathBuf, ConfigError> {
        Ok(self.base_dir().join(self.nonempty(raw, key)?))
    }

    pub(super) fn db_url(&self, raw: &Raw, key: &str) -> Result<DbUrl, ConfigError> {
        let value = self.nonempty(raw, key)?;
        DbUrl::parse(&value, self.base_dir()).map_err(|m| self.invalid(raw.span(), key, m))
    }

    /// An `http://` or `https://` URL, without its trailing slashes.
    pub(super) fn http_url(&self, raw: &Raw, key: &str) -> Result<String, ConfigError> {
        let value = self.nonempty(raw, key)?;
        match url::Url::parse(&value) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                Ok(value.trim_end_matches('/').to_owned())
            }
            _ => Err(self.invalid(raw.span(), key, "expected an http:// or https:// URL")),
        }
    }

    /// A positive duration written as a whole number and a unit: `90s`, `15m`, `1h`.
    pub(super) fn duration(&self, raw: &Raw, key: &str) -> Result<Duration, ConfigError> {
        let value = self.nonempty(raw, key)?;
        parse_duration(value.trim()).ok_or_else(|| {
            self.invalid(
                raw.span(),
                key,
                "expected a duration such as \"90s\", \"15m\" or \"1h\"",
            )
        })
    }

    /// An optional key read with `read` (one of the readers above).
    pub(super) fn optional<T>(
        &self,
        raw: &Option<Raw>,
        key: &str,
        read: impl FnOnce(&Self, &Raw, &str) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        raw.as_ref().map(|r| read(self, r, key)).transpose()
    }

    /// One of a few names; anything else is an "unknown `noun`" naming the ones allowed.
    pub(super) fn choice<T: Copy>(
        &self,
        raw: &Raw,
        key: &str,
        noun: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let value = self.string(raw, key)?;
        match choices.iter().find(|(name, _)| *name == value) {
            Some((_, chosen)) => Ok(*chosen),
            None => Err(self.invalid(
                raw.span(),
                key,
                format!("unknown {noun} `{value}`: expected {}", one_of(choices)),
            )),
        }
    }

    /// An optional number within `range` (else `message`), or `default`.
    pub(super) fn within<T: PartialOrd + Copy>(
        &self,
        value: &Option<Spanned<T>>,
        key: &str,
        range: RangeInclusive<T>,
        message: &str,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if !range.contains(v.get_ref()) => Err(self.invalid(v.span(), key, message)),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        }
    }

    /// An optional whole number that must be at least 1, or `default`.
    pub(super) fn positive(
        &self,
        value: &Option<Spanned<u64>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        self.within(value, key, 1..=u64::MAX, "must be at least 1", default)
    }

    /// An optional number within `range` ("expected 1 to 64"), or `default`.
    pub(super) fn bounded<T: PartialOrd + Copy + Display>(
        &self,
        value: &Option<Spanned<T>>,
        key: &str,
        range: RangeInclusive<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        let message = format!("expected {} to {}", range.start(), range.end());
        self.within(value, key, range, &message, default)
    }
}

/// An optional value that needs no check.
/// `90s`, `15m`, `1h` (a whole number above 0 and one unit); `None` for anything else.
fn parse_duration(text: &str) -> Option<Duration> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

pub(super) fn value<T: Copy>(v: &Option<Spanned<T>>) -> Option<T> {
    v.as_ref().map(|v| *v.get_ref())
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn one_of<T>(choices: &[(&str, T)]) -> String {
    let quoted: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit_and_a_positive_whole_number() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in [
            "",
            "m",
            "15",
            "0s",
            "1.5h",
            "15 m",
            "-1m",
            "1d",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn choices_are_listed_as_an_editor_would_say_them() {
        assert_eq!(one_of(&[("a", 1)]), "\"a\"");
        assert_eq!(one_of(&[("a", 1), ("b", 2)]), "\"a\" or \"b\"");
        assert_eq!(
            one_of(&[("a", 1), ("b", 2), ("c", 3)]),
            "\"a\", \"b\" or \"c\""
        );
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
