//! What a real kube-apiserver (v1.37) answers where clients easily assume otherwise
//! (found in issue #6 while an in-repo API double existed): status codes, reasons and
//! messages of JSON patch, DeleteOptions, preconditions, garbage collection, CRD deletion,
//! built-in validation, RBAC objects, scheduling and pod logs, asserted against the real
//! control plane (and its real node where a pod must run).

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, LogParams, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_tests::node::PROBE_IMAGE;

async fn cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::with_fixtures())
        .await
        .expect("test cluster starts")
}

/// Long enough for a real cluster's controllers.
const SETTLE: Duration = Duration::from_secs(90);

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {SETTLE:?} waiting for: {what}");
}

fn status(e: &kube::Error) -> &kube::core::Status {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The `(code, reason)` of an API error.
fn code_reason(e: &kube::Error) -> (u16, String) {
    let s = status(e);
    (s.code, s.reason.clone())
}

/// `(field, reason)` of each cause of a 422.
fn causes(e: &kube::Error) -> Vec<(String, String)> {
    status(e)
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| (c.field.clone(), c.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("valid configmap")
}

fn configmaps(c: &TestCluster) -> Api<ConfigMap> {
    Api::namespaced(c.client(), c.namespace())
}

/// A raw request through the test client: the answer body on success, the API error
/// otherwise.
async fn raw(
    c: &TestCluster,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<String, kube::Error> {
    let mut req = kube::core::Request::new(path)
        .get("x", &Default::default())
        .expect("request builds");
    *req.method_mut() = method.parse().expect("method");
    *req.uri_mut() = path.parse().expect("uri");
    *req.body_mut() = body;
    if let Some(ct) = content_type {
        req.headers_mut()
            .insert("content-type", ct.parse().expect("header value"));
    }
    c.client().request_text(req).await
}

/// A pod no scheduler picks up: it stays Pending and unbound on a real cluster too.
fn unscheduled_pod(name: &str, containers: &[&str]) -> Pod {
    let cs: Vec<Value> = containers
        .iter()
        .map(|n| json!({"name": n, "image": "busybox:1.36", "command": ["sleep", "100"]}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"schedulerName": "workpool-conformance-no-scheduler", "containers": cs},
    }))
    .expect("valid pod")
}

// ─────────────────────────────── (1) JSON patch `test` of null ───────────────────────────────

/// kube-runtime's `finalizer()` helper adds its finalizer with the JSON patch
/// `[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add",...}]` when the
/// object has none: the apiserver's json-patch library passes a `test` of null on a
/// missing key.
#[tokio::test]
async fn json_patch_test_of_null_on_a_missing_key_passes_so_kube_runtime_finalizer_works() {
    let c = cluster().await;
    let api = configmaps(&c);
    let created = api
        .create(&PostParams::default(), &cm("fin"))
        .await
        .expect("create");
    let action = finalizer(
        &api,
        "conformance.workpool.dev/cleanup",
        Arc::new(created),
        |_| async { Ok::<_, std::convert::Infallible>(Action::await_change()) },
    )
    .await
    .expect("finalizer() adds its finalizer");
    assert_eq!(action, Action::await_change());
    let got = api.get("fin").await.expect("get");
    assert_eq!(
        got.metadata.finalizers,
        Some(vec!["conformance.workpool.dev/cleanup".to_string()])
    );
    // A second pass sees the finalizer and reconciles (Apply).
    let applied = finalizer(
        &api,
        "conformance.workpool.dev/cleanup",
        Arc::new(got),
        |ev| async move {
            assert!(matches!(ev, FinalizerEvent::Apply(_)), "an Apply event");
            Ok::<_, std::convert::Infallible>(Action::requeue(Duration::from_secs(5)))
        },
    )
    .await
    .expect("finalizer() reconciles");
    assert_eq!(applied, Action::requeue(Duration::from_secs(5)));
    // A test of null against a present value fails (422), as before.
    let path = format!("/api/v1/namespaces/{}/configmaps/fin", c.namespace());
    let e = raw(
        &c,
        "PATCH",
        &path,
        Some("application/json-patch+json"),
        br#"[{"op":"test","path":"/metadata/finalizers","value":null}]"#.to_vec(),
    )
    .await
    .expect_err("present finalizers are not null");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    api.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the finalizer");
}

// ─────────────────────────────── (12) DeleteOptions bodies ───────────────────────────────

/// The protobuf encoding of `DeleteOptions{propagationPolicy: Background}` as client-go
/// sends it with a protobuf content type (Helm's kube client does).
fn protobuf_delete_options() -> Vec<u8> {
    fn field(num: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3) | 2, u8::try_from(b.len()).expect("short")];
        out.extend_from_slice(b);
        out
    }
    let type_meta = [field(1, b"v1"), field(2, b"DeleteOptions")].concat();
    let raw = field(4, b"Background");
    [
        b"k8s\0".to_vec(),
        field(1, &type_meta),
        field(2, &raw),
        field(3, b""),
        field(4, b""),
    ]
    .concat()
}

