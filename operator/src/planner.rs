//! The planner: pure (no client, no IO, no clock of its own).
//!
//! Input: the pool's observed pods, the desired number of pods (from `spec.replicas` or the
//! autoscaler), the queue as last read (tasks each consumer holds, which consumers are
//! draining), the bound on pods, the time, and the planner's own memory of earlier plans
//! ([`PlanState`]). Output: a [`Plan`]: how many pods to create, which pods to delete and
//! why, which pods should be draining, the counts for the status, the replacements
//! noticed, and whether replacements are backing off.
//!
//! Rules:
//! - Pods that finished (Failed, Succeeded, evicted) are deleted and replaced. Failures
//!   back off replacement exponentially (`base * 2^(n-1)`, capped), where `n` counts
//!   *incidents in a row*: pods that fail together (a node lost, an eviction wave) are one
//!   incident; the count grows only when the pods created after a failure fail too. It
//!   resets after `reset_after` without failures.
//! - Pods deleted by someone else are replaced at once (no back-off).
//! - A pod the plan wants gone (scale-in, an older template, scale to zero) is *drained*,
//!   not killed: told to stop taking tasks, and deleted once one queue snapshot, taken
//!   after it was told, shows it stopped and holding nothing (or after `drain_max`). A pod
//!   whose worker never ran (Pending, container not running) and that holds nothing is
//!   deleted at once. While the queue cannot be read no new pod is drained: unknown is
//!   not idle.
//! - The victims, in one order used by the planner and the simulator alike
//!   ([`victim_order`]): pods whose worker never ran, then the fewest tasks held, unready
//!   before ready, newest before oldest, then by name.
//! - A scale-up first takes back drains of current-template pods (busiest first), then
//!   creates.
//! - Draining and terminating pods count against the bound on pods (`max_pods`, else the
//!   desired count), except pods stuck terminating past their deadline. Only while pods of
//!   an older template exist may the pool exceed the bound, by `max_surge`: new pods are
//!   created first, and old ones drained as new ones become ready.
//! - Paused: nothing is created, deleted, drained or taken back.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use workpool_worker::queue::DrainState;

/// Pod phase as far as the planner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not yet running (unscheduled, pulling, initialising) or unknown.
    Pending,
    /// Running.
    Running,
    /// All containers exited 0 and will not restart.
    Succeeded,
    /// Failed (including evicted).
    Failed,
}

/// One pod of the pool as observed (from the cache, plus pods created or deleted by the
/// operator that the cache does not show yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    /// Pod name (= the worker's consumer name).
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// The Ready condition is True.
    pub ready: bool,
    /// The worker container is running (it may hold or take tasks). False for a Pending
    /// pod and for a container waiting (creating, crash-looping, image not pulled).
    pub worker_running: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Terminating and past its deletion deadline by more than a grace: held by a
    /// finalizer or a lost node. It no longer counts against the bound on pods.
    pub stuck: bool,
    /// Failed with `status.reason: Evicted`.
    pub evicted: bool,
    /// Built from the pool's current template.
    pub current: bool,
    /// Creation time in milliseconds (newer pods are removed first on scale-in).
    pub created_ms: u64,
}

impl ObservedPod {
    /// A pod of the current template, just created (not yet seen running).
    pub fn created(name: impl Into<String>, now_ms: u64) -> Self {
        ObservedPod {
            name: name.into(),
            phase: Phase::Pending,
            ready: false,
            worker_running: false,
            terminating: false,
            stuck: false,
            evicted: false,
            current: true,
            created_ms: now_ms,
        }
    }
}

/// Why a pod had to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplacementReason {
    /// The pod failed.
    Failed,
    /// The pod's containers exited 0 (a worker must not exit on its own).
    Succeeded,
    /// The pod was evicted.
    Evicted,
    /// Someone else deleted the pod.
    Deleted,
}

impl ReplacementReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplacementReason::Failed => "failed",
            ReplacementReason::Succeeded => "succeeded",
            ReplacementReason::Evicted => "evicted",
            ReplacementReason::Deleted => "deleted",
        }
    }

    /// Words for an Event.
    pub fn describe(self) -> &'static str {
        match self {
            ReplacementReason::Failed => "failed",
            ReplacementReason::Succeeded => "exited on its own (Succeeded)",
            ReplacementReason::Evicted => "was evicted",
            ReplacementReason::Deleted => "was deleted",
        }
    }

    /// Whether this reason counts as a failure for the back-off.
    pub fn backs_off(self) -> bool {
        !matches!(self, ReplacementReason::Deleted)
    }
}

/// Why the plan deletes a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// The pod finished (failed, succeeded, evicted) and is replaced.
    Finished(ReplacementReason),
    /// Drained: it stopped taking tasks and holds none.
    Drained,
    /// Its worker never ran and it holds nothing: no drain needed.
    NeverStarted,
    /// It was still holding tasks when the drain's time limit passed.
    DrainTimedOut,
}

/// One deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Pod name.
    pub name: String,
    /// Why.
    pub reason: DeleteReason,
}

/// Back-off of replacements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay after the first failure.
    pub base_ms: u64,
    /// Upper bound of the delay.
    pub max_ms: u64,
    /// Failures in a row are forgotten after this long without a failure.
    pub reset_after_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 1_000,
            max_ms: 300_000,
            reset_after_ms: 120_000,
        }
    }
}

impl BackoffConfig {
    /// Delay before replacing after `failures` incidents in a row (0 for none).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let shift = (failures - 1).min(40);
        self.base_ms.saturating_mul(1u64 << shift).min(self.max_ms)
    }
}

/// The planner's memory between plans of one pool (kept by the operator in memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanState {
    /// Failure incidents in a row.
    pub consecutive_failures: u32,
    /// Time of the last failure.
    pub last_failure_ms: Option<u64>,
    /// The last failure, for the Degraded message: pod name and reason.
    pub last_failure: Option<(String, ReplacementReason)>,
    /// Pods were created since the last failure: a failure now is the next in a row.
    pub replaced_since_failure: bool,
    /// Pods whose replacement was already counted.
    pub counted: BTreeSet<String>,
    /// Pods alive after the last plan.
    pub alive: BTreeSet<String>,
    /// Pods the operator itself deleted.
    pub deleting: BTreeSet<String>,
    /// Pods the plan wants draining, with the time they were (last) told to.
    pub draining: BTreeMap<String, u64>,
    /// Drains the plan took back, with the time: a snapshot older than that may still
    /// show them, and must not bring them back.
    pub cancelled: BTreeMap<String, u64>,
}

impl PlanState {
    /// No replacement before this time.
    pub fn retry_at_ms(&self, cfg: &BackoffConfig) -> Option<u64> {
        self.last_failure_ms
            .map(|t| t.saturating_add(cfg.delay_ms(self.consecutive_failures)))
    }
}

/// The queue as one snapshot read it.
#[derive(Debug, Clone, Copy)]
pub struct QueueView<'a> {
    /// Tasks held per consumer (= pod name); a consumer not listed holds none.
    pub held: &'a BTreeMap<String, u64>,
    /// Consumers in the drain hash and their state.
    pub draining: &'a BTreeMap<String, DrainState>,
    /// When the snapshot was taken (milliseconds, the clock of `now_ms`); writes queued
    /// before it are in it.
    pub taken_ms: u64,
}

