//! The pool's status and its conditions (pure): built from what the reconcile observed and
//! decided, with metav1 `Condition` semantics: a condition's `lastTransitionTime` moves
//! only when its status flips, and two statuses are compared without their times, so a
//! status is written only when something a reader would see has changed (a write that
//! changes nothing would also wake the controller for nothing).
//!
//! Every message is stable while the state it describes stays: no pod names that change
//! with each attempt, no ages, no restart counts.

use std::collections::BTreeMap;

use crate::autoscale::Decision;
use crate::crd::{Condition, QueueStatus, WorkPoolStatus};
use crate::planner::Counts;
use crate::probe::ProbeError;
use workpool_worker::queue::QueueStats;

/// The condition types, in the order they are written.
pub const CONDITION_TYPES: [&str; 4] = ["Ready", "QueueReachable", "Degraded", "Scaling"];

/// What the queue looked like to this reconcile.
#[derive(Debug, Clone, Copy)]
pub enum QueueSeen<'a> {
    /// The spec names no usable queue (the message says why).
    Invalid(&'a str),
    /// Not read yet.
    NotProbed,
    /// Read.
    Read {
        /// The stats.
        stats: &'a QueueStats,
    },
    /// The read failed.
    Failed(&'a ProbeError),
}

/// Why the pool is degraded, as far as the pods tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodTrouble {
    /// A pod create was refused: the API's message, without the pod's name.
    pub create_refused: Option<String>,
    /// Containers that cannot start, counted per waiting reason (CrashLoopBackOff, ...).
    pub not_starting: BTreeMap<String, u32>,
    /// Pods stuck terminating past their deadline.
    pub stuck_terminating: u32,
    /// Replacements backing off after failures in a row (the planner's message).
    pub failures: Option<String>,
}

/// Everything a status is built from.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The pool's name (for the selector).
    pub name: &'a str,
    /// Pods wanted.
    pub desired: i32,
    /// The planner's counts.
    pub counts: Counts,
    /// Why the spec cannot be acted on.
    pub invalid: Option<&'a str>,
    /// `spec.paused`.
    pub paused: bool,
    /// The queue.
    pub queue: QueueSeen<'a>,
    /// The autoscaler's decision (autoscaled pools).
    pub decision: Option<Decision>,
    /// Replacements wait for the back-off.
    pub backing_off: bool,
    /// Pods of an older template remain.
    pub rolling_out: bool,
    /// What is wrong with the pods.
    pub trouble: &'a PodTrouble,
    /// `lastScaleTime` to write.
    pub last_scale_time: Option<String>,
}

/// One condition, before times are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// Type.
    pub type_: &'static str,
    /// Status.
    pub status: bool,
    /// Reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

fn cond(type_: &'static str, status: bool, reason: &'static str, message: String) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message,
    }
}

/// Ready: every wanted pod is there and ready.
pub fn ready(i: &StatusInput<'_>) -> Cond {
    let c = &i.counts;
    if let Some(msg) = i.invalid {
        return cond("Ready", false, "InvalidSpec", msg.to_string());
    }
    let ok = c.ready >= i.desired && c.replicas == i.desired;
    match (ok, i.desired) {
        (true, 0) => cond("Ready", true, "ScaledToZero", "no pods wanted".into()),
        (true, d) => cond(
            "Ready",
            true,
            "AllReplicasReady",
            format!("{}/{d} pods ready", c.ready),
        ),
        (false, d) => cond(
            "Ready",
            false,
            "ReplicasNotReady",
            format!("{}/{d} pods ready", c.ready.min(d)),
        ),
    }
}