#[tokio::test]
async fn delete_accepts_every_delete_options_body_clients_send() {
    let c = cluster().await;
    let api = configmaps(&c);
    let bodies: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("no body", None, Vec::new()),
        ("empty object", Some("application/json"), b"{}".to_vec()),
        (
            "type meta only",
            Some("application/json"),
            br#"{"kind":"DeleteOptions","apiVersion":"v1"}"#.to_vec(),
        ),
        (
            "propagation policy",
            Some("application/json"),
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#
                .to_vec(),
        ),
        (
            "protobuf",
            Some("application/vnd.kubernetes.protobuf"),
            protobuf_delete_options(),
        ),
    ];
    for (i, (what, ct, body)) in bodies.into_iter().enumerate() {
        let name = format!("del-{i}");
        api.create(&PostParams::default(), &cm(&name))
            .await
            .expect("create");
        let path = format!("/api/v1/namespaces/{}/configmaps/{name}", c.namespace());
        let out = raw(&c, "DELETE", &path, ct, body)
            .await
            .unwrap_or_else(|e| panic!("DELETE with {what}: {e:?}"));
        let v: Value = serde_json::from_str(&out).expect("JSON answer");
        assert_eq!(v["status"], "Success", "DELETE with {what}: {v}");
        let e = api.get(&name).await.expect_err("deleted");
        assert_eq!(code_reason(&e), (404, "NotFound".into()), "{what}");
    }
    // A body that is not DeleteOptions at all is a 400.
    api.create(&PostParams::default(), &cm("del-bad"))
        .await
        .expect("create");
    let path = format!("/api/v1/namespaces/{}/configmaps/del-bad", c.namespace());
    let e = raw(
        &c,
        "DELETE",
        &path,
        Some("application/json"),
        b"[1".to_vec(),
    )
    .await
    .expect_err("malformed body");
    assert_eq!(code_reason(&e).0, 400);
}

// ─────────────────────── (13) immortal namespaces, pods/log ───────────────────────

#[tokio::test]
async fn immortal_namespaces_cannot_be_deleted() {
    let c = cluster().await;
    let api: Api<Namespace> = Api::all(c.client());
    for ns in ["default", "kube-system", "kube-public"] {
        let e = api
            .delete(ns, &DeleteParams::default())
            .await
            .expect_err("NamespaceLifecycle refuses");
        assert_eq!(code_reason(&e), (403, "Forbidden".into()), "{ns}");
        assert_eq!(
            status(&e).message,
            format!("namespaces \"{ns}\" is forbidden: this namespace may not be deleted")
        );
        let got = api.get(ns).await.expect("still there");
        assert!(
            got.metadata.deletion_timestamp.is_none(),
            "{ns} not terminating"
        );
    }
}

