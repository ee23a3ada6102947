//! Decide (pure: no client, no IO, no clock): from what a reconcile observed and the
//! pool's memory, everything the reconcile will do: the desired count (the autoscaler),
//! the plan (creates, deletes, drains), the busy/idle annotations, the consumers to
//! remove, the Events, the status to publish, the wake registration and when to look
//! again. Unit-tested without a cluster; the controller only carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::ResourceExt;

use crate::autoscale::{self, Autoscaler, Backlog, Decision, Observation, ScalingReason};
use crate::controller::ControllerConfig;
use crate::crd::{AutoscalingSpec, WorkPool, WorkPoolStatus};
use crate::hub::{Command, Snapshot};
use crate::observe::{Observed, PodView};
use crate::planner::{
    self, DeleteReason, Freeze, ObservedPod, Plan, PlanInput, PlanState, QueueView,
    ReplacementReason,
};
use crate::pods;
use crate::status::{self, PodTrouble, QueueSeen, StatusInput};
use crate::wake::WakeTarget;
use workpool_worker::queue::{EntryId, QueueStats};

/// How long a pool at rest waits before it is looked at again without any trigger.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What the operator remembers of one pool between reconciles.
#[derive(Debug, Default)]
pub struct PoolMemory {
    /// The pool's uid (a new pool under an old name starts afresh).
    pub uid: String,
    /// The planner's memory.
    pub plan: PlanState,
    /// Pods created and not yet seen in the cache (ms when created).
    pub creating: BTreeMap<String, u64>,
    /// Pods deleted and not yet seen terminating or gone (ms when deleted).
    pub deleting: BTreeMap<String, u64>,
    /// The autoscaler and the origin of its clock (ms).
    pub autoscaler: Autoscaler,
    /// Origin of the autoscaler's clock.
    pub autoscale_origin_ms: Option<u64>,
    /// The autoscaler's last decision, with the queue read and the pool generation it was
    /// made for: it decides once per read (as a poll would), not on every pod event.
    pub decision: Option<(Decision, u64, Option<i64>)>,
    /// The `desiredReplicas` and `lastScaleTime` last written: the object a reconcile
    /// gets may predate that write, and a scale decision is counted, and told, once.
    pub published: Option<(i32, Option<String>)>,
    /// When queue figures were last written to the status (ms).
    pub queue_written_ms: u64,
    /// The status this process wrote last. The pool a reconcile gets comes from the
    /// cache, which may predate that write (its echo is on its way): a status equal to the
    /// cached one but not to this is written, or the older write would stay.
    pub written_status: Option<crate::crd::WorkPoolStatus>,
    /// Reconcile errors in a row (the error back-off).
    pub errors: u32,
    /// The API refused creates: the last refusal (without the pod's name), refusals in a
    /// row, and when to try again (ms). Cleared by a create that succeeds. Kept here, not
    /// in the error back-off, because any trigger (a pod event, a queue read) reconciles
    /// and would otherwise try again at once.
    pub create_refused: Option<CreateRefused>,
    /// When deletion started (for the cleanup timeout).
    pub cleanup_started: Option<std::time::Instant>,
    /// Why the next read of the queue happens early (a changed Secret), if it does.
    pub read_reason: Option<&'static str>,
}

/// Creates the API refuses back off: 1 s doubling to 5 min.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRefused {
    /// The refusal, without the pod's name.
    pub message: String,
    /// Refusals in a row.
    pub count: u32,
    /// No create before this time (ms).
    pub retry_at_ms: u64,
}

impl CreateRefused {
    /// The memory after one more refusal at `now_ms`.
    pub fn after(previous: Option<&CreateRefused>, message: String, now_ms: u64) -> Self {
        let count = previous.map_or(0, |p| p.count).saturating_add(1);
        let delay_ms = (1000u64 << (count - 1).min(9)).min(300_000);
        CreateRefused {
            message,
            count,
            retry_at_ms: now_ms + delay_ms,
        }
    }
}

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What the operator did (Create, Delete, Drain, Scale, Probe, Reconcile, Replace).
    pub action: &'static str,
    /// The message.
    pub note: String,
}

