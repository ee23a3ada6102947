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
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::crd::{API_VERSION, KIND};
use crate::observe::signal;
use crate::pods::{POOL_LABEL, TEMPLATE_HASH_LABEL};

/// A pod as the operator caches it (`v1` `Pod`, only the fields a reconcile reads; the
/// field names are the Pod's, so it reads from the same JSON).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    /// The pod's metadata (trimmed by [`project`]: no labels or annotations, they are
    /// in `kept`).
    pub metadata: ObjectMeta,
    /// The labels and annotations the operator reads, moved out of `metadata` by
    /// [`project`].
    #[serde(skip)]
    pub kept: Kept,
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

/// The labels and annotations of a pod that the operator reads. Kept as fields rather
/// than in `metadata`'s maps: a `BTreeMap` allocates a ~540-byte node for its first entry,
/// and those two maps were a quarter of the operator's heap at 10,000 pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    /// The pool label.
    pub pool: Option<Box<str>>,
    /// The template-hash label.
    pub template_hash: Option<Box<str>>,
    /// `cluster-autoscaler.kubernetes.io/safe-to-evict` (busy/idle signal).
    pub safe_to_evict: Option<Box<str>>,
    /// Karpenter's `karpenter.sh/do-not-disrupt` (busy/idle signal).
    pub do_not_disrupt: Option<Box<str>>,
    /// `controller.kubernetes.io/pod-deletion-cost` (busy/idle signal).
    pub deletion_cost: Option<Box<str>>,
}

impl Kept {
    fn from_maps(
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Kept {
        let mut labels = labels.unwrap_or_default();
        let mut annotations = annotations.unwrap_or_default();
        let take =
            |m: &mut BTreeMap<String, String>, k: &str| m.remove(k).map(String::into_boxed_str);
        Kept {
            pool: take(&mut labels, POOL_LABEL),
            template_hash: take(&mut labels, TEMPLATE_HASH_LABEL),
            safe_to_evict: take(&mut annotations, signal::SAFE_TO_EVICT),
            do_not_disrupt: take(&mut annotations, signal::DO_NOT_DISRUPT),
            deletion_cost: take(&mut annotations, signal::DELETION_COST),
        }
    }
}

/// Trims a watched pod's metadata to what the operator reads: name, namespace, uid,
/// resourceVersion, creation and deletion times, the WorkPool owner references (no
/// managedFields, no labels or annotations: the pool and template-hash labels and the
/// busy/idle annotations go to `kept`); and its conditions to `Ready`. Projecting twice
/// keeps what the first kept.
pub fn project(pod: &mut CachedPod) {
    let m = std::mem::take(&mut pod.metadata);
    if m.labels.is_some() || m.annotations.is_some() {
        pod.kept = Kept::from_maps(m.labels, m.annotations);
    }
    pod.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
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
    let pool = p.kept.pool.as_deref()?;
    Some((
        p.metadata.namespace.clone().unwrap_or_default(),
        pool.to_string(),
    ))
}

/// (namespace, pool) or (namespace, pod).
type Key = (String, String);

/// Pool -> its pods' names, and each pod's pool (a pod leaves the pool it was indexed
/// under even when the event that removes it no longer carries the pool label).
#[derive(Default)]
struct Index {
    by_pool: HashMap<Key, HashSet<String>>,
    pool_of_pod: HashMap<Key, Key>,
}

impl Index {
    fn insert(&mut self, p: &CachedPod) {
        let (Some(pool), Some(name)) = (pool_of(p), p.metadata.name.clone()) else {
            return;
        };
        let pod = (pool.0.clone(), name.clone());
        if let Some(old) = self.pool_of_pod.insert(pod, pool.clone())
            && old != pool
        {
            self.remove_name(&old, &name);
        }
        self.by_pool.entry(pool).or_default().insert(name);
    }