/// `pods/log` is served: the container must be valid (and named when the pod has
/// several); a pod not bound to a node has an empty log.
#[tokio::test]
async fn pod_log_validates_the_container_and_is_empty_before_scheduling() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client(), c.namespace());
    pods.create(&PostParams::default(), &unscheduled_pod("p", &["a", "b"]))
        .await
        .expect("create pod");
    let e = pods
        .logs("p", &LogParams::default())
        .await
        .expect_err("two containers, none named");
    assert_eq!(code_reason(&e), (400, "BadRequest".into()));
    assert!(
        status(&e)
            .message
            .starts_with("a container name must be specified for pod p, choose one of: [a b]"),
        "{:?}",
        status(&e).message
    );
    let e = pods
        .logs(
            "p",
            &LogParams {
                container: Some("zz".into()),
                ..LogParams::default()
            },
        )
        .await
        .expect_err("no such container");
    assert_eq!(code_reason(&e), (400, "BadRequest".into()));
    assert_eq!(status(&e).message, "container zz is not valid for pod p");
    let log = pods
        .logs(
            "p",
            &LogParams {
                container: Some("a".into()),
                ..LogParams::default()
            },
        )
        .await
        .expect("log of an unscheduled pod");
    assert_eq!(log, "");
    let e = pods
        .logs("nope", &LogParams::default())
        .await
        .expect_err("missing pod");
    assert_eq!(code_reason(&e), (404, "NotFound".into()));
}

// ─────────────────────── (4) create with a resourceVersion ───────────────────────

#[tokio::test]
async fn create_with_a_resource_version_is_refused() {
    let c = cluster().await;
    let api = configmaps(&c);
    let mut o = cm("with-rv");
    o.metadata.resource_version = Some("12345".into());
    let e = api
        .create(&PostParams::default(), &o)
        .await
        .expect_err("resourceVersion set on create");
    let s = status(&e);
    assert_eq!(s.code, 500);
    assert_eq!(
        s.message,
        "resourceVersion should not be set on objects to be created"
    );
    assert_eq!(
        code_reason(&api.get("with-rv").await.expect_err("not created")).0,
        404
    );
}

// ─────────────────────── (2) preconditions of server-side apply and PUT ───────────────────────

fn lease_config(holder: &str, rv: Option<&str>, uid: Option<&str>) -> Value {
    let mut meta = json!({"name": "l"});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    if let Some(uid) = uid {
        meta["uid"] = json!(uid);
    }
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
}

#[tokio::test]
async fn apply_and_put_honour_resource_version_and_uid_preconditions() {
    let c = cluster().await;
    let api: Api<Lease> = Api::namespaced(c.client(), c.namespace());
    let pp = PatchParams::apply("conformance");
    let first = api
        .patch("l", &pp, &Patch::Apply(lease_config("a", None, None)))
        .await
        .expect("apply creates");
    let rv1 = first.metadata.resource_version.clone().expect("rv");
    let uid = first.metadata.uid.clone().expect("uid");
    // A current resourceVersion in the applied configuration is accepted.
    let second = api
        .patch(
            "l",
            &pp,
            &Patch::Apply(lease_config("b", Some(&rv1), Some(&uid))),
        )
        .await
        .expect("apply with the current resourceVersion");
    assert_eq!(
        second
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("b")
    );
    // A stale one is a conflict: the apply does not win.
    let e = api
        .patch("l", &pp, &Patch::Apply(lease_config("c", Some(&rv1), None)))
        .await
        .expect_err("stale resourceVersion");
    assert_eq!(code_reason(&e), (409, "Conflict".into()));
    assert!(
        status(&e).message.contains("the object has been modified"),
        "{:?}",
        status(&e).message
    );
    // Another object's uid is refused too.
    let other = "6b1a1e6c-0000-4000-8000-000000000000";
    let e = api
        .patch(
            "l",
            &pp,
            &Patch::Apply(lease_config("d", None, Some(other))),
        )
        .await
        .expect_err("different uid");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    assert_eq!(
        causes(&e),
        [("metadata.uid".to_string(), "FieldValueInvalid".to_string())]
    );
    assert_eq!(
        status(&e).message,
        format!(
            "Lease.coordination.k8s.io \"l\" is invalid: metadata.uid: Invalid value: \"{other}\": field is immutable"
        )
    );
    let got = api.get("l").await.expect("get");
    assert_eq!(
        got.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some("b")
    );
    // A PUT names its object by uid: a different one fails the precondition.
    let mut put = got.clone();
    put.metadata.uid = Some(other.into());
    let e = api
        .replace("l", &PostParams::default(), &put)
        .await
        .expect_err("PUT with a different uid");
    assert_eq!(code_reason(&e), (409, "Conflict".into()));
    assert!(
        status(&e).message.contains(&format!(
            "Precondition failed: UID in precondition: {other}"
        )),
        "{:?}",
        status(&e).message
    );
}

