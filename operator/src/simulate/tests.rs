use super::contenders::ContenderKind;
use super::trace::{ServiceTime, Task, Trace};
use super::*;

fn fixed(seconds: f64) -> ServiceTime {
    ServiceTime::Uniform {
        low_seconds: seconds,
        high_seconds: seconds,
    }
}

fn trace(name: &str, duration_minutes: u64, tasks: Vec<Task>) -> Trace {
    Trace {
        name: name.into(),
        description: "test".into(),
        duration_ms: duration_minutes * MINUTE_MS,
        tasks,
        outages: Vec::new(),
    }
}

fn small_burst() -> Scenario {
    let mut rng = SimRng::new(9);
    Scenario {
        trace: trace("burst", 5, burst(&mut rng, 10_000, 1_000, 200, fixed(2.0))),
        pool: PoolSettings {
            max_replicas: 10,
            ..PoolSettings::default()
        },
    }
}

#[test]
fn runs_are_deterministic_per_seed() {
    let scenario = small_burst();
    for kind in ContenderKind::ALL {
        assert_eq!(run(&scenario, kind, 5), run(&scenario, kind, 5), "{kind:?}");
    }
    assert_ne!(
        run(&scenario, ContenderKind::Workpool, 5).worker_seconds,
        run(&scenario, ContenderKind::Workpool, 6).worker_seconds
    );
}

#[test]
fn workpool_wakes_from_zero_serves_everything_and_returns_to_zero() {
    let scenario = small_burst();
    let outcome = run(&scenario, ContenderKind::Workpool, 1);
    assert_eq!(outcome.completed, 200);
    assert_eq!(outcome.tasks_cut, 0);
    assert_eq!(outcome.busy_victims, 0);
    // The first pod exists within a second of the first task (10 s).
    let first_pod = outcome
        .timeline
        .iter()
        .find(|sample| sample.pods > 0)
        .map(|sample| sample.at_seconds);
    assert!(
        first_pod.is_some_and(|at| (10.0..=11.0).contains(&at)),
        "{first_pod:?}"
    );
    assert!(outcome.peak_pods <= 10);
    assert_eq!(outcome.timeline.last().map(|sample| sample.pods), Some(0));
}

#[test]
fn keda_waits_for_its_polling_before_the_first_pod() {
    let scenario = small_burst();
    let outcome = run(&scenario, ContenderKind::KedaLag, 1);
    assert_eq!(outcome.completed, 200);
    let first_pod = outcome
        .timeline
        .iter()
        .find(|sample| sample.pods > 0)
        .map(|sample| sample.at_seconds);
    // Polling every 30 s: the first pod comes at the next poll after 10 s, not before.
    assert!(
        first_pod.is_some_and(|at| (10.0..=40.0).contains(&at)),
        "{first_pod:?}"
    );
}

/// Long tasks, and a load that falls: the ReplicaSet's choice deletes busy pods and cuts
/// their tasks; workpool's idle-first choice never deletes a busy pod while it runs one
/// task per pod at a target of one.
#[test]
fn idle_first_victims_spare_busy_workers_where_replicaset_choice_does_not() {
    let mut rng = SimRng::new(4);
    // 40 tasks of 10 min each; the pool that keeps up reads zero lag while they run.
    let mut tasks = burst(&mut rng, 0, 60_000, 40, fixed(600.0));
    tasks.extend(burst(&mut rng, 60_000, 120_000, 4, fixed(20.0)));
    let scenario = Scenario {
        trace: trace("long", 12, trace::sorted(tasks)),
        pool: PoolSettings {
            concurrency: 1,
            target_backlog_per_replica: 1,
            max_replicas: 20,
            ..PoolSettings::default()
        },
    };
    let ours = run(&scenario, ContenderKind::Workpool, 3);
    assert_eq!(ours.busy_victims, 0);
    assert_eq!(ours.tasks_cut, 0);
    assert_eq!(ours.completed, 44);
    let keda = run(&scenario, ContenderKind::KedaLag, 3);
    assert!(keda.busy_victims > 0, "{:?}", keda.busy_victims);
    assert!(keda.tasks_cut > 0, "{:?}", keda.tasks_cut);
}

#[test]
fn victim_choice_workpool_takes_idle_pods_replicaset_takes_newest() {
    use super::contenders::{PodSnapshot, contender};
    let pool = PoolSettings::default();
    // Two old idle pods and two new busy ones, all ready.
    let pods = [
        PodSnapshot {
            id: 0,
            created_ms: 0,
            ready_ms: 3_000,
            in_flight: 0,
        },
        PodSnapshot {
            id: 1,
            created_ms: 0,
            ready_ms: 4_000,
            in_flight: 0,
        },
        PodSnapshot {
            id: 2,
            created_ms: 50_000,
            ready_ms: 53_000,
            in_flight: 3,
        },
        PodSnapshot {
            id: 3,
            created_ms: 60_000,
            ready_ms: 62_000,
            in_flight: 1,
        },
    ];
    let now = 100_000;
    let mut ours = contender(ContenderKind::Workpool, &pool, 0).choose_victims(&pods, now, 3);
    ours.sort_unstable();
    assert_eq!(ours, vec![0, 1, 3], "idle first, then the least busy");
    let replica_set = contender(ContenderKind::KedaLag, &pool, 0).choose_victims(&pods, now, 2);
    assert_eq!(replica_set, vec![3, 2], "ready for the shortest time first");
}

