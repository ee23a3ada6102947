//! Odd inputs never panic.

use super::*;

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
        Some("Invalid value: m")
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