// ─────────────────────── (9) a PUT identical after defaulting is a no-op ───────────────────────

fn widget_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("conformance.workpool.dev", "v1", "Widget"),
        "widgets",
    )
}

fn widgets(c: &TestCluster) -> Api<DynamicObject> {
    Api::namespaced_with(c.client(), c.namespace(), &widget_ar())
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "conformance.workpool.dev/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("valid widget")
}

#[tokio::test]
async fn put_that_omits_defaulted_fields_is_a_no_op() {
    let c = cluster().await;
    let api = widgets(&c);
    let created = api
        .create(&PostParams::default(), &widget("w", json!({"replicas": 2})))
        .await
        .expect("create");
    assert_eq!(created.data["spec"]["size"], "small", "defaulted");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    // The same object without its defaulted fields, as a client built from its own
    // manifest sends it.
    let mut put = widget("w", json!({"replicas": 2}));
    put.metadata.resource_version = Some(rv.clone());
    let out = api
        .replace("w", &PostParams::default(), &put)
        .await
        .expect("PUT");
    assert_eq!(out.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(out.metadata.generation, Some(1));
    // The next event is the real change below, not a MODIFIED for the no-op.
    let labelled = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("label");
    let want = labelled.metadata.resource_version.clone().expect("rv");
    loop {
        let ev = tokio::time::timeout(SETTLE, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        match ev {
            WatchEvent::Modified(o) => {
                assert_eq!(
                    o.metadata.resource_version.as_deref(),
                    Some(want.as_str()),
                    "the first MODIFIED is the label change"
                );
                assert_eq!(o.metadata.generation, Some(1));
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

// ─────────────────────── (8) garbage collection with two owners ───────────────────────

fn owner_ref(o: &ConfigMap) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name,
           "uid": o.metadata.uid})
}

#[tokio::test]
async fn dependent_with_two_owners_is_kept_while_one_remains() {
    let c = cluster().await;
    let api = configmaps(&c);
    let pp = PostParams::default();
    let a = api.create(&pp, &cm("owner-a")).await.expect("a");
    let b = api.create(&pp, &cm("owner-b")).await.expect("b");
    let mut dep = cm("dependent");
    dep.metadata.owner_references =
        Some(serde_json::from_value(json!([owner_ref(&a), owner_ref(&b)])).expect("refs"));
    api.create(&pp, &dep).await.expect("dependent");
    api.delete("owner-a", &DeleteParams::background())
        .await
        .expect("delete a");
    // The collector keeps the dependent and drops its reference to the gone owner.
    eventually("the dangling reference to owner-a is removed", || async {
        let d = api.get("dependent").await.expect("dependent kept");
        let refs = d.metadata.owner_references.unwrap_or_default();
        refs.len() == 1 && refs[0].name == "owner-b"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.get("dependent")
        .await
        .expect("still kept while owner-b remains");
    api.delete("owner-b", &DeleteParams::background())
        .await
        .expect("delete b");
    eventually(
        "the dependent is collected once no owner remains",
        || async {
            matches!(api.get("dependent").await, Err(kube::Error::Api(s)) if s.code == 404)
        },
    )
    .await;
}

/// A foreground deletion of one owner does not take a dependent another owner still
/// holds: the collector removes the reference, and the owner goes.
#[tokio::test]
async fn foreground_deletion_of_one_owner_keeps_a_shared_dependent() {
    let c = cluster().await;
    let api = configmaps(&c);
    let pp = PostParams::default();
    let a = api.create(&pp, &cm("fg-a")).await.expect("a");
    let b = api.create(&pp, &cm("fg-b")).await.expect("b");
    let mut dep = cm("fg-dependent");
    dep.metadata.owner_references =
        Some(serde_json::from_value(json!([owner_ref(&a), owner_ref(&b)])).expect("refs"));
    api.create(&pp, &dep).await.expect("dependent");
    api.delete("fg-a", &DeleteParams::foreground())
        .await
        .expect("delete a in the foreground");
    eventually("owner fg-a is gone", || async {
        matches!(api.get("fg-a").await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
    let d = api.get("fg-dependent").await.expect("dependent kept");
    let refs = d.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["fg-b"]
    );
}

// ─────────────────────── (7) deleting a CRD waits for finalized instances ───────────────────────

#[tokio::test]
async fn deleting_a_crd_waits_for_instances_with_finalizers() {
    let c = cluster().await;
    // A CRD of its own (CRDs are cluster-wide; on a real cluster tests run in parallel).
    let group = format!("{}.conformance.workpool.dev", c.namespace());
    let crd_name = format!("gadgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": crd_name},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]},
    }))
    .expect("valid CRD");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    c.delete_on_drop(&format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"
    ));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::namespaced_with(c.client(), c.namespace(), &ar);
    let gadget = |name: &str, finalizers: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": format!("{group}/v1"), "kind": "Gadget",
            "metadata": {"name": name, "finalizers": finalizers}, "spec": {},
        }))
        .expect("valid gadget")
    };
    eventually("the new CRD serves its kind", || async {
        gadgets
            .create(
                &PostParams::default(),
                &gadget("held", json!(["conformance.workpool.dev/hold"])),
            )
            .await
            .is_ok()
    })
    .await;
    gadgets
        .create(&PostParams::default(), &gadget("free", json!([])))
        .await
        .expect("create free");
    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("delete CRD");
    eventually("instances without finalizers are deleted", || async {
        matches!(gadgets.get("free").await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
    eventually(
        "the CRD is Terminating while an instance remains",
        || async {
            let Ok(crd) = crds.get(&crd_name).await else {
                return false;
            };
            let terminating = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .any(|cond| {
                    cond.type_ == "Terminating"
                        && cond.status == "True"
                        && ["InstanceDeletionInProgress", "InstanceDeletionCheck"]
                            .contains(&cond.reason.as_deref().unwrap_or(""))
                });
            terminating && crd.metadata.deletion_timestamp.is_some()
        },
    )
    .await;
    let held = gadgets
        .get("held")
        .await
        .expect("the held instance is kept");
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "held is being deleted"
    );
    eventually("no new instance while the CRD terminates", || async {
        match gadgets
            .create(&PostParams::default(), &gadget("late", json!([])))
            .await
        {
            Err(kube::Error::Api(s)) => {
                (s.code, s.reason.as_str()) == (403, "Forbidden")
                    && s.message
                        == format!("gadgets.{group} \"late\" is forbidden: create not allowed while custom resource definition is terminating")
            }
            _ => false,
        }
    })
    .await;
    gadgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the instance");
    eventually("the CRD goes once its instances are gone", || async {
        matches!(crds.get(&crd_name).await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
}

// ─────────────────────── (3) validation of built-in objects ───────────────────────

fn pod_with(name: &str, container: Value, extra_spec: Value) -> Value {
    let mut spec = json!({"schedulerName": "workpool-conformance-no-scheduler",
                          "containers": [container]});
    if let (Some(m), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        m.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn ctr(extra: Value) -> Value {
    let mut c = json!({"name": "c", "image": "busybox:1.36", "command": ["sleep", "100"]});
    if let (Some(m), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    c
}

#[tokio::test]
async fn invalid_pods_are_refused_with_the_apiservers_causes() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client(), c.namespace());
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "container name not a DNS-1123 label",
            pod_with("p1", ctr(json!({"name": "Bad_Name"})), json!({})),
            "spec.containers[0].name",
            "FieldValueInvalid",
        ),
        (
            "port name over 15 characters",
            pod_with(
                "p2",
                ctr(json!({"ports": [{"name": "a-very-long-port-name", "containerPort": 80}]})),
                json!({}),
            ),
            "spec.containers[0].ports[0].name",
            "FieldValueInvalid",
        ),
        (
            "port name not an IANA_SVC_NAME",
            pod_with(
                "p3",
                ctr(json!({"ports": [{"name": "1234", "containerPort": 80}]})),
                json!({}),
            ),
            "spec.containers[0].ports[0].name",
            "FieldValueInvalid",
        ),
        (
            "requests above limits",
            pod_with(
                "p4",
                ctr(json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})),
                json!({}),
            ),
            "spec.containers[0].resources.requests",
            "FieldValueInvalid",
        ),
        (
            "env name with '='",
            pod_with(
                "p5",
                ctr(json!({"env": [{"name": "A=B", "value": "x"}]})),
                json!({}),
            ),
            "spec.containers[0].env[0].name",
            "FieldValueInvalid",
        ),
        (
            "mount of a volume that does not exist",
            pod_with(
                "p6",
                ctr(json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]})),
                json!({}),
            ),
            "spec.containers[0].volumeMounts[0].name",
            "FieldValueNotFound",
        ),
        (
            "bad label key",
            {
                let mut p = pod_with("p7", ctr(json!({})), json!({}));
                p["metadata"]["labels"] = json!({"bad key!": "v"});
                p
            },
            "metadata.labels",
            "FieldValueInvalid",
        ),
        (
            "annotations over 256 KiB",
            {
                let mut p = pod_with("p8", ctr(json!({})), json!({}));
                p["metadata"]["annotations"] = json!({"big": "x".repeat(300 * 1024)});
                p
            },
            "metadata.annotations",
            "FieldValueTooLong",
        ),
        (
            "invalid finalizer name",
            {
                let mut p = pod_with("p9", ctr(json!({})), json!({}));
                p["metadata"]["finalizers"] = json!(["bad finalizer"]);
                p
            },
            "metadata.finalizers[0]",
            "FieldValueInvalid",
        ),
    ];
    for (what, pod, field, reason) in cases {
        let pod: Pod = serde_json::from_value(pod).expect("pod decodes");
        let e = pods
            .create(&PostParams::default(), &pod)
            .await
            .expect_err(what);
        assert_eq!(code_reason(&e), (422, "Invalid".into()), "{what}: {e:?}");
        let got = causes(&e);
        assert!(
            got.contains(&(field.to_string(), reason.to_string())),
            "{what}: want ({field}, {reason}) in {got:?} ({:?})",
            status(&e).message
        );
    }
    // The exact wording of two of them.
    let e = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_with(
                "p10",
                ctr(json!({"ports": [{"name": "a-very-long-port-name", "containerPort": 80}]})),
                json!({}),
            ))
            .expect("pod"),
        )
        .await
        .expect_err("long port name");
    assert_eq!(
        status(&e).message,
        "Pod \"p10\" is invalid: spec.containers[0].ports[0].name: Invalid value: \"a-very-long-port-name\": must be no more than 15 characters"
    );
    let e = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_with("p11", ctr(json!({"name": "Bad_Name"})), json!({})))
                .expect("pod"),
        )
        .await
        .expect_err("bad container name");
    assert_eq!(
        status(&e).message,
        "Pod \"p11\" is invalid: spec.containers[0].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    );
    // A negative grace period is not refused: the apiserver raises it to 1.
    let p = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_with(
                "p13",
                ctr(json!({})),
                json!({"terminationGracePeriodSeconds": -1}),
            ))
            .expect("pod"),
        )
        .await
        .expect("negative grace period");
    assert_eq!(
        p.spec.and_then(|s| s.termination_grace_period_seconds),
        Some(1)
    );
    // Since v1.34 (RelaxedEnvironmentVariableValidation) names like `1BAD` are valid.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod_with(
            "p12",
            ctr(json!({"env": [{"name": "1BAD.name-ok", "value": "x"}]})),
            json!({}),
        ))
        .expect("pod"),
    )
    .await
    .expect("relaxed env var names");
}

