//! Pods that go away are replaced and their tasks finish elsewhere, none lost: a pod
//! deleted by someone else, and a worker process SIGKILLed in the middle of its tasks.
#![forbid(unsafe_code)]

mod operator_support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::DeleteParams;
use operator_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_and_killed_workers_are_replaced_and_no_task_is_lost() {
    let env = Env::start().await;
    let op = Operator::start(
        &env.cluster,
        "op-replace",
        &["--replacement-backoff-reset", "600"],
    );
    // restartPolicy Never: a killed worker fails its pod, which the operator replaces.
    env.apply_pool(&env.exec_pool(
        "sturdy",
        3,
        0.3,
        json!({"template": {"spec": {"restartPolicy": "Never"}},
               "delivery": {"visibilityTimeoutSeconds": 3}}),
    ))
    .await;
    env.wait_ready("sturdy", 3).await;
    let tasks = payloads("sturdy", 60);
    env.submit("sturdy", &tasks);

    // Wait until every worker holds a task, then delete one pod and SIGKILL another.
    let busy = eventually("three busy workers", T, || async {
        let c = env.consumers("sturdy", "sturdy");
        (c.values().filter(|p| **p > 0).count() == 3).then_some(c)
    })
    .await;
    let mut names = busy.keys().cloned();
    let deleted = names.next().expect("a pod");
    let killed = names.next().expect("another pod");
    env.pods()
        .delete(&deleted, &DeleteParams::default())
        .await
        .expect("delete pod");
    // SIGKILL from the host to the worker container's process, as a crash.
    env.signal_worker(&killed, Signal::SIGKILL).await;

    // Both are replaced by new pods; the pool is back to three ready pods.
    let now = eventually("three ready pods, none of them an old one", T, || async {
        let pods = env.pool_pods("sturdy", false).await;
        let names: BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (pods.len() == 3
            && pods.iter().all(pod_ready)
            && !names.contains(&deleted)
            && !names.contains(&killed))
        .then_some(names)
    })
    .await;
    assert_eq!(now.len(), 3);
    env.wait_ready("sturdy", 3).await;

    // Every task ran; the killed worker's tasks were reclaimed by others.
    env.wait_done("sturdy", &tasks, T).await;
    env.wait_pool("sturdy", "an empty queue", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
    })
    .await;
    assert_eq!(
        env.redis_cli(&["XLEN", "sturdy:dead"]).trim(),
        "0",
        "nothing dead-lettered"
    );

    // The replacements are counted by reason; the failure set Degraded with a reason.
    let ns = env.ns.clone();
    let body = op.get("/metrics").await.expect("metrics").1;
    let failed = format!(
        "workpool_pod_replacements_total{{namespace=\"{ns}\",reason=\"failed\",workpool=\"sturdy\"}}"
    );
    let deleted_m = format!(
        "workpool_pod_replacements_total{{namespace=\"{ns}\",reason=\"deleted\",workpool=\"sturdy\"}}"
    );
    assert_eq!(metric_value(&body, &failed), Some(1.0), "{body}");
    assert_eq!(metric_value(&body, &deleted_m), Some(1.0), "{body}");
    let log = op.log_text();
    assert!(log.contains("created pods"), "{log}");
    // Degraded was set when the pod failed (it resets only after 30 s without failures).
    let v = env.pool("sturdy").await.expect("pool");
    let d = cond(&v, "Degraded").expect("Degraded");
    assert_eq!(d["status"], "True", "{d}");
    assert_eq!(d["reason"], "PodFailures", "{d}");

    // Consumers of the vanished pods leave the group once they hold nothing.
    eventually("old consumers removed", T, || async {
        let c = env.consumers("sturdy", "sturdy");
        (!c.contains_key(&deleted) && !c.contains_key(&killed)).then_some(())
    })
    .await;
    // A short pause: no pod churn afterwards (exactly three, stable).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.pool_pods("sturdy", true).await.len(), 3);
}
