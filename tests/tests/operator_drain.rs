//! Drain instead of kill (issue #14, `OPERATOR-CONTRACT.md` "Drain scenarios"), on the
//! real test cluster: real worker containers on a real node, a real redis-server, the
//! real `workpool-operator`. Pools run with `maxDeliveries: 1` and a 3 s worker shutdown
//! grace, so any task cut short and run again lands in the dead-letter stream: "no dead
//! letters" means nothing was interrupted. Who holds which task is read from Redis
//! (`XPENDING`), the drain state from the pool's drain hash (`<stream>:draining`), pods
//! from a watch.
//!
//! Where a real node cannot run (not root, no containerd, Kubernetes not built), each
//! test fails saying what is missing: there is no other cluster to fall back to.
#![forbid(unsafe_code)]

mod audit_support;
mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use audit_support::*;
use serde_json::json;

/// Samples, until `until` returns true, the drain hash and then (so a `stopped` seen
/// is older than the holdings read after it) who holds what. Asserts on every sample
/// that a pod already seen `stopped` holds no task it did not hold when first seen so,
/// and records the last time each pod was seen holding a task.
struct DrainSampler {
    stopped_with: BTreeMap<String, BTreeSet<String>>,
    last_held: BTreeMap<String, Instant>,
    ever_draining: BTreeSet<String>,
    holders_seen: BTreeMap<String, BTreeSet<String>>,
}

impl DrainSampler {
    fn new() -> Mutex<Self> {
        Mutex::new(DrainSampler {
            stopped_with: BTreeMap::new(),
            last_held: BTreeMap::new(),
            ever_draining: BTreeSet::new(),
            holders_seen: BTreeMap::new(),
        })
    }

    /// Samples once (the sampler is shared with the waits' closures).
    fn take(sampler: &Mutex<DrainSampler>, env: &RealEnv, pool: &str) {
        sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(env, pool);
    }

    fn done(sampler: Mutex<DrainSampler>) -> DrainSampler {
        sampler.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn sample(&mut self, env: &RealEnv, pool: &str) {
        let draining = env.draining(pool);
        let holders = env.holders(pool, pool);
        let now = Instant::now();
        let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, pod) in &holders {
            held.entry(pod.clone()).or_default().insert(id.clone());
            self.last_held.insert(pod.clone(), now);
            self.holders_seen
                .entry(id.clone())
                .or_default()
                .insert(pod.clone());
        }
        for (pod, state) in &draining {
            self.ever_draining.insert(pod.clone());
            let now_held = held.get(pod).cloned().unwrap_or_default();
            if state == "stopped" {
                let at_stop = self
                    .stopped_with
                    .entry(pod.clone())
                    .or_insert_with(|| now_held.clone());
                let taken: Vec<&String> = now_held.difference(at_stop).collect();
                assert!(
                    taken.is_empty(),
                    "{pod} took tasks {taken:?} after it said it stopped reading (it held {at_stop:?})"
                );
            }
        }
    }
}