/// A quantity that does not parse fails decoding: 400, not 422.
#[tokio::test]
async fn unparseable_quantity_is_a_bad_request() {
    let c = cluster().await;
    let path = format!("/api/v1/namespaces/{}/pods", c.namespace());
    let body = pod_with(
        "q",
        ctr(json!({"resources": {"requests": {"cpu": "abc"}}})),
        json!({}),
    );
    let e = raw(
        &c,
        "POST",
        &path,
        Some("application/json"),
        serde_json::to_vec(&body).expect("json"),
    )
    .await
    .expect_err("cpu: abc");
    assert_eq!(code_reason(&e), (400, "BadRequest".into()));
    assert!(
        status(&e)
            .message
            .contains("quantities must match the regular expression"),
        "{:?}",
        status(&e).message
    );
}

// ─────────────────────── (5) Leases ───────────────────────

#[tokio::test]
async fn leases_need_a_resource_version_to_update_and_a_positive_duration() {
    let c = cluster().await;
    let api: Api<Lease> = Api::namespaced(c.client(), c.namespace());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    // Leases do not allow unconditional updates.
    let mut put = created.clone();
    put.metadata.resource_version = None;
    let e = api
        .replace("l", &PostParams::default(), &put)
        .await
        .expect_err("PUT without a resourceVersion");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    assert_eq!(
        causes(&e),
        [(
            "metadata.resourceVersion".to_string(),
            "FieldValueInvalid".to_string()
        )]
    );
    // Named by resource, not kind: the registry builds GroupKind{Kind: resource}.
    assert_eq!(
        status(&e).message,
        "leases.coordination.k8s.io \"l\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
    );
    let mut bad = lease.clone();
    bad.metadata.name = Some("zero".into());
    bad.spec.as_mut().expect("spec").lease_duration_seconds = Some(0);
    let e = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("leaseDurationSeconds 0");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    assert_eq!(
        status(&e).message,
        "Lease.coordination.k8s.io \"zero\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
}

// ─────────────────────── (6) Events ───────────────────────

fn event_v1(name: &str, ns: &str, extra: Value) -> Value {
    let mut ev = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "conformance.workpool.dev/test",
        "reportingInstance": "test-1",
        "action": "Testing", "reason": "Tested", "type": "Normal", "note": "hello",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "namespace": ns},
    });
    if let (Some(m), Some(extra)) = (ev.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    ev
}

