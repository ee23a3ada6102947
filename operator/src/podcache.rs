//! The pod cache at scale: what is kept of each pod, and an index from pool to pods.
//!
//! The watch hands the operator whole Pods (spec, every status field, every label and
//! annotation of the user's template, managedFields). The operator caches them as
//! [`CachedPod`]: a Pod type of its own that deserializes only what a reconcile reads
//! (metadata, the containers' names, the phase, the Ready condition, the containers'
//! states), so the rest of each object is skipped by the parser and never held; and
//! [`project`] trims the metadata to what [`observe`](crate::observe) and the controller's
//! owner mapping read. [`PodIndex`] maps each pool to the names of its pods, so a reconcile
//! looks up its own pods instead of scanning the whole cache (10,000 pods for every
//! reconcile of 1,000 pools).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::crd::{API_VERSION, KIND};
use crate::observe::signal;
use crate::pods::{POOL_LABEL, TEMPLATE_HASH_LABEL};

/// A pod as the operator caches it (`v1` `Pod`, only the fields a reconcile reads; the
/// field names are the Pod's, so it reads from the same JSON).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    /// The pod's metadata (trimmed by [`project`]).
    pub metadata: ObjectMeta,
    /// Its containers' names.
    #[serde(default)]
    pub spec: Option<CachedSpec>,
    /// Phase, reason, Ready condition, containers' states.
    #[serde(default)]
    pub status: Option<CachedStatus>,
}

/// `spec`: the containers' names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedSpec {
    /// `containers[].name`.
    #[serde(default)]
    pub containers: Vec<Named>,
}

/// Something with a name (a container).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Named {
    /// The name.
    pub name: String,
}

/// `status`, what a reconcile reads of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedStatus {
    /// `phase`.
    pub phase: Option<String>,
    /// `reason` (`Evicted`).
    pub reason: Option<String>,
    /// `conditions` (only `Ready` is kept by [`project`]).
    pub conditions: Option<Vec<Condition>>,
    /// `containerStatuses`.
    pub container_statuses: Option<Vec<ContainerState>>,
    /// `initContainerStatuses`.
    pub init_container_statuses: Option<Vec<ContainerState>>,
}

/// A pod condition: type and status.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Condition {
    /// `type`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `status` (`True`, `False`, `Unknown`).
    pub status: String,
}

/// A container's status: its name and state.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct ContainerState {
    /// `name`.
    pub name: String,
    /// `state`.
    pub state: Option<State>,
}

/// `state`: which one it is, and a waiting container's reason.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct State {
    /// `running` (its fields are not kept).
    pub running: Option<Present>,
    /// `waiting`.
    pub waiting: Option<Waiting>,
    /// `terminated` (its fields are not kept).
    pub terminated: Option<Present>,
}

/// A state whose fields are not kept.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Present {}

/// `state.waiting`: its reason.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Waiting {
    /// `reason` (`CrashLoopBackOff`, `ContainerCreating`, ...).
    pub reason: Option<String>,
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// The cached form of a whole Pod (tests, fixtures): what the watch would give.
    pub fn from_pod(p: &Pod) -> CachedPod {
        let mut c = serde_json::to_value(p)
            .and_then(serde_json::from_value)
            .unwrap_or_default();
        project(&mut c);
        c
    }
}

/// The labels kept of a pod: the pool's and the template hash.
const KEPT_LABELS: &[&str] = &[POOL_LABEL, TEMPLATE_HASH_LABEL];
/// The annotations kept of a pod: the busy/idle signals.
const KEPT_ANNOTATIONS: &[&str] = &[
    signal::SAFE_TO_EVICT,
    signal::DO_NOT_DISRUPT,
    signal::DELETION_COST,
];

fn kept(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Trims a watched pod's metadata to what the operator reads: name, namespace, uid,
/// resourceVersion, creation and deletion times, the pool and template-hash labels, the
/// busy/idle annotations, the WorkPool owner references (no managedFields, no user
/// labels or annotations); and its conditions to `Ready`.
pub fn project(pod: &mut CachedPod) {
    let m = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        labels: kept(m.labels, KEPT_LABELS),
        annotations: kept(m.annotations, KEPT_ANNOTATIONS),
        owner_references: m.owner_references.map(|refs| {
            refs.into_iter()
                .filter(|o| o.kind == KIND && o.api_version == API_VERSION)
                .map(|o| OwnerReference {
                    api_version: o.api_version,
                    kind: o.kind,
                    name: o.name,
                    uid: o.uid,
                    controller: o.controller,
                    block_owner_deletion: None,
                })
                .collect()
        }),
        ..ObjectMeta::default()
    };
    if let Some(cs) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        cs.retain(|c| c.type_ == "Ready");
    }
}

