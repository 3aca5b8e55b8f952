//! A mapping compiled against the source query's columns, and the pure rendering of a member row
//! into a provider-neutral [`Contact`] with a content hash that is stable across runs and field
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};

use super::{
    AudienceMapping, Condition, FieldType, Mapping, MappingError, MergeFieldSpec, TagRule,
};
use crate::domain::Value;
use crate::domain::{Consent, Email, EmailError, MemberKey};

/// A merge field value as sent to the provider.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FieldValue {
    Text(String),
    Number(#[serde(with = "exact_number")] f64),
}

/// A number as the text of its shortest round-trip form, parsed back with the standard library:
/// the same `f64` comes back, bit for bit (the content hash hashes its bits), where a JSON number
/// read with serde_json's default parser may come back one unit off in the last place.
mod exact_number {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(n: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| D::Error::custom(format_args!("`{text}` is not a number")))
    }
}

impl FieldValue {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Text(s) => serde_json::Value::String(s.clone()),
            FieldValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// What a member should look like at the provider.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    pub member_key: MemberKey,
    pub email: Email,
    pub merge_fields: BTreeMap<String, FieldValue>,
    pub tags: BTreeSet<String>,
}

impl Contact {
    /// A hash over the email identity, merge fields and tags, independent of the order fields
    /// are declared in (they are kept sorted) and of anything that changes between runs.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"mailbridge-contact-v1\x1e");
        h.update(self.email.as_str().as_bytes());
        h.update(b"\x1e");
        for (tag, value) in &self.merge_fields {
            h.update(tag.as_bytes());
            match value {
                FieldValue::Text(s) => {
                    h.update(b"\x1ft");
                    h.update(s.as_bytes());
                }
                FieldValue::Number(n) => {
                    h.update(b"\x1fn");
                    h.update(n.to_bits().to_be_bytes());
                }
            }
            h.update(b"\x1e");
        }
        h.update(b"\x1d");
        for tag in &self.tags {
            h.update(tag.as_bytes());
            h.update(b"\x1e");
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Whether a member belongs to an audience, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    In,
    /// The audience's `where` conditions do not hold (e.g. a lapsed membership).
    NotInAudience,
    /// The consent column does not say yes.
    NoConsent,
}

/// A member row that could not be rendered.
#[derive(Clone, Debug, PartialEq)]
pub enum RenderError {
    Email(EmailError),
    Field { tag: String, message: String },
}

impl RenderError {
    pub fn code(&self) -> &'static str {
        match self {
            RenderError::Email(e) => e.code(),
            RenderError::Field { .. } => "invalid_field",
        }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Email(e) => e.fmt(f),
            RenderError::Field { tag, message } => write!(f, "merge field {tag}: {message}"),
        }
    }
}

/// The source spec resolved to column positions.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    pub columns: Vec<String>,
    key: usize,
    email: usize,
    consent: usize,
    consent_at: Option<usize>,
    updated_at: Option<usize>,
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    column: usize,
    condition: Condition,
}

#[derive(Clone, Debug)]
enum CompiledTag {
    Fixed {
        name: String,
        when: Option<CompiledCondition>,
    },
    FromColumn {
        column: usize,
        values: BTreeSet<String>,
        prefix: String,
    },
}

/// An audience's rules resolved to column positions.
#[derive(Clone, Debug)]
pub struct CompiledAudience {
    pub name: String,
    pub key_field: String,
    pub merge_fields: Vec<MergeFieldSpec>,
    pub owned_tags: BTreeSet<String>,
    conditions: Vec<CompiledCondition>,
    fields: Vec<usize>,
    tags: Vec<CompiledTag>,
}

fn position(
    mapping: &Mapping,
    columns: &[String],
    key: &str,
    name: &str,
) -> Result<usize, MappingError> {
    columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .ok_or_else(|| MappingError::Columns {
            path: mapping.path.clone(),
            key: key.to_owned(),
            message: format!(
                "column `{name}` is not in the result of source.query (its columns: {})",
                columns.join(", ")
            ),
        })
}

