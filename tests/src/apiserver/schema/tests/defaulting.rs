//! Defaulting.

use super::*;

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
