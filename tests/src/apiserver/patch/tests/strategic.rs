//! Strategic merge patch.

use super::*;

// ---------------- strategic merge patch ----------------

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "a", "tier": "t"}, "finalizers": ["x"]},
        "spec": {
            "containers": [
                {"name": "a", "image": "a:1",
                 "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                {"name": "b", "image": "b:1"}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "tolerations": [{"key": "k1", "operator": "Exists"}]
        }
    })
}

#[test]
fn smp_merges_containers_env_ports_by_key() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [
            {"name": "a", "image": "a:2",
             "env": [{"name": "E2", "value": "two"}, {"name": "E3", "value": "3"}],
             "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "c", "image": "c:1"}
        ]}}),
    );
    let cs = out["spec"]["containers"].as_array().expect("containers");
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    // Upstream's normalizeElementOrder puts patch items before server-only items when
    // the live order cannot place them: [a, c, b], as a real apiserver answers.
    assert_eq!(names, ["a", "c", "b"]);
    assert_eq!(cs[0]["image"], "a:2");
    assert_eq!(
        cs[0]["env"],
        json!([{"name":"E1","value":"1"},{"name":"E2","value":"two"},{"name":"E3","value":"3"}])
    );
    assert_eq!(
        cs[0]["ports"],
        json!([{"containerPort":8080,"name":"http"},{"containerPort":80,"protocol":"TCP"}])
    );
    assert_eq!(
        cs[0]["volumeMounts"],
        json!([{"name":"v","mountPath":"/v"}])
    );
    assert_eq!(cs[2], json!({"name":"b","image":"b:1"}));
}

#[test]
fn smp_null_deletes_and_atomic_lists_replace() {
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"tier": null, "new": "n"}},
                   "spec": {"tolerations": [{"key": "k2", "operator": "Exists"}],
                            "containers": [{"name": "b", "image": null}]}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({"app":"a","new":"n"}));
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key":"k2","operator":"Exists"}])
    );
    assert_eq!(out["spec"]["containers"][1], json!({"name":"b"}));
}

#[test]
fn smp_patch_delete_and_replace_directives() {
    // delete one list item by key
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
    );
    assert_eq!(out["spec"]["containers"].as_array().map(Vec::len), Some(1));
    assert_eq!(out["spec"]["containers"][0]["name"], "a");
    // replace the whole list
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "z", "image": "z:1"}, {"$patch": "replace"}]}}),
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name":"z","image":"z:1"}])
    );
    // replace a map
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"only": "this", "$patch": "replace"}}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({"only":"this"}));
    // delete a map: it becomes empty, as upstream
    let out = smp(pod(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
    assert_eq!(out["metadata"]["labels"], json!({}));
    // a directive-only map for a missing key adds nothing
    let out = smp(
        pod(),
        json!({"spec": {"securityContext": {"$patch": "delete"}}}),
    );
    assert!(out["spec"].get("securityContext").is_none());
}

#[test]
fn smp_retain_keys_switches_volume_source() {
    // What kubectl sends when a volume changes from emptyDir to configMap.
    let out = smp(
        pod(),
        json!({"spec": {"volumes": [
            {"$retainKeys": ["configMap", "name"], "name": "v", "configMap": {"name": "cm"}}
        ]}}),
    );
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name":"v","configMap":{"name":"cm"}}])
    );
    // A patch key missing from $retainKeys is rejected.
    let err = strategic_merge_patch(
        &pod(),
        &json!({"spec": {"volumes": [{"$retainKeys": ["name"], "name": "v", "secret": {}}]}}),
        &pod_lists(),
    )
    .expect_err("invalid retainKeys");
    assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("retainKeys")));
}