#[tokio::test]
async fn events_v1_are_validated_like_the_apiserver() {
    let c = cluster().await;
    let ns = c.namespace().to_string();
    let path = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
    let post = |body: Value| {
        let c = &c;
        let path = path.clone();
        async move {
            raw(
                c,
                "POST",
                &path,
                Some("application/json"),
                serde_json::to_vec(&body).expect("json"),
            )
            .await
        }
    };
    post(event_v1("ok", &ns, json!({})))
        .await
        .expect("a complete event is accepted");
    let e = post(event_v1(
        "no-controller",
        &ns,
        json!({"reportingController": null, "action": null}),
    ))
    .await
    .expect_err("reportingController and action are required");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    let got = causes(&e);
    for field in ["reportingController", "action"] {
        assert!(
            got.contains(&(field.to_string(), "FieldValueRequired".to_string())),
            "{field} required: {got:?}"
        );
    }
    let e = post(event_v1(
        "long-note",
        &ns,
        json!({"note": "n".repeat(1025)}),
    ))
    .await
    .expect_err("note over 1024 bytes");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    assert!(
        status(&e)
            .message
            .contains("can have at most 1024 characters"),
        "{:?}",
        status(&e).message
    );
    let e = post(event_v1("no-time", &ns, json!({"eventTime": null})))
        .await
        .expect_err("eventTime is required");
    assert!(
        causes(&e).contains(&("eventTime".to_string(), "FieldValueRequired".to_string())),
        "{e:?}"
    );
    let e = post(event_v1("bad-type", &ns, json!({"type": "Fatal"})))
        .await
        .expect_err("type must be Normal or Warning");
    assert!(
        causes(&e).contains(&("type".to_string(), "FieldValueInvalid".to_string())),
        "{e:?}"
    );
}

