//! The Kubernetes API as kube-rs 5 (Api, watcher, Controller) sees it, on the real control
//! plane: what the operator's code relies on (CRUD, selectors, watches, subresources,
//! finalizers, garbage collection, server-side apply, CR validation, events).
//!
//! The same tests run against another real cluster when `WORKPOOL_E2E_KUBECONFIG` points
//! at one (`tests/kind/`): each test works in its own namespace (`TestCluster::namespace`,
//! deleted at the end).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use workpool_tests::cluster::{ClusterOptions, TestCluster};

fn options() -> ClusterOptions {
    ClusterOptions::with_fixtures()
}

async fn cluster() -> TestCluster {
    TestCluster::start_with(options())
        .await
        .expect("test cluster starts")
}

/// Long enough for a real cluster's controllers (garbage collector, namespace
/// controller).
const SETTLE: Duration = Duration::from_secs(90);

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

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("valid configmap")
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

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

#[tokio::test]
async fn crud_generate_name_conflict_and_not_found() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    let created = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    // AlreadyExists
    let e = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .expect_err("dup");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
            assert_eq!(s.message, "configmaps \"a\" already exists");
        }
        other => panic!("unexpected {other:?}"),
    }
    // generateName
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = api
        .create(&PostParams::default(), &g)
        .await
        .expect("generateName");
    let n = made.metadata.name.expect("named");
    assert!(n.starts_with("gen-") && n.len() == 9, "{n}");
    // Replace with the current version succeeds, with a stale one is a 409 Conflict.
    let mut upd = created.clone();
    upd.data = Some([("k".to_string(), "v2".to_string())].into());
    let upd2 = api
        .replace("a", &PostParams::default(), &upd)
        .await
        .expect("replace");
    assert_ne!(upd2.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let e = api
        .replace("a", &PostParams::default(), &upd)
        .await
        .expect_err("stale");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                s.message,
                "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // NotFound
    let e = api.get("nope").await.expect_err("404");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "configmaps \"nope\" not found");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A namespace that does not exist.
    let ghost = format!("{}-ghost", c.namespace());
    let other: Api<ConfigMap> = Api::namespaced(c.client(), &ghost);
    let e = other
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .expect_err("no ns");
    assert_eq!(api_code(&e), Some(404));
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    // A real cluster puts `kube-root-ca.crt` in every namespace:
    // unselected lists are compared without what was there before the test.
    let before: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    for (i, tier) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let labels = if i % 2 == 0 {
            json!({"tier": tier, "even": "yes"})
        } else {
            json!({"tier": tier})
        };
        api.create(&PostParams::default(), &cm(&format!("cm{i}"), labels))
            .await
            .expect("create");
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .filter(|n| !before.contains(n))
            .collect()
    };
    let lp = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(api.list(&lp("even=yes")).await.expect("list")),
        ["cm0", "cm2", "cm4"]
    );
    assert_eq!(
        names(api.list(&lp("even!=yes")).await.expect("list")),
        ["cm1", "cm3"]
    );
    assert_eq!(
        names(api.list(&lp("tier in (a,b)")).await.expect("list")),
        ["cm0", "cm1"]
    );
    assert_eq!(
        names(api.list(&lp("tier notin (a,b),!even")).await.expect("list")),
        ["cm3"]
    );
    assert_eq!(names(api.list(&lp("even")).await.expect("list")).len(), 3);
    let fs = ListParams::default().fields("metadata.name=cm3");
    assert_eq!(names(api.list(&fs).await.expect("list")), ["cm3"]);
    let bad = ListParams::default().fields("data.k=v");
    assert_eq!(
        api_code(&api.list(&bad).await.expect_err("unsupported field")),
        Some(400)
    );
    // Pagination.
    let first = api
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("continue token");
    // Names sort before `kube-root-ca.crt`: the first pages hold only the test's objects.
    assert_eq!(names(first.clone()), ["cm0", "cm1"]);
    assert_eq!(
        first.metadata.remaining_item_count,
        Some(3 + i64::try_from(before.len()).expect("small"))
    );
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(names(second.clone()), ["cm2", "cm3"]);
    assert!(first.metadata.resource_version.is_some());
    // With a selector the apiserver cannot count what remains, so it says nothing.
    let selected = api
        .list(&lp("even").limit(1))
        .await
        .expect("selected page 1");
    assert!(selected.metadata.continue_.is_some());
    assert_eq!(selected.metadata.remaining_item_count, None);
    // deletecollection with a label selector.
    api.delete_collection(&DeleteParams::default(), &lp("even=yes"))
        .await
        .expect("deletecollection");
    assert_eq!(
        names(api.list(&ListParams::default()).await.expect("list")),
        ["cm1", "cm3"]
    );
}

