//! Decide, without a cluster: the pool's world in, the reconcile's intentions out.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use workpool_worker::queue::{DrainState, QueueStats};

use super::*;
use crate::fixtures::{self, running_pod, stats};
use crate::hub::Snapshot;
use crate::observe::{Observed, observe_pod};

const NOW: u64 = 1_800_000_000_000;

fn world(
    wp: &Arc<WorkPool>,
    pods: &[k8s_openapi::api::core::v1::Pod],
    st: Option<QueueStats>,
) -> Observed {
    let hash = crate::pods::render_template(wp)
        .map(|(m, s)| crate::pods::template_hash(&m, &s))
        .expect("template");
    Observed {
        key: key_of(wp),
        pool: wp.clone(),
        pods: pods
            .iter()
            .filter_map(|p| observe_pod(p, &hash, NOW))
            .collect(),
        queue: crate::observe::queue_of(wp),
        template: Ok(hash),
        target: Some(Ok(workpool_worker::target::Target::new(
            "redis://r:6379",
            &Default::default(),
        )
        .expect("target"))),
        snapshot: st.map(|st| Snapshot {
            result: Ok(st),
            taken_ms: NOW - 1,
            seq: 1,
        }),
        now_ms: NOW,
    }
}

fn cfg() -> ControllerConfig {
    ControllerConfig::default()
}

#[test]
fn a_template_change_on_an_autoscaled_pool_at_its_maximum_rolls_out_within_the_surge() {
    let old = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"maxReplicas": 4, "minReplicas": 4}}),
    );
    let pods: Vec<_> = (0..4)
        .map(|i| running_pod(&old, &format!("p-bbbb{}", "bcdf".as_bytes()[i] as char)))
        .collect();
    let new = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"maxReplicas": 4, "minReplicas": 4},
               "template": {"spec": {"containers": [{"name": "worker", "image": "w2"}]}}}),
    );
    let busy: Vec<(String, u64)> = pods
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), 1))
        .collect();
    let held: Vec<(&str, u64)> = busy.iter().map(|(n, h)| (n.as_str(), *h)).collect();
    let o = world(&new, &pods, Some(stats(&held, &[])));
    let mut m = PoolMemory::default();
    let d = decide(&o, &mut m, &cfg());
    assert_eq!(d.creates, 1, "maxReplicas 4 + surge 25% of 4 = 1");
    assert!(d.deletes.is_empty() && d.commands.iter().all(|c| !matches!(c, Command::Drain(_))));
    assert!(d.status.rolling_out);
    let status = d.status.build(&o, None, None, "t");
    let scaling = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scaling")
        .expect("scaling");
    assert_eq!(scaling.reason, "RollingOut");
    assert_eq!(status.updated_replicas, 0);
}

#[test]
fn a_pod_stuck_terminating_stops_counting_against_the_maximum_and_degrades_the_pool() {
    let wp = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"maxReplicas": 2, "minReplicas": 2}}),
    );
    let mut stuck = running_pod(&wp, "p-bbbbb");
    stuck.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_millisecond((NOW - 31_000) as i64).expect("time"),
    ));
    let pods = vec![stuck, running_pod(&wp, "p-ccccc")];
    let o = world(&wp, &pods, Some(stats(&[], &[])));
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(d.creates, 1);
    assert_eq!(d.status.trouble.stuck_terminating, 1);
    let status = d.status.build(&o, None, None, "t");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "PodsStuckTerminating")
    );
    // Not yet past its deadline: it still counts, nothing is created.
    let mut young = pods.clone();
    young[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_millisecond((NOW - 1_000) as i64).expect("time"),
        ));
    let o = world(&wp, &young, Some(stats(&[], &[])));
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(d.creates, 0);
    assert!(
        d.requeue <= Duration::from_secs(30),
        "looked at again when it becomes stuck: {:?}",
        d.requeue
    );
}