impl Mapping {
    /// Resolves the source spec against the query's result columns.
    pub fn compile_source(&self, columns: &[String]) -> Result<CompiledSource, MappingError> {
        Ok(CompiledSource {
            columns: columns.to_vec(),
            key: position(self, columns, "source.key", &self.source.key)?,
            email: position(self, columns, "source.email", &self.source.email)?,
            consent: position(self, columns, "source.consent", &self.source.consent)?,
            consent_at: self
                .source
                .consent_at
                .as_ref()
                .map(|c| position(self, columns, "source.consent_at", c))
                .transpose()?,
            updated_at: self
                .source
                .updated_at
                .as_ref()
                .map(|u| position(self, columns, "source.updated_at", u))
                .transpose()?,
        })
    }

    /// Resolves one audience's rules against the query's result columns.
    pub fn compile_audience(
        &self,
        audience: &AudienceMapping,
        columns: &[String],
    ) -> Result<CompiledAudience, MappingError> {
        let base = format!("audiences.{}", audience.name);
        let cond =
            |i: usize, key: String, c: &Condition| -> Result<CompiledCondition, MappingError> {
                let _ = i;
                Ok(CompiledCondition {
                    column: position(self, columns, &key, c.column())?,
                    condition: c.clone(),
                })
            };
        let conditions = audience
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| cond(i, format!("{base}.where[{i}].column"), c))
            .collect::<Result<Vec<_>, _>>()?;
        let fields = audience
            .merge_fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                position(
                    self,
                    columns,
                    &format!("{base}.merge_fields[{i}].column"),
                    &f.column,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tags = Vec::new();
        for (i, t) in audience.tags.iter().enumerate() {
            tags.push(match t {
                TagRule::Fixed { name, when } => CompiledTag::Fixed {
                    name: name.clone(),
                    when: when
                        .as_ref()
                        .map(|c| cond(i, format!("{base}.tags[{i}].when.column"), c))
                        .transpose()?,
                },
                TagRule::FromColumn {
                    column,
                    values,
                    prefix,
                } => CompiledTag::FromColumn {
                    column: position(
                        self,
                        columns,
                        &format!("{base}.tags[{i}].from_column"),
                        column,
                    )?,
                    values: values.iter().cloned().collect(),
                    prefix: prefix.clone(),
                },
            });
        }
        Ok(CompiledAudience {
            name: audience.name.clone(),
            key_field: audience.key_field.clone(),
            merge_fields: audience.merge_fields.clone(),
            owned_tags: audience.owned_tags(),
            conditions,
            fields,
            tags,
        })
    }
}

impl CompiledSource {
    pub fn member_key(&self, row: &[Value]) -> Option<MemberKey> {
        match &row[self.key] {
            Value::Int(i) => Some(MemberKey::from_int(*i)),
            Value::Null => None,
            other => other.as_text().and_then(|t| MemberKey::parse(&t)),
        }
    }

    /// The address column as written (for reports), if any.
    pub fn raw_email<'r>(&self, row: &'r [Value]) -> Option<std::borrow::Cow<'r, str>> {
        row[self.email].as_text()
    }

    pub fn email(&self, row: &[Value]) -> Result<Email, EmailError> {
        match row[self.email].as_text() {
            None => Err(EmailError::Missing),
            Some(t) => Email::parse(&t),
        }
    }

    pub fn consent(&self, row: &[Value]) -> Consent {
        match &row[self.consent] {
            Value::Null => Consent::Withheld,
            Value::Bool(b) => Consent::from_bool(*b),
            Value::Int(i) => Consent::from_bool(*i == 1),
            Value::Float(_) => Consent::Withheld,
            Value::Text(t) => Consent::from_text(t),
        }
    }

    /// The mapped `consent_at` column as text (`None` when not mapped or NULL).
    pub fn consent_at<'r>(&self, row: &'r [Value]) -> Option<std::borrow::Cow<'r, str>> {
        self.consent_at.and_then(|i| row[i].as_text())
    }

    pub fn updated_at<'r>(&self, row: &'r [Value]) -> Option<std::borrow::Cow<'r, str>> {
        self.updated_at.and_then(|i| row[i].as_text())
    }
}

