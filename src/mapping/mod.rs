//! `mappings/*.toml`: which query reads the members, which columns are the key, the address and
//! the consent, which members belong to each audience, how columns become merge fields and tags,
//! and the writeback statements. Validated when loaded; every error names the file, the line or
//! key, and what was expected. [`render`] turns a member row into a provider-neutral contact.

mod render;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;

pub use render::{CompiledAudience, CompiledSource, Contact, FieldValue, RenderError, Selection};
pub use sql::NamedSql;

/// Why a mapping could not be loaded or does not fit the source. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read, parsed or validated, as a config file could not.
    #[error(transparent)]
    File(#[from] ConfigError),
    #[error("{path}: `{key}`: {message}")]
    Columns {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    source: RawSource,
    #[serde(default)]
    audiences: BTreeMap<String, RawAudience>,
    #[serde(default)]
    writeback: RawWriteback,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    query: Spanned<String>,
    key: Spanned<String>,
    email: Spanned<String>,
    consent: Spanned<String>,
    consent_at: Option<Spanned<String>>,
    updated_at: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    #[serde(default, rename = "where")]
    conditions: Vec<Spanned<RawCondition>>,
    key_field: Option<Spanned<String>>,
    #[serde(default)]
    merge_fields: Vec<Spanned<RawMergeField>>,
    #[serde(default)]
    tags: Vec<Spanned<RawTag>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    column: String,
    equals: Option<toml::Value>,
    not_equals: Option<toml::Value>,
    #[serde(rename = "in")]
    any_of: Option<Vec<toml::Value>>,
    not_in: Option<Vec<toml::Value>>,
    is_null: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMergeField {
    tag: String,
    column: String,
    #[serde(rename = "type", default = "default_field_type")]
    kind: String,
    name: Option<String>,
}

fn default_field_type() -> String {
    "text".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTag {
    /// A fixed tag name, applied when `when` holds.
    name: Option<String>,
    when: Option<RawCondition>,
    /// One tag per value of this column, restricted to `values` (the tags the mapping owns).
    from_column: Option<String>,
    values: Option<Vec<toml::Value>>,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWriteback {
    unsubscribed: Option<Spanned<String>>,
    cleaned: Option<Spanned<String>>,
    complained: Option<Spanned<String>>,
    email_changed: Option<Spanned<String>>,
}

/// A loaded, validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub path: PathBuf,
    pub source: SourceSpec,
    pub audiences: BTreeMap<String, AudienceMapping>,
    pub writeback: Writeback,
}

#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub query: String,
    pub key: String,
    pub email: String,
    pub consent: String,
    /// When the member last gave consent (optional): evidence for a re-consent after an opt-out.
    pub consent_at: Option<String>,
    /// When the row last changed (optional). Read, but never evidence of consent: any profile
    /// edit moves it.
    pub updated_at: Option<String>,
}

/// A comparison on one column; values compare as text (`true`/`false` for booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    IsNull(String, bool),
}

impl Condition {
    pub fn column(&self) -> &str {
        match self {
            Condition::Equals(c, _)
            | Condition::NotEquals(c, _)
            | Condition::In(c, _)
            | Condition::NotIn(c, _)
            | Condition::IsNull(c, _) => c,
        }
    }
}

/// Mailchimp merge field types the mapping can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Number,
    Date,
    Birthday,
    Phone,
    Url,
    Zip,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Date => "date",
            FieldType::Birthday => "birthday",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
            FieldType::Zip => "zip",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MergeFieldSpec {
    pub tag: String,
    pub name: String,
    pub column: String,
    pub kind: FieldType,
}

#[derive(Debug, Clone)]
pub enum TagRule {
    Fixed {
        name: String,
        when: Option<Condition>,
    },
    FromColumn {
        column: String,
        values: Vec<String>,
        prefix: String,
    },
}

#[derive(Debug, Clone)]
pub struct AudienceMapping {
    pub name: String,
    pub conditions: Vec<Condition>,
    /// The merge field that carries the member key to the provider.
    pub key_field: String,
    pub merge_fields: Vec<MergeFieldSpec>,
    pub tags: Vec<TagRule>,
}

impl AudienceMapping {
    /// Every tag this mapping may set: the only tags a sync adds or removes.
    pub fn owned_tags(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for rule in &self.tags {
            match rule {
                TagRule::Fixed { name, .. } => {
                    out.insert(name.clone());
                }
                TagRule::FromColumn { values, prefix, .. } => {
                    out.extend(values.iter().map(|v| format!("{prefix}{v}")));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default)]
pub struct Writeback {
    pub unsubscribed: Option<NamedSql>,
    pub cleaned: Option<NamedSql>,
    pub complained: Option<NamedSql>,
    pub email_changed: Option<NamedSql>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn toml_text(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, integer or boolean, found {}",
            other.type_str()
        )),
    }
}

fn condition(raw: &RawCondition) -> Result<Condition, String> {
    if !is_identifier(&raw.column) {
        return Err(format!("`{}` is not a column name", raw.column));
    }
    let col = raw.column.clone();
    let ops = [
        raw.equals.is_some(),
        raw.not_equals.is_some(),
        raw.any_of.is_some(),
        raw.not_in.is_some(),
        raw.is_null.is_some(),
    ];
    if ops.iter().filter(|x| **x).count() != 1 {
        return Err("expected exactly one of equals, not_equals, in, not_in, is_null".into());
    }
    let list = |vs: &Vec<toml::Value>| vs.iter().map(toml_text).collect::<Result<Vec<_>, _>>();
    Ok(if let Some(v) = &raw.equals {
        Condition::Equals(col, toml_text(v)?)
    } else if let Some(v) = &raw.not_equals {
        Condition::NotEquals(col, toml_text(v)?)
    } else if let Some(vs) = &raw.any_of {
        Condition::In(col, list(vs)?)
    } else if let Some(vs) = &raw.not_in {
        Condition::NotIn(col, list(vs)?)
    } else {
        Condition::IsNull(col, raw.is_null.unwrap_or(true))
    })
}

fn is_merge_tag(s: &str) -> bool {
    // Mailchimp merge tags: up to 10 characters, upper-case letters, digits and `_`.
    (1..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && s.as_bytes()[0].is_ascii_uppercase()
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = crate::config::read_file("mapping", path)?;
        Mapping::from_str(path, &text)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<Mapping, MappingError> {
        let raw: RawMapping = crate::config::parse_toml(path, text)?;
        let invalid = |span: std::ops::Range<usize>, key: &str, message: String| {
            MappingError::File(ConfigError::Invalid {
                path: path.to_owned(),
                line: crate::config::line_of(text, span.start),
                key: key.to_owned(),
                message,
            })
        };

        let col = |s: &Spanned<String>, key: &str| -> Result<String, MappingError> {
            let v = s.get_ref().trim();
            if is_identifier(v) {
                Ok(v.to_owned())
            } else {
                Err(invalid(
                    s.span(),
                    key,
                    format!("expected a column name (letters, digits, `_`), found `{v}`"),
                ))
            }
        };
        let query = raw
            .source
            .query
            .get_ref()
            .trim()
            .trim_end_matches(';')
            .to_owned();
        if query.is_empty() {
            return Err(invalid(
                raw.source.query.span(),
                "source.query",
                "the query is empty".into(),
            ));
        }
        if !query.to_ascii_lowercase().starts_with("select")
            && !query.to_ascii_lowercase().starts_with("with")
        {
            return Err(invalid(
                raw.source.query.span(),
                "source.query",
                "expected a SELECT (or WITH … SELECT) query".into(),
            ));
        }
        if query.contains(';') && NamedSql::parse(&query).is_err() {
            return Err(invalid(
                raw.source.query.span(),
                "source.query",
                "only one statement is allowed".into(),
            ));
        }
        let source = SourceSpec {
            query,
            key: col(&raw.source.key, "source.key")?,
            email: col(&raw.source.email, "source.email")?,
            consent: col(&raw.source.consent, "source.consent")?,
            consent_at: raw
                .source
                .consent_at
                .as_ref()
                .map(|c| col(c, "source.consent_at"))
                .transpose()?,
            updated_at: raw
                .source
                .updated_at
                .as_ref()
                .map(|u| col(u, "source.updated_at"))
                .transpose()?,
        };

        let mut audiences = BTreeMap::new();
        for (name, a) in &raw.audiences {
            let base = format!("audiences.{name}");
            let mut conditions = Vec::new();
            for (i, c) in a.conditions.iter().enumerate() {
                conditions.push(
                    condition(c.get_ref())
                        .map_err(|m| invalid(c.span(), &format!("{base}.where[{i}]"), m))?,
                );
            }
            let key_field = match &a.key_field {
                Some(k) if !is_merge_tag(k.get_ref()) => {
                    return Err(invalid(
                        k.span(),
                        &format!("{base}.key_field"),
                        format!(
                            "`{}` is not a merge tag: expected 1-10 upper-case letters, digits or `_`",
                            k.get_ref()
                        ),
                    ));
                }
                Some(k) => k.get_ref().clone(),
                None => "MBRKEY".to_owned(),
            };
            let mut merge_fields: Vec<MergeFieldSpec> = Vec::new();
            for (i, f) in a.merge_fields.iter().enumerate() {
                let key = format!("{base}.merge_fields[{i}]");
                let raw_f = f.get_ref();
                if !is_merge_tag(&raw_f.tag) {
                    return Err(invalid(
                        f.span(),
                        &format!("{key}.tag"),
                        format!(
                            "`{}` is not a merge tag: expected 1-10 upper-case letters, digits or `_`",
                            raw_f.tag
                        ),
                    ));
                }
                if ["EMAIL", key_field.as_str()].contains(&raw_f.tag.as_str())
                    || merge_fields.iter().any(|m| m.tag == raw_f.tag)
                {
                    return Err(invalid(
                        f.span(),
                        &format!("{key}.tag"),
                        format!("merge tag `{}` is used twice (or is reserved)", raw_f.tag),
                    ));
                }
                if !is_identifier(&raw_f.column) {
                    return Err(invalid(
                        f.span(),
                        &format!("{key}.column"),
                        format!("`{}` is not a column name", raw_f.column),
                    ));
                }
                let kind = match raw_f.kind.as_str() {
                    "text" => FieldType::Text,
                    "number" => FieldType::Number,
                    "date" => FieldType::Date,
                    "birthday" => FieldType::Birthday,
                    "phone" => FieldType::Phone,
                    "url" => FieldType::Url,
                    "zip" => FieldType::Zip,
                    other => {
                        return Err(invalid(
                            f.span(),
                            &format!("{key}.type"),
                            format!(
                                "unknown merge field type `{other}`: expected text, number, date, birthday, phone, url or zip"
                            ),
                        ));
                    }
                };
                merge_fields.push(MergeFieldSpec {
                    tag: raw_f.tag.clone(),
                    name: raw_f.name.clone().unwrap_or_else(|| raw_f.tag.clone()),
                    column: raw_f.column.clone(),
                    kind,
                });
            }
            let mut tags = Vec::new();
            for (i, t) in a.tags.iter().enumerate() {
                let key = format!("{base}.tags[{i}]");
                let r = t.get_ref();
                let rule = match (&r.name, &r.from_column) {
                    (Some(name), None) if r.values.is_none() && r.prefix.is_empty() => {
                        if name.trim().is_empty() || name.len() > 100 {
                            return Err(invalid(
                                t.span(),
                                &format!("{key}.name"),
                                "a tag name is 1 to 100 characters".into(),
                            ));
                        }
                        TagRule::Fixed {
                            name: name.trim().to_owned(),
                            when: r
                                .when
                                .as_ref()
                                .map(condition)
                                .transpose()
                                .map_err(|m| invalid(t.span(), &format!("{key}.when"), m))?,
                        }
                    }
                    (None, Some(column)) if r.when.is_none() => {
                        if !is_identifier(column) {
                            return Err(invalid(
                                t.span(),
                                &format!("{key}.from_column"),
                                format!("`{column}` is not a column name"),
                            ));
                        }
                        let values = r
                            .values
                            .as_ref()
                            .ok_or_else(|| {
                                invalid(
                                    t.span(),
                                    &format!("{key}.values"),
                                    "list the column values that become tags (the tags this mapping owns)".into(),
                                )
                            })?
                            .iter()
                            .map(toml_text)
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|m| invalid(t.span(), &format!("{key}.values"), m))?;
                        TagRule::FromColumn {
                            column: column.clone(),
                            values,
                            prefix: r.prefix.clone(),
                        }
                    }
                    _ => {
                        return Err(invalid(
                            t.span(),
                            &key,
                            "expected either `name` (with optional `when`) or `from_column` with `values` (and optional `prefix`)".into(),
                        ));
                    }
                };
                tags.push(rule);
            }
            audiences.insert(
                name.clone(),
                AudienceMapping {
                    name: name.clone(),
                    conditions,
                    key_field,
                    merge_fields,
                    tags,
                },
            );
        }

        let stmt = |s: &Option<Spanned<String>>,
                    key: &str,
                    required: &[&str]|
         -> Result<Option<NamedSql>, MappingError> {
            let Some(s) = s else { return Ok(None) };
            let parsed = NamedSql::parse(s.get_ref()).map_err(|m| invalid(s.span(), key, m))?;
            for r in required {
                if !parsed.parameters().contains(r) {
                    return Err(invalid(
                        s.span(),
                        key,
                        format!("the statement must use :{r}"),
                    ));
                }
            }
            Ok(Some(parsed))
        };
        let writeback = Writeback {
            unsubscribed: stmt(
                &raw.writeback.unsubscribed,
                "writeback.unsubscribed",
                &["member_key"],
            )?,
            cleaned: stmt(&raw.writeback.cleaned, "writeback.cleaned", &["member_key"])?,
            complained: stmt(
                &raw.writeback.complained,
                "writeback.complained",
                &["member_key"],
            )?,
            email_changed: stmt(
                &raw.writeback.email_changed,
                "writeback.email_changed",
                &["member_key", "new_email"],
            )?,
        };

        Ok(Mapping {
            path: path.to_owned(),
            source,
            audiences,
            writeback,
        })
    }

    /// Every column the mapping reads, with the key that names it (for error messages).
    pub fn referenced_columns(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("source.key".to_owned(), self.source.key.clone()),
            ("source.email".to_owned(), self.source.email.clone()),
            ("source.consent".to_owned(), self.source.consent.clone()),
        ];
        if let Some(c) = &self.source.consent_at {
            out.push(("source.consent_at".into(), c.clone()));
        }
        if let Some(u) = &self.source.updated_at {
            out.push(("source.updated_at".into(), u.clone()));
        }
        for (name, a) in &self.audiences {
            for (i, c) in a.conditions.iter().enumerate() {
                out.push((
                    format!("audiences.{name}.where[{i}].column"),
                    c.column().to_owned(),
                ));
            }
            for (i, f) in a.merge_fields.iter().enumerate() {
                out.push((
                    format!("audiences.{name}.merge_fields[{i}].column"),
                    f.column.clone(),
                ));
            }
            for (i, t) in a.tags.iter().enumerate() {
                match t {
                    TagRule::Fixed { when: Some(c), .. } => {
                        out.push((
                            format!("audiences.{name}.tags[{i}].when.column"),
                            c.column().to_owned(),
                        ));
                    }
                    TagRule::FromColumn { column, .. } => {
                        out.push((
                            format!("audiences.{name}.tags[{i}].from_column"),
                            column.clone(),
                        ));
                    }
                    TagRule::Fixed { when: None, .. } => {}
                }
            }
        }
        out
    }

    /// Checks that every configured audience has a section in this mapping.
    pub fn audience(&self, name: &str) -> Result<&AudienceMapping, MappingError> {
        self.audiences.get(name).ok_or_else(|| MappingError::Columns {
            path: self.path.clone(),
            key: format!("audiences.{name}"),
            message: format!(
                "the config names audience `{name}` but this mapping has no [audiences.{name}] section (it has: {})",
                if self.audiences.is_empty() { "none".to_owned() } else { self.audiences.keys().cloned().collect::<Vec<_>>().join(", ") }
            ),
        })
    }
}

/// The columns of the shipped mapping's query (the reference member schema), for tests that build
/// member rows.
#[cfg(test)]
pub(crate) const SHIPPED_COLUMNS: [&str; 8] = [
    "id",
    "email",
    "first_name",
    "last_name",
    "membership",
    "newsletter",
    "email_status",
    "updated_at",
];

#[cfg(test)]
mod tests;