/// Scale-in with every pod busy on long tasks: the busy pods are drained, not killed;
/// the pool shrinks only as pods finish; `drainingReplicas` shows them; new tasks go to
/// the pod that stays; no dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_with_every_pod_busy_drains_instead_of_killing() {
    let env = RealEnv::start("op-drain-shrink", &[]).await;
    let pool = "shrink";
    env.apply(&env.pool(pool, 3, 2, json!({}))).await;
    env.wait_for("3 ready pods", WAIT, || async {
        (env.ready_pods(pool).await.len() == 3).then_some(())
    })
    .await;
    // Both slots of every worker taken: a draining worker gets a free slot only when one
    // of its tasks ends, and must not fill it.
    let first = env
        .fill_every_slot(pool, 3, &[20_000, 23_000, 26_000, 29_000, 32_000, 35_000])
        .await;
    let recorder = PodRecorder::start(&env, &format!("workpool.dev/pool={pool}"));
    let sampler = DrainSampler::new();
    env.scale(pool, 1).await;

    // Two pods drain; the status says so; none is deleted while it holds its task.
    let v = env
        .wait_for(
            "drainingReplicas 2, replicas 1",
            Duration::from_secs(60),
            || async {
                DrainSampler::take(&sampler, &env, pool);
                let v = env.pool_json(pool).await?;
                (status_int(&v, "drainingReplicas") == Some(2)
                    && status_int(&v, "replicas") == Some(1))
                .then_some(v)
            },
        )
        .await;
    assert_eq!(
        status_int(&v, "desiredReplicas"),
        Some(1),
        "{}",
        v["status"]
    );
    env.wait_for(
        "both draining pods stopped reading",
        Duration::from_secs(30),
        || async {
            DrainSampler::take(&sampler, &env, pool);
            let s = sampler.lock().unwrap_or_else(|p| p.into_inner());
            (s.stopped_with.len() == 2).then_some(())
        },
    )
    .await;
    let draining: BTreeSet<String> = sampler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .stopped_with
        .keys()
        .cloned()
        .collect();
    let keeper: BTreeSet<String> = first
        .keys()
        .filter(|p| !draining.contains(*p))
        .cloned()
        .collect();
    assert_eq!(
        keeper.len(),
        1,
        "one pod stays: {keeper:?}, draining {draining:?}"
    );

    // New work while they drain goes to the pod that stays.
    let fresh = env.submit(pool, "fresh", 4, 1_000);
    let deadline = Instant::now() + WAIT;
    while env.redis_count(&["XLEN", pool]) > 0 || env.all_pods(pool).await.len() > 1 {
        DrainSampler::take(&sampler, &env, pool);
        assert!(
            Instant::now() < deadline,
            "the pool did not shrink to 1 pod with its tasks done\n{}",
            env.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sampler = DrainSampler::done(sampler);
    for id in &fresh {
        let by = sampler.holders_seen.get(id).cloned().unwrap_or_default();
        assert!(
            by.is_disjoint(&draining),
            "new task {id} was held by a draining pod: {by:?}"
        );
    }
    assert_eq!(env.dead_letters(pool), 0, "no task interrupted");
    // The pool shrank only as pods finished: each draining pod was deleted after it was
    // last seen holding a task.
    let h = recorder.history();
    for pod in &draining {
        let deleted = h
            .deleting
            .get(pod)
            .copied()
            .expect("the draining pod was deleted");
        let last = sampler.last_held.get(pod).copied().expect("it held a task");
        assert!(
            deleted > last,
            "{pod} was deleted while it still held a task"
        );
    }
    assert_eq!(
        h.seen.len(),
        3,
        "no pod created during a scale-in: {:?}",
        h.seen.keys()
    );
    let v = env
        .wait_for(
            "drainingReplicas back to 0",
            Duration::from_secs(30),
            || async {
                let v = env.pool_json(pool).await?;
                (status_int(&v, "drainingReplicas").unwrap_or(0) == 0).then_some(v)
            },
        )
        .await;
    assert_eq!(status_int(&v, "replicas"), Some(1), "{}", v["status"]);
    assert!(
        env.draining(pool).is_empty(),
        "the drain hash is cleaned up"
    );
}

/// Template change while every pod runs a long task: new pods (within desired + maxSurge)
/// serve new tasks; the old pods stop reading, finish their tasks and go; nothing is
/// interrupted; every pod ends on the new template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_change_with_every_pod_busy_drains_the_old_pods() {
    let env = RealEnv::start("op-drain-template", &[]).await;
    let pool = "retemplate";
    env.apply(&env.pool(pool, 2, 2, json!({}))).await;
    let old_pods = env
        .wait_for("2 ready pods", WAIT, || async {
            let pods = env.ready_pods(pool).await;
            (pods.len() == 2).then_some(pods)
        })
        .await;
    let old_hash = template_hash(&old_pods[0]).expect("template hash");
    let old_names = names(&old_pods);
    env.fill_every_slot(pool, 2, &[14_000, 18_000, 22_000, 26_000])
        .await;
    let recorder = PodRecorder::start(&env, &format!("workpool.dev/pool={pool}"));
    let sampler = DrainSampler::new();
    env.patch_pool(
        pool,
        json!({"spec": {"template": {"spec": {"containers": [
            worker_container(2, &[("ROLLOUT", "2")])
        ]}}}}),
    )
    .await;
    let fresh = env.submit(pool, "fresh", 6, 2_000);
    let deadline = Instant::now() + WAIT;
    loop {
        DrainSampler::take(&sampler, &env, pool);
        let all = env.all_pods(pool).await;
        let done = env.redis_count(&["XLEN", pool]) == 0
            && all.len() == 2
            && all
                .iter()
                .all(|p| template_hash(p).is_some_and(|h| h != old_hash));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end with 2 new-template pods and every task done\n{}",
            env.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        env.dead_letters(pool),
        0,
        "no task interrupted by the rollout"
    );
    let sampler = DrainSampler::done(sampler);
    let h = recorder.history();
    assert!(
        h.max_live <= 3,
        "{} pods at once (2 + maxSurge 1)",
        h.max_live
    );
    for pod in &old_names {
        let deleted = h
            .deleting
            .get(pod)
            .copied()
            .expect("the old pod was deleted");
        let last = sampler.last_held.get(pod).copied().expect("it held a task");
        assert!(
            deleted > last,
            "old pod {pod} was deleted while it still held a task"
        );
    }
    let served_by_new = fresh.iter().any(|id| {
        sampler
            .holders_seen
            .get(id)
            .is_some_and(|by| by.iter().any(|p| !old_names.contains(p)))
    });
    assert!(
        served_by_new,
        "new pods served new tasks: {:?}",
        sampler.holders_seen
    );
    // Busy when the template changed, they could not go idle before a new pod was up:
    // at least one was drained (the other may have gone idle meanwhile and been deleted).
    assert!(
        !old_names.is_disjoint(&sampler.ever_draining),
        "an old pod was drained: {:?}",
        sampler.ever_draining
    );
    env.wait_for("2 ready pods, updatedReplicas 2", WAIT, || async {
        let v = env.pool_json(pool).await?;
        (env.ready_pods(pool).await.len() == 2 && status_int(&v, "updatedReplicas") == Some(2))
            .then_some(())
    })
    .await;
}