fn note(warning: bool, reason: &'static str, action: &'static str, note: String) -> Note {
    Note {
        warning,
        reason,
        action,
        note,
    }
}

/// The busy/idle annotations a pod should carry; `None` in a field: leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalPatch {
    /// `safe-to-evict`: "true" or "false".
    pub safe_to_evict: String,
    /// `do-not-disrupt`: `Some("true")`, or `None` to remove it.
    pub do_not_disrupt: Option<String>,
    /// `pod-deletion-cost`, or `None` to remove it (idle).
    pub deletion_cost: Option<String>,
}

/// A pod to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Name.
    pub name: String,
    /// Uid, when known (the delete is conditional on it).
    pub uid: Option<String>,
    /// Why.
    pub reason: DeleteReason,
}

/// What registration of the pool with wake from zero should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeIntent {
    /// Not at zero (or not autoscaled): not watched.
    Unwatch,
    /// At zero: watch every partition for an entry after the ids in the target (boxed: a
    /// target is large beside the other variants).
    Watch(Box<WakeTarget>),
    /// At zero, queue unreadable: keep what is registered (its watcher reconnects).
    Keep,
}

/// The figures of the pool's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    /// Desired pods.
    pub desired: i32,
    /// Pods (draining excluded).
    pub replicas: i32,
    /// Ready pods.
    pub ready: i32,
    /// Busy pods.
    pub busy: i32,
    /// Draining pods.
    pub draining: i32,
}

/// A change of the desired count, for the scale metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaled {
    /// "up" or "down".
    pub direction: &'static str,
    /// The autoscaler's reason, or "Spec".
    pub reason: &'static str,
}

/// Everything one reconcile does.
#[derive(Debug, Clone)]
pub struct Decided {
    /// Pods to create.
    pub creates: u32,
    /// Creates held back after a refusal: the refusal the status keeps showing meanwhile.
    pub held_refusal: Option<String>,
    /// Pods to delete.
    pub deletes: Vec<Delete>,
    /// Writes to the queue (drains, consumer removal).
    pub commands: Vec<Command>,
    /// Annotation patches.
    pub signals: Vec<(String, SignalPatch)>,
    /// Events, in order.
    pub notes: Vec<Note>,
    /// What the status is built from (the outcome of the creates adds to it).
    pub status: StatusParts,
    /// Gauges.
    pub figures: Figures,
    /// Replacements noticed (metrics).
    pub replacements: Vec<(String, ReplacementReason)>,
    /// A new desired count (metrics).
    pub scaled: Option<Scaled>,
    /// Wake from zero.
    pub wake: WakeIntent,
    /// When to look again without a trigger.
    pub requeue: Duration,
    /// Pods told to drain by this reconcile, and drains taken back (metrics).
    pub drains: (u32, u32),
}

/// The status, before the outcome of the creates is known.
#[derive(Debug, Clone)]
pub struct StatusParts {
    /// Desired.
    pub desired: i32,
    /// The planner's counts.
    pub counts: planner::Counts,
    /// Why the spec cannot be acted on.
    pub invalid: Option<String>,
    /// `spec.paused`.
    pub paused: bool,
    /// The autoscaler's decision.
    pub decision: Option<Decision>,
    /// Replacements back off.
    pub backing_off: bool,
    /// A rollout is under way.
    pub rolling_out: bool,
    /// Pod trouble (without a refused create: that comes from acting).
    pub trouble: PodTrouble,
    /// `lastScaleTime`.
    pub last_scale_time: Option<String>,
}

