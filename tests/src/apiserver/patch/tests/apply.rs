//! Server-side apply.

use super::*;
use crate::apiserver::patch::apply::LAST_APPLIED_ANNOTATION;

// ---------------- server-side apply ----------------

#[test]
fn apply_create_matches_the_documented_managed_fields() {
    // https://kubernetes.io/docs/reference/using-api/server-side-apply/#ssa-example-configmap
    let lists = core("v1", "ConfigMap");
    let out = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
    assert_eq!(
        out,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "test-cm", "namespace": "default",
                "labels": {"test-label": "test"},
                "managedFields": [{
                    "manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                    "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:test-label": {}}}, "f:data": {"f:key": {}}}
                }]
            },
            "data": {"key": "some value"}
        })
    );
}

#[test]
fn update_takes_ownership_as_in_the_documented_multi_manager_example() {
    // The second example of the docs: kube-controller-manager updates data.key.
    let lists = core("v1", "ConfigMap");
    let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
    let mut new = live.clone();
    new["data"]["key"] = json!("new value");
    record_update(
        Some(&live),
        &mut new,
        "kube-controller-manager",
        None,
        "2024-01-01T01:00:00Z",
    );
    assert_eq!(
        new["metadata"]["managedFields"],
        json!([
            {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
             "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {"f:test-label": {}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": "2024-01-01T01:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:key": {}}}}
        ])
    );
    // "If this update has instead been attempted using Server-Side Apply, the request
    // would have failed due to conflicting ownership."
    let mut other = cm_config();
    other["data"]["key"] = json!("mine");
    other["metadata"]
        .as_object_mut()
        .map(|m| m.remove("labels"));
    let c = conflicts(apply(Some(&live), &other, &ctx("someone", &lists)));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "kubectl".into(),
            field: ".data.key".into()
        }]
    );
}

#[test]
fn apply_fields_v1_for_a_deployment_is_exact() {
    let lists = core("apps/v1", "Deployment");
    let out = apply(
        None,
        &deployment(3, "nginx:1.14.2"),
        &ctx("kubectl", &lists),
    )
    .expect("apply");
    let e = entry(&out, "kubectl", "Apply").expect("entry");
    assert_eq!(
        e["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}
                        }}
                    }}}
                }
            }
        })
    );
    assert_eq!(e["apiVersion"], "apps/v1");
}

#[test]
fn kubectl_scale_then_apply_conflicts_and_force_takes_over() {
    let lists = core("apps/v1", "Deployment");
    let live = apply(None, &deployment(3, "nginx:1"), &ctx("kubectl", &lists)).expect("create");
    // kubectl scale (an Update through the scale subresource is recorded the same way)
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(
        Some(&live),
        &mut scaled,
        "kubectl-scale",
        None,
        "2024-01-01T00:05:00Z",
    );
    assert_eq!(
        entry(&scaled, "kubectl-scale", "Update").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:spec": {"f:replicas": {}}}))
    );
    assert!(
        entry(&scaled, "kubectl", "Apply").expect("apply entry")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none(),
        "the update took replicas from the applier"
    );
    // Re-apply with another replicas value: conflict with kubectl-scale.
    let c = conflicts(apply(
        Some(&scaled),
        &deployment(2, "nginx:1"),
        &ctx("kubectl", &lists),
    ));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "kubectl-scale".into(),
            field: ".spec.replicas".into()
        }]
    );
    assert_eq!(
        conflict_message(&c),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\": .spec.replicas"
    );
    // Same value as live: shared ownership, no conflict.
    let shared = apply(
        Some(&scaled),
        &deployment(5, "nginx:1"),
        &ctx("kubectl", &lists),
    )
    .expect("shared");
    assert!(
        entry(&shared, "kubectl", "Apply").expect("e")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some()
    );
    assert!(entry(&shared, "kubectl-scale", "Update").is_some());
    // Force: value set, ownership moved, the emptied Update entry disappears.
    let mut force = ctx("kubectl", &lists);
    force.force = true;
    let forced = apply(Some(&scaled), &deployment(2, "nginx:1"), &force).expect("forced");
    assert_eq!(forced["spec"]["replicas"], 2);
    assert!(entry(&forced, "kubectl-scale", "Update").is_none());
}