impl QueueView<'_> {
    fn held(&self, pod: &str) -> u64 {
        self.held.get(pod).copied().unwrap_or(0)
    }
}

/// What keeps the plan from changing the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freeze {
    /// Nothing: plan as usual.
    #[default]
    None,
    /// `spec.paused`: nothing is created, deleted, drained or taken back.
    Paused,
    /// The spec cannot be acted on: nothing is created or drained; finished pods still
    /// go (an invalid spec must not take a running pool down, nor keep dead pods).
    InvalidSpec,
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Pods wanted (from `spec.replicas` or the autoscaler); negative counts as 0.
    pub desired: i32,
    /// The pool's pods.
    pub pods: &'a [ObservedPod],
    /// The queue, when it could be read.
    pub queue: Option<QueueView<'a>>,
    /// The most pods at once (draining and terminating ones counted), outside a rollout;
    /// `None`: the desired count.
    pub max_pods: Option<u32>,
    /// How many pods a rollout may add above the bound.
    pub max_surge: u32,
    /// A drain taking longer than this deletes the pod anyway.
    pub drain_max_ms: Option<u64>,
    /// Paused or invalid.
    pub freeze: Freeze,
    /// Now, in milliseconds.
    pub now_ms: u64,
    /// Back-off settings.
    pub backoff: BackoffConfig,
}

/// Counts for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Pods neither terminating, finished nor draining.
    pub replicas: i32,
    /// Of those, ready.
    pub ready: i32,
    /// Of those, of the current template.
    pub updated: i32,
    /// Live pods (draining included) holding at least one task.
    pub busy: i32,
    /// Live pods told to stop taking tasks.
    pub draining: i32,
    /// Desired.
    pub desired: i32,
    /// Pods counted against the bound (live, draining and terminating but not stuck).
    pub counted: i32,
    /// The bound on pods in force (the surge included during a rollout).
    pub bound: i32,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Pods to create from the current template.
    pub create: u32,
    /// Pods to delete.
    pub delete: Vec<Deletion>,
    /// The pods that should be draining after this plan (live pods only).
    pub drain: BTreeSet<String>,
    /// Pods told to drain by this plan.
    pub drain_started: Vec<String>,
    /// Pods whose drain this plan takes back.
    pub drain_cancelled: Vec<String>,
    /// Replacements noticed in this plan (for metrics and events).
    pub replacements: Vec<(String, ReplacementReason)>,
    /// Counts as observed (before acting).
    pub counts: Counts,
    /// Pods of an older template remain.
    pub rolling_out: bool,
    /// Creation held back by the failure back-off until this time.
    pub backoff_until_ms: Option<u64>,
    /// Creation held back by the bound on pods (this many pods not created).
    pub held_back_by_bound: u32,
    /// Set while failures in a row are remembered: the Degraded message.
    pub degraded: Option<String>,
    /// The memory for the next plan.
    pub state: PlanState,
}

/// What the scale-in order looks at of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VictimKey<'a> {
    /// Pod name.
    pub name: &'a str,
    /// Its worker is running.
    pub started: bool,
    /// Tasks held.
    pub held: u64,
    /// Ready.
    pub ready: bool,
    /// Creation time (any unit that orders pods).
    pub created: u64,
}

/// The one removal order (scale-in, older template, simulator): pods whose worker never
/// ran first, then fewest tasks held, unready before ready, newest before oldest, then by
/// name (deterministic).
pub fn victim_order(a: &VictimKey<'_>, b: &VictimKey<'_>) -> Ordering {
    a.started
        .cmp(&b.started)
        .then(a.held.cmp(&b.held))
        .then(a.ready.cmp(&b.ready))
        .then(b.created.cmp(&a.created))
        .then(a.name.cmp(b.name))
}

/// The first `count` pods of `pods` in [`victim_order`].
pub fn choose_victims<'a>(pods: &[VictimKey<'a>], count: usize) -> Vec<&'a str> {
    let mut sorted = pods.to_vec();
    sorted.sort_by(victim_order);
    sorted.into_iter().take(count).map(|k| k.name).collect()
}

/// A pod's surge allowance: `max_surge` given as a number or a percentage of `bound`
/// (rounded up), at least 1.
pub fn surge_of(max_surge: Option<&serde_json::Value>, bound: u32) -> Result<u32, String> {
    let n = match max_surge {
        None => bound.div_ceil(4),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
            .ok_or_else(|| format!("rollout.maxSurge {n} is not a whole number"))?,
        Some(serde_json::Value::String(s)) => {
            let pct: u64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("rollout.maxSurge {s:?} is neither a number nor a percentage")
                })?;
            (u64::from(bound) * pct)
                .div_ceil(100)
                .min(u64::from(u32::MAX)) as u32
        }
        Some(other) => {
            return Err(format!(
                "rollout.maxSurge {other} is neither a number nor a percentage"
            ));
        }
    };
    Ok(n.max(1))
}

fn finished_reason(p: &ObservedPod) -> Option<ReplacementReason> {
    match p.phase {
        Phase::Failed if p.evicted => Some(ReplacementReason::Evicted),
        Phase::Failed => Some(ReplacementReason::Failed),
        Phase::Succeeded => Some(ReplacementReason::Succeeded),
        Phase::Pending | Phase::Running => None,
    }
}

/// The pods of one plan, sorted out.
struct Sorted<'a> {
    replacements: Vec<(String, ReplacementReason)>,
    delete: Vec<Deletion>,
    alive: Vec<&'a ObservedPod>,
    /// Terminating pods not stuck (they count against the bound until gone).
    terminating: u32,
}

/// Finished pods are deleted (not while paused) and counted as replacements once;
/// terminating pods not deleted by the operator are counted as deleted by someone else.
fn sort_pods<'a>(input: &PlanInput<'a>, state: &mut PlanState) -> Sorted<'a> {
    let mut s = Sorted {
        replacements: Vec::new(),
        delete: Vec::new(),
        alive: Vec::new(),
        terminating: 0,
    };
    for p in input.pods {
        if p.terminating {
            if !p.stuck {
                s.terminating += 1;
            }
            if !state.deleting.contains(&p.name) && state.counted.insert(p.name.clone()) {
                s.replacements
                    .push((p.name.clone(), ReplacementReason::Deleted));
            }
            continue;
        }
        if let Some(reason) = finished_reason(p) {
            if state.counted.insert(p.name.clone()) {
                s.replacements.push((p.name.clone(), reason));
            }
            if input.freeze != Freeze::Paused {
                s.delete.push(Deletion {
                    name: p.name.clone(),
                    reason: DeleteReason::Finished(reason),
                });
            }
            continue;
        }
        s.alive.push(p);
    }
    // Pods that vanished without being seen terminating, and not deleted by us.
    let observed: BTreeSet<&str> = input.pods.iter().map(|p| p.name.as_str()).collect();
    for name in &state.alive {
        if !observed.contains(name.as_str())
            && !state.deleting.contains(name)
            && !state.counted.contains(name)
        {
            s.replacements
                .push((name.clone(), ReplacementReason::Deleted));
        }
    }
    s
}