    fn remove(&mut self, p: &CachedPod) {
        let Some(name) = p.metadata.name.clone() else {
            return;
        };
        let pod = (p.metadata.namespace.clone().unwrap_or_default(), name);
        if let Some(pool) = self.pool_of_pod.remove(&pod) {
            self.remove_name(&pool, &pod.1);
        }
    }

    fn remove_name(&mut self, pool: &Key, name: &str) {
        let now_empty = self.by_pool.get_mut(pool).is_some_and(|names| {
            names.remove(name);
            names.is_empty()
        });
        if now_empty {
            self.by_pool.remove(pool);
        }
    }
}

/// Pool -> names of its pods. Fed only by [`PodFeed`], which keeps it a superset of the
/// store's pods (a name is indexed before its pod enters the store and leaves after the
/// pod left it), so a lookup through the index finds every pod a scan of the store would;
/// the store has the last word on names it no longer holds. A disabled index (tests that
/// fill a store by hand) makes lookups scan the store.
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Option<Arc<RwLock<Index>>>,
}

impl PodIndex {
    /// An index for a [`PodFeed`] to keep.
    pub fn new() -> PodIndex {
        PodIndex {
            inner: Some(Arc::default()),
        }
    }

    /// No index: lookups scan the store.
    pub fn disabled() -> PodIndex {
        PodIndex::default()
    }

