//! List semantics.

use super::*;

// ── list semantics ──

#[test]
fn list_type_by_path() {
    let s = workpool();
    let p = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.list_type(&p(&["spec", "env"])),
        ListType::Map(vec!["name".into()])
    );
    assert_eq!(s.list_type(&p(&["spec", "tags"])), ListType::Set);
    assert_eq!(
        s.list_type(&p(&[
            "spec",
            "autoscaling",
            "behavior",
            "scaleUp",
            "policies"
        ])),
        ListType::Atomic
    );
    assert_eq!(s.list_type(&p(&["spec", "nope"])), ListType::Atomic);
    assert_eq!(
        s.list_type(&p(&["spec", "template", "spec", "containers"])),
        ListType::Atomic
    );
    assert_eq!(s.list_type(&[]), ListType::Atomic);
    let nested = schema(
        json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {
            "b": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}}}),
    );
    assert_eq!(nested.list_type(&p(&["a", "b"])), ListType::Set);
}