/// A scale-up while pods drain takes the draining pods back (their drain field removed)
/// instead of creating new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_while_pods_drain_reuses_them() {
    let env = RealEnv::start("op-drain-reuse", &[]).await;
    let pool = "reuse";
    // Three slots per worker: every worker busy, with free slots left for later.
    env.apply(&env.pool(pool, 3, 3, json!({}))).await;
    let first = env
        .wait_for("3 ready pods", WAIT, || async {
            let pods = env.ready_pods(pool).await;
            (pods.len() == 3).then(|| names(&pods))
        })
        .await;
    let held = env.busy_every_pod(pool, &first, 120_000).await;
    let recorder = PodRecorder::start(&env, &format!("workpool.dev/pool={pool}"));
    env.scale(pool, 1).await;
    env.wait_for("2 pods draining", Duration::from_secs(60), || async {
        let v = env.pool_json(pool).await?;
        (status_int(&v, "drainingReplicas") == Some(2) && env.draining(pool).len() == 2)
            .then_some(())
    })
    .await;
    env.scale(pool, 3).await;
    env.wait_until(
        "the draining pods back: 3 ready, none draining",
        Duration::from_secs(60),
        || async {
            let v = env.pool_json(pool).await.ok_or("no pool")?;
            let ready = names(&env.ready_pods(pool).await);
            let draining = env.draining(pool);
            if status_int(&v, "drainingReplicas").unwrap_or(0) == 0
                && status_int(&v, "replicas") == Some(3)
                && draining.is_empty()
                && ready == first
            {
                Ok(())
            } else {
                Err(format!(
                    "ready {ready:?}, drain hash {draining:?}, status {}",
                    v["status"]
                ))
            }
        },
    )
    .await;
    // They read again: tasks for every free slot left are all taken, which the one pod
    // that never drained cannot do alone.
    let free = 3 * 3 - held;
    env.submit(pool, "after", free, 60_000);
    env.wait_until("every slot of every pod taken", WAIT, || async {
        let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
        for pod in env.holders(pool, pool).values() {
            *per_pod.entry(pod.clone()).or_default() += 1;
        }
        if per_pod.len() == 3 && per_pod.values().all(|n| *n == 3) {
            Ok(())
        } else {
            Err(format!("held: {per_pod:?}"))
        }
    })
    .await;
    let h = recorder.history();
    assert_eq!(
        h.seen.keys().cloned().collect::<BTreeSet<String>>(),
        first,
        "no new pod while draining pods could be taken back"
    );
    assert!(
        h.deleting.is_empty(),
        "no pod deleted: {:?}",
        h.deleting.keys()
    );
    assert_eq!(env.dead_letters(pool), 0);
}