#[tokio::test]
async fn watch_events_bookmarks_and_resume() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    let start = api.list(&ListParams::default()).await.expect("list");
    let rv0 = start.metadata.resource_version.expect("rv");
    let a = api
        .create(&PostParams::default(), &cm("w", json!({"x": "1"})))
        .await
        .expect("create");
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .expect("patch");
    api.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    // Resume from before the changes: ADDED, MODIFIED, DELETED in order.
    let mut s = api
        .watch(&WatchParams::default().timeout(2), &rv0)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    while let Some(ev) = s.try_next().await.expect("event") {
        match ev {
            WatchEvent::Added(o) => seen.push(("ADDED", o.metadata.name)),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.metadata.name)),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.metadata.name)),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    let w = Some("w".to_string());
    assert_eq!(
        seen,
        vec![
            ("ADDED", w.clone()),
            ("MODIFIED", w.clone()),
            ("DELETED", w)
        ]
    );
    assert!(a.metadata.uid.is_some());
    // Selector transitions: an object leaving the selector is DELETED for that watcher.
    api.create(&PostParams::default(), &cm("sel", json!({"x": "1"})))
        .await
        .expect("create");
    let now = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut s = api
        .watch(&WatchParams::default().labels("x=1").timeout(2), &now)
        .await
        .expect("watch")
        .boxed();
    api.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "2"}}})),
    )
    .await
    .expect("relabel");
    // (A real apiserver may send a bookmark shortly before a short watch times out.)
    let ev = loop {
        match s.try_next().await.expect("event") {
            Some(WatchEvent::Bookmark(_)) => continue,
            other => break other,
        }
    };
    match ev {
        Some(WatchEvent::Deleted(o)) => assert_eq!(o.metadata.name.as_deref(), Some("sel")),
        other => panic!("expected DELETED, got {other:?}"),
    }
}

/// WatchList (sendInitialEvents) as kube-rs streaming lists use it (on a real cluster
/// this needs the `WatchList` feature gate, on by default in 1.32; `tests/kind/` sets it).
#[tokio::test]
async fn streaming_list() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    let before: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    for n in ["after", "before", "live"] {
        api.create(&PostParams::default(), &cm(n, json!({})))
            .await
            .expect("create");
    }
    let s = watcher::watcher(api.clone(), watcher::Config::default().streaming_lists());
    let mut s = s.boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event in time")
        {
            Some(Ok(Event::InitApply(o))) => {
                let n = o.metadata.name.unwrap_or_default();
                if !before.contains(&n) {
                    names.push(n);
                }
            }
            Some(Ok(Event::InitDone)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("streaming list failed: {e}"),
            None => panic!("stream ended"),
        }
    }
    names.sort();
    assert_eq!(names, ["after", "before", "live"]);
}

