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
