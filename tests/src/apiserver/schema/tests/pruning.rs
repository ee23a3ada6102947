//! Pruning.

use super::*;

// ── pruning ──

#[test]
fn prune_table() {
    let s = schema(json!({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {
                "known": {"type": "string"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {
                    "typed": {"type": "object", "properties": {"t": {"type": "string"}}}}},
                "emb": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {
                    "spec": {"type": "object", "properties": {"s": {"type": "string"}}}}},
                "ios": {"x-kubernetes-int-or-string": true},
                "list": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
                "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "integer"}}}}
            }}
        }
    }));
    let mut obj = json!({
        "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
        "extra": 1,
        "spec": {
            "known": "k", "unknown": "u",
            "free": {"anything": {"goes": [1, 2]}, "typed": {"t": "t", "dropped": 1}},
            "emb": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                    "spec": {"s": "s", "zz": 1}, "other": 2},
            "ios": 5,
            "list": [{"n": "a", "x": 1}, {"y": 2}],
            "map": {"a": {"v": 1, "w": 2}}
        }
    });
    let unknown = s.prune_unknown_fields(&mut obj);
    assert_eq!(
        obj,
        json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
            "spec": {
                "known": "k",
                "free": {"anything": {"goes": [1, 2]}, "typed": {"t": "t"}},
                "emb": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"s": "s"}},
                "ios": 5,
                "list": [{"n": "a"}, {}],
                "map": {"a": {"v": 1}}
            }
        })
    );
    assert_eq!(
        unknown,
        vec![
            "extra",
            "spec.emb.other",
            "spec.emb.spec.zz",
            "spec.free.typed.dropped",
            "spec.list[0].x",
            "spec.list[1].y",
            "spec.map.a.w",
            "spec.unknown"
        ]
    );
    // nulls of non-nullable fields without a default are dropped too
    let mut nulls =
        json!({"spec": {"known": null, "free": {"typed": null, "x": null}, "ios": null}});
    assert!(s.prune_unknown_fields(&mut nulls).is_empty());
    assert_eq!(nulls, json!({"spec": {"free": {"x": null}}}));
    // preserve-unknown at the root keeps everything
    let s2 = schema(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let mut o2 = json!({"a": {"b": 1}, "spec": [1]});
    s2.prune(&mut o2);
    assert_eq!(o2, json!({"a": {"b": 1}, "spec": [1]}));
    assert!(s2.preserves_unknown_fields_at_root());
    assert!(!s.preserves_unknown_fields_at_root());
}