#[tokio::test]
async fn status_subresource_generation_and_scale() {
    let c = cluster().await;
    let api = widgets(&c);
    let w = api
        .create(
            &PostParams::default(),
            &widget(
                "w",
                json!({"replicas": 2, "minReplicas": 0, "maxReplicas": 5}),
            ),
        )
        .await
        .expect("create");
    assert_eq!(w.metadata.generation, Some(1));
    // Status on create is dropped (status subresource enabled).
    // Main-resource writes ignore status.
    let mut m = w.clone();
    m.data["status"] = json!({"replicas": 9});
    let m2 = api
        .replace("w", &PostParams::default(), &m)
        .await
        .expect("replace");
    assert!(
        m2.data
            .get("status")
            .is_none_or(|s| s.get("replicas").is_none()),
        "{:?}",
        m2.data
    );
    assert_eq!(
        m2.metadata.generation,
        Some(1),
        "no spec change, no generation bump"
    );
    // Status writes change only status.
    let s = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"replicas": 2, "selector": "app=w"}, "spec": {"replicas": 100}}),
            ),
        )
        .await
        .expect("status patch");
    assert_eq!(s.data["status"]["replicas"], 2);
    assert_eq!(s.data["spec"]["replicas"], 2);
    assert_eq!(s.metadata.generation, Some(1));
    // Spec change bumps generation.
    let g = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(g.metadata.generation, Some(2));
    // A no-op patch keeps the resourceVersion.
    let same = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("noop patch");
    assert_eq!(same.metadata.resource_version, g.metadata.resource_version);
    // Scale subresource.
    let sc = api.get_scale("w").await.expect("get scale");
    assert_eq!(sc.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(sc.status.as_ref().map(|s| s.replicas), Some(2));
    assert_eq!(
        sc.status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .as_deref(),
        Some("app=w")
    );
    api.patch_scale(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("patch scale");
    let after = api.get("w").await.expect("get");
    assert_eq!(after.data["spec"]["replicas"], 4);
    assert_eq!(after.metadata.generation, Some(3));
}

#[tokio::test]
async fn strategic_merge_patch_is_refused_for_custom_resources() {
    let c = cluster().await;
    let api = widgets(&c);
    api.create(&PostParams::default(), &widget("w", json!({"replicas": 1})))
        .await
        .expect("create");
    let e = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect_err("415");
    assert_eq!(api_code(&e), Some(415));
    let e = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "test", "path": "/spec/replicas", "value": 7}]),
                )
                .expect("patch"),
            ),
        )
        .await
        .expect_err("failed test op");
    assert_eq!(api_code(&e), Some(422));
}

#[tokio::test]
async fn finalizers_and_deletion_timestamp() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    let mut o = cm("f", json!({}));
    o.metadata.finalizers = Some(vec!["conformance.workpool.dev/hold".into()]);
    api.create(&PostParams::default(), &o)
        .await
        .expect("create");
    let r = api
        .delete("f", &DeleteParams::default())
        .await
        .expect("delete");
    let kept = r.left().expect("object kept while finalizers remain");
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert_eq!(kept.metadata.deletion_grace_period_seconds, Some(0));
    // New finalizers cannot be added while deleting.
    let e = api
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["conformance.workpool.dev/hold", "x/y"]}}),
            ),
        )
        .await
        .expect_err("forbidden");
    assert_eq!(api_code(&e), Some(422));
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert_eq!(api_code(&api.get("f").await.expect_err("gone")), Some(404));
    // Preconditions.
    let made = api
        .create(&PostParams::default(), &cm("p", json!({})))
        .await
        .expect("create");
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_code(&api.delete("p", &dp).await.expect_err("precondition")),
        Some(409)
    );
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: made.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let gone = api.delete("p", &dp).await.expect("delete");
    assert!(
        gone.is_right(),
        "configmaps answer a Status on immediate delete"
    );
}

