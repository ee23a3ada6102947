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

/// A worker container killed in a pod that restarts its containers (the default
/// `restartPolicy: Always`) comes back in the same pod: the kubelet restarts it, the pod
/// is not replaced, and every task finishes (the ones it held come back to it or to the
/// other worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_restarts_in_its_pod_and_its_tasks_finish() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-restart", &[]);
    env.apply_pool(&env.exec_pool(
        "phoenix",
        2,
        0.3,
        json!({"delivery": {"visibilityTimeoutSeconds": 3}}),
    ))
    .await;
    env.wait_ready("phoenix", 2).await;
    let tasks = payloads("phoenix", 30);
    env.submit("phoenix", &tasks);
    let victim = eventually("a busy worker", T, || async {
        env.consumers("phoenix", "phoenix")
            .into_iter()
            .find(|(_, pending)| *pending > 0)
            .map(|(name, _)| name)
    })
    .await;
    let before = env
        .container_id(&victim, "worker")
        .await
        .expect("running worker");
    env.signal_worker(&victim, Signal::SIGKILL).await;

    // The same pod runs a new worker container (restartCount 1), and is Ready again.
    let restarted = eventually("the worker restarted in its pod", T, || async {
        let pod = env.pods().get_opt(&victim).await.ok().flatten()?;
        let status = pod
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == "worker")?
            .clone();
        (status.restart_count >= 1 && status.ready && pod_ready(&pod)).then_some(status)
    })
    .await;
    assert_ne!(restarted.container_id.as_deref(), Some(before.as_str()));
    let last = restarted
        .last_state
        .and_then(|s| s.terminated)
        .expect("the killed run is the last state");
    assert_eq!(last.exit_code, 137, "killed by SIGKILL: {last:?}");
    env.wait_done("phoenix", &tasks, T).await;
    let names: Vec<String> = env
        .pool_pods("phoenix", true)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        names.contains(&victim),
        "the pod was not replaced: {names:?}"
    );
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(env.redis_cli(&["XLEN", "phoenix:dead"]).trim(), "0");
}

/// A frozen worker (SIGSTOP from the host) stops answering its readiness probe: its pod
/// turns NotReady and the pool counts one ready replica fewer; thawed (SIGCONT), it is
/// Ready again and works. The operator does not replace a pod for being NotReady.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_turns_not_ready_and_recovers_when_thawed() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-freeze", &[]);
    env.apply_pool(&env.exec_pool("icy", 2, 0.0, json!({})))
        .await;
    env.wait_ready("icy", 2).await;
    let frozen = env.pool_pods("icy", false).await[0]
        .metadata
        .name
        .clone()
        .expect("name");
    env.signal_worker(&frozen, Signal::SIGSTOP).await;
    env.wait_pool("icy", "one ready replica of two", T, |v| {
        v["status"]["readyReplicas"] == json!(1) && v["status"]["replicas"] == json!(2)
    })
    .await;
    let names: Vec<String> = env
        .pool_pods("icy", true)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        names.contains(&frozen),
        "a NotReady pod is not replaced: {names:?}"
    );
    // Work goes on in the other worker meanwhile.
    let during = payloads("icy-during", 5);
    env.submit("icy", &during);
    env.wait_done("icy", &during, T).await;

    env.signal_worker(&frozen, Signal::SIGCONT).await;
    env.wait_ready("icy", 2).await;
    let after = payloads("icy-after", 10);
    env.submit("icy", &after);
    env.wait_done("icy", &after, T).await;
}

/// A pool given `Env::on_own_node` runs on the test's own node (and nowhere else); when
/// that node goes away, its pods go with it and the operator's replacements wait for a
/// node they may run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_pinned_to_its_own_node_runs_there_and_waits_when_the_node_is_gone() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-own-node", &[]);
    let node = env.start_own_node().await;
    let name = node.name().to_string();
    env.apply_pool(&env.exec_pool("pinned", 2, 0.0, env.on_own_node()))
        .await;
    env.wait_ready("pinned", 2).await;
    for pod in env.pool_pods("pinned", false).await {
        let on = pod.spec.and_then(|s| s.node_name);
        assert_eq!(on.as_deref(), Some(name.as_str()));
    }
    let t = payloads("pinned", 5);
    env.submit("pinned", &t);
    env.wait_done("pinned", &t, T).await;

    let before: Vec<String> = env
        .pool_pods("pinned", true)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .expect("node stopped");
    // The pods of a deleted Node are removed (pod GC); the operator creates new ones,
    // which no node can take.
    let pending = eventually("two replacements, unscheduled", T, || async {
        let pods = env.pool_pods("pinned", false).await;
        let fresh: Vec<_> = pods
            .iter()
            .filter(|p| !before.contains(p.metadata.name.as_ref().expect("name")))
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .collect();
        (pods.len() == 2 && fresh.len() == 2).then_some(fresh.len())
    })
    .await;
    assert_eq!(pending, 2);
}
