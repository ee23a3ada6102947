//! Observe: one read of each thing a reconcile looks at, all without waiting for Redis:
//! the pool (handed in by the controller), its pods (the cache), its queue (the hub's
//! latest snapshot; observing registers the pool with the hub and asks for an early read
//! when the pool was just woken), and the Redis target (the URL from the spec or a
//! Secret, with the TLS material of the pool's Secrets; Secrets read at most every 30 s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::controller::Context;
use crate::crd::WorkPool;
use crate::hub::{PoolKey, Registration, Snapshot};
use crate::planner::{ObservedPod, Phase};
use crate::podcache::CachedPod;
use crate::pods::{self, WORKER_CONTAINER};
use crate::probe::ProbeError;
use workpool_worker::queue::Pool as QueuePool;
use workpool_worker::target::{Mode, Target};

/// A pod terminating this long past its deletion deadline is stuck (a finalizer, a lost
/// node): it stops counting against the pool's bound and the pool says so.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// Container waiting reasons that mean the worker cannot start (the pool is Degraded).
pub const NOT_STARTING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
];

/// The annotations that tell node autoscalers and deleters whether a pod is busy.
pub mod signal {
    /// Cluster Autoscaler: `"false"` keeps the node of a busy pod.
    pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
    /// Karpenter: `"true"` keeps the node of a busy pod.
    pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
    /// ReplicaSets and people: busier pods cost more to delete.
    pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
}

/// A pod's busy/idle annotations as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// `cluster-autoscaler.kubernetes.io/safe-to-evict`.
    pub safe_to_evict: Option<String>,
    /// `karpenter.sh/do-not-disrupt`.
    pub do_not_disrupt: Option<String>,
    /// `controller.kubernetes.io/pod-deletion-cost`.
    pub deletion_cost: Option<String>,
}

/// A pod as a reconcile sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// What the planner needs.
    pub pod: ObservedPod,
    /// Its uid (deletions are conditional on it).
    pub uid: Option<String>,
    /// A container waiting for a reason in [`NOT_STARTING`].
    pub not_starting: Option<String>,
    /// Its busy/idle annotations.
    pub signals: Signals,
    /// When it is past its deletion deadline by [`STUCK_AFTER`] (ms), if terminating.
    pub stuck_at_ms: Option<u64>,
}