/// (namespace, pool) of a pod, from its pool label.
fn pool_of(p: &CachedPod) -> Option<(String, String)> {
    let pool = p.metadata.labels.as_ref()?.get(POOL_LABEL)?;
    Some((
        p.metadata.namespace.clone().unwrap_or_default(),
        pool.clone(),
    ))
}

type Index = HashMap<(String, String), HashSet<String>>;

/// Pool -> names of its pods, fed by the pod watch after the reflector (so a name in the
/// index is in the store or on its way out). It may hold names the store has dropped
/// (between a re-list's end and the rebuild that follows it): lookups go through the
/// store, which has the last word. A disabled index (tests that fill a store by hand)
/// makes lookups scan the store.
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Option<Arc<RwLock<Index>>>,
}

impl PodIndex {
    /// An index to feed with [`PodIndex::apply`].
    pub fn new() -> PodIndex {
        PodIndex {
            inner: Some(Arc::default()),
        }
    }

    /// No index: lookups scan the store.
    pub fn disabled() -> PodIndex {
        PodIndex::default()
    }

    /// Follows one watch event the reflector has applied to `store`.
    pub fn apply(&self, event: &watcher::Event<CachedPod>, store: &Store<CachedPod>) {
        let Some(inner) = &self.inner else { return };
        let mut idx = inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                if let (Some(key), Some(name)) = (pool_of(p), p.metadata.name.clone()) {
                    idx.entry(key).or_default().insert(name);
                }
            }
            watcher::Event::Delete(p) => {
                if let (Some(key), Some(name)) = (pool_of(p), p.metadata.name.as_deref()) {
                    let now_empty = idx.get_mut(&key).is_some_and(|names| {
                        names.remove(name);
                        names.is_empty()
                    });
                    if now_empty {
                        idx.remove(&key);
                    }
                }
            }
            watcher::Event::Init => {}
            // A re-list replaced the store: pods deleted while the watch was down left no
            // Delete event, so the index is rebuilt from the store once (O(pods) per
            // re-list, not per reconcile).
            watcher::Event::InitDone => {
                idx.clear();
                for p in store.state() {
                    if let (Some(key), Some(name)) = (pool_of(&p), p.metadata.name.clone()) {
                        idx.entry(key).or_default().insert(name);
                    }
                }
            }
        }
    }

    /// The pods in `store` of pool `name` in `ns` that `keep` accepts.
    pub fn pods_of(
        &self,
        store: &Store<CachedPod>,
        ns: &str,
        name: &str,
        keep: impl Fn(&CachedPod) -> bool,
    ) -> Vec<Arc<CachedPod>> {
        let Some(inner) = &self.inner else {
            return store.state_filter(|p| keep(p));
        };
        let names: Vec<String> = {
            let idx = inner.read().unwrap_or_else(|p| p.into_inner());
            match idx.get(&(ns.to_string(), name.to_string())) {
                Some(names) => names.iter().cloned().collect(),
                None => return Vec::new(),
            }
        };
        names
            .into_iter()
            .filter_map(|n| store.get(&ObjectRef::new(&n).within(ns)))
            .filter(|p| keep(p))
            .collect()
    }

    /// How many pods the index names (tests).
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| {
            i.read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(HashSet::len)
                .sum()
        })
    }

    /// Whether the index names no pod (tests).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::observe_cached;
    use kube::runtime::reflector;
    use serde_json::json;

    fn full_pod_json(name: &str, pool: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "ns", "uid": format!("u-{name}"),
                "resourceVersion": "7",
                "creationTimestamp": "2024-01-01T00:00:01Z",
                "generateName": format!("{pool}-"),
                "labels": {POOL_LABEL: pool, TEMPLATE_HASH_LABEL: "h1", "app": "user-label"},
                "annotations": {signal::SAFE_TO_EVICT: "false", "note": "x".repeat(4000)},
                "ownerReferences": [
                    {"apiVersion": API_VERSION, "kind": KIND, "name": pool, "uid": "pool-uid",
                     "controller": true, "blockOwnerDeletion": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "cm"}],
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                                   "fieldsV1": {"f:status": {"f:phase": {}}}}],
            },
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "sidecar", "image": "s", "env": [{"name": "A", "value": "1"}]},
                    {"name": "worker", "image": "w", "args": ["run"]}],
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.1", "qosClass": "BestEffort",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:02Z"}],
                "containerStatuses": [
                    {"name": "sidecar", "image": "s", "imageID": "sha", "ready": false,
                     "restartCount": 3,
                     "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "long"}}},
                    {"name": "worker", "image": "w", "imageID": "sha", "ready": true,
                     "restartCount": 0,
                     "state": {"running": {"startedAt": "2024-01-01T00:00:02Z"}}}],
            },
        })
    }

    fn cached(v: serde_json::Value) -> CachedPod {
        let mut p: CachedPod = serde_json::from_value(v).expect("cached pod");
        project(&mut p);
        p
    }

    fn full_pod(name: &str, pool: &str) -> CachedPod {
        cached(full_pod_json(name, pool))
    }

    #[test]
    fn the_cached_pod_keeps_what_a_reconcile_reads_and_drops_the_rest() {
        let v = full_pod_json("p-1", "p");
        let whole: Pod = serde_json::from_value(v.clone()).expect("pod");
        let small = cached(v.clone());
        assert_eq!(
            small,
            CachedPod::from_pod(&whole),
            "same from the JSON and from a Pod"
        );
        let seen = observe_cached(&small, "h1", 0).expect("observed");
        assert!(seen.pod.ready && seen.pod.worker_running && seen.pod.current);
        assert_eq!(seen.not_starting.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(seen.signals.safe_to_evict.as_deref(), Some("false"));
        assert_eq!(seen.uid.as_deref(), Some("u-p-1"));
        assert!(
            !observe_cached(&small, "h2", 0)
                .expect("observed")
                .pod
                .current
        );
        let refs = small.metadata.owner_references.as_ref().expect("refs");
        assert_eq!(refs.len(), 1, "only the WorkPool owner is kept");
        assert_eq!(refs[0].controller, Some(true));
        let labels = small.metadata.labels.as_ref().expect("labels");
        assert!(labels.contains_key(POOL_LABEL) && !labels.contains_key("app"));
        assert!(small.metadata.managed_fields.is_none());
        let conditions = small.status.as_ref().and_then(|s| s.conditions.as_ref());
        assert_eq!(conditions.map(Vec::len), Some(1), "only Ready");
        let kept = serde_json::to_vec(&small).expect("json").len();
        let all = serde_json::to_vec(&v).expect("json").len();
        assert!(kept * 5 < all, "kept {kept} bytes of {all}");
        // The in-memory form too: a few hundred bytes, where a k8s-openapi Pod is KiBs
        // before any field is set.
        assert!(std::mem::size_of::<CachedPod>() * 3 < std::mem::size_of::<Pod>());
    }

    #[test]
    fn a_pod_without_spec_or_status_is_cached() {
        let mut v = full_pod_json("p-2", "p");
        v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        v.as_object_mut().expect("object").remove("spec");
        v.as_object_mut().expect("object").remove("status");
        let p = cached(v);
        let seen = observe_cached(&p, "h1", 1_704_067_200_000 + 30_000).expect("observed");
        assert!(seen.pod.terminating && seen.pod.stuck && !seen.pod.worker_running);
    }

    #[test]
    fn the_index_follows_the_watch_and_is_rebuilt_after_a_relist() {
        let (store, mut writer) = reflector::store::<CachedPod>();
        let index = PodIndex::new();
        let feed = |w: &mut reflector::store::Writer<CachedPod>, ev: watcher::Event<CachedPod>| {
            w.apply_watcher_event(&ev);
            index.apply(&ev, &store);
        };
        feed(&mut writer, watcher::Event::Init);
        for (n, pool) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b")] {
            feed(&mut writer, watcher::Event::InitApply(full_pod(n, pool)));
        }
        feed(&mut writer, watcher::Event::InitDone);
        let names = |pool: &str| {
            let mut v: Vec<String> = index
                .pods_of(&store, "ns", pool, |_| true)
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("a"), ["a-1", "a-2"]);
        assert_eq!(names("b"), ["b-1"]);
        feed(&mut writer, watcher::Event::Delete(full_pod("a-1", "a")));
        feed(&mut writer, watcher::Event::Apply(full_pod("b-2", "b")));
        assert_eq!(names("a"), ["a-2"]);
        assert_eq!(names("b"), ["b-1", "b-2"]);
        // A re-list in which a-2 is gone (deleted while the watch was down).
        feed(&mut writer, watcher::Event::Init);
        feed(&mut writer, watcher::Event::InitApply(full_pod("b-1", "b")));
        assert_eq!(
            names("a"),
            ["a-2"],
            "the store keeps the old state until InitDone"
        );
        feed(&mut writer, watcher::Event::InitDone);
        assert!(names("a").is_empty());
        assert_eq!(names("b"), ["b-1"]);
        assert_eq!(index.len(), 1);
        // Disabled: the same answers by scanning.
        let scan = PodIndex::disabled().pods_of(&store, "ns", "b", |p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(POOL_LABEL)) == Some(&"b".to_string())
        });
        assert_eq!(scan.len(), 1);
    }
}
