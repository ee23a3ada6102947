//! Go-compatible rendering of values and `field.Error`s, so messages read like the apiserver's.

use super::*;

// ───────────────────────────── Go-compatible rendering ─────────────────────────────

/// Go `strconv.Quote` / `%q`.
pub(super) fn go_quote(s: &str) -> String {
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
pub(super) fn go_float(f: f64) -> String {
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
pub(super) enum GoNum {
    Int(i64),
    Float(f64),
}

pub(super) fn go_num(n: &serde_json::Number) -> GoNum {
    if let Some(i) = n.as_i64() {
        GoNum::Int(i)
    } else {
        GoNum::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

pub(super) fn go_num_str(n: &serde_json::Number) -> String {
    match go_num(n) {
        GoNum::Int(i) => i.to_string(),
        GoNum::Float(f) => go_float(f),
    }
}

/// Go `%#v` of a decoded JSON value (maps sorted by key, like fmt does).
pub(super) fn go_sharp_v(v: &Value) -> String {
    pub(super) fn inner(v: &Value, depth: usize, out: &mut String) {
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
pub(super) fn go_json(v: &Value) -> String {
    pub(super) fn inner(v: &Value, depth: usize, out: &mut String) {
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
pub(super) enum Bad {
    /// A decoded JSON value (strings `%q`, numbers `%v`, null as `"null"`, composites `%#v`).
    Json(Value),
    /// An already rendered value (Go `%#v` of a Go struct, `%v` of an int...).
    Raw(String),
    /// `field.OmitValueType` / no value printed.
    Omit,
}

pub(super) fn bad_str(s: &str) -> Bad {
    Bad::Json(Value::String(s.to_string()))
}

pub(super) fn bad_int(i: i64) -> Bad {
    Bad::Raw(i.to_string())
}

/// `field.Error.ErrorBody()` of k8s.io/apimachinery v0.33.
pub(super) fn error_body(reason: &str, bad: &Bad, detail: &str) -> String {
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
                    // v1.37 renders a nil value as `null` (v1.32: `"null"`).
                    Value::Null => s.push_str("null"),
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

pub(super) fn cause(reason: &str, field: &str, bad: Bad, detail: &str) -> Cause {
    Cause {
        reason: reason.to_string(),
        message: error_body(reason, &bad, detail),
        field: field.to_string(),
    }
}

/// `field.Path.Child(name)` rendering; `""` stands for the nil path.
pub(super) fn child(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

/// `field.Path.Key(k)` / `.Index(i)` rendering.
pub(super) fn subscript(base: &str, key: &str) -> String {
    format!("{base}[{key}]")
}

/// `field.Path.String()` of a possibly nil path.
pub(super) fn nil_path(p: &str) -> String {
    if p.is_empty() {
        "<nil>".to_string()
    } else {
        p.to_string()
    }
}
