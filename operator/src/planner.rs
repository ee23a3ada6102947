//! The planner: pure (no client, no IO, no clock of its own).
//!
//! Input: the pool's observed pods, the desired number of pods (from `spec.replicas` or the
//! autoscaler), the tasks each consumer holds (when the queue could be read), the time, and
//! the planner's own memory of earlier plans ([`PlanState`]). Output: a [`Plan`]: how many
//! pods to create, which pods to delete and why, the counts for the status, the
//! replacements noticed, and whether replacements are backing off (`Degraded`).
//!
//! Rules:
//! - Pods that finished (Failed, Succeeded, evicted) are deleted and replaced; each one
//!   counts as a failure, and failures in a row back off replacement exponentially
//!   (`base * 2^(n-1)`, capped); the count resets after `reset_after` without failures.
//! - Pods deleted by someone else are replaced at once (no back-off).
//! - Scale-in removes pods holding no task first, then the least busy, unready before
//!   ready, newest before oldest; it never removes more than the excess.
//! - Pods of an outdated template are replaced: new pods are created first and an old
//!   pod is removed once enough new ones are ready (idle ones first).

use std::collections::{BTreeMap, BTreeSet};

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
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Failed with `status.reason: Evicted`.
    pub evicted: bool,
    /// Built from the pool's current template.
    pub current: bool,
    /// Creation time in milliseconds (newer pods are removed first on scale-in).
    pub created_ms: u64,
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
    /// All reasons (metric label values).
    pub const ALL: [ReplacementReason; 4] = [
        ReplacementReason::Failed,
        ReplacementReason::Succeeded,
        ReplacementReason::Evicted,
        ReplacementReason::Deleted,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplacementReason::Failed => "failed",
            ReplacementReason::Succeeded => "succeeded",
            ReplacementReason::Evicted => "evicted",
            ReplacementReason::Deleted => "deleted",
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
    /// More pods than desired.
    ScaleIn,
    /// Built from an older template; a current pod takes its place.
    Outdated,
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
    /// Delay before replacing after `failures` failures in a row (0 for none).
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
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Time of the last failure.
    pub last_failure_ms: Option<u64>,
    /// The last failure, for the Degraded message: pod name and reason.
    pub last_failure: Option<(String, ReplacementReason)>,
    /// Pods whose replacement was already counted.
    pub counted: BTreeSet<String>,
    /// Pods alive after the last plan.
    pub alive: BTreeSet<String>,
    /// Pods the operator itself deleted.
    pub deleting: BTreeSet<String>,
}

impl PlanState {
    /// No replacement before this time.
    pub fn retry_at_ms(&self, cfg: &BackoffConfig) -> Option<u64> {
        self.last_failure_ms
            .map(|t| t.saturating_add(cfg.delay_ms(self.consecutive_failures)))
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Pods wanted (from `spec.replicas` or the autoscaler); negative counts as 0.
    pub desired: i32,
    /// The pool's pods.
    pub pods: &'a [ObservedPod],
    /// Tasks held per consumer (= pod name), when the queue could be read.
    pub held: Option<&'a BTreeMap<String, u64>>,
    /// Now, in milliseconds.
    pub now_ms: u64,
    /// Back-off settings.
    pub backoff: BackoffConfig,
}

/// Counts for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Pods neither terminating nor finished.
    pub replicas: i32,
    /// Of those, ready.
    pub ready: i32,
    /// Of those, holding at least one task.
    pub busy: i32,
    /// Desired.
    pub desired: i32,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Pods to create from the current template.
    pub create: u32,
    /// Pods to delete.
    pub delete: Vec<Deletion>,
    /// Replacements noticed in this plan (for metrics and events).
    pub replacements: Vec<(String, ReplacementReason)>,
    /// Counts as observed (before acting).
    pub counts: Counts,
    /// Creation held back by the failure back-off until this time.
    pub backoff_until_ms: Option<u64>,
    /// Set while failures in a row are remembered: the Degraded message.
    pub degraded: Option<String>,
    /// The memory for the next plan.
    pub state: PlanState,
}