/// QueueReachable: the queue could be read.
pub fn queue_reachable(i: &StatusInput<'_>, stream: &str, group: &str) -> Cond {
    let t = "QueueReachable";
    match i.queue {
        QueueSeen::Invalid(msg) => cond(t, false, "InvalidSpec", msg.to_string()),
        QueueSeen::NotProbed => cond(
            t,
            false,
            "NotProbed",
            "the queue has not been read yet".into(),
        ),
        QueueSeen::Failed(e) => cond(t, false, e.reason(), e.to_string()),
        QueueSeen::Read { stats } if !stats.stream_exists => cond(
            t,
            true,
            "StreamNotFound",
            format!("stream {stream:?} does not exist yet: an empty queue"),
        ),
        QueueSeen::Read { stats } if !stats.group_exists => cond(
            t,
            true,
            "GroupNotFound",
            format!("group {group:?} does not exist yet: every entry is waiting"),
        ),
        QueueSeen::Read { .. } => cond(
            t,
            true,
            "QueueRead",
            format!("stream {stream:?}, group {group:?}"),
        ),
    }
}

/// Degraded: the pool cannot be what it should (the first cause that applies).
pub fn degraded(i: &StatusInput<'_>) -> Cond {
    let t = "Degraded";
    let tr = i.trouble;
    if let Some(msg) = i.invalid {
        return cond(t, true, "InvalidSpec", msg.to_string());
    }
    if let Some(msg) = &tr.create_refused {
        return cond(
            t,
            true,
            "PodCreateFailed",
            format!("cannot create pods: {msg}"),
        );
    }
    if !tr.not_starting.is_empty() {
        let list: Vec<String> = tr
            .not_starting
            .iter()
            .map(|(reason, n)| format!("{n} in {reason}"))
            .collect();
        return cond(
            t,
            true,
            "PodsNotStarting",
            format!("worker containers cannot start: {}", list.join(", ")),
        );
    }
    if tr.stuck_terminating > 0 {
        return cond(
            t,
            true,
            "PodsStuckTerminating",
            format!(
                "{} pod(s) still terminating past their grace period (a finalizer or a lost node); they no longer count against the pool's bound",
                tr.stuck_terminating
            ),
        );
    }
    if let Some(msg) = &tr.failures {
        return cond(t, true, "PodFailures", msg.clone());
    }
    cond(t, false, "AsExpected", "pods run as expected".into())
}

/// Scaling: whether the pool is changing size, and what holds it.
pub fn scaling(i: &StatusInput<'_>) -> Cond {
    let t = "Scaling";
    let c = &i.counts;
    let d = i.desired;
    if i.paused {
        return cond(
            t,
            false,
            "Paused",
            format!("spec.paused: {} pods kept as they are", c.replicas),
        );
    }
    if i.rolling_out && i.invalid.is_none() {
        let surge = (c.counted - c.bound.min(c.counted)).max(0);
        let over = (c.counted - d).max(0);
        return cond(
            t,
            true,
            "RollingOut",
            format!(
                "{} of {d} pods on the current template; {} draining; {over} above the desired count (bound {}{})",
                c.updated,
                c.draining,
                c.bound,
                if surge > 0 { ", over it" } else { "" }
            ),
        );
    }
    if let Some(dec) = i.decision.filter(|_| !i.backing_off) {
        let changing = c.replicas != d || c.draining > 0 || dec.reason.is_limited();
        return cond(
            t,
            changing,
            dec.reason.as_str(),
            format!(
                "{} pods, {} draining; desired {}: {}",
                c.replicas,
                c.draining,
                dec.desired_replicas,
                dec.reason_text()
            ),
        );
    }
    if c.replicas < d && i.backing_off {
        return cond(
            t,
            true,
            "BackOff",
            format!(
                "{} of {d} pods; replacements back off after failures",
                c.replicas
            ),
        );
    }
    if c.replicas < d {
        return cond(t, true, "ScalingUp", format!("{} of {d} pods", c.replicas));
    }
    if c.replicas > d || c.draining > 0 {
        return cond(
            t,
            true,
            "ScalingDown",
            format!(
                "{} of {d} pods; {} draining (they finish their tasks first)",
                c.replicas, c.draining
            ),
        );
    }
    cond(t, false, "AtDesired", format!("{d} pods as desired"))
}

