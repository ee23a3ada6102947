//! CRD structural schemas: defaulting, pruning, validation (OpenAPI v3 subset and CEL
//! `x-kubernetes-validations` through `kube-cel`).
//!
//! Reference behaviour: kube-apiserver 1.33 (k8s.io/apiextensions-apiserver v0.33,
//! k8s.io/kube-openapi validate, k8s.io/apimachinery field.ErrorList). Messages are
//! rebuilt with the same templates (`Invalid value: -1: spec.replicas in body should be
//! greater than or equal to 0`, `Required value`, `Unsupported value: "z": supported
//! values: "a", "b"`, CEL `Invalid value: "object": <message>`, ...).
//!
//! Write path of a custom resource, as the apiserver: [`validate_type_meta`], then
//! [`CrdVersionSchema::apply_defaults`], [`CrdVersionSchema::prune_unknown_fields`]
//! (its paths are the `unknown field "..."` warnings / strict errors), then
//! [`CrdVersionSchema::validate`]. A CRD itself goes through [`validate_crd`].
//!
//! Approximations (see each item): CEL rules are compiled by the `cel` crate, which
//! parses but does not type-check; at CRD creation a small checker catches undeclared
//! variables, selections of undeclared fields, comparisons of incompatible scalar types
//! and non-bool rules (other type errors surface at evaluation); CEL cost
//! is estimated (static: comprehension sizes from maxItems/maxProperties/maxLength or
//! the 3 MiB request limit; runtime: largest collection to the power of the
//! comprehension nesting) rather than metered; CEL runs on a dedicated thread with a
//! 64 MiB stack, rules are limited to 32 KiB and 100 levels of nesting; ObjectMeta is
//! checked for name/generateName only; OpenAPI errors within one node are ordered
//! by property name (the apiserver iterates Go maps).

use super::types::{Cause, ListSemantics, ListType};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Recursion guard for every walk over schemas and objects (defaulting, pruning,
/// validation). Objects deeper than this are left as they are below that depth.
const MAX_DEPTH: usize = 96;
/// The apiserver's per-expression CEL cost limit (`celconfig.PerCallLimit`).
const PER_CALL_LIMIT: f64 = 1_000_000.0;
/// CEL sources longer than this are refused (kept well below what overflows the parser).
const MAX_RULE_LEN: usize = 32 * 1024;
/// CEL expressions whose syntax tree is deeper than this are refused.
const MAX_AST_DEPTH: usize = 100;
/// Stack of the worker thread CEL runs on (the CEL parser and interpreter recurse).
const CEL_STACK: usize = 64 << 20;

const R_INVALID: &str = "FieldValueInvalid";
const R_REQUIRED: &str = "FieldValueRequired";
const R_NOT_SUPPORTED: &str = "FieldValueNotSupported";
const R_TYPE_INVALID: &str = "FieldValueTypeInvalid";
const R_FORBIDDEN: &str = "FieldValueForbidden";
const R_TOO_LONG: &str = "FieldValueTooLong";
const R_TOO_MANY: &str = "FieldValueTooMany";
const R_DUPLICATE: &str = "FieldValueDuplicate";
const R_INTERNAL: &str = "InternalError";

/// Formats a CRD schema may use for validation (apiextensions `supportedVersionedFormats`,
/// compared after removing `-`); other formats (`int32`, `int64`, `double`...) are stripped
/// by the apiserver before validation and so are ignored here.
const SUPPORTED_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

// ───────────────────────────── Go-compatible rendering ─────────────────────────────

/// Go `strconv.Quote` / `%q`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go `%v` of a float64 (shortest representation, exponent when < -4 or >= 21).
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{f:e}");
    let (mant, exp) = match sci.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().unwrap_or(0)),
        None => (sci.clone(), 0),
    };
    if !(-4..21).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// How a JSON number looks to Go after `encoding/json`-style decoding into
/// `interface{}` by the apiserver: int64 when it fits, float64 otherwise.
enum GoNum {
    Int(i64),
    Float(f64),
}

fn go_num(n: &serde_json::Number) -> GoNum {
    if let Some(i) = n.as_i64() {
        GoNum::Int(i)
    } else {
        GoNum::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn go_num_str(n: &serde_json::Number) -> String {
    match go_num(n) {
        GoNum::Int(i) => i.to_string(),
        GoNum::Float(f) => go_float(f),
    }
}

/// Go `%#v` of a decoded JSON value (maps sorted by key, like fmt does).
fn go_sharp_v(v: &Value) -> String {
    fn inner(v: &Value, depth: usize, out: &mut String) {
        if depth > MAX_DEPTH {
            out.push_str("...");
            return;
        }
        match v {
            Value::Null => out.push_str("interface {}(nil)"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&go_num_str(n)),
            Value::String(s) => out.push_str(&go_quote(s)),
            Value::Array(a) => {
                out.push_str("[]interface {}{");
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    inner(x, depth + 1, out);
                }
                out.push('}');
            }
            Value::Object(m) => {
                out.push_str("map[string]interface {}{");
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                for (i, (k, x)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&go_quote(k));
                    out.push(':');
                    inner(x, depth + 1, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    inner(v, 0, &mut out);
    out
}

/// Go `json.Marshal` of a decoded JSON value (sorted keys).
fn go_json(v: &Value) -> String {
    fn inner(v: &Value, depth: usize, out: &mut String) {
        if depth > MAX_DEPTH {
            out.push_str("null");
            return;
        }
        match v {
            Value::Object(m) => {
                out.push('{');
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                for (i, (k, x)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    inner(x, depth + 1, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    inner(x, depth + 1, out);
                }
                out.push(']');
            }
            Value::Number(n) => out.push_str(&go_num_str(n)),
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    inner(v, 0, &mut out);
    out
}

/// The `BadValue` of a `field.Error`.
#[derive(Debug, Clone)]
enum Bad {
    /// A decoded JSON value (strings `%q`, numbers `%v`, null as `"null"`, composites `%#v`).
    Json(Value),
    /// An already rendered value (Go `%#v` of a Go struct, `%v` of an int...).
    Raw(String),
    /// `field.OmitValueType` / no value printed.
    Omit,
}

fn bad_str(s: &str) -> Bad {
    Bad::Json(Value::String(s.to_string()))
}

fn bad_int(i: i64) -> Bad {
    Bad::Raw(i.to_string())
}

/// `field.Error.ErrorBody()` of k8s.io/apimachinery v0.33.
fn error_body(reason: &str, bad: &Bad, detail: &str) -> String {
    let label = match reason {
        R_REQUIRED => "Required value",
        R_FORBIDDEN => "Forbidden",
        R_TOO_LONG => "Too long",
        R_INTERNAL => "Internal error",
        R_NOT_SUPPORTED => "Unsupported value",
        R_DUPLICATE => "Duplicate value",
        R_TOO_MANY => "Too many",
        "FieldValueNotFound" => "Not found",
        _ => "Invalid value",
    };
    let mut s = label.to_string();
    let valueless = matches!(reason, R_REQUIRED | R_FORBIDDEN | R_TOO_LONG | R_INTERNAL);
    if !valueless {
        match bad {
            Bad::Omit => {}
            Bad::Raw(r) => {
                s.push_str(": ");
                s.push_str(r);
            }
            Bad::Json(v) => {
                s.push_str(": ");
                match v {
                    Value::Null => s.push_str("\"null\""),
                    Value::String(x) => s.push_str(&go_quote(x)),
                    Value::Number(n) => s.push_str(&go_num_str(n)),
                    Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
                    composite => s.push_str(&go_sharp_v(composite)),
                }
            }
        }
    }
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

fn cause(reason: &str, field: &str, bad: Bad, detail: &str) -> Cause {
    Cause {
        reason: reason.to_string(),
        message: error_body(reason, &bad, detail),
        field: field.to_string(),
    }
}

/// `field.Path.Child(name)` rendering; `""` stands for the nil path.
fn child(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

/// `field.Path.Key(k)` / `.Index(i)` rendering.
fn subscript(base: &str, key: &str) -> String {
    format!("{base}[{key}]")
}

/// `field.Path.String()` of a possibly nil path.
fn nil_path(p: &str) -> String {
    if p.is_empty() {
        "<nil>".to_string()
    } else {
        p.to_string()
    }
}

// ───────────────────────────── schema accessors ─────────────────────────────

fn flag(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool) == Some(true)
}

fn s_type(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

fn props(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// `additionalProperties` as a schema (`true` counts as an empty schema).
fn addl(s: &Value) -> Option<&Value> {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    match s.get("additionalProperties") {
        Some(v @ Value::Object(_)) => Some(v),
        Some(Value::Bool(true)) => Some(EMPTY.get_or_init(|| Value::Object(Map::new()))),
        _ => None,
    }
}

fn items(s: &Value) -> Option<&Value> {
    s.get("items").filter(|v| v.is_object())
}

fn list_map_keys(s: &Value) -> Vec<String> {
    s.get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Schema of a child of an object node (property or additionalProperties).
fn field_schema<'a>(s: &'a Value, k: &str) -> Option<&'a Value> {
    props(s).and_then(|p| p.get(k)).or_else(|| addl(s))
}

// ───────────────────────────── defaulting ─────────────────────────────

fn is_nonnullable_null(x: &Value, s: Option<&Value>) -> bool {
    x.is_null() && s.is_some_and(|s| !flag(s, "nullable"))
}

fn default_node(x: &mut Value, s: &Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            if let Some(p) = props(s) {
                for (k, prop) in p {
                    let Some(def) = prop.get("default") else {
                        continue;
                    };
                    if def.is_null() {
                        continue;
                    }
                    let missing = match m.get(k) {
                        None => true,
                        Some(v) => is_nonnullable_null(v, Some(prop)),
                    };
                    if missing {
                        m.insert(k.clone(), def.clone());
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let Some(v) = m.get_mut(&k) else { continue };
                if let Some(prop) = props(s).and_then(|p| p.get(&k)) {
                    default_node(v, prop, depth + 1);
                } else if let Some(a) = addl(s) {
                    if is_nonnullable_null(v, Some(a))
                        && let Some(def) = a.get("default").filter(|d| !d.is_null())
                    {
                        *v = def.clone();
                    }
                    default_node(v, a, depth + 1);
                }
            }
        }
        Value::Array(arr) => {
            let Some(it) = items(s) else { return };
            for v in arr.iter_mut() {
                if is_nonnullable_null(v, Some(it))
                    && let Some(def) = it.get("default").filter(|d| !d.is_null())
                {
                    *v = def.clone();
                }
                default_node(v, it, depth + 1);
            }
        }
        _ => {}
    }
}

/// `PruneNonNullableNullsWithoutDefaults`: nulls of non-nullable fields without a default
/// are dropped from objects (the apiserver does this on decode, before defaulting).
fn prune_nulls(x: &mut Value, s: Option<&Value>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let fs = s.and_then(|s| field_schema(s, &k));
                let drop = match (m.get(&k), fs) {
                    (Some(v), Some(fs)) => {
                        v.is_null()
                            && !flag(fs, "nullable")
                            && fs.get("default").is_none_or(Value::is_null)
                    }
                    _ => false,
                };
                if drop {
                    m.remove(&k);
                } else if let Some(v) = m.get_mut(&k) {
                    prune_nulls(v, fs, depth + 1);
                }
            }
        }
        Value::Array(arr) => {
            let it = s.and_then(items);
            for v in arr.iter_mut() {
                prune_nulls(v, it, depth + 1);
            }
        }
        _ => {}
    }
}

// ───────────────────────────── pruning ─────────────────────────────

const META_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

struct Pruner {
    unknown: Vec<String>,
}

impl Pruner {
    fn record(&mut self, parent: &str, k: &str) {
        self.unknown.push(child(parent, k));
    }

    fn prune(
        &mut self,
        x: &mut Value,
        s: Option<&Value>,
        embedded: bool,
        path: &str,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(s) = s
            && flag(s, "x-kubernetes-preserve-unknown-fields")
        {
            self.skip_prune(x, s, embedded, path, depth);
            return;
        }
        match x {
            Value::Object(m) => {
                let Some(s) = s else {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    for k in keys {
                        self.record(path, &k);
                    }
                    m.clear();
                    return;
                };
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    if embedded && META_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    let prop = props(s).and_then(|p| p.get(&k));
                    let sub = prop.or_else(|| addl(s));
                    match (sub, m.get_mut(&k)) {
                        (Some(sub), Some(v)) => {
                            let emb = flag(sub, "x-kubernetes-embedded-resource");
                            self.prune(v, Some(sub), emb, &child(path, &k), depth + 1);
                        }
                        _ => {
                            if !META_FIELDS.contains(&k.as_str()) || !path.is_empty() {
                                self.record(path, &k);
                            }
                            m.remove(&k);
                        }
                    }
                }
            }
            Value::Array(arr) => {
                let it = s.and_then(items);
                let emb = it.is_some_and(|i| flag(i, "x-kubernetes-embedded-resource"));
                for (i, v) in arr.iter_mut().enumerate() {
                    self.prune(v, it, emb, &subscript(path, &i.to_string()), depth + 1);
                }
            }
            _ => {}
        }
    }

    fn skip_prune(&mut self, x: &mut Value, s: &Value, embedded: bool, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match x {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if embedded && META_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    if let Some(sub) = props(s).and_then(|p| p.get(k)).or_else(|| addl(s)) {
                        let emb = flag(sub, "x-kubernetes-embedded-resource");
                        self.prune(v, Some(sub), emb, &child(path, k), depth + 1);
                    }
                }
            }
            Value::Array(arr) => {
                if let Some(it) = items(s) {
                    let emb = flag(it, "x-kubernetes-embedded-resource");
                    for (i, v) in arr.iter_mut().enumerate() {
                        self.skip_prune(v, it, emb, &subscript(path, &i.to_string()), depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

// ───────────────────────────── OpenAPI validation (kube-openapi) ─────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    InvalidType,
    Required,
    TooLong,
    Enum,
    MaxItems,
    TooManyProperties,
    /// Every other kube-openapi code (minimum, pattern, minItems...): `field.Invalid`.
    Other,
}

/// One `errors.Validation` of kube-openapi.
#[derive(Debug, Clone)]
struct OErr {
    code: Code,
    name: String,
    value: Option<Value>,
    message: String,
    enum_values: Vec<Value>,
    actual: i64,
    max: i64,
}

impl OErr {
    fn new(code: Code, name: &str, value: Option<Value>, message: String) -> Self {
        Self {
            code,
            name: name.to_string(),
            value,
            message,
            enum_values: Vec::new(),
            actual: -1,
            max: -1,
        }
    }

    /// `kubeOpenAPIResultToFieldErrors` for one error, under `prefix` (`""` = nil path).
    fn to_cause(&self, prefix: &str) -> Cause {
        let name = self.name.strip_prefix('.').unwrap_or(&self.name);
        let path = if self.name.is_empty() || self.name == "." {
            prefix.to_string()
        } else {
            child(prefix, name)
        };
        let field = nil_path(&path);
        let value_or_empty =
            || Bad::Json(self.value.clone().unwrap_or(Value::String(String::new())));
        match self.code {
            Code::Required => cause(R_REQUIRED, &field, Bad::Omit, ""),
            Code::Enum => {
                let values: Vec<String> = self
                    .enum_values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => go_quote(s),
                        other => go_quote(&go_json(other)),
                    })
                    .collect();
                let detail = if values.is_empty() {
                    String::new()
                } else {
                    format!("supported values: {}", values.join(", "))
                };
                cause(
                    R_NOT_SUPPORTED,
                    &field,
                    Bad::Json(self.value.clone().unwrap_or(Value::Null)),
                    &detail,
                )
            }
            Code::TooLong => {
                let detail = if self.max >= 0 {
                    format!("may not be more than {} bytes", self.max)
                } else {
                    "value is too long".into()
                };
                cause(R_TOO_LONG, &field, Bad::Omit, &detail)
            }
            Code::MaxItems | Code::TooManyProperties => {
                let detail = if self.max >= 0 {
                    format!("must have at most {} items", self.max)
                } else {
                    "has too many items".into()
                };
                let bad = if self.actual >= 0 {
                    bad_int(self.actual)
                } else {
                    Bad::Omit
                };
                cause(R_TOO_MANY, &field, bad, &detail)
            }
            Code::InvalidType => cause(R_TYPE_INVALID, &field, value_or_empty(), &self.message),
            Code::Other => cause(R_INVALID, &field, value_or_empty(), &self.message),
        }
    }
}

/// `name in body ...` message prefix.
fn in_body(name: &str) -> String {
    format!("{name} in body")
}

fn invalid_type(name: &str, type_name: &str, value: &str) -> OErr {
    OErr::new(
        Code::InvalidType,
        name,
        Some(Value::String(value.to_string())),
        format!(
            "{} must be of type {}: {}",
            in_body(name),
            type_name,
            go_quote(value)
        ),
    )
}

/// Go kind of a decoded JSON value, as kube-openapi's type validator names it.
fn json_type(v: &Value) -> (&'static str, &'static str) {
    match v {
        Value::Null => ("null", ""),
        Value::Bool(_) => ("boolean", ""),
        Value::String(_) => ("string", ""),
        Value::Number(n) => match go_num(n) {
            GoNum::Int(_) => ("integer", "int64"),
            GoNum::Float(_) => ("number", "float64"),
        },
        Value::Array(_) => ("array", ""),
        Value::Object(_) => ("object", ""),
    }
}

fn effective_format(s: &Value) -> &str {
    let f = s.get("format").and_then(Value::as_str).unwrap_or("");
    if f.is_empty() {
        return "";
    }
    let normalized = f.replace('-', "");
    if SUPPORTED_FORMATS.contains(&normalized.as_str()) {
        f
    } else {
        ""
    }
}

/// Semantic JSON equality as Go's `reflect.DeepEqual` after kube-openapi's conversion
/// (numbers compare by value).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (go_num(x), go_num(y)) {
            (GoNum::Int(i), GoNum::Int(j)) => i == j,
            (GoNum::Int(i), GoNum::Float(f)) | (GoNum::Float(f), GoNum::Int(i)) => (i as f64) == f,
            (GoNum::Float(f), GoNum::Float(g)) => f == g,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// kube-openapi's enum match: `reflect.DeepEqual` after converting the value to the
/// enum entry's Go type when convertible (numbers by value; an integer converts to a
/// string as a code point, a Go quirk kept here). A `null` entry never matches.
fn enum_matches(entry: &Value, v: &Value) -> bool {
    match (entry, v) {
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(e), Value::Number(n)) => match go_num(n) {
            GoNum::Int(i) => {
                let c = u32::try_from(i)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{FFFD}');
                *e == c.to_string()
            }
            GoNum::Float(_) => false,
        },
        _ => json_eq(entry, v),
    }
}

struct OpenApi {
    errs: Vec<OErr>,
}

impl OpenApi {
    fn validate(&mut self, s: &Value, v: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH || !s.is_object() {
            return;
        }
        let int_or_string = flag(s, "x-kubernetes-int-or-string");
        let types: Vec<&str> = if int_or_string {
            vec!["integer", "string"]
        } else {
            match s_type(s) {
                "" => vec![],
                t => vec![t],
            }
        };
        let format = effective_format(s);
        if v.is_null() {
            if !types.is_empty() && !flag(s, "nullable") {
                self.errs.push(invalid_type(path, &types.join(","), "null"));
            }
            if let Some(en) = s
                .get("enum")
                .and_then(Value::as_array)
                .filter(|e| !e.is_empty())
            {
                self.enum_fail(path, v, en);
            }
            return;
        }
        // type validator
        if !types.is_empty() || !format.is_empty() {
            self.type_check(&types, format, v, path);
        }
        // schema props validator (allOf / anyOf / oneOf / not)
        self.schema_props(s, v, path, depth);
        match v {
            Value::String(st) => {
                self.string_check(s, st, path);
                if !format.is_empty() && !format_ok(format, st) {
                    self.errs.push(invalid_type(path, format, st));
                }
            }
            Value::Number(n) => self.number_check(s, n, path),
            Value::Array(arr) => self.slice_check(s, arr, path, depth),
            _ => {}
        }
        if let Some(en) = s
            .get("enum")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
            && !en.iter().any(|e| enum_matches(e, v))
        {
            self.enum_fail(path, v, en);
        }
        if let Value::Object(m) = v {
            self.object_check(s, m, path, depth);
        }
    }

    fn enum_fail(&mut self, path: &str, v: &Value, en: &[Value]) {
        let shown: Vec<String> = en.iter().map(go_values_item).collect();
        let mut e = OErr::new(
            Code::Enum,
            path,
            Some(v.clone()),
            format!("{} should be one of [{}]", in_body(path), shown.join(" ")),
        );
        e.enum_values = en.to_vec();
        self.errs.push(e);
    }

    fn type_check(&mut self, types: &[&str], format: &str, v: &Value, path: &str) {
        let (sch_type, value_format) = json_type(v);
        let contains = |t: &str| types.contains(&t);
        let is_float_int = match v {
            Value::Number(n) => {
                matches!(go_num(n), GoNum::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15)
                    && contains("integer")
            }
            _ => false,
        };
        let is_int_float = sch_type == "integer" && contains("number");
        let is_string_or_slice = matches!(v, Value::String(_) | Value::Array(_));
        if !(is_string_or_slice
            || format.is_empty()
            || contains(sch_type)
            || value_format == format
            || is_float_int
            || is_int_float)
        {
            self.errs.push(invalid_type(path, format, value_format));
            return;
        }
        if is_string_or_slice && !(contains("number") || contains("integer") || format.is_empty()) {
            return;
        }
        if !(contains(sch_type) || is_float_int || is_int_float) {
            self.errs
                .push(invalid_type(path, &types.join(","), sch_type));
        }
    }

    /// allOf / anyOf / oneOf / not, as kube-openapi's schemaPropsValidator: the
    /// composite message (a plain error, reported on the nil path) plus the errors of
    /// the first failing branch.
    fn schema_props(&mut self, s: &Value, v: &Value, path: &str, depth: usize) {
        let run = |branch: &Value| {
            let mut sub = OpenApi { errs: Vec::new() };
            sub.validate(branch, v, path, depth + 1);
            sub.errs
        };
        let composite = |msg: String| OErr::new(Code::Other, "", None, msg);
        if let Some(any) = s
            .get("anyOf")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            let mut best: Option<Vec<OErr>> = None;
            let mut ok = false;
            for b in any {
                let errs = run(b);
                if errs.is_empty() {
                    ok = true;
                    break;
                }
                if best.is_none() {
                    best = Some(errs);
                }
            }
            if !ok {
                self.errs.push(composite(format!(
                    "{} must validate at least one schema (anyOf)",
                    go_quote(path)
                )));
                self.errs.extend(best.unwrap_or_default());
            }
        }
        if let Some(one) = s
            .get("oneOf")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            let mut best: Option<Vec<OErr>> = None;
            let mut validated = 0;
            for b in one {
                let errs = run(b);
                if errs.is_empty() {
                    validated += 1;
                } else if validated == 0 && best.is_none() {
                    best = Some(errs);
                }
            }
            if validated != 1 {
                let extra = if validated == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {validated} valid alternatives")
                };
                self.errs.push(composite(format!(
                    "{} must validate one and only one schema (oneOf). {extra}",
                    go_quote(path)
                )));
                if validated == 0 {
                    self.errs.extend(best.unwrap_or_default());
                }
            }
        }
        if let Some(all) = s
            .get("allOf")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            let mut validated = 0;
            for b in all {
                let errs = run(b);
                if errs.is_empty() {
                    validated += 1;
                }
                self.errs.extend(errs);
            }
            if validated != all.len() {
                let extra = if validated == 0 {
                    ". None validated"
                } else {
                    ""
                };
                self.errs.push(composite(format!(
                    "{} must validate all the schemas (allOf){extra}",
                    go_quote(path)
                )));
            }
        }
        if let Some(not) = s.get("not").filter(|n| n.is_object())
            && run(not).is_empty()
        {
            self.errs.push(composite(format!(
                "{} must not validate the schema (not)",
                go_quote(path)
            )));
        }
    }

    fn string_check(&mut self, s: &Value, st: &str, path: &str) {
        let len = st.chars().count() as i64;
        let data = Some(Value::String(st.to_string()));
        if let Some(max) = s.get("maxLength").and_then(Value::as_i64)
            && len > max
        {
            let mut e = OErr::new(
                Code::TooLong,
                path,
                data,
                format!("{} should be at most {max} chars long", in_body(path)),
            );
            e.max = max;
            self.errs.push(e);
            return;
        }
        if let Some(min) = s.get("minLength").and_then(Value::as_i64)
            && len < min
        {
            self.errs.push(OErr::new(
                Code::Other,
                path,
                data,
                format!("{} should be at least {min} chars long", in_body(path)),
            ));
            return;
        }
        if let Some(p) = s
            .get("pattern")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            match regex_match(p, st) {
                Ok(true) => {}
                Ok(false) => {
                    self.errs.push(OErr::new(
                        Code::Other,
                        path,
                        data,
                        format!("{} should match '{p}'", in_body(path)),
                    ));
                }
                Err(err) => {
                    self.errs.push(OErr::new(
                        Code::Other,
                        path,
                        data,
                        format!(
                            "{} should match '{p}, but pattern is invalid: {err}'",
                            in_body(path)
                        ),
                    ));
                }
            }
        }
    }

    fn number_check(&mut self, s: &Value, n: &serde_json::Number, path: &str) {
        let val = go_num(n);
        let data = Some(Value::Number(n.clone()));
        if let Some(m) = s.get("multipleOf").and_then(Value::as_f64) {
            let bad = match val {
                GoNum::Int(i) => {
                    let f = m as i64;
                    if f <= 0 {
                        Some(format!(
                            "factor MultipleOf declared for {path} must be positive: {f}"
                        ))
                    } else if i % f != 0 {
                        Some(format!("{} should be a multiple of {f}", in_body(path)))
                    } else {
                        None
                    }
                }
                GoNum::Float(x) => {
                    if m <= 0.0 {
                        Some(format!(
                            "factor MultipleOf declared for {path} must be positive: {}",
                            go_float(m)
                        ))
                    } else {
                        let mult = if m < 1.0 { 1.0 / m * x } else { x / m };
                        if mult.fract() != 0.0 || !mult.is_finite() {
                            Some(format!(
                                "{} should be a multiple of {}",
                                in_body(path),
                                go_float(m)
                            ))
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some(msg) = bad {
                self.errs
                    .push(OErr::new(Code::Other, path, data.clone(), msg));
            }
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            let excl = flag(s, "exclusiveMinimum");
            let (fail, shown) = match val {
                GoNum::Int(i) => {
                    let b = min as i64;
                    ((!excl && i < b) || (excl && i <= b), b.to_string())
                }
                GoNum::Float(x) => ((!excl && x < min) || (excl && x <= min), go_float(min)),
            };
            if fail {
                let rel = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                self.errs.push(OErr::new(
                    Code::Other,
                    path,
                    data.clone(),
                    format!("{} should be {rel} {shown}", in_body(path)),
                ));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            let excl = flag(s, "exclusiveMaximum");
            let (fail, shown) = match val {
                GoNum::Int(i) => {
                    let b = max as i64;
                    ((!excl && i > b) || (excl && i >= b), b.to_string())
                }
                GoNum::Float(x) => ((!excl && x > max) || (excl && x >= max), go_float(max)),
            };
            if fail {
                let rel = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                self.errs.push(OErr::new(
                    Code::Other,
                    path,
                    data,
                    format!("{} should be {rel} {shown}", in_body(path)),
                ));
            }
        }
    }

    fn slice_check(&mut self, s: &Value, arr: &[Value], path: &str, depth: usize) {
        if let Some(it) = items(s) {
            for (i, x) in arr.iter().enumerate() {
                self.validate(it, x, &format!("{path}[{i}]"), depth + 1);
            }
        }
        let size = arr.len() as i64;
        if let Some(min) = s.get("minItems").and_then(Value::as_i64)
            && size < min
        {
            self.errs.push(OErr::new(
                Code::Other,
                path,
                Some(Value::from(size)),
                format!("{} should have at least {min} items", in_body(path)),
            ));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_i64)
            && size > max
        {
            let mut e = OErr::new(
                Code::MaxItems,
                path,
                Some(Value::from(size)),
                format!("{} should have at most {max} items", in_body(path)),
            );
            e.actual = size;
            e.max = max;
            self.errs.push(e);
        }
        if flag(s, "uniqueItems") {
            let dup = arr
                .iter()
                .enumerate()
                .any(|(i, x)| arr[..i].iter().any(|y| json_eq(x, y)));
            if dup {
                self.errs.push(OErr::new(
                    Code::Other,
                    path,
                    None,
                    format!("{} shouldn't contain duplicates", in_body(path)),
                ));
            }
        }
    }

    fn object_check(&mut self, s: &Value, m: &Map<String, Value>, path: &str, depth: usize) {
        let n = m.len() as i64;
        if let Some(min) = s.get("minProperties").and_then(Value::as_i64)
            && n < min
        {
            self.errs.push(OErr::new(
                Code::Other,
                path,
                Some(Value::from(n)),
                format!("{} should have at least {min} properties", in_body(path)),
            ));
        }
        if let Some(max) = s.get("maxProperties").and_then(Value::as_i64)
            && n > max
        {
            let mut e = OErr::new(
                Code::TooManyProperties,
                path,
                Some(Value::from(n)),
                format!("{} should have at most {max} properties", in_body(path)),
            );
            e.actual = n;
            e.max = max;
            self.errs.push(e);
        }
        let properties = props(s);
        if let Some(Value::Bool(false)) = s.get("additionalProperties") {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if properties.is_none_or(|p| !p.contains_key(k)) {
                    self.errs.push(OErr::new(
                        Code::Other,
                        path,
                        Some(Value::String(k.clone())),
                        format!("{path}.{k} in body is a forbidden property"),
                    ));
                }
            }
        } else if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if properties.is_none_or(|p| !p.contains_key(k)) {
                    self.validate(a, &m[k], &format!("{path}.{k}"), depth + 1);
                }
            }
        }
        if let Some(p) = properties {
            let mut names: Vec<&String> = p.keys().collect();
            names.sort();
            for name in names {
                if let Some(v) = m.get(name) {
                    self.validate(&p[name], v, &child(path, name), depth + 1);
                }
            }
        }
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !m.contains_key(k) {
                    self.errs.push(OErr::new(
                        Code::Required,
                        &format!("{path}.{k}"),
                        None,
                        format!("{path}.{k} in body is required"),
                    ));
                }
            }
        }
    }
}

/// Go `%v` of one element of an `[]interface{}` (used in the enum message).
fn go_values_item(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => go_num_str(n),
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        other => go_json(other),
    }
}

/// Regular-expression match through CEL's `matches` (RE2-like syntax, as Go's regexp).
fn regex_match(pattern: &str, s: &str) -> Result<bool, String> {
    use kube_cel::cel::{Context, Program, Value as CelValue};
    thread_local! {
        static PROG: Option<Program> = Program::compile("s.matches(p)").ok();
    }
    PROG.with(|p| {
        let Some(p) = p else {
            return Err("regular expressions unavailable".into());
        };
        let mut ctx = Context::default();
        ctx.add_variable_from_value("s", CelValue::String(std::sync::Arc::new(s.to_string())));
        ctx.add_variable_from_value(
            "p",
            CelValue::String(std::sync::Arc::new(pattern.to_string())),
        );
        match p.execute(&ctx) {
            Ok(CelValue::Bool(b)) => Ok(b),
            Ok(_) => Err("unexpected result".into()),
            Err(e) => Err(e.to_string()),
        }
    })
}

// ───────────────────────────── string formats ─────────────────────────────

fn format_ok(format: &str, s: &str) -> bool {
    let all = |f: fn(char) -> bool| s.chars().all(f);
    let hex = |c: char| c.is_ascii_hexdigit();
    match format.replace('-', "").as_str() {
        "datetime" => is_date_time(s),
        "date" => is_date(s),
        "duration" => is_duration(s),
        "uuid" => is_uuid(s, None),
        "uuid3" => is_uuid(s, Some('3')),
        "uuid4" => is_uuid(s, Some('4')),
        "uuid5" => is_uuid(s, Some('5')),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => match s.split_once('/') {
            Some((ip, bits)) => {
                let max = if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                    32
                } else if ip.parse::<std::net::Ipv6Addr>().is_ok() {
                    128
                } else {
                    return false;
                };
                bits.parse::<u32>().is_ok_and(|b| b <= max) && !bits.starts_with('+')
            }
            None => false,
        },
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            matches!(parts.len(), 6 | 8 | 20)
                && parts.iter().all(|p| p.len() == 2 && p.chars().all(hex))
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 255
                && s.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        "bsonobjectid" => s.len() == 24 && all(|c| c.is_ascii_hexdigit()),
        "byte" => base64_ok(s),
        "password" => true,
        "email" => s
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@')),
        "uri" => {
            s.split_once(':').is_some_and(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            }) || s.starts_with('/')
        }
        "hexcolor" => {
            let h = s.strip_prefix('#').unwrap_or(s);
            matches!(h.len(), 3 | 6) && h.chars().all(hex)
        }
        "rgbcolor" => s
            .strip_prefix("rgb(")
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|r| {
                let parts: Vec<&str> = r.split(',').map(str::trim).collect();
                parts.len() == 3
                    && parts
                        .iter()
                        .all(|p| p.parse::<u16>().is_ok_and(|n| n <= 255))
            }),
        "ssn" => {
            let d: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
            d.len() == 9 && all(|c| c.is_ascii_digit() || c == '-' || c == ' ')
        }
        "isbn" | "isbn10" | "isbn13" | "creditcard" => {
            let d: Vec<char> = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            match format {
                "isbn10" => d.len() == 10,
                "isbn13" => d.len() == 13,
                "isbn" => d.len() == 10 || d.len() == 13,
                _ => (13..=19).contains(&d.len()) && d.iter().all(char::is_ascii_digit),
            }
        }
        _ => true,
    }
}