impl StatusParts {
    /// The status of the pool after acting, with `create_refused` (the API's refusal of a
    /// create, if any); `queue` is the queue part to write; `now` stamps transitions.
    pub fn build(
        &self,
        o: &Observed,
        create_refused: Option<String>,
        queue: Option<crate::crd::QueueStatus>,
        now: &str,
    ) -> WorkPoolStatus {
        let trouble = PodTrouble {
            create_refused,
            ..self.trouble.clone()
        };
        let seen = queue_seen(o);
        let input = StatusInput {
            generation: o.pool.metadata.generation,
            name: &o.key.1,
            desired: self.desired,
            counts: self.counts,
            invalid: self.invalid.as_deref(),
            paused: self.paused,
            queue: seen,
            decision: self.decision,
            backing_off: self.backing_off,
            rolling_out: self.rolling_out,
            trouble: &trouble,
            last_scale_time: self.last_scale_time.clone(),
        };
        let (stream, group) = match &o.queue {
            Ok(q) => (q.stream().to_string(), q.group().to_string()),
            Err(_) => (o.pool.stream(), o.pool.group()),
        };
        status::build(&input, o.pool.status.as_ref(), queue, &stream, &group, now)
    }
}

/// What the queue looked like to this reconcile.
pub fn queue_seen(o: &Observed) -> QueueSeen<'_> {
    match (&o.queue, &o.snapshot) {
        (Err(e), _) => QueueSeen::Invalid(e),
        (Ok(_), None) => QueueSeen::NotProbed,
        (Ok(_), Some(Snapshot { result: Ok(st), .. })) => QueueSeen::Read { stats: st },
        (Ok(_), Some(Snapshot { result: Err(e), .. })) => QueueSeen::Failed(e),
    }
}

fn stats(o: &Observed) -> Option<&QueueStats> {
    o.snapshot.as_ref().and_then(|s| s.result.as_ref().ok())
}

/// The autoscaler's view of `spec.autoscaling` (HPA's defaults where it says nothing).
pub fn autoscale_spec(a: &AutoscalingSpec) -> autoscale::AutoscaleSpec {
    crate::controller::autoscale_spec(a)
}

/// Why the spec cannot be acted on, if it cannot.
fn invalid(o: &Observed) -> Option<String> {
    match (&o.queue, &o.template) {
        (Err(e), _) => Some(format!("queue: {e}")),
        (_, Err(e)) => Some(format!("template: {e}")),
        _ => surge(&o.pool).err(),
    }
}

fn surge(wp: &WorkPool) -> Result<u32, String> {
    let bound = match &wp.spec.autoscaling {
        Some(a) => a.max_replicas.max(0) as u32,
        None => wp.spec.replicas.max(0) as u32,
    };
    planner::surge_of(
        wp.spec.rollout.as_ref().and_then(|r| r.max_surge.as_ref()),
        bound,
    )
}

/// The pods the planner sees: the cache, plus pods created that the cache does not show
/// yet, with pods deleted shown terminating until the cache says so.
fn observed_pods(o: &Observed, m: &mut PoolMemory, timeout_ms: u64) -> Vec<ObservedPod> {
    let now = o.now_ms;
    let seen: BTreeSet<&str> = o.pods.iter().map(|p| p.pod.name.as_str()).collect();
    for p in &o.pods {
        m.creating.remove(&p.pod.name);
        if p.pod.terminating {
            m.deleting.remove(&p.pod.name);
        }
    }
    m.deleting
        .retain(|n, at| seen.contains(n.as_str()) && now.saturating_sub(*at) < timeout_ms);
    m.creating
        .retain(|_, at| now.saturating_sub(*at) < timeout_ms);
    let mut out: Vec<ObservedPod> = o
        .pods
        .iter()
        .map(|p| {
            let mut pod = p.pod.clone();
            if m.deleting.contains_key(&pod.name) {
                pod.terminating = true;
            }
            pod
        })
        .collect();
    out.extend(
        m.creating
            .iter()
            .map(|(n, at)| ObservedPod::created(n.clone(), *at)),
    );
    out
}