/// Everything one reconcile of a pool looks at.
#[derive(Debug, Clone)]
pub struct Observed {
    /// (namespace, name).
    pub key: PoolKey,
    /// The pool.
    pub pool: Arc<WorkPool>,
    /// Its pods, from the cache.
    pub pods: Vec<PodView>,
    /// Its queue's key names (every partition; hash-tagged when the target is a Redis
    /// Cluster), or why they are not usable.
    pub queue: Result<QueuePool, String>,
    /// The hash of its rendered template, or why it cannot be rendered.
    pub template: Result<String, String>,
    /// Its Redis target (`None` while the queue names are not usable).
    pub target: Option<Result<Target, ProbeError>>,
    /// The hub's latest read of its queue.
    pub snapshot: Option<Snapshot>,
    /// Now (milliseconds since the epoch).
    pub now_ms: u64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The queue names of the pool (every partition), checked. Whether they are hash-tagged
/// for Redis Cluster follows the URL's scheme when the URL is in the spec; a URL from a
/// Secret is known only with the target ([`keys_on`]).
pub fn queue_of(wp: &WorkPool) -> Result<QueuePool, String> {
    let cluster = wp
        .spec
        .queue
        .redis
        .url
        .as_deref()
        .and_then(workpool_worker::target::mode_of)
        == Some(Mode::Cluster);
    let q = wp.queue_pool(cluster);
    q.validate().map_err(|e| e.to_string())?;
    Ok(q)
}

/// The pool's key names on `target` (hash-tagged on Cluster), checked: a stream name
/// with a hash tag of its own is refused on Cluster.
pub fn keys_on(pool: QueuePool, target: &Target) -> Result<QueuePool, String> {
    let q = pool.with_cluster(target.is_cluster());
    q.validate().map_err(|e| e.to_string())?;
    Ok(q)
}

/// How often the pool's queue is read.
pub fn poll_interval(wp: &WorkPool, default: Duration) -> Duration {
    wp.spec
        .autoscaling
        .as_ref()
        .map(|a| Duration::from_secs(a.poll_interval_seconds.clamp(1, 3600) as u64))
        .unwrap_or(default)
}

fn ts_ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> u64 {
    t.0.as_millisecond().max(0) as u64
}

/// What a reconcile needs of one pod (a whole Pod: tests); `hash` is the current
/// template's.
pub fn observe_pod(p: &Pod, hash: &str, now_ms: u64) -> Option<PodView> {
    observe_cached(&CachedPod::from_pod(p), hash, now_ms)
}

/// What a reconcile needs of one cached pod; `hash` is the current template's.
pub fn observe_cached(p: &CachedPod, hash: &str, now_ms: u64) -> Option<PodView> {
    let name = p.metadata.name.clone()?;
    let status = p.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Pending,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let worker_name = p
        .spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == WORKER_CONTAINER)
                .or_else(|| s.containers.first())
        })
        .map(|c| c.name.clone());
    let worker_status = statuses
        .iter()
        .find(|c| Some(&c.name) == worker_name.as_ref());
    // A Running pod whose worker's state is not reported is taken as running: a worker
    // that might read must be drained, not deleted.
    let worker_running = phase == Phase::Running
        && worker_status.is_none_or(|c| c.state.as_ref().is_none_or(|s| s.running.is_some()));
    let not_starting = statuses
        .iter()
        .chain(
            status
                .and_then(|s| s.init_container_statuses.as_deref())
                .unwrap_or_default(),
        )
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|r| NOT_STARTING.contains(&r.as_str()));
    let stuck_at_ms = p
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| ts_ms(t) + STUCK_AFTER.as_millis() as u64);
    Some(PodView {
        pod: ObservedPod {
            name,
            phase,
            ready: ready && phase == Phase::Running,
            worker_running,
            terminating: p.metadata.deletion_timestamp.is_some(),
            stuck: stuck_at_ms.is_some_and(|t| now_ms >= t),
            evicted: status.and_then(|s| s.reason.as_deref()) == Some("Evicted"),
            current: p.kept.template_hash.as_deref() == Some(hash),
            created_ms: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(ts_ms)
                .unwrap_or(0),
        },
        uid: p.metadata.uid.clone(),
        not_starting,
        signals: Signals {
            safe_to_evict: p.kept.safe_to_evict.as_deref().map(str::to_string),
            do_not_disrupt: p.kept.do_not_disrupt.as_deref().map(str::to_string),
            deletion_cost: p.kept.deletion_cost.as_deref().map(str::to_string),
        },
        stuck_at_ms,
    })
}

/// The pool's pods in the cache (same namespace, pool label, controlled by this pool),
/// looked up through the pool index (not a scan of every cached pod).
pub fn cached_pods(ctx: &Context, wp: &WorkPool) -> Vec<Arc<CachedPod>> {
    let ns = wp.namespace().unwrap_or_default();
    let name = wp.name_any();
    let uid = wp.metadata.uid.clone().unwrap_or_default();
    ctx.pod_index.pods_of(&ctx.pods, &ns, &name, |p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.kept.pool.as_deref() == Some(name.as_str())
            && p.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
    })
}

/// Observes one pool.
pub async fn observe(wp: Arc<WorkPool>, ctx: &Context) -> Observed {
    let key = (wp.namespace().unwrap_or_default(), wp.name_any());
    let now_ms = now_ms();
    let queue = queue_of(&wp);
    let template = pods::render_template(&wp)
        .map(|(m, s)| pods::template_hash(&m, &s))
        .map_err(|e| e.to_string());
    let hash = template.clone().unwrap_or_default();
    let pods: Vec<PodView> = cached_pods(ctx, &wp)
        .iter()
        .filter_map(|p| observe_cached(p, &hash, now_ms))
        .collect();
    let mut target = match &queue {
        Ok(_) => Some(ctx.targets.target(&ctx.client, &wp).await),
        Err(_) => None,
    };
    // Refused credentials or certificates: a Secret may have been rotated; read it again
    // now.
    let rotated = |e: &ProbeError| matches!(e, ProbeError::Auth(_) | ProbeError::Tls(_));
    if let Some(Ok(_)) = &target
        && wp.reads_secrets()
        && ctx
            .hub
            .snapshot(&key)
            .is_some_and(|s| s.result.as_ref().is_err_and(rotated))
    {
        ctx.targets.forget_secret(&wp);
        target = Some(ctx.targets.target(&ctx.client, &wp).await);
    }
    let queue = match (queue, &target) {
        (Ok(q), Some(Ok(t))) => keys_on(q, t),
        (q, _) => q,
    };
    match (&queue, &target) {
        (Ok(q), Some(Ok(target))) => {
            let woken = ctx.wake.take_woken(&key);
            let reason = ctx.with_memory(&key, |m| m.read_reason.take());
            let reason = if woken {
                "wake"
            } else {
                reason.unwrap_or("poll")
            };
            ctx.hub.register(
                &key,
                Registration {
                    target: target.clone(),
                    queue: q.clone(),
                    poll: poll_interval(&wp, ctx.config.poll_interval),
                },
                reason,
            );
            if woken {
                ctx.hub.refresh(&key, "wake");
            }
        }
        _ => ctx.hub.unregister(&key),
    }
    let snapshot = match &target {
        Some(Ok(_)) => ctx.hub.snapshot(&key),
        // The target cannot be had: that is what the queue looks like.
        Some(Err(e)) => Some(Snapshot {
            result: Err(e.clone()),
            taken_ms: now_ms,
            seq: 0,
        }),
        None => None,
    };
    Observed {
        key,
        pool: wp,
        pods,
        queue,
        template,
        target,
        snapshot,
        now_ms,
    }
}