fn base64_ok(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    let pad = s.len() - t.len();
    s.len().is_multiple_of(4)
        && pad <= 2
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// strfmt `IsDate`: Go `time.Parse("2006-01-02", s)`.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// strfmt `IsDateTime`: a date, `t`, then `hh:mm:ss[.frac](z|±hh:mm)` (case-insensitive).
fn is_date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let t: Vec<char> = parts[1].chars().collect();
    let digits = |r: std::ops::Range<usize>| {
        r.clone()
            .all(|i| t.get(i).is_some_and(char::is_ascii_digit))
    };
    if t.len() < 9 || !digits(0..2) || t[2] != ':' || !digits(3..5) || t[5] != ':' || !digits(6..8)
    {
        return false;
    }
    let two = |i: usize| t[i..i + 2].iter().collect::<String>();
    if two(0).as_str() > "23" || two(3).as_str() > "59" || two(6).as_str() > "59" {
        return false;
    }
    let mut i = 8;
    // `(.[0-9]+)?`: any one character followed by digits
    if i + 1 < t.len() && t[i] != 'z' && t[i] != '+' && t[i] != '-' && t[i + 1].is_ascii_digit() {
        i += 1;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
    }
    let zone: String = t[i..].iter().collect();
    zone == "z" || {
        let z = zone.as_bytes();
        z.len() == 6
            && (z[0] == b'+' || z[0] == b'-')
            && z[1].is_ascii_digit()
            && z[2].is_ascii_digit()
            && z[3] == b':'
            && z[4].is_ascii_digit()
            && z[5].is_ascii_digit()
    }
}

/// strfmt UUID patterns: 8-4-4-4-12 hex groups, each dash optional; versions 3/4/5
/// fix the version digit, 4/5 also the variant (`[89ab]`).
fn is_uuid(s: &str, version: Option<char>) -> bool {
    let c: Vec<char> = s.to_ascii_lowercase().chars().collect();
    let mut i = 0;
    for (g, len) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if g > 0 && c.get(i) == Some(&'-') {
            i += 1;
        }
        let Some(group) = c.get(i..i + len) else {
            return false;
        };
        if !group.iter().all(char::is_ascii_hexdigit) {
            return false;
        }
        if g == 2 && version.is_some_and(|v| group[0] != v) {
            return false;
        }
        if g == 3
            && matches!(version, Some('4' | '5'))
            && !matches!(group[0], '8' | '9' | 'a' | 'b')
        {
            return false;
        }
        i += len;
    }
    i == c.len()
}

/// strfmt `ParseDuration`: Go `time.ParseDuration`, else any `<digits> <unit>` match
/// with a known unit (`5 days`, `3 hours`).
fn is_duration(s: &str) -> bool {
    if go_parse_duration_ok(s) {
        return true;
    }
    const UNITS: &[&[&str]] = &[
        &["ns", "nano"],
        &["us", "µs", "micro"],
        &["ms", "milli"],
        &["s", "sec"],
        &["m", "min"],
        &["h", "hr", "hour"],
        &["d", "day"],
        &["w", "wk", "week"],
    ];
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if !c[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        while i < c.len() && c[i].is_ascii_digit() {
            i += 1;
        }
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < c.len() && (c[i].is_ascii_alphabetic() || c[i] == 'µ') {
            i += 1;
        }
        if i == start {
            continue;
        }
        let unit: String = c[start..i].iter().collect::<String>().to_lowercase();
        let known = UNITS.iter().any(|variants| {
            let last = variants.len() - 1;
            variants
                .iter()
                .enumerate()
                .any(|(k, v)| (k == last && unit.starts_with(v)) || unit == *v)
        });
        if known {
            return true;
        }
    }
    false
}

/// Go `time.ParseDuration` syntax: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` or `0`.
fn go_parse_duration_ok(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t == "0" {
        return true;
    }
    if t.is_empty() {
        return false;
    }
    let units = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"];
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[num_len..];
        let Some(u) = units
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len())
        else {
            return false;
        };
        rest = &rest[u.len()..];
    }
    true
}

// ───────────────────────────── metadata ─────────────────────────────

const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

fn is_dns_label(l: &str, first_alpha: bool) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (if first_alpha {
            b[0].is_ascii_lowercase()
        } else {
            b[0] != b'-'
        })
        && b[b.len() - 1] != b'-'
}

/// `validation.IsDNS1123Subdomain` messages.
pub fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if value.is_empty() || !value.split('.').all(|l| is_dns_label(l, false)) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// `validation.IsDNS1123Label` messages.
fn dns1123_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_dns_label(value, false) {
        errs.push(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
        ));
    }
    errs
}

/// `validation.IsDNS1035Label` messages.
fn dns1035_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_dns_label(value, true) {
        errs.push(format!(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')"
        ));
    }
    errs
}

/// `NameIsDNSSubdomain(name, prefix)`.
fn name_is_dns_subdomain(name: &str, prefix: bool) -> Vec<String> {
    if prefix && name.len() > 1 && name.ends_with('-') {
        // Go slices bytes here; keep that (lossily) without splitting a char
        let masked = format!(
            "{}a",
            String::from_utf8_lossy(&name.as_bytes()[..name.len() - 2])
        );
        return dns1123_subdomain_errors(&masked);
    }
    dns1123_subdomain_errors(name)
}

fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) => match go_num(n) {
            GoNum::Int(_) => "int64",
            GoNum::Float(_) => "float64",
        },
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Go `%v` of a decoded JSON value.
fn go_plain_v(v: &Value) -> String {
    fn inner(v: &Value, depth: usize, out: &mut String) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::Null => out.push_str("<nil>"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&go_num_str(n)),
            Value::String(s) => out.push_str(s),
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    inner(x, depth + 1, out);
                }
                out.push(']');
            }
            Value::Object(m) => {
                out.push_str("map[");
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                for (i, (k, x)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    inner(x, depth + 1, out);
                }
                out.push(']');
            }
        }
    }
    let mut out = String::new();
    inner(v, 0, &mut out);
    out
}

/// ObjectMeta checks of a custom resource on create (name / generateName).
fn validate_metadata(obj: &Value, create: bool, out: &mut Vec<Cause>) {
    let Some(raw) = obj.get("metadata") else {
        if create {
            out.push(cause(
                R_REQUIRED,
                "metadata.name",
                Bad::Omit,
                "name or generateName is required",
            ));
        }
        return;
    };
    if raw.is_null() {
        if create {
            out.push(cause(
                R_REQUIRED,
                "metadata.name",
                Bad::Omit,
                "name or generateName is required",
            ));
        }
        return;
    }
    let Some(meta) = raw.as_object() else {
        out.push(cause(
            R_INVALID,
            "metadata",
            Bad::Json(raw.clone()),
            &format!(
                "expected map[string]interface{{}}, got {}",
                go_type_name(raw)
            ),
        ));
        return;
    };
    for key in ["name", "generateName", "namespace"] {
        if let Some(v) = meta.get(key).filter(|v| !v.is_string() && !v.is_null()) {
            out.push(cause(
                R_INVALID,
                "metadata",
                Bad::Json(raw.clone()),
                &format!(
                    "json: cannot unmarshal {} into Go struct field ObjectMeta.{key} of type string",
                    match v {
                        Value::Number(_) => "number",
                        Value::Bool(_) => "bool",
                        Value::Array(_) => "array",
                        _ => "object",
                    }
                ),
            ));
            return;
        }
    }
    if !create {
        return;
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !generate.is_empty() {
        for msg in name_is_dns_subdomain(generate, true) {
            out.push(cause(
                R_INVALID,
                "metadata.generateName",
                bad_str(generate),
                &msg,
            ));
        }
    }
    if name.is_empty() {
        out.push(cause(
            R_REQUIRED,
            "metadata.name",
            Bad::Omit,
            "name or generateName is required",
        ));
    } else {
        for msg in name_is_dns_subdomain(name, false) {
            out.push(cause(R_INVALID, "metadata.name", bad_str(name), &msg));
        }
    }
}

/// `validateEmbeddedResource` of `schemaobjectmeta.Validate` for nested embedded resources.
fn validate_embedded(s: &Value, x: &Value, path: &str, depth: usize, out: &mut Vec<Cause>) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            if flag(s, "x-kubernetes-embedded-resource") {
                if !m.contains_key("apiVersion") {
                    out.push(cause(
                        R_REQUIRED,
                        &nil_path(&child(path, "apiVersion")),
                        Bad::Omit,
                        "",
                    ));
                }
                if !m.contains_key("kind") {
                    out.push(cause(
                        R_REQUIRED,
                        &nil_path(&child(path, "kind")),
                        Bad::Omit,
                        "",
                    ));
                }
                if let Some(av) = m.get("apiVersion") {
                    let p = child(path, "apiVersion");
                    match av.as_str() {
                        None => out.push(cause(
                            R_INVALID,
                            &p,
                            Bad::Json(av.clone()),
                            "must be a string",
                        )),
                        Some("") => {
                            out.push(cause(R_INVALID, &p, bad_str(""), "must not be empty"))
                        }
                        Some(a) if a.matches('/').count() > 1 => out.push(cause(
                            R_INVALID,
                            &p,
                            bad_str(a),
                            &format!("unexpected GroupVersion string: {a}"),
                        )),
                        _ => {}
                    }
                }
                if let Some(k) = m.get("kind") {
                    let p = child(path, "kind");
                    match k.as_str() {
                        None => out.push(cause(
                            R_INVALID,
                            &p,
                            Bad::Json(k.clone()),
                            "must be a string",
                        )),
                        Some("") => {
                            out.push(cause(R_INVALID, &p, bad_str(""), "must not be empty"))
                        }
                        Some(kind) => {
                            let errs = dns1035_label_errors(&kind.to_lowercase());
                            if !errs.is_empty() {
                                out.push(cause(
                                    R_INVALID,
                                    &p,
                                    bad_str(kind),
                                    &format!(
                                        "may have mixed case, but should otherwise match: {}",
                                        errs.join(",")
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if let Some(p) = props(s).and_then(|p| p.get(k)) {
                    validate_embedded(p, &m[k], &child(path, k), depth + 1, out);
                } else if let Some(a) = addl(s) {
                    validate_embedded(a, &m[k], &subscript(path, k), depth + 1, out);
                }
            }
        }
        Value::Array(arr) => {
            if let Some(it) = items(s) {
                for (i, v) in arr.iter().enumerate() {
                    validate_embedded(it, v, &subscript(path, &i.to_string()), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

// ───────────────────────────── list types ─────────────────────────────

fn list_errors(s: &Value, x: &Value, path: &str, depth: usize, out: &mut Vec<Cause>) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if let Some(p) = props(s).and_then(|p| p.get(k)) {
                    list_errors(p, &m[k], &child(path, k), depth + 1, out);
                } else if let Some(a) = addl(s) {
                    list_errors(a, &m[k], &subscript(path, k), depth + 1, out);
                }
            }
        }
        Value::Array(arr) => {
            match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => {
                    for i in non_unique(arr) {
                        out.push(cause(
                            R_DUPLICATE,
                            &subscript(path, &i.to_string()),
                            Bad::Json(arr[i].clone()),
                            "",
                        ));
                    }
                }
                Some("map") => list_map_errors(s, arr, path, out),
                _ => {}
            }
            if let Some(it) = items(s) {
                for (i, v) in arr.iter().enumerate() {
                    list_errors(it, v, &subscript(path, &i.to_string()), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Indices of second occurrences (Go `validateListSet`).
fn non_unique(arr: &[Value]) -> Vec<usize> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, x) in arr.iter().enumerate() {
        let key = match x {
            Value::Number(n) => match go_num(n) {
                GoNum::Int(v) => format!("i:{v}"),
                GoNum::Float(f) => format!("f:{}", go_float(f)),
            },
            other => format!("j:{}", go_json(other)),
        };
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, times)) => {
                *times += 1;
                if *times == 2 {
                    out.push(i);
                }
            }
            None => seen.push((key, 1)),
        }
    }
    out
}

fn list_map_errors(s: &Value, arr: &[Value], path: &str, out: &mut Vec<Cause>) {
    for (i, x) in arr.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            out.push(cause(
                R_INVALID,
                &subscript(path, &i.to_string()),
                Bad::Json(x.clone()),
                "must be an object for an array of list-type map",
            ));
            return;
        }
    }
    if arr.len() <= 1 {
        return;
    }
    let key_fields = list_map_keys(s);
    let keys: Vec<Value> = arr
        .iter()
        .map(|x| {
            let mut key = Map::new();
            if let Some(m) = x.as_object() {
                for f in &key_fields {
                    if let Some(v) = m.get(f) {
                        key.insert(f.clone(), v.clone());
                    }
                }
            }
            Value::Object(key)
        })
        .collect();
    for i in non_unique(&keys) {
        out.push(cause(
            R_DUPLICATE,
            &subscript(path, &i.to_string()),
            Bad::Json(keys[i].clone()),
            "",
        ));
    }
}

/// For list-type map items: the old item with the same key values.
fn correlate_map_item<'a>(
    s: &Value,
    new_item: &Value,
    old_list: Option<&'a Value>,
) -> Option<&'a Value> {
    if s.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys = list_map_keys(s);
    let new_m = new_item.as_object()?;
    old_list?.as_array()?.iter().find(|o| {
        o.as_object().is_some_and(|om| {
            keys.iter().all(|k| match (new_m.get(k), om.get(k)) {
                (Some(a), Some(b)) => a == b,
                (None, None) => true,
                _ => false,
            })
        })
    })
}

// ───────────────────────────── CEL ─────────────────────────────

/// One `x-kubernetes-validations` entry, as the apiserver reads it.
#[derive(Debug, Clone, Default)]
struct RuleSpec {
    rule: String,
    message: Option<String>,
    message_expression: Option<String>,
    reason: Option<String>,
    field_path: Option<String>,
    optional_old_self: Option<bool>,
    raw: Value,
}

impl RuleSpec {
    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Self {
            rule: s("rule").unwrap_or_default(),
            message: s("message"),
            message_expression: s("messageExpression"),
            reason: s("reason"),
            field_path: s("fieldPath"),
            optional_old_self: v.get("optionalOldSelf").and_then(Value::as_bool),
            raw: v.clone(),
        }
    }

    /// `ruleErrorString`.
    fn error_string(&self) -> String {
        match self.message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => self.rule.trim().to_string(),
        }
    }

    /// `ruleMessageOrDefault`.
    fn message_or_default(&self) -> String {
        match self.message.as_deref() {
            Some(m) if !m.is_empty() => m.trim().to_string(),
            _ => format!("failed rule: {}", self.error_string()),
        }
    }

    /// Go `%#v` of `apiextensions.ValidationRule` (the bad value of CRD rule errors).
    fn go_struct(&self) -> String {
        let opt_str = |o: &Option<String>, ty: &str| match o {
            Some(v) => format!("(*{ty})({})", go_quote(v)),
            None => format!("(*{ty})(nil)"),
        };
        format!(
            "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{}, FieldPath:{}, OptionalOldSelf:{}}}",
            go_quote(&self.rule),
            go_quote(self.message.as_deref().unwrap_or("")),
            go_quote(self.message_expression.as_deref().unwrap_or("")),
            opt_str(&self.reason, "apiextensions.FieldValueErrorReason"),
            go_quote(self.field_path.as_deref().unwrap_or("")),
            match self.optional_old_self {
                Some(b) => format!("(*bool)({b})"),
                None => "(*bool)(nil)".to_string(),
            }
        )
    }
}

fn rules_of(s: &Value) -> Vec<RuleSpec> {
    s.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(RuleSpec::from_json).collect())
        .unwrap_or_default()
}

