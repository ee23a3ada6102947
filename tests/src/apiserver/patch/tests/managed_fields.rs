//! record_update.

use super::*;

// ---------------- record_update ----------------

#[test]
fn record_update_on_create_matches_kubectl_create() {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "1",
                         "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"a": "b"}},
            "data": {"foo": "bar"}});
    record_update(
        None,
        &mut cm,
        "kubectl-create",
        None,
        "2024-01-01T00:00:00Z",
    );
    assert_eq!(
        managed(&cm),
        [
            json!({"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                    "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:foo": {}},
                                 "f:metadata": {"f:labels": {".": {}, "f:a": {}}}}})
        ]
    );
    // Typed kinds: spec exists in the empty object, so it carries no ".".
    let mut dep = deployment(1, "nginx");
    record_update(
        None,
        &mut dep,
        "kubectl-create",
        None,
        "2024-01-01T00:00:00Z",
    );
    let f = &managed(&dep)[0]["fieldsV1"];
    assert!(f["f:spec"].get(".").is_none());
    assert!(f["f:spec"]["f:template"].get(".").is_none());
    assert_eq!(
        f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"]["."],
        json!({})
    );
    assert_eq!(f["f:spec"]["f:selector"], json!({}));

    // A created Pod, defaulted as the apiserver does before tracking: the required
    // `containers` list exists (as null) in the empty typed Pod, so it has no ".".
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {},
                                     "imagePullPolicy": "Always"}],
                     "restartPolicy": "Always", "securityContext": {}}});
    record_update(None, &mut pod, "kubectl-run", None, "2024-01-01T00:00:00Z");
    assert_eq!(
        managed(&pod)[0]["fieldsV1"],
        json!({"f:spec": {
            "f:containers": {"k:{\"name\":\"nginx\"}": {
                ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}
            }},
            "f:restartPolicy": {},
            "f:securityContext": {}
        }})
    );
}

#[test]
fn record_update_removal_drops_ownership_everywhere() {
    let lists = core("v1", "ConfigMap");
    let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
    let mut new = live.clone();
    new["data"].as_object_mut().map(|m| m.remove("key"));
    record_update(
        Some(&live),
        &mut new,
        "editor",
        None,
        "2024-01-02T00:00:00Z",
    );
    let e = entry(&new, "kubectl", "Apply").expect("still owns labels");
    assert!(e["fieldsV1"].get("f:data").is_none());
    assert!(
        entry(&new, "editor", "Update").is_none(),
        "a pure removal owns nothing"
    );
    // An unchanged write records nothing and keeps the entries.
    let mut same = live.clone();
    record_update(Some(&live), &mut same, "noop", None, "2024-01-03T00:00:00Z");
    assert_eq!(same, live);
}

#[test]
fn record_update_honours_client_managed_fields_and_reset() {
    let lists = core("v1", "ConfigMap");
    let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
    // Reset with [{}] while changing a field: the writer owns only what it changed.
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{}]);
    new["data"]["key"] = json!("changed");
    record_update(
        Some(&live),
        &mut new,
        "resetter",
        None,
        "2024-01-02T00:00:00Z",
    );
    assert_eq!(managed(&new).len(), 1);
    assert_eq!(managed(&new)[0]["manager"], "resetter");
    // Reset alone strips managedFields entirely.
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{}]);
    record_update(
        Some(&live),
        &mut new,
        "resetter",
        None,
        "2024-01-02T00:00:00Z",
    );
    assert!(new["metadata"].get("managedFields").is_none());
    // An empty list is ignored (clients unaware of managedFields).
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([]);
    record_update(Some(&live), &mut new, "x", None, "2024-01-02T00:00:00Z");
    assert_eq!(new, live);
    // A status write keeps the live entries even if the body carries others.
    let mut new = live.clone();
    new["metadata"]["managedFields"] =
        json!([{"manager": "fake", "operation": "Update", "fieldsV1": {"f:x": {}}}]);
    record_update(
        Some(&live),
        &mut new,
        "x",
        Some("status"),
        "2024-01-02T00:00:00Z",
    );
    assert_eq!(new, live);
}

#[test]
fn record_update_caps_update_managers() {
    let mut obj =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    for i in 0..12 {
        let old = obj.clone();
        obj["data"][format!("k{i}")] = json!("v");
        record_update(
            Some(&old),
            &mut obj,
            &format!("m{i:02}"),
            None,
            &format!("2024-01-01T00:00:{i:02}Z"),
        );
    }
    let entries = managed(&obj);
    assert_eq!(entries.len(), 10);
    let ancient = entries
        .iter()
        .find(|e| e["manager"] == "ancient-changes")
        .expect("bucket");
    assert_eq!(
        ancient["fieldsV1"]["f:data"].as_object().map(Map::len),
        Some(3)
    );
}

#[test]
fn kubectl_subresource_update_is_its_own_entry() {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}});
    record_update(None, &mut pod, "kubectl", None, "2024-01-01T00:00:00Z");
    let old = pod.clone();
    pod["status"] = json!({"phase": "Running"});
    record_update(
        Some(&old),
        &mut pod,
        "kubelet",
        Some("status"),
        "2024-01-01T00:00:01Z",
    );
    let e = entry(&pod, "kubelet", "Update").expect("kubelet entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
}