#[test]
fn reapply_removes_fields_no_one_else_owns() {
    let lists = core("v1", "ConfigMap");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"}});
    let live = apply(None, &first, &ctx("m1", &lists)).expect("create");
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1"}});
    let out = apply(Some(&live), &second, &ctx("m1", &lists)).expect("reapply");
    assert_eq!(out["data"], json!({"a": "1"}));
    assert_eq!(out["metadata"]["name"], "c");
    assert_eq!(out["apiVersion"], "v1");
    assert_eq!(out["kind"], "ConfigMap");
    // Drop everything: data disappears entirely, the entry goes away.
    let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let out = apply(Some(&out), &empty, &ctx("m1", &lists)).expect("reapply");
    assert!(out.get("data").is_none());
    assert!(managed(&out).is_empty());
    assert_eq!(out["metadata"]["name"], "c");
}

#[test]
fn shared_field_survives_when_one_applier_drops_it() {
    let lists = core("v1", "ConfigMap");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let live = apply(None, &cfg, &ctx("m1", &lists)).expect("m1");
    let live = apply(Some(&live), &cfg, &ctx("m2", &lists)).expect("m2 shares");
    assert_eq!(managed(&live).len(), 2);
    let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let out = apply(Some(&live), &none, &ctx("m1", &lists)).expect("m1 gives up");
    assert_eq!(out["data"], json!({"a": "1"}), "m2 still owns it");
    assert!(entry(&out, "m1", "Apply").is_none());
    assert_eq!(
        entry(&out, "m2", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:data": {"f:a": {}}}))
    );
    // Now m2 changes it alone: no conflict.
    let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
    let out = apply(Some(&out), &cfg2, &ctx("m2", &lists)).expect("m2 changes");
    assert_eq!(out["data"]["a"], "2");
}

#[test]
fn update_owned_field_is_not_pruned() {
    let lists = core("v1", "ConfigMap");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let live = apply(None, &cfg, &ctx("m1", &lists)).expect("create");
    let mut upd = live.clone();
    upd["data"]["a"] = json!("9");
    record_update(
        Some(&live),
        &mut upd,
        "editor",
        None,
        "2024-01-02T00:00:00Z",
    );
    let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let out = apply(Some(&upd), &none, &ctx("m1", &lists)).expect("reapply");
    assert_eq!(out["data"]["a"], "9");
}

#[test]
fn map_lists_are_owned_per_key() {
    let lists = core("v1", "Pod");
    let base = |containers: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": containers}})
    };
    let live = apply(
        None,
        &base(json!([{"name": "a", "image": "a:1"}])),
        &ctx("ma", &lists),
    )
    .expect("a");
    let live = apply(
        Some(&live),
        &base(json!([{"name": "b", "image": "b:1"}])),
        &ctx("mb", &lists),
    )
    .expect("b adds its own item without conflict");
    let names: Vec<&str> = live["spec"]["containers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // mb changing a's image conflicts with ma on that exact field.
    let c = conflicts(apply(
        Some(&live),
        &base(json!([{"name": "a", "image": "a:2"}, {"name": "b", "image": "b:1"}])),
        &ctx("mb", &lists),
    ));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "ma".into(),
            field: ".spec.containers[name=\"a\"].image".into()
        }]
    );
    // ma dropping its container removes only that item.
    let out = apply(Some(&live), &base(json!([])), &ctx("ma", &lists)).expect("ma drops a");
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "b", "image": "b:1"}])
    );
    assert!(entry(&out, "ma", "Apply").is_none());
}

#[test]
fn sets_are_owned_per_value() {
    let lists = core("v1", "ConfigMap");
    let cfg = |f: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": f}});
    let live = apply(None, &cfg(json!(["a/x"])), &ctx("m1", &lists)).expect("m1");
    let live = apply(Some(&live), &cfg(json!(["b/y"])), &ctx("m2", &lists)).expect("m2");
    assert_eq!(live["metadata"]["finalizers"], json!(["a/x", "b/y"]));
    assert_eq!(
        entry(&live, "m2", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:metadata": {"f:finalizers": {"v:\"b/y\"": {}}}}))
    );
    let out = apply(Some(&live), &cfg(json!([])), &ctx("m1", &lists)).expect("m1 drops");
    assert_eq!(out["metadata"]["finalizers"], json!(["b/y"]));
}

