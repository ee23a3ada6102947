//! The controller: kube-runtime `Controller` wiring. It reads the pool, its pods (from a
//! cache) and its queue, asks the pure [`planner`](crate::planner) what to do, applies
//! that plan (pod creates and deletes), removes consumers of pods that are gone, and
//! writes status and Events. Nothing is written while nothing changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};
use workpool_worker::queue::{Pool, QueueStats};

use crate::autoscale::{self, Autoscaler, Backlog, Decision, Observation};
use crate::crd::AutoscalingSpec;
use crate::crd::{API_VERSION, Condition, KIND, QueueStatus, WorkPool, WorkPoolStatus};
use crate::metrics::Metrics;
use crate::planner::{self, BackoffConfig, DeleteReason, ObservedPod, Phase, PlanState};
use crate::pods::{self, POOL_LABEL, TEMPLATE_HASH_LABEL};
use crate::probe::{ProbeError, QueueProbe};
use crate::wake::{Wake, WakeTarget};
use crate::{Error, Result};

/// The finalizer that removes the pool's consumers from the group on deletion.
pub const FINALIZER: &str = "workpool.dev/cleanup";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "workpool-operator";

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often a pool's queue is read when its spec does not say (autoscaling does).
    pub poll_interval: Duration,
    /// Replacement back-off.
    pub backoff: BackoffConfig,
    /// How long deletion waits for pods and Redis before giving up on consumer cleanup.
    pub cleanup_timeout: Duration,
    /// An operator-created pod missing from the cache after this long is forgotten.
    pub expectation_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            poll_interval: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            cleanup_timeout: Duration::from_secs(300),
            expectation_timeout: Duration::from_secs(60),
        }
    }
}

/// The last queue probe of a pool.
#[derive(Debug, Clone)]
struct Probed {
    result: std::result::Result<QueueStats, ProbeError>,
    at: Instant,
}

/// What the operator remembers of one pool between reconciles.
#[derive(Debug, Default)]
struct PoolMemory {
    uid: String,
    plan: PlanState,
    /// Pods created and not yet seen in the cache.
    creating: BTreeMap<String, Instant>,
    /// Pods deleted and not yet seen terminating or gone.
    deleting: BTreeMap<String, Instant>,
    probed: Option<Probed>,
    errors: u32,
    /// Deletion started (for the cleanup timeout).
    cleanup_started: Option<Instant>,
    /// The autoscaler of the pool (its memory of recent recommendations and scale
    /// events), the origin of its clock, and its last decision.
    autoscaler: Autoscaler,
    autoscale_origin: Option<Instant>,
    decision: Option<Decision>,
    /// The `desiredReplicas` and `lastScaleTime` last written to the status: the object a
    /// reconcile gets may predate that write (a pod event can arrive first), and a scale
    /// decision must be counted, and its Event sent, once.
    published: Option<(i32, Option<String>)>,
    /// The next reconcile reads the queue afresh, for this reason (a metric label).
    probe_now: Option<&'static str>,
}

