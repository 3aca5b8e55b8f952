//! A small validator for the subset of OpenAPI 3.0 schema keywords that Mailchimp's spec uses in the
//! operations the simulator serves: `$ref` (into `#/components/schemas`), `allOf`, `type`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `format` (`date-time`, `uri`),
//! `maxLength`, `minimum`, `maximum`. The spec has no `nullable`, `oneOf` or `anyOf` here (only
//! the vendor extension `x-oneOf`, which is documentation and ignored).
//!
//! Two deliberate departures, both documented where they bite:
//! - `merge_fields` values are typed `object` in Mailchimp's own spec, which real responses (strings)
//!   break; the loaded spec (`specs/mailchimp-marketing.json`) is relaxed exactly as
//!   `shared/tools/spec-proxy` relaxes it.
//! - `""` is accepted for `uri` strings (Mailchimp sends `""` for unset ones). `date-time` is
//!   strict, as Prism is: the simulator omits unset dates instead of sending `""`.
//!
//! In strict mode an object may not carry a property its schema does not declare (the spec never
//! sets `additionalProperties: false`, but an undeclared field in our answer is usually a typo).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

pub struct Spec {
    doc: Value,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(Spec::load)
}

/// The repository's copy of Mailchimp's spec (`specs/`, with its provenance and licence), or the
/// file `MAILBRIDGE_SPEC` names.
fn spec_path() -> PathBuf {
    std::env::var_os("MAILBRIDGE_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("specs/mailchimp-marketing.json")
        })
}

impl Spec {
    fn load() -> Self {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut doc: Value = serde_json::from_str(&text).expect("the spec is JSON");
        relax_merge_fields(&mut doc);
        Self { doc }
    }

    /// The operation object for `method` on the spec path template `path`.
    pub fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "the spec has no {method} {path}");
        op
    }

    /// The response schema of an operation for a status (`default` when the code is not listed).
    /// `None` means the spec declares no body (e.g. 204).
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        let responses = &self.operation(method, path)["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| panic!("{method} {path} declares no response for {status}"));
        let content = response.get("content")?;
        content
            .get("application/json")
            .or_else(|| content.get("application/problem+json"))?
            .get("schema")
    }

    pub fn request_schema(&self, method: &str, path: &str) -> Option<&Value> {
        self.operation(method, path)
            .get("requestBody")?
            .get("content")?
            .get("application/json")?
            .get("schema")
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut current = schema;
        for _ in 0..32 {
            let Some(reference) = current.get("$ref").and_then(Value::as_str) else {
                return current;
            };
            let name = reference
                .strip_prefix("#/components/schemas/")
                .expect("local schema refs");
            current = &self.doc["components"]["schemas"][name];
        }
        panic!("$ref chain too deep");
    }

    /// Every violation of `schema` by `value`, as `"/json/pointer: message"`.
    pub fn validate(&self, schema: &Value, value: &Value, strict: bool) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, value, "", strict, &mut errors);
        errors
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        strict: bool,
        errors: &mut Vec<String>,
    ) {
        let schema = self.resolve(schema);
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.check(part, value, at, strict, errors);
            }
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                other => panic!("unsupported schema type {other}"),
            };
            if !ok {
                errors.push(format!("{at}: expected {kind}, got {value}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {options:?}"));
        }
        if let Some(text) = value.as_str() {
            self.check_string(schema, text, at, errors);
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{at}: {n} < minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{at}: {n} > maximum {max}"));
            }
        }
        if let Some(items) = value.as_array()
            && let Some(item_schema) = schema.get("items")
        {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{at}/{i}"), strict, errors);
            }
        }
        if let Some(obj) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap_or_default();
                if !obj.contains_key(name) {
                    errors.push(format!("{at}: required property {name} is missing"));
                }
            }
            let additional = schema.get("additionalProperties");
            for (key, v) in obj {
                let here = format!("{at}/{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(prop), _) => self.check(prop, v, &here, strict, errors),
                    (None, Some(Value::Bool(false))) => errors.push(format!("{here}: not allowed")),
                    (None, Some(extra)) if extra.is_object() => {
                        self.check(extra, v, &here, strict, errors)
                    }
                    (None, _) => {
                        let composed = schema.get("allOf").is_some();
                        if strict && properties.is_some() && !composed {
                            errors.push(format!("{here}: not declared by the spec"));
                        }
                    }
                }
            }
        }
    }

    fn check_string(&self, schema: &Value, text: &str, at: &str, errors: &mut Vec<String>) {
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && text.chars().count() as u64 > max
        {
            errors.push(format!("{at}: longer than {max}"));
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
            }
            Some("uri") if !text.is_empty() && url::Url::parse(text).is_err() => {
                errors.push(format!("{at}: {text:?} is not a URI"));
            }
            _ => {}
        }
    }
}

/// Mailchimp's spec types every `merge_fields` value as an object; real values are strings,
/// numbers or (addresses) objects. Relax `additionalProperties: {type: object}` to `{}` under every
/// `merge_fields` property, exactly as `shared/tools/spec-proxy` does for Prism.
fn relax_merge_fields(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::Object(props)) = obj.get_mut("properties")
                && let Some(Value::Object(merge)) = props.get_mut("merge_fields")
                && merge
                    .get("additionalProperties")
                    .and_then(|a| a.get("type"))
                    .and_then(Value::as_str)
                    == Some("object")
            {
                merge.insert(
                    "additionalProperties".into(),
                    Value::Object(Default::default()),
                );
            }
            for v in obj.values_mut() {
                relax_merge_fields(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(relax_merge_fields),
        _ => {}
    }
}
