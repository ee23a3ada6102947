//! Validation of a CustomResourceDefinition itself (names, versions, structural schema, defaults, rules).

use super::*;

// ───────────────────────────── CRD validation ─────────────────────────────

pub(super) const OPENAPI_V3_TYPES: &[&str] =
    &["array", "boolean", "integer", "number", "object", "string"];

pub(super) struct CrdCheck {
    pub(super) errs: Vec<Cause>,
    /// Schema path of the highest list above the current node whose items cannot be
    /// correlated between old and new objects (not `x-kubernetes-list-type: map`).
    pub(super) forbid_old_self: Option<String>,
}

impl CrdCheck {
    pub(super) fn push(&mut self, reason: &str, field: &str, bad: Bad, detail: &str) {
        self.errs.push(cause(reason, field, bad, detail));
    }

    /// Structural-schema and CRD-schema rules for one node (`root` = openAPIV3Schema).
    pub(super) fn schema_node(
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
    pub(super) fn status_root_rules(&mut self, s: &Value, path: &str) {
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
    pub(super) fn nested_value_validation(&mut self, s: &Value, path: &str, depth: usize) {
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

    pub(super) fn list_type_rules(&mut self, s: &Value, path: &str) {
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
    pub(super) fn rules(&mut self, s: &Value, path: &str, subtree_ok: bool, card: Option<f64>) {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeKind {
    Root,
    Property,
    Items,
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

pub(super) fn validate_crd_inner(crd: &Value) -> Vec<Cause> {
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

pub(super) fn simple_json_path_error(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if !s.starts_with('.') {
        Some("must be a simple json path starting with .")
    } else {
        None
    }
}
