//! Autoscaling wired into the operator: a pool at zero wakes up on a burst, grows to
//! `maxReplicas` and no further, drains, and returns to zero after the delay; no task is
//! lost; the `Scaling` condition says what holds the count.
#![forbid(unsafe_code)]

mod operator_support;

use std::time::{Duration, Instant};

use operator_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_scales_a_pool_from_zero_to_max_and_back_to_zero() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-autoscale", &[]);
    env.apply_pool(&env.exec_pool(
        "elastic",
        1,
        0.5,
        json!({"autoscaling": {
            "minReplicas": 0, "maxReplicas": 3, "targetBacklogPerReplica": 2,
            "pollIntervalSeconds": 1, "scaleToZeroDelaySeconds": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
        }}),
    ))
    .await;
    // An empty queue: zero pods (spec.replicas is ignored with autoscaling).
    let v = env
        .wait_pool("elastic", "zero desired replicas", T, |v| {
            v["status"]["desiredReplicas"] == json!(0) && v["status"]["replicas"] == json!(0)
        })
        .await;
    assert!(cond(&v, "Scaling").is_some(), "{}", v["status"]);
    assert!(env.pool_pods("elastic", true).await.is_empty());

    // A burst: 20 tasks call for 10 pods; maxReplicas holds it at 3.
    let tasks = payloads("elastic", 20);
    env.submit("elastic", &tasks);
    env.wait_pool("elastic", "3 desired replicas", T, |v| {
        v["status"]["desiredReplicas"] == json!(3)
    })
    .await;
    let deadline = Instant::now() + T;
    let mut most = 0;
    let mut saw_max_reason = false;
    while Instant::now() < deadline {
        let n = env.pool_pods("elastic", true).await.len();
        most = most.max(n);
        if let Some(v) = env.pool("elastic").await
            && cond(&v, "Scaling").is_some_and(|c| c["reason"] == "MaxReplicas")
        {
            saw_max_reason = true;
        }
        if env.done_lines("elastic").len() >= tasks.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_done("elastic", &tasks, T).await;
    assert!(most <= 3, "{most} pods at once with maxReplicas 3");
    assert!(most >= 2, "the pool never grew: {most}");
    assert!(
        saw_max_reason,
        "the Scaling condition never said MaxReplicas"
    );

    // Drained: back to zero after the delay.
    let v = env
        .wait_pool("elastic", "back to zero", T, |v| {
            v["status"]["desiredReplicas"] == json!(0) && v["status"]["replicas"] == json!(0)
        })
        .await;
    let c = cond(&v, "Scaling").expect("Scaling");
    assert_eq!(c["reason"], "ScaledToZero", "{c}");
    eventually("the pods are gone", T, || async {
        env.pool_pods("elastic", true)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(env.redis_cli(&["XLEN", "elastic:dead"]).trim(), "0");
}

/// The value of a pool's series of `metric` with one extra label (`None` while absent).
async fn pool_metric(op: &Operator, metric: &str, ns: &str, pool: &str, extra: &str) -> f64 {
    let labels = if extra.is_empty() {
        format!("namespace=\"{ns}\",workpool=\"{pool}\"")
    } else {
        // Prometheus renders labels sorted: direction/namespace/reason/trigger/workpool.
        let mut l = vec![
            format!("namespace=\"{ns}\""),
            format!("workpool=\"{pool}\""),
        ];
        l.extend(extra.split(',').map(str::to_string));
        l.sort();
        l.join(",")
    };
    op.metric(&format!("{metric}{{{labels}}}"))
        .await
        .unwrap_or(0.0)
}

/// `Scaled` Events of a pool (each counted with its series).
async fn scaled_events(env: &Env, pool: &str) -> Vec<(String, i32)> {
    let events =
        kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), &env.ns);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Scaled")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool)
        })
        .map(|e| {
            (
                e.note.unwrap_or_default(),
                e.series.map(|s| s.count).unwrap_or(1),
            )
        })
        .collect()
}

fn wake_pool(env: &Env, name: &str, redis_url: &str) -> serde_json::Value {
    env.exec_pool(
        name,
        1,
        0.0,
        json!({
            "queue": {"redis": {"url": redis_url}},
            "autoscaling": {
                "minReplicas": 0, "maxReplicas": 2, "targetBacklogPerReplica": 1,
                // The poll would notice the task only a minute later.
                "pollIntervalSeconds": 60
            }
        }),
    )
}