#[tokio::test]
async fn pod_binding_and_graceful_deletion() {
    let c = cluster().await;
    let ns = c.namespace().to_string();
    let pods: Api<Pod> = Api::default_namespaced(c.client());
    // No scheduler serves this name: on a real cluster too the pod stays unbound until
    // the test binds it (to a node that does not exist, so no kubelet runs it).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"schedulerName": NO_SCHEDULER, "terminationGracePeriodSeconds": 7,
            "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    let made = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let st = made.status.clone().expect("status");
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(
        made.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
        Some("Always")
    );
    let tolerations = made
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    assert_eq!(
        tolerations.len(),
        2,
        "DefaultTolerationSeconds: {tolerations:?}"
    );
    // ServiceAccount admission.
    let no_sa: Pod = serde_json::from_value(json!({"metadata": {"name": "nosa"},
        "spec": {"schedulerName": NO_SCHEDULER, "serviceAccountName": "missing", "containers": [{"name": "c", "image": "busybox"}]}}))
    .expect("pod");
    match pods
        .create(&PostParams::default(), &no_sa)
        .await
        .expect_err("no SA")
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                format!(
                    "pods \"nosa\" is forbidden: error looking up service account {ns}/missing: serviceaccount \"missing\" not found"
                )
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Invalid pod: 422 with causes.
    let bad: Pod =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"containers": []}}))
            .expect("pod");
    match pods
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid")
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert_eq!(
                s.message,
                "Pod \"bad\" is invalid: spec.containers: Required value"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Binding.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let req = http_request(
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods/p/binding"),
        &binding,
    );
    let _: Value = c.client().request(req).await.expect("bind");
    let bound = pods.get("p").await.expect("get");
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-1")
    );
    let again = http_request(
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods/p/binding"),
        &binding,
    );
    let e = c
        .client()
        .request::<Value>(again)
        .await
        .expect_err("already bound");
    assert_eq!(api_code(&e), Some(409));
    // Spec is immutable apart from images.
    let e = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"restartPolicy": "Never"}})),
        )
        .await
        .expect_err("immutable");
    assert_eq!(api_code(&e), Some(422));
    // Graceful deletion keeps a bound pod with deletionTimestamp.
    let r = pods
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let kept = r.left().expect("pod kept");
    assert_eq!(kept.metadata.deletion_grace_period_seconds, Some(7));
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert!(pods.get("p").await.is_ok());
    // The kubelet's final delete with grace 0 removes it.
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("final delete");
    assert_eq!(api_code(&pods.get("p").await.expect_err("gone")), Some(404));
    // Unbound pods go at once.
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create again");
    let r = pods
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(r.is_left(), "pods return the deleted object");
    assert_eq!(api_code(&pods.get("p").await.expect_err("gone")), Some(404));
}

/// A scheduler name nothing serves: pods using it stay Pending and unbound.
const NO_SCHEDULER: &str = "workpool-conformance-no-scheduler";

fn http_request(method: &str, path: &str, body: &Value) -> axum::http::Request<Vec<u8>> {
    axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("json"))
        .expect("request")
}

#[tokio::test]
async fn garbage_collection_background_foreground_orphan() {
    let c = cluster().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.client());
    let secrets: Api<Secret> = Api::default_namespaced(c.client());
    let owner_of = |o: &ConfigMap, name: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid,
            "blockOwnerDeletion": true}]}, "stringData": {"a": "b"}}))
        .expect("secret")
    };
    for mode in ["bg", "fg", "orphan"] {
        let owner = cms
            .create(&PostParams::default(), &cm(mode, json!({})))
            .await
            .expect("owner");
        let dep = secrets
            .create(
                &PostParams::default(),
                &owner_of(&owner, &format!("{mode}-dep")),
            )
            .await
            .expect("dependent");
        assert_eq!(
            dep.data.as_ref().map(|d| d.len()),
            Some(1),
            "stringData folded into data"
        );
    }
    cms.delete("bg", &DeleteParams::background())
        .await
        .expect("delete bg");
    eventually("background cascade", || async {
        secrets.get_opt("bg-dep").await.ok().flatten().is_none()
    })
    .await;

    let r = cms
        .delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete fg");
    let kept = r.left().expect("owner kept during foreground deletion");
    assert!(
        kept.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    eventually("foreground cascade", || async {
        secrets.get_opt("fg-dep").await.ok().flatten().is_none()
            && cms.get_opt("fg").await.ok().flatten().is_none()
    })
    .await;

    cms.delete("orphan", &DeleteParams::orphan())
        .await
        .expect("delete orphan");
    eventually("owner gone", || async {
        cms.get_opt("orphan").await.ok().flatten().is_none()
    })
    .await;
    let dep = secrets
        .get("orphan-dep")
        .await
        .expect("orphaned dependent survives");
    assert!(dep.metadata.owner_references.unwrap_or_default().is_empty());

    // Namespace deletion removes the content, then the namespace.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    let tmp = format!("{}-tmp", c.namespace());
    c.adopt_namespace(&tmp);
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": tmp}})).expect("ns"),
    )
    .await
    .expect("ns");
    let in_tmp: Api<ConfigMap> = Api::namespaced(c.client(), &tmp);
    in_tmp
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .expect("create in ns");
    nss.delete(&tmp, &DeleteParams::default())
        .await
        .expect("delete ns");
    let e = in_tmp
        .create(&PostParams::default(), &cm("y", json!({})))
        .await
        .map(|_| ())
        .err();
    // Either still terminating (403) or already gone (404).
    assert!(
        matches!(e.as_ref().and_then(api_code), Some(403) | Some(404)),
        "{e:?}"
    );
    eventually("namespace gone", || async {
        nss.get_opt(&tmp).await.ok().flatten().is_none()
    })
    .await;
}