/// `kubectl drain` (the eviction API) of the node running a busy worker: the busy/idle
/// annotations follow the pod's work (safe-to-evict false <-> true, do-not-disrupt on
/// busy pods only), and the evicted busy worker finishes its task within its grace
/// period instead of being cut short. The pool's pods run on a node of this test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_of_a_busy_workers_node_lets_its_task_finish() {
    let env = RealEnv::start_on("second").await;
    let env = env.with_operator("op-drain-evict", &[]);
    let node = env.node.name().to_string();
    let pool = "evict";
    env.apply(&env.pool(
        pool,
        2,
        1,
        json!({"template": {"spec": {
            "terminationGracePeriodSeconds": 40,
            "containers": [worker_container_with_grace(1, 30, &[])]
        }}}),
    ))
    .await;
    let pods = env
        .wait_for("2 ready pods", WAIT, || async {
            let pods = env.ready_pods(pool).await;
            (pods.len() == 2).then(|| names(&pods))
        })
        .await;
    let idle_signals = |p: &k8s_openapi::api::core::v1::Pod| {
        annotation(p, SAFE_TO_EVICT).as_deref() == Some("true")
            && annotation(p, DO_NOT_DISRUPT).is_none()
    };
    let busy_signals = |p: &k8s_openapi::api::core::v1::Pod| {
        annotation(p, SAFE_TO_EVICT).as_deref() == Some("false")
            && annotation(p, DO_NOT_DISRUPT).as_deref() == Some("true")
            && annotation(p, DELETION_COST).as_deref() == Some("1")
    };
    env.wait_for(
        "idle pods say safe-to-evict: true",
        Duration::from_secs(60),
        || async {
            let live = env.live_pods(pool).await;
            (live.len() == 2 && live.iter().all(idle_signals)).then_some(())
        },
    )
    .await;

    // idle -> busy -> idle.
    env.submit(pool, "short", 1, 8_000);
    let holder = env
        .wait_for("the short task held", WAIT, || async {
            env.holders(pool, pool).values().next().cloned()
        })
        .await;
    env.wait_for(
        &format!("{holder} marked busy, the other idle"),
        Duration::from_secs(30),
        || async {
            let live = env.live_pods(pool).await;
            let ok = live.iter().all(|p| {
                if name_of(p) == holder {
                    busy_signals(p)
                } else {
                    idle_signals(p)
                }
            });
            ok.then_some(())
        },
    )
    .await;
    env.wait_all_done(pool, WAIT).await;
    env.wait_for(
        &format!("{holder} idle again"),
        Duration::from_secs(30),
        || async {
            let live = env.live_pods(pool).await;
            (live.len() == 2 && live.iter().all(idle_signals)).then_some(())
        },
    )
    .await;

    // A busy worker on a node being drained.
    env.submit(pool, "evicted", 1, 15_000);
    let busy = env
        .wait_for("the long task held", WAIT, || async {
            env.holders(pool, pool).values().next().cloned()
        })
        .await;
    env.wait_for(
        &format!("{busy} marked busy"),
        Duration::from_secs(30),
        || async {
            let p = env.pods().get(&busy).await.ok()?;
            busy_signals(&p).then_some(())
        },
    )
    .await;
    let recorder = PodRecorder::start(&env, &format!("workpool.dev/pool={pool}"));
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let drain_node = node.clone();
    let drain = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workpool_tests::cluster::kubectl_path())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "drain",
                &drain_node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
            ])
            .arg(format!("--pod-selector=workpool.dev/pool={pool}"))
            .arg("--timeout=120s")
            .output()
            .expect("kubectl drain runs")
    });
    let drained = drain.await.expect("kubectl drain");
    let uncordon = env.kubectl(&["uncordon", &node]);
    assert!(
        drained.status.success(),
        "kubectl drain: {}{}",
        String::from_utf8_lossy(&drained.stdout),
        String::from_utf8_lossy(&drained.stderr)
    );
    assert!(uncordon.status.success(), "kubectl uncordon");
    env.wait_all_done(pool, WAIT).await;
    assert_eq!(
        env.dead_letters(pool),
        0,
        "the evicted worker's task was cut short and run again"
    );
    let h = recorder.history();
    assert!(
        h.gone.contains(&busy),
        "the busy pod was evicted: {:?}",
        h.gone
    );
    let last = h.last.get(&busy).cloned();
    let exit = last
        .as_ref()
        .and_then(|p| serde_json::to_value(&p.status).ok())
        .map(|s| s["containerStatuses"][0]["state"]["terminated"]["exitCode"].clone());
    if let Some(code) = exit.filter(|c| !c.is_null()) {
        assert_eq!(
            code,
            json!(0),
            "the evicted worker exited 0 after finishing its task"
        );
    }
    env.wait_for("2 ready replacements after the drain", WAIT, || async {
        let ready = names(&env.ready_pods(pool).await);
        (ready.len() == 2 && ready.is_disjoint(&pods)).then_some(())
    })
    .await;
}