/// Wake from zero: with a 60 s poll, a pool at zero gets its first pod after its first
/// task and before any poll reads its queue again (the probe counter by trigger says
/// which read created the pod). Pools on two Redis servers are watched independently, a
/// stream that does not exist yet is watched, and the watcher survives a Redis restart.
/// The decision is one Event and one counted scale decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_at_zero_wakes_on_its_first_task_before_the_next_poll() {
    let mut env = Env::start().await;
    let other_redis = env.start_redis();
    let op = Operator::start(&env.cluster, "op-wake", &[]);
    let ns = env.ns.clone();
    env.apply_pool(&wake_pool(&env, "first", &env.redis_url()))
        .await;
    env.apply_pool(&wake_pool(&env, "other", &other_redis.url_on_also()))
        .await;
    for pool in ["first", "other"] {
        env.wait_pool(pool, "at zero with a readable queue", T, |v| {
            v["status"]["desiredReplicas"] == json!(0)
                && v["status"]["replicas"] == json!(0)
                && cond_status(v, "QueueReachable") == Some("True".into())
        })
        .await;
    }
    eventually("both pools are watched for a first task", T, || async {
        (op.metric("workpool_wake_watched_pools").await == Some(2.0)).then_some(())
    })
    .await;

    // Redis restarts under the watcher: it reconnects (the stream still does not exist).
    env.redis.restart().expect("redis restarts");
    eventually("the wake watcher saw Redis go away", T, || async {
        (op.metric("workpool_wake_errors_total{reason=\"unreachable\"}")
            .await
            .unwrap_or(0.0)
            > 0.0)
            .then_some(())
    })
    .await;

    let polls = pool_metric(
        &op,
        "workpool_queue_probes_total",
        &ns,
        "first",
        "trigger=\"poll\"",
    )
    .await;
    assert!(polls >= 1.0, "the pool was never polled");
    assert!(env.pool_pods("first", true).await.is_empty());
    let task = payloads("first", 1);
    env.submit("first", &task);
    let pod = eventually("a pod for the first task", T, || async {
        env.pool_pods("first", true).await.into_iter().next()
    })
    .await;
    // The pod was created by the wake, not by a poll: no poll read the queue since.
    assert_eq!(
        pool_metric(
            &op,
            "workpool_queue_probes_total",
            &ns,
            "first",
            "trigger=\"poll\""
        )
        .await,
        polls,
        "a poll read the queue before the pod {:?} was created",
        pod.metadata.name
    );
    assert!(pool_metric(&op, "workpool_wakes_total", &ns, "first", "").await >= 1.0);
    assert!(
        pool_metric(
            &op,
            "workpool_queue_probes_total",
            &ns,
            "first",
            "trigger=\"wake\""
        )
        .await
            >= 1.0
    );
    // The other Redis's pool is not woken by this one's task.
    assert_eq!(
        pool_metric(&op, "workpool_wakes_total", &ns, "other", "").await,
        0.0
    );
    assert!(env.pool_pods("other", true).await.is_empty());
    env.wait_done("first", &task, T).await;

    // One decision: one Event, one counted decision, lastScaleTime, the condition.
    let v = env
        .wait_pool("first", "one desired replica", T, |v| {
            v["status"]["desiredReplicas"] == json!(1)
        })
        .await;
    assert!(v["status"]["lastScaleTime"].is_string(), "{}", v["status"]);
    let c = cond(&v, "Scaling").expect("Scaling condition");
    assert!(c["reason"].is_string() && c["message"].is_string(), "{c}");
    let events = eventually("the Scaled Event", T, || async {
        let e = scaled_events(&env, "first").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let total: i32 = events.iter().map(|e| e.1).sum();
    assert_eq!(total, 1, "one Event per scale decision: {events:?}");
    assert!(events[0].0.starts_with("0 -> 1 replicas"), "{events:?}");
    let mut decisions = 0.0;
    for reason in workpool_operator_scale_reasons() {
        decisions += pool_metric(
            &op,
            "workpool_scale_decisions_total",
            &ns,
            "first",
            &format!("direction=\"up\",reason=\"{reason}\""),
        )
        .await;
    }
    assert_eq!(decisions, 1.0);
    eventually("only the other pool is watched now", T, || async {
        (op.metric("workpool_wake_watched_pools").await == Some(1.0)).then_some(())
    })
    .await;

    // The second Redis's pool wakes the same way.
    let polls_other = pool_metric(
        &op,
        "workpool_queue_probes_total",
        &ns,
        "other",
        "trigger=\"poll\"",
    )
    .await;
    submit_to(
        &env.worker,
        &other_redis.url(),
        "other",
        &payloads("other", 1),
    );
    eventually("a pod for the other pool's first task", T, || async {
        env.pool_pods("other", true).await.into_iter().next()
    })
    .await;
    assert_eq!(
        pool_metric(
            &op,
            "workpool_queue_probes_total",
            &ns,
            "other",
            "trigger=\"poll\""
        )
        .await,
        polls_other
    );
    env.wait_done("other", &["{\"task\":\"other-0\"}".to_string()], T)
        .await;
}

/// The reasons of `workpool_scale_decisions_total` (docs/metrics.md).
fn workpool_operator_scale_reasons() -> [&'static str; 13] {
    [
        "DesiredWithinRange",
        "WithinTolerance",
        "MaxReplicas",
        "MinReplicas",
        "StabilizationWindow",
        "RatePolicy",
        "ScalingDisabled",
        "Fallback",
        "QueueUnreadable",
        "Activation",
        "ScaleToZeroDelay",
        "ScaledToZero",
        "Spec",
    ]
}

/// The pool's Redis URL Secret is watched: rotating it to another Redis moves the pool's
/// queue reads there at once, before the next poll (60 s here) or the end of the Secret
/// cache (30 s) would have: the new backlog shows while the poll counter stands still.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_redis_secret_moves_the_pool_to_the_new_redis() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, PostParams};
    let env = Env::start().await;
    let other = env.start_redis();
    // Three tasks wait on the other Redis (no group yet: all of them are backlog).
    submit_to(
        &env.worker,
        &other.url(),
        "rotated",
        &payloads("rotated", 3),
    );
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-url"},
        "stringData": {"url": env.redis_url()}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let op = Operator::start(&env.cluster, "op-secret", &["--queue-poll-interval", "60"]);
    let ns = env.ns.clone();
    let mut pool = env.exec_pool("rotated", 0, 0.0, json!({}));
    pool["spec"]["queue"]["redis"] = json!({"urlSecretRef": {"name": "redis-url", "key": "url"}});
    env.apply_pool(&pool).await;
    env.wait_pool("rotated", "the first Redis read", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
            && cond_status(v, "QueueReachable") == Some("True".into())
    })
    .await;
    let probes = |trigger: &'static str| {
        let (op, ns) = (&op, ns.clone());
        async move {
            pool_metric(
                op,
                "workpool_queue_probes_total",
                &ns,
                "rotated",
                &format!("trigger=\"{trigger}\""),
            )
            .await
        }
    };
    let polls = probes("poll").await;
    assert!(polls >= 1.0);

    secrets
        .patch(
            "redis-url",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"url": other.url_on_also()}})),
        )
        .await
        .expect("rotate the Secret");
    env.wait_pool("rotated", "the other Redis's backlog", T, |v| {
        v["status"]["queue"]["backlog"] == json!(3)
    })
    .await;
    assert_eq!(
        probes("poll").await,
        polls,
        "a poll, not the Secret's change, moved the pool"
    );
    assert!(probes("secret").await >= 1.0);

    // A Secret no pool names moves nothing; the pool's own Secret, rotated back, moves it
    // again: one fresh read per change.
    let unrelated: Secret = serde_json::from_value(json!({
        "metadata": {"name": "unrelated"}, "stringData": {"x": "1"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &unrelated)
        .await
        .expect("create");
    secrets
        .patch(
            "unrelated",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"x": "2"}})),
        )
        .await
        .expect("patch");
    let secret_reads = probes("secret").await;
    secrets
        .patch(
            "redis-url",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"url": env.redis_url()}})),
        )
        .await
        .expect("rotate back");
    env.wait_pool("rotated", "the first Redis's backlog again", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
    })
    .await;
    assert_eq!(probes("secret").await, secret_reads + 1.0);
    assert_eq!(probes("poll").await, polls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_queue_holds_the_pool_at_its_fallback_replicas_until_redis_is_back() {
    let mut env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-fallback", &[]);
    env.apply_pool(&env.exec_pool(
        "steadfast",
        1,
        0.0,
        json!({"autoscaling": {
            "minReplicas": 0, "maxReplicas": 4, "fallbackReplicas": 2,
            "targetBacklogPerReplica": 5, "pollIntervalSeconds": 1,
            "scaleToZeroDelaySeconds": 2,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
        }}),
    ))
    .await;
    env.wait_pool("steadfast", "zero replicas on an empty queue", T, |v| {
        v["status"]["desiredReplicas"] == json!(0)
            && cond_status(v, "QueueReachable").as_deref() == Some("True")
    })
    .await;

    // Redis goes away: the backlog is unknown, so the pool runs its fallback replicas
    // (not zero, not max), and both conditions say why.
    env.redis.stop();
    let v = env
        .wait_pool("steadfast", "fallback replicas", T, |v| {
            v["status"]["desiredReplicas"] == json!(2)
                && cond_status(v, "QueueReachable").as_deref() == Some("False")
        })
        .await;
    let scaling = cond(&v, "Scaling").expect("Scaling");
    assert_eq!(scaling["reason"], "Fallback", "{scaling}");
    eventually("two pods while the queue cannot be read", T, || async {
        (env.pool_pods("steadfast", false).await.len() == 2).then_some(())
    })
    .await;

    // Redis is back with an empty queue: readable again, and back to zero.
    env.redis.restart().expect("redis restarts");
    env.wait_pool(
        "steadfast",
        "back to zero once the queue is readable",
        T,
        |v| {
            cond_status(v, "QueueReachable").as_deref() == Some("True")
                && v["status"]["desiredReplicas"] == json!(0)
        },
    )
    .await;
    eventually("the fallback pods are gone", T, || async {
        env.pool_pods("steadfast", true)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}
