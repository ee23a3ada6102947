//! OpenAPI v3 validation of a custom resource, as kube-openapi's validator reports it.

use super::*;

// ───────────────────────────── OpenAPI validation (kube-openapi) ─────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
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
pub(super) struct OErr {
    pub(super) code: Code,
    pub(super) name: String,
    pub(super) value: Option<Value>,
    pub(super) message: String,
    pub(super) enum_values: Vec<Value>,
    pub(super) actual: i64,
    pub(super) max: i64,
}

impl OErr {
    pub(super) fn new(code: Code, name: &str, value: Option<Value>, message: String) -> Self {
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
    pub(super) fn to_cause(&self, prefix: &str) -> Cause {
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
pub(super) fn in_body(name: &str) -> String {
    format!("{name} in body")
}

pub(super) fn invalid_type(name: &str, type_name: &str, value: &str) -> OErr {
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
pub(super) fn json_type(v: &Value) -> (&'static str, &'static str) {
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

pub(super) fn effective_format(s: &Value) -> &str {
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
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
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
pub(super) fn enum_matches(entry: &Value, v: &Value) -> bool {
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

pub(super) struct OpenApi {
    pub(super) errs: Vec<OErr>,
}

impl OpenApi {
    pub(super) fn validate(&mut self, s: &Value, v: &Value, path: &str, depth: usize) {
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

    pub(super) fn enum_fail(&mut self, path: &str, v: &Value, en: &[Value]) {
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

    pub(super) fn type_check(&mut self, types: &[&str], format: &str, v: &Value, path: &str) {
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
    pub(super) fn schema_props(&mut self, s: &Value, v: &Value, path: &str, depth: usize) {
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

    pub(super) fn string_check(&mut self, s: &Value, st: &str, path: &str) {
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

    pub(super) fn number_check(&mut self, s: &Value, n: &serde_json::Number, path: &str) {
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

    pub(super) fn slice_check(&mut self, s: &Value, arr: &[Value], path: &str, depth: usize) {
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

    pub(super) fn object_check(
        &mut self,
        s: &Value,
        m: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
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
pub(super) fn go_values_item(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => go_num_str(n),
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        other => go_json(other),
    }
}

/// Regular-expression match through CEL's `matches` (RE2-like syntax, as Go's regexp).
pub(super) fn regex_match(pattern: &str, s: &str) -> Result<bool, String> {
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