/// The desired count: `spec.replicas`, or the autoscaler's decision (evaluated once the
/// queue has been read at least once; held while paused or invalid).
fn desired(
    o: &Observed,
    m: &mut PoolMemory,
    live: u32,
    ready: u32,
    frozen: bool,
) -> (i32, Option<Decision>) {
    let wp = &o.pool;
    let Some(a) = &wp.spec.autoscaling else {
        m.autoscaler = Autoscaler::new();
        m.autoscale_origin_ms = None;
        m.decision = None;
        return (wp.spec.replicas.max(0), None);
    };
    let current = m
        .published
        .as_ref()
        .map(|p| p.0)
        .or_else(|| {
            wp.status
                .as_ref()
                .filter(|s| s.observed_generation.is_some())
                .map(|s| s.desired_replicas)
        })
        .map(|d| d.max(0) as u32)
        .unwrap_or(live);
    let Some(snapshot) = &o.snapshot else {
        return (current as i32, None);
    };
    if frozen {
        return (current as i32, None);
    }
    let generation = wp.metadata.generation;
    if let Some((d, seq, g)) = m.decision
        && seq == snapshot.seq
        && g == generation
    {
        return (d.desired_replicas.min(i32::MAX as u32) as i32, Some(d));
    }
    let backlog = match &snapshot.result {
        Ok(st) => Backlog::Known(st.backlog),
        Err(_) => Backlog::Unreadable,
    };
    let origin = *m.autoscale_origin_ms.get_or_insert(o.now_ms);
    let d = m.autoscaler.evaluate(
        &autoscale_spec(a),
        &Observation {
            now: Duration::from_millis(o.now_ms.saturating_sub(origin)),
            backlog,
            current_replicas: current,
            ready_replicas: ready,
        },
    );
    m.decision = Some((d, snapshot.seq, generation));
    (d.desired_replicas.min(i32::MAX as u32) as i32, Some(d))
}

/// The annotation patches that bring each running pod's busy/idle signals up to date.
pub fn signal_patches(
    pods: &[PodView],
    held: &BTreeMap<String, u64>,
) -> Vec<(String, SignalPatch)> {
    pods.iter()
        .filter(|p| !p.pod.terminating && p.pod.phase == planner::Phase::Running)
        .filter_map(|p| {
            let n = held.get(&p.pod.name).copied().unwrap_or(0);
            let busy = n > 0;
            let want = SignalPatch {
                safe_to_evict: (if busy { "false" } else { "true" }).into(),
                do_not_disrupt: busy.then(|| "true".to_string()),
                deletion_cost: busy.then(|| autoscale::pod_deletion_cost(n).to_string()),
            };
            let cost_now = p.signals.deletion_cost.as_deref().filter(|c| *c != "0");
            let same = p.signals.safe_to_evict.as_deref() == Some(want.safe_to_evict.as_str())
                && p.signals.do_not_disrupt == want.do_not_disrupt
                && cost_now == want.deletion_cost.as_deref();
            (!same).then(|| (p.pod.name.clone(), want))
        })
        .collect()
}

/// The pool's consumers (and drain fields) left by pods that are gone and holding
/// nothing: only names of this pool's pods, so a group shared with another pool keeps
/// the other pool's consumers.
pub fn stale_consumers(pool: &str, st: &QueueStats, live: &BTreeSet<&str>) -> Vec<String> {
    let mut names: BTreeSet<&str> = st
        .consumers
        .iter()
        .filter(|c| c.pending == 0)
        .map(|c| c.name.as_str())
        .collect();
    names.extend(
        st.draining
            .keys()
            .map(String::as_str)
            .filter(|n| !st.consumers.iter().any(|c| c.name == *n && c.pending > 0)),
    );
    names
        .into_iter()
        .filter(|n| pods::is_pod_of(pool, n) && !live.contains(n))
        .map(String::from)
        .collect()
}