/// Shared state of every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Queue probe (connections per Redis URL).
    pub probe: QueueProbe,
    /// The cache of the pools' pods.
    pub pods: Store<Pod>,
    /// Settings.
    pub config: ControllerConfig,
    /// Wake from zero (disabled unless [`Context::with_wake`]).
    pub wake: Wake,
    memory: Mutex<HashMap<(String, String), PoolMemory>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        metrics: Metrics,
        pods: Store<Pod>,
        config: ControllerConfig,
    ) -> Self {
        Context {
            client,
            recorder,
            metrics,
            probe: QueueProbe::default(),
            pods,
            config,
            wake: Wake::disabled(),
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The context with wake from zero by `wake`.
    pub fn with_wake(mut self, wake: Wake) -> Self {
        self.wake = wake;
        self
    }

    fn with_memory<T>(&self, key: &(String, String), f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(key.clone()).or_default())
    }

    fn forget(&self, key: &(String, String)) {
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(key);
    }

    async fn event(
        &self,
        wp: &WorkPool,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &wp.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The desired number of pods without autoscaling: `spec.replicas`.
pub fn desired_replicas(wp: &WorkPool) -> i32 {
    wp.spec.replicas.max(0)
}

fn to_rules(
    r: Option<&crate::crd::ScalingRules>,
    default: autoscale::ScalingRules,
) -> autoscale::ScalingRules {
    let Some(r) = r else { return default };
    autoscale::ScalingRules {
        stabilization_window_seconds: r
            .stabilization_window_seconds
            .map(|s| s.max(0) as u32)
            .unwrap_or(default.stabilization_window_seconds),
        policies: r
            .policies
            .as_ref()
            .map(|ps| {
                ps.iter()
                    .map(|p| autoscale::ScalingPolicy {
                        kind: match p.type_ {
                            crate::crd::PolicyType::Pods => autoscale::PolicyKind::Pods,
                            crate::crd::PolicyType::Percent => autoscale::PolicyKind::Percent,
                        },
                        value: p.value.max(0) as u32,
                        period_seconds: p.period_seconds.max(1) as u32,
                    })
                    .collect()
            })
            .unwrap_or(default.policies),
        select_policy: match r.select_policy {
            Some(crate::crd::SelectPolicy::Max) => autoscale::SelectPolicy::Max,
            Some(crate::crd::SelectPolicy::Min) => autoscale::SelectPolicy::Min,
            Some(crate::crd::SelectPolicy::Disabled) => autoscale::SelectPolicy::Disabled,
            None => default.select_policy,
        },
        tolerance: r.tolerance.unwrap_or(default.tolerance),
    }
}

/// The autoscaler's view of `spec.autoscaling` (HPA's defaults where it says nothing).
pub fn autoscale_spec(a: &AutoscalingSpec) -> autoscale::AutoscaleSpec {
    let b = a.behavior.as_ref();
    autoscale::AutoscaleSpec {
        min_replicas: a.min_replicas.max(0) as u32,
        max_replicas: a.max_replicas.max(0) as u32,
        target_backlog_per_replica: a.target_backlog_per_replica.max(1) as u64,
        activation_backlog: a.activation_backlog.max(0) as u64,
        scale_to_zero_delay_seconds: a.scale_to_zero_delay_seconds.max(0) as u32,
        fallback_replicas: a.fallback_replicas.map(|f| f.max(0) as u32),
        behavior: autoscale::Behavior {
            scale_up: to_rules(
                b.and_then(|b| b.scale_up.as_ref()),
                autoscale::ScalingRules::default_scale_up(),
            ),
            scale_down: to_rules(
                b.and_then(|b| b.scale_down.as_ref()),
                autoscale::ScalingRules::default_scale_down(),
            ),
        },
    }
}

/// How often the pool's queue is read.
pub fn poll_interval(wp: &WorkPool, cfg: &ControllerConfig) -> Duration {
    wp.spec
        .autoscaling
        .as_ref()
        .map(|a| Duration::from_secs(a.poll_interval_seconds.clamp(1, 3600) as u64))
        .unwrap_or(cfg.poll_interval)
}

/// The queue names of the pool (every partition), checked. Whether they are hash-tagged
/// for Redis Cluster follows the URL's scheme when the URL is in the spec; the probe sets
/// it from the resolved target either way (a URL from a Secret).
pub fn queue_of(wp: &WorkPool) -> std::result::Result<Pool, String> {
    let cluster = wp
        .spec
        .queue
        .redis
        .url
        .as_deref()
        .and_then(workpool_worker::target::mode_of)
        == Some(workpool_worker::target::Mode::Cluster);
    let q = wp.queue_pool(cluster);
    q.validate().map_err(|e| e.to_string())?;
    Ok(q)
}

fn observe_pod(p: &Pod, hash: &str) -> Option<ObservedPod> {
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
    let evicted = status.and_then(|s| s.reason.as_deref()) == Some("Evicted");
    let current = p
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
        .is_some_and(|h| h == hash);
    let created_ms = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond().max(0) as u64)
        .unwrap_or(0);
    Some(ObservedPod {
        name,
        phase,
        ready: ready && phase == Phase::Running,
        terminating: p.metadata.deletion_timestamp.is_some(),
        evicted,
        current,
        created_ms,
    })
}

/// The pool's pods in the cache (same namespace, pool label, owned by this pool's uid).
fn cached_pods(ctx: &Context, wp: &WorkPool) -> Vec<Arc<Pod>> {
    let ns = wp.namespace().unwrap_or_default();
    let name = wp.name_any();
    let uid = wp.metadata.uid.clone().unwrap_or_default();
    ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.labels().get(POOL_LABEL) == Some(&name)
            && p.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
    })
}

fn condition(
    old: Option<&WorkPoolStatus>,
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status_s = if status { "True" } else { "False" };
    let since = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status_s)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(rfc3339_now);
    Condition {
        type_: type_.into(),
        status: status_s.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

fn was(old: Option<&WorkPoolStatus>, type_: &str) -> Option<bool> {
    old.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.status == "True")
}

/// Reconciles one pool.
pub async fn reconcile(wp: Arc<WorkPool>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let key = (wp.namespace().unwrap_or_default(), wp.name_any());
    let r = if wp.metadata.deletion_timestamp.is_some() {
        cleanup(&wp, &ctx, &key).await
    } else {
        apply(&wp, &ctx, &key).await
    };
    timer.observe_duration();
    if r.is_ok() {
        ctx.with_memory(&key, |m| m.errors = 0);
    }
    r
}

/// Error policy: count it, back off per object (1 s doubling to 5 min).
pub fn error_policy(wp: Arc<WorkPool>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = (wp.namespace().unwrap_or_default(), wp.name_any());
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[&key.0, &key.1, err.metric_label()])
        .inc();
    let n = ctx.with_memory(&key, |m| {
        m.errors = m.errors.saturating_add(1);
        m.errors
    });
    let delay = Duration::from_secs(1u64 << (n - 1).min(8)).min(Duration::from_secs(300));
    warn!(namespace = %key.0, workpool = %key.1, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn ensure_finalizer(wp: &WorkPool, ctx: &Context) -> Result<()> {
    if wp.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let api: Api<WorkPool> =
        Api::namespaced(ctx.client.clone(), &wp.namespace().unwrap_or_default());
    let name = wp.name_any();
    let add = |current: &WorkPool| {
        let mut fins = current.finalizers().to_vec();
        fins.push(FINALIZER.to_string());
        // The resourceVersion makes this a compare-and-swap: a concurrent change gets 409.
        json!({"metadata": {"finalizers": fins, "resourceVersion": current.resource_version()}})
    };
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&add(wp)))
        .await
    {
        Ok(_) => Ok(()),
        // The cached pool can lag behind the operator's own writes (its pods' events
        // arrive first): read it afresh, and add the finalizer once more only if it is
        // still missing. (The 1,000-pool benchmark saw thousands of these 409s counted
        // as reconcile errors, each backing its pool off.)
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let fresh = api.get(&name).await?;
            if fresh.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(());
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&add(&fresh)))
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn probe_queue(
    wp: &WorkPool,
    ctx: &Context,
    key: &(String, String),
    queue: &Pool,
    max_age: Duration,
    trigger: &str,
) -> Probed {
    if let Some(p) = ctx.with_memory(key, |m| m.probed.clone())
        && p.at.elapsed() < max_age
    {
        return p;
    }
    ctx.metrics
        .probes
        .with_label_values(&[key.0.as_str(), key.1.as_str(), trigger])
        .inc();
    let result = match ctx.probe.target(&ctx.client, wp).await {
        Ok(target) => ctx.probe.stats(&target, queue).await,
        Err(e) => Err(e),
    };
    let l = [key.0.as_str(), key.1.as_str()];
    let m = &ctx.metrics;
    match &result {
        Ok(st) => {
            m.queue_up.with_label_values(&l).set(1);
            m.backlog.with_label_values(&l).set(st.backlog as i64);
            m.pending.with_label_values(&l).set(st.pending as i64);
            m.dead_letters
                .with_label_values(&l)
                .set(st.dead_letters as i64);
            m.oldest_pending.with_label_values(&l).set(
                st.oldest_pending_age_ms
                    .map(|ms| (ms / 1000) as i64)
                    .unwrap_or(0),
            );
            m.set_partitions(l[0], l[1], st);
        }
        Err(e) => {
            m.queue_up.with_label_values(&l).set(0);
            m.probe_errors
                .with_label_values(&[l[0], l[1], e.metric_label()])
                .inc();
            if matches!(e, ProbeError::Auth(_)) {
                ctx.probe.forget_secret(wp);
            }
            debug!(namespace = %key.0, workpool = %key.1, error = %e, "queue probe failed");
        }
    }
    let p = Probed {
        result,
        at: Instant::now(),
    };
    ctx.with_memory(key, |mem| mem.probed = Some(p.clone()));
    p
}

