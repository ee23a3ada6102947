//! The controller: the kube-runtime `Controller` wiring and the staged reconcile of one
//! pool. Each stage is a function of its own with a typed hand-off:
//!
//! 1. [`observe`](crate::observe::observe): the pool, its pods (the cache) and its queue
//!    (the hub's latest snapshot): one read each, never waiting for Redis;
//! 2. [`decide`](crate::decide::decide): pure: the autoscaler, the plan, drains,
//!    annotations, consumers to remove, Events, the status;
//! 3. [`act`](crate::act::act): the writes, each error naming its call and object, every
//!    write only while this replica leads;
//! 4. [`publish`](crate::act::publish): status (only when it changed) and Events (off the
//!    reconcile path), metrics, the wake registration.
//!
//! Deletion goes through `kube::runtime::finalizer` ([`cleanup`]): pods first, then the
//! pool's own consumers leave the group; the stream is the user's data and stays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::autoscale;
use crate::crd::{AutoscalingSpec, WorkPool};
use crate::decide::{self, Note, PoolMemory, key_of};
use crate::hub::{PoolKey, QueueHub};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::observe::{self, cached_pods, queue_of};
use crate::planner::BackoffConfig;
use crate::podcache::{CachedPod, PodIndex};
use crate::probe::{ProbeError, QueueTargets};
use crate::wake::Wake;
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
    /// How long a Redis URL read from a Secret is used before the Secret is read again.
    pub secret_refresh: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            poll_interval: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            cleanup_timeout: Duration::from_secs(300),
            expectation_timeout: Duration::from_secs(60),
            secret_refresh: crate::probe::SECRET_TTL,
        }
    }
}

/// Where Events go: a task of their own (the reconcile never waits for them), or inline
/// (tests, to see every request in order).
pub enum EventSink {
    /// Sent to the publishing task.
    Background(mpsc::Sender<(ObjectReference, Event)>),
    /// Published by the reconcile itself.
    Inline,
}

/// Shared state of every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// The pools' Redis targets: URL and TLS material (Secrets read at most every
    /// `secret_refresh`).
    pub targets: QueueTargets,
    /// The queue readers.
    pub hub: QueueHub,
    /// The cache of the pools' pods (projected: [`crate::podcache::project`]).
    pub pods: Store<CachedPod>,
    /// Pool -> its pods in [`Context::pods`] (disabled: lookups scan the store).
    pub pod_index: PodIndex,
    /// Settings.
    pub config: ControllerConfig,
    /// Wake from zero (disabled unless [`Context::with_wake`]).
    pub wake: Wake,
    /// Whether this replica may write.
    pub leadership: Leadership,
    events: EventSink,
    memory: Mutex<HashMap<PoolKey, PoolMemory>>,
}