impl Plan {
    /// Pods deleted because there were more than desired.
    pub fn scale_in(&self) -> usize {
        self.delete
            .iter()
            .filter(|d| d.reason == DeleteReason::ScaleIn)
            .count()
    }
}

fn finished_reason(p: &ObservedPod) -> Option<ReplacementReason> {
    match p.phase {
        Phase::Failed if p.evicted => Some(ReplacementReason::Evicted),
        Phase::Failed => Some(ReplacementReason::Failed),
        Phase::Succeeded => Some(ReplacementReason::Succeeded),
        Phase::Pending | Phase::Running => None,
    }
}

/// Order of removal: idle before busy (fewest tasks first), unready before ready, newest
/// before oldest, then by name (deterministic).
fn removal_order(held: Option<&BTreeMap<String, u64>>, pods: &mut [&ObservedPod]) {
    let tasks = |p: &ObservedPod| held.and_then(|h| h.get(&p.name).copied()).unwrap_or(0);
    pods.sort_by(|a, b| {
        tasks(a)
            .cmp(&tasks(b))
            .then(a.ready.cmp(&b.ready))
            .then(b.created_ms.cmp(&a.created_ms))
            .then(a.name.cmp(&b.name))
    });
}

/// Plans one step for one pool.
pub fn plan(input: &PlanInput<'_>, previous: &PlanState) -> Plan {
    let desired = input.desired.max(0);
    let cfg = input.backoff;
    let now = input.now_ms;
    let mut state = previous.clone();
    let observed: BTreeSet<&str> = input.pods.iter().map(|p| p.name.as_str()).collect();

    let mut replacements = Vec::new();
    let mut delete = Vec::new();
    let mut alive: Vec<&ObservedPod> = Vec::new();

    for p in input.pods {
        if p.terminating {
            if !state.deleting.contains(&p.name) && state.counted.insert(p.name.clone()) {
                replacements.push((p.name.clone(), ReplacementReason::Deleted));
            }
            continue;
        }
        if let Some(reason) = finished_reason(p) {
            if state.counted.insert(p.name.clone()) {
                replacements.push((p.name.clone(), reason));
            }
            delete.push(Deletion {
                name: p.name.clone(),
                reason: DeleteReason::Finished(reason),
            });
            continue;
        }
        alive.push(p);
    }
    // Pods that vanished without being seen terminating, and not deleted by us.
    for name in &previous.alive {
        if !observed.contains(name.as_str())
            && !state.deleting.contains(name)
            && !state.counted.contains(name)
        {
            replacements.push((name.clone(), ReplacementReason::Deleted));
        }
    }

    // Back-off bookkeeping.
    let mut failed_now = false;
    for (name, reason) in &replacements {
        if reason.backs_off() {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.last_failure_ms = Some(now);
            state.last_failure = Some((name.clone(), *reason));
            failed_now = true;
        }
    }
    if !failed_now
        && state.consecutive_failures > 0
        && state
            .last_failure_ms
            .is_some_and(|t| now >= t.saturating_add(cfg.reset_after_ms))
    {
        state.consecutive_failures = 0;
        state.last_failure_ms = None;
        state.last_failure = None;
    }
    let retry_at = state.retry_at_ms(&cfg).filter(|t| *t > now);

    let (mut current, mut outdated): (Vec<&ObservedPod>, Vec<&ObservedPod>) =
        alive.iter().partition(|p| p.current);
    let held = input.held;
    let is_busy = |p: &ObservedPod| held.and_then(|h| h.get(&p.name)).is_some_and(|n| *n > 0);
    let counts = Counts {
        replicas: alive.len() as i32,
        ready: alive.iter().filter(|p| p.ready).count() as i32,
        busy: alive.iter().filter(|p| is_busy(p)).count() as i32,
        desired,
    };

    let want = desired as usize;
    let mut create = 0u32;
    let mut backoff_until_ms = None;
    if current.len() < want {
        match retry_at {
            Some(t) => backoff_until_ms = Some(t),
            None => create = (want - current.len()) as u32,
        }
    } else if current.len() > want {
        removal_order(held, &mut current);
        let excess = current.len() - want;
        for p in current.iter().take(excess) {
            delete.push(Deletion {
                name: p.name.clone(),
                reason: DeleteReason::ScaleIn,
            });
        }
    }
    // Outdated pods stay while the current ones are not ready enough to take over.
    let current_ready = current.iter().filter(|p| p.ready).count().min(want);
    let keep_outdated = want.saturating_sub(current_ready).min(outdated.len());
    removal_order(held, &mut outdated);
    for p in outdated.iter().take(outdated.len() - keep_outdated) {
        delete.push(Deletion {
            name: p.name.clone(),
            reason: DeleteReason::Outdated,
        });
    }

    // Memory for the next plan.
    for d in &delete {
        state.deleting.insert(d.name.clone());
    }
    state.deleting.retain(|n| observed.contains(n.as_str()));
    state.counted.retain(|n| observed.contains(n.as_str()));
    let deleted_now: BTreeSet<&str> = delete.iter().map(|d| d.name.as_str()).collect();
    state.alive = alive
        .iter()
        .filter(|p| !deleted_now.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();

    let degraded = (state.consecutive_failures > 0).then(|| {
        let (pod, reason) = state
            .last_failure
            .clone()
            .unwrap_or_else(|| (String::from("?"), ReplacementReason::Failed));
        format!(
            "{} pod(s) in a row ended on their own (last: {pod}, {}); replacements back off for {}s",
            state.consecutive_failures,
            reason.as_str(),
            cfg.delay_ms(state.consecutive_failures) / 1000
        )
    });

    Plan {
        create,
        delete,
        replacements,
        counts,
        backoff_until_ms,
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
            terminating: false,
            evicted: false,
            current: true,
            created_ms: 0,
        }
    }

    fn input<'a>(
        desired: i32,
        pods: &'a [ObservedPod],
        held: Option<&'a BTreeMap<String, u64>>,
        now_ms: u64,
    ) -> PlanInput<'a> {
        PlanInput {
            desired,
            pods,
            held,
            now_ms,
            backoff: BackoffConfig::default(),
        }
    }

    #[test]
    fn creates_missing_pods() {
        let pods = vec![pod("a", Phase::Running, true)];
        let p = plan(&input(3, &pods, None, 0), &PlanState::default());
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(
            p.counts,
            Counts {
                replicas: 1,
                ready: 1,
                busy: 0,
                desired: 3
            }
        );
        assert_eq!(p.degraded, None);
    }

    #[test]
    fn steady_state_does_nothing() {
        let pods = vec![
            pod("a", Phase::Running, true),
            pod("b", Phase::Running, true),
        ];
        let s0 = plan(&input(2, &pods, None, 0), &PlanState::default()).state;
        let p = plan(&input(2, &pods, None, 1000), &s0);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        assert!(p.replacements.is_empty());
        assert_eq!(p.state, s0);
    }

    #[test]
    fn scale_in_removes_idle_pods_first_then_least_busy() {
        let pods = vec![
            pod("busy", Phase::Running, true),
            pod("idle", Phase::Running, true),
            pod("lazy", Phase::Running, true),
        ];
        let held: BTreeMap<String, u64> = [("busy".to_string(), 3), ("lazy".to_string(), 1)]
            .into_iter()
            .collect();
        let p = plan(&input(1, &pods, Some(&held), 0), &PlanState::default());
        let names: Vec<&str> = p.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["idle", "lazy"]);
        assert_eq!(p.counts.busy, 2);
        assert_eq!(p.scale_in(), 2);
    }

    #[test]
    fn scale_in_prefers_unready_then_newest() {
        let mut old = pod("old", Phase::Running, true);
        old.created_ms = 1;
        let mut new = pod("new", Phase::Running, true);
        new.created_ms = 2;
        let unready = pod("unready", Phase::Pending, false);
        let pods = vec![old, new, unready];
        let p = plan(&input(1, &pods, None, 0), &PlanState::default());
        let names: Vec<&str> = p.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["unready", "new"]);
    }

    #[test]
    fn failed_pods_are_deleted_replaced_and_back_off() {
        let cfg = BackoffConfig::default();
        let mut pods = vec![
            pod("a", Phase::Running, true),
            pod("b", Phase::Failed, false),
        ];
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
        // First failure: replacement waits base_ms.
        assert_eq!(p.create, 0);
        assert_eq!(p.backoff_until_ms, Some(10_000 + cfg.base_ms));
        assert!(
            p.degraded
                .as_deref()
                .unwrap_or("")
                .contains("last: b, failed")
        );
        // b is being deleted: not counted again.
        pods[1].terminating = true;
        let p2 = plan(&input(2, &pods, None, 10_500), &p.state);
        assert!(p2.replacements.is_empty());
        assert_eq!(p2.create, 0);
        // After the back-off: replaced.
        pods.pop();
        let p3 = plan(&input(2, &pods, None, 11_000), &p2.state);
        assert_eq!(p3.create, 1);
        assert!(p3.replacements.is_empty());
        assert!(p3.degraded.is_some(), "Degraded stays until the reset");
        let p4 = plan(
            &input(2, &pods, None, 10_000 + cfg.reset_after_ms),
            &p3.state,
        );
        assert_eq!(p4.degraded, None);
        assert_eq!(p4.state.consecutive_failures, 0);
    }

    #[test]
    fn succeeded_and_evicted_pods_count_as_failures() {
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
        assert_eq!(p.state.consecutive_failures, 2);
    }

    #[test]
    fn pods_deleted_by_others_are_replaced_without_back_off() {
        let pods = vec![
            pod("a", Phase::Running, true),
            pod("b", Phase::Running, true),
        ];
        let s = plan(&input(2, &pods, None, 0), &PlanState::default()).state;
        // b vanished without the operator deleting it.
        let p = plan(&input(2, &pods[..1], None, 100), &s);
        assert_eq!(
            p.replacements,
            vec![("b".into(), ReplacementReason::Deleted)]
        );
        assert_eq!(p.create, 1);
        assert_eq!(p.degraded, None);
        // a is terminating because someone ran kubectl delete.
        let mut t = pods.clone();
        t[0].terminating = true;
        let p = plan(&input(2, &t, None, 100), &s);
        assert_eq!(
            p.replacements,
            vec![("a".into(), ReplacementReason::Deleted)]
        );
        assert_eq!(p.create, 1);
        // Counted once only.
        let p2 = plan(&input(2, &t, None, 200), &p.state);
        assert!(p2.replacements.is_empty());
    }

    #[test]
    fn pods_deleted_by_the_operator_are_not_replacements() {
        let pods = vec![
            pod("a", Phase::Running, true),
            pod("b", Phase::Running, true),
        ];
        let p = plan(&input(1, &pods, None, 0), &PlanState::default());
        assert_eq!(p.delete.len(), 1);
        let victim = p.delete[0].name.clone();
        let rest: Vec<ObservedPod> = pods.iter().filter(|p| p.name != victim).cloned().collect();
        let p2 = plan(&input(1, &rest, None, 100), &p.state);
        assert!(p2.replacements.is_empty());
        assert_eq!(p2.create, 0);
        assert!(p2.delete.is_empty());
    }

    #[test]
    fn outdated_pods_are_replaced_after_new_ones_are_ready() {
        let mut old = pod("old", Phase::Running, true);
        old.current = false;
        let pods = vec![old.clone()];
        let p = plan(&input(1, &pods, None, 0), &PlanState::default());
        assert_eq!(p.create, 1);
        assert!(
            p.delete.is_empty(),
            "the old pod serves until a new one is ready"
        );
        let pods = vec![old.clone(), pod("new", Phase::Pending, false)];
        let p = plan(&input(1, &pods, None, 0), &p.state);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        let pods = vec![old, pod("new", Phase::Running, true)];
        let p = plan(&input(1, &pods, None, 0), &p.state);
        assert_eq!(
            p.delete,
            vec![Deletion {
                name: "old".into(),
                reason: DeleteReason::Outdated
            }]
        );
    }

    #[test]
    fn zero_desired_removes_everything_and_negative_is_zero() {
        let pods = vec![pod("a", Phase::Running, true)];
        let p = plan(&input(-3, &pods, None, 0), &PlanState::default());
        assert_eq!(p.counts.desired, 0);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create, 0);
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
            prop::bool::weighted(0.15),
            any::<bool>(),
            prop::bool::weighted(0.8),
            0u64..1000,
        )
            .prop_map(
                move |(phase, ready, terminating, evicted, current, created_ms)| ObservedPod {
                    name: format!("p{i}"),
                    ready: ready && phase == Phase::Running,
                    phase,
                    terminating,
                    evicted: evicted && phase == Phase::Failed,
                    current,
                    created_ms,
                },
            )
    }

    fn arb_pods() -> impl Strategy<Value = Vec<ObservedPod>> {
        (0usize..12).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
    }

    fn arb_held(n: usize) -> impl Strategy<Value = Option<BTreeMap<String, u64>>> {
        prop::option::weighted(
            0.8,
            prop::collection::vec(prop_oneof![Just(0u64), 1u64..5], n).prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, h)| (format!("p{i}"), h))
                    .collect()
            }),
        )
    }

    proptest! {
        /// Current-template pods after acting never exceed the plan, and all pods never
        /// exceed desired plus the old ones kept while new ones get ready.
        #[test]
        fn never_more_pods_than_planned(
            (pods, held) in arb_pods().prop_flat_map(|p| { let n = p.len(); (Just(p), arb_held(12.max(n))) }),
            desired in 0i32..10,
            now in 0u64..1_000_000,
        ) {
            let p = plan(&input(desired, &pods, held.as_ref(), now), &PlanState::default());
            let deleted: BTreeSet<&str> = p.delete.iter().map(|d| d.name.as_str()).collect();
            let alive_after: Vec<&ObservedPod> = pods.iter()
                .filter(|x| !x.terminating && finished_reason(x).is_none() && !deleted.contains(x.name.as_str()))
                .collect();
            let current_after = alive_after.iter().filter(|x| x.current).count() + p.create as usize;
            prop_assert!(current_after <= desired as usize);
            let outdated_after = alive_after.iter().filter(|x| !x.current).count();
            prop_assert!(outdated_after <= desired as usize);
            // Every deletion names an observed, non-terminating pod, once.
            prop_assert_eq!(deleted.len(), p.delete.len());
            for d in &p.delete {
                prop_assert!(pods.iter().any(|x| x.name == d.name && !x.terminating));
            }
            // Scale-in never removes more than the excess.
            let current_alive = pods.iter().filter(|x| !x.terminating && finished_reason(x).is_none() && x.current).count();
            prop_assert!(p.scale_in() <= current_alive.saturating_sub(desired as usize));
        }

        /// A pod holding a task is never removed (scale-in or outdated) while an idle
        /// pod of the same kind survives the plan.
        #[test]
        fn never_a_busy_pod_while_an_idle_one_stays(
            (pods, held) in arb_pods().prop_flat_map(|p| { let n = p.len(); (Just(p), arb_held(12.max(n))) }),
            desired in 0i32..10,
        ) {
            let Some(held) = held else { return Ok(()) };
            let p = plan(&input(desired, &pods, Some(&held), 0), &PlanState::default());
            let tasks = |n: &str| held.get(n).copied().unwrap_or(0);
            for reason in [DeleteReason::ScaleIn, DeleteReason::Outdated] {
                let removed: Vec<&str> = p.delete.iter().filter(|d| d.reason == reason).map(|d| d.name.as_str()).collect();
                let kept: Vec<&ObservedPod> = pods.iter().filter(|x| {
                    !x.terminating && finished_reason(x).is_none()
                        && x.current == (reason == DeleteReason::ScaleIn)
                        && !removed.contains(&x.name.as_str())
                }).collect();
                for r in &removed {
                    for k in &kept {
                        prop_assert!(tasks(r) <= tasks(&k.name),
                            "removed {} holding {} while {} holding {} stays", r, tasks(r), k.name, tasks(&k.name));
                    }
                }
            }
        }

        /// From any observed state, acting on the plans (pods start and become ready,
        /// deleted pods go) reaches exactly `desired` current, ready pods and then stays.
        #[test]
        fn converges_from_any_state(pods in arb_pods(), desired in 0i32..10) {
            let mut pods = pods;
            let mut state = PlanState::default();
            let mut now = 0u64;
            let mut next = 1000usize;
            let mut settled = 0;
            for _ in 0..200 {
                let p = plan(&input(desired, &pods, None, now), &state);
                state = p.state.clone();
                let quiet = p.create == 0 && p.delete.is_empty();
                // Act: deletions remove (terminating pods finish too), creations start.
                let gone: BTreeSet<String> = p.delete.iter().map(|d| d.name.clone()).collect();
                pods.retain(|x| !gone.contains(&x.name) && !x.terminating);
                for x in pods.iter_mut() {
                    if matches!(x.phase, Phase::Pending | Phase::Running) { x.phase = Phase::Running; x.ready = true; }
                }
                for _ in 0..p.create {
                    pods.push(ObservedPod { name: format!("n{next}"), phase: Phase::Pending, ready: false,
                        terminating: false, evicted: false, current: true, created_ms: now });
                    next += 1;
                }
                now += p.backoff_until_ms.map(|t| t.saturating_sub(now)).unwrap_or(0).max(500);
                if quiet && pods.len() == desired as usize && pods.iter().all(|x| x.current && x.ready) {
                    settled += 1;
                    if settled >= 2 { break; }
                }
            }
            prop_assert!(settled >= 2, "did not converge: {:?}", pods);
        }

        /// Replacement delays grow with failures in a row (to the cap) and reset after a
        /// quiet period.
        #[test]
        fn backoff_grows_and_resets(failures in 1u32..12, base in 100u64..5000, factor in 2u64..100) {
            let cfg = BackoffConfig { base_ms: base, max_ms: base * factor, reset_after_ms: 60_000 };
            let mut state = PlanState::default();
            let mut now = 1_000u64;
            let mut last_delay = 0;
            for i in 0..failures {
                let pods = vec![pod(&format!("f{i}"), Phase::Failed, false)];
                let p = plan(&PlanInput { desired: 1, pods: &pods, held: None, now_ms: now, backoff: cfg }, &state);
                let wait = p.backoff_until_ms.map(|t| t - now).unwrap_or(0);
                prop_assert!(wait >= last_delay, "delay shrank: {} < {}", wait, last_delay);
                prop_assert!(wait <= cfg.max_ms);
                prop_assert_eq!(wait, cfg.delay_ms(i + 1));
                prop_assert_eq!(p.create, 0);
                prop_assert!(p.degraded.is_some());
                last_delay = wait;
                state = p.state;
                now += 10; // the next failure comes quickly
            }
            // Quiet for reset_after: forgotten, and the next failure waits only base.
            now += cfg.reset_after_ms;
            let pods = vec![pod("ok", Phase::Running, true)];
            let p = plan(&PlanInput { desired: 1, pods: &pods, held: None, now_ms: now, backoff: cfg }, &state);
            prop_assert_eq!(p.degraded, None);
            prop_assert_eq!(p.state.consecutive_failures, 0);
            let pods = vec![pod("ok", Phase::Running, true), pod("bad", Phase::Failed, false)];
            let p = plan(&PlanInput { desired: 2, pods: &pods, held: None, now_ms: now + 1, backoff: cfg }, &p.state);
            prop_assert_eq!(p.backoff_until_ms, Some(now + 1 + base));
        }
    }
}