#[test]
fn a_scale_in_while_the_queue_cannot_be_read_drains_and_deletes_nothing() {
    let wp = fixtures::pool("ns", "p", json!({"replicas": 1}));
    let pods = vec![
        running_pod(&wp, "p-bbbbb"),
        running_pod(&wp, "p-ccccc"),
        running_pod(&wp, "p-ddddd"),
    ];
    let mut o = world(&wp, &pods, None);
    o.snapshot = Some(Snapshot {
        result: Err(crate::probe::ProbeError::Unreachable("timed out".into())),
        taken_ms: NOW,
        seq: 3,
    });
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert!(d.deletes.is_empty());
    assert!(d.commands.is_empty());
    assert!(
        d.signals.is_empty(),
        "unknown is not idle: no annotation written"
    );
    assert_eq!(d.status.counts.replicas, 3);
}

#[test]
fn crash_looping_workers_degrade_the_pool() {
    let wp = fixtures::pool("ns", "p", json!({"replicas": 2}));
    let mut pods = vec![running_pod(&wp, "p-bbbbb"), running_pod(&wp, "p-ccccc")];
    for p in &mut pods {
        p.status = Some(serde_json::from_value(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 7, "image": "w", "imageID": "",
                                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
        })).expect("status"));
    }
    let o = world(&wp, &pods, Some(stats(&[], &[])));
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(
        d.status.trouble.not_starting,
        BTreeMap::from([("CrashLoopBackOff".to_string(), 2)])
    );
    let status = d.status.build(&o, None, None, "t");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("degraded");
    assert_eq!(degraded.reason, "PodsNotStarting");
    assert_eq!(
        degraded.message,
        "worker containers cannot start: 2 in CrashLoopBackOff"
    );
    assert!(d.notes.iter().any(|n| n.reason == "Degraded" && n.warning));
    assert_eq!(
        d.creates, 0,
        "kubelet restarts them; replacing them would not help"
    );
}

#[test]
fn gone_pods_consumers_are_removed_for_long_names_and_never_another_pools() {
    let long = "l".repeat(59);
    let mine = crate::pods::pod_name(&long, 1);
    let live = crate::pods::pod_name(&long, 2);
    // Another pool on the same group (pods of two pools whose names agree in their first
    // 57 characters cannot be told apart: the documented limit).
    let theirs = crate::pods::pod_name(&format!("m{long}"), 3);
    let st = stats(
        &[
            (mine.as_str(), 0),
            (live.as_str(), 0),
            (theirs.as_str(), 0),
            ("hand-made", 0),
        ],
        &[(mine.as_str(), DrainState::Stopped)],
    );
    let alive: std::collections::BTreeSet<&str> = [live.as_str()].into_iter().collect();
    assert_eq!(stale_consumers(&long, &st, &alive), vec![mine.clone()]);
    // One that still holds a task stays, and so does its drain field.
    let st = stats(
        &[(mine.as_str(), 2)],
        &[(mine.as_str(), DrainState::Stopped)],
    );
    assert!(stale_consumers(&long, &st, &alive).is_empty());
}