impl Context {
    /// A context; Events are published by a task of their own (spawned here).
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        metrics: Metrics,
        pods: Store<CachedPod>,
        hub: QueueHub,
        config: ControllerConfig,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Event)>(1024);
        let r = recorder.clone();
        tokio::spawn(async move {
            while let Some((obj, ev)) = rx.recv().await {
                if let Err(e) = r.publish(&ev, &obj).await {
                    warn!(error = %e, reason = %ev.reason, "cannot publish event");
                }
            }
        });
        Context {
            client,
            recorder,
            metrics,
            targets: QueueTargets::new(config.secret_refresh),
            hub,
            pods,
            pod_index: PodIndex::disabled(),
            config,
            wake: Wake::disabled(),
            leadership: Leadership::always(),
            events: EventSink::Background(tx),
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The context with wake from zero by `wake`.
    pub fn with_wake(mut self, wake: Wake) -> Self {
        self.wake = wake;
        self
    }

    /// The context looking pods up through `index` (fed by the pod watch).
    pub fn with_pod_index(mut self, index: PodIndex) -> Self {
        self.pod_index = index;
        self
    }

    /// The context acting only while `leadership` holds.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// The context publishing Events inline (tests).
    pub fn with_inline_events(mut self) -> Self {
        self.events = EventSink::Inline;
        self
    }

    /// Runs `f` on the pool's memory.
    pub fn with_memory<T>(&self, key: &PoolKey, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(key.clone()).or_default())
    }

    /// Whether the operator remembers anything of the pool (tests).
    pub fn remembers(&self, key: &PoolKey) -> bool {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Fails unless this replica may write now.
    pub fn leading(&self) -> Result<()> {
        if self.leadership.is_leading() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Forgets everything of a pool: memory, queue reader, wake registration, metric
    /// series. Run when its cleanup is done, and when the pool vanished without it.
    pub fn forget(&self, key: &PoolKey) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.hub.unregister(key);
        self.wake.watch(key, None);
        self.metrics.remove_pool(&key.0, &key.1);
    }

    /// Forgets the pools that are not in `pools` any more (after a re-list).
    pub fn forget_missing(&self, pools: &Store<WorkPool>) {
        let present: std::collections::HashSet<PoolKey> =
            pools.state().iter().map(|p| key_of(p)).collect();
        let known: Vec<PoolKey> = {
            let m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            m.keys().cloned().chain(self.hub.registered()).collect()
        };
        for k in known {
            if !present.contains(&k) {
                debug!(namespace = %k.0, workpool = %k.1, "pool gone: forgetting it");
                self.forget(&k);
            }
        }
    }

    /// Publishes Events about `wp` (in the background unless inline), while leading.
    pub async fn notify(&self, wp: &WorkPool, notes: Vec<Note>) {
        if notes.is_empty() || !self.leadership.is_leading() {
            return;
        }
        let obj = wp.object_ref(&());
        for n in notes {
            let ev = Event {
                type_: if n.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: n.reason.into(),
                note: Some(n.note.chars().take(1000).collect()),
                action: n.action.into(),
                secondary: None,
            };
            match &self.events {
                EventSink::Background(tx) => {
                    if tx.try_send((obj.clone(), ev)).is_err() {
                        debug!(reason = n.reason, "event queue full: event dropped");
                    }
                }
                EventSink::Inline => {
                    if let Err(e) = self.recorder.publish(&ev, &obj).await {
                        warn!(error = %e, reason = n.reason, "cannot publish event");
                    }
                }
            }
        }
    }
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
    observe::poll_interval(wp, cfg.poll_interval)
}