// ─────────────────────── (10) RBAC objects ───────────────────────

/// RBAC manifests apply and read back; role references are immutable (enforcement:
/// `tests/controlplane.rs`, `tests/operator_rbac.rs`).
#[tokio::test]
async fn rbac_objects_are_stored_and_role_refs_are_immutable() {
    let c = cluster().await;
    let ns = c.namespace().to_string();
    let roles: Api<Role> = Api::namespaced(c.client(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(c.client(), &ns);
    let cluster_roles: Api<ClusterRole> = Api::all(c.client());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(c.client());
    let pp = PostParams::default();
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]);
    roles
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "reader"}, "rules": rules}))
                .expect("role"),
        )
        .await
        .expect("create Role");
    let subject = json!([{"kind": "ServiceAccount", "name": "default", "namespace": ns}]);
    bindings
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": subject,
            }))
            .expect("binding"),
        )
        .await
        .expect("create RoleBinding");
    // Cluster-wide names of their own (a real cluster is shared by parallel tests).
    let cr_name = format!("{ns}-reader");
    cluster_roles
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": cr_name}, "rules": rules}))
                .expect("cluster role"),
        )
        .await
        .expect("create ClusterRole");
    c.delete_on_drop(&format!(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/{cr_name}"
    ));
    cluster_bindings
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": cr_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cr_name},
                "subjects": subject,
            }))
            .expect("cluster binding"),
        )
        .await
        .expect("create ClusterRoleBinding");
    c.delete_on_drop(&format!(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{cr_name}"
    ));
    let got = roles.get("reader").await.expect("get Role");
    assert_eq!(
        got.rules.unwrap_or_default()[0].verbs,
        vec!["get".to_string(), "list".to_string()]
    );
    cluster_bindings
        .get(&cr_name)
        .await
        .expect("get ClusterRoleBinding");
    // A binding's roleRef cannot change.
    let e = bindings
        .patch(
            "reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"roleRef": {"name": "other"}})),
        )
        .await
        .expect_err("roleRef is immutable");
    assert_eq!(code_reason(&e), (422, "Invalid".into()));
    assert!(
        causes(&e).contains(&("roleRef".to_string(), "FieldValueInvalid".to_string())),
        "{e:?}"
    );
}