/// Counts failures by incident (pods failing before any replacement was created are one
/// incident), forgets them after a quiet period, and returns when replacements may
/// resume.
fn note_failures(
    state: &mut PlanState,
    replacements: &[(String, ReplacementReason)],
    cfg: &BackoffConfig,
    now: u64,
) -> Option<u64> {
    let failure = replacements.iter().rev().find(|(_, r)| r.backs_off());
    if let Some((name, reason)) = failure {
        if state.consecutive_failures == 0 || state.replaced_since_failure {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.replaced_since_failure = false;
        }
        state.last_failure_ms = Some(now);
        state.last_failure = Some((name.clone(), *reason));
    } else if state.consecutive_failures > 0
        && state
            .last_failure_ms
            .is_some_and(|t| now >= t.saturating_add(cfg.reset_after_ms))
    {
        state.consecutive_failures = 0;
        state.last_failure_ms = None;
        state.last_failure = None;
        state.replaced_since_failure = false;
    }
    state.retry_at_ms(cfg).filter(|t| *t > now)
}

/// The pods that are draining: those the plan asked to, plus those the queue shows
/// draining (asked by an earlier operator process) unless the plan took the drain back
/// after that snapshot was taken.
fn draining_now(
    input: &PlanInput<'_>,
    state: &mut PlanState,
    alive: &[&ObservedPod],
) -> BTreeMap<String, u64> {
    let names: BTreeSet<&str> = alive.iter().map(|p| p.name.as_str()).collect();
    let mut draining: BTreeMap<String, u64> = state
        .draining
        .iter()
        .filter(|(n, _)| names.contains(n.as_str()))
        .map(|(n, t)| (n.clone(), *t))
        .collect();
    if let Some(q) = input.queue {
        state
            .cancelled
            .retain(|n, t| names.contains(n.as_str()) && *t >= q.taken_ms);
        for n in q.draining.keys() {
            if names.contains(n.as_str())
                && !draining.contains_key(n)
                && !state.cancelled.contains_key(n)
            {
                draining.insert(n.clone(), input.now_ms);
            }
        }
    }
    draining
}

/// Victims among `pods`, `count` of them: in [`victim_order`] when the queue is known;
/// otherwise only pods whose worker is not running (unknown is not idle).
fn victims<'a>(
    pods: &[&'a ObservedPod],
    queue: Option<QueueView<'_>>,
    count: usize,
) -> Vec<&'a ObservedPod> {
    if count == 0 {
        return Vec::new();
    }
    let mut keyed: Vec<(VictimKey<'_>, &'a ObservedPod)> = pods
        .iter()
        .filter(|p| queue.is_some() || !p.worker_running)
        .map(|p| {
            (
                VictimKey {
                    name: &p.name,
                    started: p.worker_running,
                    held: queue.map(|q| q.held(&p.name)).unwrap_or(0),
                    ready: p.ready,
                    created: p.created_ms,
                },
                *p,
            )
        })
        .collect();
    keyed.sort_by(|a, b| victim_order(&a.0, &b.0));
    keyed.into_iter().take(count).map(|(_, p)| p).collect()
}

/// Whether a draining pod can go now, and why.
fn drain_done(p: &ObservedPod, requested_ms: u64, input: &PlanInput<'_>) -> Option<DeleteReason> {
    if !p.worker_running {
        return Some(DeleteReason::NeverStarted);
    }
    if let Some(q) = input.queue
        && q.taken_ms > requested_ms
        && q.draining.get(&p.name) == Some(&DrainState::Stopped)
        && q.held(&p.name) == 0
    {
        return Some(DeleteReason::Drained);
    }
    if let Some(max) = input.drain_max_ms
        && input.now_ms >= requested_ms.saturating_add(max)
    {
        return Some(DeleteReason::DrainTimedOut);
    }
    None
}

/// What a plan changes about which pods serve: drains taken back, pods to drain, pods
/// to create.
#[derive(Default)]
struct Moves {
    drain_started: Vec<String>,
    drain_cancelled: Vec<String>,
    want_create: u32,
}

/// Scale up (take drains of current pods back first, busiest first, then create), scale
/// in (drain the excess current pods), roll out (drain older pods as new ones become
/// ready). `current` and `outdated` are the serving pods; they and `draining` are updated.
fn move_pods<'a>(
    input: &PlanInput<'_>,
    alive: &[&'a ObservedPod],
    current: &mut Vec<&'a ObservedPod>,
    outdated: &mut Vec<&'a ObservedPod>,
    draining: &mut BTreeMap<String, u64>,
    state: &mut PlanState,
) -> Moves {
    let desired = input.desired.max(0) as usize;
    let (queue, now) = (input.queue, input.now_ms);
    let mut m = Moves::default();
    let need = desired.saturating_sub(current.len());
    if need > 0 {
        let held = |p: &ObservedPod| queue.map(|q| q.held(&p.name)).unwrap_or(0);
        let mut back: Vec<&ObservedPod> = alive
            .iter()
            .filter(|p| p.current && draining.contains_key(&p.name))
            .copied()
            .collect();
        back.sort_by(|a, b| {
            held(b)
                .cmp(&held(a))
                .then(a.created_ms.cmp(&b.created_ms))
                .then(a.name.cmp(&b.name))
        });
        back.truncate(need);
        for p in back {
            draining.remove(&p.name);
            state.cancelled.insert(p.name.clone(), now);
            m.drain_cancelled.push(p.name.clone());
            current.push(p);
        }
        m.want_create = (need - m.drain_cancelled.len()) as u32;
    }
    let excess = current.len().saturating_sub(desired);
    let mut leaving: Vec<&ObservedPod> = victims(current, queue, excess);
    let current_ready = current.iter().filter(|p| p.ready).count();
    let keep = outdated.len().min(desired.saturating_sub(current_ready));
    leaving.extend(victims(outdated, queue, outdated.len() - keep));
    for p in leaving {
        draining.insert(p.name.clone(), now);
        state.cancelled.remove(&p.name);
        m.drain_started.push(p.name.clone());
    }
    current.retain(|p| !draining.contains_key(&p.name));
    outdated.retain(|p| !draining.contains_key(&p.name));
    swap_busy_drains(input, alive, current, draining, state, &mut m);
    m
}

/// A drain chosen on an earlier read can catch a pod that took a task before the drain
/// request reached it. While a serving pod of the current template holds nothing, such a
/// busy draining pod is taken back and the idle one drains in its place: never a busy
/// pod leaving while an idle one stays. Outdated pods all leave, so they are not swapped.
fn swap_busy_drains<'a>(
    input: &PlanInput<'_>,
    alive: &[&'a ObservedPod],
    current: &mut Vec<&'a ObservedPod>,
    draining: &mut BTreeMap<String, u64>,
    state: &mut PlanState,
    m: &mut Moves,
) {
    let Some(q) = input.queue else { return };
    let mut busy: Vec<&ObservedPod> = alive
        .iter()
        .filter(|p| p.current && p.worker_running && draining.contains_key(&p.name))
        .filter(|p| q.held(&p.name) > 0 && q.draining.get(&p.name) != Some(&DrainState::Stopped))
        .copied()
        .collect();
    if busy.is_empty() {
        return;
    }
    busy.sort_by(|a, b| {
        q.held(&b.name)
            .cmp(&q.held(&a.name))
            .then(a.name.cmp(&b.name))
    });
    let idle: Vec<&ObservedPod> = current
        .iter()
        .filter(|p| q.held(&p.name) == 0)
        .copied()
        .collect();
    let idle = victims(&idle, input.queue, busy.len());
    for (keep, go) in busy.into_iter().zip(idle) {
        draining.remove(&keep.name);
        state.cancelled.insert(keep.name.clone(), input.now_ms);
        m.drain_started.retain(|n| n != &keep.name);
        m.drain_cancelled.push(keep.name.clone());
        draining.insert(go.name.clone(), input.now_ms);
        state.cancelled.remove(&go.name);
        m.drain_started.push(go.name.clone());
        current.retain(|p| p.name != go.name);
        current.push(keep);
    }
}

