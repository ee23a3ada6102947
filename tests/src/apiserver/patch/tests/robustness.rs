//! Odd inputs never panic.

use super::*;

// ---------------- robustness ----------------

fn odd_values() -> Vec<Value> {
    let mut deep = json!(1);
    for _ in 0..400 {
        deep = json!({"a": [deep]});
    }
    vec![
        Value::Null,
        json!(true),
        json!(1.5),
        json!("s"),
        json!([]),
        json!({}),
        json!([null, 1, "x", {}, []]),
        json!({"$patch": "replace"}),
        json!({"$patch": 5}),
        json!({"$retainKeys": [1, 2]}),
        json!({"$setElementOrder/x": [{"a": 1}], "x": 5}),
        json!({"$deleteFromPrimitiveList/x": 3, "x": [1]}),
        json!({"metadata": {"managedFields": [{"fieldsV1": "bad", "operation": 3}]}}),
        json!({"metadata": {"managedFields": "bad"}}),
        json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Apply", "fieldsV1": {"f:a": {"k:{bad": {}}}}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": 1}, {"noname": true}, "str", [1]],
                            "volumes": {"not": "a list"}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": [{"a": 1}, [2]]},
                   "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 80}]}]}}),
        json!([{"op": "add", "path": "/a/-/b", "value": 1}]),
        json!([{"op": "move", "from": "/a", "path": "/a/b"}]),
        deep,
    ]
}

#[test]
fn odd_inputs_never_panic() {
    let vals = odd_values();
    let lists = pod_lists();
    let lists2 = Lists(vec![
        ("a", ListType::Set),
        ("spec.containers", ListType::Map(vec![])),
    ]);
    for a in &vals {
        for b in &vals {
            let _ = merge_patch(a, b);
            let _ = json_patch(a, b);
            let _ = strategic_merge_patch(a, b, &lists);
            let _ = strategic_merge_patch(a, b, &lists2);
            for force in [false, true] {
                for sub in [None, Some("status")] {
                    let mut c = ctx("m", &lists);
                    c.force = force;
                    c.subresource = sub;
                    if let Ok(out) = apply(Some(a), b, &c) {
                        let _ = apply(Some(&out), b, &ctx("other", &lists2));
                    }
                    let _ = apply(None, b, &c);
                }
            }
            let mut n = b.clone();
            record_update(Some(a), &mut n, "m", None, "t");
            let mut n = b.clone();
            record_update(None, &mut n, "m", Some("status"), "t");
            let mut n = b.clone();
            record_update_with(Some(a), &mut n, "m", None, "t", &lists2);
        }
    }
}