#[test]
fn custom_resource_lists_follow_the_given_semantics() {
    let lists = Lists(vec![
        ("spec.items", ListType::Map(vec!["id".into()])),
        ("spec.tags", ListType::Set),
    ]);
    let cfg = |items: Value, tags: Value| {
        json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"},
                   "spec": {"items": items, "tags": tags, "plain": [1, 2]}})
    };
    let out = apply(
        None,
        &cfg(json!([{"id": 1, "v": "x"}]), json!(["t"])),
        &ctx("m", &lists),
    )
    .expect("apply");
    assert_eq!(
        entry(&out, "m", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:spec": {
            "f:items": {"k:{\"id\":1}": {".": {}, "f:id": {}, "f:v": {}}},
            "f:plain": {},
            "f:tags": {"v:\"t\"": {}}
        }}))
    );
    // Custom resources: no typed skeleton, a created spec map shows "." in Update sets.
    let mut created = json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "g"}, "spec": {"a": 1}});
    record_update(None, &mut created, "creator", None, "2024-01-01T00:00:00Z");
    assert_eq!(
        entry(&created, "creator", "Update").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:spec": {".": {}, "f:a": {}}}))
    );
    // Duplicate keys in an applied map list are rejected.
    let err = apply(
        None,
        &cfg(json!([{"id": 1}, {"id": 1}]), json!([])),
        &ctx("m", &lists),
    )
    .expect_err("dup");
    assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("duplicate")));
}

#[test]
fn status_subresource_apply() {
    let lists = core("v1", "Pod");
    let live = apply(
        None,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                    "status": {"phase": "Ignored"}}),
        &ctx("creator", &lists),
    )
    .expect("create");
    assert!(
        live.get("status").is_none(),
        "status ignored on the main resource"
    );
    let mut sctx = ctx("kubelet", &lists);
    sctx.subresource = Some("status");
    let out = apply(
            Some(&live),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"no": "pe"}},
                    "spec": {"containers": [{"name": "c", "image": "CHANGED"}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
            &sctx,
        )
        .expect("status apply");
    assert_eq!(out["spec"]["containers"][0]["image"], "i");
    assert!(out["metadata"].get("labels").is_none());
    assert_eq!(out["status"]["phase"], "Running");
    let e = entry(&out, "kubelet", "Apply").expect("status entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}, "f:phase": {}}})
    );
    // The same manager on the main resource is a different entry.
    let main = apply(
            Some(&out),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}}),
            &ctx("kubelet", &lists),
        )
        .expect("main");
    assert_eq!(
        managed(&main)
            .iter()
            .filter(|e| e["manager"] == "kubelet")
            .count(),
        2
    );
    assert_eq!(
        main["status"]["phase"], "Running",
        "status untouched by the main apply"
    );
}

#[test]
fn apply_noop_keeps_time_and_entries_are_sorted() {
    let lists = core("v1", "ConfigMap");
    let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("create");
    let mut later = ctx("kubectl", &lists);
    later.now = "2025-01-01T00:00:00Z";
    let again = apply(Some(&live), &cm_config(), &later).expect("noop");
    assert_eq!(again, live, "a no-op apply changes nothing, time included");
    let mut upd = live.clone();
    upd["data"]["other"] = json!("x");
    record_update(
        Some(&live),
        &mut upd,
        "aaa-first-by-name",
        None,
        "2023-01-01T00:00:00Z",
    );
    let ops: Vec<(String, String)> = managed(&upd)
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap_or("").into(),
                e["manager"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("Apply".to_string(), "kubectl".to_string()),
            ("Update".into(), "aaa-first-by-name".into())
        ]
    );
}

#[test]
fn apply_rejects_bad_configs() {
    let lists = core("v1", "ConfigMap");
    let bad_cfgs = [
        json!("string"),
        json!([1]),
        json!({"kind": "ConfigMap", "metadata": {"name": "c"}}),
        json!({"apiVersion": "v1", "metadata": {"name": "c"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "managedFields": []}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": "nope"}),
    ];
    for c in bad_cfgs {
        assert!(
            matches!(
                apply(None, &c, &ctx("m", &lists)),
                Err(PatchError::BadRequest(_))
            ),
            "{c}"
        );
    }
    assert!(matches!(
        apply(None, &cm_config(), &ctx("", &lists)),
        Err(PatchError::BadRequest(_))
    ));
}

#[test]
fn owner_references_items_are_atomic() {
    let lists = core("v1", "Pod");
    let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "ownerReferences": [
        {"apiVersion": "example.com/v1", "kind": "Pool", "name": "o", "uid": "u-1", "controller": true}
    ]}});
    let out = apply(None, &cfg, &ctx("op", &lists)).expect("apply");
    assert_eq!(
        entry(&out, "op", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:metadata": {"f:ownerReferences": {"k:{\"uid\":\"u-1\"}": {}}}}))
    );
}