/// Tasks each consumer holds, from a snapshot that read the queue.
pub fn held(snapshot: Option<&Snapshot>) -> Option<BTreeMap<String, u64>> {
    snapshot.and_then(|s| s.result.as_ref().ok()).map(|st| {
        st.consumers
            .iter()
            .map(|c| (c.name.clone(), c.pending))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::TEMPLATE_HASH_LABEL;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn reads_phase_readiness_eviction_template_and_the_worker_container() {
        let p = pod(json!({
            "metadata": {"name": "a-1", "labels": {TEMPLATE_HASH_LABEL: "h1"}, "uid": "u1",
                         "creationTimestamp": "2024-01-01T00:00:01Z",
                         "annotations": {signal::SAFE_TO_EVICT: "true"}},
            "spec": {"containers": [{"name": "sidecar"}, {"name": "worker"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [
                           {"name": "sidecar", "state": {"waiting": {"reason": "ContainerCreating"}}},
                           {"name": "worker", "state": {"running": {}}}]}
        }));
        let v = observe_pod(&p, "h1", 0).expect("observed");
        assert!(v.pod.ready && v.pod.current && v.pod.worker_running && !v.pod.terminating);
        assert_eq!(v.pod.phase, Phase::Running);
        assert_eq!(v.pod.created_ms, 1_704_067_201_000);
        assert_eq!(v.uid.as_deref(), Some("u1"));
        assert_eq!(v.not_starting, None, "ContainerCreating is not a failure");
        assert_eq!(v.signals.safe_to_evict.as_deref(), Some("true"));
        assert!(!observe_pod(&p, "h2", 0).expect("observed").pod.current);
    }

    #[test]
    fn a_crash_looping_worker_is_not_running_and_says_why() {
        let p = pod(json!({
            "metadata": {"name": "a-2"},
            "spec": {"containers": [{"name": "worker"}]},
            "status": {"phase": "Running",
                       "containerStatuses": [{"name": "worker",
                           "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        let v = observe_pod(&p, "h", 0).expect("observed");
        assert!(!v.pod.worker_running);
        assert_eq!(v.not_starting.as_deref(), Some("CrashLoopBackOff"));
        let p = pod(json!({
            "metadata": {"name": "a-3"},
            "spec": {"containers": [{"name": "worker"}]},
            "status": {"phase": "Pending",
                       "containerStatuses": [{"name": "worker",
                           "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }));
        assert_eq!(
            observe_pod(&p, "h", 0)
                .expect("observed")
                .not_starting
                .as_deref(),
            Some("ImagePullBackOff")
        );
    }

    #[test]
    fn a_pod_past_its_deletion_deadline_is_stuck() {
        let p = pod(json!({
            "metadata": {"name": "a-4", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "reason": "Evicted"}
        }));
        let deadline = 1_704_067_200_000;
        let v = observe_pod(&p, "h", deadline + 29_000).expect("observed");
        assert!(v.pod.terminating && v.pod.evicted && !v.pod.stuck);
        assert_eq!(v.stuck_at_ms, Some(deadline + 30_000));
        assert!(
            observe_pod(&p, "h", deadline + 30_000)
                .expect("observed")
                .pod
                .stuck
        );
    }
}