/// Pause: while `spec.paused` nothing is created or deleted (a deleted pod is not
/// replaced, scaling in or out does nothing), the status keeps being written, and
/// Scaling=False/Paused; on unpause the pool resumes. Another pool is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pool_is_frozen_and_resumes_on_unpause() {
    let env = RealEnv::start("op-drain-pause", &[]).await;
    env.apply(&env.pool("paused", 2, 1, json!({}))).await;
    env.apply(&env.pool("control", 2, 1, json!({}))).await;
    let (paused_pods, control_pods) = env
        .wait_for("2 ready pods in each pool", WAIT, || async {
            let a = names(&env.ready_pods("paused").await);
            let b = names(&env.ready_pods("control").await);
            (a.len() == 2 && b.len() == 2).then_some((a, b))
        })
        .await;
    env.patch_pool("paused", json!({"spec": {"paused": true}}))
        .await;
    env.wait_for("Scaling=False/Paused", Duration::from_secs(30), || async {
        let v = env.pool_json("paused").await?;
        let (status, reason, _) = condition(&v, "Scaling");
        (status == "False" && reason == "Paused").then_some(())
    })
    .await;
    let recorder = PodRecorder::start(&env, "workpool.dev/pool=paused");
    let victim = paused_pods.iter().next().cloned().expect("a pod");
    let control_victim = control_pods.iter().next().cloned().expect("a pod");
    env.delete_pod(&victim).await;
    env.delete_pod(&control_victim).await;
    env.wait_for(
        "the control pool replaces its pod",
        Duration::from_secs(60),
        || async {
            let live = names(&env.ready_pods("control").await);
            (live.len() == 2 && !live.contains(&control_victim)).then_some(())
        },
    )
    .await;
    env.wait_for(
        "the paused pool's status shows 1 pod",
        Duration::from_secs(30),
        || async {
            let v = env.pool_json("paused").await?;
            (status_int(&v, "replicas") == Some(1)).then_some(())
        },
    )
    .await;
    // Scale in (to 0) and out (to 3) while paused: nothing happens either way.
    env.scale("paused", 0).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    env.scale("paused", 3).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let h = recorder.history();
    let created: Vec<&String> = h
        .seen
        .keys()
        .filter(|n| !paused_pods.contains(*n))
        .collect();
    assert!(created.is_empty(), "pods created while paused: {created:?}");
    let deleted: Vec<&String> = h.deleting.keys().filter(|n| **n != victim).collect();
    assert!(deleted.is_empty(), "pods deleted while paused: {deleted:?}");
    assert_eq!(env.live_pods("paused").await.len(), 1);

    env.patch_pool("paused", json!({"spec": {"paused": false}}))
        .await;
    env.wait_for("3 ready pods after unpause", WAIT, || async {
        let v = env.pool_json("paused").await?;
        (env.ready_pods("paused").await.len() == 3 && condition(&v, "Scaling").1 != "Paused")
            .then_some(())
    })
    .await;
}