fn pod_trouble(o: &Observed, plan: &Plan) -> PodTrouble {
    let mut not_starting: BTreeMap<String, u32> = BTreeMap::new();
    for p in o.pods.iter().filter(|p| !p.pod.terminating) {
        if let Some(r) = &p.not_starting {
            *not_starting.entry(r.clone()).or_default() += 1;
        }
    }
    PodTrouble {
        create_refused: None,
        not_starting,
        stuck_terminating: o.pods.iter().filter(|p| p.pod.stuck).count() as u32,
        failures: plan.degraded.clone(),
    }
}

fn held_note(names: &[String], held: Option<&BTreeMap<String, u64>>) -> String {
    names
        .iter()
        .map(|n| {
            let t = held.and_then(|h| h.get(n).copied()).unwrap_or(0);
            format!("{n} ({t} tasks)")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn plan_notes(plan: &Plan, desired: i32, held: Option<&BTreeMap<String, u64>>) -> Vec<Note> {
    let mut notes = Vec::new();
    for (pod, reason) in &plan.replacements {
        notes.push(note(
            reason.backs_off(),
            "PodReplaced",
            "Replace",
            format!("pod {pod} {}; a new pod replaces it", reason.describe()),
        ));
    }
    if !plan.drain_started.is_empty() {
        notes.push(note(
            false,
            "Draining",
            "Drain",
            format!(
                "told to stop taking tasks, deleted once they hold none: {} (desired {desired})",
                held_note(&plan.drain_started, held)
            ),
        ));
    }
    if !plan.drain_cancelled.is_empty() {
        notes.push(note(
            false,
            "DrainCancelled",
            "Drain",
            format!(
                "taking tasks again (the pool grows back): {} (desired {desired})",
                plan.drain_cancelled.join(", ")
            ),
        ));
    }
    let by = |r: DeleteReason| -> Vec<String> {
        plan.delete
            .iter()
            .filter(|d| d.reason == r)
            .map(|d| d.name.clone())
            .collect()
    };
    let drained = [by(DeleteReason::Drained), by(DeleteReason::NeverStarted)].concat();
    if !drained.is_empty() {
        notes.push(note(
            false,
            "PodsDeleted",
            "Delete",
            format!("deleted pods holding no task: {}", drained.join(", ")),
        ));
    }
    let late = by(DeleteReason::DrainTimedOut);
    if !late.is_empty() {
        notes.push(note(
            true,
            "DrainTimedOut",
            "Delete",
            format!(
                "still holding tasks after drain.maxSeconds, deleted anyway (their workers hand back what they cannot finish in the grace period): {}",
                held_note(&late, held)
            ),
        ));
    }
    notes
}

/// Events for conditions that flipped: the queue became (un)reachable, the pool became
/// degraded (a refused create has its own Event).
fn condition_notes(o: &Observed, parts: &StatusParts) -> Vec<Note> {
    let mut notes = Vec::new();
    let old = o.pool.status.as_ref();
    let was = |t: &str| {
        old.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| c.status == "True")
    };
    let probe = parts.build(o, None, None, "");
    let get = |t: &str| probe.conditions.iter().find(|c| c.type_ == t);
    if let Some(q) = get("QueueReachable")
        && !matches!(queue_seen(o), QueueSeen::NotProbed)
    {
        let ok = q.status == "True";
        if was("QueueReachable") != Some(ok) && !(old.is_none() && ok) {
            notes.push(note(
                !ok,
                if ok {
                    "QueueReachable"
                } else {
                    "QueueUnreachable"
                },
                "Probe",
                q.message.clone(),
            ));
        }
    }
    if let Some(d) = get("Degraded")
        && d.status == "True"
        && was("Degraded") != Some(true)
    {
        notes.push(note(true, "Degraded", "Reconcile", d.message.clone()));
    }
    notes
}

fn rfc3339(ms: u64) -> String {
    status::rfc3339_ms(ms).unwrap_or_default()
}

/// When to look again without a trigger: the nearest of the times at which something
/// changes on its own (a back-off ends, failures are forgotten, a drain times out, a pod
/// becomes stuck, an expectation lapses, the autoscaler's windows move), else [`RESYNC`].
fn requeue(
    o: &Observed,
    m: &PoolMemory,
    plan: &Plan,
    decision: Option<Decision>,
    input: &PlanInput<'_>,
    cfg: &ControllerConfig,
) -> Duration {
    let now = o.now_ms;
    let poll = crate::observe::poll_interval(&o.pool, cfg.poll_interval);
    let mut at: Vec<u64> = Vec::new();
    if let Some(t) = plan.backoff_until_ms {
        at.push(t);
    }
    if let Some(t) = m
        .plan
        .last_failure_ms
        .filter(|_| m.plan.consecutive_failures > 0)
    {
        at.push(t + cfg.backoff.reset_after_ms);
    }
    if let Some(max) = input.drain_max_ms {
        at.extend(m.plan.draining.values().map(|t| t + max));
    }
    at.extend(
        o.pods
            .iter()
            .filter(|p| !p.pod.stuck)
            .filter_map(|p| p.stuck_at_ms),
    );
    let expect = cfg.expectation_timeout.as_millis() as u64;
    at.extend(
        m.creating
            .values()
            .chain(m.deleting.values())
            .map(|t| t + expect),
    );
    let mut next = at
        .into_iter()
        .map(|t| Duration::from_millis(t.saturating_sub(now).max(100)))
        .min()
        .unwrap_or(RESYNC);
    let time_limited = decision.is_some_and(|d| {
        matches!(
            d.reason,
            ScalingReason::StabilizationWindow
                | ScalingReason::RatePolicy
                | ScalingReason::ScaleToZeroDelay
        ) || d.desired_replicas != d.previous_replicas
    });
    if time_limited || (o.pool.spec.autoscaling.is_some() && o.snapshot.is_none()) {
        next = next.min(poll);
    }
    // Secrets need no timer here: a change triggers the pools naming them, from the
    // Secret watch or, without it, from one read per Secret every --secret-refresh
    // (`controller::secret_polls`).
    next.min(RESYNC)
}

/// The planner's input for this reconcile.
fn plan_input<'a>(
    o: &Observed,
    pods: &'a [ObservedPod],
    queue: Option<QueueView<'a>>,
    desired: i32,
    freeze: Freeze,
    cfg: &ControllerConfig,
) -> PlanInput<'a> {
    let wp = &o.pool;
    PlanInput {
        desired,
        pods,
        queue,
        max_pods: wp
            .spec
            .autoscaling
            .as_ref()
            .map(|a| a.max_replicas.max(0) as u32),
        max_surge: surge(wp).unwrap_or(1),
        drain_max_ms: wp
            .spec
            .drain
            .as_ref()
            .and_then(|d| d.max_seconds)
            .map(|s| s.max(1) as u64 * 1000),
        freeze,
        now_ms: o.now_ms,
        backoff: cfg.backoff,
    }
}