/// The bound on pods in force and the pods counted against it: autoscaled pools count
/// draining and terminating pods (not stuck ones) against maxReplicas; during a rollout
/// the surge is allowed on top (for a `replicas` pool it is the only bound, over pods not
/// terminating).
fn bound(
    input: &PlanInput<'_>,
    alive: u32,
    terminating: u32,
    rolling_out: bool,
) -> (Option<u32>, u32) {
    let desired = input.desired.max(0) as u32;
    let surge = if rolling_out { input.max_surge } else { 0 };
    match input.max_pods {
        Some(max) => (Some(max.saturating_add(surge)), alive + terminating),
        None if rolling_out => (Some(desired.saturating_add(surge)), alive),
        None => (None, alive),
    }
}

/// The `Degraded` message while failures in a row are remembered.
fn degraded_message(state: &PlanState, backoff: &BackoffConfig) -> Option<String> {
    (state.consecutive_failures > 0).then(|| {
        let (pod, reason) = state
            .last_failure
            .clone()
            .unwrap_or_else(|| (String::from("?"), ReplacementReason::Failed));
        format!(
            "{} failure(s) in a row (last: pod {pod} {}); replacements back off for {}s",
            state.consecutive_failures,
            reason.describe(),
            backoff.delay_ms(state.consecutive_failures) / 1000
        )
    })
}