#[test]
fn terminating_pods_count_against_max_for_workpool() {
    let mut rng = SimRng::new(2);
    let mut tasks = Vec::new();
    for wave in 0..6 {
        tasks.extend(burst(&mut rng, wave * 50_000, 2_000, 60, fixed(40.0)));
    }
    let scenario = Scenario {
        trace: trace("waves", 6, trace::sorted(tasks)),
        pool: PoolSettings {
            max_replicas: 8,
            ..PoolSettings::default()
        },
    };
    let ours = run(&scenario, ContenderKind::Workpool, 1);
    assert!(ours.timeline.iter().all(|sample| sample.pods <= 8));
    assert!(ours.peak_pods <= 8);
}

#[test]
fn pending_only_scaler_never_grows_past_a_full_pool() {
    let mut rng = SimRng::new(2);
    let scenario = Scenario {
        trace: trace("flood", 3, burst(&mut rng, 0, 1_000, 500, fixed(3.0))),
        pool: PoolSettings::default(),
    };
    let pending_only = run(&scenario, ContenderKind::KedaPending, 1);
    // Pending entries never exceed slots held, i.e. the target per pod: no scale-up.
    assert_eq!(pending_only.peak_pods, 1);
    let ours = run(&scenario, ContenderKind::Workpool, 1);
    assert!(ours.peak_pods > 10);
    assert!(ours.p95_wait_seconds < pending_only.p95_wait_seconds);
}

#[test]
fn outage_brings_fallback_replicas() {
    let mut rng = SimRng::new(2);
    let tasks = poisson_arrivals(&mut rng, 10 * MINUTE_MS, 2.0, |_| 2.0, fixed(1.0));
    let mut trace = trace("outage", 10, tasks);
    trace.outages = vec![(2 * MINUTE_MS, 6 * MINUTE_MS)];
    let scenario = Scenario {
        trace,
        pool: PoolSettings {
            fallback_replicas: Some(7),
            ..PoolSettings::default()
        },
    };
    let ours = run(&scenario, ContenderKind::Workpool, 1);
    let during = ours
        .timeline
        .iter()
        .find(|sample| sample.at_seconds == 150.0)
        .map(|sample| sample.live_pods);
    assert_eq!(during, Some(7));
}

#[test]
fn percentile_uses_nearest_rank() {
    let values: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(cluster::percentile(&values, 0.95), 19.0);
    assert_eq!(cluster::percentile(&values, 0.5), 10.0);
    assert_eq!(cluster::percentile(&[], 0.95), 0.0);
}

#[test]
fn table_and_plot_name_every_contender() {
    let comparison = compare(&small_burst(), 1);
    let table = markdown_table(std::slice::from_ref(&comparison));
    assert_eq!(table.lines().count(), 2 + ContenderKind::ALL.len());
    let svg = plot::svg(&comparison);
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    for kind in ContenderKind::ALL {
        assert!(table.contains(kind.label()));
        assert!(svg.contains(kind.label()));
        assert_eq!(
            svg.matches(kind.colour()).count(),
            3,
            "two lines and a legend"
        );
    }
}

#[test]
fn standard_scenarios_cover_the_issue_traces() {
    let names: Vec<String> = standard_scenarios(1)
        .into_iter()
        .map(|scenario| scenario.trace.name)
        .collect();
    assert_eq!(
        names,
        [
            "steady",
            "burst",
            "diurnal",
            "spiky",
            "long-tasks",
            "metric-outage"
        ]
    );
}

#[test]
fn summary_spans_seeds() {
    let scenario = small_burst();
    let runs: Vec<Vec<Comparison>> = (1..=3).map(|seed| vec![compare(&scenario, seed)]).collect();
    let summary = summary_table(&runs);
    assert!(summary.contains("over 3 seeds"));
    assert_eq!(summary.lines().count(), 2 + ContenderKind::ALL.len());
    assert!(summary_table(&[]).lines().count() == 2);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// One task per worker and a target of one: the policy never wants fewer pods
        /// than are busy, so idle-first scale-in never picks a busy pod, and no pool ever
        /// has more than maxReplicas pods, terminating ones included.
        #[test]
        fn workpool_never_deletes_a_busy_single_slot_worker(
            tasks in prop::collection::vec((0u64..180_000, 1_000u64..120_000), 1..60),
            max_replicas in 1u32..12,
            seed in any::<u64>(),
        ) {
            let tasks = trace::sorted(
                tasks
                    .into_iter()
                    .map(|(arrival_ms, service_ms)| Task { arrival_ms, service_ms })
                    .collect(),
            );
            let scenario = Scenario {
                trace: trace("random", 3, tasks),
                pool: PoolSettings {
                    concurrency: 1,
                    target_backlog_per_replica: 1,
                    max_replicas,
                    ..PoolSettings::default()
                },
            };
            let outcome = run(&scenario, ContenderKind::Workpool, seed);
            prop_assert_eq!(outcome.busy_victims, 0);
            prop_assert_eq!(outcome.tasks_cut, 0);
            prop_assert!(outcome.peak_pods <= max_replicas);
        }
    }
}