fn holds(c: &CompiledCondition, row: &[Value]) -> bool {
    let value = &row[c.column];
    let text = value.as_text();
    match &c.condition {
        Condition::Equals(_, v) => text.as_deref() == Some(v.as_str()),
        Condition::NotEquals(_, v) => text.as_deref() != Some(v.as_str()),
        Condition::In(_, vs) => text.is_some_and(|t| vs.iter().any(|v| *v == *t)),
        Condition::NotIn(_, vs) => !text.is_some_and(|t| vs.iter().any(|v| *v == *t)),
        Condition::IsNull(_, want) => value.is_null() == *want,
    }
}

fn render_field(kind: FieldType, value: &Value) -> Result<FieldValue, String> {
    let text = || {
        value
            .as_text()
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    };
    Ok(match kind {
        FieldType::Text | FieldType::Phone | FieldType::Url | FieldType::Zip => {
            FieldValue::Text(text())
        }
        FieldType::Number => match value {
            Value::Null => FieldValue::Text(String::new()),
            Value::Int(i) => FieldValue::Number(*i as f64),
            Value::Float(f) if f.is_finite() => FieldValue::Number(*f),
            Value::Bool(b) => FieldValue::Number(if *b { 1.0 } else { 0.0 }),
            other => {
                let t = text();
                if t.is_empty() {
                    FieldValue::Text(String::new())
                } else {
                    FieldValue::Number(
                        t.parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .ok_or_else(|| format!("`{other}` is not a number"))?,
                    )
                }
            }
        },
        FieldType::Date | FieldType::Birthday => {
            let t = text();
            if t.is_empty() {
                FieldValue::Text(String::new())
            } else {
                let date = t
                    .get(..10)
                    .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                    .ok_or_else(|| format!("`{t}` is not a date (expected YYYY-MM-DD…)"))?;
                FieldValue::Text(if kind == FieldType::Date {
                    date.format("%Y-%m-%d").to_string()
                } else {
                    date.format("%m/%d").to_string()
                })
            }
        }
    })
}

impl CompiledAudience {
    /// Whether the member belongs to this audience (conditions first, then consent).
    pub fn select(&self, source: &CompiledSource, row: &[Value]) -> Selection {
        if !self.conditions.iter().all(|c| holds(c, row)) {
            Selection::NotInAudience
        } else if !source.consent(row).is_given() {
            Selection::NoConsent
        } else {
            Selection::In
        }
    }

    /// Renders the contact a member should be at the provider.
    pub fn render(
        &self,
        key: MemberKey,
        email: Email,
        row: &[Value],
    ) -> Result<Contact, RenderError> {
        let mut merge_fields = BTreeMap::new();
        merge_fields.insert(self.key_field.clone(), FieldValue::Text(key.to_string()));
        for (spec, &col) in self.merge_fields.iter().zip(&self.fields) {
            let value =
                render_field(spec.kind, &row[col]).map_err(|message| RenderError::Field {
                    tag: spec.tag.clone(),
                    message,
                })?;
            merge_fields.insert(spec.tag.clone(), value);
        }
        let mut tags = BTreeSet::new();
        for t in &self.tags {
            match t {
                CompiledTag::Fixed { name, when } => {
                    if when.as_ref().is_none_or(|c| holds(c, row)) {
                        tags.insert(name.clone());
                    }
                }
                CompiledTag::FromColumn {
                    column,
                    values,
                    prefix,
                } => {
                    if let Some(v) = row[*column].as_text()
                        && values.contains(v.as_ref())
                    {
                        tags.insert(format!("{prefix}{v}"));
                    }
                }
            }
        }
        Ok(Contact {
            member_key: key,
            email,
            merge_fields,
            tags,
        })
    }
}
