//! RFC 6902.

use super::*;

// ---------------- RFC 6902 ----------------

#[test]
fn json_patch_rfc6902_appendix_a() {
    let ok = [
        // A.1 .. A.8, A.10, A.11, A.14, A.16
        (
            json!({"foo":"bar"}),
            json!([{"op":"add","path":"/baz","value":"qux"}]),
            json!({"baz":"qux","foo":"bar"}),
        ),
        (
            json!({"foo":["bar","baz"]}),
            json!([{"op":"add","path":"/foo/1","value":"qux"}]),
            json!({"foo":["bar","qux","baz"]}),
        ),
        (
            json!({"baz":"qux","foo":"bar"}),
            json!([{"op":"remove","path":"/baz"}]),
            json!({"foo":"bar"}),
        ),
        (
            json!({"foo":["bar","qux","baz"]}),
            json!([{"op":"remove","path":"/foo/1"}]),
            json!({"foo":["bar","baz"]}),
        ),
        (
            json!({"baz":"qux","foo":"bar"}),
            json!([{"op":"replace","path":"/baz","value":"boo"}]),
            json!({"baz":"boo","foo":"bar"}),
        ),
        (
            json!({"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}),
            json!([{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]),
            json!({"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}}),
        ),
        (
            json!({"foo":["all","grass","cows","eat"]}),
            json!([{"op":"move","from":"/foo/1","path":"/foo/3"}]),
            json!({"foo":["all","cows","eat","grass"]}),
        ),
        (
            json!({"baz":"qux","foo":["a",2,"c"]}),
            json!([{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}]),
            json!({"baz":"qux","foo":["a",2,"c"]}),
        ),
        (
            json!({"foo":"bar"}),
            json!([{"op":"add","path":"/child","value":{"grandchild":{}}}]),
            json!({"foo":"bar","child":{"grandchild":{}}}),
        ),
        (
            json!({"foo":"bar"}),
            json!([{"op":"add","path":"/baz","value":"qux","xyz":123}]),
            json!({"foo":"bar","baz":"qux"}),
        ),
        (
            json!({"/":9,"~1":10}),
            json!([{"op":"test","path":"/~01","value":10}]),
            json!({"/":9,"~1":10}),
        ),
        (
            json!({"foo":["bar"]}),
            json!([{"op":"add","path":"/foo/-","value":["abc","def"]}]),
            json!({"foo":["bar",["abc","def"]]}),
        ),
        (
            json!({"a":{"b":1}}),
            json!([{"op":"copy","from":"/a","path":"/c"}]),
            json!({"a":{"b":1},"c":{"b":1}}),
        ),
    ];
    for (i, (target, patch, want)) in ok.into_iter().enumerate() {
        assert_eq!(
            json_patch(&target, &patch).expect("patch applies"),
            want,
            "case {i}"
        );
    }
    let invalid = [
        // A.9 test failure, A.12 add to a nonexistent target, A.15 string vs number
        (
            json!({"baz":"qux"}),
            json!([{"op":"test","path":"/baz","value":"bar"}]),
        ),
        (
            json!({"foo":"bar"}),
            json!([{"op":"add","path":"/baz/bat","value":"qux"}]),
        ),
        (
            json!({"/":9,"~1":10}),
            json!([{"op":"test","path":"/~01","value":"10"}]),
        ),
        (json!({"a":1}), json!([{"op":"remove","path":"/b"}])),
        (
            json!({"a":1}),
            json!([{"op":"replace","path":"/b","value":2}]),
        ),
        (
            json!({"a":1}),
            json!([{"op":"move","from":"/x","path":"/b"}]),
        ),
        (
            json!({"a":[1]}),
            json!([{"op":"add","path":"/a/5","value":2}]),
        ),
    ];
    for (i, (target, patch)) in invalid.into_iter().enumerate() {
        assert!(
            matches!(json_patch(&target, &patch), Err(PatchError::Invalid(_))),
            "case {i} must be Invalid"
        );
    }
}

#[test]
fn json_patch_errors_read_like_the_apiserver() {
    let err = json_patch(
        &json!({"a":1}),
        &json!([{"op":"test","path":"/a","value":2}]),
    )
    .expect_err("test fails");
    assert_eq!(err.to_string(), "testing value /a failed: test failed");
    let err = json_patch(
        &json!({"a":1}),
        &json!([{"op":"replace","path":"/b","value":2}]),
    )
    .expect_err("missing");
    assert_eq!(
        err.to_string(),
        "replace operation does not apply: doc is missing key: /b: missing value"
    );
}

#[test]
fn json_patch_malformed_is_bad_request() {
    for p in [
        json!({"op":"add"}),
        json!([{"op":"frobnicate","path":"/a"}]),
        json!([{"op":"add","value":1}]),
        json!([{"path":"/a"}]),
        json!([1]),
        json!("x"),
        json!([{"op":"add","path":"a","value":1}]),
    ] {
        assert!(
            matches!(json_patch(&json!({}), &p), Err(PatchError::BadRequest(_))),
            "{p} must be BadRequest"
        );
    }
}

#[test]
fn test_of_null_passes_on_a_missing_key_as_evanphx_json_patch() {
    // kube-runtime's finalizer() helper on an object without finalizers.
    let obj = json!({"metadata": {"name": "a"}});
    let out = json_patch(
        &obj,
        &json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}
        ]),
    )
    .expect("test of null on a missing key passes");
    assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
    // Present keys still have to match, and a missing parent is still an error.
    let err = json_patch(
        &out,
        &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]),
    )
    .expect_err("present value is not null");
    assert_eq!(
        err.to_string(),
        "testing value /metadata/finalizers failed: test failed"
    );
    assert!(
        json_patch(
            &obj,
            &json!([{"op": "test", "path": "/spec/x", "value": null}])
        )
        .is_err()
    );
}