#[test]
fn before_first_apply_owns_untracked_fields() {
    let lists = core("v1", "ConfigMap");
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    let c = conflicts(apply(
        Some(&live),
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "w"}}),
        &ctx("m", &lists),
    ));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "before-first-apply".into(),
            field: ".data.k".into()
        }]
    );
}

#[test]
fn kubectl_upgrades_from_client_side_apply_without_conflicts() {
    let lists = core("v1", "ConfigMap");
    let last =
        r#"{"apiVersion":"v1","data":{"key":"v"},"kind":"ConfigMap","metadata":{"name":"c"}}"#;
    let mut live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {LAST_APPLIED_ANNOTATION: format!("{last}\n")}},
            "data": {"key": "v", "other": "o"}});
    record_update(
        None,
        &mut live,
        "kubectl-client-side-apply",
        None,
        "2024-01-01T00:00:00Z",
    );
    // Someone else changed `other` since: not covered by last-applied.
    let old = live.clone();
    live["data"]["other"] = json!("changed");
    record_update(
        Some(&old),
        &mut live,
        "kubectl-edit",
        None,
        "2024-01-01T00:01:00Z",
    );
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "w"}});
    let out = apply(Some(&live), &cfg, &ctx("kubectl", &lists)).expect("upgrade is conflict-free");
    assert_eq!(out["data"]["key"], "w");
    let csa = entry(&out, "kubectl-client-side-apply", "Update").expect("csa entry keeps the rest");
    assert!(csa["fieldsV1"]["f:data"].get("f:key").is_none());
    let ann = out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
        .as_str()
        .unwrap_or("");
    assert_eq!(
        ann,
        "{\"apiVersion\":\"v1\",\"data\":{\"key\":\"w\"},\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"}}\n"
    );
    // A field changed by another manager since the client-side apply still conflicts.
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "v", "other": "mine"}});
    let c = conflicts(apply(Some(&live), &cfg, &ctx("kubectl", &lists)));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "kubectl-edit".into(),
            field: ".data.other".into()
        }]
    );
    // Other managers get no such leniency.
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "w"}});
    let c = conflicts(apply(Some(&live), &cfg, &ctx("my-manager", &lists)));
    assert_eq!(
        c,
        [ApplyConflict {
            manager: "kubectl-client-side-apply".into(),
            field: ".data.key".into()
        }]
    );
}

#[test]
fn apply_without_metadata_keeps_identity() {
    let lists = core("v1", "ConfigMap");
    let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("create");
    let bare = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    let out = apply(Some(&live), &bare, &ctx("kubectl", &lists)).expect("bare apply");
    assert_eq!(out["metadata"]["name"], "test-cm");
    assert_eq!(out["metadata"]["namespace"], "default");
    assert!(
        out["metadata"].get("labels").is_none(),
        "labels were only owned by kubectl"
    );
    assert!(out.get("data").is_none());
    assert!(out["metadata"].get("managedFields").is_none());
}

#[test]
fn apply_list_merge_order_follows_structured_merge_diff() {
    let lists = core("v1", "Pod");
    let cfg = |names: &[&str]| {
        let cs: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "image": "i"}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": cs}})
    };
    let live = apply(None, &cfg(&["a", "b", "c"]), &ctx("m1", &lists)).expect("m1");
    let out = apply(Some(&live), &cfg(&["d", "b"]), &ctx("m2", &lists)).expect("m2");
    let names: Vec<&str> = out["spec"]["containers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "d", "b", "c"]);
}

#[test]
fn update_adding_a_list_item_owns_the_item() {
    let lists = core("v1", "Pod");
    let live = apply(
        None,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "a", "image": "a"}]}}),
        &ctx("m1", &lists),
    )
    .expect("create");
    let mut new = live.clone();
    new["spec"]["containers"]
        .as_array_mut()
        .expect("list")
        .push(json!({"name": "x", "image": "x:1"}));
    record_update(Some(&live), &mut new, "adder", None, "2024-01-02T00:00:00Z");
    assert_eq!(
        entry(&new, "adder", "Update").map(|e| e["fieldsV1"].clone()),
        Some(
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"x\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        )
    );
    // The applier dropping its container does not touch the updater's one.
    let out = apply(
            Some(&new),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}),
            &ctx("m1", &lists),
        )
        .expect("drop");
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "x", "image": "x:1"}])
    );
}

