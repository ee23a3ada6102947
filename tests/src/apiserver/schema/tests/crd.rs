//! CRD validation.

use super::*;

// ── CRD validation ──

#[test]
fn workpool_crd_is_accepted() {
    assert_eq!(validate_crd(&workpool_crd()), vec![]);
}

#[test]
fn crd_validation_table() {
    let root = "spec.validation.openAPIV3Schema";
    type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "bad CEL rule",
        crd_with_spec_rules(json!([{"rule": "self.replicas >"}])),
        vec![(
            R_INVALID,
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
        )],
    ));
    cases.push((
        "undeclared variable",
        crd_with_spec_rules(json!([{"rule": "object.replicas > 0"}])),
        vec![(
            R_INVALID,
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
        )],
    ));
    cases.push((
        "undefined field",
        crd_with_spec_rules(json!([{"rule": "self.replicaz > 0"}])),
        vec![(
            R_INVALID,
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
        )],
    ));
    for (name, rule) in [
        ("rule not a bool", "self.replicas"),
        ("int compared to string", "self.replicas > 'a'"),
        (
            "nested undefined field",
            "!has(self.autoscaling) || self.autoscaling.minReplica > 0",
        ),
        (
            "undefined field in a macro",
            "!has(self.env) || self.env.all(e, e.nam != '')",
        ),
    ] {
        cases.push((
            name,
            crd_with_spec_rules(json!([{"rule": rule}])),
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            )],
        ));
    }
    cases.push((
            "messageExpression not a string",
            crd_with_spec_rules(json!([{"rule": "true", "messageExpression": "self.replicas"}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].messageExpression")],
        ));
    cases.push((
            "bad reason and empty rule",
            crd_with_spec_rules(json!([{"rule": " "}, {"rule": "true", "reason": "Nope"}])),
            vec![
                (R_REQUIRED, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"),
                (R_NOT_SUPPORTED, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[1].reason"),
            ],
        ));
    cases.push((
            "bad fieldPath",
            crd_with_spec_rules(json!([{"rule": "true", "fieldPath": ".nope"}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].fieldPath")],
        ));
    let mut uncorrelatable = workpool_crd();
    uncorrelatable["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["autoscaling"]["properties"]["behavior"]["properties"]["scaleUp"]["properties"]["policies"]
        ["items"]["x-kubernetes-validations"] = json!([{"rule": "self.value == oldSelf.value"}]);
    cases.push((
            "oldSelf under an atomic list",
            uncorrelatable,
            vec![(
                R_INVALID,
                "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].properties[behavior].properties[scaleUp].properties[policies].items.x-kubernetes-validations[0].rule",
            )],
        ));
    cases.push((
            "optionalOldSelf without oldSelf",
            crd_with_spec_rules(json!([{"rule": "true", "optionalOldSelf": true}])),
            vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].optionalOldSelf")],
        ));
    let mut no_type = workpool_crd();
    no_type["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["replicas"] = json!({"minimum": 0});
    cases.push((
        "missing type",
        no_type,
        vec![(
            R_REQUIRED,
            "spec.validation.openAPIV3Schema.properties[spec].properties[replicas].type",
        )],
    ));
    let mut both = workpool_crd();
    both["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["additionalProperties"] =
        json!({"type": "string"});
    cases.push((
        "properties and additionalProperties",
        both,
        vec![(
            R_FORBIDDEN,
            "spec.validation.openAPIV3Schema.properties[spec].additionalProperties",
        )],
    ));
    let mut bad_default = workpool_crd();
    bad_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["replicas"]["default"] = json!(-1);
    cases.push((
        "invalid default",
        bad_default,
        vec![(
            R_INVALID,
            "spec.validation.openAPIV3Schema.properties[spec].properties[replicas].default",
        )],
    ));
    let mut cel_default = workpool_crd();
    cel_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["autoscaling"]["default"] = json!({"minReplicas": 3, "maxReplicas": 1});
    cel_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["autoscaling"]["x-kubernetes-validations"] =
        json!([{"rule": "self.minReplicas <= self.maxReplicas"}]);
    cases.push((
        "default violating a CEL rule",
        cel_default,
        vec![(
            R_INVALID,
            "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].default",
        )],
    ));
    let mut root_enum = workpool_crd();
    root_enum["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-embedded-resource"] =
        json!(true);
    cases.push((
        "status subresource restricts the root",
        root_enum,
        vec![(R_INVALID, "spec.validation.openAPIV3Schema")],
    ));
    let mut name = workpool_crd();
    name["metadata"]["name"] = json!("pools.workpool.dev");
    cases.push(("name mismatch", name, vec![(R_INVALID, "metadata.name")]));
    let mut storage = workpool_crd();
    let mut v2 = storage["spec"]["versions"][0].clone();
    v2["name"] = json!("v1beta1");
    if let Some(a) = storage["spec"]["versions"].as_array_mut() {
        a.push(v2);
    }
    cases.push((
        "two storage versions",
        storage,
        vec![(R_INVALID, "spec.versions")],
    ));
    let mut scale = workpool_crd();
    scale["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] =
        json!(".status.replicas");
    cases.push((
        "scale path",
        scale,
        vec![(R_INVALID, "spec.subresources.scale.specReplicasPath")],
    ));
    let mut scope = workpool_crd();
    scope["spec"]["scope"] = json!("Galaxy");
    cases.push(("scope", scope, vec![(R_NOT_SUPPORTED, "spec.scope")]));
    let mut root_type = workpool_crd();
    root_type["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["type"] = json!("string");
    cases.push((
        "root type",
        root_type,
        vec![
            (R_INVALID, "spec.validation.openAPIV3Schema.type"),
            (R_INVALID, "spec.validation.openAPIV3Schema.type"),
        ],
    ));
    let mut list_map = workpool_crd();
    list_map["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["env"]["x-kubernetes-list-map-keys"] = json!(["missing"]);
    cases.push(("list map keys", list_map, vec![(R_INVALID, "spec.validation.openAPIV3Schema.properties[spec].properties[env].x-kubernetes-list-map-keys")]));
    for (name, crd, want) in cases {
        let got = validate_crd(&crd);
        let got_pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|c| (c.reason.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(got_pairs, want, "{name}: {got:#?}");
    }
    let _ = root;
}

#[test]
fn crd_rule_cost_is_estimated() {
    let list_crd = |max_items: Option<i64>, rule: &str| {
        let mut crd = workpool_crd();
        let tags = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["tags"];
        if let Some(m) = max_items {
            tags["maxItems"] = json!(m);
        }
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
            json!([{"rule": rule}]);
        crd
    };
    let quadratic = "!has(self.tags) || self.tags.all(a, self.tags.exists_one(b, a == b))";
    let got = validate_crd(&list_crd(None, quadratic));
    assert_eq!(
        got,
        vec![c(
            R_FORBIDDEN,
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
        )]
    );
    assert_eq!(validate_crd(&list_crd(Some(100), quadratic)), vec![]);
    // a linear rule over an unbounded list is accepted
    assert_eq!(
        validate_crd(&list_crd(
            None,
            "!has(self.tags) || self.tags.all(t, t.size() < 10)"
        )),
        vec![]
    );
    // scanning unbounded strings of an unbounded list is not
    let scan = "!has(self.tags) || self.tags.all(t, t.matches('^[a-z]+$'))";
    assert_eq!(validate_crd(&list_crd(None, scan)).len(), 1);
    let mut bounded = list_crd(Some(10), scan);
    bounded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["tags"]["items"]["maxLength"] = json!(20);
    assert_eq!(validate_crd(&bounded), vec![]);
}

#[test]
fn crd_cel_compile_error_message_shape() {
    let got = validate_crd(&crd_with_spec_rules(
        json!([{"rule": "self.replicas >", "message": "m"}]),
    ));
    assert_eq!(got.len(), 1);
    assert!(
            got[0].message.starts_with(
                "Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas >\", Message:\"m\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}: compilation failed: ERROR: <input>"
            ),
            "{}",
            got[0].message
        );
    // per-version schemas that differ are reported under spec.versions[i]
    let mut crd = workpool_crd();
    let mut v2 = crd["spec"]["versions"][0].clone();
    v2["name"] = json!("v1beta1");
    v2["storage"] = json!(false);
    v2["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!([{"rule": "self.replicas >"}]);
    if let Some(a) = crd["spec"]["versions"].as_array_mut() {
        a.push(v2);
    }
    let got = validate_crd(&crd);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].field,
        "spec.versions[1].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
    );
}

#[test]
fn type_meta_must_match_the_served_kind() {
    let obj = good_pool();
    assert_eq!(
        validate_type_meta(&obj, "workpool.dev/v1alpha1", "WorkPool"),
        vec![]
    );
    assert_eq!(
        validate_type_meta(
            &json!({"apiVersion": "workpool.dev/v1", "kind": "Pool"}),
            "workpool.dev/v1alpha1",
            "WorkPool"
        ),
        vec![
            c(
                R_INVALID,
                "kind",
                "Invalid value: \"Pool\": must be WorkPool"
            ),
            c(
                R_INVALID,
                "apiVersion",
                "Invalid value: \"workpool.dev/v1\": must be workpool.dev/v1alpha1"
            ),
        ]
    );
}

#[test]
fn kube_derive_style_crd() {
    let crd: Value = serde_yaml::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/schema/kube-derive-style-crd.yaml"
    )))
    .expect("fixture parses");
    assert_eq!(validate_crd(&crd), vec![]);
    let v = crd.pointer("/spec/versions/0").cloned().unwrap_or_default();
    let s = CrdVersionSchema::from_crd_version(&v).expect("schema");
    let base = json!({
        "apiVersion": "example.dev/v1", "kind": "Sample", "metadata": {"name": "s"},
        "spec": {"count": 1, "mode": "Fast", "queue": {"url": "redis://x"}, "replicas": null, "port": "http",
                 "workers": [{"name": "a"}, {"name": "b", "weight": 3}], "template": {"any": {"thing": 1}}},
        "status": null
    });
    let mut ok = base.clone();
    s.apply_defaults(&mut ok);
    assert!(s.prune_unknown_fields(&mut ok).is_empty());
    assert_eq!(ok["spec"]["workers"][0]["weight"], json!(1));
    assert_eq!(ok["spec"]["replicas"], Value::Null, "nullable null is kept");
    assert_eq!(s.validate(&ok, None), vec![]);
    let both = with(
        base.clone(),
        "/spec/queue/urlSecretRef",
        json!({"name": "n", "key": "k"}),
    );
    assert_eq!(
        s.validate(&both, None),
        vec![c(
            R_INVALID,
            "<nil>",
            "Invalid value: \"\": \"spec.queue\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
        )]
    );
    let neither = with(base.clone(), "/spec/queue", json!({}));
    assert_eq!(
        s.validate(&neither, None),
        vec![
            c(
                R_INVALID,
                "<nil>",
                "Invalid value: \"\": \"spec.queue\" must validate one and only one schema (oneOf). Found none valid"
            ),
            c(R_REQUIRED, "spec.queue.url", "Required value"),
            c(
                R_INVALID,
                "<nil>",
                "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
            ),
        ]
    );
    let negative = with(
        with(base, "/spec/count", json!(-1)),
        "/spec/ratio",
        json!(-0.5),
    );
    assert_eq!(
        s.validate(&negative, None),
        vec![
            c(
                R_INVALID,
                "spec.count",
                "Invalid value: -1: spec.count in body should be greater than or equal to 0"
            ),
            c(R_INVALID, "spec", "Invalid value: ratio must be positive"),
        ]
    );
}
