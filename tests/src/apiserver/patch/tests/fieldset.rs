//! FieldsV1 and field sets.

use super::*;

// ---------------- FieldsV1 / field sets ----------------

#[test]
fn fields_v1_round_trip_and_path_strings() {
    let v = json!({
        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
        "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}},
        "f:finalizers": {"v:\"x\"": {}}
    });
    let set = FieldSet::from_fields_v1(&v, 0).expect("decode");
    assert_eq!(set.to_fields_v1(), v);
    let paths: Vec<String> = set.members().iter().map(|p| path_string(p)).collect();
    assert_eq!(
        paths,
        [
            ".finalizers[=\"x\"]",
            ".metadata.labels",
            ".metadata.labels.app",
            ".spec.containers[name=\"c\"]",
            ".spec.containers[name=\"c\"].image",
            ".spec.containers[name=\"c\"].name",
        ]
    );
    assert!(FieldSet::from_fields_v1(&json!({"x:bad": {}}), 0).is_err());
    assert!(FieldSet::from_fields_v1(&json!([]), 0).is_err());
}