#[tokio::test]
async fn controller_reconciles_widgets() {
    let c = cluster().await;
    let api = widgets(&c);
    let ctx = Arc::new(api.clone());
    let ctl = Controller::new_with(api.clone(), watcher::Config::default(), widget_ar())
        .run(
            |w: Arc<DynamicObject>, api: Arc<Api<DynamicObject>>| async move {
                let name = w.metadata.name.clone().unwrap_or_default();
                let generation = w.metadata.generation.unwrap_or(0);
                let replicas = w.data["spec"]["replicas"].clone();
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"replicas": replicas, "observedGeneration": generation}}),
                    ),
                )
                .await?;
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_w, _e, _ctx| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| async {});
    let task = tokio::spawn(ctl);
    api.create(&PostParams::default(), &widget("r", json!({"replicas": 3})))
        .await
        .expect("create");
    eventually("status.replicas == 3", || async {
        api.get("r")
            .await
            .is_ok_and(|w| w.data["status"]["replicas"] == 3)
    })
    .await;
    api.patch(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 6}})),
    )
    .await
    .expect("patch");
    eventually("status follows spec", || async {
        api.get("r").await.is_ok_and(|w| {
            w.data["status"]["replicas"] == 6 && w.data["status"]["observedGeneration"] == 2
        })
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn events_both_views_and_leases() {
    let c = cluster().await;
    let ev: Api<EventV1> = Api::default_namespaced(c.client());
    let e: EventV1 = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "p", "namespace": c.namespace()}, "note": "hello",
        "reason": "Testing", "type": "Normal", "action": "Test", "reportingController": "conformance",
        "reportingInstance": "conformance-1"
    }))
    .expect("event");
    ev.create(&PostParams::default(), &e)
        .await
        .expect("create events.k8s.io/v1 event");
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(c.client());
    let got = core.get("e1").await.expect("core view");
    assert_eq!(got.message.as_deref(), Some("hello"));
    assert_eq!(got.involved_object.name.as_deref(), Some("p"));
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=p,reason=Testing"))
        .await
        .expect("field selector");
    assert_eq!(found.items.len(), 1);
    let leases: Api<Lease> = Api::default_namespaced(c.client());
    let l: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).expect("lease");
    let made = leases
        .create(&PostParams::default(), &l)
        .await
        .expect("lease");
    let mut stale = made.clone();
    let mut newer = made.clone();
    newer.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &newer)
        .await
        .expect("take over");
    stale.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    assert_eq!(
        api_code(
            &leases
                .replace("leader", &PostParams::default(), &stale)
                .await
                .expect_err("stale")
        ),
        Some(409)
    );
}