/// Plans one step for one pool.
pub fn plan(input: &PlanInput<'_>, previous: &PlanState) -> Plan {
    let desired = input.desired.max(0) as u32;
    let now = input.now_ms;
    let queue = input.queue;
    let mut state = previous.clone();
    let sorted = sort_pods(input, &mut state);
    let retry_at = note_failures(&mut state, &sorted.replacements, &input.backoff, now);
    let mut delete = sorted.delete;
    let alive = sorted.alive;
    let mut draining = draining_now(input, &mut state, &alive);
    let rolling_out = alive.iter().any(|p| !p.current);

    let (mut current, mut outdated): (Vec<&ObservedPod>, Vec<&ObservedPod>) = alive
        .iter()
        .filter(|p| !draining.contains_key(&p.name))
        .partition(|p| p.current);
    let moves = if input.freeze == Freeze::None {
        move_pods(
            input,
            &alive,
            &mut current,
            &mut outdated,
            &mut draining,
            &mut state,
        )
    } else {
        Moves::default()
    };

    // Draining pods go once they hold nothing (paused: they stay).
    if input.freeze != Freeze::Paused {
        for p in alive.iter().filter(|p| draining.contains_key(&p.name)) {
            if let Some(reason) = drain_done(p, draining[&p.name], input) {
                delete.push(Deletion {
                    name: p.name.clone(),
                    reason,
                });
            }
        }
    }
    let deleted: BTreeSet<String> = delete.iter().map(|d| d.name.clone()).collect();
    draining.retain(|n, _| !deleted.contains(n));

    let (bound, counted) = bound(input, alive.len() as u32, sorted.terminating, rolling_out);
    let room = bound.map_or(u32::MAX, |b| b.saturating_sub(counted));
    let mut create = 0;
    let mut backoff_until_ms = None;
    let mut held_back_by_bound = 0;
    if moves.want_create > 0 {
        match retry_at {
            Some(t) => backoff_until_ms = Some(t),
            None => {
                create = moves.want_create.min(room);
                held_back_by_bound = moves.want_create - create;
            }
        }
    }

    let busy = |p: &&&ObservedPod| queue.is_some_and(|q| q.held(&p.name) > 0);
    let counts = Counts {
        replicas: (current.len() + outdated.len()) as i32,
        ready: current.iter().chain(&outdated).filter(|p| p.ready).count() as i32,
        updated: current.len() as i32,
        busy: alive
            .iter()
            .filter(|p| !deleted.contains(&p.name))
            .filter(busy)
            .count() as i32,
        draining: draining.len() as i32,
        desired: desired as i32,
        counted: counted as i32,
        bound: bound.unwrap_or(desired) as i32,
    };

    // Memory for the next plan.
    state.deleting.extend(deleted.iter().cloned());
    let observed: BTreeSet<&str> = input.pods.iter().map(|p| p.name.as_str()).collect();
    state.deleting.retain(|n| observed.contains(n.as_str()));
    state.counted.retain(|n| observed.contains(n.as_str()));
    state.alive = alive
        .iter()
        .filter(|p| !deleted.contains(&p.name))
        .map(|p| p.name.clone())
        .collect();
    state.draining = draining.clone();
    if create > 0 && state.consecutive_failures > 0 {
        state.replaced_since_failure = true;
    }

    let degraded = degraded_message(&state, &input.backoff);
    Plan {
        create,
        delete,
        drain: draining.into_keys().collect(),
        drain_started: moves.drain_started,
        drain_cancelled: moves.drain_cancelled,
        replacements: sorted.replacements,
        counts,
        rolling_out,
        backoff_until_ms,
        held_back_by_bound,
        degraded,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(name: &str, phase: Phase, ready: bool) -> ObservedPod {
        ObservedPod {
            name: name.to_string(),
            phase,
            ready,
            worker_running: phase == Phase::Running,
            terminating: false,
            stuck: false,
            evicted: false,
            current: true,
            created_ms: 0,
        }
    }

    fn running(name: &str) -> ObservedPod {
        pod(name, Phase::Running, true)
    }

    fn outdated(name: &str) -> ObservedPod {
        ObservedPod {
            current: false,
            ..running(name)
        }
    }

    /// A queue snapshot: tasks held and drain states.
    #[derive(Default, Clone, Debug)]
    struct Q {
        held: BTreeMap<String, u64>,
        draining: BTreeMap<String, DrainState>,
        taken_ms: u64,
    }

    impl Q {
        fn at(taken_ms: u64) -> Q {
            Q {
                taken_ms,
                ..Q::default()
            }
        }
        fn held(mut self, pod: &str, n: u64) -> Q {
            self.held.insert(pod.into(), n);
            self
        }
        fn drain(mut self, pod: &str, s: DrainState) -> Q {
            self.draining.insert(pod.into(), s);
            self
        }
        fn view(&self) -> QueueView<'_> {
            QueueView {
                held: &self.held,
                draining: &self.draining,
                taken_ms: self.taken_ms,
            }
        }
    }

    fn input<'a>(
        desired: i32,
        pods: &'a [ObservedPod],
        q: Option<&'a Q>,
        now_ms: u64,
    ) -> PlanInput<'a> {
        PlanInput {
            desired,
            pods,
            queue: q.map(Q::view),
            max_pods: None,
            max_surge: 1,
            drain_max_ms: None,
            freeze: Freeze::None,
            now_ms,
            backoff: BackoffConfig::default(),
        }
    }

    fn names(d: &[Deletion]) -> Vec<&str> {
        d.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn creates_missing_pods() {
        let pods = vec![running("a")];
        let p = plan(&input(3, &pods, None, 0), &PlanState::default());
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty() && p.drain.is_empty());
        assert_eq!(
            (p.counts.replicas, p.counts.ready, p.counts.desired),
            (1, 1, 3)
        );
        assert_eq!(p.degraded, None);
    }

    #[test]
    fn steady_state_does_nothing() {
        let pods = vec![running("a"), running("b")];
        let q = Q::at(5).held("a", 2);
        let s0 = plan(&input(2, &pods, Some(&q), 0), &PlanState::default()).state;
        let p = plan(&input(2, &pods, Some(&q), 1000), &s0);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty() && p.drain.is_empty() && p.replacements.is_empty());
        assert_eq!(p.state, s0);
        assert_eq!(p.counts.busy, 1);
    }

    #[test]
    fn scale_in_drains_idle_pods_first_and_deletes_each_once_it_stopped_and_holds_nothing() {
        let pods = vec![running("busy"), running("idle"), running("lazy")];
        let q = Q::at(0).held("busy", 3).held("lazy", 1);
        let p = plan(&input(1, &pods, Some(&q), 100), &PlanState::default());
        assert_eq!(p.drain_started, ["idle", "lazy"]);
        assert!(p.delete.is_empty(), "told first, deleted later");
        assert_eq!((p.counts.replicas, p.counts.draining), (1, 2));
        // The workers said they stopped; lazy still holds its task.
        let q = Q::at(200)
            .held("busy", 3)
            .held("lazy", 1)
            .drain("idle", DrainState::Stopped)
            .drain("lazy", DrainState::Stopped);
        let p = plan(&input(1, &pods, Some(&q), 300), &p.state);
        assert_eq!(
            p.delete,
            vec![Deletion {
                name: "idle".into(),
                reason: DeleteReason::Drained
            }]
        );
        assert_eq!(p.drain, BTreeSet::from(["lazy".to_string()]));
        let rest = vec![running("busy"), running("lazy")];
        let q = Q::at(400)
            .held("busy", 3)
            .drain("lazy", DrainState::Stopped);
        let p = plan(&input(1, &rest, Some(&q), 500), &p.state);
        assert_eq!(names(&p.delete), ["lazy"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn a_snapshot_older_than_the_drain_request_deletes_nothing() {
        // `a` stopped for an earlier drain that was taken back; now it is asked again.
        let pods = vec![running("a"), running("b")];
        let q = Q::at(50).drain("a", DrainState::Stopped);
        let state = PlanState {
            draining: BTreeMap::from([("a".to_string(), 100)]),
            ..PlanState::default()
        };
        let p = plan(&input(1, &pods, Some(&q), 120), &state);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        let q = Q::at(130).drain("a", DrainState::Stopped);
        let p = plan(&input(1, &pods, Some(&q), 140), &p.state);
        assert_eq!(names(&p.delete), ["a"]);
    }

    #[test]
    fn an_unreadable_queue_drains_and_deletes_no_running_worker() {
        let mut pending = pod("p", Phase::Pending, false);
        pending.created_ms = 9;
        let pods = vec![running("a"), running("b"), pending];
        let p = plan(&input(1, &pods, None, 0), &PlanState::default());
        // Only the pod whose worker never ran may go blind.
        assert_eq!(
            p.delete,
            vec![Deletion {
                name: "p".into(),
                reason: DeleteReason::NeverStarted
            }]
        );
        assert!(p.drain.is_empty());
        assert_eq!(p.counts.replicas, 2);
    }

    #[test]
    fn pods_whose_worker_is_not_running_leave_without_a_drain() {
        let mut looping = running("crash");
        looping.worker_running = false;
        looping.ready = false;
        let pods = vec![running("a"), looping];
        let q = Q::at(0).held("crash", 2);
        let p = plan(&input(1, &pods, Some(&q), 0), &PlanState::default());
        assert_eq!(names(&p.delete), ["crash"]);
        assert_eq!(p.delete[0].reason, DeleteReason::NeverStarted);
    }

    #[test]
    fn a_scale_up_takes_drains_back_busiest_first_before_creating() {
        let pods = vec![running("a"), running("b"), running("c")];
        let q = Q::at(0).held("b", 5).held("c", 1);
        let p = plan(&input(1, &pods, Some(&q), 10), &PlanState::default());
        assert_eq!(p.drain.len(), 2);
        let kept: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .filter(|n| !p.drain.contains(n))
            .collect();
        assert_eq!(kept, ["b"], "the busiest stays");
        // Back to 2: the busier draining pod is taken back, nothing created.
        let p2 = plan(&input(2, &pods, Some(&q), 20), &p.state);
        assert_eq!(p2.create, 0);
        assert_eq!(p2.drain_cancelled, ["c"]);
        assert_eq!(p2.counts.replicas, 2);
        assert!(kept.iter().all(|k| !p2.drain.contains(k)));
        // Up to 4: the other one comes back and one pod is created.
        let p3 = plan(&input(4, &pods, Some(&q), 30), &p2.state);
        assert_eq!(p3.drain_cancelled.len(), 1);
        assert_eq!(p3.create, 1);
        assert!(p3.drain.is_empty());
        // A snapshot taken before the take-back still shows the drains: not adopted.
        let stale = Q::at(25)
            .drain("b", DrainState::Stopped)
            .drain("c", DrainState::Requested);
        let p4 = plan(&input(3, &pods, Some(&stale), 40), &p3.state);
        assert!(p4.drain.is_empty() && p4.delete.is_empty(), "{p4:?}");
    }

    #[test]
    fn drains_found_in_the_queue_are_adopted() {
        // Another operator process asked `b` to drain.
        let pods = vec![running("a"), running("b")];
        let q = Q::at(0)
            .drain("b", DrainState::Requested)
            .held("b", 1)
            .held("a", 2);
        let p = plan(&input(1, &pods, Some(&q), 10), &PlanState::default());
        assert_eq!(p.drain, BTreeSet::from(["b".to_string()]));
        assert!(p.drain_started.is_empty());
        assert_eq!(
            (p.counts.replicas, p.counts.draining, p.counts.busy),
            (1, 1, 2)
        );
    }

    #[test]
    fn a_pod_that_took_a_task_before_its_drain_arrived_swaps_with_an_idle_one() {
        // Three of four drained on a read where all were idle; `b` had taken a task.
        let pods = vec![running("a"), running("b"), running("c"), running("d")];
        let q = Q::at(0);
        let p = plan(&input(1, &pods, Some(&q), 10), &PlanState::default());
        assert_eq!(p.drain.len(), 3);
        let serving = ["a", "b", "c", "d"]
            .into_iter()
            .find(|n| !p.drain.contains(*n))
            .unwrap();
        let busy = p.drain.iter().next().unwrap().clone();
        let mut q = Q::at(20).held(&busy, 1);
        for n in p.drain.iter().filter(|n| **n != busy) {
            q = q.drain(n, DrainState::Stopped);
        }
        let q = q.drain(&busy, DrainState::Requested);
        let p2 = plan(&input(1, &pods, Some(&q), 30), &p.state);
        assert_eq!(p2.drain_cancelled, std::slice::from_ref(&busy));
        assert_eq!(p2.drain_started, [serving.to_string()]);
        assert!(!p2.drain.contains(&busy) && p2.drain.contains(serving));
        assert_eq!(p2.delete.len(), 2, "the stopped idle ones still go");
        assert_eq!(p2.counts.replicas, 1);
        // The same read again changes nothing (no swap back).
        let p3 = plan(&input(1, &pods, Some(&q), 40), &p2.state);
        assert!(
            p3.drain_cancelled.is_empty() && p3.drain_started.is_empty(),
            "{p3:?}"
        );
        assert!(p3.drain.contains(serving) && !p3.drain.contains(&busy));
        // When every serving pod is busy too, the drain stays.
        let q = Q::at(20)
            .held(&busy, 1)
            .held(serving, 1)
            .drain(&busy, DrainState::Requested);
        let p4 = plan(&input(1, &pods, Some(&q), 30), &p.state);
        assert!(p4.drain_cancelled.is_empty() && p4.drain.contains(&busy));
    }

    #[test]
    fn a_drain_past_its_limit_deletes_the_pod() {
        let pods = vec![running("a"), running("b")];
        let q = Q::at(0).held("a", 1).held("b", 1);
        let mut i = input(1, &pods, Some(&q), 1_000);
        i.drain_max_ms = Some(60_000);
        let p = plan(&i, &PlanState::default());
        assert_eq!(p.drain.len(), 1);
        i.now_ms = 60_999;
        assert!(plan(&i, &p.state).delete.is_empty());
        i.now_ms = 61_000;
        let p2 = plan(&i, &p.state);
        assert_eq!(p2.delete.len(), 1);
        assert_eq!(p2.delete[0].reason, DeleteReason::DrainTimedOut);
    }

    #[test]
    fn a_template_change_creates_new_pods_within_the_surge_then_drains_old_ones() {
        let old = vec![outdated("o1"), outdated("o2"), outdated("o3")];
        let q = Q::at(0).held("o1", 1).held("o2", 1).held("o3", 1);
        let mut i = input(3, &old, Some(&q), 0);
        i.max_pods = Some(3);
        i.max_surge = 1;
        let p = plan(&i, &PlanState::default());
        assert!(p.rolling_out);
        assert_eq!(p.create, 1, "one new pod: maxReplicas 3 + surge 1");
        assert!(
            p.drain.is_empty(),
            "old pods serve until new ones are ready"
        );
        assert_eq!(p.held_back_by_bound, 2);
        // The new pod is ready: one old pod (the idle-first choice) drains.
        let mut pods = old.clone();
        pods.push(running("n1"));
        let q = Q::at(10).held("o1", 1).held("o3", 2);
        let mut i = input(3, &pods, Some(&q), 20);
        i.max_pods = Some(3);
        let p2 = plan(&i, &p.state);
        assert_eq!(p2.drain_started, ["o2"]);
        assert_eq!(p2.create, 0, "4 pods counted against 3 + 1");
        assert_eq!(
            (p2.counts.replicas, p2.counts.updated, p2.counts.draining),
            (3, 1, 1)
        );
    }

    #[test]
    fn a_replicas_pool_rolls_out_with_its_surge() {
        let old = vec![outdated("o1"), outdated("o2")];
        let p = plan(&input(2, &old, None, 0), &PlanState::default());
        assert_eq!(p.create, 1, "2 + surge 1");
        assert_eq!(p.counts.bound, 3);
    }

    #[test]
    fn terminating_pods_count_against_max_replicas_unless_stuck() {
        let mut t = running("t");
        t.terminating = true;
        let pods = vec![running("a"), t.clone()];
        let mut i = input(2, &pods, None, 0);
        i.max_pods = Some(2);
        assert_eq!(plan(&i, &PlanState::default()).create, 0);
        t.stuck = true;
        let pods = vec![running("a"), t];
        let mut i = input(2, &pods, None, 0);
        i.max_pods = Some(2);
        assert_eq!(plan(&i, &PlanState::default()).create, 1);
    }

    #[test]
    fn failed_pods_are_deleted_replaced_and_back_off() {
        let cfg = BackoffConfig::default();
        let mut pods = vec![running("a"), pod("b", Phase::Failed, false)];
        let p = plan(&input(2, &pods, None, 10_000), &PlanState::default());
        assert_eq!(
            p.replacements,
            vec![("b".into(), ReplacementReason::Failed)]
        );
        assert_eq!(
            p.delete,
            vec![Deletion {
                name: "b".into(),
                reason: DeleteReason::Finished(ReplacementReason::Failed)
            }]
        );
        assert_eq!(p.create, 0);
        assert_eq!(p.backoff_until_ms, Some(10_000 + cfg.base_ms));
        assert!(
            p.degraded
                .as_deref()
                .unwrap_or("")
                .contains("last: pod b failed")
        );
        pods[1].terminating = true;
        let p2 = plan(&input(2, &pods, None, 10_500), &p.state);
        assert!(p2.replacements.is_empty());
        assert_eq!(p2.create, 0);
        pods.pop();
        let p3 = plan(&input(2, &pods, None, 11_000), &p2.state);
        assert_eq!(p3.create, 1);
        assert!(p3.degraded.is_some(), "Degraded stays until the reset");
        let p4 = plan(
            &input(2, &pods, None, 10_000 + cfg.reset_after_ms),
            &p3.state,
        );
        assert_eq!(p4.degraded, None);
        assert_eq!(p4.state.consecutive_failures, 0);
    }

    #[test]
    fn pods_failing_together_are_one_incident_and_their_replacements_failing_the_next() {
        let cfg = BackoffConfig::default();
        let failed: Vec<ObservedPod> = (0..10)
            .map(|i| pod(&format!("f{i}"), Phase::Failed, false))
            .collect();
        // Seen in two batches before any replacement: still one incident.
        let p = plan(&input(10, &failed[..4], None, 0), &PlanState::default());
        let p = plan(&input(10, &failed, None, 50), &p.state);
        assert_eq!(p.state.consecutive_failures, 1);
        assert_eq!(p.backoff_until_ms, Some(50 + cfg.base_ms));
        // After the back-off all ten are replaced at once.
        let p = plan(&input(10, &[], None, 2_000), &p.state);
        assert_eq!(p.create, 10);
        // The replacements fail too: the next in a row.
        let again: Vec<ObservedPod> = (0..10)
            .map(|i| pod(&format!("g{i}"), Phase::Failed, false))
            .collect();
        let p = plan(&input(10, &again, None, 3_000), &p.state);
        assert_eq!(p.state.consecutive_failures, 2);
        assert_eq!(p.backoff_until_ms, Some(3_000 + cfg.delay_ms(2)));
    }

    #[test]
    fn succeeded_and_evicted_pods_are_replaced() {
        let mut ev = pod("e", Phase::Failed, false);
        ev.evicted = true;
        let pods = vec![pod("s", Phase::Succeeded, false), ev];
        let p = plan(&input(2, &pods, None, 0), &PlanState::default());
        let mut reasons: Vec<_> = p.replacements.iter().map(|r| r.1).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [ReplacementReason::Succeeded, ReplacementReason::Evicted]
        );
        assert_eq!(p.delete.len(), 2);
    }

    #[test]
    fn pods_deleted_by_others_are_replaced_without_back_off() {
        let pods = vec![running("a"), running("b")];
        let s = plan(&input(2, &pods, None, 0), &PlanState::default()).state;
        let p = plan(&input(2, &pods[..1], None, 100), &s);
        assert_eq!(
            p.replacements,
            vec![("b".into(), ReplacementReason::Deleted)]
        );
        assert_eq!(p.create, 1);
        assert_eq!(p.degraded, None);
        let mut t = pods.clone();
        t[0].terminating = true;
        let p = plan(&input(2, &t, None, 100), &s);
        assert_eq!(
            p.replacements,
            vec![("a".into(), ReplacementReason::Deleted)]
        );
        assert_eq!(p.create, 1);
        assert!(
            plan(&input(2, &t, None, 200), &p.state)
                .replacements
                .is_empty()
        );
    }

    #[test]
    fn pods_deleted_by_the_operator_are_not_replacements() {
        let pods = vec![running("a"), running("b")];
        let q0 = Q::at(0);
        let p = plan(&input(1, &pods, Some(&q0), 0), &PlanState::default());
        let victim = p.drain.iter().next().cloned().expect("a victim");
        let q1 = Q::at(10).drain(&victim, DrainState::Stopped);
        let p = plan(&input(1, &pods, Some(&q1), 20), &p.state);
        assert_eq!(names(&p.delete), [victim.as_str()]);
        let rest: Vec<ObservedPod> = pods.iter().filter(|p| p.name != victim).cloned().collect();
        let p2 = plan(&input(1, &rest, Some(&q1), 100), &p.state);
        assert!(p2.replacements.is_empty());
        assert_eq!(p2.create, 0);
        assert!(p2.delete.is_empty());
    }

    #[test]
    fn paused_changes_nothing() {
        let pods = vec![running("a"), pod("dead", Phase::Failed, false)];
        let q = Q::at(0).drain("a", DrainState::Stopped);
        let mut i = input(5, &pods, Some(&q), 10);
        i.freeze = Freeze::Paused;
        let p = plan(&i, &PlanState::default());
        assert_eq!((p.create, p.delete.len()), (0, 0));
        assert!(p.drain_started.is_empty() && p.drain_cancelled.is_empty());
        assert_eq!(
            p.drain,
            BTreeSet::from(["a".to_string()]),
            "drains stay as they are"
        );
    }

    #[test]
    fn an_invalid_spec_creates_and_drains_nothing_but_clears_finished_pods() {
        let pods = vec![
            running("a"),
            running("b"),
            pod("dead", Phase::Failed, false),
        ];
        let q = Q::at(0);
        let mut i = input(0, &pods, Some(&q), 10);
        i.freeze = Freeze::InvalidSpec;
        let p = plan(&i, &PlanState::default());
        assert_eq!(p.create, 0);
        assert!(p.drain.is_empty());
        assert_eq!(names(&p.delete), ["dead"]);
    }

    #[test]
    fn surge_is_a_number_or_a_percentage_of_the_bound() {
        use serde_json::json;
        assert_eq!(surge_of(None, 10), Ok(3));
        assert_eq!(surge_of(None, 0), Ok(1));
        assert_eq!(surge_of(Some(&json!(2)), 10), Ok(2));
        assert_eq!(surge_of(Some(&json!(0)), 10), Ok(1));
        assert_eq!(surge_of(Some(&json!("50%")), 5), Ok(3));
        assert!(surge_of(Some(&json!("lots")), 5).is_err());
        assert!(surge_of(Some(&json!(-1)), 5).is_err());
    }

    #[test]
    fn the_victim_order_is_never_started_then_fewest_tasks_unready_newest() {
        let k = |name, started, held, ready, created| VictimKey {
            name,
            started,
            held,
            ready,
            created,
        };
        let pods = [
            k("busy", true, 3, true, 1),
            k("idle-old", true, 0, true, 1),
            k("idle-new", true, 0, true, 5),
            k("idle-unready", true, 0, false, 1),
            k("pending", false, 0, false, 1),
            k("lazy", true, 1, true, 1),
        ];
        assert_eq!(
            choose_victims(&pods, 10),
            [
                "pending",
                "idle-unready",
                "idle-new",
                "idle-old",
                "lazy",
                "busy"
            ]
        );
        assert_eq!(choose_victims(&pods, 2), ["pending", "idle-unready"]);
        assert!(choose_victims(&pods, 0).is_empty());
    }

    #[test]
    fn backoff_delays_grow_and_cap() {
        let cfg = BackoffConfig {
            base_ms: 1000,
            max_ms: 10_000,
            reset_after_ms: 60_000,
        };
        let d: Vec<u64> = (0..7).map(|n| cfg.delay_ms(n)).collect();
        assert_eq!(d, [0, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(cfg.delay_ms(u32::MAX), 10_000);
    }

    // ---- properties ----

    fn arb_pod(i: usize) -> impl Strategy<Value = ObservedPod> {
        (
            prop_oneof![
                Just(Phase::Pending),
                Just(Phase::Running),
                Just(Phase::Running),
                Just(Phase::Running),
                Just(Phase::Succeeded),
                Just(Phase::Failed)
            ],
            any::<bool>(),
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.15),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.8),
            0u64..1000,
        )
            .prop_map(
                move |(phase, ready, runs, terminating, stuck, evicted, current, created_ms)| {
                    let running = phase == Phase::Running;
                    ObservedPod {
                        name: format!("p{i}"),
                        ready: ready && running,
                        worker_running: runs && running,
                        phase,
                        terminating,
                        stuck: stuck && terminating,
                        evicted: evicted && phase == Phase::Failed,
                        current,
                        created_ms,
                    }
                },
            )
    }

    fn arb_pods() -> impl Strategy<Value = Vec<ObservedPod>> {
        (0usize..12).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
    }

    fn arb_queue() -> impl Strategy<Value = Option<Q>> {
        prop::option::weighted(
            0.8,
            (
                prop::collection::vec(prop_oneof![Just(0u64), 1u64..5], 12),
                prop::collection::vec(0u8..3, 12),
                0u64..2000,
            )
                .prop_map(|(held, drain, taken_ms)| {
                    let mut q = Q::at(taken_ms);
                    for (i, h) in held.into_iter().enumerate() {
                        q = q.held(&format!("p{i}"), h);
                    }
                    for (i, d) in drain.into_iter().enumerate() {
                        match d {
                            1 => q = q.drain(&format!("p{i}"), DrainState::Requested),
                            2 => q = q.drain(&format!("p{i}"), DrainState::Stopped),
                            _ => {}
                        }
                    }
                    q
                }),
        )
    }

    fn arb_state() -> impl Strategy<Value = PlanState> {
        prop::collection::btree_map((0usize..12).prop_map(|i| format!("p{i}")), 0u64..2000, 0..4)
            .prop_map(|draining| PlanState {
                draining,
                ..PlanState::default()
            })
    }

    proptest! {
        /// No pod whose worker runs is deleted while it may hold a task or take one: every
        /// deletion is a finished pod, a pod whose worker never ran, a drain past its limit,
        /// or a pod that one snapshot, taken after it was told, shows stopped and idle.
        #[test]
        fn no_running_worker_is_deleted_unless_drained_and_idle(
            pods in arb_pods(), q in arb_queue(), state in arb_state(),
            desired in 0i32..10, now in 0u64..3000, max in prop::option::of(1u32..12),
        ) {
            let mut i = input(desired, &pods, q.as_ref(), now);
            i.max_pods = max;
            let p = plan(&i, &state);
            for d in &p.delete {
                let pod = pods.iter().find(|x| x.name == d.name).expect("observed");
                match d.reason {
                    DeleteReason::Finished(_) => prop_assert!(finished_reason(pod).is_some()),
                    DeleteReason::NeverStarted => prop_assert!(!pod.worker_running),
                    DeleteReason::DrainTimedOut => prop_assert!(false, "no drain limit was set"),
                    DeleteReason::Drained => {
                        let q = q.as_ref().expect("a drained pod needs a snapshot");
                        prop_assert_eq!(q.draining.get(&d.name), Some(&DrainState::Stopped));
                        prop_assert_eq!(q.held.get(&d.name).copied().unwrap_or(0), 0);
                        let asked = state.draining.get(&d.name).copied().unwrap_or(now);
                        prop_assert!(q.taken_ms > asked, "snapshot {} not after the request {}", q.taken_ms, asked);
                    }
                }
                prop_assert!(!pod.terminating);
            }
            let deleted: BTreeSet<&str> = names(&p.delete).into_iter().collect();
            prop_assert_eq!(deleted.len(), p.delete.len(), "each pod deleted once");
        }

        /// Creations never take the pool past its bound (maxReplicas counting draining and
        /// terminating pods, plus the surge only during a rollout), nor past the desired
        /// count of current pods.
        #[test]
        fn creations_respect_the_bound(
            pods in arb_pods(), q in arb_queue(), desired in 0i32..10,
            max in prop::option::of(1u32..12), surge in 1u32..3,
        ) {
            let mut i = input(desired, &pods, q.as_ref(), 10_000);
            i.max_pods = max.map(|m| m.max(desired as u32));
            i.max_surge = surge;
            let p = plan(&i, &PlanState::default());
            if p.create > 0 {
                prop_assert!(p.counts.counted as u32 + p.create <= p.counts.bound as u32,
                    "{} + {} > {}", p.counts.counted, p.create, p.counts.bound);
                prop_assert!(p.counts.updated as u32 + p.create <= desired as u32);
            }
            if !p.rolling_out && let Some(m) = i.max_pods && p.create > 0 {
                prop_assert!(p.counts.counted as u32 + p.create <= m);
            }
        }

        /// After a plan, no pod of the current template is draining with tasks in hand
        /// (and not yet stopped) while a serving pod of the current template holds none.
        #[test]
        fn no_busy_pod_drains_while_an_idle_one_serves(
            pods in arb_pods(), q in arb_queue(), state in arb_state(),
            desired in 0i32..10, now in 0u64..3000,
        ) {
            let Some(q) = q else { return Ok(()) };
            let p = plan(&input(desired, &pods, Some(&q), now), &state);
            let held = |n: &str| q.held.get(n).copied().unwrap_or(0);
            let deleted: BTreeSet<&str> = names(&p.delete).into_iter().collect();
            let live = |x: &&ObservedPod| x.current && !x.terminating && !deleted.contains(x.name.as_str())
                && finished_reason(x).is_none();
            let busy_draining = pods.iter().filter(live).find(|x| x.worker_running
                && p.drain.contains(&x.name) && held(&x.name) > 0
                && q.draining.get(&x.name) != Some(&DrainState::Stopped));
            let idle_serving = pods.iter().filter(live).find(|x| !p.drain.contains(&x.name)
                && held(&x.name) == 0);
            prop_assert!(busy_draining.is_none() || idle_serving.is_none(),
                "{:?} drains busy while {:?} serves idle: {:?}", busy_draining, idle_serving, p);
        }

        /// With the queue unreadable, no pod whose worker runs starts draining.
        #[test]
        fn nothing_running_drains_blind(pods in arb_pods(), desired in 0i32..10) {
            let p = plan(&input(desired, &pods, None, 0), &PlanState::default());
            for n in &p.drain_started {
                let pod = pods.iter().find(|x| &x.name == n).expect("observed");
                prop_assert!(!pod.worker_running, "{} drained blind", n);
            }
        }

        /// Among pods of one template, a drain never picks a pod holding more tasks than
        /// one that stays serving.
        #[test]
        fn idle_pods_drain_before_busy_ones(pods in arb_pods(), q in arb_queue(), desired in 0i32..10) {
            let Some(q) = q else { return Ok(()) };
            let q = Q { draining: BTreeMap::new(), ..q };
            let p = plan(&input(desired, &pods, Some(&q), 5000), &PlanState::default());
            let tasks = |n: &str| q.held.get(n).copied().unwrap_or(0);
            for n in &p.drain_started {
                let v = pods.iter().find(|x| &x.name == n).expect("observed");
                for k in pods.iter().filter(|x| {
                    x.current == v.current && x.worker_running && !x.terminating
                        && finished_reason(x).is_none() && !p.drain.contains(&x.name)
                        && !names(&p.delete).contains(&x.name.as_str())
                }) {
                    prop_assert!(tasks(n) <= tasks(&k.name) || !v.worker_running,
                        "drained {} holding {} while {} holding {} serves", n, tasks(n), k.name, tasks(&k.name));
                }
            }
        }

        /// Paused: nothing created, deleted, drained or taken back.
        #[test]
        fn paused_is_frozen(pods in arb_pods(), q in arb_queue(), state in arb_state(), desired in 0i32..10) {
            let mut i = input(desired, &pods, q.as_ref(), 1000);
            i.freeze = Freeze::Paused;
            let p = plan(&i, &state);
            prop_assert_eq!(p.create, 0);
            prop_assert!(p.delete.is_empty());
            prop_assert!(p.drain_started.is_empty() && p.drain_cancelled.is_empty());
        }

        /// From any state, acting on the plans (pods start and get ready, workers say they
        /// stopped when told, tasks end, deleted pods go) reaches exactly `desired`
        /// current, ready pods with nothing draining, and stays there.
        #[test]
        fn converges_from_any_state(pods in arb_pods(), q in arb_queue(), desired in 0i32..10) {
            let mut pods: Vec<ObservedPod> = pods.into_iter().map(|mut p| { p.stuck = false; p }).collect();
            let mut q = q.unwrap_or_default();
            let mut state = PlanState::default();
            let mut now = 10_000u64;
            let mut next = 1000usize;
            let mut settled = 0;
            for _ in 0..300 {
                q.taken_ms = now;
                let mut i = input(desired, &pods, Some(&q), now + 1);
                i.max_pods = Some(desired.max(1) as u32);
                let p = plan(&i, &state);
                state = p.state.clone();
                let quiet = p.create == 0 && p.delete.is_empty() && p.drain_started.is_empty();
                // Act.
                let gone: BTreeSet<String> = p.delete.iter().map(|d| d.name.clone()).collect();
                pods.retain(|x| !gone.contains(&x.name) && !x.terminating);
                for x in pods.iter_mut() {
                    if matches!(x.phase, Phase::Pending | Phase::Running) {
                        x.phase = Phase::Running; x.ready = true; x.worker_running = true;
                    }
                }
                for n in &p.drain { q.draining.insert(n.clone(), DrainState::Stopped); }
                q.draining.retain(|n, _| p.drain.contains(n));
                for h in q.held.values_mut() { *h = h.saturating_sub(1); }
                for _ in 0..p.create {
                    pods.push(ObservedPod::created(format!("n{next}"), now));
                    next += 1;
                }
                now += p.backoff_until_ms.map(|t| t.saturating_sub(now)).unwrap_or(0).max(500);
                if quiet && pods.len() == desired as usize && p.drain.is_empty()
                    && pods.iter().all(|x| x.current && x.ready) {
                    settled += 1;
                    if settled >= 2 { break; }
                }
            }
            prop_assert!(settled >= 2, "did not converge: {:?}", pods);
        }
    }
}