/// The queue writes of a plan: drains not shown in the snapshot yet, drains taken back,
/// and this pool's consumers left by pods that are gone.
fn queue_writes(o: &Observed, plan: &Plan, pods: &[ObservedPod], freeze: Freeze) -> Vec<Command> {
    let mut commands = Vec::new();
    if freeze == Freeze::Paused {
        return commands;
    }
    let st = stats(o);
    let shown: BTreeSet<&String> = st.map(|s| s.draining.keys().collect()).unwrap_or_default();
    let add: Vec<String> = plan
        .drain
        .iter()
        .filter(|n| !shown.contains(n))
        .cloned()
        .collect();
    if !add.is_empty() {
        commands.push(Command::Drain(add));
    }
    if !plan.drain_cancelled.is_empty() {
        commands.push(Command::Undrain(plan.drain_cancelled.clone()));
    }
    if let Some(st) = st {
        let names: BTreeSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        let stale = stale_consumers(&o.key.1, st, &names);
        if !stale.is_empty() {
            commands.push(Command::RemoveConsumers(stale));
        }
    }
    commands
}

/// A change of the desired count: its metric labels, its Event, and `lastScaleTime`
/// (told once, also when the pool object a reconcile gets predates the status write).
fn scale_change(
    o: &Observed,
    m: &mut PoolMemory,
    desired: i32,
    decision: Option<Decision>,
    frozen: bool,
) -> (Option<Scaled>, Option<Note>, Option<String>) {
    let wp = &o.pool;
    let (previous, mut last_scale_time) = m.published.clone().unwrap_or_else(|| {
        let s = wp.status.as_ref();
        (
            s.map(|s| s.desired_replicas).unwrap_or(0),
            s.and_then(|s| s.last_scale_time.clone()),
        )
    });
    let mut out = (None, None);
    if desired != previous && !frozen {
        out.0 = Some(Scaled {
            direction: if desired > previous { "up" } else { "down" },
            reason: decision.map(|d| d.reason.as_str()).unwrap_or("Spec"),
        });
        last_scale_time = Some(rfc3339(o.now_ms));
        out.1 = Some(note(
            false,
            "Scaled",
            "Scale",
            decision
                .map(|d| d.message())
                .unwrap_or_else(|| format!("desired replicas {previous} -> {desired}")),
        ));
    }
    m.published = Some((desired, last_scale_time.clone()));
    (out.0, out.1, last_scale_time)
}