/// Server-side apply: creates when absent, conflicts between managers
/// are 409 with FieldManagerConflict causes, `force` takes ownership.
#[tokio::test]
async fn server_side_apply_conflicts() {
    let c = cluster().await;
    let api = widgets(&c);
    let w = widget("a", json!({"replicas": 1, "size": "small"}));
    api.patch("a", &PatchParams::apply("alice"), &Patch::Apply(&w))
        .await
        .expect("apply creates");
    let w2 = widget("a", json!({"replicas": 5}));
    let e = api
        .patch("a", &PatchParams::apply("bob"), &Patch::Apply(&w2))
        .await
        .expect_err("conflict");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                s.message,
                "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let forced = api
        .patch("a", &PatchParams::apply("bob").force(), &Patch::Apply(&w2))
        .await
        .expect("force");
    assert_eq!(forced.data["spec"]["replicas"], 5);
    assert_eq!(
        forced.data["spec"]["size"], "small",
        "alice still owns size"
    );
    // Conflicts with an Update manager name its API version; several are grouped.
    let pp = PostParams {
        field_manager: Some("creator".into()),
        ..Default::default()
    };
    api.create(&pp, &widget("b", json!({"replicas": 1, "size": "small"})))
        .await
        .expect("create b");
    let e = api
        .patch(
            "b",
            &PatchParams::apply("bob"),
            &Patch::Apply(&widget("b", json!({"replicas": 2, "size": "large"}))),
        )
        .await
        .expect_err("conflicts");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(
                s.message,
                "Apply failed with 2 conflicts: conflicts with \"creator\" using conformance.workpool.dev/v1:\n- .spec.replicas\n- .spec.size"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = api
        .patch("a", &PatchParams::default(), &Patch::Apply(&w2))
        .await
        .expect_err("fieldManager required");
    assert_eq!(api_code(&e), Some(422));
}

/// CR writes are pruned, defaulted and validated (OpenAPI + CEL).
#[tokio::test]
async fn custom_resource_validation_and_defaults() {
    let c = cluster().await;
    let api = widgets(&c);
    let made = api
        .create(&PostParams::default(), &widget("d", json!({"unknown": 1})))
        .await
        .expect("create");
    assert_eq!(
        made.data["spec"]["replicas"], 1,
        "default applied: {:?}",
        made.data
    );
    assert_eq!(made.data["spec"]["size"], "small");
    assert!(
        made.data["spec"].get("unknown").is_none(),
        "unknown field pruned"
    );
    let e = api
        .create(
            &PostParams::default(),
            &widget("bad", json!({"size": "huge"})),
        )
        .await
        .expect_err("invalid enum");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert_eq!(
                s.message,
                // As the real apiserver: CEL rules are skipped once the schema fails.
                "Widget.conformance.workpool.dev \"bad\" is invalid: [spec.size: Unsupported value: \"huge\": supported values: \"small\", \"medium\", \"large\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
            );
            let causes = s
                .details
                .as_ref()
                .map(|d| d.causes.clone())
                .unwrap_or_default();
            assert_eq!(causes.len(), 2, "{causes:?}");
            assert_eq!(causes[0].field, "spec.size");
            assert_eq!(causes[0].reason, "FieldValueNotSupported");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = api
        .create(
            &PostParams::default(),
            &widget("bad", json!({"minReplicas": 5, "maxReplicas": 2})),
        )
        .await
        .expect_err("invalid CEL");
    match &e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert_eq!(
                s.message,
                "Widget.conformance.workpool.dev \"bad\" is invalid: spec: Invalid value: minReplicas must not exceed maxReplicas"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = api
        .create(
            &PostParams::default(),
            &widget("bad", json!({"replicas": -1})),
        )
        .await
        .expect_err("minimum");
    assert_eq!(api_code(&e), Some(422));
}

#[tokio::test]
async fn builtins_drop_unknown_fields_and_reject_wrong_types() {
    let c = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.client());
    let raw: Api<DynamicObject> = Api::default_namespaced_with(
        c.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        ),
    );
    let with_unknown: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"},
        "data": {"a": "b"}, "bogus": {"x": 1}
    }))
    .expect("object");
    let made = raw
        .create(&PostParams::default(), &with_unknown)
        .await
        .expect("warn, not fail");
    assert!(
        made.data.get("bogus").is_none(),
        "unknown field dropped: {:?}",
        made.data
    );
    assert_eq!(
        api.get("u")
            .await
            .expect("get")
            .data
            .unwrap_or_default()
            .get("a")
            .map(String::as_str),
        Some("b")
    );
    let two_controllers: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "o",
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "1", "controller": true},
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "2", "controller": true}]}}))
    .expect("configmap");
    let e = api
        .create(&PostParams::default(), &two_controllers)
        .await
        .expect_err("two controllers");
    assert_eq!(api_code(&e), Some(422), "{e:?}");
    let wrong: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}, "data": {"a": 1}
    }))
    .expect("object");
    match raw
        .create(&PostParams::default(), &wrong)
        .await
        .expect_err("wrong type")
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
            assert!(
                s.message
                    .starts_with("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: "),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn crd_established(crd: &Crd) -> bool {
    let conds = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    ["Established", "NamesAccepted"]
        .iter()
        .all(|t| conds.iter().any(|c| c.type_ == *t && c.status == "True"))
}

/// A CRD of the test's own (group `<namespace>.conformance.workpool.dev`), so that
/// changing and deleting it cannot disturb other tests sharing a real cluster.
#[tokio::test]
async fn crd_lifecycle_and_discovery() {
    let c = cluster().await;
    let crds: Api<Crd> = Api::all(c.client());
    let fixture = crds
        .get("widgets.conformance.workpool.dev")
        .await
        .expect("fixture CRD");
    assert!(crd_established(&fixture), "{:?}", fixture.status);
    let group = format!("{}.conformance.workpool.dev", c.namespace());
    let name = format!("gizmos.{group}");
    let bad_name = format!("gadgets.{group}");
    for n in [&name, &bad_name] {
        c.delete_on_drop(&format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}"
        ));
    }
    let gizmo_crd: Crd = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "listKind": "GizmoList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "string", "default": "small"},
                        "note": {"type": "string"}}}}}}}]}
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &gizmo_crd)
        .await
        .expect("create CRD");
    eventually("CRD Established and NamesAccepted", || async {
        crds.get(&name).await.is_ok_and(|c| crd_established(&c))
    })
    .await;
    let gizmos: Api<DynamicObject> = Api::namespaced_with(
        c.client(),
        c.namespace(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Gizmo"), "gizmos"),
    );
    let x: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gizmo", "metadata": {"name": "x"}, "spec": {}
    }))
    .expect("gizmo");
    let made = gizmos
        .create(&PostParams::default(), &x)
        .await
        .expect("create gizmo");
    assert_eq!(made.data["spec"]["size"], "small");
    assert!(made.data["spec"].get("note").is_none(), "{:?}", made.data);
    // An invalid CRD is refused with 422.
    let bad: Crd = serde_json::from_value(json!({
        "metadata": {"name": bad_name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-validations": [{"rule": "self.nope >"}]}}}}}]}
    }))
    .expect("crd");
    let e = crds
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid CRD");
    assert_eq!(api_code(&e), Some(422), "{e:?}");
    // Defaults added to the CRD later apply when old objects are read.
    let add_default = json!([{"op": "add",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/note/default",
        "value": "n/a"}]);
    let req = axum::http::Request::patch(format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    ))
    .header("content-type", "application/json-patch+json")
    .body(serde_json::to_vec(&add_default).expect("json"))
    .expect("request");
    let _: Value = c.client().request(req).await.expect("add a default");
    // (A real apiserver reloads the CRD's storage asynchronously.)
    eventually("the new default applies on read", || async {
        gizmos
            .get("x")
            .await
            .is_ok_and(|x| x.data["spec"]["note"] == "n/a")
    })
    .await;
    // Deleting the CRD removes its objects and its API (a real apiserver first deletes
    // the objects while the CRD is terminating).
    crds.delete(&name, &DeleteParams::default())
        .await
        .expect("delete CRD");
    eventually("API gone", || async {
        matches!(gizmos.list(&ListParams::default()).await, Err(e) if api_code(&e) == Some(404))
    })
    .await;
    eventually("group gone from discovery", || async {
        let groups: Result<Value, _> = c
            .client()
            .request(
                axum::http::Request::get("/apis")
                    .body(Vec::new())
                    .expect("request"),
            )
            .await;
        groups.is_ok_and(|g| !g.to_string().contains(&group))
    })
    .await;
}