// ─────────────────────── (11) scheduling against allocatable ───────────────────────

/// The scheduler binds only pods that fit a node (NodeResourcesFit): a pod asking for
/// 500 CPUs stays Pending as Unschedulable with the scheduler's reason, a small one is
/// bound. On the local control plane the pods go to its real node.
#[tokio::test]
async fn pods_that_do_not_fit_the_node_are_not_scheduled() {
    let c = cluster().await;
    if !c.is_external() {
        c.shared_node().await.expect("the real node");
    }
    let pods: Api<Pod> = Api::namespaced(c.client(), c.namespace());
    let pod = |name: &str, cpu: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": PROBE_IMAGE,
                                     "args": ["sleep"],
                                     "resources": {"requests": {"cpu": cpu}}}],
                     "terminationGracePeriodSeconds": 0},
        }))
        .expect("pod")
    };
    pods.create(&PostParams::default(), &pod("huge", "500"))
        .await
        .expect("create huge");
    eventually("the huge pod is marked Unschedulable", || async {
        let p = pods.get("huge").await.expect("get");
        p.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|cond| {
                cond.type_ == "PodScheduled"
                    && cond.status == "False"
                    && cond.reason.as_deref() == Some("Unschedulable")
                    && cond
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("Insufficient cpu"))
            })
    })
    .await;
    pods.create(&PostParams::default(), &pod("small", "100m"))
        .await
        .expect("create small");
    eventually("the small pod is bound", || async {
        pods.get("small")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.node_name)
            .is_some()
    })
    .await;
    let huge = pods.get("huge").await.expect("get huge");
    assert_eq!(huge.spec.and_then(|s| s.node_name), None, "still unbound");
    pods.delete("small", &DeleteParams::default())
        .await
        .expect("delete small");
}

/// A running pod's log, whole and its last line, as the API server fetches it from the
/// kubelet of the real node.
#[tokio::test]
async fn pod_log_of_a_running_pod_comes_from_its_node() {
    let c = cluster().await;
    if c.is_external() {
        eprintln!(
            "skipped: pod_log_of_a_running_pod_comes_from_its_node runs the probe image, which only the local real node has"
        );
        return;
    }
    c.shared_node().await.expect("the real node");
    let pods: Api<Pod> = Api::namespaced(c.client(), c.namespace());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "talker"},
        "spec": {"terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": PROBE_IMAGE,
                                 "args": ["say", "hello", "world"]}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    eventually("the container wrote its two lines", || async {
        pods.logs("talker", &LogParams::default())
            .await
            .is_ok_and(|l| l == "hello\nworld\n")
    })
    .await;
    let tail = pods
        .logs(
            "talker",
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .expect("tail");
    assert_eq!(tail, "world\n");
    pods.delete("talker", &DeleteParams::default())
        .await
        .expect("delete");
}