/// The conditions, each with its `lastTransitionTime` kept from `old` while its status
/// has not flipped, else `now`.
pub fn conditions(
    conds: Vec<Cond>,
    old: Option<&WorkPoolStatus>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    conds
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = old
                .and_then(|s| s.conditions.iter().find(|o| o.type_ == c.type_))
                .filter(|o| o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// The queue part of the status.
pub fn queue_status(st: &QueueStats) -> QueueStatus {
    QueueStatus {
        backlog: st.backlog as i64,
        pending: st.pending as i64,
        dead_letters: st.dead_letters as i64,
        oldest_pending_time: st.oldest_pending_id.and_then(|id| rfc3339_ms(id.ms)),
        consumers: st.consumers.len() as i32,
        partitions: crate::crd::PartitionStatus::of(st),
    }
}

/// Milliseconds since the epoch as RFC 3339 (second precision).
pub fn rfc3339_ms(ms: u64) -> Option<String> {
    let secs = i64::try_from(ms / 1000).ok()?;
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.to_string())
}

/// The whole status. `queue` is the queue part to write (the caller may keep the old one
/// to rate-limit queue-only changes).
pub fn build(
    i: &StatusInput<'_>,
    old: Option<&WorkPoolStatus>,
    queue: Option<QueueStatus>,
    stream: &str,
    group: &str,
    now: &str,
) -> WorkPoolStatus {
    let conds = vec![
        ready(i),
        queue_reachable(i, stream, group),
        degraded(i),
        scaling(i),
    ];
    let c = &i.counts;
    WorkPoolStatus {
        observed_generation: i.generation,
        replicas: c.replicas,
        ready_replicas: c.ready,
        busy_replicas: c.busy,
        desired_replicas: i.desired,
        draining_replicas: c.draining,
        updated_replicas: c.updated,
        selector: Some(crate::pods::selector(i.name)),
        queue,
        last_scale_time: i.last_scale_time.clone(),
        conditions: conditions(conds, old, i.generation, now),
    }
}

/// Whether two statuses differ in anything but their conditions' transition times.
pub fn differs(a: Option<&WorkPoolStatus>, b: &WorkPoolStatus) -> bool {
    let Some(a) = a else { return true };
    let strip = |s: &WorkPoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time.clear();
        }
        s
    };
    strip(a) != strip(b)
}