/// Wake from zero: an autoscaled pool at zero is watched for its first task.
fn wake_intent(o: &Observed, plan: &Plan, decision: Option<Decision>, frozen: bool) -> WakeIntent {
    let at_zero = !frozen
        && decision.is_some_and(|d| d.desired_replicas == 0)
        && plan.counts.replicas == 0
        && plan.counts.draining == 0
        && plan.create == 0;
    match (&o.target, &o.snapshot, &o.queue) {
        (Some(Ok(target)), Some(Snapshot { result: Ok(st), .. }), Ok(_)) if at_zero => {
            // Every partition's stream, as the read found it.
            WakeIntent::Watch(Box::new(WakeTarget::from_stats(target.clone(), st)))
        }
        (_, Some(Snapshot { result: Err(_), .. }), _) if at_zero => WakeIntent::Keep,
        _ => WakeIntent::Unwatch,
    }
}

/// Decides one reconcile of a pool.
pub fn decide(o: &Observed, m: &mut PoolMemory, cfg: &ControllerConfig) -> Decided {
    let invalid = invalid(o);
    let paused = o.pool.spec.paused;
    let freeze = match (paused, &invalid) {
        (true, _) => Freeze::Paused,
        (false, Some(_)) => Freeze::InvalidSpec,
        (false, None) => Freeze::None,
    };
    let frozen = freeze != Freeze::None;
    let pods = observed_pods(o, m, cfg.expectation_timeout.as_millis() as u64);
    let live = pods
        .iter()
        .filter(|p| {
            !p.terminating && matches!(p.phase, planner::Phase::Pending | planner::Phase::Running)
        })
        .count() as u32;
    let ready = pods.iter().filter(|p| p.ready && !p.terminating).count() as u32;
    let (desired, decision) = desired(o, m, live, ready, frozen);

    let st = stats(o);
    let held = crate::observe::held(o.snapshot.as_ref());
    let queue = match (st, &held, &o.snapshot) {
        (Some(st), Some(h), Some(s)) => Some(QueueView {
            held: h,
            draining: &st.draining,
            taken_ms: s.taken_ms,
        }),
        _ => None,
    };
    let planned = if invalid.is_some() {
        live as i32
    } else {
        desired
    };
    let input = plan_input(o, &pods, queue, planned, freeze, cfg);
    let plan = planner::plan(&input, &m.plan);
    m.plan = plan.state.clone();

    let uid_of = |n: &str| {
        o.pods
            .iter()
            .find(|p| p.pod.name == n)
            .and_then(|p| p.uid.clone())
    };
    let deletes = plan
        .delete
        .iter()
        .map(|d| Delete {
            name: d.name.clone(),
            uid: uid_of(&d.name),
            reason: d.reason,
        })
        .collect();
    let commands = queue_writes(o, &plan, &pods, freeze);
    let signals = held
        .as_ref()
        .map(|h| signal_patches(&o.pods, h))
        .unwrap_or_default();

    let mut notes = plan_notes(&plan, desired, held.as_ref());
    let (scaled, scale_note, last_scale_time) = scale_change(o, m, desired, decision, frozen);
    notes.extend(scale_note);
    let parts = StatusParts {
        desired,
        counts: plan.counts,
        invalid,
        paused,
        decision,
        backing_off: plan.backoff_until_ms.is_some(),
        rolling_out: plan.rolling_out,
        trouble: pod_trouble(o, &plan),
        last_scale_time,
    };
    notes.extend(condition_notes(o, &parts));

    // After a refusal, creates wait for their back-off (the status keeps the refusal).
    let held_refusal = m
        .create_refused
        .as_ref()
        .filter(|r| plan.create > 0 && r.retry_at_ms > o.now_ms);
    let creates = if held_refusal.is_some() {
        0
    } else {
        plan.create
    };
    let mut requeue = requeue(o, m, &plan, decision, &input, cfg);
    if let Some(r) = held_refusal {
        requeue = requeue.min(Duration::from_millis(r.retry_at_ms - o.now_ms));
    }
    Decided {
        creates,
        held_refusal: held_refusal.map(|r| r.message.clone()),
        deletes,
        commands,
        signals,
        notes,
        figures: Figures {
            desired,
            replicas: plan.counts.replicas,
            ready: plan.counts.ready,
            busy: plan.counts.busy,
            draining: plan.counts.draining,
        },
        replacements: plan.replacements.clone(),
        scaled,
        wake: wake_intent(o, &plan, decision, frozen),
        requeue,
        drains: (
            plan.drain_started.len() as u32,
            plan.drain_cancelled.len() as u32,
        ),
        status: parts,
    }
}