async fn apply(wp: &WorkPool, ctx: &Context, key: &(String, String)) -> Result<Action> {
    let uid = wp.metadata.uid.clone().unwrap_or_default();
    ctx.with_memory(key, |m| {
        if m.uid != uid {
            // A new pool under an old name: start afresh.
            *m = PoolMemory {
                uid: uid.clone(),
                ..Default::default()
            };
        }
    });
    ensure_finalizer(wp, ctx).await?;

    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let old = wp.status.as_ref();
    let generation = wp.metadata.generation;
    let poll = poll_interval(wp, &ctx.config);

    // The spec: queue names and the pod template.
    let queue = queue_of(wp);
    let rendered = pods::render_template(wp);
    let invalid: Option<String> = match (&queue, &rendered) {
        (Err(e), _) => Some(format!("queue: {e}")),
        (_, Err(e)) => Some(format!("template: {e}")),
        _ => None,
    };
    let hash = rendered
        .as_ref()
        .map(|(m, s)| pods::template_hash(m, s))
        .unwrap_or_default();

    let started = Instant::now();
    // A pool woken from zero reads its queue now, not at the next poll.
    let forced = if ctx.wake.take_woken(key) {
        Some("wake")
    } else {
        ctx.with_memory(key, |m| m.probe_now.take())
    };
    let probed = match (&queue, forced) {
        (Ok(q), Some(why)) => Some(probe_queue(wp, ctx, key, q, Duration::ZERO, why).await),
        (Ok(q), None) => Some(probe_queue(wp, ctx, key, q, poll, "poll").await),
        (Err(_), _) => None,
    };

    // Observed pods: the cache plus what the operator did that the cache does not show yet.
    let cached = cached_pods(ctx, wp);
    let now = Instant::now();
    let timeout = ctx.config.expectation_timeout;
    let observed: Vec<ObservedPod> = ctx.with_memory(key, |m| {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        for p in &cached {
            let Some(mut o) = observe_pod(p, &hash) else {
                continue;
            };
            seen.insert(o.name.clone());
            m.creating.remove(&o.name);
            if o.terminating {
                m.deleting.remove(&o.name);
            } else if m.deleting.contains_key(&o.name) {
                o.terminating = true;
            }
            out.push(o);
        }
        m.deleting
            .retain(|n, at| seen.contains(n) && now.duration_since(*at) < timeout);
        m.creating.retain(|_, at| now.duration_since(*at) < timeout);
        for n in m.creating.keys() {
            out.push(ObservedPod {
                name: n.clone(),
                phase: Phase::Pending,
                ready: false,
                terminating: false,
                evicted: false,
                current: true,
                created_ms: now_ms(),
            });
        }
        out
    });

    // Desired: spec.replicas, or the autoscaler's decision, evaluated once per probe.
    let live_now = observed
        .iter()
        .filter(|p| !p.terminating && matches!(p.phase, Phase::Pending | Phase::Running))
        .count() as u32;
    let terminating_now = observed.iter().filter(|p| p.terminating).count() as u32;
    let ready_now = observed
        .iter()
        .filter(|p| p.ready && !p.terminating)
        .count() as u32;
    let decision: Option<Decision> = match (&wp.spec.autoscaling, &invalid) {
        (Some(a), None) => {
            let spec = autoscale_spec(a);
            let fresh = probed.as_ref().is_some_and(|p| p.at >= started);
            let backlog = match probed.as_ref().map(|p| &p.result) {
                Some(Ok(st)) => Backlog::Known(st.backlog),
                _ => Backlog::Unreadable,
            };
            // The count the pool is sized for: the last decision (status), else the pods.
            let current = ctx
                .with_memory(key, |m| m.published.as_ref().map(|p| p.0))
                .or_else(|| {
                    old.filter(|s| s.observed_generation.is_some())
                        .map(|s| s.desired_replicas)
                })
                .map(|d| d.max(0) as u32)
                .unwrap_or(live_now);
            ctx.with_memory(key, |m| {
                if fresh || m.decision.is_none() {
                    let origin = *m.autoscale_origin.get_or_insert_with(Instant::now);
                    let obs = Observation {
                        now: origin.elapsed(),
                        backlog,
                        current_replicas: current,
                        ready_replicas: ready_now,
                    };
                    m.decision = Some(m.autoscaler.evaluate(&spec, &obs));
                }
                m.decision
            })
        }
        _ => {
            ctx.with_memory(key, |m| {
                m.decision = None;
                m.autoscale_origin = None;
                m.autoscaler = Autoscaler::new();
            });
            None
        }
    };
    let desired = decision
        .map(|d| d.desired_replicas.min(i32::MAX as u32) as i32)
        .unwrap_or_else(|| desired_replicas(wp));

    let held_of = |p: &Probed| -> Option<BTreeMap<String, u64>> {
        p.result.as_ref().ok().map(|st| {
            st.consumers
                .iter()
                .map(|c| (c.name.clone(), c.pending))
                .collect()
        })
    };
    let mut held = probed.as_ref().and_then(held_of);
    let make_input = |held: Option<&BTreeMap<String, u64>>, observed: &[ObservedPod]| {
        let input = planner::PlanInput {
            desired: if invalid.is_some() { 0 } else { desired },
            pods: observed,
            held,
            now_ms: now_ms(),
            backoff: ctx.config.backoff,
        };
        let state = ctx.with_memory(key, |m| m.plan.clone());
        planner::plan(&input, &state)
    };
    let mut plan = make_input(held.as_ref(), &observed);
    if invalid.is_some() {
        // Keep the pods that run; an invalid spec must not take a pool down.
        plan.create = 0;
        plan.delete
            .retain(|d| matches!(d.reason, DeleteReason::Finished(_)));
    }
    // Victims are chosen from fresh consumer state.
    if plan.scale_in() > 0
        && let (Ok(q), Some(p)) = (&queue, &probed)
        && p.at < started
    {
        let fresh = probe_queue(wp, ctx, key, q, Duration::ZERO, "refresh").await;
        if fresh.result.is_ok() {
            held = held_of(&fresh);
            plan = make_input(held.as_ref(), &observed);
        }
    }
    let probed = match &queue {
        Ok(_) => ctx.with_memory(key, |m| m.probed.clone()),
        Err(_) => None,
    };
    // Pods still terminating count against maxReplicas until they are gone.
    if let Some(a) = &wp.spec.autoscaling {
        let max = a.max_replicas.max(0) as u32;
        plan.create = plan.create.min(autoscale::pods_to_create(
            desired as u32,
            live_now,
            terminating_now,
            max,
        ));
    }
    ctx.with_memory(key, |m| m.plan = plan.state.clone());

    // Metrics and events for replacements noticed.
    for (pod, reason) in &plan.replacements {
        ctx.metrics
            .replacements
            .with_label_values(&[ns, name, reason.as_str()])
            .inc();
        ctx.event(
            wp,
            if reason.backs_off() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            "PodReplaced",
            "Replace",
            format!(
                "pod {pod} {}; a new pod replaces it",
                match reason {
                    planner::ReplacementReason::Failed => "failed",
                    planner::ReplacementReason::Succeeded => "exited on its own (Succeeded)",
                    planner::ReplacementReason::Evicted => "was evicted",
                    planner::ReplacementReason::Deleted => "was deleted",
                }
            ),
        )
        .await;
    }

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // pod-deletion-cost: written only while the pool scales in, on the pods that stay.
    if plan.scale_in() > 0
        && let Some(h) = &held
    {
        let victims: BTreeSet<&str> = plan
            .delete
            .iter()
            .filter(|d| d.reason == DeleteReason::ScaleIn)
            .map(|d| d.name.as_str())
            .collect();
        let loads: Vec<CostInput> = cached
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let n = p.metadata.name.clone()?;
                (!victims.contains(n.as_str())).then(|| CostInput {
                    current: p
                        .annotations()
                        .get(DELETION_COST_ANNOTATION)
                        .and_then(|v| v.trim().parse().ok()),
                    pending: h.get(&n).copied().unwrap_or(0),
                    name: n,
                })
            })
            .collect();
        for (pod, cost) in deletion_cost_updates(&loads) {
            let patch =
                json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}});
            match pods_api
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => ctx
                    .metrics
                    .deletion_cost_updates
                    .with_label_values(&[ns, name])
                    .inc(),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => debug!(pod = %pod, error = %e, "cannot set pod-deletion-cost"),
            }
        }
    }

    // Deletions.
    let mut scaled_in = Vec::new();
    for d in &plan.delete {
        let pod_uid = cached
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(d.name.as_str()))
            .and_then(|p| p.metadata.uid.clone());
        let dp = DeleteParams {
            preconditions: pod_uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods_api.delete(&d.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.with_memory(key, |m| m.deleting.insert(d.name.clone(), Instant::now()));
        match d.reason {
            DeleteReason::ScaleIn => scaled_in.push(d.name.clone()),
            DeleteReason::Outdated => {
                info!(namespace = ns, workpool = name, pod = %d.name, "replacing pod of an older template")
            }
            DeleteReason::Finished(_) => {}
        }
    }
    if !scaled_in.is_empty() {
        let tasks: Vec<String> = scaled_in
            .iter()
            .map(|n| {
                let t = held.as_ref().and_then(|h| h.get(n).copied()).unwrap_or(0);
                format!("{n} ({t} tasks)")
            })
            .collect();
        info!(namespace = ns, workpool = name, pods = ?scaled_in, "scaling in");
        ctx.event(
            wp,
            EventType::Normal,
            "ScalingDown",
            "Scale",
            format!(
                "deleting {} (desired {desired}; idle pods first)",
                tasks.join(", ")
            ),
        )
        .await;
    }

    // Creations.
    let mut create_error: Option<(String, Error)> = None;
    let mut created = Vec::new();
    if plan.create > 0 {
        for _ in 0..plan.create {
            match create_pod(wp, &pods_api).await {
                Ok(n) => {
                    ctx.with_memory(key, |m| m.creating.insert(n.clone(), Instant::now()));
                    created.push(n);
                }
                Err(e) => {
                    let msg = match &e {
                        Error::Kube(kube::Error::Api(s)) => s.message.clone(),
                        other => other.to_string(),
                    };
                    create_error = Some((msg, e));
                    break;
                }
            }
        }
        if !created.is_empty() {
            info!(namespace = ns, workpool = name, pods = ?created, "created pods");
            ctx.event(
                wp,
                EventType::Normal,
                "PodsCreated",
                "Create",
                format!("created {} (desired {desired})", created.join(", ")),
            )
            .await;
        }
        if let Some((msg, _)) = &create_error {
            ctx.event(
                wp,
                EventType::Warning,
                "PodCreateFailed",
                "Create",
                format!("cannot create a pod: {msg}"),
            )
            .await;
        }
    }

    // Consumers of pods that are gone and hold nothing leave the group.
    if let (Ok(q), Some(Probed { result: Ok(st), .. })) = (&queue, &probed) {
        let live: BTreeSet<&str> = observed.iter().map(|p| p.name.as_str()).collect();
        let prefix = format!("{name}-");
        let stale: Vec<String> = st
            .consumers
            .iter()
            .filter(|c| {
                c.pending == 0 && c.name.starts_with(&prefix) && !live.contains(c.name.as_str())
            })
            .map(|c| c.name.clone())
            .collect();
        if !stale.is_empty()
            && let Ok(target) = ctx.probe.target(&ctx.client, wp).await
        {
            match ctx.probe.remove_idle_consumers(&target, q, &stale).await {
                Ok((n, _)) if n > 0 => {
                    info!(
                        namespace = ns,
                        workpool = name,
                        removed = n,
                        "removed consumers of pods that are gone"
                    );
                    // The next probe must not show them.
                    ctx.with_memory(key, |m| m.probed = None);
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "consumer cleanup failed"),
            }
        }
    }

    // Status.
    let counts = plan.counts;
    let published = ctx.with_memory(key, |m| m.published.clone());
    let previous_desired = published
        .as_ref()
        .map(|p| p.0)
        .unwrap_or_else(|| old.map(|s| s.desired_replicas).unwrap_or(0));
    let mut last_scale_time = published
        .map(|p| p.1)
        .unwrap_or_else(|| old.and_then(|s| s.last_scale_time.clone()));
    if desired != previous_desired && invalid.is_none() {
        let direction = if desired > previous_desired {
            "up"
        } else {
            "down"
        };
        ctx.metrics
            .scale_events
            .with_label_values(&[ns, name, direction])
            .inc();
        ctx.metrics
            .scale_decisions
            .with_label_values(&[
                ns,
                name,
                direction,
                decision.map(|d| d.reason.as_str()).unwrap_or("Spec"),
            ])
            .inc();
        last_scale_time = Some(rfc3339_now());
        ctx.event(
            wp,
            EventType::Normal,
            "Scaled",
            "Scale",
            decision
                .map(|d| d.message())
                .unwrap_or_else(|| format!("desired replicas {previous_desired} -> {desired}")),
        )
        .await;
    }

    let mut conditions = Vec::new();
    let ready_ok = invalid.is_none() && counts.ready >= desired && counts.replicas == desired;
    let (ready_reason, ready_msg) = if let Some(msg) = &invalid {
        ("InvalidSpec", msg.clone())
    } else if ready_ok && desired == 0 {
        ("ScaledToZero", "no pods wanted".to_string())
    } else if ready_ok {
        (
            "AllReplicasReady",
            format!("{}/{desired} pods ready", counts.ready),
        )
    } else {
        (
            "ReplicasNotReady",
            format!("{}/{desired} pods ready", counts.ready.min(desired)),
        )
    };
    conditions.push(condition(
        old,
        generation,
        "Ready",
        ready_ok,
        ready_reason,
        ready_msg,
    ));

    let (q_ok, q_reason, q_msg) = match (&queue, &probed) {
        (Err(e), _) => (false, "InvalidSpec", e.clone()),
        (Ok(_), None) => (false, "NotProbed", "the queue has not been read yet".into()),
        (Ok(q), Some(Probed { result: Ok(st), .. })) => {
            if !st.stream_exists {
                (
                    true,
                    "StreamNotFound",
                    format!("stream {:?} does not exist yet: an empty queue", q.stream()),
                )
            } else if !st.group_exists {
                (
                    true,
                    "GroupNotFound",
                    format!(
                        "group {:?} does not exist yet: every entry is waiting",
                        q.group()
                    ),
                )
            } else {
                (
                    true,
                    "QueueRead",
                    format!("stream {:?}, group {:?}", q.stream(), q.group()),
                )
            }
        }
        (Ok(_), Some(Probed { result: Err(e), .. })) => (false, e.reason(), e.to_string()),
    };
    if was(old, "QueueReachable") != Some(q_ok) && !(old.is_none() && q_ok) {
        ctx.event(
            wp,
            if q_ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            if q_ok {
                "QueueReachable"
            } else {
                "QueueUnreachable"
            },
            "Probe",
            q_msg.clone(),
        )
        .await;
    }
    conditions.push(condition(
        old,
        generation,
        "QueueReachable",
        q_ok,
        q_reason,
        q_msg,
    ));

    let (deg, deg_reason, deg_msg) = if let Some(msg) = &invalid {
        (true, "InvalidSpec", msg.clone())
    } else if let Some((msg, _)) = &create_error {
        (
            true,
            "PodCreateFailed",
            format!("cannot create pods: {msg}"),
        )
    } else if let Some(msg) = &plan.degraded {
        (true, "PodFailures", msg.clone())
    } else {
        (false, "AsExpected", "pods run as expected".to_string())
    };
    if deg && was(old, "Degraded") != Some(true) && create_error.is_none() {
        ctx.event(
            wp,
            EventType::Warning,
            "Degraded",
            "Reconcile",
            deg_msg.clone(),
        )
        .await;
    }
    conditions.push(condition(
        old, generation, "Degraded", deg, deg_reason, deg_msg,
    ));

    let limited = decision.filter(|_| plan.backoff_until_ms.is_none());
    let (scaling, s_reason, s_msg) = if let Some(d) = limited {
        // Autoscaled: the reason says what holds the count (HPA's ScalingLimited).
        (
            counts.replicas != desired || d.reason.is_limited(),
            d.reason.as_str(),
            format!("{} pods; {}", counts.replicas, d.message()),
        )
    } else if counts.replicas < desired && plan.backoff_until_ms.is_some() {
        (
            true,
            "BackOff",
            format!(
                "{} of {desired} pods; replacements back off after failures",
                counts.replicas
            ),
        )
    } else if counts.replicas < desired {
        (
            true,
            "ScalingUp",
            format!("{} of {desired} pods", counts.replicas),
        )
    } else if counts.replicas > desired {
        (
            true,
            "ScalingDown",
            format!("{} of {desired} pods", counts.replicas),
        )
    } else {
        (false, "AtDesired", format!("{desired} pods as desired"))
    };
    conditions.push(condition(
        old, generation, "Scaling", scaling, s_reason, s_msg,
    ));

    let queue_status = probed
        .as_ref()
        .and_then(|p| p.result.as_ref().ok())
        .map(|st| QueueStatus {
            backlog: st.backlog as i64,
            pending: st.pending as i64,
            dead_letters: st.dead_letters as i64,
            oldest_pending_seconds: st.oldest_pending_age_ms.map(|ms| (ms / 1000) as i64),
            consumers: st.consumers.len() as i32,
            partitions: crate::crd::PartitionStatus::of(st),
        });
    let status = WorkPoolStatus {
        observed_generation: generation,
        replicas: counts.replicas,
        ready_replicas: counts.ready,
        busy_replicas: counts.busy,
        desired_replicas: desired,
        selector: Some(pods::selector(name)),
        queue: queue_status,
        last_scale_time,
        conditions,
    };
    if old != Some(&status) {
        let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": ns},
            "status": status
        });
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    ctx.with_memory(key, |m| {
        m.published = Some((status.desired_replicas, status.last_scale_time.clone()))
    });

    // Wake from zero: a pool at zero is watched for its first task.
    if ctx.wake.enabled() {
        let at_zero = invalid.is_none()
            && decision.is_some_and(|d| d.desired_replicas == 0)
            && counts.replicas == 0
            && created.is_empty();
        match (&queue, probed.as_ref().map(|p| &p.result)) {
            (Ok(_), Some(Ok(st))) if at_zero => match ctx.probe.target(&ctx.client, wp).await {
                Ok(target) => ctx
                    .wake
                    .watch(key, Some(WakeTarget::from_stats(target, st))),
                Err(_) => ctx.wake.watch(key, None),
            },
            // Redis cannot be read: keep what is registered (its watcher reconnects).
            (Ok(_), Some(Err(_))) if at_zero => {}
            _ => ctx.wake.watch(key, None),
        }
    }

    let l = [ns, name];
    ctx.metrics
        .desired
        .with_label_values(&l)
        .set(desired as i64);
    ctx.metrics
        .replicas
        .with_label_values(&l)
        .set(counts.replicas as i64);
    ctx.metrics
        .ready
        .with_label_values(&l)
        .set(counts.ready as i64);
    ctx.metrics
        .busy
        .with_label_values(&l)
        .set(counts.busy as i64);

    if let Some((_, e)) = create_error {
        return Err(e);
    }
    let mut next = poll;
    if let Some(t) = plan.backoff_until_ms {
        next = next.min(Duration::from_millis(t.saturating_sub(now_ms()).max(100)));
    }
    if plan.state.consecutive_failures > 0 {
        // Come back when the failure memory may reset.
        next = next.min(Duration::from_millis(
            ctx.config.backoff.reset_after_ms.max(1000),
        ));
    }
    Ok(Action::requeue(next))
}