#[test]
fn busy_and_idle_signals_are_written_only_when_they_change() {
    let wp = fixtures::pool("ns", "p", json!({"replicas": 2}));
    let mut pods = vec![running_pod(&wp, "p-bbbbb"), running_pod(&wp, "p-ccccc")];
    let o = world(&wp, &pods, None);
    let held = BTreeMap::from([("p-bbbbb".to_string(), 5u64)]);
    let patches = signal_patches(&o.pods, &held);
    // p-ccccc is idle as it was created (build_pod sets the idle signals): no write.
    assert_eq!(
        patches,
        vec![(
            "p-bbbbb".to_string(),
            SignalPatch {
                safe_to_evict: "false".into(),
                do_not_disrupt: Some("true".into()),
                deletion_cost: Some("3".into()),
            }
        )]
    );
    // A pod whose signals were changed by someone else is set back.
    let mut edited = running_pod(&wp, "p-ddddd");
    edited
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(crate::observe::signal::SAFE_TO_EVICT.into(), "false".into());
    let o2 = world(&wp, &[edited], None);
    assert_eq!(
        signal_patches(&o2.pods, &BTreeMap::new()),
        vec![(
            "p-ddddd".to_string(),
            SignalPatch {
                safe_to_evict: "true".into(),
                do_not_disrupt: None,
                deletion_cost: None,
            }
        )]
    );
    // Once applied, nothing more to write; 4..7 tasks stay in the same cost bucket.
    for (p, (_, patch)) in pods.iter_mut().zip(&patches) {
        let a = p.metadata.annotations.get_or_insert_default();
        a.insert(
            crate::observe::signal::SAFE_TO_EVICT.into(),
            patch.safe_to_evict.clone(),
        );
        if let Some(v) = &patch.do_not_disrupt {
            a.insert(crate::observe::signal::DO_NOT_DISRUPT.into(), v.clone());
        }
        if let Some(v) = &patch.deletion_cost {
            a.insert(crate::observe::signal::DELETION_COST.into(), v.clone());
        }
    }
    let o = world(&wp, &pods, None);
    assert!(signal_patches(&o.pods, &BTreeMap::from([("p-bbbbb".to_string(), 7u64)])).is_empty());
    // The busy pod goes idle: it becomes safe to evict, its cost and do-not-disrupt go.
    let flipped = signal_patches(&o.pods, &BTreeMap::new());
    assert_eq!(flipped.len(), 1);
    assert_eq!(flipped[0].1.safe_to_evict, "true");
}

#[test]
fn a_refusal_never_names_the_pod_it_refused() {
    let msg = "pods \"thumbs-x7k2p\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1";
    assert_eq!(
        stable_refusal(msg, "thumbs-x7k2p", "thumbs"),
        "pods \"thumbs-*\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
    );
}

#[test]
fn throttled_and_failed_creates_are_not_refusals() {
    // What a retry will not change: quota and RBAC (403), an invalid pod (422), a
    // webhook's denial (400), a namespace being deleted (403/404), names taken (409).
    for code in [400, 403, 404, 409, 422] {
        assert!(is_refusal(code), "{code} is a refusal");
    }
    // API Priority and Fairness throttling, API server errors and timeouts pass.
    for code in [429, 500, 502, 503, 504] {
        assert!(!is_refusal(code), "{code} passes");
    }
}

#[test]
fn a_pool_reading_its_redis_from_secrets_rests_without_a_timer_of_its_own() {
    let wp = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 5},
               "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"},
                                   "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"},
                                           "clientCertSecretRef": {"name": "redis"}}}}}),
    );
    assert_eq!(
        wp.secret_names().collect::<Vec<_>>(),
        ["redis", "ca", "redis"]
    );
    assert!(wp.references_secret("ca") && !wp.references_secret("other"));
    let o = world(&wp, &[], Some(stats(&[], &[])));
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(
        d.requeue, RESYNC,
        "a Secret change triggers the pool (watch or one read per Secret), no timer"
    );
}