/// Entries after this id are new for a pool at zero: the group's last delivered id (no
/// pod consumes while the pool is at zero, so it does not move), or `0-0` while the
/// group or the stream does not exist (every entry then counts as waiting).
pub fn wake_after(st: &QueueStats) -> EntryId {
    if st.stream_exists && st.group_exists {
        st.last_delivered_id.unwrap_or_default()
    } else {
        EntryId::ZERO
    }
}

/// A pool's key.
pub fn key_of(wp: &WorkPool) -> (String, String) {
    (wp.namespace().unwrap_or_default(), wp.name_any())
}

/// Whether the API's answer to a pod create (its HTTP status code) is a refusal to report
/// on the pool (the spec, a quota, a webhook, RBAC: the same create would be refused
/// again) rather than a passing failure a retry clears: 429 (API Priority and Fairness
/// throttling, common when many pools create at once) and 5xx (a timeout, an API server
/// restarting). A passing failure is retried with the reconcile's back-off and says
/// nothing in the status or in a Warning Event.
pub fn is_refusal(code: u16) -> bool {
    !(code == 429 || code >= 500)
}

/// What a refused create says, without the name of the pod it tried (a new random name
/// each attempt would make every failure a new message, and a status write).
pub fn stable_refusal(message: &str, pod: &str, pool: &str) -> String {
    message.replace(pod, &format!("{}-*", pods::name_prefix(pool)))
}

#[cfg(test)]
mod tests;