#[test]
fn dropping_one_label_keeps_labels_owned_by_others() {
    let lists = core("v1", "ConfigMap");
    let cfg = |labels: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}});
    let live = apply(None, &cfg(json!({"a": "1", "b": "2"})), &ctx("m1", &lists)).expect("create");
    let mut new = live.clone();
    new["metadata"]["labels"]["c"] = json!("3");
    record_update(
        Some(&live),
        &mut new,
        "labeler",
        None,
        "2024-01-02T00:00:00Z",
    );
    let out = apply(Some(&new), &cfg(json!({"a": "1"})), &ctx("m1", &lists)).expect("drop b");
    assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
    // Forcing a value owned by the labeler moves ownership to the applier.
    let mut force = ctx("m1", &lists);
    force.force = true;
    let out = apply(Some(&out), &cfg(json!({"a": "1", "c": "mine"})), &force).expect("force");
    assert_eq!(out["metadata"]["labels"]["c"], "mine");
    assert!(entry(&out, "labeler", "Update").is_none());
    assert_eq!(
        entry(&out, "m1", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:metadata": {"f:labels": {"f:a": {}, "f:c": {}}}}))
    );
}

#[test]
fn multiple_conflicts_are_all_reported() {
    let lists = core("apps/v1", "Deployment");
    let live = apply(None, &deployment(3, "nginx:1"), &ctx("owner", &lists)).expect("create");
    let c = conflicts(apply(
        Some(&live),
        &deployment(4, "nginx:2"),
        &ctx("other", &lists),
    ));
    assert_eq!(
        c,
        [
            ApplyConflict {
                manager: "owner".into(),
                field: ".spec.replicas".into()
            },
            ApplyConflict {
                manager: "owner".into(),
                field: ".spec.template.spec.containers[name=\"nginx\"].image".into()
            },
        ]
    );
    assert!(conflict_message(&c).starts_with("Apply failed with 2 conflicts: "));
}

#[test]
fn apply_null_and_partial_keys_follow_structured_merge_diff() {
    let lists = Lists(vec![(
        "spec.ports",
        ListType::Map(vec!["port".into(), "protocol".into()]),
    )]);
    let base = |spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"}, "spec": spec});
    let live = apply(
        None,
        &base(json!({"s": {"name": "a"}, "n": 1})),
        &ctx("m", &lists),
    )
    .expect("create");
    let mut upd = live.clone();
    upd["spec"]["s"]["value"] = json!(1);
    record_update(
        Some(&live),
        &mut upd,
        "controller",
        None,
        "2024-01-02T00:00:00Z",
    );
    // A null map claims the field without clearing it; a null scalar clears it.
    let out = apply(
        Some(&upd),
        &base(json!({"s": null, "n": null})),
        &ctx("m", &lists),
    )
    .expect("null");
    assert_eq!(out["spec"], json!({"s": {"value": 1}}));
    assert_eq!(
        entry(&out, "m", "Apply").map(|e| e["fieldsV1"].clone()),
        Some(json!({"f:spec": {"f:n": {}, "f:s": {}}}))
    );
    // A list-map item missing a key field without default is keyed by the others.
    let out = apply(
        None,
        &base(json!({"ports": [{"protocol": "UDP", "name": "x"}]})),
        &ctx("m", &lists),
    )
    .expect("partial key");
    assert_eq!(
        entry(&out, "m", "Apply").map(|e| e["fieldsV1"]["f:spec"]["f:ports"].clone()),
        Some(json!({"k:{\"protocol\":\"UDP\"}": {".": {}, "f:name": {}, "f:protocol": {}}}))
    );
    // Missing `protocol` takes its default in the key.
    let out = apply(
        None,
        &base(json!({"ports": [{"port": 53}]})),
        &ctx("m", &lists),
    )
    .expect("default");
    assert!(entry(&out, "m", "Apply").is_some_and(|e| {
        e["fieldsV1"]["f:spec"]["f:ports"]
            .get("k:{\"port\":53,\"protocol\":\"TCP\"}")
            .is_some()
    }));
    // Two items with the same (defaulted) key are rejected.
    let err = apply(
        None,
        &base(json!({"ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}]})),
        &ctx("m", &lists),
    )
    .expect_err("ambiguous");
    assert!(matches!(err, PatchError::BadRequest(_)));
}