#[test]
fn smp_set_element_order_as_kubectl_sends_it() {
    // kubectl apply (client side) reorders containers and changes one image.
    let out = smp(
        pod(),
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:3"}]
        }}),
    );
    let cs = out["spec"]["containers"].as_array().expect("containers");
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(cs[1]["image"], "a:3");
    assert_eq!(cs[1]["env"][0]["name"], "E1", "merged, not replaced");
    assert!(out["spec"].get("$setElementOrder/containers").is_none());

    // Nested in a container: env order with one new var; server-only items kept.
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{
            "name": "a",
            "$setElementOrder/env": [{"name": "E0"}, {"name": "E2"}],
            "env": [{"name": "E0", "value": "0"}]
        }]}}),
    );
    let env: Vec<&str> = out["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // E0 precedes E2 per the order list; E1 (server-only) is placed by live order.
    assert_eq!(env, ["E0", "E1", "E2"]);
    assert_eq!(
        out["spec"]["containers"][0]["env"][1],
        json!({"name":"E1","value":"1"})
    );
}

#[test]
fn smp_delete_and_add_with_set_element_order_orders_like_the_apiserver() {
    // kubectl's three-way patch when a container is removed and another added while
    // the live object has a server-only container: upstream orders the result by the
    // live list as mutated in place during the merge.
    let live = json!({"spec": {"containers": [
        {"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "d", "image": "d"}
    ]}});
    let out = smp(
        live,
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "c"}],
            "containers": [{"name": "c", "image": "c"}, {"$patch": "delete", "name": "a"}]
        }}),
    );
    let names: Vec<&str> = out["spec"]["containers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["b", "d", "c"]);
}

#[test]
fn smp_set_element_order_mismatch_is_rejected() {
    let err = strategic_merge_patch(
        &pod(),
        &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "b", "image": "b:2"}]
        }}),
        &pod_lists(),
    )
    .expect_err("order mismatch");
    assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("$setElementOrder")));
}

#[test]
fn smp_primitive_sets_union_delete_and_order() {
    let out = smp(pod(), json!({"metadata": {"finalizers": ["y", "x"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["y", "x"]));
    // New items come first when the live order cannot place them (upstream behaviour).
    let out = smp(pod(), json!({"metadata": {"finalizers": ["z"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["z", "x"]));
    let out = smp(
        pod(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "finalizers": ["z"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["z"]));
    let out = smp(
        pod(),
        json!({"metadata": {"$setElementOrder/finalizers": ["w", "x"], "finalizers": ["w"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["w", "x"]));
    let err = strategic_merge_patch(
        &pod(),
        &json!({"metadata": {"$deleteFromPrimitiveList": ["x"]}}),
        &pod_lists(),
    )
    .expect_err("malformed directive");
    assert!(
        matches!(err, PatchError::BadRequest(ref m) if m == "invalid patch format of primitive list")
    );
}

#[test]
fn smp_errors_are_bad_requests() {
    let cases = [
        json!({"spec": {"containers": [{"image": "no-name"}]}}),
        json!({"metadata": {"labels": {"$patch": "merge"}}}),
        json!({"metadata": {"labels": {"$patch": "explode"}}}),
        json!({"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}),
        json!({"spec": {"volumes": [{"name": "v", "$retainKeys": "name"}]}}),
        json!({"spec": {"containers": [["nested"]]}}),
        json!({"spec": {"containers": [{"name": "a"}, "scalar"]}}),
        json!({"spec": {"$setElementOrder/containers": "notalist"}}),
        json!(["not", "an", "object"]),
    ];
    for p in cases {
        assert!(
            matches!(
                strategic_merge_patch(&pod(), &p, &pod_lists()),
                Err(PatchError::BadRequest(_))
            ),
            "{p} must be rejected"
        );
    }
}

#[test]
fn smp_on_deployment_template_and_service_ports() {
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "w", "image": "w:1"}]}}}});
    let out = strategic_merge_patch(
            &dep,
            &json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "side", "image": "s"}]}}}}),
            &core("apps/v1", "Deployment"),
        )
        .expect("smp");
    assert_eq!(out["spec"]["replicas"], 3);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
    let out = strategic_merge_patch(
        &svc,
        &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        &core("v1", "Service"),
    )
    .expect("smp");
    assert_eq!(
        out["spec"]["ports"],
        json!([{"port":80,"targetPort":9090},{"port":443}])
    );
}