/// What static analysis of a CEL source found.
struct RuleShape {
    uses_old_self: bool,
    /// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`...).
    loop_depth: u32,
    /// Variables referenced that are neither `self`/`oldSelf` nor bound by a macro.
    undeclared: Vec<String>,
    /// Longest list / map literal in the expression (what a comprehension may iterate
    /// besides the object's own collections).
    longest_literal: usize,
}

/// Parses a CEL source with the guards the apiserver's limits imply. Must run on a
/// thread with a large stack (see [`with_cel_stack`]).
fn analyze_cel(src: &str) -> Result<RuleShape, String> {
    use kube_cel::cel::common::ast::{EntryExpr, Expr};
    if src.len() > MAX_RULE_LEN {
        return Err(format!(
            "ERROR: <input>: expression size {} exceeds the limit of {MAX_RULE_LEN}",
            src.len()
        ));
    }
    let program =
        kube_cel::cel::Program::compile(src).map_err(|e| format!("ERROR: <input>: {e}"))?;
    // iterative walk: depth, loop nesting, free variables
    let mut max_depth = 0usize;
    let mut loop_depth = 0u32;
    let mut undeclared = Vec::new();
    let mut longest_literal = 0usize;
    let root = &program.expression().expr;
    let mut stack: Vec<(&Expr, usize, u32, Vec<String>)> = vec![(root, 1, 0, Vec::new())];
    while let Some((e, d, loops, bound)) = stack.pop() {
        max_depth = max_depth.max(d);
        loop_depth = loop_depth.max(loops);
        if d > MAX_AST_DEPTH {
            break;
        }
        match e {
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    stack.push((&t.expr, d + 1, loops, bound.clone()));
                }
                for a in &c.args {
                    stack.push((&a.expr, d + 1, loops, bound.clone()));
                }
            }
            Expr::Comprehension(c) => {
                stack.push((&c.iter_range.expr, d + 1, loops, bound.clone()));
                let mut inner = bound.clone();
                inner.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    inner.push(v2.clone());
                }
                inner.push(c.accu_var.clone());
                stack.push((&c.accu_init.expr, d + 1, loops, bound.clone()));
                for x in [&c.loop_cond, &c.loop_step, &c.result] {
                    stack.push((&x.expr, d + 1, loops + 1, inner.clone()));
                }
            }
            Expr::Ident(name) => {
                if !bound.contains(name)
                    && name != "self"
                    && name != "oldSelf"
                    && !undeclared.contains(name)
                {
                    undeclared.push(name.clone());
                }
            }
            Expr::List(l) => {
                longest_literal = longest_literal.max(l.elements.len());
                for x in &l.elements {
                    stack.push((&x.expr, d + 1, loops, bound.clone()));
                }
            }
            Expr::Map(m) => {
                longest_literal = longest_literal.max(m.entries.len());
                for en in &m.entries {
                    match &en.expr {
                        EntryExpr::MapEntry(me) => {
                            stack.push((&me.key.expr, d + 1, loops, bound.clone()));
                            stack.push((&me.value.expr, d + 1, loops, bound.clone()));
                        }
                        EntryExpr::StructField(sf) => {
                            stack.push((&sf.value.expr, d + 1, loops, bound.clone()))
                        }
                    }
                }
            }
            Expr::Struct(st) => {
                for en in &st.entries {
                    match &en.expr {
                        EntryExpr::MapEntry(me) => {
                            stack.push((&me.key.expr, d + 1, loops, bound.clone()));
                            stack.push((&me.value.expr, d + 1, loops, bound.clone()));
                        }
                        EntryExpr::StructField(sf) => {
                            stack.push((&sf.value.expr, d + 1, loops, bound.clone()))
                        }
                    }
                }
            }
            Expr::Select(sel) => stack.push((&sel.operand.expr, d + 1, loops, bound.clone())),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    if max_depth > MAX_AST_DEPTH {
        return Err(format!(
            "ERROR: <input>: expression nesting exceeds the limit of {MAX_AST_DEPTH}"
        ));
    }
    // identifiers that are types/functions in CEL, not variables
    const BUILTIN_IDENTS: &[&str] = &[
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
        "dyn",
        "duration",
        "timestamp",
        "optional",
        "cel",
        "math",
        "strings",
        "sets",
        "quantity",
        "isQuantity",
        "url",
        "isURL",
        "ip",
        "isIP",
        "cidr",
        "isCIDR",
        "semver",
        "isSemver",
        "format",
    ];
    undeclared.retain(|n| {
        !BUILTIN_IDENTS.contains(&n.as_str()) && !n.starts_with('@') && !n.starts_with("__")
    });
    Ok(RuleShape {
        uses_old_self: program.references().has_variable("oldSelf"),
        loop_depth,
        undeclared,
        longest_literal,
    })
}

/// Length of the largest list, map or string (in 64-byte units) in a value: the
/// iteration count a comprehension over it can reach (bounded walk).
fn largest_collection(v: &Value) -> f64 {
    let mut max = 1usize;
    let mut seen = 0usize;
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        seen += 1;
        if seen > 10_000_000 {
            break;
        }
        match x {
            Value::Array(a) => {
                max = max.max(a.len());
                stack.extend(a.iter());
            }
            Value::Object(m) => {
                max = max.max(m.len());
                stack.extend(m.values());
            }
            Value::String(s) => max = max.max(s.len() / 64),
            _ => {}
        }
    }
    max as f64
}

/// Removes `x-kubernetes-validations` from every node below the root.
fn strip_nested_rules(s: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(m) = s.as_object_mut() else { return };
    if depth > 0 {
        m.remove("x-kubernetes-validations");
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(c) = m.get_mut(key) {
            strip_nested_rules(c, depth + 1);
        }
    }
    if let Some(Value::Object(p)) = m.get_mut("properties") {
        for c in p.values_mut() {
            strip_nested_rules(c, depth + 1);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(a)) = m.get_mut(key) {
            for c in a.iter_mut() {
                strip_nested_rules(c, depth + 1);
            }
        }
    }
}

/// Parses a rule `fieldPath` (JSONPath subset) against `s`, returning the normalized
/// `field.Path` string, as `ValidFieldPath` does.
fn normalize_field_path(json_path: &str, s: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut node = s;
    let chars: Vec<char> = json_path.chars().collect();
    let mut i = 0;
    let step =
        |name: &str, named: bool, node: &mut &Value, out: &mut String| -> Result<(), String> {
            if named {
                let p = props(node)
                    .and_then(|p| p.get(name))
                    .ok_or_else(|| "does not refer to a valid field".to_string())?;
                *out = child(out, name);
                *node = p;
            } else {
                *out = subscript(out, name);
                *node = addl(node).ok_or_else(|| "does not refer to a valid field".to_string())?;
            }
            Ok(())
        };
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && !matches!(chars[i], '.' | '[' | ']') {
                    i += 1;
                }
                if start == i {
                    return Err("unexpected end of JSON path".into());
                }
                let tok: String = chars[start..i].iter().collect();
                let named = if props(node).is_some() {
                    true
                } else if addl(node).is_some() {
                    false
                } else {
                    return Err("does not refer to a valid field".into());
                };
                step(&tok, named, &mut node, &mut out)?;
            }
            '[' => {
                i += 1;
                if i >= chars.len() || chars[i] != '\'' {
                    return Err("expected single quoted string".into());
                }
                i += 1;
                let mut tok = String::new();
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                        tok.push(match chars[i] {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            c @ ('\'' | '\\') => c,
                            c => {
                                return Err(format!(
                                    "invalid string literal: invalid escape char \\{c}"
                                ));
                            }
                        });
                    } else {
                        tok.push(chars[i]);
                    }
                    i += 1;
                }
                if i + 1 >= chars.len() || chars[i + 1] != ']' {
                    return Err("expected ]".into());
                }
                i += 2;
                let named = if props(node).is_some() {
                    true
                } else if addl(node).is_some() {
                    false
                } else {
                    return Err("does not refer to a valid field".into());
                };
                step(&tok, named, &mut node, &mut out)?;
            }
            c => return Err(format!("expected [ or . but got: {c}")),
        }
    }
    Ok(out)
}

/// Runs `f` on a thread with a large stack (CEL parsing and evaluation recurse deeply).
/// Returns `None` if the thread could not be started or panicked.
fn with_cel_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::Builder::new()
        .name("crd-schema-cel".into())
        .stack_size(CEL_STACK)
        .spawn(f)
        .ok()?
        .join()
        .ok()
}

/// What evaluating one rule gave.
enum Outcome {
    /// The rule returned false; the message as kube-cel resolves it (messageExpression
    /// result, else message, else `failed rule: <rule>`).
    Fail(String),
    /// Evaluation failed with this error text.
    Eval(String),
    /// The rule did not return a bool.
    NotBool,
    /// The rule could not be compiled.
    Compile(String),
}

/// Evaluates one rule with kube-cel on `s` stripped of nested rules.
fn eval_with_kube_cel(r: &RuleSpec, s: &Value, v: &Value, old: Option<&Value>) -> Vec<Outcome> {
    let mut node = s.clone();
    strip_nested_rules(&mut node, 0);
    let mut raw = r.raw.clone();
    if let Some(me) = r.message_expression.as_deref()
        && analyze_cel(me).is_err()
        && let Some(m) = raw.as_object_mut()
    {
        // an unusable messageExpression falls back to the message, never reaches the parser
        m.remove("messageExpression");
    }
    if let Some(m) = node.as_object_mut() {
        m.insert("x-kubernetes-validations".into(), Value::Array(vec![raw]));
        m.remove("allOf");
    }
    let Err(errors) = kube_cel::validate(&node, v, old) else {
        return Vec::new();
    };
    errors
        .into_vec()
        .into_iter()
        .map(|e| match e.kind {
            kube_cel::ErrorKind::ValidationFailure => Outcome::Fail(e.message),
            kube_cel::ErrorKind::EvaluationError | kube_cel::ErrorKind::UnsupportedReference => {
                Outcome::Eval(
                    e.message
                        .strip_prefix("rule evaluation error: ")
                        .unwrap_or(&e.message)
                        .to_string(),
                )
            }
            kube_cel::ErrorKind::InvalidResult => Outcome::NotBool,
            _ => Outcome::Compile(e.message),
        })
        .collect()
}

/// CEL reserved words escaped as `__word__` when used as field names.
const CEL_RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// JSON to CEL value with the apiserver's field-name escaping (maps under
/// `additionalProperties` keep their keys).
fn json_to_cel(v: &Value, s: Option<&Value>, depth: usize) -> kube_cel::cel::Value {
    use kube_cel::cel::Value as C;
    use kube_cel::cel::objects::{Key, Map as CelMap};
    use std::sync::Arc;
    if depth > MAX_DEPTH {
        return C::Null;
    }
    match v {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                C::Int(i)
            } else if let Some(u) = n.as_u64() {
                C::UInt(u)
            } else {
                C::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(x) => C::String(Arc::new(x.clone())),
        Value::Array(a) => C::List(Arc::new(
            a.iter()
                .map(|x| json_to_cel(x, s.and_then(items), depth + 1))
                .collect(),
        )),
        Value::Object(m) => {
            let is_map = s.is_some_and(|s| addl(s).is_some());
            let mut out = std::collections::HashMap::with_capacity(m.len());
            for (k, x) in m {
                let key = if is_map {
                    k.clone()
                } else if CEL_RESERVED.contains(&k.as_str()) {
                    format!("__{k}__")
                } else {
                    k.replace('_', "__")
                        .replace('.', "__dot__")
                        .replace('-', "__dash__")
                        .replace('/', "__slash__")
                };
                out.insert(
                    Key::String(Arc::new(key)),
                    json_to_cel(x, s.and_then(|s| field_schema(s, k)), depth + 1),
                );
            }
            C::Map(CelMap { map: Arc::new(out) })
        }
    }
}

/// Evaluates an `optionalOldSelf: true` transition rule: `oldSelf` is an optional,
/// `optional.none()` on create and `optional.of(old)` on update (as the apiserver).
fn eval_optional_old_self(r: &RuleSpec, s: &Value, v: &Value, old: Option<&Value>) -> Vec<Outcome> {
    use kube_cel::KubeCelExt;
    use kube_cel::cel::objects::OptionalValue;
    use kube_cel::cel::{Context, Program, Value as C};
    use std::sync::Arc;
    let program = match Program::compile(&r.rule) {
        Ok(p) => p,
        Err(e) => return vec![Outcome::Compile(format!("compilation failed: {e}"))],
    };
    let mut ctx = Context::default().with_all();
    ctx.add_variable_from_value("self", json_to_cel(v, Some(s), 0));
    let opt = match old {
        Some(o) => OptionalValue::of(json_to_cel(o, Some(s), 0)),
        None => OptionalValue::none(),
    };
    ctx.add_variable_from_value("oldSelf", C::Opaque(Arc::new(opt)));
    match program.execute(&ctx) {
        Ok(C::Bool(true)) => Vec::new(),
        Ok(C::Bool(false)) => {
            let mut message = r
                .message
                .clone()
                .unwrap_or_else(|| format!("failed rule: {}", r.rule));
            if let Some(me) = r.message_expression.as_deref()
                && analyze_cel(me).is_ok()
                && let Ok(p) = Program::compile(me)
                && let Ok(C::String(m)) = p.execute(&ctx)
            {
                message = (*m).clone();
            }
            vec![Outcome::Fail(message)]
        }
        Ok(_) => vec![Outcome::NotBool],
        Err(e) => vec![Outcome::Eval(e.to_string())],
    }
}

/// State of one CEL validation pass.
struct CelPass {
    errs: Vec<Cause>,
    /// Set when the apiserver would stop evaluating further rules (cost exceeded).
    stopped: bool,
    /// Whether failures of non-transition rules on unchanged values are dropped
    /// (update ratcheting); off when checking CRD defaults.
    ratcheting: bool,
}