#[test]
fn refused_creates_back_off_whatever_triggers_the_reconcile() {
    let wp = fixtures::pool("ns", "p", json!({"replicas": 3}));
    let pods = vec![running_pod(&wp, "p-bbbbb")];
    let o = world(&wp, &pods, Some(stats(&[], &[])));
    let mut m = PoolMemory::default();
    assert_eq!(decide(&o, &mut m, &cfg()).creates, 2);
    // The API refused: 1 s, then 2, 4, ... up to 5 min, counted from each refusal.
    let mut r = None;
    for (n, delay) in [
        (1, 1_000),
        (2, 2_000),
        (3, 4_000),
        (10, 300_000),
        (11, 300_000),
    ] {
        while r.as_ref().map_or(0, |r: &CreateRefused| r.count) < n {
            r = Some(CreateRefused::after(
                r.as_ref(),
                "exceeded quota".into(),
                NOW,
            ));
        }
        assert_eq!(r.as_ref().map(|r| r.retry_at_ms - NOW), Some(delay));
    }
    m.create_refused = Some(CreateRefused::after(
        None,
        "exceeded quota: q".into(),
        NOW - 200,
    ));
    // A pod event or a queue read within the back-off: no create, the refusal still shown.
    let d = decide(&o, &mut m, &cfg());
    assert_eq!(d.creates, 0);
    assert_eq!(d.held_refusal.as_deref(), Some("exceeded quota: q"));
    assert!(
        d.requeue <= std::time::Duration::from_millis(800),
        "{:?}",
        d.requeue
    );
    // Past it: the creates are tried again.
    let mut later = world(&wp, &pods, Some(stats(&[], &[])));
    later.now_ms = NOW + 1_000;
    let d = decide(&later, &mut m, &cfg());
    assert_eq!((d.creates, d.held_refusal), (2, None));
    // Nothing to create: no refusal shown, whatever the memory says.
    let full = vec![
        running_pod(&wp, "p-bbbbb"),
        running_pod(&wp, "p-ccccc"),
        running_pod(&wp, "p-ddddd"),
    ];
    let d = decide(&world(&wp, &full, Some(stats(&[], &[]))), &mut m, &cfg());
    assert_eq!((d.creates, d.held_refusal), (0, None));
}

#[test]
fn a_pool_at_zero_is_watched_for_its_first_task_and_rests_without_polling() {
    let wp = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 5}}),
    );
    let mut st = stats(&[], &[]);
    st.last_delivered_id = Some(workpool_worker::queue::EntryId { ms: 5, seq: 1 });
    let o = world(&wp, &[], Some(st));
    let mut m = PoolMemory::default();
    let d = decide(&o, &mut m, &cfg());
    assert_eq!(d.status.desired, 0);
    match &d.wake {
        WakeIntent::Watch(t) => {
            let after: Vec<_> = t.streams.iter().map(|s| s.1).collect();
            assert_eq!(after, [workpool_worker::queue::EntryId { ms: 5, seq: 1 }])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.requeue, RESYNC, "nothing changes on its own");
    // Unreadable at zero: the registration stays (its watcher reconnects).
    let mut o2 = world(&wp, &[], None);
    o2.snapshot = Some(Snapshot {
        result: Err(crate::probe::ProbeError::Unreachable("x".into())),
        taken_ms: NOW,
        seq: 2,
    });
    assert_eq!(decide(&o2, &mut m, &cfg()).wake, WakeIntent::Keep);
}

#[test]
fn an_autoscaled_pool_is_not_sized_before_its_queue_was_read() {
    let wp = fixtures::pool(
        "ns",
        "p",
        json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 5, "fallbackReplicas": 4}}),
    );
    let pods = vec![running_pod(&wp, "p-bbbbb"), running_pod(&wp, "p-ccccc")];
    let o = world(&wp, &pods, None);
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(
        d.status.desired, 2,
        "kept, not the fallback, until a read says otherwise"
    );
    assert_eq!(d.creates, 0);
    assert!(d.status.decision.is_none());
}

#[test]
fn an_invalid_template_keeps_the_running_pods_and_says_why() {
    let wp = fixtures::pool("ns", "p", json!({"replicas": 3}));
    let pods = vec![running_pod(&wp, "p-bbbbb")];
    let mut o = world(&wp, &pods, Some(stats(&[], &[])));
    o.template = Err("spec.template is not a valid pod template: x".into());
    let d = decide(&o, &mut PoolMemory::default(), &cfg());
    assert_eq!(d.creates, 0);
    assert!(d.deletes.is_empty());
    let status = d.status.build(&o, None, None, "t");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("ready");
    assert_eq!(ready.reason, "InvalidSpec");
}