async fn create_pod(wp: &WorkPool, api: &Api<Pod>) -> Result<String> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let mut last = None;
    for _ in 0..3 {
        let name = pods::pod_name(&wp.name_any(), rand::random::<u64>());
        let pod = pods::build_pod(wp, &name).map_err(|e| Error::InvalidSpec(e.to_string()))?;
        match api.create(&pp, &pod).await {
            Ok(_) => return Ok(name),
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(Error::from)
        .unwrap_or_else(|| Error::InvalidSpec("no pod name available".into())))
}

async fn cleanup(wp: &WorkPool, ctx: &Context, key: &(String, String)) -> Result<Action> {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    if !wp.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.wake.watch(key, None);
        ctx.metrics.remove_pool(ns, name);
        ctx.forget(key);
        return Ok(Action::await_change());
    }
    let started = ctx.with_memory(key, |m| *m.cleanup_started.get_or_insert_with(Instant::now));
    let timed_out = started.elapsed() > ctx.config.cleanup_timeout;

    // 1. The pods go first, so that their consumers are idle when removed.
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let remaining = cached_pods(ctx, wp);
    if !remaining.is_empty() && !timed_out {
        for p in remaining
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let n = p.name_any();
            match pods_api.delete(&n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // 2. Consumers leave the group; the stream and group are the user's data and stay.
    if let Ok(q) = queue_of(wp) {
        let result = match ctx.probe.target(&ctx.client, wp).await {
            Ok(target) => match ctx.probe.stats(&target, &q).await {
                Ok(st) => {
                    let names: Vec<String> = st.consumers.iter().map(|c| c.name.clone()).collect();
                    ctx.probe.remove_idle_consumers(&target, &q, &names).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok((removed, kept)) => {
                if removed > 0 {
                    ctx.event(
                        wp,
                        EventType::Normal,
                        "ConsumersRemoved",
                        "Cleanup",
                        format!("removed {removed} consumers from group {:?}", q.group()),
                    )
                    .await;
                }
                if !kept.is_empty() {
                    let total: u64 = kept.iter().map(|k| k.1).sum();
                    ctx.event(wp, EventType::Warning, "ConsumersKept", "Cleanup",
                        format!("{} consumers still hold {total} tasks; they stay in group {:?} so that the tasks are not lost", kept.len(), q.group())).await;
                }
            }
            Err(e @ ProbeError::Secret(_)) | Err(e @ ProbeError::InvalidUrl) => {
                ctx.event(
                    wp,
                    EventType::Warning,
                    "CleanupSkipped",
                    "Cleanup",
                    format!("consumers not removed: {e}"),
                )
                .await;
            }
            Err(e) if !timed_out => {
                return Err(Error::Cleanup(e.to_string()));
            }
            Err(e) => {
                ctx.event(
                    wp,
                    EventType::Warning,
                    "CleanupSkipped",
                    "Cleanup",
                    format!(
                        "gave up removing consumers after {}s: {e}",
                        ctx.config.cleanup_timeout.as_secs()
                    ),
                )
                .await;
            }
        }
    }

    // 3. The finalizer goes; the pool is deleted.
    let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), ns);
    let fins = wp.finalizers().to_vec();
    if fins.iter().any(|f| f == FINALIZER) {
        let rest: Vec<&String> = fins.iter().filter(|f| *f != FINALIZER).collect();
        let patch =
            json!({"metadata": {"finalizers": rest, "resourceVersion": wp.resource_version()}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(
        namespace = ns,
        workpool = name,
        "pool deleted: pods and consumers removed"
    );
    ctx.wake.watch(key, None);
    ctx.metrics.remove_pool(ns, name);
    ctx.forget(key);
    Ok(Action::await_change())
}

/// Reconciles of the pools whose `urlSecretRef` names a Secret that changed, with the
/// Secret's cached URL dropped and a fresh queue read asked for, so that a rotated URL (a
/// new Redis, a new password) is followed at once instead of after the Secret cache
/// (30 s) and the poll interval. Only the Secrets' metadata is watched (their data never
/// reaches the operator this way: it reads a referenced Secret itself), and a Secret
/// seen for the first time (the initial list, a re-list) triggers nothing.
pub fn secret_triggers(
    secrets: Api<kube::core::PartialObjectMeta<Secret>>,
    pools: Store<WorkPool>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<WorkPool>> + Send + 'static {
    use kube::runtime::WatchStreamExt;
    let versions: Arc<Mutex<HashMap<(String, String), String>>> = Arc::default();
    watcher::watcher(secrets, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects()
        .filter_map(|r| async move { r.map_err(|e| warn!(error = %e, "secret watch")).ok() })
        .flat_map(move |secret| {
            let ns = secret.metadata.namespace.clone().unwrap_or_default();
            let name = secret.metadata.name.clone().unwrap_or_default();
            let rv = secret.metadata.resource_version.clone().unwrap_or_default();
            let changed = {
                let mut v = versions.lock().unwrap_or_else(|p| p.into_inner());
                v.insert((ns.clone(), name.clone()), rv.clone())
                    .is_some_and(|old| old != rv)
            };
            let refs = if changed {
                secret_changed(&ctx, &pools, &ns, &name)
            } else {
                Vec::new()
            };
            futures::stream::iter(refs)
        })
}

/// The pools of `ns` that refer to `secret` (URL, CA or client certificate), each with its
/// cached Secret values dropped and a fresh queue read asked for.
pub fn secret_changed(
    ctx: &Context,
    pools: &Store<WorkPool>,
    ns: &str,
    secret: &str,
) -> Vec<ObjectRef<WorkPool>> {
    let mut out = Vec::new();
    for wp in pools.state() {
        if wp.namespace().as_deref() == Some(ns) && wp.references_secret(secret) {
            ctx.probe.forget_secret(&wp);
            let key = (ns.to_string(), wp.name_any());
            ctx.with_memory(&key, |m| m.probe_now = Some("secret"));
            info!(namespace = ns, workpool = %key.1, secret, "the pool's Redis Secret changed: reading it again");
            out.push(ObjectRef::from_obj(&*wp));
        }
    }
    out
}

/// Entries after this id are new for a pool at zero: the group's last delivered id (no
/// pod consumes while the pool is at zero, so it does not move), or `0-0` while the
/// group or the stream does not exist (every entry then counts as waiting).
pub fn wake_after(st: &QueueStats) -> workpool_worker::queue::EntryId {
    if st.stream_exists && st.group_exists {
        st.last_delivered_id.unwrap_or_default()
    } else {
        workpool_worker::queue::EntryId::ZERO
    }
}

/// The annotation ReplicaSets (and people) read to tell which pods to delete first.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod that stays through a scale-in, as the deletion-cost update sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostInput {
    /// The pod.
    pub name: String,
    /// Its annotation now (`None` when absent or not a number).
    pub current: Option<i32>,
    /// Tasks its consumer holds.
    pub pending: u64,
}

/// The `pod-deletion-cost` writes for the pods that stay through a scale-in: only where
/// the value differs from what the pod has, and only when the pods differ at all (all
/// idle, or all equally busy, tell nothing: an absent annotation means cost 0 already).
///
/// The operator chooses its own victims from consumer state (idle first); the annotation
/// is for anything else that deletes the pool's pods by it, and shows the choice. It is
/// written only while the pool scales in, not per poll: a pool that does not shrink
/// costs no writes.
pub fn deletion_cost_updates(pods: &[CostInput]) -> Vec<(String, i32)> {
    let costs: Vec<i32> = pods
        .iter()
        .map(|p| autoscale::pod_deletion_cost(p.pending))
        .collect();
    let differ = costs.windows(2).any(|w| w[0] != w[1]);
    pods.iter()
        .zip(costs)
        .filter(|(p, cost)| {
            let now = p.current.unwrap_or(0);
            now != *cost && (differ || p.current.is_some())
        })
        .map(|(p, cost)| (p.name.clone(), cost))
        .collect()
}

/// Runs `controller` until `shutdown` resolves.
pub async fn run(
    controller: Controller<WorkPool>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                match e {
                    kube::runtime::controller::Error::ObjectNotFound(o) => {
                        debug!(object = %o, "reconcile of a vanished object skipped")
                    }
                    e => debug!(error = %e, "controller"),
                }
            }
        })
        .await;
}

/// The object reference of a pool (for tests and events).
pub fn pool_ref(ns: &str, name: &str) -> ObjectRef<WorkPool> {
    ObjectRef::new(name).within(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let old = WorkPoolStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "AllReplicasReady".into(),
                message: "1/1".into(),
                last_transition_time: "2020-01-01T00:00:00Z".into(),
                observed_generation: Some(1),
            }],
            ..Default::default()
        };
        let same = condition(
            Some(&old),
            Some(2),
            "Ready",
            true,
            "AllReplicasReady",
            "2/2".into(),
        );
        assert_eq!(same.last_transition_time, "2020-01-01T00:00:00Z");
        let flipped = condition(
            Some(&old),
            Some(2),
            "Ready",
            false,
            "ReplicasNotReady",
            "0/2".into(),
        );
        assert_ne!(flipped.last_transition_time, "2020-01-01T00:00:00Z");
        assert!(flipped.last_transition_time.ends_with('Z'));
    }

    fn cost(name: &str, current: Option<i32>, pending: u64) -> CostInput {
        CostInput {
            name: name.into(),
            current,
            pending,
        }
    }

    #[test]
    fn deletion_cost_is_written_only_where_it_changes_and_tells_something() {
        // Busy and idle pods: the busy ones get their pending count, idle ones stay at
        // the default (no annotation means 0).
        let pods = [
            cost("a", None, 0),
            cost("b", None, 3),
            cost("c", Some(2), 2),
        ];
        assert_eq!(deletion_cost_updates(&pods), vec![("b".to_string(), 3)]);
        // Nothing changed: no write.
        let same = [cost("a", None, 0), cost("b", Some(3), 3)];
        assert!(deletion_cost_updates(&same).is_empty());
        // All idle (or all equally busy) without annotations: nothing to tell.
        assert!(deletion_cost_updates(&[cost("a", None, 0), cost("b", None, 0)]).is_empty());
        assert!(deletion_cost_updates(&[cost("a", None, 4), cost("b", None, 4)]).is_empty());
        // A stale annotation is corrected even then.
        assert_eq!(
            deletion_cost_updates(&[cost("a", Some(5), 0), cost("b", None, 0)]),
            vec![("a".to_string(), 0)]
        );
        // Huge counts saturate; nothing panics on no pods.
        assert_eq!(
            deletion_cost_updates(&[cost("a", None, u64::MAX), cost("b", None, 0)]),
            vec![("a".to_string(), i32::MAX)]
        );
        assert!(deletion_cost_updates(&[]).is_empty());
    }

    #[test]
    fn a_pool_at_zero_waits_for_entries_after_the_groups_last_delivered_id() {
        use workpool_worker::queue::EntryId;
        let mut st = QueueStats {
            stream_exists: true,
            group_exists: true,
            last_delivered_id: Some(EntryId { ms: 7, seq: 2 }),
            ..Default::default()
        };
        assert_eq!(wake_after(&st), EntryId { ms: 7, seq: 2 });
        st.group_exists = false;
        assert_eq!(
            wake_after(&st),
            EntryId::ZERO,
            "no group: every entry waits"
        );
        st.stream_exists = false;
        assert_eq!(
            wake_after(&st),
            EntryId::ZERO,
            "no stream: its first entry wakes"
        );
    }

    #[test]
    fn every_scaling_reason_is_a_documented_metric_reason() {
        use crate::autoscale::ScalingReason as R;
        for r in [
            R::DesiredWithinRange,
            R::WithinTolerance,
            R::MaxReplicas,
            R::MinReplicas,
            R::StabilizationWindow,
            R::RatePolicy,
            R::ScalingDisabled,
            R::Fallback,
            R::QueueUnreadable,
            R::Activation,
            R::ScaleToZeroDelay,
            R::ScaledToZero,
        ] {
            assert!(crate::metrics::SCALE_REASONS.contains(&r.as_str()), "{r}");
        }
    }

    #[test]
    fn observe_pod_reads_phase_readiness_eviction_and_template() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a-1", "labels": {TEMPLATE_HASH_LABEL: "h1"},
                         "creationTimestamp": "2024-01-01T00:00:01Z"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod");
        let o = observe_pod(&p, "h1").expect("observed");
        assert!(o.ready && o.current && !o.terminating && o.phase == Phase::Running);
        assert_eq!(o.created_ms, 1_704_067_201_000);
        assert!(!observe_pod(&p, "h2").expect("observed").current);
        let e: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a-2", "deletionTimestamp": "2024-01-01T00:00:01Z"},
            "status": {"phase": "Failed", "reason": "Evicted"}
        }))
        .expect("pod");
        let o = observe_pod(&e, "h1").expect("observed");
        assert!(o.evicted && o.terminating && o.phase == Phase::Failed && !o.ready);
    }
}
