//! A mapping compiled against the source query's columns, and the pure rendering of a member row
//! into a provider-neutral [`Contact`] with a content hash that is stable across runs and field
//! order.

use std::borrow::Cow;
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
        hex::encode(self.content_digest())
    }

    /// The bytes [`Contact::content_hash`] writes as hex: what a no-change resync compares for
    /// each of its members, without writing or parsing hex.
    pub fn content_digest(&self) -> [u8; 16] {
        let mut h = ContentHasher::new(self.email.as_str());
        for (tag, value) in &self.merge_fields {
            h.field(tag, value.as_ref());
        }
        h.end_fields();
        for tag in &self.tags {
            h.tag(tag);
        }
        h.finish()
    }
}

/// A merge field value as hashed (borrowed).
#[derive(Clone, Copy)]
enum FieldRef<'a> {
    Text(&'a str),
    Number(f64),
}

impl FieldValue {
    fn as_ref(&self) -> FieldRef<'_> {
        match self {
            FieldValue::Text(s) => FieldRef::Text(s),
            FieldValue::Number(n) => FieldRef::Number(*n),
        }
    }
}

/// The content hash's input in its one order and form, written by both
/// [`Contact::content_digest`] and [`CompiledAudience::digest`], which must agree byte for byte:
/// the email identity, the merge fields sorted by tag, then the tags sorted.
struct ContentHasher(Sha256);

impl ContentHasher {
    fn new(email_identity: &str) -> ContentHasher {
        let mut h = Sha256::new();
        h.update(b"mailbridge-contact-v1\x1e");
        h.update(email_identity.as_bytes());
        h.update(b"\x1e");
        ContentHasher(h)
    }

    fn field(&mut self, tag: &str, value: FieldRef<'_>) {
        let h = &mut self.0;
        h.update(tag.as_bytes());
        match value {
            FieldRef::Text(s) => {
                h.update(b"\x1ft");
                h.update(s.as_bytes());
            }
            FieldRef::Number(n) => {
                h.update(b"\x1fn");
                h.update(n.to_bits().to_be_bytes());
            }
        }
        h.update(b"\x1e");
    }

    fn end_fields(&mut self) {
        self.0.update(b"\x1d");
    }

    fn tag(&mut self, tag: &str) {
        self.0.update(tag.as_bytes());
        self.0.update(b"\x1e");
    }

    fn finish(self) -> [u8; 16] {
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&self.0.finalize()[..16]);
        digest
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
    /// The merge fields in the order the content hash takes them (by tag, as the contact's
    /// sorted map holds them); `None` when two share a tag (then only rendering says which one
    /// the contact keeps).
    hash_order: Option<Vec<HashSlot>>,
}

/// A merge field of the content hash: the member key's field or a mapped one (by position).
#[derive(Clone, Copy, Debug)]
enum HashSlot {
    Key,
    Field(usize),
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
            hash_order: hash_order(&audience.key_field, &audience.merge_fields),
        })
    }
}

/// The merge fields by tag (see [`CompiledAudience::hash_order`]).
fn hash_order(key_field: &str, merge_fields: &[MergeFieldSpec]) -> Option<Vec<HashSlot>> {
    let mut order: Vec<(&str, HashSlot)> = std::iter::once((key_field, HashSlot::Key))
        .chain(
            merge_fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.tag.as_str(), HashSlot::Field(i))),
        )
        .collect();
    order.sort_by(|a, b| a.0.cmp(b.0));
    if order.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(order.into_iter().map(|(_, slot)| slot).collect())
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
        Ok(Contact {
            member_key: key,
            email,
            merge_fields,
            tags: self.tags_of(row),
        })
    }

    /// The content digest of the contact [`CompiledAudience::render`] makes of this row
    /// ([`Contact::content_digest`]), without making it: a no-change resync asks it of every
    /// member, and most are unchanged. `None` when rendering would fail or the fields' order is
    /// not known ahead (render, then, to learn which).
    pub fn digest(&self, key: &MemberKey, email: &Email, row: &[Value]) -> Option<[u8; 16]> {
        let order = self.hash_order.as_ref()?;
        let mut h = ContentHasher::new(email.as_str());
        for slot in order {
            match *slot {
                HashSlot::Key => h.field(&self.key_field, FieldRef::Text(key.as_str())),
                HashSlot::Field(i) => {
                    let spec = &self.merge_fields[i];
                    let value = &row[self.fields[i]];
                    match (spec.kind, value) {
                        // What render_field makes of text, without the copy.
                        (
                            FieldType::Text | FieldType::Phone | FieldType::Url | FieldType::Zip,
                            Value::Text(t),
                        ) => h.field(&spec.tag, FieldRef::Text(t.trim())),
                        _ => h.field(&spec.tag, render_field(spec.kind, value).ok()?.as_ref()),
                    }
                }
            }
        }
        h.end_fields();
        if !self.tags.is_empty() {
            // The tags in the order and form of `tags_of`, without a string per fixed tag.
            let mut tags: Vec<Cow<'_, str>> = Vec::with_capacity(self.tags.len());
            self.each_tag(row, |t| tags.push(t));
            tags.sort_unstable();
            tags.dedup();
            for tag in &tags {
                h.tag(tag);
            }
        }
        Some(h.finish())
    }

    /// The tags a member row carries, sorted.
    fn tags_of(&self, row: &[Value]) -> BTreeSet<String> {
        let mut tags = BTreeSet::new();
        self.each_tag(row, |t| {
            tags.insert(t.into_owned());
        });
        tags
    }

    /// Calls `f` with each tag a member row carries, in the mapping's order (a tag may come
    /// twice).
    fn each_tag<'s>(&'s self, row: &[Value], mut f: impl FnMut(Cow<'s, str>)) {
        for t in &self.tags {
            match t {
                CompiledTag::Fixed { name, when } => {
                    if when.as_ref().is_none_or(|c| holds(c, row)) {
                        f(Cow::Borrowed(name));
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
                        f(Cow::Owned(format!("{prefix}{v}")));
                    }
                }
            }
        }
    }
}