#[tokio::test]
async fn kube_rs_event_recorder() {
    use kube::runtime::events::{Event as RtEvent, EventType, Recorder, Reporter};
    let c = cluster().await;
    let api = widgets(&c);
    let w = api
        .create(&PostParams::default(), &widget("ev", json!({})))
        .await
        .expect("create");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("conformance.workpool.dev/v1".into()),
        kind: Some("Widget".into()),
        name: w.metadata.name.clone(),
        namespace: Some(c.namespace().into()),
        uid: w.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        c.client(),
        Reporter {
            controller: "conformance-controller".into(),
            instance: Some("conformance-0".into()),
        },
    );
    let ev = RtEvent {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some("scaled to 3".into()),
        action: "Scale".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish patches the series");
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(c.client());
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=ev,involvedObject.kind=Widget"))
        .await
        .expect("list");
    assert_eq!(found.items.len(), 1, "{:?}", found.items);
    let e = &found.items[0];
    assert_eq!(e.reason.as_deref(), Some("Scaled"));
    assert_eq!(e.message.as_deref(), Some("scaled to 3"));
    assert_eq!(
        e.reporting_component.as_deref(),
        Some("conformance-controller")
    );
    assert_eq!(e.series.as_ref().and_then(|s| s.count), Some(2));
}

