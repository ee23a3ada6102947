//! CRD structural schemas: defaulting, pruning, validation (OpenAPI v3 subset and CEL
//! `x-kubernetes-validations` through `kube-cel`).
//!
//! Reference behaviour: kube-apiserver 1.37 (k8s.io/apiextensions-apiserver v0.37,
//! k8s.io/kube-openapi validate, k8s.io/apimachinery field.ErrorList). Messages are
//! rebuilt with the same templates (`Invalid value: -1: spec.replicas in body should be
//! greater than or equal to 0`, `Required value`, `Unsupported value: "z": supported
//! values: "a", "b"`, CEL `Invalid value: <message>`, ...).
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

mod cel;
mod cel_check;
mod crd;
mod defaulting;
mod formats;
mod lists;
mod metadata;
mod pruning;
mod render;
#[cfg(test)]
mod tests;
mod validation;

use cel::*;
use cel_check::*;
pub use crd::validate_crd;
use defaulting::*;
use formats::*;
use lists::*;
pub use metadata::dns1123_subdomain_errors;
use metadata::*;
use pruning::*;
use render::*;
use validation::*;

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
