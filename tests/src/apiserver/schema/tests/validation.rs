//! OpenAPI keyword validation and metadata.

use super::*;

// ── OpenAPI validation ──

#[test]
fn openapi_keywords_table() {
    let s = kw_schema();
    let cases: Vec<(Value, Vec<Cause>)> = vec![
        (json!({}), vec![]),
        (
            json!({"replicas": -1}),
            vec![c(
                R_INVALID,
                "spec.replicas",
                "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
            )],
        ),
        (
            json!({"replicas": 11}),
            vec![c(
                R_INVALID,
                "spec.replicas",
                "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            )],
        ),
        (json!({"replicas": 3.0}), vec![]),
        (
            json!({"replicas": 2.5}),
            vec![c(
                R_TYPE_INVALID,
                "spec.replicas",
                "Invalid value: \"number\": spec.replicas in body must be of type integer: \"number\"",
            )],
        ),
        (
            json!({"replicas": "string"}),
            vec![c(
                R_TYPE_INVALID,
                "spec.replicas",
                "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
            )],
        ),
        (
            json!({"exMin": 0}),
            vec![c(
                R_INVALID,
                "spec.exMin",
                "Invalid value: 0: spec.exMin in body should be greater than 0",
            )],
        ),
        (
            json!({"exMax": 1.5}),
            vec![c(
                R_INVALID,
                "spec.exMax",
                "Invalid value: 1.5: spec.exMax in body should be less than 1.5",
            )],
        ),
        (
            json!({"ratio": 0.25}),
            vec![c(
                R_INVALID,
                "spec.ratio",
                "Invalid value: 0.25: spec.ratio in body should be greater than or equal to 0.5",
            )],
        ),
        (json!({"ratio": 1}), vec![]),
        (
            json!({"mult": 4}),
            vec![c(
                R_INVALID,
                "spec.mult",
                "Invalid value: 4: spec.mult in body should be a multiple of 3",
            )],
        ),
        (
            json!({"x": "z"}),
            vec![c(
                R_NOT_SUPPORTED,
                "spec.x",
                "Unsupported value: \"z\": supported values: \"a\", \"b\"",
            )],
        ),
        (
            json!({"n": 3}),
            vec![c(
                R_NOT_SUPPORTED,
                "spec.n",
                "Unsupported value: 3: supported values: \"1\", \"2\"",
            )],
        ),
        (json!({"n": 2.0}), vec![]),
        (
            json!({"short": "a"}),
            vec![c(
                R_INVALID,
                "spec.short",
                "Invalid value: \"a\": spec.short in body should be at least 2 chars long",
            )],
        ),
        (
            json!({"long": "abcd"}),
            vec![c(
                R_TOO_LONG,
                "spec.long",
                "Too long: may not be more than 3 bytes",
            )],
        ),
        (json!({"long": "äöü"}), vec![]),
        (
            json!({"pat": "A1"}),
            vec![c(
                R_INVALID,
                "spec.pat",
                "Invalid value: \"A1\": spec.pat in body should match '^[a-z]+$'",
            )],
        ),
        (
            json!({"few": []}),
            vec![c(
                R_INVALID,
                "spec.few",
                "Invalid value: 0: spec.few in body should have at least 1 items",
            )],
        ),
        (
            json!({"many": ["a", "b", "c"]}),
            vec![c(
                R_TOO_MANY,
                "spec.many",
                "Too many: 3: must have at most 2 items",
            )],
        ),
        (
            json!({"uniq": [1, 2, 1]}),
            vec![c(
                R_INVALID,
                "spec.uniq",
                "Invalid value: \"\": spec.uniq in body shouldn't contain duplicates",
            )],
        ),
        (
            json!({"minp": {}}),
            vec![c(
                R_INVALID,
                "spec.minp",
                "Invalid value: 0: spec.minp in body should have at least 1 properties",
            )],
        ),
        (
            json!({"maxp": {"a": "1", "b": "2"}}),
            vec![c(
                R_TOO_MANY,
                "spec.maxp",
                "Too many: 2: must have at most 1 items",
            )],
        ),
        (json!({"when": "2024-01-02T03:04:05Z"}), vec![]),
        (
            json!({"when": "yesterday"}),
            vec![c(
                R_TYPE_INVALID,
                "spec.when",
                "Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
            )],
        ),
        (
            json!({"uid": "not-a-uuid"}),
            vec![c(
                R_TYPE_INVALID,
                "spec.uid",
                "Invalid value: \"not-a-uuid\": spec.uid in body must be of type uuid: \"not-a-uuid\"",
            )],
        ),
        (
            json!({"uid": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
            vec![],
        ),
        // int32 is stripped from CRD schemas by the apiserver: no range check
        (json!({"i32": 1_099_511_627_776_i64}), vec![]),
        (
            json!({"flag": "true"}),
            vec![c(
                R_TYPE_INVALID,
                "spec.flag",
                "Invalid value: \"string\": spec.flag in body must be of type boolean: \"string\"",
            )],
        ),
        (
            json!({"obj": [1]}),
            vec![c(
                R_TYPE_INVALID,
                "spec.obj",
                "Invalid value: \"array\": spec.obj in body must be of type object: \"array\"",
            )],
        ),
        (
            json!({"list": [{"name": "a"}, {}]}),
            vec![c(R_REQUIRED, "spec.list[1].name", "Required value")],
        ),
        (json!({"ios": 5}), vec![]),
        (json!({"ios": "5%"}), vec![]),
        (
            json!({"ios": true}),
            vec![c(
                R_TYPE_INVALID,
                "spec.ios",
                "Invalid value: \"boolean\": spec.ios in body must be of type integer,string: \"boolean\"",
            )],
        ),
        (json!({"nul": null}), vec![]),
        (
            json!({"flag": null}),
            vec![c(
                R_TYPE_INVALID,
                "spec.flag",
                "Invalid value: \"null\": spec.flag in body must be of type boolean: \"null\"",
            )],
        ),
        (
            json!({"strmap": {"a": 1, "b": "x"}}),
            vec![c(
                R_TYPE_INVALID,
                "spec.strmap.b",
                "Invalid value: \"string\": spec.strmap.b in body must be of type integer: \"string\"",
            )],
        ),
    ];
    for (i, (extra, mut want)) in cases.into_iter().enumerate() {
        let obj = obj_with(extra.clone());
        let got = s.validate(&obj, None);
        if want.iter().any(|c| {
            matches!(
                c.reason.as_str(),
                R_NOT_SUPPORTED | R_REQUIRED | R_TOO_LONG | R_TOO_MANY | R_TYPE_INVALID
            )
        }) {
            want.push(c(
                    R_INVALID,
                    "<nil>",
                    "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                ));
        }
        assert_eq!(got, want, "case {i}: {extra}");
    }
}

#[test]
fn required_and_multiple_errors_in_stable_order() {
    let s = kw_schema();
    let obj = json!({"metadata": {"name": "ok"}, "spec": {"replicas": -1, "x": "z"}});
    let got = s.validate(&obj, None);
    let fields: Vec<&str> = got.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["spec.replicas", "spec.x", "spec.queue", "<nil>"]
    );
    assert_eq!(got[2], c(R_REQUIRED, "spec.queue", "Required value"));
    // deterministic
    assert_eq!(s.validate(&obj, None), got);
}

#[test]
fn metadata_name_must_be_dns_subdomain_on_create() {
    let s = workpool();
    let mut obj = good_pool();
    obj["metadata"]["name"] = json!("Bad_Name");
    let got = s.validate(&obj, None);
    assert_eq!(
        got,
        vec![c(
            R_INVALID,
            "metadata.name",
            "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )]
    );
    // on update the name is not re-validated (it is immutable)
    assert!(s.validate(&obj, Some(&obj)).is_empty());
    let mut noname = good_pool();
    noname["metadata"] = json!({"namespace": "default"});
    assert_eq!(
        s.validate(&noname, None),
        vec![
            c(
                R_REQUIRED,
                "metadata.name",
                "Required value: name or generateName is required"
            ),
            c(
                R_INVALID,
                "<nil>",
                "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
            ),
        ]
    );
    let mut generated = good_pool();
    generated["metadata"] = json!({"generateName": "pool-", "name": "pool-abcde"});
    assert!(s.validate(&generated, None).is_empty());
    generated["metadata"]["generateName"] = json!("Pool-");
    assert_eq!(s.validate(&generated, None).len(), 1);
}
