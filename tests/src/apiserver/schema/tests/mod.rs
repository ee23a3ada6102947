//! Unit tests, one file per concern; shared fixtures and helpers here.

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

fn crd_with_spec_rules(rules: Value) -> Value {
    let mut crd = workpool_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        rules;
    crd
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

mod cel;
mod crd;
mod defaulting;
mod lists;
mod pruning;
mod render;
mod robustness;
mod validation;