impl CelPass {
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        s: &Value,
        v: &Value,
        old: Option<&Value>,
        path: &str,
        ratchet: bool,
        depth: usize,
    ) {
        if self.stopped || depth > MAX_DEPTH || v.is_null() || !s.is_object() {
            return;
        }
        // rules of this node, and of its allOf branches (same value, same typing)
        let mut groups: Vec<Vec<RuleSpec>> = vec![rules_of(s)];
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for b in all {
                groups.push(rules_of(b));
            }
        }
        for rules in groups.into_iter().filter(|g| !g.is_empty()) {
            self.eval_rules(s, &rules, v, old, path, ratchet);
            if self.stopped {
                return;
            }
        }
        match v {
            Value::Array(arr) => {
                if let Some(it) = items(s) {
                    for (i, x) in arr.iter().enumerate() {
                        let o = correlate_map_item(s, x, old);
                        let r = match o {
                            Some(o) => o == x,
                            None => ratchet,
                        };
                        self.walk(it, x, o, &subscript(path, &i.to_string()), r, depth + 1);
                    }
                }
            }
            Value::Object(m) => {
                if let Some(a) = addl(s) {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    for k in keys {
                        let o = old.and_then(|o| o.get(k));
                        let r = o.is_some_and(|o| *o == m[k]);
                        self.walk(a, &m[k], o, &subscript(path, k), r, depth + 1);
                    }
                }
                if let Some(p) = props(s) {
                    let mut keys: Vec<&String> = m.keys().filter(|k| p.contains_key(*k)).collect();
                    keys.sort();
                    for k in keys {
                        let o = old.and_then(|o| o.get(k));
                        let r = o.is_some_and(|o| *o == m[k]);
                        self.walk(&p[k], &m[k], o, &child(path, k), r, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    fn eval_rules(
        &mut self,
        s: &Value,
        rules: &[RuleSpec],
        v: &Value,
        old: Option<&Value>,
        path: &str,
        ratchet: bool,
    ) {
        let ty = s_type(s).to_string();
        let node_path = nil_path(path);
        let mut runnable: Vec<(usize, bool)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let shape = match analyze_cel(&r.rule) {
                Ok(shape) => shape,
                Err(e) => {
                    self.errs.push(cause(
                        R_INVALID,
                        &node_path,
                        bad_str(&ty),
                        &format!("rule compile error: compilation failed: {e}"),
                    ));
                    continue;
                }
            };
            if let Some(name) = shape.undeclared.first() {
                self.errs.push(cause(
                    R_INVALID,
                    &node_path,
                    bad_str(&ty),
                    &format!("rule compile error: compilation failed: ERROR: <input>: undeclared reference to '{name}' (in container '')"),
                ));
                continue;
            }
            if shape.uses_old_self && old.is_none() && r.optional_old_self != Some(true) {
                continue;
            }
            if shape.loop_depth > 0 {
                let n = largest_collection(v)
                    .max(old.map(largest_collection).unwrap_or(1.0))
                    .max(shape.longest_literal as f64);
                let est = n.powi(shape.loop_depth.min(64) as i32);
                if est > PER_CALL_LIMIT {
                    self.errs.push(cause(
                        R_INVALID,
                        &node_path,
                        bad_str(&ty),
                        &format!(
                            "'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}",
                            r.error_string()
                        ),
                    ));
                    self.stopped = true;
                    return;
                }
            }
            runnable.push((i, shape.uses_old_self));
        }
        if runnable.is_empty() {
            return;
        }
        // one run per rule keeps results attributable to their rule
        for (i, uses_old_self) in runnable {
            let r = &rules[i];
            let outcomes = if r.optional_old_self == Some(true) && uses_old_self {
                eval_optional_old_self(r, s, v, old)
            } else {
                eval_with_kube_cel(r, s, v, old)
            };
            let field = match r
                .field_path
                .as_deref()
                .map(str::trim)
                .filter(|f| !f.is_empty())
            {
                Some(fp) => match normalize_field_path(fp, s) {
                    Ok(n) if !n.is_empty() => child(path, &n),
                    _ => path.to_string(),
                },
                None => path.to_string(),
            };
            for outcome in outcomes {
                match outcome {
                    Outcome::Fail(message) => {
                        if self.ratcheting && !uses_old_self && ratchet {
                            continue; // ratcheting: unchanged value, error becomes a warning
                        }
                        let detail = self.failure_detail(r, &message);
                        let f = nil_path(&field);
                        let c = match r.reason.as_deref() {
                            Some("FieldValueForbidden") => {
                                cause(R_FORBIDDEN, &f, Bad::Omit, &detail)
                            }
                            Some("FieldValueRequired") => cause(R_REQUIRED, &f, Bad::Omit, &detail),
                            Some("FieldValueDuplicate") => cause(R_DUPLICATE, &f, bad_str(&ty), ""),
                            _ => cause(R_INVALID, &f, bad_str(&ty), &detail),
                        };
                        self.errs.push(c);
                    }
                    Outcome::Eval(raw) => {
                        let mut msg = raw;
                        if let Some(first) = msg.get(..1) {
                            msg = first.to_lowercase() + &msg[1..];
                        }
                        let detail = if msg.starts_with("no such overload") {
                            format!(
                                "'{msg}': call arguments did not match a supported operator, function or macro signature for rule: {}",
                                r.error_string()
                            )
                        } else {
                            format!("{msg} evaluating rule: {}", r.error_string())
                        };
                        self.errs
                            .push(cause(R_INVALID, &node_path, bad_str(&ty), &detail));
                    }
                    Outcome::NotBool => {
                        self.errs.push(cause(
                            R_INVALID,
                            &node_path,
                            bad_str(&ty),
                            "rule compile error: cel expression must evaluate to a bool",
                        ));
                    }
                    Outcome::Compile(message) => {
                        self.errs.push(cause(
                            R_INVALID,
                            &node_path,
                            bad_str(&ty),
                            &format!("rule compile error: {message}"),
                        ));
                    }
                }
            }
        }
    }

    /// The message of a failed rule: `messageExpression` result when usable, else the
    /// static message, else `failed rule: <rule>`.
    fn failure_detail(&self, r: &RuleSpec, kube_cel_message: &str) -> String {
        let fallback = r.message_or_default();
        if r.message_expression
            .as_deref()
            .is_some_and(|m| !m.trim().is_empty())
        {
            let kube_default = r
                .message
                .clone()
                .unwrap_or_else(|| format!("failed rule: {}", r.rule));
            if kube_cel_message != kube_default {
                let t = kube_cel_message.trim();
                if !t.is_empty() && !t.contains('\n') && t.len() <= 5 * 1024 {
                    return t.to_string();
                }
            }
        }
        fallback
    }
}

// ───────────────────────────── scale subresource ─────────────────────────────

#[derive(Debug, Clone, Default)]
struct Scale {
    spec_replicas_path: String,
    status_replicas_path: String,
    label_selector_path: Option<String>,
}

fn nested<'a>(obj: &'a Value, json_path: &str) -> Result<Option<&'a Value>, String> {
    let fields: Vec<&str> = json_path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for (i, f) in fields.iter().enumerate() {
        let Some(m) = cur.as_object() else {
            return Err(format!(
                ".{} accessor error: {} is of the type {}, expected map[string]interface{{}}",
                fields[..i].join("."),
                go_plain_v(cur),
                go_type_name(cur)
            ));
        };
        match m.get(*f) {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

fn scale_int_check(obj: &Value, json_path: &str, out: &mut Vec<Cause>) {
    let v = match nested(obj, json_path) {
        Ok(v) => v,
        Err(e) => {
            out.push(cause(R_INVALID, json_path, bad_int(0), &e));
            return;
        }
    };
    let Some(v) = v else { return };
    let as_int = v.as_number().and_then(|n| match go_num(n) {
        GoNum::Int(i) => Some(i),
        GoNum::Float(_) => None,
    });
    match as_int {
        None => out.push(cause(
            R_INVALID,
            json_path,
            bad_int(0),
            &format!(
                ".{} accessor error: {} is of the type {}, expected int64",
                json_path.trim_start_matches('.'),
                go_plain_v(v),
                go_type_name(v)
            ),
        )),
        Some(i) if i < 0 => out.push(cause(
            R_INVALID,
            json_path,
            bad_int(i),
            "should be a non-negative integer",
        )),
        Some(i) if i > i64::from(i32::MAX) => out.push(cause(
            R_INVALID,
            json_path,
            bad_int(i),
            &format!("should be less than or equal to {}", i32::MAX),
        )),
        _ => {}
    }
}

// ───────────────────────────── public interface ─────────────────────────────

/// The schema of one served version of a CustomResourceDefinition.
#[derive(Debug, Clone)]
pub struct CrdVersionSchema {
    schema: Value,
    scale: Option<Scale>,
    status: bool,
}

impl CrdVersionSchema {
    /// From one entry of `spec.versions` of a CRD (reads `schema.openAPIV3Schema` and
    /// `subresources`).
    pub fn from_crd_version(version: &Value) -> Result<Self, String> {
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or_else(|| "missing schema.openAPIV3Schema".to_string())?;
        if !schema.is_object() {
            return Err("schema.openAPIV3Schema must be an object".to_string());
        }
        let scale = version
            .pointer("/subresources/scale")
            .filter(|s| s.is_object())
            .map(|s| Scale {
                spec_replicas_path: s
                    .get("specReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                status_replicas_path: s
                    .get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                label_selector_path: s
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        let status = version
            .pointer("/subresources/status")
            .is_some_and(Value::is_object);
        Ok(Self {
            schema,
            scale,
            status,
        })
    }

    /// The `openAPIV3Schema` this was built from.
    pub fn openapi_schema(&self) -> &Value {
        &self.schema
    }

    /// Whether the version enables the `status` subresource.
    pub fn has_status_subresource(&self) -> bool {
        self.status
    }

    /// `(specReplicasPath, statusReplicasPath, labelSelectorPath)` of the `scale`
    /// subresource, when enabled (paths as written in the CRD, e.g. `.spec.replicas`).
    pub fn scale_paths(&self) -> Option<(String, String, Option<String>)> {
        self.scale.as_ref().map(|s| {
            (
                s.spec_replicas_path.clone(),
                s.status_replicas_path.clone(),
                s.label_selector_path.clone(),
            )
        })
    }

    /// Whether the root carries `x-kubernetes-preserve-unknown-fields: true`.
    pub fn preserves_unknown_fields_at_root(&self) -> bool {
        flag(&self.schema, "x-kubernetes-preserve-unknown-fields")
    }

    /// Applies `default` values, as the apiserver does when decoding a request and when
    /// reading from storage (`structuraldefaulting.Default`): defaults of absent
    /// properties (and of non-nullable `null`s) are set top-down, so a defaulted object
    /// gets its own nested defaults; also under `additionalProperties` and `items`.
    /// Call before [`Self::prune`], as the apiserver's decoder does.
    pub fn apply_defaults(&self, obj: &mut Value) {
        default_node(obj, &self.schema, 0);
    }

    /// Drops fields the schema does not know (unless preserved), like the apiserver
    /// (`pruning.Prune` with the root treated as an embedded resource, so top-level
    /// `apiVersion`, `kind` and `metadata` stay), then drops `null`s of non-nullable
    /// fields that have no default (`PruneNonNullableNullsWithoutDefaults`).
    pub fn prune(&self, obj: &mut Value) {
        let _ = self.prune_unknown_fields(obj);
    }

    /// Like [`Self::prune`], returning the dropped field paths, sorted (e.g.
    /// `spec.foo`, `spec.items[0].bar`), as the apiserver reports them in
    /// `unknown field "..."` warnings / strict field validation errors.
    pub fn prune_unknown_fields(&self, obj: &mut Value) -> Vec<String> {
        let mut p = Pruner {
            unknown: Vec::new(),
        };
        p.prune(obj, Some(&self.schema), true, "", 0);
        prune_nulls(obj, Some(&self.schema), 0);
        p.unknown.sort();
        p.unknown
    }

    /// Validates `obj` (and transition rules against `old` on update).
    ///
    /// Order as the apiserver's customresource strategy: metadata (create: name /
    /// generateName), OpenAPI schema, scale replicas, embedded resources, list-type
    /// set/map uniqueness (on update only if `old` had none), then CEL rules unless an
    /// earlier error is blocking. Call it on the defaulted and pruned object.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let this = self.clone();
        let obj = obj.clone();
        let old = old.cloned();
        with_cel_stack(move || this.validate_inner(&obj, old.as_ref())).unwrap_or_else(|| {
            vec![cause(
                R_INTERNAL,
                "<nil>",
                Bad::Omit,
                "schema validation failed unexpectedly",
            )]
        })
    }

    fn validate_inner(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut out = Vec::new();
        validate_metadata(obj, old.is_none(), &mut out);

        let mut oa = OpenApi { errs: Vec::new() };
        let ratchet_old = old;
        oa.validate(&self.schema, obj, "", 0);
        for e in &oa.errs {
            if let Some(old) = ratchet_old
                && ratcheted(
                    &self.schema,
                    obj,
                    old,
                    if e.code == Code::Required {
                        e.name.rsplit_once('.').map(|(p, _)| p).unwrap_or("")
                    } else {
                        &e.name
                    },
                )
            {
                continue;
            }
            out.push(e.to_cause(""));
        }

        if let Some(scale) = &self.scale {
            if !scale.spec_replicas_path.is_empty() {
                scale_int_check(obj, &scale.spec_replicas_path, &mut out);
            }
            if !scale.status_replicas_path.is_empty() {
                scale_int_check(obj, &scale.status_replicas_path, &mut out);
            }
            if let Some(sel) = scale
                .label_selector_path
                .as_deref()
                .filter(|s| !s.is_empty())
            {
                match nested(obj, sel) {
                    Err(e) => out.push(cause(R_INVALID, sel, bad_str(""), &e)),
                    Ok(Some(v)) if !v.is_string() => out.push(cause(
                        R_INVALID,
                        sel,
                        bad_str(""),
                        &format!(
                            ".{} accessor error: {} is of the type {}, expected string",
                            sel.trim_start_matches('.'),
                            go_plain_v(v),
                            go_type_name(v)
                        ),
                    )),
                    _ => {}
                }
            }
        }

        // embedded resources below the root
        if let Some(m) = obj.as_object() {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if let Some(p) = props(&self.schema).and_then(|p| p.get(k)) {
                    validate_embedded(p, &m[k], k, 1, &mut out);
                }
            }
        }

        let mut lists = Vec::new();
        let old_lists_ok = old.is_none_or(|o| {
            let mut e = Vec::new();
            list_errors(&self.schema, o, "", 0, &mut e);
            e.is_empty()
        });
        if old_lists_ok {
            list_errors(&self.schema, obj, "", 0, &mut lists);
        }
        out.extend(lists);

        let blocking = out.iter().any(|c| {
            matches!(
                c.reason.as_str(),
                R_NOT_SUPPORTED | R_REQUIRED | R_TOO_LONG | R_TOO_MANY | R_TYPE_INVALID
            )
        });
        if blocking {
            out.push(cause(
                R_INVALID,
                "<nil>",
                Bad::Json(Value::Null),
                "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
            ));
        } else {
            let mut pass = CelPass {
                errs: Vec::new(),
                stopped: false,
                ratcheting: true,
            };
            let ratchet = old.is_some_and(|o| o == obj);
            pass.walk(&self.schema, obj, old, "", ratchet, 0);
            out.extend(pass.errs);
        }
        out
    }
}

/// Ratcheting (CRDValidationRatcheting, on by default since 1.30): on update, a schema
/// error at a path whose value is unchanged from the old object is dropped.
fn ratcheted(schema: &Value, obj: &Value, old: &Value, name: &str) -> bool {
    let segs = split_openapi_path(name);
    let (mut n, mut o, mut s) = (obj, old, schema);
    for seg in segs {
        match seg {
            PathSeg::Key(k) => {
                let (Some(nn), Some(oo)) = (n.get(&k), o.get(&k)) else {
                    return false;
                };
                s = field_schema(s, &k).unwrap_or(&Value::Null);
                n = nn;
                o = oo;
            }
            PathSeg::Index(i) => {
                let Some(nn) = n.get(i) else { return false };
                let Some(oo) = correlate_map_item(s, nn, Some(o)) else {
                    // not correlatable: ratchet only if the whole list is unchanged
                    return n == o;
                };
                s = items(s).unwrap_or(&Value::Null);
                n = nn;
                o = oo;
            }
        }
    }
    n == o
}

enum PathSeg {
    Key(String),
    Index(usize),
}

fn split_openapi_path(name: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in name.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(PathSeg::Key(rest[..b].to_string()));
            }
            rest = &rest[b..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some(end) = r.find(']') else { break };
                if let Ok(i) = r[..end].parse::<usize>() {
                    out.push(PathSeg::Index(i));
                }
                rest = &r[end + 1..];
            }
        } else {
            out.push(PathSeg::Key(rest.to_string()));
        }
    }
    out
}

impl ListSemantics for CrdVersionSchema {
    fn list_type(&self, path: &[String]) -> ListType {
        let mut node = &self.schema;
        for name in path {
            let mut guard = 0;
            while let Some(it) = items(node) {
                node = it;
                guard += 1;
                if guard > MAX_DEPTH {
                    return ListType::Atomic;
                }
            }
            match field_schema(node, name) {
                Some(n) => node = n,
                None => return ListType::Atomic,
            }
        }
        if items(node).is_none() && s_type(node) != "array" {
            return ListType::Atomic;
        }
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(list_map_keys(node)),
            _ => ListType::Atomic,
        }
    }
}

// ───────────────────────────── CRD validation ─────────────────────────────

const OPENAPI_V3_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

struct CrdCheck {
    errs: Vec<Cause>,
    /// Schema path of the highest list above the current node whose items cannot be
    /// correlated between old and new objects (not `x-kubernetes-list-type: map`).
    forbid_old_self: Option<String>,
}

impl CrdCheck {
    fn push(&mut self, reason: &str, field: &str, bad: Bad, detail: &str) {
        self.errs.push(cause(reason, field, bad, detail));
    }

    /// Structural-schema and CRD-schema rules for one node (`root` = openAPIV3Schema).
    fn schema_node(
        &mut self,
        s: &Value,
        path: &str,
        kind: NodeKind,
        card: Option<f64>,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let Some(m) = s.as_object() else {
            self.push(R_INVALID, path, Bad::Json(s.clone()), "must be an object");
            return;
        };
        let ty = s_type(s);
        let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
        let int_or_string = flag(s, "x-kubernetes-int-or-string");
        let embedded = flag(s, "x-kubernetes-embedded-resource");
        if let Some(t) = m.get("type")
            && !t.is_string()
        {
            self.push(
                R_INVALID,
                &child(path, "type"),
                Bad::Json(t.clone()),
                "must be a string",
            );
            return;
        }
        if !ty.is_empty() && !OPENAPI_V3_TYPES.contains(&ty) {
            let vals: Vec<String> = OPENAPI_V3_TYPES.iter().map(|t| go_quote(t)).collect();
            self.push(
                R_NOT_SUPPORTED,
                &child(path, "type"),
                bad_str(ty),
                &format!("supported values: {}", vals.join(", ")),
            );
        }
        for (key, what) in [
            ("$ref", "$ref is not supported"),
            ("id", "id is not supported"),
            ("additionalItems", "additionalItems is not supported"),
            ("patternProperties", "patternProperties is not supported"),
            ("definitions", "definitions is not supported"),
            ("dependencies", "dependencies is not supported"),
        ] {
            if m.contains_key(key) {
                self.push(R_FORBIDDEN, &child(path, key), Bad::Omit, what);
            }
        }
        if ty == "null" {
            self.push(
                R_FORBIDDEN,
                &child(path, "type"),
                Bad::Omit,
                "type cannot be set to null, use nullable as an alternative",
            );
        }
        if m.get("items").is_some_and(Value::is_array) {
            self.push(
                R_FORBIDDEN,
                &child(path, "items"),
                Bad::Omit,
                "items must be a schema object and not an array",
            );
        }
        if flag(s, "uniqueItems") {
            self.push(
                R_FORBIDDEN,
                &child(path, "uniqueItems"),
                Bad::Omit,
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            );
        }
        if m.contains_key("properties")
            && m.get("additionalProperties")
                .is_some_and(|a| a.is_object() || a == &Value::Bool(true))
        {
            self.push(
                R_FORBIDDEN,
                &child(path, "additionalProperties"),
                Bad::Omit,
                "additionalProperties and properties are mutual exclusive",
            );
        }
        if let Some(Value::Bool(false)) = m.get("x-kubernetes-preserve-unknown-fields") {
            self.push(
                R_INVALID,
                &child(path, "x-kubernetes-preserve-unknown-fields"),
                Bad::Raw("false".into()),
                "must be true or undefined",
            );
        }
        // structural: type required
        if ty.is_empty() && !preserve && !int_or_string {
            match kind {
                NodeKind::Root => self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must not be empty at the root",
                ),
                NodeKind::Items => self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must not be empty for specified array items",
                ),
                NodeKind::Property => self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must not be empty for specified object fields",
                ),
            }
        }
        if kind == NodeKind::Root && !ty.is_empty() && ty != "object" {
            self.push(
                R_INVALID,
                &child(path, "type"),
                bad_str(ty),
                "must be object at the root",
            );
        }
        if kind == NodeKind::Root && m.contains_key("additionalProperties") {
            self.push(
                R_FORBIDDEN,
                &child(path, "additionalProperties"),
                Bad::Omit,
                "must not be used at the root",
            );
        }
        if kind == NodeKind::Root && flag(s, "nullable") {
            self.push(
                R_FORBIDDEN,
                &child(path, "nullable"),
                Bad::Omit,
                "nullable cannot be true at the root",
            );
        }
        if ty == "array" && !m.contains_key("items") {
            self.push(
                R_REQUIRED,
                &child(path, "items"),
                Bad::Omit,
                "must be specified",
            );
        }
        if embedded {
            if ty.is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must be object if x-kubernetes-embedded-resource is true",
                );
            } else if ty != "object" {
                self.push(
                    R_INVALID,
                    &child(path, "type"),
                    bad_str(ty),
                    "must be object if x-kubernetes-embedded-resource is true",
                );
            }
            if m.contains_key("additionalProperties") {
                self.push(
                    R_FORBIDDEN,
                    &child(path, "additionalProperties"),
                    Bad::Omit,
                    "must not be used if x-kubernetes-embedded-resource is set",
                );
            }
            if !preserve && props(s).is_none_or(Map::is_empty) {
                self.push(
                    R_REQUIRED,
                    &child(path, "properties"),
                    Bad::Omit,
                    "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
                );
            }
        }
        if int_or_string {
            if preserve {
                self.push(
                    R_INVALID,
                    &child(path, "x-kubernetes-preserve-unknown-fields"),
                    Bad::Raw("true".into()),
                    "must be false if x-kubernetes-int-or-string is true",
                );
            }
            if embedded {
                self.push(
                    R_INVALID,
                    &child(path, "x-kubernetes-embedded-resource"),
                    Bad::Raw("true".into()),
                    "must be false if x-kubernetes-int-or-string is true",
                );
            }
        }
        if let Some(p) = m.get("pattern").and_then(Value::as_str)
            && let Err(e) = regex_match(p, "")
        {
            self.push(
                R_INVALID,
                &child(path, "pattern"),
                bad_str(p),
                &format!("must be a valid regular expression, but isn't: {e}"),
            );
        }
        self.list_type_rules(s, path);
        // metadata at the root: only name / generateName may be specified
        if kind == NodeKind::Root
            && let Some(meta) = props(s).and_then(|p| p.get("metadata"))
            && let Some(mm) = meta.as_object()
        {
            let extra_keys = mm
                .keys()
                .any(|k| !matches!(k.as_str(), "type" | "properties" | "description"));
            let extra_props =
                props(meta).is_some_and(|p| p.keys().any(|k| k != "name" && k != "generateName"));
            if extra_keys || extra_props {
                self.push(
                    R_FORBIDDEN,
                    &format!("{path}.properties[metadata]"),
                    Bad::Omit,
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                );
            }
        }
        // children
        let before = self.errs.len();
        if let Some(p) = props(s) {
            let mut names: Vec<&String> = p.keys().collect();
            names.sort();
            for n in names {
                self.schema_node(
                    &p[n],
                    &subscript(&format!("{path}.properties"), n),
                    NodeKind::Property,
                    card,
                    depth + 1,
                );
            }
        }
        if let Some(a) = m.get("additionalProperties").filter(|a| a.is_object()) {
            let max = s.get("maxProperties").and_then(Value::as_f64);
            self.schema_node(
                a,
                &child(path, "additionalProperties"),
                NodeKind::Property,
                card.zip(max).map(|(c, m)| c * m.max(0.0)),
                depth + 1,
            );
        }
        if let Some(it) = m.get("items").filter(|i| i.is_object()) {
            let max = s.get("maxItems").and_then(Value::as_f64);
            let saved = self.forbid_old_self.clone();
            if self.forbid_old_self.is_none()
                && s.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map")
            {
                self.forbid_old_self = Some(path.to_string());
            }
            self.schema_node(
                it,
                &child(path, "items"),
                NodeKind::Items,
                card.zip(max).map(|(c, m)| c * m.max(0.0)),
                depth + 1,
            );
            self.forbid_old_self = saved;
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(a) = m.get(key).and_then(Value::as_array) {
                for (i, b) in a.iter().enumerate() {
                    // the int-or-string idiom `anyOf: [{type: integer}, {type: string}]` is allowed
                    let idiom = int_or_string
                        && (b == &serde_json::json!({"type": "integer"})
                            || b == &serde_json::json!({"type": "string"}));
                    if !idiom {
                        self.nested_value_validation(
                            b,
                            &subscript(&child(path, key), &i.to_string()),
                            depth + 1,
                        );
                    }
                }
            }
        }
        let subtree_ok = self.errs.len() == before;
        // defaults must validate against their schema and be pruned
        if let Some(def) = m.get("default").filter(|d| !d.is_null()) {
            let dpath = child(path, "default");
            let mut pruned = def.clone();
            let mut pr = Pruner {
                unknown: Vec::new(),
            };
            pr.prune(&mut pruned, Some(s), embedded, "", 0);
            if &pruned != def {
                self.push(
                    R_INVALID,
                    &dpath,
                    Bad::Json(def.clone()),
                    "must not have unknown fields",
                );
            } else {
                let mut oa = OpenApi { errs: Vec::new() };
                oa.validate(s, def, "", 0);
                for e in &oa.errs {
                    self.errs.push(e.to_cause(&dpath));
                }
                if oa.errs.is_empty() {
                    // the rules of the node (and below) must hold for the default, with
                    // oldSelf = the default, then without oldSelf
                    let mut pass = CelPass {
                        errs: Vec::new(),
                        stopped: false,
                        ratcheting: false,
                    };
                    pass.walk(s, def, Some(def), &dpath, false, depth);
                    if pass.errs.is_empty() {
                        pass.walk(s, def, None, &dpath, false, depth);
                    }
                    self.errs.extend(pass.errs);
                }
            }
        }
        self.rules(s, path, subtree_ok, card);
    }

    /// With the status subresource, the root may only use keywords that survive
    /// extracting `properties.status` (apiextensions `allowedFieldsAtRootSchema`).
    fn status_root_rules(&mut self, s: &Value, path: &str) {
        const ALLOWED: &[(&str, &str)] = &[
            ("description", "Description"),
            ("type", "Type"),
            ("format", "Format"),
            ("title", "Title"),
            ("maximum", "Maximum"),
            ("exclusiveMaximum", "ExclusiveMaximum"),
            ("minimum", "Minimum"),
            ("exclusiveMinimum", "ExclusiveMinimum"),
            ("maxLength", "MaxLength"),
            ("minLength", "MinLength"),
            ("pattern", "Pattern"),
            ("maxItems", "MaxItems"),
            ("minItems", "MinItems"),
            ("uniqueItems", "UniqueItems"),
            ("multipleOf", "MultipleOf"),
            ("required", "Required"),
            ("items", "Items"),
            ("properties", "Properties"),
            ("externalDocs", "ExternalDocs"),
            ("example", "Example"),
            (
                "x-kubernetes-preserve-unknown-fields",
                "XPreserveUnknownFields",
            ),
            ("x-kubernetes-validations", "XValidations"),
        ];
        let Some(m) = s.as_object() else { return };
        let ty = s_type(s);
        if !ty.is_empty() && ty != "object" {
            self.push(
                R_INVALID,
                &format!("{path}.type"),
                bad_str(ty),
                "only \"object\" is allowed as the type at the root of the schema if the status subresource is enabled",
            );
            return;
        }
        let zero = |v: &Value| match v {
            Value::Null | Value::Bool(false) => true,
            Value::String(x) => x.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(true) | Value::Number(_) => false,
        };
        let disallowed = m
            .iter()
            .any(|(k, v)| !zero(v) && !ALLOWED.iter().any(|(json, _)| json == k));
        if disallowed {
            let names: Vec<&str> = ALLOWED.iter().map(|(_, go)| *go).collect();
            self.push(
                R_INVALID,
                path,
                Bad::Raw("apiextensions.JSONSchemaProps{...}".into()),
                &format!(
                    "only [{}] fields are allowed at the root of the schema if the status subresource is enabled",
                    names.join(" ")
                ),
            );
        }
    }

    /// allOf/anyOf/oneOf branches: value validations only (no types, no defaults).
    fn nested_value_validation(&mut self, s: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        for (key, detail) in [
            ("type", "must be empty to be structural"),
            ("additionalProperties", "must be undefined to be structural"),
            ("default", "must be undefined to be structural"),
            ("title", "must be empty to be structural"),
            ("description", "must be empty to be structural"),
            ("nullable", "must be false to be structural"),
            (
                "x-kubernetes-preserve-unknown-fields",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-embedded-resource",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-int-or-string",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-list-map-keys",
                "must be empty to be structural",
            ),
            (
                "x-kubernetes-list-type",
                "must be undefined to be structural",
            ),
            (
                "x-kubernetes-map-type",
                "must be undefined to be structural",
            ),
            ("x-kubernetes-validations", "must be empty to be structural"),
        ] {
            let present = match s.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::String(x)) => !x.is_empty(),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            if present {
                self.push(R_FORBIDDEN, &child(path, key), Bad::Omit, detail);
            }
        }
        if props(s).is_some_and(|p| p.contains_key("metadata")) {
            self.push(
                R_FORBIDDEN,
                &format!("{path}.properties[metadata]"),
                Bad::Omit,
                "must not be specified in a nested context",
            );
        }
        if let Some(p) = props(s) {
            let mut names: Vec<&String> = p.keys().collect();
            names.sort();
            for n in names {
                self.nested_value_validation(
                    &p[n],
                    &subscript(&format!("{path}.properties"), n),
                    depth + 1,
                );
            }
        }
        if let Some(it) = items(s) {
            self.nested_value_validation(it, &child(path, "items"), depth + 1);
        }
    }

    fn list_type_rules(&mut self, s: &Value, path: &str) {
        let ty = s_type(s);
        let list_type = s.get("x-kubernetes-list-type").and_then(Value::as_str);
        if let Some(lt) = list_type {
            if ty.is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must be array if x-kubernetes-list-type is specified",
                );
            } else if ty != "array" {
                self.push(
                    R_INVALID,
                    &child(path, "type"),
                    bad_str(ty),
                    "must be array if x-kubernetes-list-type is specified",
                );
            }
            if !matches!(lt, "atomic" | "set" | "map") {
                self.push(
                    R_NOT_SUPPORTED,
                    &child(path, "x-kubernetes-list-type"),
                    bad_str(lt),
                    "supported values: \"atomic\", \"set\", \"map\"",
                );
            }
        }
        if let Some(mt) = s.get("x-kubernetes-map-type").and_then(Value::as_str) {
            if ty.is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(path, "type"),
                    Bad::Omit,
                    "must be object if x-kubernetes-map-type is specified",
                );
            } else if ty != "object" {
                self.push(
                    R_INVALID,
                    &child(path, "type"),
                    bad_str(ty),
                    "must be object if x-kubernetes-map-type is specified",
                );
            }
            if !matches!(mt, "atomic" | "granular") {
                self.push(
                    R_NOT_SUPPORTED,
                    &child(path, "x-kubernetes-map-type"),
                    bad_str(mt),
                    "supported values: \"atomic\", \"granular\"",
                );
            }
        }
        let keys = list_map_keys(s);
        if !keys.is_empty() {
            match list_type {
                None => self.push(
                    R_REQUIRED,
                    &child(path, "x-kubernetes-list-type"),
                    Bad::Omit,
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                ),
                Some("map") => {}
                Some(lt) => self.push(
                    R_INVALID,
                    &child(path, "x-kubernetes-list-type"),
                    bad_str(lt),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                ),
            }
        }
        if list_type == Some("map") {
            if keys.is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(path, "x-kubernetes-list-map-keys"),
                    Bad::Omit,
                    "must not be empty if x-kubernetes-list-type is map",
                );
            }
            match items(s) {
                None => self.push(
                    R_REQUIRED,
                    &child(path, "items"),
                    Bad::Omit,
                    "must have a schema if x-kubernetes-list-type is map",
                ),
                Some(it) => {
                    if s_type(it) != "object" {
                        self.push(
                            R_INVALID,
                            &format!("{path}.items.type"),
                            bad_str(s_type(it)),
                            "must be object if parent array's x-kubernetes-list-type is map",
                        );
                    } else {
                        let item_props = props(it);
                        let shown = Bad::Raw(format!(
                            "[]string{{{}}}",
                            keys.iter()
                                .map(|k| go_quote(k))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        if keys
                            .iter()
                            .any(|k| item_props.is_none_or(|p| !p.contains_key(k)))
                        {
                            self.push(
                                R_INVALID,
                                &child(path, "x-kubernetes-list-map-keys"),
                                shown,
                                "entries must all be names of item properties",
                            );
                        } else {
                            let mut sorted = keys.clone();
                            sorted.sort();
                            sorted.dedup();
                            if sorted.len() != keys.len() {
                                self.push(
                                    R_INVALID,
                                    &child(path, "x-kubernetes-list-map-keys"),
                                    shown,
                                    "must not contain duplicate entries",
                                );
                            }
                            let required: Vec<&str> = it
                                .get("required")
                                .and_then(Value::as_array)
                                .map(|r| r.iter().filter_map(Value::as_str).collect())
                                .unwrap_or_default();
                            for k in &keys {
                                let Some(kp) = item_props.and_then(|p| p.get(k)) else {
                                    continue;
                                };
                                let kt = s_type(kp);
                                if !flag(kp, "x-kubernetes-int-or-string")
                                    && !matches!(kt, "string" | "integer" | "number" | "boolean")
                                {
                                    self.push(
                                        R_INVALID,
                                        &format!("{path}.items.properties[{k}].type"),
                                        bad_str(kt),
                                        "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                    );
                                }
                                if !required.contains(&k.as_str())
                                    && kp.get("default").is_none_or(Value::is_null)
                                {
                                    self.push(
                                        R_REQUIRED,
                                        &format!("{path}.items.properties[{k}].default"),
                                        Bad::Omit,
                                        "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `x-kubernetes-validations` of one node: shape checks, then compilation.
    fn rules(&mut self, s: &Value, path: &str, subtree_ok: bool, card: Option<f64>) {
        let Some(raw) = s.get("x-kubernetes-validations") else {
            return;
        };
        let Some(list) = raw.as_array() else {
            self.push(
                R_INVALID,
                &child(path, "x-kubernetes-validations"),
                Bad::Json(raw.clone()),
                "must be a list",
            );
            return;
        };
        let base = child(path, "x-kubernetes-validations");
        let before = self.errs.len();
        let rules: Vec<RuleSpec> = list.iter().map(RuleSpec::from_json).collect();
        for (i, r) in rules.iter().enumerate() {
            let p = subscript(&base, &i.to_string());
            let trimmed_rule = r.rule.trim();
            let msg = r.message.as_deref().unwrap_or("");
            if trimmed_rule.is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(&p, "rule"),
                    Bad::Omit,
                    "rule is not specified",
                );
            } else if !msg.is_empty() && msg.trim().is_empty() {
                self.push(
                    R_INVALID,
                    &child(&p, "message"),
                    bad_str(msg),
                    "message must be non-empty if specified",
                );
            } else if msg.trim().contains('\n') {
                self.push(
                    R_INVALID,
                    &child(&p, "message"),
                    bad_str(msg),
                    "message must not contain line breaks",
                );
            } else if trimmed_rule.contains('\n') && msg.trim().is_empty() {
                self.push(
                    R_REQUIRED,
                    &child(&p, "message"),
                    Bad::Omit,
                    "message must be specified if rule contains line breaks",
                );
            }
            if let Some(me) = &r.message_expression
                && !me.is_empty()
                && me.trim().is_empty()
            {
                self.push(
                    R_REQUIRED,
                    &child(&p, "messageExpression"),
                    Bad::Omit,
                    "messageExpression must be non-empty if specified",
                );
            }
            if let Some(reason) = &r.reason
                && !matches!(
                    reason.as_str(),
                    "FieldValueRequired"
                        | "FieldValueForbidden"
                        | "FieldValueInvalid"
                        | "FieldValueDuplicate"
                )
            {
                self.push(
                    R_NOT_SUPPORTED,
                    &child(&p, "reason"),
                    bad_str(reason),
                    "supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\"",
                );
            }
            if let Some(fp) = &r.field_path {
                if !fp.is_empty() && fp.trim().is_empty() {
                    self.push(
                        R_INVALID,
                        &child(&p, "fieldPath"),
                        bad_str(fp),
                        "fieldPath must be non-empty if specified",
                    );
                }
                if fp.contains('\n') {
                    self.push(
                        R_INVALID,
                        &child(&p, "fieldPath"),
                        bad_str(fp),
                        "fieldPath must not contain line breaks",
                    );
                }
                if !fp.is_empty() && normalize_field_path(fp.trim(), s).is_err() {
                    self.push(
                        R_INVALID,
                        &child(&p, "fieldPath"),
                        bad_str(fp),
                        "fieldPath must be a valid path",
                    );
                }
            }
        }
        if !subtree_ok || self.errs.len() != before {
            return;
        }
        for (i, r) in rules.iter().enumerate() {
            let p = subscript(&base, &i.to_string());
            match analyze_cel(&r.rule) {
                Err(e) => self.push(
                    R_INVALID,
                    &child(&p, "rule"),
                    Bad::Raw(r.go_struct()),
                    &format!("compilation failed: {e}"),
                ),
                Ok(shape) => {
                    let type_error = check_rule_types(&r.rule, s, false);
                    let compiles = shape.undeclared.is_empty() && type_error.is_none();
                    if compiles {
                        let cardinality =
                            card.unwrap_or_else(|| MAX_REQUEST_BYTES / (min_size(s) + 1.0));
                        let cost = static_rule_cost(&r.rule, s) * cardinality.max(1.0);
                        if cost > STATIC_COST_LIMIT {
                            self.push(
                                R_FORBIDDEN,
                                &child(&p, "rule"),
                                Bad::Omit,
                                &cost_error_message("estimated rule cost", cost),
                            );
                        }
                    }
                    if let Some(name) = shape.undeclared.first() {
                        self.push(
                            R_INVALID,
                            &child(&p, "rule"),
                            Bad::Raw(r.go_struct()),
                            &format!("compilation failed: ERROR: <input>: undeclared reference to '{name}' (in container '')"),
                        );
                    } else if let Some(detail) = type_error {
                        self.push(
                            R_INVALID,
                            &child(&p, "rule"),
                            Bad::Raw(r.go_struct()),
                            &detail,
                        );
                    }
                    if shape.uses_old_self {
                        if let Some(within) = self.forbid_old_self.clone() {
                            self.push(
                                R_INVALID,
                                &child(&p, "rule"),
                                bad_str(&r.rule),
                                &format!(
                                    "oldSelf cannot be used on the uncorrelatable portion of the schema within {within}"
                                ),
                            );
                        }
                    } else if r.optional_old_self.is_some() {
                        self.push(
                            R_INVALID,
                            &child(&p, "optionalOldSelf"),
                            Bad::Raw(r.optional_old_self.unwrap_or(false).to_string()),
                            "may not be set if oldSelf is not used in rule",
                        );
                    }
                }
            }
            if let Some(me) = r
                .message_expression
                .as_deref()
                .filter(|m| !m.trim().is_empty())
            {
                match analyze_cel(me) {
                    Err(e) => self.push(
                        R_INVALID,
                        &child(&p, "messageExpression"),
                        Bad::Raw(r.go_struct()),
                        &format!("messageExpression compilation failed: {e}"),
                    ),
                    Ok(shape) => {
                        let type_error = if shape.undeclared.is_empty() {
                            check_rule_types(me, s, true)
                        } else {
                            None
                        };
                        if let Some(detail) = type_error {
                            let detail = if detail.starts_with("compilation failed") {
                                format!("messageExpression {detail}")
                            } else {
                                detail
                            };
                            self.push(
                                R_INVALID,
                                &child(&p, "messageExpression"),
                                Bad::Raw(r.go_struct()),
                                &detail,
                            );
                        }
                        if let Some(name) = shape.undeclared.first() {
                            self.push(
                                R_INVALID,
                                &child(&p, "messageExpression"),
                                Bad::Raw(r.go_struct()),
                                &format!(
                                    "messageExpression compilation failed: ERROR: <input>: undeclared reference to '{name}' (in container '')"
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Static types a rule's sub-expressions can be shown to have (a small subset of the
/// CEL type checker the apiserver runs at CRD creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CelTy {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    List,
    Map,
    Null,
    /// Unknown / dynamic: never reported.
    Dyn,
}

impl CelTy {
    fn name(self) -> &'static str {
        match self {
            CelTy::Bool => "bool",
            CelTy::Int => "int",
            CelTy::Uint => "uint",
            CelTy::Double => "double",
            CelTy::Str => "string",
            CelTy::Bytes => "bytes",
            CelTy::List => "list",
            CelTy::Map => "map",
            CelTy::Null => "null_type",
            CelTy::Dyn => "dyn",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, CelTy::Int | CelTy::Uint | CelTy::Double)
    }
}

/// The CEL type of values of a schema node.
fn schema_cel_ty(s: &Value) -> CelTy {
    if flag(s, "x-kubernetes-int-or-string") || flag(s, "x-kubernetes-preserve-unknown-fields") {
        return CelTy::Dyn;
    }
    match s_type(s) {
        "boolean" => CelTy::Bool,
        "integer" => CelTy::Int,
        "number" => CelTy::Double,
        "string" => match s.get("format").and_then(Value::as_str) {
            Some("date-time" | "datetime" | "duration" | "byte") => CelTy::Dyn,
            _ => CelTy::Str,
        },
        "array" => CelTy::List,
        "object" => CelTy::Map,
        _ => CelTy::Dyn,
    }
}

/// CEL field-name escaping of a declared property name.
fn cel_escape(name: &str) -> String {
    if CEL_RESERVED.contains(&name) {
        return format!("__{name}__");
    }
    name.replace('_', "__")
        .replace('.', "__dot__")
        .replace('-', "__dash__")
        .replace('/', "__slash__")
}

/// Type checks a rule against the schema it is attached to, as far as this subset
/// can tell: selections of undeclared fields, comparisons of incompatible scalar types,
/// and rules that cannot evaluate to a bool. Returns the apiserver-style detail.
/// `message_expression` checks for a string result instead of a bool.
fn check_rule_types(rule: &str, s: &Value, message_expression: bool) -> Option<String> {
    use kube_cel::cel::common::ast::{Expr, LiteralValue};
    struct Checker<'a> {
        root: &'a Value,
        error: Option<String>,
    }
    impl<'a> Checker<'a> {
        fn infer(
            &mut self,
            e: &Expr,
            env: &mut Vec<(String, CelTy, Option<&'a Value>)>,
            depth: usize,
        ) -> (CelTy, Option<&'a Value>) {
            if depth > MAX_AST_DEPTH || self.error.is_some() {
                return (CelTy::Dyn, None);
            }
            match e {
                Expr::Literal(l) => (
                    match l {
                        LiteralValue::Boolean(_) => CelTy::Bool,
                        LiteralValue::Int(_) => CelTy::Int,
                        LiteralValue::UInt(_) => CelTy::Uint,
                        LiteralValue::Double(_) => CelTy::Double,
                        LiteralValue::String(_) => CelTy::Str,
                        LiteralValue::Bytes(_) => CelTy::Bytes,
                        LiteralValue::Null => CelTy::Null,
                    },
                    None,
                ),
                Expr::Ident(n) if n == "self" || n == "oldSelf" => {
                    (schema_cel_ty(self.root), Some(self.root))
                }
                Expr::Ident(n) => env
                    .iter()
                    .rev()
                    .find(|(k, _, _)| k == n)
                    .map(|(_, t, sc)| (*t, *sc))
                    .unwrap_or((CelTy::Dyn, None)),
                Expr::Select(sel) => {
                    let (_, node) = self.infer(&sel.operand.expr, env, depth + 1);
                    let field_node = node.and_then(|n| self.field(n, &sel.field));
                    if sel.test {
                        return (CelTy::Bool, None);
                    }
                    match field_node {
                        Some(f) => (schema_cel_ty(f), Some(f)),
                        None => (CelTy::Dyn, None),
                    }
                }
                Expr::List(l) => {
                    for x in &l.elements {
                        self.infer(&x.expr, env, depth + 1);
                    }
                    (CelTy::List, None)
                }
                Expr::Map(_) | Expr::Struct(_) => (CelTy::Map, None),
                Expr::Comprehension(c) => {
                    let (_, range) = self.infer(&c.iter_range.expr, env, depth + 1);
                    let elem = range.and_then(items);
                    let (accu_ty, _) = self.infer(&c.accu_init.expr, env, depth + 1);
                    env.push((
                        c.iter_var.clone(),
                        elem.map(schema_cel_ty).unwrap_or(CelTy::Dyn),
                        elem,
                    ));
                    env.push((c.accu_var.clone(), accu_ty, None));
                    self.infer(&c.loop_cond.expr, env, depth + 1);
                    self.infer(&c.loop_step.expr, env, depth + 1);
                    let (result, _) = self.infer(&c.result.expr, env, depth + 1);
                    env.pop();
                    env.pop();
                    (result, None)
                }
                Expr::Call(c) => {
                    if let Some(t) = &c.target {
                        self.infer(&t.expr, env, depth + 1);
                    }
                    let args: Vec<CelTy> = c
                        .args
                        .iter()
                        .map(|a| self.infer(&a.expr, env, depth + 1).0)
                        .collect();
                    let f = c.func_name.as_str();
                    match f {
                        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                            if let [a, b] = args[..] {
                                let scalar = |t: CelTy| {
                                    !matches!(
                                        t,
                                        CelTy::Dyn | CelTy::Null | CelTy::List | CelTy::Map
                                    )
                                };
                                let ordering = f != "_==_" && f != "_!=_";
                                let compatible = a == b || (a.numeric() && b.numeric() && ordering);
                                if scalar(a) && scalar(b) && !compatible && self.error.is_none() {
                                    self.error = Some(format!(
                                        "compilation failed: ERROR: <input>: found no matching overload for '{f}' applied to '({}, {})'",
                                        a.name(),
                                        b.name()
                                    ));
                                }
                            }
                            (CelTy::Bool, None)
                        }
                        "_&&_"
                        | "_||_"
                        | "!_"
                        | "@in"
                        | "@not_strictly_false"
                        | "has"
                        | "matches"
                        | "startsWith"
                        | "endsWith"
                        | "contains"
                        | "isSorted"
                        | "exists"
                        | "all"
                        | "exists_one" => (CelTy::Bool, None),
                        "size" => (CelTy::Int, None),
                        "int" => (CelTy::Int, None),
                        "uint" => (CelTy::Uint, None),
                        "double" => (CelTy::Double, None),
                        "string" | "lowerAscii" | "upperAscii" | "trim" | "replace"
                        | "substring" | "join" | "format" => (CelTy::Str, None),
                        "_+_" | "_-_" | "_*_" | "_/_" | "_%_" => match args[..] {
                            [a, b] if a == b && a != CelTy::Dyn => (a, None),
                            _ => (CelTy::Dyn, None),
                        },
                        "-_" => (args.first().copied().unwrap_or(CelTy::Dyn), None),
                        "_?_:_" => match args[..] {
                            [_, a, b] if a == b => (a, None),
                            _ => (CelTy::Dyn, None),
                        },
                        "_[_]" => (CelTy::Dyn, None),
                        _ => (CelTy::Dyn, None),
                    }
                }
                Expr::Unspecified => (CelTy::Dyn, None),
            }
        }

        /// Schema of `node.field`, recording `undefined field` when the node is an
        /// object that cannot have it.
        fn field(&mut self, node: &'a Value, field: &str) -> Option<&'a Value> {
            if let Some(a) = addl(node) {
                return Some(a);
            }
            let p = props(node)?;
            if let Some((_, v)) = p.iter().find(|(k, _)| cel_escape(k) == field) {
                return Some(v);
            }
            let implicit_meta = (std::ptr::eq(node, self.root)
                || flag(node, "x-kubernetes-embedded-resource"))
                && matches!(field, "apiVersion" | "kind" | "metadata");
            if !implicit_meta
                && !flag(node, "x-kubernetes-preserve-unknown-fields")
                && s_type(node) == "object"
                && self.error.is_none()
            {
                self.error = Some(format!(
                    "compilation failed: ERROR: <input>: undefined field '{field}'"
                ));
            }
            None
        }
    }
    let program = kube_cel::cel::Program::compile(rule).ok()?;
    let mut checker = Checker {
        root: s,
        error: None,
    };
    let (ty, _) = checker.infer(&program.expression().expr, &mut Vec::new(), 0);
    if checker.error.is_some() {
        return checker.error;
    }
    if message_expression {
        if !matches!(ty, CelTy::Str | CelTy::Dyn) {
            return Some("messageExpression must evaluate to a string".to_string());
        }
    } else if !matches!(ty, CelTy::Bool | CelTy::Dyn) {
        return Some("cel expression must evaluate to a bool".to_string());
    }
    None
}

/// `StaticEstimatedCostLimit`: the largest estimated cost of one rule (times the
/// number of times it can run) a CRD may declare.
const STATIC_COST_LIMIT: f64 = 10_000_000.0;
/// The apiserver's request size limit, used to bound lists, maps and strings that
/// declare no `maxItems` / `maxProperties` / `maxLength`.
const MAX_REQUEST_BYTES: f64 = 3.0 * 1024.0 * 1024.0;

/// Smallest JSON serialization of a value of this schema (cost estimation).
fn min_size(s: &Value) -> f64 {
    if flag(s, "x-kubernetes-int-or-string") {
        return 1.0;
    }
    match s_type(s) {
        "string" => 2.0,
        "boolean" => 4.0,
        "object" | "array" => 2.0,
        _ => 1.0,
    }
}

/// Largest number of elements of a list / map node.
fn max_elements(s: &Value) -> f64 {
    if let Some(it) = items(s) {
        return s
            .get("maxItems")
            .and_then(Value::as_f64)
            .unwrap_or(MAX_REQUEST_BYTES / (min_size(it) + 1.0));
    }
    if let Some(a) = addl(s) {
        return s
            .get("maxProperties")
            .and_then(Value::as_f64)
            .unwrap_or(MAX_REQUEST_BYTES / (min_size(a) + 4.0));
    }
    props(s).map(|p| p.len() as f64).unwrap_or(1.0).max(1.0)
}

/// `getCostErrorMessage`.
fn cost_error_message(name: &str, cost: f64) -> String {
    let factor = cost / STATIC_COST_LIMIT;
    let shown = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{name} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// Rough static cost of one rule on `s`, in the spirit of the apiserver's estimator:
/// comprehensions cost the maximum size of what they iterate (from `maxItems` /
/// `maxProperties`, else the request size limit) times their body; string scans cost a
/// tenth of the maximum string length.
fn static_rule_cost(rule: &str, s: &Value) -> f64 {
    use kube_cel::cel::common::ast::Expr;
    fn resolve<'a>(
        e: &Expr,
        s: &'a Value,
        env: &[(String, Option<&'a Value>)],
    ) -> Option<&'a Value> {
        match e {
            Expr::Ident(n) if n == "self" => Some(s),
            Expr::Ident(n) => env.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| *v),
            Expr::Select(sel) => {
                resolve(&sel.operand.expr, s, env).and_then(|n| field_schema(n, &sel.field))
            }
            _ => None,
        }
    }
    fn cost<'a>(
        e: &Expr,
        s: &'a Value,
        env: &mut Vec<(String, Option<&'a Value>)>,
        depth: usize,
    ) -> f64 {
        if depth > MAX_AST_DEPTH {
            return 0.0;
        }
        match e {
            Expr::Ident(_) => 0.0,
            Expr::Select(sel) => 1.0 + cost(&sel.operand.expr, s, env, depth + 1),
            Expr::Call(c) => {
                let mut total = 1.0;
                if let Some(t) = &c.target {
                    total += cost(&t.expr, s, env, depth + 1);
                    const SCANS: &[&str] = &[
                        "matches",
                        "contains",
                        "startsWith",
                        "endsWith",
                        "find",
                        "findAll",
                        "split",
                        "replace",
                        "indexOf",
                        "lastIndexOf",
                        "lowerAscii",
                        "upperAscii",
                        "trim",
                    ];
                    if SCANS.contains(&c.func_name.as_str())
                        && let Some(ts) = resolve(&t.expr, s, env)
                        && s_type(ts) == "string"
                    {
                        let len = ts
                            .get("maxLength")
                            .and_then(Value::as_f64)
                            .unwrap_or(MAX_REQUEST_BYTES);
                        total += 0.1 * len;
                    }
                }
                for a in &c.args {
                    total += cost(&a.expr, s, env, depth + 1);
                }
                total
            }
            Expr::Comprehension(c) => {
                let range = resolve(&c.iter_range.expr, s, env);
                let size = match (&c.iter_range.expr, range) {
                    (Expr::List(l), _) => l.elements.len() as f64,
                    (_, Some(r)) => max_elements(r),
                    _ => 1.0,
                };
                let elem = range.and_then(items);
                let mut total = cost(&c.iter_range.expr, s, env, depth + 1)
                    + cost(&c.accu_init.expr, s, env, depth + 1);
                env.push((c.iter_var.clone(), elem));
                let body = cost(&c.loop_cond.expr, s, env, depth + 1)
                    + cost(&c.loop_step.expr, s, env, depth + 1);
                env.pop();
                total += size * body + cost(&c.result.expr, s, env, depth + 1);
                total
            }
            Expr::List(l) => l
                .elements
                .iter()
                .map(|x| cost(&x.expr, s, env, depth + 1))
                .sum(),
            _ => 0.0,
        }
    }
    match kube_cel::cel::Program::compile(rule) {
        Ok(p) => cost(&p.expression().expr, s, &mut Vec::new(), 0),
        Err(_) => 0.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Root,
    Property,
    Items,
}

/// `ValidateTypeMeta` of the custom resource validator: `kind` and `apiVersion` must be
/// the served kind and `group/version`. The apiserver answers only these causes when
/// any is present (before metadata, schema and CEL).
pub fn validate_type_meta(obj: &Value, api_version: &str, kind: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    let got_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if got_kind != kind {
        out.push(cause(
            R_INVALID,
            "kind",
            bad_str(got_kind),
            &format!("must be {kind}"),
        ));
    }
    let got_av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if got_av != api_version {
        out.push(cause(
            R_INVALID,
            "apiVersion",
            bad_str(got_av),
            &format!("must be {api_version}"),
        ));
    }
    out
}

/// Checks a CustomResourceDefinition itself (structural schema, CEL rules compile),
/// as the apiserver does before accepting it.
///
/// Schema paths follow the apiserver's internal version: when every version has the
/// same schema it is reported under `spec.validation.openAPIV3Schema`, otherwise under
/// `spec.versions[i].schema.openAPIV3Schema` (same for `subresources`).
pub fn validate_crd(crd: &Value) -> Vec<Cause> {
    let crd = crd.clone();
    with_cel_stack(move || validate_crd_inner(&crd)).unwrap_or_else(|| {
        vec![cause(
            R_INTERNAL,
            "<nil>",
            Bad::Omit,
            "CRD validation failed unexpectedly",
        )]
    })
}

fn validate_crd_inner(crd: &Value) -> Vec<Cause> {
    let mut c = CrdCheck {
        errs: Vec::new(),
        forbid_old_self: None,
    };
    let str_at = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or("");
    let name = str_at("/metadata/name");
    let group = str_at("/spec/group");
    let plural = str_at("/spec/names/plural");
    let kind = str_at("/spec/names/kind");

    // metadata.name
    if name.is_empty() {
        c.push(
            R_REQUIRED,
            "metadata.name",
            Bad::Omit,
            "name or generateName is required",
        );
    } else {
        let mut msgs = dns1123_subdomain_errors(name);
        if name != format!("{plural}.{group}") {
            msgs.push("must be spec.names.plural+\".\"+spec.group".to_string());
        }
        for m in msgs {
            c.push(R_INVALID, "metadata.name", bad_str(name), &m);
        }
    }
    // spec.group
    if group.is_empty() {
        c.push(R_REQUIRED, "spec.group", Bad::Omit, "");
    } else {
        let errs = dns1123_subdomain_errors(group);
        if !errs.is_empty() {
            c.push(R_INVALID, "spec.group", bad_str(group), &errs.join(","));
        } else if group.split('.').count() < 2 {
            c.push(
                R_INVALID,
                "spec.group",
                bad_str(group),
                "should be a domain with at least one dot",
            );
        }
    }
    // spec.scope
    match str_at("/spec/scope") {
        "" => c.push(R_REQUIRED, "spec.scope", Bad::Omit, ""),
        "Cluster" | "Namespaced" => {}
        other => c.push(
            R_NOT_SUPPORTED,
            "spec.scope",
            bad_str(other),
            "supported values: \"Cluster\", \"Namespaced\"",
        ),
    }

    // versions and schemas
    let versions: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        c.push(R_REQUIRED, "spec.versions", Bad::Omit, "");
    }
    let schemas: Vec<Option<&Value>> = versions
        .iter()
        .map(|v| v.pointer("/schema/openAPIV3Schema"))
        .collect();
    let same_schema = !schemas.is_empty() && schemas.iter().all(|s| *s == schemas[0]);
    for (i, v) in versions.iter().enumerate() {
        let vname = v.get("name").and_then(Value::as_str).unwrap_or("");
        let vpath = format!("spec.versions[{i}]");
        if vname.is_empty() {
            c.push(R_REQUIRED, &format!("{vpath}.name"), Bad::Omit, "");
        } else {
            let errs = dns1035_label_errors(vname);
            if !errs.is_empty() {
                c.push(
                    R_INVALID,
                    &format!("{vpath}.name"),
                    bad_str(vname),
                    &errs.join(","),
                );
            }
        }
        match schemas[i] {
            None => c.push(
                R_REQUIRED,
                &format!("{vpath}.schema.openAPIV3Schema"),
                Bad::Omit,
                "schemas are required",
            ),
            Some(s) => {
                if same_schema && i > 0 {
                    continue;
                }
                let spath = if same_schema {
                    "spec.validation.openAPIV3Schema".to_string()
                } else {
                    format!("{vpath}.schema.openAPIV3Schema")
                };
                let status_enabled = if same_schema {
                    versions
                        .iter()
                        .any(|v| v.pointer("/subresources/status").is_some())
                } else {
                    v.pointer("/subresources/status").is_some()
                };
                if status_enabled {
                    c.status_root_rules(s, &spath);
                }
                c.schema_node(s, &spath, NodeKind::Root, Some(1.0), 0);
            }
        }
    }
    let names: Vec<&str> = versions
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let mut uniq = names.clone();
    uniq.sort();
    uniq.dedup();
    let versions_bad = Bad::Raw("[]apiextensions.CustomResourceDefinitionVersion{...}".into());
    if uniq.len() != names.len() {
        c.push(
            R_INVALID,
            "spec.versions",
            versions_bad.clone(),
            "must contain unique version names",
        );
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        c.push(
            R_INVALID,
            "spec.versions",
            versions_bad,
            "must have exactly one version marked as storage version",
        );
    }

    // names
    if plural.is_empty() {
        c.push(R_REQUIRED, "spec.names.plural", Bad::Omit, "");
    } else {
        let errs = dns1035_label_errors(plural);
        if !errs.is_empty() {
            c.push(
                R_INVALID,
                "spec.names.plural",
                bad_str(plural),
                &errs.join(","),
            );
        }
    }
    let singular = str_at("/spec/names/singular");
    if !singular.is_empty() {
        let errs = dns1035_label_errors(singular);
        if !errs.is_empty() {
            c.push(
                R_INVALID,
                "spec.names.singular",
                bad_str(singular),
                &errs.join(","),
            );
        }
    }
    if kind.is_empty() {
        c.push(R_REQUIRED, "spec.names.kind", Bad::Omit, "");
    } else {
        let errs = dns1035_label_errors(&kind.to_lowercase());
        if !errs.is_empty() {
            c.push(
                R_INVALID,
                "spec.names.kind",
                bad_str(kind),
                &format!(
                    "may have mixed case, but should otherwise match: {}",
                    errs.join(",")
                ),
            );
        }
    }
    let list_kind = str_at("/spec/names/listKind");
    if !list_kind.is_empty() {
        let errs = dns1035_label_errors(&list_kind.to_lowercase());
        if !errs.is_empty() {
            c.push(
                R_INVALID,
                "spec.names.listKind",
                bad_str(list_kind),
                &format!(
                    "may have mixed case, but should otherwise match: {}",
                    errs.join(",")
                ),
            );
        }
        if list_kind == kind {
            c.push(
                R_INVALID,
                "spec.names.listKind",
                bad_str(list_kind),
                "kind and listKind may not be the same",
            );
        }
    }
    if let Some(shorts) = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
    {
        for (i, sn) in shorts.iter().enumerate() {
            let s = sn.as_str().unwrap_or("");
            let errs = dns1123_label_errors(s);
            if !errs.is_empty() {
                c.push(
                    R_INVALID,
                    &format!("spec.names.shortNames[{i}]"),
                    bad_str(s),
                    &errs.join(","),
                );
            }
        }
    }

    if crd.pointer("/spec/preserveUnknownFields") == Some(&Value::Bool(true)) {
        c.push(
            R_INVALID,
            "spec.preserveUnknownFields",
            Bad::Raw("true".into()),
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        );
    }

    // subresources
    let subs: Vec<Option<&Value>> = versions.iter().map(|v| v.get("subresources")).collect();
    let same_subs = !subs.is_empty() && subs.iter().all(|s| *s == subs[0]);
    for (i, sub) in subs.iter().enumerate() {
        let Some(sub) = sub else { continue };
        if same_subs && i > 0 {
            continue;
        }
        let base = if same_subs {
            "spec.subresources".to_string()
        } else {
            format!("spec.versions[{i}].subresources")
        };
        if let Some(scale) = sub.get("scale").filter(|s| s.is_object()) {
            let spec_p = scale
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or("");
            let status_p = scale
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or("");
            for (key, val, prefix, under) in [
                (
                    "specReplicasPath",
                    spec_p,
                    ".spec.",
                    "should be a json path under .spec",
                ),
                (
                    "statusReplicasPath",
                    status_p,
                    ".status.",
                    "should be a json path under .status",
                ),
            ] {
                let f = format!("{base}.scale.{key}");
                if val.is_empty() {
                    c.push(R_REQUIRED, &f, Bad::Omit, "");
                } else if let Some(e) = simple_json_path_error(val) {
                    c.push(R_INVALID, &f, bad_str(val), e);
                } else if !val.starts_with(prefix) {
                    c.push(R_INVALID, &f, bad_str(val), under);
                }
            }
            if let Some(sel) = scale
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                let f = format!("{base}.scale.labelSelectorPath");
                if let Some(e) = simple_json_path_error(sel) {
                    c.push(R_INVALID, &f, bad_str(sel), e);
                } else if !sel.starts_with(".spec.") && !sel.starts_with(".status.") {
                    c.push(
                        R_INVALID,
                        &f,
                        bad_str(sel),
                        "should be a json path under either .spec or .status",
                    );
                }
            }
        }
    }
    c.errs
}

fn simple_json_path_error(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if !s.starts_with('.') {
        Some("must be a simple json path starting with .")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WORKPOOL_CRD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/schema/workpool-crd.yaml"
    ));

    fn workpool_crd() -> Value {
        serde_yaml::from_str(WORKPOOL_CRD).expect("fixture parses")
    }

    fn workpool() -> CrdVersionSchema {
        let crd = workpool_crd();
        let v = crd
            .pointer("/spec/versions/0")
            .cloned()
            .expect("one version");
        CrdVersionSchema::from_crd_version(&v).expect("schema")
    }

    fn schema(s: Value) -> CrdVersionSchema {
        CrdVersionSchema::from_crd_version(&json!({"name": "v1", "schema": {"openAPIV3Schema": s}}))
            .expect("schema")
    }

    fn c(reason: &str, field: &str, message: &str) -> Cause {
        Cause {
            reason: reason.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn good_pool() -> Value {
        json!({
            "apiVersion": "workpool.dev/v1alpha1",
            "kind": "WorkPool",
            "metadata": {"name": "thumbs", "namespace": "default"},
            "spec": {"queue": {"redis": {"url": "redis://r:6379/0"}}, "replicas": 2}
        })
    }

    fn with(mut base: Value, pointer: &str, v: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        let mut cur = &mut base;
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            if cur.get(part).is_none() {
                cur[part] = json!({});
            }
            cur = &mut cur[part];
        }
        cur[key] = v;
        base
    }

    // ── Go rendering ──

    #[test]
    fn go_rendering_matches_fmt() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456789.125, "123456789.125"),
        ];
        for (f, want) in cases {
            assert_eq!(go_float(*f), *want, "go_float({f})");
        }
        assert_eq!(go_quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\x01\"");
        assert_eq!(
            go_sharp_v(&json!({"b": "x", "a": 1, "c": [true, null, 1.5]})),
            "map[string]interface {}{\"a\":1, \"b\":\"x\", \"c\":[]interface {}{true, interface {}(nil), 1.5}}"
        );
        assert_eq!(
            error_body(R_INVALID, &Bad::Json(json!(-1)), "d"),
            "Invalid value: -1: d"
        );
        assert_eq!(
            error_body(R_INVALID, &Bad::Json(json!("s")), "d"),
            "Invalid value: \"s\": d"
        );
        assert_eq!(
            error_body(R_INVALID, &Bad::Json(Value::Null), "d"),
            "Invalid value: \"null\": d"
        );
        assert_eq!(error_body(R_REQUIRED, &Bad::Omit, ""), "Required value");
        assert_eq!(
            error_body(R_FORBIDDEN, &Bad::Json(json!("x")), "no"),
            "Forbidden: no"
        );
    }

    #[test]
    fn string_formats_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("date-time", "2024-01-02T03:04:05Z", true),
            ("date-time", "2024-01-02t03:04:05.123+02:00", true),
            ("date-time", "2024-01-02T03:04:05", false),
            ("date-time", "2024-13-02T03:04:05Z", false),
            ("date-time", "2024-01-02T24:00:00Z", false),
            ("date", "2024-02-29", true),
            ("date", "2023-02-29", false),
            ("date", "2024-2-9", false),
            ("duration", "1h30m", true),
            ("duration", "-1.5s", true),
            ("duration", "3 days", true),
            ("duration", "soon", false),
            ("uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", true),
            ("uuid", "0F8FAD5BD9CB469FA16570867728950E", true),
            ("uuid", "0f8fad5b-d9cb-469f-a165-70867728950", false),
            ("uuid4", "0f8fad5b-d9cb-469f-a165-70867728950e", true),
            ("uuid3", "0f8fad5b-d9cb-469f-a165-70867728950e", false),
            ("ipv4", "10.0.0.1", true),
            ("ipv4", "10.0.0.256", false),
            ("ipv6", "::1", true),
            ("cidr", "10.0.0.0/8", true),
            ("cidr", "10.0.0.0/33", false),
            ("mac", "01:23:45:67:89:ab", true),
            ("hostname", "redis.workpool-system", true),
            ("hostname", "-bad", false),
            ("byte", "aGVsbG8=", true),
            ("byte", "not base64!", false),
            ("email", "a@b.c", true),
            ("uri", "redis://x:6379/0", true),
            ("bsonobjectid", "507f1f77bcf86cd799439011", true),
            ("password", "anything", true),
        ];
        for (format, value, ok) in cases {
            assert_eq!(format_ok(format, value), *ok, "{format} {value}");
        }
    }

    // ── defaulting ──

    #[test]
    fn defaults_table() {
        let s = schema(json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "a": {"type": "integer", "default": 5},
                    "obj": {"type": "object", "default": {}, "properties": {
                        "x": {"type": "string", "default": "dx"},
                        "deep": {"type": "object", "default": {"k": 1}, "properties": {
                            "k": {"type": "integer"}, "j": {"type": "integer", "default": 2}}}}},
                    "nodefault": {"type": "object", "properties": {"y": {"type": "string", "default": "dy"}}},
                    "m": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                        "p": {"type": "integer", "default": 7}}}},
                    "l": {"type": "array", "items": {"type": "object", "properties": {
                        "q": {"type": "boolean", "default": true}}}},
                    "ln": {"type": "array", "items": {"type": "string", "default": "filled"}},
                    "nullable": {"type": "string", "nullable": true, "default": "nd"},
                    "nonnull": {"type": "string", "default": "nn"},
                    "dropme": {"type": "string"},
                    "keepnull": {"type": "string", "nullable": true}
                }}
            }
        }));
        let cases: Vec<(Value, Value)> = vec![
            (
                json!({"spec": {}}),
                json!({"spec": {"a": 5, "obj": {"x": "dx", "deep": {"k": 1, "j": 2}}, "nullable": "nd", "nonnull": "nn"}}),
            ),
            (
                json!({"spec": {"a": 1, "obj": {"x": "set"}}}),
                json!({"spec": {"a": 1, "obj": {"x": "set", "deep": {"k": 1, "j": 2}}, "nullable": "nd", "nonnull": "nn"}}),
            ),
            (
                json!({"spec": {"nodefault": {}}}),
                json!({"spec": {"a": 5, "obj": {"x": "dx", "deep": {"k": 1, "j": 2}}, "nodefault": {"y": "dy"}, "nullable": "nd", "nonnull": "nn"}}),
            ),
            (
                json!({"spec": {"m": {"one": {}, "two": {"p": 1}}, "l": [{}, {"q": false}], "ln": [null, "x"]}}),
                json!({"spec": {"a": 5, "obj": {"x": "dx", "deep": {"k": 1, "j": 2}},
                    "m": {"one": {"p": 7}, "two": {"p": 1}}, "l": [{"q": true}, {"q": false}], "ln": ["filled", "x"], "nullable": "nd", "nonnull": "nn"}}),
            ),
            (
                json!({"spec": {"nullable": null, "nonnull": null, "dropme": null, "keepnull": null}}),
                json!({"spec": {"a": 5, "obj": {"x": "dx", "deep": {"k": 1, "j": 2}}, "nullable": null, "nonnull": "nn", "dropme": null, "keepnull": null}}),
            ),
        ];
        for (i, (input, want)) in cases.into_iter().enumerate() {
            let mut got = input;
            s.apply_defaults(&mut got);
            assert_eq!(got, want, "case {i}");
            // idempotent
            let again = got.clone();
            s.apply_defaults(&mut got);
            assert_eq!(got, again, "case {i} idempotent");
        }
    }

    #[test]
    fn defaults_on_workpool() {
        let mut obj = good_pool();
        obj["spec"]["autoscaling"] = json!({"maxReplicas": 3, "behavior": {"scaleUp": {}}});
        obj["spec"].as_object_mut().map(|m| m.remove("replicas"));
        workpool().apply_defaults(&mut obj);
        assert_eq!(obj["spec"]["replicas"], json!(1));
        assert_eq!(
            obj["spec"]["delivery"],
            json!({"visibilityTimeoutSeconds": 300, "maxDeliveries": 5})
        );
        assert_eq!(obj["spec"]["autoscaling"]["minReplicas"], json!(0));
        assert_eq!(
            obj["spec"]["autoscaling"]["targetBacklogPerReplica"],
            json!(10)
        );
        assert_eq!(
            obj["spec"]["autoscaling"]["behavior"]["scaleUp"]["selectPolicy"],
            json!("Max")
        );
        assert!(obj["status"].is_null(), "no default for status");
    }

    // ── pruning ──

    #[test]
    fn prune_table() {
        let s = schema(json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "known": {"type": "string"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {
                        "typed": {"type": "object", "properties": {"t": {"type": "string"}}}}},
                    "emb": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {
                        "spec": {"type": "object", "properties": {"s": {"type": "string"}}}}},
                    "ios": {"x-kubernetes-int-or-string": true},
                    "list": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
                    "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "integer"}}}}
                }}
            }
        }));
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
            "extra": 1,
            "spec": {
                "known": "k", "unknown": "u",
                "free": {"anything": {"goes": [1, 2]}, "typed": {"t": "t", "dropped": 1}},
                "emb": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                        "spec": {"s": "s", "zz": 1}, "other": 2},
                "ios": 5,
                "list": [{"n": "a", "x": 1}, {"y": 2}],
                "map": {"a": {"v": 1, "w": 2}}
            }
        });
        let unknown = s.prune_unknown_fields(&mut obj);
        assert_eq!(
            obj,
            json!({
                "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
                "spec": {
                    "known": "k",
                    "free": {"anything": {"goes": [1, 2]}, "typed": {"t": "t"}},
                    "emb": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"s": "s"}},
                    "ios": 5,
                    "list": [{"n": "a"}, {}],
                    "map": {"a": {"v": 1}}
                }
            })
        );
        assert_eq!(
            unknown,
            vec![
                "extra",
                "spec.emb.other",
                "spec.emb.spec.zz",
                "spec.free.typed.dropped",
                "spec.list[0].x",
                "spec.list[1].y",
                "spec.map.a.w",
                "spec.unknown"
            ]
        );
        // nulls of non-nullable fields without a default are dropped too
        let mut nulls =
            json!({"spec": {"known": null, "free": {"typed": null, "x": null}, "ios": null}});
        assert!(s.prune_unknown_fields(&mut nulls).is_empty());
        assert_eq!(nulls, json!({"spec": {"free": {"x": null}}}));
        // preserve-unknown at the root keeps everything
        let s2 = schema(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        let mut o2 = json!({"a": {"b": 1}, "spec": [1]});
        s2.prune(&mut o2);
        assert_eq!(o2, json!({"a": {"b": 1}, "spec": [1]}));
        assert!(s2.preserves_unknown_fields_at_root());
        assert!(!s.preserves_unknown_fields_at_root());
    }

    // ── OpenAPI validation ──

    fn kw_schema() -> CrdVersionSchema {
        schema(json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "spec": {"type": "object", "required": ["queue"], "properties": {
                    "queue": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0, "maximum": 10},
                    "exMin": {"type": "integer", "minimum": 0, "exclusiveMinimum": true},
                    "exMax": {"type": "number", "maximum": 1.5, "exclusiveMaximum": true},
                    "ratio": {"type": "number", "minimum": 0.5},
                    "mult": {"type": "integer", "multipleOf": 3},
                    "x": {"type": "string", "enum": ["a", "b"]},
                    "n": {"type": "integer", "enum": [1, 2]},
                    "short": {"type": "string", "minLength": 2},
                    "long": {"type": "string", "maxLength": 3},
                    "pat": {"type": "string", "pattern": "^[a-z]+$"},
                    "few": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "many": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                    "uniq": {"type": "array", "uniqueItems": true, "items": {"type": "integer"}},
                    "minp": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
                    "maxp": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
                    "when": {"type": "string", "format": "date-time"},
                    "uid": {"type": "string", "format": "uuid"},
                    "i32": {"type": "integer", "format": "int32"},
                    "flag": {"type": "boolean"},
                    "obj": {"type": "object"},
                    "list": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}},
                    "ios": {"x-kubernetes-int-or-string": true},
                    "nul": {"type": "string", "nullable": true},
                    "strmap": {"type": "object", "additionalProperties": {"type": "integer"}}
                }}
            }
        }))
    }

    fn obj_with(spec_extra: Value) -> Value {
        let mut spec = json!({"queue": "q"});
        if let (Some(m), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        json!({"metadata": {"name": "ok"}, "spec": spec})
    }

    #[test]
    fn openapi_keywords_table() {
        let s = kw_schema();
        let cases: Vec<(Value, Vec<Cause>)> = vec![
            (json!({}), vec![]),
            (
                json!({"replicas": -1}),
                vec![c(
                    R_INVALID,
                    "spec.replicas",
                    "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                )],
            ),
            (
                json!({"replicas": 11}),
                vec![c(
                    R_INVALID,
                    "spec.replicas",
                    "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
                )],
            ),
            (json!({"replicas": 3.0}), vec![]),
            (
                json!({"replicas": 2.5}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.replicas",
                    "Invalid value: \"number\": spec.replicas in body must be of type integer: \"number\"",
                )],
            ),
            (
                json!({"replicas": "string"}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.replicas",
                    "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
                )],
            ),
            (
                json!({"exMin": 0}),
                vec![c(
                    R_INVALID,
                    "spec.exMin",
                    "Invalid value: 0: spec.exMin in body should be greater than 0",
                )],
            ),
            (
                json!({"exMax": 1.5}),
                vec![c(
                    R_INVALID,
                    "spec.exMax",
                    "Invalid value: 1.5: spec.exMax in body should be less than 1.5",
                )],
            ),
            (
                json!({"ratio": 0.25}),
                vec![c(
                    R_INVALID,
                    "spec.ratio",
                    "Invalid value: 0.25: spec.ratio in body should be greater than or equal to 0.5",
                )],
            ),
            (json!({"ratio": 1}), vec![]),
            (
                json!({"mult": 4}),
                vec![c(
                    R_INVALID,
                    "spec.mult",
                    "Invalid value: 4: spec.mult in body should be a multiple of 3",
                )],
            ),
            (
                json!({"x": "z"}),
                vec![c(
                    R_NOT_SUPPORTED,
                    "spec.x",
                    "Unsupported value: \"z\": supported values: \"a\", \"b\"",
                )],
            ),
            (
                json!({"n": 3}),
                vec![c(
                    R_NOT_SUPPORTED,
                    "spec.n",
                    "Unsupported value: 3: supported values: \"1\", \"2\"",
                )],
            ),
            (json!({"n": 2.0}), vec![]),
            (
                json!({"short": "a"}),
                vec![c(
                    R_INVALID,
                    "spec.short",
                    "Invalid value: \"a\": spec.short in body should be at least 2 chars long",
                )],
            ),
            (
                json!({"long": "abcd"}),
                vec![c(
                    R_TOO_LONG,
                    "spec.long",
                    "Too long: may not be more than 3 bytes",
                )],
            ),
            (json!({"long": "äöü"}), vec![]),
            (
                json!({"pat": "A1"}),
                vec![c(
                    R_INVALID,
                    "spec.pat",
                    "Invalid value: \"A1\": spec.pat in body should match '^[a-z]+$'",
                )],
            ),
            (
                json!({"few": []}),
                vec![c(
                    R_INVALID,
                    "spec.few",
                    "Invalid value: 0: spec.few in body should have at least 1 items",
                )],
            ),
            (
                json!({"many": ["a", "b", "c"]}),
                vec![c(
                    R_TOO_MANY,
                    "spec.many",
                    "Too many: 3: must have at most 2 items",
                )],
            ),
            (
                json!({"uniq": [1, 2, 1]}),
                vec![c(
                    R_INVALID,
                    "spec.uniq",
                    "Invalid value: \"\": spec.uniq in body shouldn't contain duplicates",
                )],
            ),
            (
                json!({"minp": {}}),
                vec![c(
                    R_INVALID,
                    "spec.minp",
                    "Invalid value: 0: spec.minp in body should have at least 1 properties",
                )],
            ),
            (
                json!({"maxp": {"a": "1", "b": "2"}}),
                vec![c(
                    R_TOO_MANY,
                    "spec.maxp",
                    "Too many: 2: must have at most 1 items",
                )],
            ),
            (json!({"when": "2024-01-02T03:04:05Z"}), vec![]),
            (
                json!({"when": "yesterday"}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.when",
                    "Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
                )],
            ),
            (
                json!({"uid": "not-a-uuid"}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.uid",
                    "Invalid value: \"not-a-uuid\": spec.uid in body must be of type uuid: \"not-a-uuid\"",
                )],
            ),
            (
                json!({"uid": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
                vec![],
            ),
            // int32 is stripped from CRD schemas by the apiserver: no range check
            (json!({"i32": 1_099_511_627_776_i64}), vec![]),
            (
                json!({"flag": "true"}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.flag",
                    "Invalid value: \"string\": spec.flag in body must be of type boolean: \"string\"",
                )],
            ),
            (
                json!({"obj": [1]}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.obj",
                    "Invalid value: \"array\": spec.obj in body must be of type object: \"array\"",
                )],
            ),
            (
                json!({"list": [{"name": "a"}, {}]}),
                vec![c(R_REQUIRED, "spec.list[1].name", "Required value")],
            ),
            (json!({"ios": 5}), vec![]),
            (json!({"ios": "5%"}), vec![]),
            (
                json!({"ios": true}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.ios",
                    "Invalid value: \"boolean\": spec.ios in body must be of type integer,string: \"boolean\"",
                )],
            ),
            (json!({"nul": null}), vec![]),
            (
                json!({"flag": null}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.flag",
                    "Invalid value: \"null\": spec.flag in body must be of type boolean: \"null\"",
                )],
            ),
            (
                json!({"strmap": {"a": 1, "b": "x"}}),
                vec![c(
                    R_TYPE_INVALID,
                    "spec.strmap.b",
                    "Invalid value: \"string\": spec.strmap.b in body must be of type integer: \"string\"",
                )],
            ),
        ];
        for (i, (extra, mut want)) in cases.into_iter().enumerate() {
            let obj = obj_with(extra.clone());
            let got = s.validate(&obj, None);
            if want.iter().any(|c| {
                matches!(
                    c.reason.as_str(),
                    R_NOT_SUPPORTED | R_REQUIRED | R_TOO_LONG | R_TOO_MANY | R_TYPE_INVALID
                )
            }) {
                want.push(c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                ));
            }
            assert_eq!(got, want, "case {i}: {extra}");
        }
    }

    #[test]
    fn required_and_multiple_errors_in_stable_order() {
        let s = kw_schema();
        let obj = json!({"metadata": {"name": "ok"}, "spec": {"replicas": -1, "x": "z"}});
        let got = s.validate(&obj, None);
        let fields: Vec<&str> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.replicas", "spec.x", "spec.queue", "<nil>"]
        );
        assert_eq!(got[2], c(R_REQUIRED, "spec.queue", "Required value"));
        // deterministic
        assert_eq!(s.validate(&obj, None), got);
    }

    #[test]
    fn metadata_name_must_be_dns_subdomain_on_create() {
        let s = workpool();
        let mut obj = good_pool();
        obj["metadata"]["name"] = json!("Bad_Name");
        let got = s.validate(&obj, None);
        assert_eq!(
            got,
            vec![c(
                R_INVALID,
                "metadata.name",
                "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            )]
        );
        // on update the name is not re-validated (it is immutable)
        assert!(s.validate(&obj, Some(&obj)).is_empty());
        let mut noname = good_pool();
        noname["metadata"] = json!({"namespace": "default"});
        assert_eq!(
            s.validate(&noname, None),
            vec![
                c(
                    R_REQUIRED,
                    "metadata.name",
                    "Required value: name or generateName is required"
                ),
                c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
                ),
            ]
        );
        let mut generated = good_pool();
        generated["metadata"] = json!({"generateName": "pool-", "name": "pool-abcde"});
        assert!(s.validate(&generated, None).is_empty());
        generated["metadata"]["generateName"] = json!("Pool-");
        assert_eq!(s.validate(&generated, None).len(), 1);
    }

    // ── WorkPool fixture and CEL ──

    #[test]
    fn workpool_valid_object_has_no_causes() {
        let s = workpool();
        let mut obj = good_pool();
        obj["spec"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 5, "behavior": {"scaleUp": {"selectPolicy": "Min"}}});
        obj["spec"]["env"] = json!([{"name": "A", "value": "1"}, {"name": "B"}]);
        obj["spec"]["tags"] = json!(["x", "y"]);
        obj["spec"]["template"] =
            json!({"spec": {"containers": [{"name": "w", "image": "busybox"}]}});
        s.apply_defaults(&mut obj);
        s.prune(&mut obj);
        assert_eq!(s.validate(&obj, None), vec![]);
    }

    #[test]
    fn workpool_cel_and_schema_table() {
        let s = workpool();
        let blocked = c(
            R_INVALID,
            "<nil>",
            "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        );
        let cases: Vec<(&str, Value, Vec<Cause>)> = vec![
            (
                "min greater than max",
                with(
                    good_pool(),
                    "/spec/autoscaling",
                    json!({"minReplicas": 5, "maxReplicas": 2}),
                ),
                vec![c(
                    R_INVALID,
                    "spec.autoscaling.minReplicas",
                    "Invalid value: \"object\": autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
                )],
            ),
            (
                "min equals max",
                with(
                    good_pool(),
                    "/spec/autoscaling",
                    json!({"minReplicas": 2, "maxReplicas": 2}),
                ),
                vec![],
            ),
            (
                "both backends",
                with(
                    good_pool(),
                    "/spec/queue/redis/urlSecretRef",
                    json!({"name": "s", "key": "k"}),
                ),
                vec![c(
                    R_INVALID,
                    "spec.queue.redis",
                    "Invalid value: \"object\": exactly one of url or urlSecretRef must be set",
                )],
            ),
            (
                "no backend",
                with(good_pool(), "/spec/queue/redis", json!({"stream": "s"})),
                vec![c(
                    R_INVALID,
                    "spec.queue.redis",
                    "Invalid value: \"object\": exactly one of url or urlSecretRef must be set",
                )],
            ),
            (
                "secret ref only",
                with(
                    good_pool(),
                    "/spec/queue/redis",
                    json!({"urlSecretRef": {"name": "s", "key": "k"}}),
                ),
                vec![],
            ),
            (
                "negative replicas",
                with(good_pool(), "/spec/replicas", json!(-1)),
                vec![
                    c(
                        R_INVALID,
                        "spec.replicas",
                        "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                    ),
                    c(
                        R_INVALID,
                        ".spec.replicas",
                        "Invalid value: -1: should be a non-negative integer",
                    ),
                ],
            ),
            (
                "bad select policy blocks CEL",
                with(
                    with(
                        good_pool(),
                        "/spec/autoscaling",
                        json!({"minReplicas": 5, "maxReplicas": 2}),
                    ),
                    "/spec/autoscaling/behavior",
                    json!({"scaleUp": {"selectPolicy": "Sometimes"}}),
                ),
                vec![
                    c(
                        R_NOT_SUPPORTED,
                        "spec.autoscaling.behavior.scaleUp.selectPolicy",
                        "Unsupported value: \"Sometimes\": supported values: \"Max\", \"Min\", \"Disabled\"",
                    ),
                    blocked.clone(),
                ],
            ),
            (
                "missing queue",
                json!({"apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool", "metadata": {"name": "a"}, "spec": {"replicas": 1}}),
                vec![
                    c(R_REQUIRED, "spec.queue", "Required value"),
                    blocked.clone(),
                ],
            ),
            (
                "bad url pattern",
                with(good_pool(), "/spec/queue/redis/url", json!("http://x")),
                vec![c(
                    R_INVALID,
                    "spec.queue.redis.url",
                    "Invalid value: \"http://x\": spec.queue.redis.url in body should match '^rediss?://'",
                )],
            ),
            (
                "duplicate env names",
                with(
                    good_pool(),
                    "/spec/env",
                    json!([{"name": "A"}, {"name": "B"}, {"name": "A", "value": "2"}]),
                ),
                vec![c(
                    R_DUPLICATE,
                    "spec.env[2]",
                    "Duplicate value: map[string]interface {}{\"name\":\"A\"}",
                )],
            ),
            (
                "duplicate tags",
                with(good_pool(), "/spec/tags", json!(["a", "b", "a", "a"])),
                vec![c(R_DUPLICATE, "spec.tags[2]", "Duplicate value: \"a\"")],
            ),
            (
                "label too long",
                with(good_pool(), "/spec/labels", json!({"k": "x".repeat(64)})),
                vec![
                    c(
                        R_TOO_LONG,
                        "spec.labels.k",
                        "Too long: may not be more than 63 bytes",
                    ),
                    blocked.clone(),
                ],
            ),
            (
                "scale replicas float",
                with(good_pool(), "/status", json!({"replicas": 1.5})),
                vec![
                    c(
                        R_TYPE_INVALID,
                        "status.replicas",
                        "Invalid value: \"number\": status.replicas in body must be of type integer: \"number\"",
                    ),
                    c(
                        R_INVALID,
                        ".status.replicas",
                        "Invalid value: 0: .status.replicas accessor error: 1.5 is of the type float64, expected int64",
                    ),
                    blocked.clone(),
                ],
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(s.validate(&obj, None), want, "{name}");
        }
    }

    #[test]
    fn int_or_string_any_of_reports_like_kube_openapi() {
        let s = workpool();
        let obj = with(
            good_pool(),
            "/spec/resources",
            json!({"cpu": "500m", "mem": 3, "bad": true}),
        );
        assert_eq!(
            s.validate(&obj, None),
            vec![
                c(
                    R_TYPE_INVALID,
                    "spec.resources.bad",
                    "Invalid value: \"boolean\": spec.resources.bad in body must be of type integer,string: \"boolean\""
                ),
                c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"\": \"spec.resources.bad\" must validate at least one schema (anyOf)"
                ),
                c(
                    R_TYPE_INVALID,
                    "spec.resources.bad",
                    "Invalid value: \"boolean\": spec.resources.bad in body must be of type integer: \"boolean\""
                ),
                c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
                ),
            ]
        );
    }

    #[test]
    fn schema_errors_ratchet_on_update() {
        let s = kw_schema();
        let bad = obj_with(json!({"replicas": -1, "x": "a"}));
        assert_eq!(s.validate(&bad, None).len(), 1);
        // unchanged invalid field: tolerated on update
        let edited = obj_with(json!({"replicas": -1, "x": "b"}));
        assert_eq!(s.validate(&edited, Some(&bad)), vec![]);
        // changed and still invalid: reported
        let worse = obj_with(json!({"replicas": -2, "x": "a"}));
        assert_eq!(
            s.validate(&worse, Some(&bad)),
            vec![c(
                R_INVALID,
                "spec.replicas",
                "Invalid value: -2: spec.replicas in body should be greater than or equal to 0"
            )]
        );
        // a missing required field is tolerated while its object is unchanged
        let no_queue = json!({"metadata": {"name": "ok"}, "spec": {"replicas": 1}});
        assert_eq!(s.validate(&no_queue, Some(&no_queue)), vec![]);
        let no_queue_edit = json!({"metadata": {"name": "ok"}, "spec": {"replicas": 2}});
        assert_eq!(
            s.validate(&no_queue_edit, Some(&no_queue))[0],
            c(R_REQUIRED, "spec.queue", "Required value")
        );
    }

    fn cel_schema(rules: Value) -> CrdVersionSchema {
        schema(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": rules,
                    "properties": {
                        "minReplicas": {"type": "integer"},
                        "maxReplicas": {"type": "integer"},
                        "mode": {"type": "string"},
                        "items": {"type": "array", "items": {"type": "integer"}},
                        "x": {"type": "string"},
                        "y": {"type": "string"}
                    }
                }
            }
        }))
    }

    fn spec(v: Value) -> Value {
        json!({"metadata": {"name": "a"}, "spec": v})
    }

    #[test]
    fn cel_rules_table() {
        type Case = (&'static str, Value, Value, Option<Value>, Vec<Cause>);
        let cases: Vec<Case> = vec![
            (
                "min <= max fails",
                json!([{"rule": "self.minReplicas <= self.maxReplicas", "message": "min must be <= max"}]),
                json!({"minReplicas": 3, "maxReplicas": 1}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": min must be <= max",
                )],
            ),
            (
                "min <= max passes",
                json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
                json!({"minReplicas": 1, "maxReplicas": 1}),
                None,
                vec![],
            ),
            (
                "default message",
                json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
                json!({"minReplicas": 3, "maxReplicas": 1}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas",
                )],
            ),
            (
                "exactly one of x,y: both",
                json!([{"rule": "has(self.x) != has(self.y)", "message": "exactly one of x or y"}]),
                json!({"x": "a", "y": "b"}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": exactly one of x or y",
                )],
            ),
            (
                "exactly one of x,y: one",
                json!([{"rule": "has(self.x) != has(self.y)"}]),
                json!({"y": "b"}),
                None,
                vec![],
            ),
            (
                "messageExpression",
                json!([{"rule": "self.minReplicas <= self.maxReplicas", "messageExpression": "'min ' + string(self.minReplicas) + ' > max ' + string(self.maxReplicas)"}]),
                json!({"minReplicas": 3, "maxReplicas": 1}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": min 3 > max 1",
                )],
            ),
            (
                "messageExpression error falls back to message",
                json!([{"rule": "false", "message": "static", "messageExpression": "self.nope"}]),
                json!({}),
                None,
                vec![c(R_INVALID, "spec", "Invalid value: \"object\": static")],
            ),
            (
                "reason Forbidden and fieldPath",
                json!([{"rule": "self.mode != 'bad'", "message": "bad mode", "reason": "FieldValueForbidden", "fieldPath": ".mode"}]),
                json!({"mode": "bad"}),
                None,
                vec![c(R_FORBIDDEN, "spec.mode", "Forbidden: bad mode")],
            ),
            (
                "reason Required",
                json!([{"rule": "has(self.mode)", "message": "mode is needed", "reason": "FieldValueRequired"}]),
                json!({}),
                None,
                vec![c(R_REQUIRED, "spec", "Required value: mode is needed")],
            ),
            (
                "reason Duplicate",
                json!([{"rule": "false", "reason": "FieldValueDuplicate"}]),
                json!({}),
                None,
                vec![c(R_DUPLICATE, "spec", "Duplicate value: \"object\"")],
            ),
            (
                "list macro",
                json!([{"rule": "self.items.all(i, i > 0)", "message": "positive"}]),
                json!({"items": [1, 2, -3]}),
                None,
                vec![c(R_INVALID, "spec", "Invalid value: \"object\": positive")],
            ),
            (
                "transition rule skipped on create",
                json!([{"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}]),
                json!({"mode": "b"}),
                None,
                vec![],
            ),
            (
                "transition rule on update",
                json!([{"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}]),
                json!({"mode": "b"}),
                Some(json!({"mode": "a"})),
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": mode is immutable",
                )],
            ),
            (
                "transition rule on update passes",
                json!([{"rule": "self.mode == oldSelf.mode"}]),
                json!({"mode": "a"}),
                Some(json!({"mode": "a"})),
                vec![],
            ),
            (
                "ratcheting: unchanged invalid value is tolerated on update",
                json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
                json!({"minReplicas": 3, "maxReplicas": 1}),
                Some(json!({"minReplicas": 3, "maxReplicas": 1})),
                vec![],
            ),
            (
                "optionalOldSelf on create",
                json!([{"rule": "!oldSelf.hasValue() || self.mode == oldSelf.value().mode", "optionalOldSelf": true, "message": "immutable"}]),
                json!({"mode": "b"}),
                None,
                vec![],
            ),
            (
                "optionalOldSelf on update",
                json!([{"rule": "!oldSelf.hasValue() || self.mode == oldSelf.value().mode", "optionalOldSelf": true, "message": "immutable"}]),
                json!({"mode": "b"}),
                Some(json!({"mode": "a"})),
                vec![c(R_INVALID, "spec", "Invalid value: \"object\": immutable")],
            ),
            (
                "optionalOldSelf evaluated on create",
                json!([{"rule": "oldSelf.hasValue()", "optionalOldSelf": true}]),
                json!({}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": failed rule: oldSelf.hasValue()",
                )],
            ),
            (
                "runtime error",
                json!([{"rule": "self.x == 'a'"}]),
                json!({}),
                None,
                vec![c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": no such key: x evaluating rule: self.x == 'a'",
                )],
            ),
        ];
        for (name, rules, value, old, want) in cases {
            let s = cel_schema(rules);
            let old_obj = old.map(spec);
            let got = s.validate(&spec(value), old_obj.as_ref());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn cel_rule_on_scalar_and_map_items() {
        let s = schema(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "replicas": {"type": "integer", "x-kubernetes-validations": [{"rule": "self % 2 == 0", "message": "must be even"}]},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {
                    "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "port": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable"}]}},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 4"}]}}
            }}}
        }));
        let obj = spec(json!({"replicas": 3, "labels": {"a": "toolong"}}));
        assert_eq!(
            s.validate(&obj, None),
            vec![
                c(
                    R_INVALID,
                    "spec.labels[a]",
                    "Invalid value: \"string\": failed rule: self.size() < 4"
                ),
                c(
                    R_INVALID,
                    "spec.replicas",
                    "Invalid value: \"integer\": must be even"
                ),
            ]
        );
        // transition rules on list-type map items correlate by key, not by index
        let old = spec(json!({"ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}));
        let new = spec(
            json!({"ports": [{"name": "b", "port": 2}, {"name": "a", "port": 1}, {"name": "c", "port": 9}]}),
        );
        assert_eq!(s.validate(&new, Some(&old)), vec![]);
        let changed = spec(json!({"ports": [{"name": "b", "port": 3}]}));
        assert_eq!(
            s.validate(&changed, Some(&old)),
            vec![c(
                R_INVALID,
                "spec.ports[0]",
                "Invalid value: \"object\": port is immutable"
            )]
        );
    }

    #[test]
    fn pathological_cel_is_bounded() {
        // nested comprehensions over a large list: refused by the cost guard, quickly
        let s = cel_schema(
            json!([{"rule": "self.items.all(a, self.items.all(b, self.items.all(c, a + b + c > -1)))"}]),
        );
        let big: Vec<i64> = (0..500).collect();
        let got = s.validate(&spec(json!({"items": big})), None);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].message.contains("call cost exceeds limit"),
            "{:?}",
            got
        );
        // small lists are fine
        assert_eq!(s.validate(&spec(json!({"items": [1, 2, 3]})), None), vec![]);
        // nested loops over literal lists are bounded too
        let digits = "[0,1,2,3,4,5,6,7,8,9]";
        let mut rule = "true".to_string();
        for v in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            rule = format!("{digits}.all({v}, {rule})");
        }
        let got = cel_schema(json!([{"rule": rule.clone()}])).validate(&spec(json!({})), None);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].message.contains("call cost exceeds limit"),
            "{got:?}"
        );
        let got = validate_crd(&crd_with_spec_rules(json!([{"rule": rule}])));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].reason, R_FORBIDDEN);
        // deeply nested expressions are compile errors, not stack overflows
        let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
        let s2 = cel_schema(json!([{"rule": deep}]));
        let got = s2.validate(&spec(json!({})), None);
        assert_eq!(got.len(), 1);
        assert!(got[0].message.contains("rule compile error"), "{got:?}");
        let long_chain = format!("1{} > 0", " + 1".repeat(20000));
        let s3 = cel_schema(json!([{"rule": long_chain}]));
        assert_eq!(s3.validate(&spec(json!({})), None).len(), 1);
        let deep_list = format!("{}1{} != 0", "[".repeat(300), "]".repeat(300));
        let crd = crd_with_spec_rules(json!([{"rule": deep_list}]));
        assert_eq!(validate_crd(&crd).len(), 1);
    }

    // ── list semantics ──

    #[test]
    fn list_type_by_path() {
        let s = workpool();
        let p = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            s.list_type(&p(&["spec", "env"])),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(s.list_type(&p(&["spec", "tags"])), ListType::Set);
        assert_eq!(
            s.list_type(&p(&[
                "spec",
                "autoscaling",
                "behavior",
                "scaleUp",
                "policies"
            ])),
            ListType::Atomic
        );
        assert_eq!(s.list_type(&p(&["spec", "nope"])), ListType::Atomic);
        assert_eq!(
            s.list_type(&p(&["spec", "template", "spec", "containers"])),
            ListType::Atomic
        );
        assert_eq!(s.list_type(&[]), ListType::Atomic);
        let nested = schema(
            json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {
            "b": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}}}),
        );
        assert_eq!(nested.list_type(&p(&["a", "b"])), ListType::Set);
    }

    // ── CRD validation ──

    fn crd_with_spec_rules(rules: Value) -> Value {
        let mut crd = workpool_crd();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
            rules;
        crd
    }

    #[test]
    fn workpool_crd_is_accepted() {
        assert_eq!(validate_crd(&workpool_crd()), vec![]);
    }

    #[test]
    fn crd_validation_table() {
        let root = "spec.validation.openAPIV3Schema";
        type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
        let mut cases: Vec<Case> = Vec::new();
        cases.push((
            "bad CEL rule",
            crd_with_spec_rules(json!([{"rule": "self.replicas >"}])),
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            )],
        ));
        cases.push((
            "undeclared variable",
            crd_with_spec_rules(json!([{"rule": "object.replicas > 0"}])),
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            )],
        ));
        cases.push((
            "undefined field",
            crd_with_spec_rules(json!([{"rule": "self.replicaz > 0"}])),
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            )],
        ));
        for (name, rule) in [
            ("rule not a bool", "self.replicas"),
            ("int compared to string", "self.replicas > 'a'"),
            (
                "nested undefined field",
                "!has(self.autoscaling) || self.autoscaling.minReplica > 0",
            ),
            (
                "undefined field in a macro",
                "!has(self.env) || self.env.all(e, e.nam != '')",
            ),
        ] {
            cases.push((
                name,
                crd_with_spec_rules(json!([{"rule": rule}])),
                vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule")],
            ));
        }
        cases.push((
            "messageExpression not a string",
            crd_with_spec_rules(json!([{"rule": "true", "messageExpression": "self.replicas"}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].messageExpression")],
        ));
        cases.push((
            "bad reason and empty rule",
            crd_with_spec_rules(json!([{"rule": " "}, {"rule": "true", "reason": "Nope"}])),
            vec![
                (R_REQUIRED, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"),
                (R_NOT_SUPPORTED, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[1].reason"),
            ],
        ));
        cases.push((
            "bad fieldPath",
            crd_with_spec_rules(json!([{"rule": "true", "fieldPath": ".nope"}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].fieldPath")],
        ));
        let mut uncorrelatable = workpool_crd();
        uncorrelatable["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["autoscaling"]["properties"]["behavior"]["properties"]["scaleUp"]["properties"]
            ["policies"]["items"]["x-kubernetes-validations"] =
            json!([{"rule": "self.value == oldSelf.value"}]);
        cases.push((
            "oldSelf under an atomic list",
            uncorrelatable,
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].properties[behavior].properties[scaleUp].properties[policies].items.x-kubernetes-validations[0].rule",
            )],
        ));
        cases.push((
            "optionalOldSelf without oldSelf",
            crd_with_spec_rules(json!([{"rule": "true", "optionalOldSelf": true}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].optionalOldSelf")],
        ));
        let mut no_type = workpool_crd();
        no_type["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["replicas"] = json!({"minimum": 0});
        cases.push((
            "missing type",
            no_type,
            vec![(
                R_REQUIRED,
                "spec.validation.openAPIV3Schema.properties[spec].properties[replicas].type",
            )],
        ));
        let mut both = workpool_crd();
        both["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["additionalProperties"] =
            json!({"type": "string"});
        cases.push((
            "properties and additionalProperties",
            both,
            vec![(
                R_FORBIDDEN,
                "spec.validation.openAPIV3Schema.properties[spec].additionalProperties",
            )],
        ));
        let mut bad_default = workpool_crd();
        bad_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["replicas"]["default"] = json!(-1);
        cases.push((
            "invalid default",
            bad_default,
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].properties[replicas].default",
            )],
        ));
        let mut cel_default = workpool_crd();
        cel_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["autoscaling"]["default"] = json!({"minReplicas": 3, "maxReplicas": 1});
        cel_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["autoscaling"]["x-kubernetes-validations"] =
            json!([{"rule": "self.minReplicas <= self.maxReplicas"}]);
        cases.push((
            "default violating a CEL rule",
            cel_default,
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].default",
            )],
        ));
        let mut root_enum = workpool_crd();
        root_enum["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-embedded-resource"] =
            json!(true);
        cases.push((
            "status subresource restricts the root",
            root_enum,
            vec![(R_INVALID, "spec.validation.openAPIV3Schema")],
        ));
        let mut name = workpool_crd();
        name["metadata"]["name"] = json!("pools.workpool.dev");
        cases.push(("name mismatch", name, vec![(R_INVALID, "metadata.name")]));
        let mut storage = workpool_crd();
        let mut v2 = storage["spec"]["versions"][0].clone();
        v2["name"] = json!("v1beta1");
        if let Some(a) = storage["spec"]["versions"].as_array_mut() {
            a.push(v2);
        }
        cases.push((
            "two storage versions",
            storage,
            vec![(R_INVALID, "spec.versions")],
        ));
        let mut scale = workpool_crd();
        scale["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] =
            json!(".status.replicas");
        cases.push((
            "scale path",
            scale,
            vec![(R_INVALID, "spec.subresources.scale.specReplicasPath")],
        ));
        let mut scope = workpool_crd();
        scope["spec"]["scope"] = json!("Galaxy");
        cases.push(("scope", scope, vec![(R_NOT_SUPPORTED, "spec.scope")]));
        let mut root_type = workpool_crd();
        root_type["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["type"] = json!("string");
        cases.push((
            "root type",
            root_type,
            vec![
                (R_INVALID, "spec.validation.openAPIV3Schema.type"),
                (R_INVALID, "spec.validation.openAPIV3Schema.type"),
            ],
        ));
        let mut list_map = workpool_crd();
        list_map["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["env"]["x-kubernetes-list-map-keys"] = json!(["missing"]);
        cases.push(("list map keys", list_map, vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].properties[env].x-kubernetes-list-map-keys")]));
        for (name, crd, want) in cases {
            let got = validate_crd(&crd);
            let got_pairs: Vec<(&str, &str)> = got
                .iter()
                .map(|c| (c.reason.as_str(), c.field.as_str()))
                .collect();
            assert_eq!(got_pairs, want, "{name}: {got:#?}");
        }
        let _ = root;
    }

    #[test]
    fn crd_rule_cost_is_estimated() {
        let list_crd = |max_items: Option<i64>, rule: &str| {
            let mut crd = workpool_crd();
            let tags = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                ["properties"]["tags"];
            if let Some(m) = max_items {
                tags["maxItems"] = json!(m);
            }
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
                json!([{"rule": rule}]);
            crd
        };
        let quadratic = "!has(self.tags) || self.tags.all(a, self.tags.exists_one(b, a == b))";
        let got = validate_crd(&list_crd(None, quadratic));
        assert_eq!(
            got,
            vec![c(
                R_FORBIDDEN,
                "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
                "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
            )]
        );
        assert_eq!(validate_crd(&list_crd(Some(100), quadratic)), vec![]);
        // a linear rule over an unbounded list is accepted
        assert_eq!(
            validate_crd(&list_crd(
                None,
                "!has(self.tags) || self.tags.all(t, t.size() < 10)"
            )),
            vec![]
        );
        // scanning unbounded strings of an unbounded list is not
        let scan = "!has(self.tags) || self.tags.all(t, t.matches('^[a-z]+$'))";
        assert_eq!(validate_crd(&list_crd(None, scan)).len(), 1);
        let mut bounded = list_crd(Some(10), scan);
        bounded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["tags"]["items"]["maxLength"] = json!(20);
        assert_eq!(validate_crd(&bounded), vec![]);
    }

    #[test]
    fn crd_cel_compile_error_message_shape() {
        let got = validate_crd(&crd_with_spec_rules(
            json!([{"rule": "self.replicas >", "message": "m"}]),
        ));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].message.starts_with(
                "Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas >\", Message:\"m\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}: compilation failed: ERROR: <input>"
            ),
            "{}",
            got[0].message
        );
        // per-version schemas that differ are reported under spec.versions[i]
        let mut crd = workpool_crd();
        let mut v2 = crd["spec"]["versions"][0].clone();
        v2["name"] = json!("v1beta1");
        v2["storage"] = json!(false);
        v2["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
            json!([{"rule": "self.replicas >"}]);
        if let Some(a) = crd["spec"]["versions"].as_array_mut() {
            a.push(v2);
        }
        let got = validate_crd(&crd);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(
            got[0].field,
            "spec.versions[1].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
        );
    }

    #[test]
    fn type_meta_must_match_the_served_kind() {
        let obj = good_pool();
        assert_eq!(
            validate_type_meta(&obj, "workpool.dev/v1alpha1", "WorkPool"),
            vec![]
        );
        assert_eq!(
            validate_type_meta(
                &json!({"apiVersion": "workpool.dev/v1", "kind": "Pool"}),
                "workpool.dev/v1alpha1",
                "WorkPool"
            ),
            vec![
                c(
                    R_INVALID,
                    "kind",
                    "Invalid value: \"Pool\": must be WorkPool"
                ),
                c(
                    R_INVALID,
                    "apiVersion",
                    "Invalid value: \"workpool.dev/v1\": must be workpool.dev/v1alpha1"
                ),
            ]
        );
    }

    #[test]
    fn kube_derive_style_crd() {
        let crd: Value = serde_yaml::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/schema/kube-derive-style-crd.yaml"
        )))
        .expect("fixture parses");
        assert_eq!(validate_crd(&crd), vec![]);
        let v = crd.pointer("/spec/versions/0").cloned().unwrap_or_default();
        let s = CrdVersionSchema::from_crd_version(&v).expect("schema");
        let base = json!({
            "apiVersion": "example.dev/v1", "kind": "Sample", "metadata": {"name": "s"},
            "spec": {"count": 1, "mode": "Fast", "queue": {"url": "redis://x"}, "replicas": null, "port": "http",
                     "workers": [{"name": "a"}, {"name": "b", "weight": 3}], "template": {"any": {"thing": 1}}},
            "status": null
        });
        let mut ok = base.clone();
        s.apply_defaults(&mut ok);
        assert!(s.prune_unknown_fields(&mut ok).is_empty());
        assert_eq!(ok["spec"]["workers"][0]["weight"], json!(1));
        assert_eq!(ok["spec"]["replicas"], Value::Null, "nullable null is kept");
        assert_eq!(s.validate(&ok, None), vec![]);
        let both = with(
            base.clone(),
            "/spec/queue/urlSecretRef",
            json!({"name": "n", "key": "k"}),
        );
        assert_eq!(
            s.validate(&both, None),
            vec![c(
                R_INVALID,
                "<nil>",
                "Invalid value: \"\": \"spec.queue\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
            )]
        );
        let neither = with(base.clone(), "/spec/queue", json!({}));
        assert_eq!(
            s.validate(&neither, None),
            vec![
                c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"\": \"spec.queue\" must validate one and only one schema (oneOf). Found none valid"
                ),
                c(R_REQUIRED, "spec.queue.url", "Required value"),
                c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
                ),
            ]
        );
        let negative = with(
            with(base, "/spec/count", json!(-1)),
            "/spec/ratio",
            json!(-0.5),
        );
        assert_eq!(
            s.validate(&negative, None),
            vec![
                c(
                    R_INVALID,
                    "spec.count",
                    "Invalid value: -1: spec.count in body should be greater than or equal to 0"
                ),
                c(
                    R_INVALID,
                    "spec",
                    "Invalid value: \"object\": ratio must be positive"
                ),
            ]
        );
    }

    // ── robustness ──

    #[test]
    fn odd_inputs_never_panic() {
        let schemas = vec![
            json!({}),
            json!({"type": 5}),
            json!({"type": "object", "properties": []}),
            json!({"type": "object", "properties": {"a": 1, "b": null, "c": {"type": ["x"]}}}),
            json!({"type": "array", "items": [1, 2]}),
            json!({"type": "object", "required": "spec", "enum": "x", "minimum": "low", "maxLength": -1, "pattern": "(("}),
            json!({"type": "object", "x-kubernetes-validations": "rule"}),
            json!({"type": "object", "x-kubernetes-validations": [1, {"rule": 5}, {"rule": "self.a.b.c"}, {"rule": "self", "fieldPath": "[[["}]}),
            json!({"type": "object", "additionalProperties": true, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": 3}),
            json!({"type": "integer", "multipleOf": 0, "minimum": 1e300, "maximum": -1e300}),
            json!({"type": "number", "multipleOf": 0.0}),
            json!({"x-kubernetes-int-or-string": true, "default": {"a": 1}}),
            json!({"type": "object", "properties": {"spec": {"type": "object", "default": 5, "properties": {"x": {"type": "string", "default": []}}}}}),
            json!({"type": "object", "allOf": [{"x-kubernetes-validations": [{"rule": "1"}]}], "anyOf": [1], "oneOf": [{}], "not": {}}),
            json!({"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object"}}),
        ];
        let mut deep = json!(1);
        for _ in 0..300 {
            deep = json!({"a": deep, "l": [deep.clone()]})
                .get("a")
                .cloned()
                .map(|a| json!({"a": a}))
                .unwrap_or(Value::Null);
        }
        let objects = vec![
            Value::Null,
            json!(1),
            json!("s"),
            json!([1, {"a": null}]),
            json!({"metadata": 5}),
            json!({"metadata": {"name": 5}}),
            json!({"metadata": {"name": ""}, "spec": null}),
            json!({"metadata": {"generateName": "-"}, "spec": {"x": [null, {}], "a": {"b": 1}}}),
            json!({"spec": {"replicas": 1e308, "big": 18446744073709551615u64, "neg": -9223372036854775808i64}}),
            json!({"a": {"b": [[[[[]]]]]}}),
            deep,
        ];
        for (i, s) in schemas.iter().enumerate() {
            let wrapped = json!({"name": "v1", "schema": {"openAPIV3Schema": s}, "subresources": {"scale": {"specReplicasPath": ".spec.a.b", "statusReplicasPath": "status"}}});
            let Ok(vs) = CrdVersionSchema::from_crd_version(&wrapped) else {
                continue;
            };
            for (j, o) in objects.iter().enumerate() {
                let mut d = o.clone();
                vs.apply_defaults(&mut d);
                vs.prune(&mut d);
                let _ = vs.validate(o, None);
                let _ = vs.validate(o, Some(o));
                let _ = vs.validate(&d, Some(o));
                let _ = vs.list_type(&["spec".into(), "x".into()]);
                let _ = (i, j);
            }
            let crd = json!({"metadata": {"name": 5}, "spec": {"group": "a", "versions": [wrapped, 3, {"schema": null}]}});
            let _ = validate_crd(&crd);
        }
        // multibyte generateName, pathological messageExpression
        let vs = cel_schema(
            json!([{"rule": "false", "message": "m", "messageExpression": format!("{}'x'{}", "(".repeat(3000), ")".repeat(3000))}]),
        );
        let got = vs.validate(
            &json!({"metadata": {"generateName": "é-", "name": "x"}, "spec": {}}),
            None,
        );
        assert_eq!(
            got.last().map(|c| c.message.as_str()),
            Some("Invalid value: \"object\": m")
        );
        let crd = crd_with_spec_rules(json!([{"rule": "true", "messageExpression": "1 +"}]));
        assert_eq!(validate_crd(&crd).len(), 1);
        for odd in [
            Value::Null,
            json!(1),
            json!([]),
            json!({"spec": {"versions": "x"}}),
            json!({"spec": {"names": 1, "versions": [{"subresources": {"scale": 1}}]}}),
        ] {
            let _ = validate_crd(&odd);
        }
        assert!(CrdVersionSchema::from_crd_version(&json!({})).is_err());
        assert!(
            CrdVersionSchema::from_crd_version(&json!({"schema": {"openAPIV3Schema": 3}})).is_err()
        );
    }
}
