//! ObjectMeta checks of custom resources and embedded resources; DNS name rules.

use super::*;

// ───────────────────────────── metadata ─────────────────────────────

pub(super) const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
pub(super) const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
pub(super) const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

pub(super) fn is_dns_label(l: &str, first_alpha: bool) -> bool {
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
pub(super) fn dns1123_label_errors(value: &str) -> Vec<String> {
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
pub(super) fn dns1035_label_errors(value: &str) -> Vec<String> {
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
pub(super) fn name_is_dns_subdomain(name: &str, prefix: bool) -> Vec<String> {
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

pub(super) fn go_type_name(v: &Value) -> &'static str {
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
pub(super) fn go_plain_v(v: &Value) -> String {
    pub(super) fn inner(v: &Value, depth: usize, out: &mut String) {
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
pub(super) fn validate_metadata(obj: &Value, create: bool, out: &mut Vec<Cause>) {
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
pub(super) fn validate_embedded(
    s: &Value,
    x: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<Cause>,
) {
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