/// Reconciles one pool: its deletion through the finalizer, else the four stages.
pub async fn reconcile(wp: Arc<WorkPool>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let key = key_of(&wp);
    ctx.leading()?;
    let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), &key.0);
    let object = format!("{}/{}", key.0, key.1);
    let r = finalizer(&api, FINALIZER, wp, |event| async {
        match event {
            Finalizer::Apply(wp) => apply(wp, &ctx).await,
            Finalizer::Cleanup(wp) => cleanup(wp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::from_finalizer(e, object));
    timer.observe_duration();
    if r.is_ok() && ctx.remembers(&key) {
        ctx.with_memory(&key, |m| m.errors = 0);
    }
    r
}

/// The four stages for a pool that is not being deleted.
async fn apply(wp: Arc<WorkPool>, ctx: &Context) -> Result<Action> {
    let key = key_of(&wp);
    let uid = wp.metadata.uid.clone().unwrap_or_default();
    ctx.with_memory(&key, |m| {
        if m.uid != uid {
            // A new pool under an old name: start afresh.
            *m = PoolMemory {
                uid: uid.clone(),
                read_reason: m.read_reason.take(),
                ..Default::default()
            };
        }
    });
    let observed = observe::observe(wp, ctx).await;
    let decided = ctx.with_memory(&key, |m| decide::decide(&observed, m, &ctx.config));
    let outcome = crate::act::act(&observed, &decided, ctx).await?;
    let requeue = crate::act::publish(&observed, &decided, &outcome, ctx).await?;
    match outcome.create_error {
        Some(e) => Err(e),
        None => Ok(Action::requeue(requeue)),
    }
}

/// When a reconcile refused for lack of leadership is tried again.
pub const NOT_LEADING_RETRY: Duration = Duration::from_secs(1);

/// Error policy: count it, back off per pool (1 s doubling to 5 min). A deletion that
/// waits (for its pods, for Redis) is looked at again at its own pace, uncounted, so the
/// cleanup timeout is checked on time.
pub fn error_policy(wp: Arc<WorkPool>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&wp);
    if let Error::CleanupWaits { what, retry } = err {
        debug!(namespace = %key.0, workpool = %key.1, waiting_for = %what, "deletion waits");
        return Action::requeue(*retry);
    }
    // Leadership lapses for a moment when a renewal is late (its validity runs from the
    // attempt's start); the controller is stopped when the Lease is really lost. Dropping
    // the reconcile (await_change) left an idle pool on its last status until a trigger.
    if matches!(err, Error::NotLeader) {
        debug!(namespace = %key.0, workpool = %key.1, "not leading: looked at again in 1 s");
        return Action::requeue(NOT_LEADING_RETRY);
    }
    // The pool went while it was being reconciled (its finalizer or status write found
    // nothing): its Delete event forgets it; counting the error here would bring back the
    // series and the memory that forgetting removed.
    if err.metric_label() == "not_found" {
        debug!(namespace = %key.0, workpool = %key.1, error = %err, "pool gone mid-reconcile");
        return Action::await_change();
    }
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

/// Deletion: the pods go first (so that their consumers are idle), then the pool's own
/// consumers leave the group (never another pool's sharing it); the stream and the group
/// are the user's data and stay. Gives up on Redis after the cleanup timeout.
async fn cleanup(wp: Arc<WorkPool>, ctx: &Context) -> Result<Action> {
    let key = key_of(&wp);
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    ctx.leading()?;
    let started = ctx.with_memory(&key, |m| {
        *m.cleanup_started.get_or_insert_with(Instant::now)
    });
    let left = ctx.config.cleanup_timeout.saturating_sub(started.elapsed());
    let retry = |what: String| Error::CleanupWaits {
        what,
        retry: left.clamp(Duration::from_millis(100), Duration::from_secs(5)),
    };

    let remaining = cached_pods(ctx, &wp);
    if !remaining.is_empty() && !left.is_zero() {
        let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        for p in remaining
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let n = p.name_any();
            match pods_api.delete(&n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(Error::api("delete pod", format!("{ns}/{n}"), e)),
            }
        }
        return Err(retry(format!("{} pods to go", remaining.len())));
    }

    let mut notes = Vec::new();
    if let Ok(q) = queue_of(&wp) {
        let result = match ctx.targets.target(&ctx.client, &wp).await {
            Ok(target) => match observe::keys_on(q.clone(), &target) {
                Ok(q) => ctx.hub.cleanup_pool(&target, &q, name).await,
                Err(e) => Err(ProbeError::Invalid(e)),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok((removed, kept)) => {
                if removed > 0 {
                    notes.push(decide_note(
                        false,
                        "ConsumersRemoved",
                        format!("removed {removed} consumers from group {:?}", q.group()),
                    ));
                }
                if !kept.is_empty() {
                    let total: u64 = kept.iter().map(|k| k.1).sum();
                    notes.push(decide_note(true, "ConsumersKept", format!("{} consumers still hold {total} tasks; they stay in group {:?} so that the tasks are not lost", kept.len(), q.group())));
                }
            }
            Err(
                e @ (ProbeError::Secret(_)
                | ProbeError::SecretForbidden { .. }
                | ProbeError::InvalidUrl
                | ProbeError::Invalid(_)),
            ) => {
                notes.push(decide_note(
                    true,
                    "CleanupSkipped",
                    format!("consumers not removed: {e}"),
                ));
            }
            Err(e) if !left.is_zero() => return Err(retry(format!("Redis: {e}"))),
            Err(e) => {
                notes.push(decide_note(
                    true,
                    "CleanupSkipped",
                    format!(
                        "gave up removing consumers after {}s: {e}",
                        ctx.config.cleanup_timeout.as_secs()
                    ),
                ));
            }
        }
    }
    ctx.notify(&wp, notes).await;
    info!(
        namespace = ns,
        workpool = name,
        "pool deleted: pods and consumers removed"
    );
    ctx.forget(&key);
    Ok(Action::await_change())
}

fn decide_note(warning: bool, reason: &'static str, note: String) -> Note {
    Note {
        warning,
        reason,
        action: "Cleanup",
        note,
    }
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

/// Without list and watch on Secrets: the Secrets the pools name, each read (its
/// metadata only) once every `period`, and the pools naming one that now reads
/// otherwise than when their reconcile last read it (another resourceVersion; created,
/// deleted, made readable or forbidden) triggered as by [`secret_triggers`]. One read
/// per Secret, however many pools share it, and no reconcile of a pool whose Secrets did
/// not change (it was a reconcile of every such pool every `period`: 10,000 pools cost
/// 330 reconciles/s at rest). A Secret no reconcile has read yet triggers nothing: the
/// pool's first reconcile reads it as it is.
pub fn secret_polls(
    client: kube::Client,
    pools: Store<WorkPool>,
    ctx: Arc<Context>,
    period: Duration,
) -> impl futures::Stream<Item = ObjectRef<WorkPool>> + Send + 'static {
    /// Reads of Secrets in flight at once.
    const READS_IN_FLIGHT: usize = 8;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(tick, move |mut tick| {
        let (client, pools, ctx) = (client.clone(), pools.clone(), ctx.clone());
        async move {
            tick.tick().await;
            let named: std::collections::BTreeSet<(String, String)> = pools
                .state()
                .iter()
                .flat_map(|wp| {
                    let ns = wp.namespace().unwrap_or_default();
                    wp.secret_names()
                        .map(|s| (ns.clone(), s.to_string()))
                        .collect::<Vec<_>>()
                })
                .collect();
            ctx.targets.retain_versions(|k| named.contains(k));
            let reads = futures::stream::iter(named)
                .filter(|(ns, name)| {
                    std::future::ready(ctx.targets.version_read(ns, name).is_some())
                })
                .map(|(ns, name)| {
                    let client = client.clone();
                    async move {
                        let api: Api<kube::core::PartialObjectMeta<Secret>> =
                            Api::namespaced(client, &ns);
                        let version = match api.get_metadata_opt(&name).await {
                            Ok(Some(s)) => Some(s.metadata.resource_version.unwrap_or_default()),
                            Ok(None) => Some(crate::probe::SECRET_ABSENT.to_string()),
                            Err(kube::Error::Api(s)) if s.code == 403 => {
                                Some(crate::probe::SECRET_FORBIDDEN.to_string())
                            }
                            // No answer about the Secret: asked again next period.
                            Err(e) => {
                                debug!(namespace = %ns, secret = %name, error = %e, "reading a Secret's metadata");
                                None
                            }
                        };
                        (ns, name, version)
                    }
                })
                .buffer_unordered(READS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
            let mut refs = Vec::new();
            for (ns, name, version) in reads {
                let used = ctx.targets.version_read(&ns, &name);
                if version.is_some() && used.is_some() && version != used {
                    refs.extend(secret_changed(&ctx, &pools, &ns, &name));
                }
            }
            Some((futures::stream::iter(refs), tick))
        }
    })
    .flatten()
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
            ctx.targets.forget_secret(&wp);
            let key = (ns.to_string(), wp.name_any());
            // The reconcile reads the Secret again; a new URL is read at once (one read
            // per change), counted as caused by the Secret. The same URL: nothing to read.
            ctx.with_memory(&key, |m| m.read_reason = Some("secret"));
            info!(namespace = ns, workpool = %key.1, secret, "the pool's Redis Secret changed: reading it again");
            out.push(ObjectRef::from_obj(&*wp));
        }
    }
    out
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
mod tests;
