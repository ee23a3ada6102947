//! CEL `x-kubernetes-validations`: parsing guards, evaluation through kube-cel, messages.

use super::*;

// ───────────────────────────── CEL ─────────────────────────────

/// One `x-kubernetes-validations` entry, as the apiserver reads it.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleSpec {
    pub(super) rule: String,
    pub(super) message: Option<String>,
    pub(super) message_expression: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) field_path: Option<String>,
    pub(super) optional_old_self: Option<bool>,
    pub(super) raw: Value,
}

impl RuleSpec {
    pub(super) fn from_json(v: &Value) -> Self {
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
    pub(super) fn error_string(&self) -> String {
        match self.message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => self.rule.trim().to_string(),
        }
    }

    /// `ruleMessageOrDefault`.
    pub(super) fn message_or_default(&self) -> String {
        match self.message.as_deref() {
            Some(m) if !m.is_empty() => m.trim().to_string(),
            _ => format!("failed rule: {}", self.error_string()),
        }
    }

    /// Go `%#v` of `apiextensions.ValidationRule` (the bad value of CRD rule errors).
    pub(super) fn go_struct(&self) -> String {
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

pub(super) fn rules_of(s: &Value) -> Vec<RuleSpec> {
    s.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(RuleSpec::from_json).collect())
        .unwrap_or_default()
}

/// What static analysis of a CEL source found.
pub(super) struct RuleShape {
    pub(super) uses_old_self: bool,
    /// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`...).
    pub(super) loop_depth: u32,
    /// Variables referenced that are neither `self`/`oldSelf` nor bound by a macro.
    pub(super) undeclared: Vec<String>,
    /// Longest list / map literal in the expression (what a comprehension may iterate
    /// besides the object's own collections).
    pub(super) longest_literal: usize,
}

/// Parses a CEL source with the guards the apiserver's limits imply. Must run on a
/// thread with a large stack (see [`with_cel_stack`]).
pub(super) fn analyze_cel(src: &str) -> Result<RuleShape, String> {
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
pub(super) fn largest_collection(v: &Value) -> f64 {
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
pub(super) fn strip_nested_rules(s: &mut Value, depth: usize) {
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
pub(super) fn normalize_field_path(json_path: &str, s: &Value) -> Result<String, String> {
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
pub(super) fn with_cel_stack<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::Builder::new()
        .name("crd-schema-cel".into())
        .stack_size(CEL_STACK)
        .spawn(f)
        .ok()?
        .join()
        .ok()
}

/// What evaluating one rule gave.
pub(super) enum Outcome {
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
pub(super) fn eval_with_kube_cel(
    r: &RuleSpec,
    s: &Value,
    v: &Value,
    old: Option<&Value>,
) -> Vec<Outcome> {
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
pub(super) const CEL_RESERVED: &[&str] = &[
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
pub(super) fn json_to_cel(v: &Value, s: Option<&Value>, depth: usize) -> kube_cel::cel::Value {
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
pub(super) fn eval_optional_old_self(
    r: &RuleSpec,
    s: &Value,
    v: &Value,
    old: Option<&Value>,
) -> Vec<Outcome> {
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
pub(super) struct CelPass {
    pub(super) errs: Vec<Cause>,
    /// Set when the apiserver would stop evaluating further rules (cost exceeded).
    pub(super) stopped: bool,
    /// Whether failures of non-transition rules on unchanged values are dropped
    /// (update ratcheting); off when checking CRD defaults.
    pub(super) ratcheting: bool,
}

impl CelPass {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk(
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

    pub(super) fn eval_rules(
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
                            // v1.37 omits the value (formerly the schema type, `"object"`).
                            _ => cause(R_INVALID, &f, Bad::Omit, &detail),
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
    pub(super) fn failure_detail(&self, r: &RuleSpec, kube_cel_message: &str) -> String {
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