/// The external-cluster mode's cleanup (`TestCluster::connect` is what
/// `WORKPOOL_E2E_KUBECONFIG` selects), checked against a control plane of its own that
/// stands in for the external cluster (the shared one keeps its CRDs): a test body that
/// panics with a finalizer-held object in its namespace leaves no namespace behind, and
/// the fixture CRD it had to create goes with the last such cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_mode_cleans_up_after_a_failing_test() {
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::Namespace;
    if workpool_tests::cluster::external_kubeconfig().is_some() {
        eprintln!(
            "skipped: real_cluster_mode_cleans_up_after_a_failing_test starts a control plane of its own; WORKPOOL_E2E_KUBECONFIG names one"
        );
        return;
    }
    let own = tokio::task::spawn_blocking(|| {
        workpool_tests::controlplane::ControlPlane::start(Default::default())
    })
    .await
    .expect("join")
    .expect("a control plane of its own");
    let kubeconfig = own.admin_kubeconfig().to_path_buf();
    let admin = workpool_tests::cluster::client_for(&kubeconfig)
        .await
        .expect("client");
    let crds: Api<Crd> = Api::all(admin.clone());
    let nss: Api<Namespace> = Api::all(admin);
    let names = std::sync::Mutex::new(Vec::<String>::new());
    let body = async {
        let ext = TestCluster::connect(&kubeconfig, ClusterOptions::with_fixtures())
            .await
            .expect("connect");
        assert!(ext.is_external());
        let ns = ext.namespace().to_string();
        assert!(ns.starts_with("wp-test-"), "{ns}");
        let extra = format!("{ns}-extra");
        ext.adopt_namespace(&extra);
        Api::<Namespace>::all(ext.client())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": extra}})).expect("ns"),
            )
            .await
            .expect("extra namespace");
        let mut held = cm("held", json!({}));
        held.metadata.finalizers = Some(vec!["conformance.workpool.dev/hold".into()]);
        Api::<ConfigMap>::default_namespaced(ext.client())
            .create(&PostParams::default(), &held)
            .await
            .expect("held configmap in the test namespace");
        widgets(&ext)
            .create(&PostParams::default(), &widget("w", json!({})))
            .await
            .expect("widget");
        names.lock().expect("names").extend([ns, extra]);
        panic!("a deliberately failing test body");
    };
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    assert!(outcome.is_err(), "the body panicked");
    let names = names.lock().expect("names").clone();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        eventually(&format!("namespace {n} deleted"), || async {
            nss.get_opt(n).await.ok().flatten().is_none()
        })
        .await;
    }
    eventually("the fixture CRD this run created is deleted", || async {
        crds.get_opt("widgets.conformance.workpool.dev")
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;
}