/// Whether two statuses differ only in their queue figures.
pub fn only_queue_differs(a: &WorkPoolStatus, b: &WorkPoolStatus) -> bool {
    let mut a = a.clone();
    a.queue = b.queue.clone();
    !differs(Some(&a), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::ScalingReason;

    fn counts(replicas: i32, ready: i32, desired: i32) -> Counts {
        Counts {
            replicas,
            ready,
            updated: replicas,
            busy: 0,
            draining: 0,
            desired,
            counted: replicas,
            bound: desired,
        }
    }

    fn input<'a>(trouble: &'a PodTrouble, stats: &'a QueueStats) -> StatusInput<'a> {
        StatusInput {
            generation: Some(3),
            name: "p",
            desired: 2,
            counts: counts(2, 2, 2),
            invalid: None,
            paused: false,
            queue: QueueSeen::Read { stats },
            decision: None,
            backing_off: false,
            rolling_out: false,
            trouble,
            last_scale_time: None,
        }
    }

    fn read_stats() -> QueueStats {
        QueueStats {
            stream_exists: true,
            group_exists: true,
            ..Default::default()
        }
    }

    #[test]
    fn ready_reasons() {
        let t = PodTrouble::default();
        let st = read_stats();
        let mut i = input(&t, &st);
        assert_eq!(ready(&i).reason, "AllReplicasReady");
        assert!(ready(&i).status);
        i.counts = counts(2, 1, 2);
        assert_eq!(
            (ready(&i).status, ready(&i).reason),
            (false, "ReplicasNotReady")
        );
        assert_eq!(ready(&i).message, "1/2 pods ready");
        i.desired = 0;
        i.counts = counts(0, 0, 0);
        assert_eq!((ready(&i).status, ready(&i).reason), (true, "ScaledToZero"));
        i.invalid = Some("template: bad");
        assert_eq!((ready(&i).status, ready(&i).reason), (false, "InvalidSpec"));
    }

    #[test]
    fn queue_reachable_reasons() {
        let t = PodTrouble::default();
        let mut st = read_stats();
        let c = |st: &QueueStats, q: Option<QueueSeen<'_>>| {
            let mut i = input(&t, st);
            if let Some(q) = q {
                i.queue = q;
            }
            let c = queue_reachable(&i, "s", "g");
            (c.status, c.reason)
        };
        assert_eq!(c(&st, None), (true, "QueueRead"));
        st.group_exists = false;
        assert_eq!(c(&st, None), (true, "GroupNotFound"));
        st.stream_exists = false;
        assert_eq!(c(&st, None), (true, "StreamNotFound"));
        assert_eq!(c(&st, Some(QueueSeen::NotProbed)), (false, "NotProbed"));
        assert_eq!(
            c(&st, Some(QueueSeen::Invalid("x"))),
            (false, "InvalidSpec")
        );
        for (e, reason) in [
            (ProbeError::Secret("s".into()), "SecretUnavailable"),
            (ProbeError::InvalidUrl, "InvalidURL"),
            (ProbeError::Unreachable("u".into()), "Unreachable"),
            (ProbeError::Auth("a".into()), "AuthenticationFailed"),
            (ProbeError::Refused("r".into()), "CommandRefused"),
            (ProbeError::Protocol("p".into()), "ProtocolError"),
        ] {
            assert_eq!(c(&st, Some(QueueSeen::Failed(&e))), (false, reason));
        }
    }

    #[test]
    fn degraded_reasons_in_their_order() {
        let st = read_stats();
        let mut t = PodTrouble {
            create_refused: Some("forbidden: exceeded quota: q".into()),
            not_starting: BTreeMap::from([("CrashLoopBackOff".to_string(), 2)]),
            stuck_terminating: 1,
            failures: Some("1 failure(s) in a row".into()),
        };
        let d = |t: &PodTrouble, invalid: Option<&str>| {
            let mut i = input(t, &st);
            i.invalid = invalid;
            let c = degraded(&i);
            (c.status, c.reason, c.message)
        };
        assert_eq!(d(&t, Some("bad")).1, "InvalidSpec");
        let (s, r, m) = d(&t, None);
        assert_eq!((s, r), (true, "PodCreateFailed"));
        assert_eq!(m, "cannot create pods: forbidden: exceeded quota: q");
        t.create_refused = None;
        let (s, r, m) = d(&t, None);
        assert_eq!((s, r), (true, "PodsNotStarting"));
        assert_eq!(m, "worker containers cannot start: 2 in CrashLoopBackOff");
        t.not_starting.clear();
        assert_eq!(d(&t, None).1, "PodsStuckTerminating");
        t.stuck_terminating = 0;
        assert_eq!(d(&t, None).1, "PodFailures");
        t.failures = None;
        assert!(!d(&t, None).0);
        assert_eq!(d(&t, None).1, "AsExpected");
    }

    #[test]
    fn scaling_reasons() {
        let t = PodTrouble::default();
        let st = read_stats();
        let mut i = input(&t, &st);
        let s = |i: &StatusInput<'_>| {
            let c = scaling(i);
            (c.status, c.reason)
        };
        assert_eq!(s(&i), (false, "AtDesired"));
        i.counts = counts(1, 1, 2);
        assert_eq!(s(&i), (true, "ScalingUp"));
        i.backing_off = true;
        assert_eq!(s(&i), (true, "BackOff"));
        i.backing_off = false;
        i.counts = counts(3, 3, 2);
        assert_eq!(s(&i), (true, "ScalingDown"));
        i.counts = counts(2, 2, 2);
        i.counts.draining = 1;
        assert_eq!(s(&i), (true, "ScalingDown"), "pods still draining");
        i.rolling_out = true;
        assert_eq!(s(&i), (true, "RollingOut"));
        i.paused = true;
        assert_eq!(s(&i), (false, "Paused"));
        i.paused = false;
        i.rolling_out = false;
        i.counts = counts(2, 2, 2);
        i.decision = Some(Decision {
            desired_replicas: 2,
            reason: ScalingReason::DesiredWithinRange,
            backlog_recommendation: Some(2),
            previous_replicas: 2,
        });
        assert_eq!(s(&i), (false, "DesiredWithinRange"));
        i.decision = Some(Decision {
            desired_replicas: 5,
            reason: ScalingReason::MaxReplicas,
            backlog_recommendation: Some(9),
            previous_replicas: 2,
        });
        assert_eq!(s(&i), (true, "MaxReplicas"));
    }

    #[test]
    fn messages_do_not_follow_the_backlog() {
        // The Scaling message must not change with the backlog's recommendation, or every
        // poll of a busy pool would rewrite the status.
        let t = PodTrouble::default();
        let st = read_stats();
        let mut i = input(&t, &st);
        let dec = |rec| Decision {
            desired_replicas: 2,
            reason: ScalingReason::WithinTolerance,
            backlog_recommendation: Some(rec),
            previous_replicas: 2,
        };
        i.decision = Some(dec(2));
        let a = scaling(&i);
        i.decision = Some(dec(3));
        assert_eq!(a, scaling(&i));
    }

    #[test]
    fn transition_times_move_only_when_the_status_flips() {
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
        let now = "2030-01-01T00:00:00Z";
        let same = conditions(
            vec![cond("Ready", true, "AllReplicasReady", "2/2".into())],
            Some(&old),
            Some(2),
            now,
        );
        assert_eq!(same[0].last_transition_time, "2020-01-01T00:00:00Z");
        let flipped = conditions(
            vec![cond("Ready", false, "ReplicasNotReady", "0/2".into())],
            Some(&old),
            Some(2),
            now,
        );
        assert_eq!(flipped[0].last_transition_time, now);
    }

    #[test]
    fn statuses_are_compared_without_times_and_queue_only_changes_are_told_apart() {
        let t = PodTrouble::default();
        let st = read_stats();
        let i = input(&t, &st);
        let a = build(
            &i,
            None,
            Some(queue_status(&st)),
            "s",
            "g",
            "2030-01-01T00:00:00Z",
        );
        let b = build(
            &i,
            None,
            Some(queue_status(&st)),
            "s",
            "g",
            "2031-01-01T00:00:00Z",
        );
        assert!(!differs(Some(&a), &b), "only the times differ");
        assert!(differs(None, &b));
        let mut busier = st.clone();
        busier.backlog = 7;
        let c = build(
            &i,
            Some(&a),
            Some(queue_status(&busier)),
            "s",
            "g",
            "2031-01-01T00:00:00Z",
        );
        assert!(differs(Some(&a), &c));
        assert!(only_queue_differs(&a, &c));
        let mut j = input(&t, &st);
        j.desired = 3;
        let d = build(
            &j,
            Some(&a),
            Some(queue_status(&busier)),
            "s",
            "g",
            "2031-01-01T00:00:00Z",
        );
        assert!(!only_queue_differs(&a, &d));
    }

    #[test]
    fn the_oldest_pending_time_is_the_enqueue_time_of_the_oldest_task() {
        let st = QueueStats {
            oldest_pending_id: Some(workpool_worker::queue::EntryId {
                ms: 1_704_067_201_999,
                seq: 3,
            }),
            ..Default::default()
        };
        assert_eq!(
            queue_status(&st).oldest_pending_time.as_deref(),
            Some("2024-01-01T00:00:01Z")
        );
    }
}