    fn write(&self, change: impl FnOnce(&mut Index)) {
        if let Some(inner) = &self.inner {
            change(&mut inner.write().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// The index of exactly the pods in `store` (after a re-list: pods deleted while the
    /// watch was down left no Delete event). O(pods) per re-list, not per reconcile.
    fn rebuild(&self, store: &Store<CachedPod>) {
        let pods = store.state();
        self.write(|idx| {
            *idx = Index::default();
            for p in &pods {
                idx.insert(p);
            }
        });
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
            match idx.by_pool.get(&(ns.to_string(), name.to_string())) {
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
                .by_pool
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

/// What a re-list changed in a store. A re-list (watcher `Init`, `InitApply`...,
/// `InitDone`) fills the reflector's buffer while the store keeps the last complete state,
/// and swaps them at `InitDone`: only then do the listed objects mean anything to a
/// reconcile. This keeps the state the re-list began from and tells, at `InitDone`, which
/// objects differ from it.
pub struct RelistDiff<K: kube::Resource<DynamicType = ()> + Clone> {
    before: Option<HashMap<ObjectRef<K>, Arc<K>>>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone> Default for RelistDiff<K> {
    fn default() -> Self {
        RelistDiff { before: None }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone> RelistDiff<K> {
    /// Call with each event before the writer applies it to `store`.
    pub fn before(&mut self, event: &watcher::Event<K>, store: &Store<K>) {
        // A re-list that failed midway starts again with `Init`; the store still holds
        // the state the first one began from.
        if matches!(event, watcher::Event::Init) && self.before.is_none() {
            self.before = Some(
                store
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                    .collect(),
            );
        }
    }

    /// After the writer applied `InitDone` to `store`: the objects that changed (another
    /// uid or resourceVersion) or appeared, and those that vanished (deleted while the
    /// watch was down: no Delete event comes for them).
    pub fn done(&mut self, store: &Store<K>) -> (Vec<Arc<K>>, Vec<Arc<K>>) {
        let mut before = self.before.take().unwrap_or_default();
        let changed = store
            .state()
            .into_iter()
            .filter(|o| {
                !before
                    .remove(&ObjectRef::from_obj(o.as_ref()))
                    .is_some_and(|old| {
                        old.meta().uid == o.meta().uid
                            && old.meta().resource_version == o.meta().resource_version
                    })
            })
            .collect();
        (changed, before.into_values().collect())
    }
}

/// The pod watch, followed: applies each event to the store (the reflector's writer,
/// driven here rather than by `reflect` so the index moves in step with it) and to the
/// index, and says which pods' pools to reconcile.
///
/// A re-list's pods trigger reconciles only at its `InitDone`, once the store holds them,
/// and only those that differ from the state before it ([`RelistDiff`]): changed,
/// appeared, vanished. Triggering on `InitApply`, as `touched_objects` does, reconciled
/// pools on the old state before the swap, and nothing followed the swap: after a
/// failover and an API server restart a pool kept the status of a pod deleted during the
/// gap, or stayed not-ready with its pods Ready, until the 5-minute resync.
pub struct PodFeed {
    writer: reflector::store::Writer<CachedPod>,
    store: Store<CachedPod>,
    index: PodIndex,
    relist: RelistDiff<CachedPod>,
}

impl PodFeed {
    /// A feed writing to `writer`'s store and to `index`.
    pub fn new(writer: reflector::store::Writer<CachedPod>, index: PodIndex) -> PodFeed {
        PodFeed {
            store: writer.as_reader(),
            writer,
            index,
            relist: RelistDiff::default(),
        }
    }

    /// The store the feed writes (ready after the first complete list).
    pub fn store(&self) -> Store<CachedPod> {
        self.store.clone()
    }

    /// Applies one watch event; returns the pods whose pools are to be reconciled.
    pub fn follow(&mut self, event: &watcher::Event<CachedPod>) -> Vec<CachedPod> {
        self.relist.before(event, &self.store);
        // Indexed before the store has it: the index names every pod in the store.
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event {
            self.index.write(|idx| idx.insert(p));
        }
        self.writer.apply_watcher_event(event);
        match event {
            watcher::Event::Apply(p) => vec![p.clone()],
            watcher::Event::Delete(p) => {
                self.index.write(|idx| idx.remove(p));
                vec![p.clone()]
            }
            // The store keeps the last complete state until `InitDone`.
            watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
            watcher::Event::InitDone => {
                self.index.rebuild(&self.store);
                let (changed, vanished) = self.relist.done(&self.store);
                changed
                    .into_iter()
                    .chain(vanished)
                    .map(|p| p.as_ref().clone())
                    .collect()
            }
        }
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
        assert_eq!(small.kept.pool.as_deref(), Some("p"));
        assert_eq!(small.kept.template_hash.as_deref(), Some("h1"));
        assert!(small.metadata.labels.is_none() && small.metadata.annotations.is_none());
        let mut again = small.clone();
        project(&mut again);
        assert_eq!(again, small, "projecting twice keeps what the first kept");
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
        let (_, writer) = reflector::store::<CachedPod>();
        let index = PodIndex::new();
        let mut feed = PodFeed::new(writer, index.clone());
        let store = feed.store();
        feed.follow(&watcher::Event::Init);
        for (n, pool) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b")] {
            feed.follow(&watcher::Event::InitApply(full_pod(n, pool)));
        }
        feed.follow(&watcher::Event::InitDone);
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
        feed.follow(&watcher::Event::Delete(full_pod("a-1", "a")));
        feed.follow(&watcher::Event::Apply(full_pod("b-2", "b")));
        assert_eq!(names("a"), ["a-2"]);
        assert_eq!(names("b"), ["b-1", "b-2"]);
        // A re-list in which a-2 and b-2 are gone (deleted while the watch was down).
        feed.follow(&watcher::Event::Init);
        feed.follow(&watcher::Event::InitApply(full_pod("b-1", "b")));
        assert_eq!(
            names("a"),
            ["a-2"],
            "the store keeps the old state until InitDone"
        );
        let triggered = feed.follow(&watcher::Event::InitDone);
        assert!(names("a").is_empty());
        assert_eq!(names("b"), ["b-1"]);
        assert_eq!(index.len(), 1);
        let mut triggered: Vec<String> = triggered
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        triggered.sort();
        assert_eq!(
            triggered,
            ["a-2", "b-2"],
            "the vanished pods, b-1 unchanged"
        );
        // Disabled: the same answers by scanning.
        let scan = PodIndex::disabled()
            .pods_of(&store, "ns", "b", |p| p.kept.pool.as_deref() == Some("b"));
        assert_eq!(scan.len(), 1);
    }

    /// The pod watch followed by [`PodFeed`] against a model of the API server, with the
    /// controller at its most eager: every trigger reconciles its pool at once (a later
    /// reconcile only sees a newer store). Invariant: once the watch is up and the feed
    /// has caught up, the last reconcile of every pool saw exactly that pool's pods as
    /// the API server has them (no pool left on a stale view until the 5-minute resync).
    mod feed {
        use super::*;
        use std::collections::BTreeSet;

        /// What a reconcile saw of one pod: name, resourceVersion, Ready.
        type Seen = BTreeSet<(String, String, bool)>;
        /// (namespace, pool).
        type Key = (String, String);

        const POOLS: [(&str, &str); 3] = [("ns", "a"), ("ns", "b"), ("ns2", "a")];

        #[derive(Clone, Debug)]
        struct ApiPod {
            key: Key,
            name: String,
            rv: u64,
            ready: bool,
        }

        fn cached(p: &ApiPod) -> CachedPod {
            let (ns, pool) = &p.key;
            cached_pod(ns, pool, &p.name, p.rv, p.ready)
        }

        fn cached_pod(ns: &str, pool: &str, name: &str, rv: u64, ready: bool) -> CachedPod {
            let mut c: CachedPod = serde_json::from_value(json!({
                "metadata": {
                    "name": name, "namespace": ns, "uid": format!("u-{ns}-{name}"),
                    "resourceVersion": rv.to_string(),
                    "labels": {POOL_LABEL: pool},
                    "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": pool,
                                         "uid": format!("pool-{ns}-{pool}"), "controller": true}],
                },
                "spec": {"containers": [{"name": "worker"}]},
                "status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .expect("cached pod");
            project(&mut c);
            c
        }

        /// The pool a trigger reconciles, found as the controller finds it: the pod's
        /// namespace and its controlling WorkPool owner.
        fn owner_of(p: &CachedPod) -> Option<Key> {
            let o = p
                .metadata
                .owner_references
                .as_ref()?
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == KIND)?;
            Some((p.metadata.namespace.clone()?, o.name.clone()))
        }

        fn ready(p: &CachedPod) -> bool {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }

        /// The API server, the watch between it and the feed, and the eager controller.
        struct Harness {
            api: BTreeMap<(String, String), ApiPod>,
            next_rv: u64,
            next_name: u64,
            watch_up: bool,
            feed: PodFeed,
            index: PodIndex,
            seen: HashMap<Key, Seen>,
            reconciles: usize,
        }

        impl Harness {
            fn new() -> Harness {
                let (_, writer) = reflector::store::<CachedPod>();
                let index = PodIndex::new();
                let mut h = Harness {
                    api: BTreeMap::new(),
                    next_rv: 1,
                    next_name: 0,
                    watch_up: false,
                    feed: PodFeed::new(writer, index.clone()),
                    index,
                    seen: HashMap::new(),
                    reconciles: 0,
                };
                h.relist(None);
                h
            }

            fn lookup(&self, key: &Key) -> Seen {
                self.index
                    .pods_of(&self.feed.store(), &key.0, &key.1, |_| true)
                    .iter()
                    .map(|p| {
                        (
                            p.metadata.name.clone().unwrap_or_default(),
                            p.metadata.resource_version.clone().unwrap_or_default(),
                            ready(p),
                        )
                    })
                    .collect()
            }

            fn truth(&self, key: &Key) -> Seen {
                self.api
                    .values()
                    .filter(|p| &p.key == key)
                    .map(|p| (p.name.clone(), p.rv.to_string(), p.ready))
                    .collect()
            }

            /// One event through the feed; its triggers reconcile at once.
            fn deliver(&mut self, event: watcher::Event<CachedPod>) {
                for p in self.feed.follow(&event) {
                    let key = owner_of(&p).expect("a trigger names its pool");
                    let seen = self.lookup(&key);
                    self.seen.insert(key, seen);
                    self.reconciles += 1;
                }
                // The index never hides a pod the store holds.
                for (ns, pool) in POOLS {
                    let key = (ns.to_string(), pool.to_string());
                    let store = self.feed.store();
                    let scanned: Seen = store
                        .state()
                        .iter()
                        .filter(|p| {
                            p.metadata.namespace.as_deref() == Some(ns)
                                && p.kept.pool.as_deref() == Some(pool)
                        })
                        .map(|p| {
                            (
                                p.metadata.name.clone().unwrap_or_default(),
                                p.metadata.resource_version.clone().unwrap_or_default(),
                                ready(p),
                            )
                        })
                        .collect();
                    assert_eq!(self.lookup(&key), scanned, "index of {key:?} vs the store");
                }
            }

            fn rv(&mut self) -> u64 {
                self.next_rv += 1;
                self.next_rv
            }

            fn create(&mut self, pool: usize) -> String {
                let (ns, pool) = POOLS[pool % POOLS.len()];
                self.next_name += 1;
                let name = format!("{pool}-{}", self.next_name);
                let p = ApiPod {
                    key: (ns.to_string(), pool.to_string()),
                    name: name.clone(),
                    rv: self.rv(),
                    ready: false,
                };
                self.api.insert((ns.to_string(), name.clone()), p.clone());
                if self.watch_up {
                    self.deliver(watcher::Event::Apply(cached(&p)));
                }
                name
            }

            fn pick(&self, i: usize) -> Option<(String, String)> {
                (!self.api.is_empty()).then(|| {
                    self.api
                        .keys()
                        .nth(i % self.api.len())
                        .cloned()
                        .expect("in range")
                })
            }

            fn set_ready(&mut self, i: usize, ready: bool) {
                let Some(k) = self.pick(i) else { return };
                let rv = self.rv();
                let p = self.api.get_mut(&k).expect("picked");
                p.rv = rv;
                p.ready = ready;
                let p = p.clone();
                if self.watch_up {
                    self.deliver(watcher::Event::Apply(cached(&p)));
                }
            }

            fn delete(&mut self, i: usize) {
                let Some(k) = self.pick(i) else { return };
                let p = self.api.remove(&k).expect("picked");
                self.rv();
                if self.watch_up {
                    self.deliver(watcher::Event::Delete(cached(&p)));
                }
            }

            /// The watch breaks: what happens next reaches the feed only by a re-list.
            fn watch_down(&mut self) {
                self.watch_up = false;
            }

            /// A re-list (every pod of the API server, in pages: `abort_after` stops it
            /// after that many pods, as a list that fails midway does; the watcher starts
            /// it again). The watch is up after it.
            fn relist(&mut self, abort_after: Option<usize>) {
                if let Some(n) = abort_after {
                    self.deliver(watcher::Event::Init);
                    let listed: Vec<ApiPod> = self.api.values().take(n).cloned().collect();
                    for p in listed {
                        self.deliver(watcher::Event::InitApply(cached(&p)));
                    }
                }
                self.deliver(watcher::Event::Init);
                let listed: Vec<ApiPod> = self.api.values().cloned().collect();
                for p in listed {
                    self.deliver(watcher::Event::InitApply(cached(&p)));
                }
                self.deliver(watcher::Event::InitDone);
                self.watch_up = true;
            }

            /// Every pool's last reconcile saw the API server's pods of that pool.
            fn assert_converged(&self) {
                assert!(self.watch_up);
                for (ns, pool) in POOLS {
                    let key = (ns.to_string(), pool.to_string());
                    let seen = self.seen.get(&key).cloned().unwrap_or_default();
                    assert_eq!(seen, self.truth(&key), "last reconcile of {key:?}");
                }
            }
        }

        #[test]
        fn a_pod_deleted_while_the_watch_was_down_reconciles_its_pool_after_the_relist() {
            let mut h = Harness::new();
            let a1 = h.create(0);
            h.create(0);
            h.create(1);
            h.set_ready(0, true);
            h.set_ready(1, true);
            h.watch_down();
            let gone = h.api.keys().position(|(_, n)| n == &a1).expect("a1 listed");
            h.delete(gone);
            h.relist(None);
            h.assert_converged();
        }

        #[test]
        fn a_pod_turned_ready_while_the_watch_was_down_reconciles_its_pool_after_the_relist() {
            let mut h = Harness::new();
            h.create(0);
            h.create(0);
            h.watch_down();
            h.set_ready(0, true);
            h.set_ready(1, true);
            h.relist(None);
            h.assert_converged();
        }

        #[test]
        fn a_pod_created_while_the_watch_was_down_reconciles_its_pool_after_the_relist() {
            let mut h = Harness::new();
            h.create(1);
            h.watch_down();
            h.create(1);
            h.relist(None);
            h.assert_converged();
        }

        #[test]
        fn a_relist_that_fails_midway_and_starts_again_converges() {
            let mut h = Harness::new();
            for pool in [0, 0, 1, 2] {
                h.create(pool);
            }
            h.watch_down();
            h.delete(0);
            h.set_ready(1, true);
            h.create(2);
            h.relist(Some(2));
            h.assert_converged();
        }

        #[test]
        fn a_relist_that_changes_nothing_reconciles_nothing() {
            let mut h = Harness::new();
            for pool in [0, 1, 1, 2] {
                h.create(pool);
            }
            h.set_ready(2, true);
            let before = h.reconciles;
            h.watch_down();
            h.relist(None);
            h.assert_converged();
            assert_eq!(
                h.reconciles, before,
                "an unchanged re-list triggers nothing"
            );
        }

        #[test]
        fn a_pod_that_loses_its_pool_label_leaves_the_index() {
            let mut h = Harness::new();
            h.create(0);
            let (ns, name) = h.pick(0).expect("one pod");
            // The watch selects on the pool label: a pod whose label is removed comes as a
            // Delete of the object without the label.
            let mut unlabelled = cached(&h.api[&(ns.clone(), name.clone())]);
            unlabelled.kept.pool = None;
            h.api.clear();
            h.deliver(watcher::Event::Delete(unlabelled));
            assert!(h.index.is_empty(), "no name left behind");
            h.assert_converged();
        }

        #[derive(Clone, Debug)]
        enum Op {
            Create(usize),
            Ready(usize, bool),
            Delete(usize),
            WatchDown,
            Relist(Option<usize>),
        }

        fn op() -> impl proptest::strategy::Strategy<Value = Op> {
            use proptest::prelude::*;
            prop_oneof![
                3 => (0usize..3).prop_map(Op::Create),
                3 => (0usize..16, any::<bool>()).prop_map(|(i, r)| Op::Ready(i, r)),
                2 => (0usize..16).prop_map(Op::Delete),
                1 => Just(Op::WatchDown),
                1 => proptest::option::of(0usize..6).prop_map(Op::Relist),
            ]
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
            #[test]
            fn every_pool_is_reconciled_on_its_final_pods_whatever_the_watch_did(
                ops in proptest::collection::vec(op(), 1..40)
            ) {
                let mut h = Harness::new();
                for op in ops {
                    match op {
                        Op::Create(p) => {
                            h.create(p);
                        }
                        Op::Ready(i, r) => h.set_ready(i, r),
                        Op::Delete(i) => h.delete(i),
                        Op::WatchDown => h.watch_down(),
                        Op::Relist(abort) => h.relist(abort),
                    }
                }
                if !h.watch_up {
                    h.relist(None);
                }
                h.assert_converged();
            }
        }
    }
}
