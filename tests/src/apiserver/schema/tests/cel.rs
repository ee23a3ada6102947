//! The WorkPool fixture, CEL rules and ratcheting.

use super::*;

// ── WorkPool fixture and CEL ──

#[test]
fn workpool_valid_object_has_no_causes() {
    let s = workpool();
    let mut obj = good_pool();
    obj["spec"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 5, "behavior": {"scaleUp": {"selectPolicy": "Min"}}});
    obj["spec"]["env"] = json!([{"name": "A", "value": "1"}, {"name": "B"}]);
    obj["spec"]["tags"] = json!(["x", "y"]);
    obj["spec"]["template"] = json!({"spec": {"containers": [{"name": "w", "image": "busybox"}]}});
    s.apply_defaults(&mut obj);
    s.prune(&mut obj);
    assert_eq!(s.validate(&obj, None), vec![]);
}

#[test]
fn workpool_cel_and_schema_table() {
    let s = workpool();
    let blocked = c(
        R_INVALID,
        "<nil>",
        "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
    );
    let cases: Vec<(&str, Value, Vec<Cause>)> = vec![
        (
            "min greater than max",
            with(
                good_pool(),
                "/spec/autoscaling",
                json!({"minReplicas": 5, "maxReplicas": 2}),
            ),
            vec![c(
                R_INVALID,
                "spec.autoscaling.minReplicas",
                "Invalid value: autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
            )],
        ),
        (
            "min equals max",
            with(
                good_pool(),
                "/spec/autoscaling",
                json!({"minReplicas": 2, "maxReplicas": 2}),
            ),
            vec![],
        ),
        (
            "both backends",
            with(
                good_pool(),
                "/spec/queue/redis/urlSecretRef",
                json!({"name": "s", "key": "k"}),
            ),
            vec![c(
                R_INVALID,
                "spec.queue.redis",
                "Invalid value: exactly one of url or urlSecretRef must be set",
            )],
        ),
        (
            "no backend",
            with(good_pool(), "/spec/queue/redis", json!({"stream": "s"})),
            vec![c(
                R_INVALID,
                "spec.queue.redis",
                "Invalid value: exactly one of url or urlSecretRef must be set",
            )],
        ),
        (
            "secret ref only",
            with(
                good_pool(),
                "/spec/queue/redis",
                json!({"urlSecretRef": {"name": "s", "key": "k"}}),
            ),
            vec![],
        ),
        (
            "negative replicas",
            with(good_pool(), "/spec/replicas", json!(-1)),
            vec![
                c(
                    R_INVALID,
                    "spec.replicas",
                    "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                ),
                c(
                    R_INVALID,
                    ".spec.replicas",
                    "Invalid value: -1: should be a non-negative integer",
                ),
            ],
        ),
        (
            "bad select policy blocks CEL",
            with(
                with(
                    good_pool(),
                    "/spec/autoscaling",
                    json!({"minReplicas": 5, "maxReplicas": 2}),
                ),
                "/spec/autoscaling/behavior",
                json!({"scaleUp": {"selectPolicy": "Sometimes"}}),
            ),
            vec![
                c(
                    R_NOT_SUPPORTED,
                    "spec.autoscaling.behavior.scaleUp.selectPolicy",
                    "Unsupported value: \"Sometimes\": supported values: \"Max\", \"Min\", \"Disabled\"",
                ),
                blocked.clone(),
            ],
        ),
        (
            "missing queue",
            json!({"apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool", "metadata": {"name": "a"}, "spec": {"replicas": 1}}),
            vec![
                c(R_REQUIRED, "spec.queue", "Required value"),
                blocked.clone(),
            ],
        ),
        (
            "bad url pattern",
            with(good_pool(), "/spec/queue/redis/url", json!("http://x")),
            vec![c(
                R_INVALID,
                "spec.queue.redis.url",
                "Invalid value: \"http://x\": spec.queue.redis.url in body should match '^rediss?://'",
            )],
        ),
        (
            "duplicate env names",
            with(
                good_pool(),
                "/spec/env",
                json!([{"name": "A"}, {"name": "B"}, {"name": "A", "value": "2"}]),
            ),
            vec![c(
                R_DUPLICATE,
                "spec.env[2]",
                "Duplicate value: map[string]interface {}{\"name\":\"A\"}",
            )],
        ),
        (
            "duplicate tags",
            with(good_pool(), "/spec/tags", json!(["a", "b", "a", "a"])),
            vec![c(R_DUPLICATE, "spec.tags[2]", "Duplicate value: \"a\"")],
        ),
        (
            "label too long",
            with(good_pool(), "/spec/labels", json!({"k": "x".repeat(64)})),
            vec![
                c(
                    R_TOO_LONG,
                    "spec.labels.k",
                    "Too long: may not be more than 63 bytes",
                ),
                blocked.clone(),
            ],
        ),
        (
            "scale replicas float",
            with(good_pool(), "/status", json!({"replicas": 1.5})),
            vec![
                c(
                    R_TYPE_INVALID,
                    "status.replicas",
                    "Invalid value: \"number\": status.replicas in body must be of type integer: \"number\"",
                ),
                c(
                    R_INVALID,
                    ".status.replicas",
                    "Invalid value: 0: .status.replicas accessor error: 1.5 is of the type float64, expected int64",
                ),
                blocked.clone(),
            ],
        ),
    ];
    for (name, obj, want) in cases {
        assert_eq!(s.validate(&obj, None), want, "{name}");
    }
}

#[test]
fn int_or_string_any_of_reports_like_kube_openapi() {
    let s = workpool();
    let obj = with(
        good_pool(),
        "/spec/resources",
        json!({"cpu": "500m", "mem": 3, "bad": true}),
    );
    assert_eq!(
        s.validate(&obj, None),
        vec![
            c(
                R_TYPE_INVALID,
                "spec.resources.bad",
                "Invalid value: \"boolean\": spec.resources.bad in body must be of type integer,string: \"boolean\""
            ),
            c(
                R_INVALID,
                "<nil>",
                "Invalid value: \"\": \"spec.resources.bad\" must validate at least one schema (anyOf)"
            ),
            c(
                R_TYPE_INVALID,
                "spec.resources.bad",
                "Invalid value: \"boolean\": spec.resources.bad in body must be of type integer: \"boolean\""
            ),
            c(
                R_INVALID,
                "<nil>",
                "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
            ),
        ]
    );
}

#[test]
fn schema_errors_ratchet_on_update() {
    let s = kw_schema();
    let bad = obj_with(json!({"replicas": -1, "x": "a"}));
    assert_eq!(s.validate(&bad, None).len(), 1);
    // unchanged invalid field: tolerated on update
    let edited = obj_with(json!({"replicas": -1, "x": "b"}));
    assert_eq!(s.validate(&edited, Some(&bad)), vec![]);
    // changed and still invalid: reported
    let worse = obj_with(json!({"replicas": -2, "x": "a"}));
    assert_eq!(
        s.validate(&worse, Some(&bad)),
        vec![c(
            R_INVALID,
            "spec.replicas",
            "Invalid value: -2: spec.replicas in body should be greater than or equal to 0"
        )]
    );
    // a missing required field is tolerated while its object is unchanged
    let no_queue = json!({"metadata": {"name": "ok"}, "spec": {"replicas": 1}});
    assert_eq!(s.validate(&no_queue, Some(&no_queue)), vec![]);
    let no_queue_edit = json!({"metadata": {"name": "ok"}, "spec": {"replicas": 2}});
    assert_eq!(
        s.validate(&no_queue_edit, Some(&no_queue))[0],
        c(R_REQUIRED, "spec.queue", "Required value")
    );
}

#[test]
fn cel_rules_table() {
    type Case = (&'static str, Value, Value, Option<Value>, Vec<Cause>);
    let cases: Vec<Case> = vec![
        (
            "min <= max fails",
            json!([{"rule": "self.minReplicas <= self.maxReplicas", "message": "min must be <= max"}]),
            json!({"minReplicas": 3, "maxReplicas": 1}),
            None,
            vec![c(R_INVALID, "spec", "Invalid value: min must be <= max")],
        ),
        (
            "min <= max passes",
            json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
            json!({"minReplicas": 1, "maxReplicas": 1}),
            None,
            vec![],
        ),
        (
            "default message",
            json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
            json!({"minReplicas": 3, "maxReplicas": 1}),
            None,
            vec![c(
                R_INVALID,
                "spec",
                "Invalid value: failed rule: self.minReplicas <= self.maxReplicas",
            )],
        ),
        (
            "exactly one of x,y: both",
            json!([{"rule": "has(self.x) != has(self.y)", "message": "exactly one of x or y"}]),
            json!({"x": "a", "y": "b"}),
            None,
            vec![c(R_INVALID, "spec", "Invalid value: exactly one of x or y")],
        ),
        (
            "exactly one of x,y: one",
            json!([{"rule": "has(self.x) != has(self.y)"}]),
            json!({"y": "b"}),
            None,
            vec![],
        ),
        (
            "messageExpression",
            json!([{"rule": "self.minReplicas <= self.maxReplicas", "messageExpression": "'min ' + string(self.minReplicas) + ' > max ' + string(self.maxReplicas)"}]),
            json!({"minReplicas": 3, "maxReplicas": 1}),
            None,
            vec![c(R_INVALID, "spec", "Invalid value: min 3 > max 1")],
        ),
        (
            "messageExpression error falls back to message",
            json!([{"rule": "false", "message": "static", "messageExpression": "self.nope"}]),
            json!({}),
            None,
            vec![c(R_INVALID, "spec", "Invalid value: static")],
        ),
        (
            "reason Forbidden and fieldPath",
            json!([{"rule": "self.mode != 'bad'", "message": "bad mode", "reason": "FieldValueForbidden", "fieldPath": ".mode"}]),
            json!({"mode": "bad"}),
            None,
            vec![c(R_FORBIDDEN, "spec.mode", "Forbidden: bad mode")],
        ),
        (
            "reason Required",
            json!([{"rule": "has(self.mode)", "message": "mode is needed", "reason": "FieldValueRequired"}]),
            json!({}),
            None,
            vec![c(R_REQUIRED, "spec", "Required value: mode is needed")],
        ),
        (
            "reason Duplicate",
            json!([{"rule": "false", "reason": "FieldValueDuplicate"}]),
            json!({}),
            None,
            vec![c(R_DUPLICATE, "spec", "Duplicate value: \"object\"")],
        ),
        (
            "list macro",
            json!([{"rule": "self.items.all(i, i > 0)", "message": "positive"}]),
            json!({"items": [1, 2, -3]}),
            None,
            vec![c(R_INVALID, "spec", "Invalid value: positive")],
        ),
        (
            "transition rule skipped on create",
            json!([{"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}]),
            json!({"mode": "b"}),
            None,
            vec![],
        ),
        (
            "transition rule on update",
            json!([{"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}]),
            json!({"mode": "b"}),
            Some(json!({"mode": "a"})),
            vec![c(R_INVALID, "spec", "Invalid value: mode is immutable")],
        ),
        (
            "transition rule on update passes",
            json!([{"rule": "self.mode == oldSelf.mode"}]),
            json!({"mode": "a"}),
            Some(json!({"mode": "a"})),
            vec![],
        ),
        (
            "ratcheting: unchanged invalid value is tolerated on update",
            json!([{"rule": "self.minReplicas <= self.maxReplicas"}]),
            json!({"minReplicas": 3, "maxReplicas": 1}),
            Some(json!({"minReplicas": 3, "maxReplicas": 1})),
            vec![],
        ),
        (
            "optionalOldSelf on create",
            json!([{"rule": "!oldSelf.hasValue() || self.mode == oldSelf.value().mode", "optionalOldSelf": true, "message": "immutable"}]),
            json!({"mode": "b"}),
            None,
            vec![],
        ),
        (
            "optionalOldSelf on update",
            json!([{"rule": "!oldSelf.hasValue() || self.mode == oldSelf.value().mode", "optionalOldSelf": true, "message": "immutable"}]),
            json!({"mode": "b"}),
            Some(json!({"mode": "a"})),
            vec![c(R_INVALID, "spec", "Invalid value: immutable")],
        ),
        (
            "optionalOldSelf evaluated on create",
            json!([{"rule": "oldSelf.hasValue()", "optionalOldSelf": true}]),
            json!({}),
            None,
            vec![c(
                R_INVALID,
                "spec",
                "Invalid value: failed rule: oldSelf.hasValue()",
            )],
        ),
        (
            "runtime error",
            json!([{"rule": "self.x == 'a'"}]),
            json!({}),
            None,
            vec![c(
                R_INVALID,
                "spec",
                "Invalid value: \"object\": no such key: x evaluating rule: self.x == 'a'",
            )],
        ),
    ];
    for (name, rules, value, old, want) in cases {
        let s = cel_schema(rules);
        let old_obj = old.map(spec);
        let got = s.validate(&spec(value), old_obj.as_ref());
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn cel_rule_on_scalar_and_map_items() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "replicas": {"type": "integer", "x-kubernetes-validations": [{"rule": "self % 2 == 0", "message": "must be even"}]},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {
                "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "port": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable"}]}},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 4"}]}}
        }}}
    }));
    let obj = spec(json!({"replicas": 3, "labels": {"a": "toolong"}}));
    assert_eq!(
        s.validate(&obj, None),
        vec![
            c(
                R_INVALID,
                "spec.labels[a]",
                "Invalid value: failed rule: self.size() < 4"
            ),
            c(R_INVALID, "spec.replicas", "Invalid value: must be even"),
        ]
    );
    // transition rules on list-type map items correlate by key, not by index
    let old = spec(json!({"ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}));
    let new = spec(
        json!({"ports": [{"name": "b", "port": 2}, {"name": "a", "port": 1}, {"name": "c", "port": 9}]}),
    );
    assert_eq!(s.validate(&new, Some(&old)), vec![]);
    let changed = spec(json!({"ports": [{"name": "b", "port": 3}]}));
    assert_eq!(
        s.validate(&changed, Some(&old)),
        vec![c(
            R_INVALID,
            "spec.ports[0]",
            "Invalid value: port is immutable"
        )]
    );
}

#[test]
fn pathological_cel_is_bounded() {
    // nested comprehensions over a large list: refused by the cost guard, quickly
    let s = cel_schema(
        json!([{"rule": "self.items.all(a, self.items.all(b, self.items.all(c, a + b + c > -1)))"}]),
    );
    let big: Vec<i64> = (0..500).collect();
    let got = s.validate(&spec(json!({"items": big})), None);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].message.contains("call cost exceeds limit"),
        "{:?}",
        got
    );
    // small lists are fine
    assert_eq!(s.validate(&spec(json!({"items": [1, 2, 3]})), None), vec![]);
    // nested loops over literal lists are bounded too
    let digits = "[0,1,2,3,4,5,6,7,8,9]";
    let mut rule = "true".to_string();
    for v in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        rule = format!("{digits}.all({v}, {rule})");
    }
    let got = cel_schema(json!([{"rule": rule.clone()}])).validate(&spec(json!({})), None);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].message.contains("call cost exceeds limit"),
        "{got:?}"
    );
    let got = validate_crd(&crd_with_spec_rules(json!([{"rule": rule}])));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason, R_FORBIDDEN);
    // deeply nested expressions are compile errors, not stack overflows
    let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
    let s2 = cel_schema(json!([{"rule": deep}]));
    let got = s2.validate(&spec(json!({})), None);
    assert_eq!(got.len(), 1);
    assert!(got[0].message.contains("rule compile error"), "{got:?}");
    let long_chain = format!("1{} > 0", " + 1".repeat(20000));
    let s3 = cel_schema(json!([{"rule": long_chain}]));
    assert_eq!(s3.validate(&spec(json!({})), None).len(), 1);
    let deep_list = format!("{}1{} != 0", "[".repeat(300), "]".repeat(300));
    let crd = crd_with_spec_rules(json!([{"rule": deep_list}]));
    assert_eq!(validate_crd(&crd).len(), 1);
}
