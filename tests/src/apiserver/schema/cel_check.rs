//! Static checks of CEL rules at CRD creation: a small type checker and cost estimation.

use super::*;

/// Static types a rule's sub-expressions can be shown to have (a small subset of the
/// CEL type checker the apiserver runs at CRD creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CelTy {
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
    pub(super) fn name(self) -> &'static str {
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

    pub(super) fn numeric(self) -> bool {
        matches!(self, CelTy::Int | CelTy::Uint | CelTy::Double)
    }
}

/// The CEL type of values of a schema node.
pub(super) fn schema_cel_ty(s: &Value) -> CelTy {
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
pub(super) fn cel_escape(name: &str) -> String {
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
pub(super) fn check_rule_types(rule: &str, s: &Value, message_expression: bool) -> Option<String> {
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
pub(super) const STATIC_COST_LIMIT: f64 = 10_000_000.0;
/// The apiserver's request size limit, used to bound lists, maps and strings that
/// declare no `maxItems` / `maxProperties` / `maxLength`.
pub(super) const MAX_REQUEST_BYTES: f64 = 3.0 * 1024.0 * 1024.0;

/// Smallest JSON serialization of a value of this schema (cost estimation).
pub(super) fn min_size(s: &Value) -> f64 {
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
pub(super) fn max_elements(s: &Value) -> f64 {
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
pub(super) fn cost_error_message(name: &str, cost: f64) -> String {
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
pub(super) fn static_rule_cost(rule: &str, s: &Value) -> f64 {
    use kube_cel::cel::common::ast::Expr;
    pub(super) fn resolve<'a>(
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
    pub(super) fn cost<'a>(
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
